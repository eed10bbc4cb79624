"""Kept for one release: remote verification moved to :mod:`dvdexit_cli.verify.remote`.

Import from ``dvdexit_cli.verify`` (or ``dvdexit_cli.verify.remote``) instead.
"""

from dvdexit_cli.verify.remote import (
    REMOTE_VERDICTS,
    Expected,
    RemoteVerdict,
    RemoteVerifyResult,
    expected_from_journal,
    expected_from_paths,
    verify_remote,
    verify_remote_dicomweb,
    verify_remote_memory,
)

__all__ = [
    "REMOTE_VERDICTS",
    "Expected",
    "RemoteVerdict",
    "RemoteVerifyResult",
    "expected_from_journal",
    "expected_from_paths",
    "verify_remote",
    "verify_remote_dicomweb",
    "verify_remote_memory",
]
