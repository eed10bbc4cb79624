"""The audit trail: one JSON line per study per transfer outcome.

Modelled on the DICOM audit message "DICOM Instances Transferred" (PS3.15 A.5.3.7,
EventID DCM 110104): who took part (the process sending the data, role "Source", and
the process receiving it, role "Destination", each with AE title and network address,
plus the OS user and host that ran dvdexit), which study (Study Instance UID, instance
count, SOP classes), the action (EventActionCode ``R`` for a sender; ``C`` for a receiver
that stored new instances, ``R`` when it already held all of them) and the outcome
(EventOutcomeIndicator 0 success, 4 minor failure, 8 serious failure, 12 major failure).

Deliberately unlike the DICOM message, a record names **no patient**: no Patient ID, no
name, only the Study Instance UID (a site that needs the patient looks the study up in
its PACS). The sender's note, reason and recipient are recorded when given; they are
free text typed by a person, shortened to 1,024 characters each.

Records are appended to ``DATA/audit.jsonl`` (``$DVDEXIT_HOME/audit.jsonl`` when
DVDEXIT_HOME is set): each with one ``write`` on a descriptor opened with ``O_APPEND``,
then ``fsync``, so records of concurrent processes never interleave within a line. A
record that cannot be written is logged (logger ``dvdexit_cli.audit``) and counted in
``AuditTrail.failures``; the transfer's own result is not changed by it.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dvdexit_cli.config import AnyPeer, DicomWebPeer, DimsePeer, Paths, url_without_secrets
from dvdexit_cli.fsmode import PRIVATE
from dvdexit_cli.journal import Journal
from dvdexit_cli.journal.store import ReceivedStudy

__all__ = [
    "AUDIT_FILE_NAME",
    "OUTCOMES",
    "AuditTrail",
    "Participant",
    "ReceiveAuditor",
    "TransferAuditor",
    "audit_path",
    "audit_pull",
    "destination_for_peer",
    "forward_auditor",
    "read_audit",
    "source_for_send",
    "study_record",
]

log = logging.getLogger(__name__)

AUDIT_FILE_NAME = "audit.jsonl"
SCHEMA = 1
EVENT_ID = {"code": "110104", "scheme": "DCM", "meaning": "DICOM Instances Transferred"}
#: EventOutcomeIndicator (PS3.15 A.5.2 / RFC 3881) -> the words we show.
OUTCOMES = {0: "success", 4: "minor failure", 8: "serious failure", 12: "major failure"}
_TEXT_LIMIT = 1024


def audit_path(paths: Paths) -> Path:
    """Where the audit trail of this data directory is kept."""
    return paths.data_dir / AUDIT_FILE_NAME


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _text(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    return value.strip()[:_TEXT_LIMIT]


@dataclass(frozen=True)
class Participant:
    """An active participant: a process (AE) at a network address, and its role."""

    role: str  # source or destination
    name: str | None = None
    """The peer's name in peers.toml, a package name, or None for ourselves."""
    ae_title: str | None = None
    address: str | None = None
    """host:port, URL or folder path."""
    requestor: bool = False

    def to_json(self) -> dict[str, object]:
        return {
            "role": self.role,
            "role_code": "110153" if self.role == "source" else "110152",
            "name": self.name,
            "ae_title": self.ae_title,
            "address": self.address,
            "requestor": self.requestor,
        }


def destination_for_peer(peer: AnyPeer) -> Participant:
    """The receiving participant of a send to ``peer``."""
    ae = peer.called_ae if isinstance(peer, DimsePeer) else None
    address = url_without_secrets(peer.url) if isinstance(peer, DicomWebPeer) else peer.address
    return Participant("destination", name=peer.name, ae_title=ae, address=address)


def source_for_send(peer: AnyPeer | None, local_ae: str) -> Participant:
    """Ourselves as the sending participant (the AE title we call ``peer`` with)."""
    ae = peer.calling_ae if isinstance(peer, DimsePeer) else local_ae
    return Participant("source", ae_title=ae, address=socket.gethostname(), requestor=True)


class AuditTrail:
    """Appends audit records to one JSON-lines file."""

    def __init__(self, path: Path, *, process: str = "dvdexit") -> None:
        self.path = path
        self.process = process
        self.failures = 0
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # no passwd entry (some containers)
            user = str(os.getuid())
        self.who = {"user": user, "host": socket.gethostname(), "process": process}

    def write(self, record: Mapping[str, object]) -> bool:
        """Append one record as one line; False (logged, counted) when it cannot be written."""
        line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        try:
            PRIVATE.make_dir(self.path.parent)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                written = os.write(fd, line)
                if written != len(line):
                    raise OSError(f"short write ({written} of {len(line)} bytes)")
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            self.failures += 1
            log.error("audit record could not be written to %s: %s", self.path, exc)
            return False
        return True

    def record(
        self,
        *,
        kind: str,
        action: str,
        outcome: int,
        study_uid: str,
        source: Participant,
        destination: Participant,
        instances: int,
        sop_classes: Mapping[str, int],
        counts: Mapping[str, int],
        transfer_id: int | None = None,
        note: str | None = None,
        reason: str | None = None,
        recipient: str | None = None,
        detail: str | None = None,
    ) -> bool:
        return self.write(
            study_record(
                kind=kind,
                action=action,
                outcome=outcome,
                study_uid=study_uid,
                source=source,
                destination=destination,
                instances=instances,
                sop_classes=sop_classes,
                counts=counts,
                who=self.who,
                transfer_id=transfer_id,
                note=note,
                reason=reason,
                recipient=recipient,
                detail=detail,
            )
        )


def study_record(
    *,
    kind: str,
    action: str,
    outcome: int,
    study_uid: str,
    source: Participant,
    destination: Participant,
    instances: int,
    sop_classes: Mapping[str, int],
    counts: Mapping[str, int],
    who: Mapping[str, str],
    transfer_id: int | None = None,
    note: str | None = None,
    reason: str | None = None,
    recipient: str | None = None,
    detail: str | None = None,
) -> dict[str, object]:
    """One audit record (a JSON object); see docs/audit.md for every field."""
    return {
        "schema": SCHEMA,
        "time": _now(),
        "event": EVENT_ID,
        "type": kind,
        "action": action,
        "outcome": outcome,
        "outcome_text": OUTCOMES[outcome],
        "who": dict(who),
        "source": source.to_json(),
        "destination": destination.to_json(),
        "study": {
            "uid": study_uid,
            "id_type": "110180",
            "instances": instances,
            "sop_classes": dict(sorted(sop_classes.items())),
        },
        "counts": dict(counts),
        "transfer_id": transfer_id,
        "note": _text(note),
        "reason": _text(reason),
        "recipient": _text(recipient),
        "detail": _text(detail),
    }


def send_outcome(counts: Mapping[str, int], *, retryable_only: bool, unreachable: bool) -> int:
    """EventOutcomeIndicator of one study of a send.

    0: every instance was delivered. 4 (minor): some were not, but every failure is
    retryable (``send --retry-failed`` may finish the study). 8 (serious): an instance
    failed for good or was given up on (``abandoned``), or nothing of the study arrived.
    12 (major): the peer could not be reached at all.
    """
    missing = counts.get("failed", 0) + counts.get("pending", 0) + counts.get("abandoned", 0)
    if not missing:
        return 0
    if unreachable and not counts.get("sent", 0):
        return 12
    if retryable_only and counts.get("sent", 0) and not counts.get("abandoned", 0):
        return 4
    return 8


class TransferAuditor:
    """Writes the audit records of sends (and replays) from what the journal holds."""

    def __init__(
        self,
        trail: AuditTrail,
        *,
        source_for: Callable[[str], Participant],
        destination_for: Callable[[str], Participant],
        kind: str = "send",
        recipient: str | None = None,
    ) -> None:
        self.trail = trail
        self.source_for = source_for
        self.destination_for = destination_for
        self.kind = kind
        self.recipient = recipient

    def transfer(
        self,
        journal: Journal,
        transfer_id: int,
        *,
        outcome: str,
        error: str | None,
        studies: Collection[str] | None = None,
    ) -> None:
        """One record per study of ``transfer_id`` as the journal has it now.

        With ``studies``, only for those (a replay audits the studies it resent).
        """
        transfer = journal.transfer_row(transfer_id)
        peer = str(transfer["peer"]) if transfer is not None else ""
        try:
            source, destination = self.source_for(peer), self.destination_for(peer)
        except Exception:  # the peer was removed from peers.toml since: name it only
            source = source_for_send(None, "")
            destination = Participant("destination", name=peer)
        by_study: dict[str, list[Any]] = {}
        for row in journal.audit_items(transfer_id):
            by_study.setdefault(row["study_uid"] or "", []).append(row)
        for study_uid, rows in sorted(by_study.items()):
            if not study_uid:
                continue  # files that were not DICOM: no study to audit
            if studies is not None and study_uid not in studies:
                continue
            states = Counter(
                "sent"
                if r["state"] == "committed"
                else "pending"
                if r["state"] == "sending"
                else str(r["state"])
                for r in rows
            )
            counts = {k: states.get(k, 0) for k in ("sent", "failed", "pending", "skipped")}
            if states.get("abandoned"):  # given up on deliberately (send --abandon)
                counts["abandoned"] = states["abandoned"]
            failed = [r for r in rows if r["state"] == "failed"]
            code = send_outcome(
                counts,
                retryable_only=all(r["retryable"] for r in failed),
                unreachable=outcome == "unreachable",
            )
            reasons = sorted({str(r["reason"]) for r in failed if r["reason"]})
            self.trail.record(
                kind=self.kind,
                action="R",
                outcome=code,
                study_uid=study_uid,
                source=source,
                destination=destination,
                instances=len({r["sop_instance_uid"] for r in rows if r["sop_instance_uid"]}),
                sop_classes=Counter(str(r["sop_class_uid"]) for r in rows if r["sop_class_uid"]),
                counts=counts,
                transfer_id=transfer_id,
                note=transfer["note"] if transfer is not None else None,
                reason=transfer["reason"] if transfer is not None else None,
                recipient=(transfer["recipient"] if transfer is not None else None)
                or self.recipient,
                detail=error or (reasons[0] if reasons else None),
            )

    def not_sent(
        self,
        journal: Journal,
        study_uid: str,
        *,
        peer: str,
        detail: str,
    ) -> None:
        """One record (serious failure) for a study whose transfer never started.

        A forward held (no reconciliation mapping) or refused before anything was sent
        has no transfer in the journal, but the study did not reach the peer.
        """
        _counts, classes = received_counts(journal.received_rows(study_uid))
        held = sum(classes.values())
        try:
            source, destination = self.source_for(peer), self.destination_for(peer)
        except Exception:
            source = source_for_send(None, "")
            destination = Participant("destination", name=peer)
        self.trail.record(
            kind=self.kind,
            action="R",
            outcome=8,
            study_uid=study_uid,
            source=source,
            destination=destination,
            instances=held,
            sop_classes=classes,
            counts={"sent": 0, "failed": 0, "pending": held, "skipped": 0},
            detail=detail,
        )


def forward_auditor(
    audit_file: Path | None, peer: AnyPeer | None, local_ae: str
) -> TransferAuditor | None:
    """The auditor of a receiver's forwards to ``peer`` (None without an audit file)."""
    if audit_file is None or peer is None:
        return None
    return TransferAuditor(
        AuditTrail(audit_file, process="dvdexit receive (forward)"),
        source_for=lambda _name: source_for_send(peer, local_ae),
        destination_for=lambda _name: destination_for_peer(peer),
        kind="forward",
    )


class ReceiveAuditor:
    """Writes the audit record of a received study when it completes."""

    def __init__(self, trail: AuditTrail, *, local_ae: str, kind: str = "receive") -> None:
        self.trail = trail
        self.kind = kind
        self.destination = Participant(
            "destination", ae_title=local_ae, address=socket.gethostname()
        )

    def commitment_failed(
        self, journal: Journal, study_uid: str, *, failed: int, transaction_uid: str
    ) -> None:
        """A record for a study whose Storage Commitment we answered with failures.

        The sender named instances we do not hold: the transfer did not fully arrive,
        and the study does not complete (no hook) until they do.
        """
        study = journal.study(study_uid)
        if study is None:
            return
        self.study(
            journal,
            study,
            failed=failed,
            detail=f"storage commitment {transaction_uid}: {failed} instance(s) of the "
            "request not held",
        )

    def study(
        self,
        journal: Journal,
        study: ReceivedStudy,
        *,
        failed: int = 0,
        failed_as: str = "not_held",
        detail: str | None = None,
    ) -> None:
        """One record for ``study`` (counts over everything received for it so far).

        ``failed``: instances that did not arrive, counted under ``failed_as``
        (``not_held``: the sender's commitment named them; ``not_imported``: a package's
        import stopped before them).
        """
        counts, classes = received_counts(journal.received_rows(study.study_uid))
        note = journal.study_note(study.study_uid) or {}
        sender_ae = study.calling_ae
        if self.kind == "import" and note.get("sender_ae"):
            sender_ae = str(note["sender_ae"])
        source = Participant(
            "source",
            name=Path(study.peer_address).name if self.kind == "import" else None,
            ae_title=sender_ae,
            address=study.peer_address,
            requestor=True,
        )
        if failed:
            counts[failed_as] = failed
        bad = counts["conflict"] + counts["refused"] + failed
        good = counts["stored"] + counts["duplicate"]
        self.trail.record(
            kind=self.kind,
            # PS3.15 A.5.3.7: C when the receiver did not hold the instances, R when it did.
            action="C" if counts["stored"] else "R",
            outcome=0 if not bad else 4 if good else 8,
            study_uid=study.study_uid,
            source=source,
            destination=self.destination,
            instances=sum(classes.values()),
            sop_classes=classes,
            counts=counts,
            note=note.get("note"),
            reason=note.get("reason"),
            recipient=note.get("recipient"),
            detail=detail or (f"complete by {study.completed_by}" if study.completed_by else None),
        )


def audit_pull(
    trail: AuditTrail,
    journal: Journal,
    result: Any,
    *,
    peer: AnyPeer,
    local_ae: str,
) -> None:
    """One record per study of a pull (``receive --from``): the peer is the source.

    ``result`` is a pull.PullResult. Outcome 0 when every listed instance is here, 4 when
    some are missing or failed but some arrived, 8 when none did.
    """
    remote = destination_for_peer(peer)
    source = Participant(
        "source", name=remote.name, ae_title=remote.ae_title, address=remote.address
    )
    destination = Participant(
        "destination", ae_title=local_ae, address=socket.gethostname(), requestor=True
    )
    for study_uid in result.studies:
        counts = {k: int(v) for k, v in result.counts(study_uid).items()}
        counts["listed"] = int(result.listed.get(study_uid, 0))
        here = counts.get("stored", 0) + counts.get("duplicate", 0)
        complete = bool(counts["listed"]) and here == sum(
            v for k, v in counts.items() if k != "listed"
        )
        pulled = {i.sop_instance_uid for i in result.instances if i.study_uid == study_uid}
        classes: Counter[str] = Counter()
        seen: set[str] = set()
        for row in journal.received_rows(study_uid):
            uid = row["sop_instance_uid"]
            if uid in pulled and uid not in seen and row["outcome"] in ("stored", "duplicate"):
                seen.add(uid)
                classes[str(row["sop_class_uid"])] += 1
        trail.record(
            kind="pull",
            action="C" if counts.get("stored", 0) else "R",
            outcome=0 if complete else 4 if here else 8,
            study_uid=study_uid,
            source=source,
            destination=destination,
            instances=here,
            sop_classes=classes,
            counts=counts,
            detail=f"by {result.method}",
        )


def read_audit(path: Path, *, since: datetime | None = None) -> Iterator[dict[str, Any]]:
    """The records of ``path`` (oldest first), those at or after ``since``; bad lines skipped."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return
    with handle:
        for raw in handle:
            try:
                record = json.loads(raw)
            except ValueError:
                log.warning("skipping an unreadable line in %s", path)
                continue
            if not isinstance(record, dict):
                continue
            if since is not None:
                try:
                    at = datetime.fromisoformat(str(record.get("time", "")).replace("Z", "+00:00"))
                except ValueError:
                    continue
                if at < since:
                    continue
            yield record


def received_counts(rows: Iterable[Any]) -> tuple[dict[str, int], Counter[str]]:
    """Counts by outcome and by SOP class from ``received`` rows of one study.

    A refusal (out of resources, a store that could not write) of an instance held now
    is not counted: the sender's retry delivered it, and the study did arrive whole.
    """
    rows = list(rows)
    held = {
        r["sop_instance_uid"]
        for r in rows
        if r["outcome"] in ("stored", "duplicate") and r["sop_instance_uid"]
    }
    counts = {k: 0 for k in ("stored", "duplicate", "conflict", "refused")}
    classes: Counter[str] = Counter()
    seen: set[str] = set()
    for row in rows:
        if row["outcome"] == "refused" and row["sop_instance_uid"] in held:
            continue
        counts[str(row["outcome"])] = counts.get(str(row["outcome"]), 0) + 1
        uid = row["sop_instance_uid"]
        if row["outcome"] in ("stored", "duplicate") and uid and uid not in seen:
            seen.add(uid)
            classes[str(row["sop_class_uid"])] += 1
    return counts, classes
