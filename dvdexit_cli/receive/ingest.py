"""The one way an instance enters the store: store -> journal -> note -> render -> activity.

Listening (receive/scp.py), the drop folder (receive/drop_folder.py) and pulling
(receive/pull.py) each hand a Part 10 file to ``Ingest.put``; what the journal then holds
is the same whichever way the instance came. The status of each outcome is in one table
(``STATUS``), and is what a listening receiver answers the sender (docs/conformance.md):

* ``stored`` / ``duplicate``: 0000, stored durably, or an identical copy already was;
* ``conflict``: C001, this SOP Instance UID is stored with other content (the newcomer
  is kept aside in ``conflicts/``);
* ``refused``: C000 when the content cannot be stored (invalid UIDs, a dataset cut short
  or unparsable, dataset and request disagree), A700 when it could not be written (disk
  full, I/O error, a size limit, the free-disk floor).

An instance is journaled by the store's ``record`` callback, with its study's activity
(folder, receiver) in the same transaction: it is in the store and the journal, or in
neither. A stored or duplicate transfer-note SR records the sender's note for its study;
a new SR is also stored rendered as a PDF when asked (``sr_to_pdf``). A JournalError
propagates (the instance is not kept); the caller decides what that means for its sender.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from dvdexit_cli.events import InstanceReceived, Observer, ignore
from dvdexit_cli.journal import Journal
from dvdexit_cli.receive.notes import record_note_from_instance
from dvdexit_cli.receive.render import render_sr_beside
from dvdexit_cli.receive.store import (
    InstanceStore,
    PutResult,
    RefusedInstance,
    StoreWriteError,
)

__all__ = [
    "CONFLICT_REASON",
    "STATUS",
    "STATUS_CANNOT_UNDERSTAND",
    "STATUS_CONFLICT",
    "STATUS_OUT_OF_RESOURCES",
    "STATUS_SUCCESS",
    "Ingest",
    "Ingested",
    "Sender",
]

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_CONFLICT = 0xC001
#: Outcome -> status answered and journaled (a refusal's depends on why: see refusal_status).
STATUS = {
    "stored": STATUS_SUCCESS,
    "duplicate": STATUS_SUCCESS,
    "conflict": STATUS_CONFLICT,
}
CONFLICT_REASON = "conflict: this SOP Instance UID is stored with other content"


def refusal_status(exc: Exception) -> int:
    """C000 for content that must not be stored; A700 for a store that could not write."""
    return STATUS_CANNOT_UNDERSTAND if isinstance(exc, RefusedInstance) else STATUS_OUT_OF_RESOURCES


@dataclass(frozen=True)
class Sender:
    """Who the instance came from, as the journal shows it."""

    calling_ae: str
    peer_address: str


@dataclass(frozen=True)
class Ingested:
    """What became of one instance: its outcome, the status that goes with it, where it is."""

    outcome: str
    status: int
    reason: str | None
    sop_instance_uid: str | None
    study_uid: str | None
    series_uid: str | None = None
    put: PutResult | None = None

    @property
    def kept(self) -> bool:
        """In the store as this instance (stored now or before)."""
        return self.outcome in ("stored", "duplicate")


class Ingest:
    """Stores and journals instances for one receiver (``receiver`` names it in the journal).

    ``spool`` is a folder on the store's file system for rendered PDFs before they are
    stored. ``max_instance_size`` and ``min_free`` (a listening receiver's limits; None:
    not checked) refuse an instance (A700) before anything is written.
    """

    def __init__(
        self,
        store: InstanceStore,
        journal: Journal,
        *,
        receiver: str | None,
        spool: Path,
        sr_to_pdf: bool = False,
        max_instance_size: int | None = None,
        min_free: int | None = None,
        observer: Observer = ignore,
    ) -> None:
        self.store = store
        self.journal = journal
        self.receiver = receiver
        self.spool = spool
        self.sr_to_pdf = sr_to_pdf
        self.max_instance_size = max_instance_size
        self.min_free = min_free
        self.observer = observer

    def put(
        self,
        source: Path,
        *,
        sender: Sender,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax: str,
        study_uid: str | None = None,
        series_uid: str | None = None,
    ) -> Ingested:
        """Store ``source`` and journal it; never raises for the instance's own faults.

        ``study_uid`` / ``series_uid``: what the caller already knows of a refused
        instance's study (the drop folder read it), journaled with the refusal.
        Raises JournalError when the journal cannot record it (nothing is kept then).
        """
        reason = self._over_limits(source)
        if reason is not None:
            log.info("instance refused with A700: %s", reason)
            return self.refuse(
                sender,
                reason,
                status=STATUS_OUT_OF_RESOURCES,
                sop_class_uid=sop_class_uid,
                sop_instance_uid=sop_instance_uid,
                transfer_syntax=transfer_syntax,
            )
        outcomes: list[str] = []

        def journal_it(put: PutResult) -> None:
            # Called by the store before it lets go of the instance: if this raises, the
            # instance is removed again, so it is journaled with its study or not kept.
            conflict = put.outcome == "conflict"
            outcomes.append(
                self.journal.record_received(
                    calling_ae=sender.calling_ae,
                    peer_address=sender.peer_address,
                    sop_class_uid=sop_class_uid,
                    sop_instance_uid=sop_instance_uid,
                    study_uid=put.study_uid,
                    series_uid=put.series_uid,
                    transfer_syntax=transfer_syntax,
                    size=put.size,
                    digest=put.digest,
                    path=str(put.path),
                    outcome=put.outcome,
                    status=STATUS[put.outcome],
                    reason=CONFLICT_REASON if conflict else None,
                    study_folder=(
                        None if conflict else str(self.store.study_folder(put.path, put.study_uid))
                    ),
                    receiver=self.receiver,
                )
            )

        try:
            put = self.store.put(
                source,
                sop_class_uid=sop_class_uid,
                sop_instance_uid=sop_instance_uid,
                transfer_syntax=transfer_syntax,
                calling_ae=sender.calling_ae,
                record=journal_it,
            )
        except (RefusedInstance, StoreWriteError) as exc:
            if isinstance(exc, StoreWriteError):
                log.error("store failed: %s", exc)
            return self.refuse(
                sender,
                str(exc),
                status=refusal_status(exc),
                sop_class_uid=sop_class_uid,
                sop_instance_uid=sop_instance_uid,
                transfer_syntax=transfer_syntax,
                study_uid=study_uid,
                series_uid=series_uid,
            )
        outcome = outcomes[0]
        if outcome in ("stored", "duplicate"):
            self._after_kept(put, outcome, sender=sender, sop_class_uid=sop_class_uid)
        done = Ingested(
            outcome=outcome,
            status=STATUS[outcome],
            reason=CONFLICT_REASON if outcome == "conflict" else None,
            sop_instance_uid=sop_instance_uid,
            study_uid=put.study_uid,
            series_uid=put.series_uid,
            put=put,
        )
        self._tell(sender, done)
        return done

    def refuse(
        self,
        sender: Sender,
        reason: str,
        *,
        status: int,
        sop_class_uid: str | None,
        sop_instance_uid: str | None,
        transfer_syntax: str | None,
        study_uid: str | None = None,
        series_uid: str | None = None,
    ) -> Ingested:
        """Journal an instance that was not stored (``status`` C000 or A700)."""
        # A refused UID may be hostile; keep it out of the journal's key columns.
        sop = sop_instance_uid if sop_instance_uid and _plain(sop_instance_uid) else None
        self.journal.record_received(
            calling_ae=sender.calling_ae,
            peer_address=sender.peer_address,
            sop_class_uid=sop_class_uid,
            sop_instance_uid=sop,
            study_uid=study_uid,
            series_uid=series_uid,
            transfer_syntax=transfer_syntax,
            size=None,
            digest=None,
            path=None,
            outcome="refused",
            status=status,
            reason=reason,
        )
        done = Ingested("refused", status, reason, sop, study_uid, series_uid)
        self._tell(sender, done)
        return done

    def _after_kept(
        self, put: PutResult, outcome: str, *, sender: Sender, sop_class_uid: str
    ) -> None:
        record_note_from_instance(
            self.journal,
            study_uid=put.study_uid,
            sop_class_uid=sop_class_uid,
            path=put.path,
            sender_ae=sender.calling_ae,
        )
        if outcome == "stored" and self.sr_to_pdf:
            render_sr_beside(
                self.store,
                self.journal,
                sr_path=put.path,
                sop_class_uid=sop_class_uid,
                calling_ae=sender.calling_ae,
                spool=self.spool,
            )

    def _over_limits(self, source: Path) -> str | None:
        """Why an instance must be refused before anything is written, if it must."""
        if self.max_instance_size is None and self.min_free is None:
            return None
        try:
            size = source.stat().st_size
            free = shutil.disk_usage(self.store.root).free
        except OSError as exc:
            return f"cannot check the store: {exc.strerror or exc}"
        limit = self.max_instance_size
        if limit is not None and size > limit:
            return f"instance of {size} bytes exceeds the limit of {limit} bytes"
        if self.min_free is not None and free - size < self.min_free:
            return "free disk space below the floor (--min-free)"
        return None

    def _tell(self, sender: Sender, done: Ingested) -> None:
        self.observer(
            InstanceReceived(
                calling_ae=sender.calling_ae,
                sop_instance_uid=done.sop_instance_uid,
                study_uid=done.study_uid,
                outcome=done.outcome,
                status=done.status,
                reason=done.reason,
            )
        )


def _plain(uid: str) -> bool:
    return len(uid) <= 64 and all(c.isdigit() or c == "." for c in uid)
