"""The exceptions dvdexit raises. Each knows its exit code and whether retrying may help.

::

    DvdexitError                  exit 1   (a bug, unless a subclass says otherwise)
    ├── UsageError                exit 2
    │   └── UnitError                      (not a size, duration or rate: units.py)
    ├── ConfigError               exit 3
    │   └── UnknownPeerError
    ├── InputError                exit 4
    │   └── NoDicomFoundError
    ├── PeerError                 exit 5   retryable
    │   ├── PeerUnreachableError            (DNS, TCP connect, TLS)
    │   └── AssociationRejectedError        (A-ASSOCIATE-RJ, A-ABORT during negotiation)
    ├── VerificationError         exit 7
    └── JournalError              exit 8
        ├── JournalBusyError               retryable
        └── JournalDamagedError            (empty, cut short, not a journal)

    KeyboardInterrupt
    └── Interrupted               exit 130 (a send or replay stopped by Ctrl-C or SIGTERM,
                                            with its counts; not a DvdexitError, so that no
                                            handler on the way up takes it for an error)

Foreign exceptions (``OSError``, ``sqlite3.Error``, pynetdicom's) are translated into these
at the layer that met them, raised ``from`` the original.
"""

from __future__ import annotations

from typing import ClassVar

from dvdexit_cli.exitcodes import ExitCode

__all__ = [
    "AssociationRejectedError",
    "ConfigError",
    "DvdexitError",
    "InputError",
    "Interrupted",
    "JournalBusyError",
    "JournalDamagedError",
    "JournalError",
    "NoDicomFoundError",
    "PeerError",
    "PeerUnreachableError",
    "UnitError",
    "UnknownPeerError",
    "UsageError",
    "VerificationError",
]


class DvdexitError(Exception):
    """Base of every error dvdexit raises on purpose."""

    exit_code: ClassVar[ExitCode] = ExitCode.INTERNAL
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(DvdexitError):
    """A bad option or argument combination."""

    exit_code = ExitCode.USAGE


class UnitError(UsageError):
    """A value that is not a size, a duration or a rate (see :mod:`dvdexit_cli.units`)."""


class ConfigError(DvdexitError):
    """peers.toml or the environment is missing, unreadable or invalid."""

    exit_code = ExitCode.CONFIG


class UnknownPeerError(ConfigError):
    """A peer name that peers.toml does not define."""


class InputError(DvdexitError):
    """An input path is missing or holds nothing that can be sent."""

    exit_code = ExitCode.INPUT


class NoDicomFoundError(InputError):
    """The inputs exist but contain no DICOM instance."""


class PeerError(DvdexitError):
    """The peer could not be reached or refused to talk; a later retry may succeed."""

    exit_code = ExitCode.PEER_UNREACHABLE
    retryable = True


class PeerUnreachableError(PeerError):
    """DNS, TCP or TLS failed before any DICOM was exchanged."""


class AssociationRejectedError(PeerError):
    """The peer answered the association request with a rejection or an abort."""


class VerificationError(DvdexitError):
    """Verification could not prove that what was sent is what is there."""

    exit_code = ExitCode.VERIFY_FAILED


class JournalError(DvdexitError):
    """The journal database is damaged or could not be written."""

    exit_code = ExitCode.JOURNAL


class JournalBusyError(JournalError):
    """Another process holds the journal's write lock for too long."""

    retryable = True


class JournalDamagedError(JournalError):
    """The journal file exists but is empty, cut short or not a journal at all.

    Never taken for a new journal: its items would be forgotten. The hint says how to
    move it aside and recover.
    """


class Interrupted(KeyboardInterrupt):
    """A send or replay stopped by Ctrl-C or SIGTERM, and what the journal holds then.

    ``counts`` has ``sent``, ``failed``, ``not_sent``, ``skipped`` and ``total`` (the
    instances the run was to send); ``hint`` is the command that resumes the work.
    """

    exit_code: ClassVar[ExitCode] = ExitCode.INTERRUPTED

    def __init__(
        self,
        message: str,
        *,
        hint: str,
        counts: dict[str, int],
        transfer_id: int | None = None,
        transfers: tuple[int, ...] = (),
        peer: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.counts = counts
        self.transfer_id = transfer_id
        self.transfers = transfers
        self.peer = peer

    def to_json(self) -> dict[str, object]:
        return {
            "error": {"type": "Interrupted", "message": self.message, "hint": self.hint},
            "transfer_id": self.transfer_id,
            "transfers": list(self.transfers),
            "peer": self.peer,
            "counts": dict(self.counts),
            "exit_code": int(self.exit_code),
        }
