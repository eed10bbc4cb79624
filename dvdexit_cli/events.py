"""Events the library emits while it works; front ends render them (the library never prints)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "AssociationOpened",
    "AssociationRefused",
    "Event",
    "HookFinished",
    "InstanceDone",
    "InstanceReceived",
    "Observer",
    "ReplayStarted",
    "RetryScheduled",
    "ScanFinished",
    "StudyCompleted",
    "StudyForwarded",
    "TransferFinished",
    "TransferStarted",
    "ignore",
]


@dataclass(frozen=True)
class ScanFinished:
    instances: int
    total_bytes: int
    skipped: int
    failed: int


@dataclass(frozen=True)
class TransferStarted:
    transfer_id: int
    peer: str
    instances: int
    total_bytes: int


@dataclass(frozen=True)
class AssociationOpened:
    peer: str
    accepted_contexts: int
    rejected_contexts: int
    max_pdu: int


@dataclass(frozen=True)
class InstanceDone:
    """One instance was answered (sent, or failed for this attempt)."""

    path: Path
    sop_instance_uid: str
    state: str
    size: int
    status: int | None
    reason: str | None
    attempt: int


@dataclass(frozen=True)
class RetryScheduled:
    instances: int
    attempt: int
    delay: float


@dataclass(frozen=True)
class ReplayStarted:
    """A replay (``send --retry-failed``) claimed items of earlier transfers to one peer."""

    peer: str
    transfers: tuple[int, ...]
    instances: int
    total_bytes: int


@dataclass(frozen=True)
class TransferFinished:
    transfer_id: int
    outcome: str


@dataclass(frozen=True)
class InstanceReceived:
    """The receiver answered one C-STORE."""

    calling_ae: str
    sop_instance_uid: str | None
    study_uid: str | None
    outcome: str
    status: int
    reason: str | None


@dataclass(frozen=True)
class AssociationRefused:
    """The receiver rejected an association request (who asked, and why).

    Also a connection whose TLS handshake failed: then ``calling_ae`` is empty, as no
    association request was read.
    """

    calling_ae: str
    address: str
    reason: str


@dataclass(frozen=True)
class StudyCompleted:
    """A received study is complete (by storage commitment or by idle timeout)."""

    study_uid: str
    instances: int
    completed_by: str


@dataclass(frozen=True)
class HookFinished:
    """The on-complete command ran for a study."""

    study_uid: str
    exit_status: int | None
    error: str | None


@dataclass(frozen=True)
class StudyForwarded:
    """A complete study was forwarded (sent, failed) or held (no reconciliation mapping)."""

    study_uid: str
    peer: str
    outcome: str
    reason: str | None


Event = (
    ScanFinished
    | TransferStarted
    | AssociationOpened
    | InstanceDone
    | RetryScheduled
    | ReplayStarted
    | TransferFinished
    | InstanceReceived
    | AssociationRefused
    | StudyCompleted
    | HookFinished
    | StudyForwarded
)
Observer = Callable[[Event], None]


def ignore(event: Event) -> None:
    """An observer that drops every event (the default for library use)."""
