"""An in-memory peer, shipped for tests and examples: keeps dataset bytes by SOP Instance UID.

It behaves like a receiver that keeps exactly the bytes it is sent, and can be told to
answer chosen instances with a failure status, or to be unreachable.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from dvdexit_cli.dicom.digest import needs_padding
from dvdexit_cli.dicom.scan import Instance
from dvdexit_cli.errors import PeerUnreachableError
from dvdexit_cli.transport.base import StoreOutcome
from dvdexit_cli.transport.statuses import classify_store_status

__all__ = ["MemoryPeer", "MemoryTransport"]


@dataclass
class MemoryPeer:
    """What an in-memory peer holds: SOP Instance UID -> dataset bytes."""

    name: str = "memory"
    stored: dict[str, bytes] = field(default_factory=dict)
    reachable: bool = True
    fail_with: dict[str, list[int]] = field(default_factory=dict)
    """Per SOP Instance UID, statuses to answer on successive attempts (then success)."""
    received: list[str] = field(default_factory=list)
    """Every SOP Instance UID offered, in order, once per C-STORE (to spot resends)."""
    studies: dict[str, str] = field(default_factory=dict)
    """SOP Instance UID -> Study Instance UID of what it holds (for remote verify)."""

    def digest(self, sop_instance_uid: str) -> str | None:
        data = self.stored.get(sop_instance_uid)
        return hashlib.sha256(data).hexdigest() if data is not None else None


class MemoryTransport:
    """A Transport over a MemoryPeer."""

    def __init__(
        self, peer: MemoryPeer, *, fail_with: Mapping[str, Sequence[int]] | None = None
    ) -> None:
        self.peer = peer
        for uid, codes in (fail_with or {}).items():
            peer.fail_with[uid] = list(codes)

    @property
    def description(self) -> str:
        return f"{self.peer.name} (in memory)"

    def open(self, instances: Sequence[Instance]) -> None:
        if not self.peer.reachable:
            raise PeerUnreachableError(
                f"peer {self.peer.name} unreachable (in-memory, switched off)"
            )

    def store(self, instance: Instance) -> StoreOutcome:
        if not self.peer.reachable:
            raise PeerUnreachableError(
                f"peer {self.peer.name} unreachable (in-memory, switched off)"
            )
        self.peer.received.append(instance.sop_instance_uid)
        queued = self.peer.fail_with.get(instance.sop_instance_uid)
        if queued:
            code = queued.pop(0)
            meaning = classify_store_status(code)
            if meaning.category == "failure":
                return StoreOutcome(
                    "failed", code, f"{code:04X} {meaning.text}", retryable=meaning.retryable
                )
        with instance.path.open("rb") as fh:
            fh.seek(instance.dataset_offset)
            data = fh.read()
        if needs_padding(instance.transfer_syntax, len(data)):
            data += b"\x00"  # as a DIMSE peer receives it (PS3.5 A.5)
        self.peer.stored[instance.sop_instance_uid] = data
        self.peer.studies[instance.sop_instance_uid] = instance.study_uid
        return StoreOutcome("sent", 0)

    def close(self) -> None:
        return None
