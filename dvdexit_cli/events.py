"""Events the library emits while it works; front ends render them (the library never prints)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "AssociationOpened",
    "Event",
    "InstanceDone",
    "InstanceReceived",
    "Observer",
    "ReplayStarted",
    "RetryScheduled",
    "ScanFinished",
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


Event = (
    ScanFinished
    | TransferStarted
    | AssociationOpened
    | InstanceDone
    | RetryScheduled
    | ReplayStarted
    | TransferFinished
    | InstanceReceived
)
Observer = Callable[[Event], None]


def ignore(event: Event) -> None:
    """An observer that drops every event (the default for library use)."""
