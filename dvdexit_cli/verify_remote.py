"""Kept for one release: remote verification moved to :mod:`dvdexit_cli.verify.remote`.

Import from ``dvdexit_cli.verify`` (or ``dvdexit_cli.verify.remote``) instead.
"""

from dvdexit_cli.verify import remote as _remote
from dvdexit_cli.verify.remote import *  # noqa: F403  (the same names, one list)

__all__ = _remote.__all__
