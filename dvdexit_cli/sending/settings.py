"""What a send or a replay is asked to do: frozen settings, and the defaults they share."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dvdexit_cli.dicom.scan import Instance
from dvdexit_cli.events import Observer
from dvdexit_cli.journal.store import DEFAULT_LEASE_SECONDS
from dvdexit_cli.transport.base import Transport

__all__ = [
    "DEFAULT_BATCH_BYTES",
    "DEFAULT_BATCH_SIZE",
    "MAX_RETRY_AFTER",
    "RetrySettings",
    "SendSettings",
    "TransportFactory",
]

DEFAULT_BATCH_SIZE = 50
DEFAULT_BATCH_BYTES = 64 * 1024 * 1024
MAX_RETRY_AFTER = 600.0
"""A peer's Retry-After is honoured up to this many seconds (a bogus header must not hang a
night's cron run)."""


@dataclass(frozen=True)
class SendSettings:
    """What to send where, and how hard to try."""

    inputs: tuple[Path, ...]
    peer_name: str
    peer_address: str
    retries: int = 2
    retry_delay: float = 2.0
    note: str | None = None
    reason: str | None = None
    recipient: str | None = None
    """Who the transfer is for: journaled with it, named in its (and its replays') audit."""
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    workers: int = 1
    """Parallel associations (worker processes), each taking whole studies."""
    studies: tuple[str, ...] = ()
    """Only these Study Instance UIDs (empty: all)."""
    modalities: tuple[str, ...] = ()
    """Only series of these modalities (empty: all)."""
    exclude_modalities: tuple[str, ...] = ()
    exclude_sop_classes: tuple[str, ...] = ()
    unpack_dir: Path | None = None
    """Where zip files and ISO images are unpacked (kept until their transfer is complete)."""
    batch_size: int = DEFAULT_BATCH_SIZE
    """Instances per request, for transports that send batches (STOW-RS)."""
    batch_bytes: int = DEFAULT_BATCH_BYTES
    """Bytes per request (a larger single instance goes alone)."""
    attach: Callable[[Sequence[Instance]], Sequence[Path]] | None = None
    """Writes objects that travel with the selected studies (reports, a transfer note;
    see dicom/attach.py) and returns their files; they are sent after the images."""

    def selects(self, inst: Instance) -> bool:
        """Whether the selection options keep this instance."""
        modality = inst.modality.upper()
        return (
            (not self.studies or inst.study_uid in self.studies)
            and (not self.modalities or modality in self.modalities)
            and modality not in self.exclude_modalities
            and inst.sop_class_uid not in self.exclude_sop_classes
        )


@dataclass(frozen=True)
class RetrySettings:
    """Which journaled items to resend, and how hard to try."""

    peer_name: str | None = None
    older_than: float = 0.0
    max_attempts: int | None = None
    retries: int = 2
    retry_delay: float = 2.0
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    unpack_dir: Path | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    batch_bytes: int = DEFAULT_BATCH_BYTES
    include_refused: bool = False
    """Also resend failures the peer called final (after the peer was fixed)."""


TransportFactory = Callable[[Observer], Transport]
"""Builds a fresh transport (in a worker process) that reports to the given observer."""
