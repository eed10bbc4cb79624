"""Kept for one release: the engine was split into ``dvdexit_cli.sending`` (send, dry run,
replay, abandon) and ``dvdexit_cli.verify`` (local and remote verification); see the
Layout section of docs/design.md. Import from those instead."""

from dvdexit_cli import sending as _sending
from dvdexit_cli.sending import *  # noqa: F403  (the same names, one list)
from dvdexit_cli.verify import local as _local
from dvdexit_cli.verify.local import *  # noqa: F403

__all__ = _sending.__all__ + _local.__all__
