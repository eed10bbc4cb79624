"""Verification: local files against the journal (``local``), and what a peer holds
(``remote``: the strongest checks each kind of peer supports)."""

from dvdexit_cli.verify.local import VERDICTS, VerifiedFile, VerifyResult, verify_paths
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
    "VERDICTS",
    "Expected",
    "RemoteVerdict",
    "RemoteVerifyResult",
    "VerifiedFile",
    "VerifyResult",
    "expected_from_journal",
    "expected_from_paths",
    "verify_paths",
    "verify_remote",
    "verify_remote_dicomweb",
    "verify_remote_memory",
]
