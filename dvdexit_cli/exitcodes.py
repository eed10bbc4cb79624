"""Exit codes of the ``dvdexit`` command: the single source for docs/exit-codes.md."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["ExitCode"]


class ExitCode(IntEnum):
    """What a ``dvdexit`` process tells its caller (a shell script, cron, a monitor)."""

    OK = 0
    """Everything succeeded."""
    INTERNAL = 1
    """Unexpected internal error: a bug; the message says where to report it."""
    USAGE = 2
    """Usage error: a bad option or argument."""
    CONFIG = 3
    """Configuration or credentials problem (unknown peer, unreadable peers.toml)."""
    INPUT = 4
    """Input problem: a path is missing, no DICOM was found, unreadable media."""
    PEER_UNREACHABLE = 5
    """Peer unreachable or association rejected; retrying later may succeed."""
    PARTIAL_FAILURE = 6
    """Some instances failed after retries; the journal holds them."""
    VERIFY_FAILED = 7
    """Verification found missing, different or unverifiable instances."""
    JOURNAL = 8
    """The journal is busy (locked by another process) or damaged."""
    INTERRUPTED = 130
    """Interrupted; the journal is consistent and the work can be resumed."""

    @property
    def description(self) -> str:
        """The one-line meaning documented for this code."""
        return _DESCRIPTIONS[self]


_DESCRIPTIONS = {
    ExitCode.OK: "everything succeeded",
    ExitCode.INTERNAL: "unexpected internal error (a bug: the message says where to report it)",
    ExitCode.USAGE: "usage error (bad option or argument)",
    ExitCode.CONFIG: "configuration or credentials problem",
    ExitCode.INPUT: "input problem: path missing, no DICOM found, unreadable media",
    ExitCode.PEER_UNREACHABLE: "peer unreachable or association rejected (retryable)",
    ExitCode.PARTIAL_FAILURE: (
        "partial failure: some instances failed after retries; the journal holds them"
    ),
    ExitCode.VERIFY_FAILED: "verification found missing or different instances",
    ExitCode.JOURNAL: "journal busy or damaged",
    ExitCode.INTERRUPTED: "interrupted; the journal is consistent and the work can be resumed",
}
