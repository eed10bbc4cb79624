"""Forwarding complete studies to the local PACS through the send machinery.

Each forward is an ordinary ``sending.send`` transfer (journaled item by item, so what
failed can be sent again) plus a row in the journal's ``forwards`` table. With a
reconciliation mapping, reconciled copies are written to a staging folder outside the
store (the stored instances stay exactly what arrived) and those are sent; a study
whose Patient ID has no mapping is held: recorded and reported, never sent with the
foreign ID.

The one module that knows both receive/ and send (it sits above both): a ``Forwarder``
is one of the study sinks a receiver's completion stack hands complete studies to
(receive/service.py); ``forwarder_for`` builds it from ``ReceiveSettings``.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from pathlib import Path

import pydicom

from dvdexit_cli.audit import TransferAuditor, forward_auditor
from dvdexit_cli.config import AnyPeer, DimsePeer
from dvdexit_cli.errors import DvdexitError
from dvdexit_cli.events import Observer, StudyForwarded, ignore
from dvdexit_cli.fsmode import PRIVATE
from dvdexit_cli.journal import Journal
from dvdexit_cli.journal.store import ReceivedStudy
from dvdexit_cli.receive.completeness import QueuedSink
from dvdexit_cli.receive.reconcile import PatientMapping, reconcile_dataset
from dvdexit_cli.sending import SendSettings, send
from dvdexit_cli.transport.factory import transport_for

__all__ = ["Forwarder", "forwarder_for"]

log = logging.getLogger(__name__)


class _Held(Exception):
    """The study cannot be forwarded as it is (no mapping for its Patient ID)."""


class Forwarder(QueuedSink):
    """Forwards complete studies to ``peer``, one at a time, in a worker thread."""

    thread_name = "dvdexit-forward"

    def __init__(
        self,
        peer: AnyPeer,
        *,
        journal: Journal,
        staging: Path,
        mapping: PatientMapping | None = None,
        observer: Observer = ignore,
        audit: TransferAuditor | None = None,
    ) -> None:
        super().__init__(journal)
        self.peer = peer
        self._audit = audit
        self._staging = staging
        self._mapping = mapping
        self._observer = observer

    def owed(self, receiver: str | None) -> Iterable[tuple[ReceivedStudy, int]]:
        """Forwards a stopped receiver left pending; with ``receiver``, only that receiver's
        studies (another receiver on the same journal forwards its own)."""
        for forward_id, study in self._journal.pending_forwards(self.peer.name, receiver=receiver):
            yield study, forward_id

    def journal_job(self, study: ReceivedStudy) -> int:
        return self._journal.start_forward(study.study_uid, peer=self.peer.name)

    def work(self, study: ReceivedStudy, job_id: int) -> str:
        return self.forward(study, job_id)

    def forward(self, study: ReceivedStudy, forward_id: int) -> str:
        """Forward one study now; returns sent, failed or held (also journaled)."""
        # The journal knows which files are the study's, whatever the --layout.
        files = [Path(p) for p in self._journal.study_files(study.study_uid)]
        transfer_id: int | None = None
        staged: Path | None = None
        try:
            if self._mapping is not None:
                staged = self._reconcile(study.study_uid, files)
            inputs = (staged,) if staged is not None else tuple(files)
            result = send(
                SendSettings(
                    inputs=inputs, peer_name=self.peer.name, peer_address=self.peer.address
                ),
                journal=self._journal,
                # The peer as configured: TLS files, DICOMweb auth or a drop folder.
                transport=transport_for(self.peer),
                audit=self._audit,
            )
            transfer_id = result.transfer_id
            outcome = (
                "sent"
                if result.failed == 0 and result.pending == 0 and not result.error
                else "failed"
            )
            reason = (
                None
                if outcome == "sent"
                else (result.error or f"{result.failed} instance(s) failed")
            )
        except _Held as exc:
            outcome, reason = "held", str(exc)
        except DvdexitError as exc:
            outcome, reason = "failed", str(exc)
        if outcome == "sent" and staged is not None:
            shutil.rmtree(staged, ignore_errors=True)
        if transfer_id is None and self._audit is not None:
            # Nothing was sent, so send() wrote no record: the audit must still say the
            # study did not reach the peer.
            try:
                self._audit.not_sent(
                    self._journal,
                    study.study_uid,
                    peer=self.peer.name,
                    detail=f"{outcome}: {reason}",
                )
            except Exception:
                self._audit.trail.failures += 1
                log.exception("audit record of study %s could not be written", study.study_uid)
        self._journal.finish_forward(
            forward_id, outcome=outcome, transfer_id=transfer_id, reason=reason
        )
        self._observer(
            StudyForwarded(
                study_uid=study.study_uid, peer=self.peer.name, outcome=outcome, reason=reason
            )
        )
        return outcome

    def _reconcile(self, study_uid: str, files: list[Path]) -> Path:
        assert self._mapping is not None
        target = self._staging / study_uid
        datasets = []
        for path in files:
            ds = pydicom.dcmread(path)
            local = self._mapping.lookup(
                str(ds.get("PatientID", "") or ""), str(ds.get("IssuerOfPatientID", "") or "")
            )
            if local is None:
                # Names no ID: the message reaches logs, and patient IDs must not.
                raise _Held("no reconciliation mapping for the study's Patient ID (and issuer)")
            datasets.append((path, ds, local))
        shutil.rmtree(target, ignore_errors=True)
        PRIVATE.make_dir(target)
        PRIVATE.restrict(self._staging)  # an older version's was readable by every user
        for path, ds, local in datasets:
            reconcile_dataset(ds, local)
            out = target / path.name  # {sop} is in every file name: unique
            with PRIVATE.open_new(out) as fh:
                ds.save_as(fh, enforce_file_format=True)
        return target


def forwarder_for(
    peer: DimsePeer | None,
    *,
    journal: Journal,
    staging: Path,
    mapping: PatientMapping | None,
    audit_file: Path | None,
    ae_title: str,
    observer: Observer = ignore,
) -> Forwarder | None:
    """The forwarder of a receiver that forwards to ``peer`` (None: it does not forward)."""
    if peer is None:
        return None
    return Forwarder(
        peer,
        journal=journal,
        staging=staging,
        mapping=mapping,
        observer=observer,
        audit=forward_auditor(audit_file, peer, ae_title),
    )
