"""Storage Commitment Push Model, SCP side (PS3.4 Annex J).

The N-ACTION request names a set of instances (the sender's manifest); each is checked
against the journal and the store: recorded as stored, same SOP class, file present and
its dataset digest still the journaled one. The N-EVENT-REPORT lists successes and
failures (0112 no such instance, 0119 SOP class differs, 0110 stored file missing or
changed). It goes back on the same association while that is open; otherwise a new
association is opened to the requester, whose address must be configured (DICOM does
not carry it): ``--commit-reply AE=HOST:PORT``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import build_role
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from dvdexit_cli.config import DEFAULT_MAX_PDU
from dvdexit_cli.dicom.digest import MalformedFileError, NotPart10Error, dataset_digest
from dvdexit_cli.journal import Journal
from dvdexit_cli.transport.dimse import bound_pdus
from dvdexit_cli.transport.handoff import HandoffAE

__all__ = [
    "COMMITMENT_INSTANCE",
    "CommitmentResult",
    "evaluate_commitment",
    "send_event_report",
]

log = logging.getLogger(__name__)

COMMITMENT_CLASS = str(StorageCommitmentPushModel)
#: The well-known SOP Instance UID of the Storage Commitment Push Model.
COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
NO_SUCH_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
PROCESSING_FAILURE = 0x0110
#: Seconds to wait for the answer to a report sent on the requester's own association.
SAME_ASSOCIATION_TIMEOUT = 10.0
#: Seconds to watch whether the requester releases before reporting on its association.
RELEASE_GRACE = 0.5


@dataclass
class CommitmentResult:
    transaction_uid: str
    succeeded: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str, int]] = field(default_factory=list)
    studies: set[str] = field(default_factory=set)

    def event_info(self) -> Dataset:
        info = Dataset()
        info.TransactionUID = self.transaction_uid
        info.ReferencedSOPSequence = [_ref(c, i) for c, i in self.succeeded]
        if self.failed:
            failed = []
            for sop_class, sop_instance, reason in self.failed:
                item = _ref(sop_class, sop_instance)
                item.FailureReason = reason
                failed.append(item)
            info.FailedSOPSequence = failed
        return info

    @property
    def event_type(self) -> int:
        return 2 if self.failed else 1


def _ref(sop_class: str, sop_instance: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    return item


def evaluate_commitment(request: Dataset, *, journal: Journal) -> CommitmentResult:
    """Check every instance the request names; raise ValueError for a malformed request."""
    transaction = str(request.get("TransactionUID", "") or "")
    if not transaction:
        raise ValueError("no Transaction UID")
    named: list[tuple[str, str]] = []
    for item in request.get("ReferencedSOPSequence", []) or []:
        named.append(
            (
                str(item.get("ReferencedSOPClassUID", "")),
                str(item.get("ReferencedSOPInstanceUID", "")),
            )
        )
    if not named:
        raise ValueError("no Referenced SOP Sequence")
    result = CommitmentResult(transaction)
    records = journal.stored_instances(uid for _, uid in named)
    for sop_class, sop_instance in named:
        row = records.get(sop_instance)
        if row is None:
            result.failed.append((sop_class, sop_instance, NO_SUCH_INSTANCE))
            continue
        result.studies.add(str(row["study_uid"]))
        if str(row["sop_class_uid"]) != sop_class:
            result.failed.append((sop_class, sop_instance, CLASS_INSTANCE_CONFLICT))
        elif not _intact(Path(str(row["path"])), str(row["digest"])):
            result.failed.append((sop_class, sop_instance, PROCESSING_FAILURE))
        else:
            result.succeeded.append((sop_class, sop_instance))
    return result


def _intact(path: Path, digest: str) -> bool:
    try:
        return dataset_digest(path)[1] == digest
    except (OSError, NotPart10Error, MalformedFileError):
        return False


def send_event_report(
    result: CommitmentResult,
    *,
    assoc: Any,
    ae_title: str,
    reply_to: Mapping[str, tuple[str, int]],
    ssl_context: Any = None,
    max_pdu: int = DEFAULT_MAX_PDU,
    done: Callable[[bool], None] = lambda ok: None,
) -> threading.Thread:
    """Send the N-EVENT-REPORT in a thread: same association if open, else a new one.

    A new association advertises and sends PDUs of ``max_pdu`` bytes at most.
    """

    def work() -> None:
        ok = False
        try:
            ok = _send(result, assoc, ae_title, reply_to, ssl_context, max_pdu)
        except Exception:  # a failed report must never take the receiver down
            log.exception("storage commitment report %s failed", result.transaction_uid)
        done(ok)

    thread = threading.Thread(target=work, name="dvdexit-commit-report", daemon=True)
    thread.start()
    return thread


def _open(assoc: Any) -> bool:
    return bool(assoc.is_established) and not assoc.acse.is_release_requested()


def _send(
    result: CommitmentResult,
    assoc: Any,
    ae_title: str,
    reply_to: Mapping[str, tuple[str, int]],
    ssl_context: Any,
    max_pdu: int,
) -> bool:
    info = result.event_info()
    # A requester that releases right after the N-ACTION response wants the report on a
    # new association; sending on the old one would cross its release. Give it a moment
    # to say so (a requester that stays is waiting for the report anyway).
    deadline = time.monotonic() + RELEASE_GRACE
    while time.monotonic() < deadline and _open(assoc):
        time.sleep(0.02)
    if _open(assoc):
        assoc.dimse_timeout = SAME_ASSOCIATION_TIMEOUT
        status, _ = assoc.send_n_event_report(
            info, result.event_type, COMMITMENT_CLASS, COMMITMENT_INSTANCE
        )
        if status and status.Status == 0:
            return True
        log.warning("storage commitment report on the same association was not accepted")
    requester = str(assoc.requestor.ae_title).strip()
    address = reply_to.get(requester)
    if address is None:
        log.error(
            "storage commitment report for %s: association closed and no reply address"
            " configured for %s (--commit-reply AE=HOST:PORT)",
            result.transaction_uid,
            requester,
        )
        return False
    ae = HandoffAE(ae_title=ae_title)
    ae.add_requested_context(COMMITMENT_CLASS)
    role = build_role(COMMITMENT_CLASS, scp_role=True)
    tls = (ssl_context, address[0]) if ssl_context is not None else None
    reply = ae.associate(
        address[0], address[1], ae_title=requester, ext_neg=[role], max_pdu=max_pdu, tls_args=tls
    )
    if not reply.is_established:
        log.error("storage commitment report: cannot associate with %s", requester)
        return False
    bound_pdus(reply, max_pdu)
    try:
        status, _ = reply.send_n_event_report(
            info, result.event_type, COMMITMENT_CLASS, COMMITMENT_INSTANCE
        )
        return bool(status) and status.Status == 0
    finally:
        reply.release()
