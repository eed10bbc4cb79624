"""The Transport protocol that every way of reaching a peer implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from dvdexit_cli.dicom.scan import Instance

__all__ = ["BatchResult", "BatchTransport", "StoreOutcome", "Transport"]


@dataclass(frozen=True)
class StoreOutcome:
    """The peer's answer for one instance.

    ``state`` is ``sent`` (stored, possibly with a warning in ``reason``) or ``failed``
    (``reason`` says why; ``retryable`` says whether a later attempt may succeed).
    A missing answer (timeout, abort) is a retryable failure: whether the peer kept the
    instance is unknown, and resending it is safe because receivers de-duplicate.
    """

    state: Literal["sent", "failed"]
    status: int | None
    reason: str | None = None
    retryable: bool = False


class Transport(Protocol):
    """Open once, store instances one at a time, close.

    ``open`` and ``store`` raise PeerError (exit 5, retryable) when the peer cannot be
    reached at all; every answer the peer gives becomes a StoreOutcome instead.
    """

    @property
    def description(self) -> str:
        """Where this transport sends to, for messages (no secrets)."""
        ...

    def open(self, instances: Sequence[Instance]) -> None: ...

    def store(self, instance: Instance) -> StoreOutcome: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class BatchResult:
    """The peer's answer to one batch: an outcome per SOP Instance UID it was asked about.

    ``retry_after`` is the delay (seconds) the peer asked for before the next attempt.
    """

    outcomes: dict[str, StoreOutcome]
    retry_after: float | None = None


@runtime_checkable
class BatchTransport(Transport, Protocol):
    """A transport that stores many instances in one request (STOW-RS)."""

    def store_batch(self, instances: Sequence[Instance]) -> BatchResult: ...
