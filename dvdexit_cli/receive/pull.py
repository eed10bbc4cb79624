"""Pull whole studies from a peer into the durable store, then check none is missing.

* a DICOMweb peer: QIDO-RS lists the study's instances, WADO-RS fetches each one as the
  peer stores it (streamed to disk), and each goes through ``InstanceStore.put`` and the
  journal's ``received`` table like an instance a peer pushed to ``dvdexit receive``;
* a DIMSE peer: C-FIND lists the instances, C-GET fetches the study on the same
  association (we take the Storage SCP role), or, with a move destination, C-MOVE asks
  the peer to send it to our own running ``dvdexit receive`` (which stores and journals;
  its instances are found where that receiver journaled them, whatever its ``--layout``).

The peer's instance list is the expectation: an instance listed but not in the store
afterwards is ``missing`` and the pull exits 7. ``list_studies`` answers "which studies
match" (QIDO-RS or C-FIND at STUDY level) without retrieving anything.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dvdexit_cli.config import AnyPeer, DicomWebPeer, DimsePeer
from dvdexit_cli.dicom.digest import (
    MalformedFileError,
    NotPart10Error,
    dataset_digest,
    read_file_meta,
)
from dvdexit_cli.dicom.uids import is_valid_uid
from dvdexit_cli.errors import (
    AssociationRejectedError,
    InputError,
    PeerError,
    PeerUnreachableError,
    UsageError,
)
from dvdexit_cli.exitcodes import ExitCode
from dvdexit_cli.fsmode import PRIVATE, Access
from dvdexit_cli.journal import Journal
from dvdexit_cli.receive.ingest import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_OUT_OF_RESOURCES,
    Ingest,
    Sender,
)
from dvdexit_cli.receive.store import DEFAULT_LAYOUT, SPOOL_DIR, InstanceStore
from dvdexit_cli.transport.dicomweb import (
    DicomwebTransport,
    retrieve_instance,
    search_studies,
    study_instances,
)

if TYPE_CHECKING:  # pynetdicom loads only for DIMSE pulls
    from dvdexit_cli.transport.dimse_query import Suboperations

__all__ = [
    "PULL_OUTCOMES",
    "PullResult",
    "PullSettings",
    "PulledInstance",
    "StudyQuery",
    "list_studies",
    "pull",
]

PULL_OUTCOMES = ("stored", "duplicate", "conflict", "failed", "missing")
"""``stored`` and ``duplicate`` are in the store; the others make the pull exit 7."""

_MOVE_HINT = (
    "the peer may not allow C-GET for our AE title (ask its administrator), or does not "
    "support it: pull with C-MOVE instead, to a running 'dvdexit receive' the peer knows: "
    "--move-dest AE (register that AE title with our receiver's address and port at the peer)"
)

_DATE_RANGE = re.compile(r"^(\d{8})?(-(\d{8})?)?$")

# Offered for every SOP class on a C-GET so a peer can send what it stores unchanged.
_GET_SYNTAXES = {
    "1.2.840.10008.1.2.1.99",  # deflated explicit VR little endian
    "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "1.2.840.10008.1.2.4.51",  # JPEG extended
    "1.2.840.10008.1.2.4.57",  # JPEG lossless
    "1.2.840.10008.1.2.4.70",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE lossless
}


@dataclass(frozen=True)
class PullSettings:
    """What to fetch from which peer, and where to store it."""

    studies: tuple[str, ...]
    store: Path
    move_dest: str | None = None
    """C-MOVE to this AE title (our running receiver, known to the peer) instead of C-GET."""
    fsync: bool = True
    timeout: float = 60.0
    access: Access = PRIVATE
    """Modes of what is stored: owner-only unless ``[receive] group``."""
    layout: str = DEFAULT_LAYOUT
    """Where an instance goes below the store (``--layout``), as when listening."""
    sr_to_pdf: bool = False
    """Store each new SR also rendered as an Encapsulated PDF, as when listening."""


@dataclass(frozen=True)
class PulledInstance:
    """One instance the peer listed (or sent), and what became of it here."""

    study_uid: str
    sop_instance_uid: str
    outcome: str
    series_uid: str | None = None
    path: str | None = None
    digest: str | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "study_uid": self.study_uid,
            "series_uid": self.series_uid,
            "sop_instance_uid": self.sop_instance_uid,
            "outcome": self.outcome,
            "path": self.path,
            "digest": self.digest,
            "reason": self.reason,
        }


@dataclass
class PullResult:
    """Every listed instance's fate, per study."""

    peer: str
    method: str
    store: Path
    studies: tuple[str, ...]
    instances: list[PulledInstance] = field(default_factory=list)
    listed: dict[str, int] = field(default_factory=dict)
    """Study UID -> how many instances the peer listed."""
    seconds: float = 0.0
    interrupted: str | None = None
    """Why the pull stopped early (the peer was lost mid-way); what arrived is kept."""
    not_attempted: tuple[str, ...] = ()
    """Studies not asked for because the peer was lost before their turn."""
    retrieval: dict[str, Suboperations] = field(default_factory=dict)
    """Study UID -> how the peer ended its C-GET / C-MOVE (status, sub-operation counts)."""

    def counts(self, study_uid: str | None = None) -> Counter[str]:
        return Counter(
            i.outcome for i in self.instances if study_uid is None or i.study_uid == study_uid
        )

    @property
    def complete(self) -> bool:
        """Every instance the peer listed, for every study asked, is in the store, and
        the peer reports no failed sub-operation."""
        if self.interrupted is not None or self.not_attempted:
            return False
        if not all(i.outcome in ("stored", "duplicate") for i in self.instances):
            return False
        # A peer that ended a retrieval with a failure, or reports failed sub-operations,
        # failed to send something, even when it is not one it listed.
        if any(e.failure or e.failed for e in self.retrieval.values()):
            return False
        # A study whose listed instances were never accounted for (refused mid-run) is
        # not complete either.
        return all(
            self.listed.get(s)
            and self.counts(s)["stored"] + self.counts(s)["duplicate"] >= self.listed[s]
            for s in self.studies
        )

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.OK if self.complete else ExitCode.VERIFY_FAILED

    def to_json(self) -> dict[str, object]:
        return {
            "peer": self.peer,
            "method": self.method,
            "store": str(self.store),
            "outcome": "complete" if self.complete else "incomplete",
            "studies": [
                {
                    "study_uid": study,
                    "attempted": study not in self.not_attempted,
                    "listed": self.listed.get(study, 0),
                    **{name: self.counts(study)[name] for name in PULL_OUTCOMES},
                    "retrieval": self.retrieval[study].to_json()
                    if study in self.retrieval
                    else None,
                }
                for study in self.studies
            ],
            "problems": [
                i.to_json() for i in self.instances if i.outcome not in ("stored", "duplicate")
            ],
            "interrupted": self.interrupted,
            "not_attempted": list(self.not_attempted),
            "seconds": round(self.seconds, 3),
            "exit_code": int(self.exit_code),
        }


def _check_uids(studies: Sequence[str]) -> None:
    if not studies:
        raise UsageError("nothing to pull: give --study UID (repeatable)", hint="or use --list")
    for uid in studies:
        if not is_valid_uid(uid):
            raise UsageError(f"--study {uid!r} is not a valid UID")


def pull(
    peer: AnyPeer,
    settings: PullSettings,
    *,
    journal: Journal,
    transport_for: Callable[[AnyPeer], Any],
) -> PullResult:
    """Fetch ``settings.studies`` from ``peer`` into the store; see the module docstring.

    Raises PeerUnreachableError / PeerError when the peer cannot be asked at all (before
    anything was listed or stored). A peer lost later is not raised: the result is
    ``interrupted``, keeps everything stored so far, names every listed instance that
    did not arrive ``missing``, and exits 7.
    """
    _check_uids(settings.studies)
    started = time.monotonic()
    store = InstanceStore(
        settings.store, fsync=settings.fsync, layout=settings.layout, access=settings.access
    )
    # This pull in the journal: its studies are its own (no listening receiver completes,
    # hooks or forwards them); a listener is AE@HOST:PORT STORE (receive/scp.py).
    receiver = f"pull:{peer.name} {settings.store}"
    ingest = Ingest(
        store,
        journal,
        receiver=receiver,
        spool=settings.store / SPOOL_DIR,
        sr_to_pdf=settings.sr_to_pdf,
    )
    if settings.sr_to_pdf:  # rendered PDFs wait there, as when listening
        try:
            settings.access.make_dir(settings.store / SPOOL_DIR)
        except OSError as exc:
            raise InputError(f"cannot write to the store {store.root}: {exc.strerror}") from exc
    if isinstance(peer, DicomWebPeer):
        transport = transport_for(peer)
        assert isinstance(transport, DicomwebTransport)
        result = PullResult(peer.name, "wado-rs", settings.store, settings.studies)
        with closing(transport):
            _each_study(
                result,
                lambda study: _pull_dicomweb(transport, peer, study, ingest, result),
            )
    elif isinstance(peer, DimsePeer):
        method = "c-move" if settings.move_dest else "c-get"
        result = PullResult(peer.name, method, settings.store, settings.studies)
        if settings.move_dest:
            _each_study(result, lambda study: _pull_move(peer, study, settings, journal, result))
        else:
            _each_study(result, lambda study: _pull_get(peer, study, ingest, settings, result))
    else:
        raise UsageError(
            f"peer {peer.name} is a {peer.kind} peer: pull works from DICOMweb and DIMSE peers"
        )
    if result.method != "c-move":  # a C-MOVE's instances are the receiver's, not ours
        _complete_pulled(journal, result, receiver)
    result.seconds = time.monotonic() - started
    return result


def _each_study(result: PullResult, pull_one: Callable[[str], None]) -> None:
    """Pull study after study; stop at a lost peer once something was listed or stored."""
    for n, study in enumerate(result.studies):
        try:
            pull_one(study)
        except PeerError as exc:
            if not result.instances:
                raise  # nothing listed arrived or was lost yet: the error says it all
            result.interrupted = exc.message + (f" ({exc.hint})" if exc.hint else "")
        if result.interrupted is not None:
            result.not_attempted = result.studies[n + (study in result.listed) :]
            return


def _lost(
    result: PullResult, study: str, sops: Sequence[str], why: str, series: str | None = None
) -> None:
    """The peer was lost: name every listed instance of ``study`` that did not arrive."""
    result.interrupted = why
    for sop in sops:
        result.instances.append(
            PulledInstance(
                study, sop, "missing", series, reason=f"not received: the peer was lost ({why})"
            )
        )


def _refused_later(result: PullResult, study: str, sops: Sequence[str], exc: PeerError) -> None:
    """The peer refused this study after earlier ones were pulled: the pull goes on to
    report (exit 7, not 5), so name every listed instance of this study missing."""
    if not result.instances:
        return  # the first study: the refusal itself is the answer (exit 5)
    for sop in sops:
        result.instances.append(
            PulledInstance(study, sop, "missing", reason=f"not received: {exc.message}")
        )


def _scratch(store: InstanceStore) -> tempfile.TemporaryDirectory[str]:
    """A folder on the store's file system for copies not yet stored (removed after)."""
    try:
        store.make_root()
        return tempfile.TemporaryDirectory(prefix=".pull-", dir=store.root)
    except OSError as exc:
        raise InputError(f"cannot write to the store {store.root}: {exc.strerror}") from exc


def _put(ingest: Ingest, sender: Sender, study: str, sop: str, source: Path) -> PulledInstance:
    """Store one retrieved Part 10 file through the ingest pipeline (receive/ingest.py)."""
    try:
        with source.open("rb") as fh:
            meta = read_file_meta(fh)  # the header only: the store digests while copying
    except (OSError, NotPart10Error, MalformedFileError) as exc:
        status = STATUS_OUT_OF_RESOURCES if isinstance(exc, OSError) else STATUS_CANNOT_UNDERSTAND
        done = ingest.refuse(
            sender,
            f"not stored: {exc}",
            status=status,
            sop_class_uid=None,
            sop_instance_uid=sop,
            transfer_syntax=None,
            study_uid=study,
        )
        return PulledInstance(study, sop, "failed", reason=done.reason)
    done = ingest.put(
        source,
        sender=sender,
        sop_class_uid=meta.sop_class_uid,
        sop_instance_uid=sop,
        transfer_syntax=meta.transfer_syntax,
        study_uid=study,
    )
    if done.put is None:
        return PulledInstance(study, sop, "failed", reason=f"not stored: {done.reason}")
    put = done.put
    note: str | None = None
    if put.study_uid != study:
        note = "the peer sent it for this study but its dataset names another study"
    if put.outcome == "conflict":
        note = "the store already holds other content under this SOP Instance UID; kept aside"
    return PulledInstance(study, sop, put.outcome, put.series_uid, str(put.path), put.digest, note)


def _complete_pulled(journal: Journal, result: PullResult, receiver: str) -> None:
    """A study of which every listed instance is in the store is complete (by ``pull``)."""
    for study in result.studies:
        kept = result.counts(study)["stored"] + result.counts(study)["duplicate"]
        ended = result.retrieval.get(study)
        failed = ended is not None and bool(ended.failure or ended.failed)
        if result.listed.get(study) and kept >= result.listed[study] and not failed:
            journal.complete_study(study, completed_by="pull", receiver=receiver)


def _pull_dicomweb(
    transport: DicomwebTransport,
    peer: DicomWebPeer,
    study: str,
    ingest: Ingest,
    result: PullResult,
) -> None:
    listed = study_instances(transport, study)
    result.listed[study] = len(listed)
    ordered = sorted(listed.items())
    sender = Sender(peer.name, peer.address)
    with _scratch(ingest.store) as scratch:
        for n, (sop, (_sop_class, series)) in enumerate(ordered):
            target = Path(scratch) / f"{n:06d}.dcm"
            try:
                found = retrieve_instance(transport, study, series, sop, target)
            except PeerUnreachableError as exc:
                # Stored instances stay stored; the rest is for another pull.
                _lost(result, study, [uid for uid, _ in ordered[n:]], exc.message)
                return
            except PeerError as exc:
                result.instances.append(
                    PulledInstance(study, sop, "failed", series, reason=str(exc))
                )
                continue
            if not found:
                result.instances.append(
                    PulledInstance(
                        study, sop, "missing", series,
                        reason="listed by QIDO-RS, but WADO-RS answered 404",
                    )
                )  # fmt: skip
                continue
            result.instances.append(_put(ingest, sender, study, sop, target))
            target.unlink(missing_ok=True)


def _pull_get(
    peer: DimsePeer, study: str, ingest: Ingest, settings: PullSettings, result: PullResult
) -> None:
    from dvdexit_cli.transport.dimse_query import find_study_instances, get_study

    listed = find_study_instances(peer, study, timeout=settings.timeout)
    result.listed[study] = len(listed)
    if not listed:
        return
    classes = {sop_class: set(_GET_SYNTAXES) for sop_class in listed.values() if sop_class}
    sender = Sender(peer.called_ae, peer.address)
    with _scratch(ingest.store) as scratch:
        try:
            got = get_study(
                peer, study, Path(scratch), sop_classes=classes, timeout=settings.timeout
            )
        except (PeerUnreachableError, AssociationRejectedError):
            raise
        except PeerError as exc:
            _refused_later(result, study, sorted(listed), exc)
            raise PeerError(exc.message, hint=_MOVE_HINT) from exc
        result.retrieval[study] = got.ended
        # What arrived is stored even when the peer was lost mid-way, or ended the C-GET
        # with a failure or warning status.
        for sop in sorted(got.received):
            result.instances.append(_put(ingest, sender, study, sop, got.received[sop].path))
        for sop in sorted(got.broken):
            result.instances.append(PulledInstance(study, sop, "failed", reason=got.broken[sop]))
        absent = sorted(set(listed) - set(got.received) - set(got.broken))
        if got.lost is not None:
            _lost(result, study, absent, got.lost)
            return
        reason = f"listed by C-FIND, not sent by the C-GET ({got.ended.describe('C-GET')})"
        for sop in absent:
            result.instances.append(PulledInstance(study, sop, "missing", reason=reason))


def _pull_move(
    peer: DimsePeer, study: str, settings: PullSettings, journal: Journal, result: PullResult
) -> None:
    from dvdexit_cli.transport.dimse_query import find_study_instances, move_refusal, move_study

    listed = find_study_instances(peer, study, timeout=settings.timeout)
    result.listed[study] = len(listed)
    if not listed:
        return
    root = settings.store.resolve()
    folder = settings.store / study

    def in_store(sop: str) -> list[Path]:
        # Where our receiver journaled it (any --layout), if that is in this store;
        # else where the default layout puts it (a receiver with another journal).
        row = journal.stored_instances([sop]).get(sop)
        journaled = Path(str(row["path"])) if row is not None and row["path"] else None
        if journaled and journaled.is_file() and journaled.resolve().is_relative_to(root):
            return [journaled]
        return sorted(folder.glob(f"*/{sop}.dcm")) if folder.is_dir() else []

    before = {sop for sop in listed if in_store(sop)}
    destination = str(settings.move_dest)
    try:
        moved = move_study(peer, study, destination, timeout=settings.timeout)
    except PeerError as exc:
        _refused_later(result, study, sorted(listed), exc)
        raise
    ended = moved.ended
    # The receiver answers each C-STORE only once the file is durable, and the peer's
    # final C-MOVE response follows its last sub-operation: what arrived is on disk now.
    arrived = {sop: hits for sop in listed if (hits := in_store(sop))}
    if (
        moved.lost is None
        and ended.failure
        and not ended.sent_something
        and not set(arrived) - before
    ):
        refusal = move_refusal(peer, destination, ended)  # refused outright, nothing sent
        _refused_later(result, study, sorted(listed), refusal)
        raise refusal
    result.retrieval[study] = ended
    if moved.lost is not None:
        result.interrupted = moved.lost
    for sop in sorted(listed):
        copies = arrived.get(sop)
        if not copies:
            if moved.lost is not None:
                reason = f"not received: the peer was lost ({moved.lost})"
            else:
                reason = (
                    "listed by C-FIND, not in the store after the C-MOVE "
                    f"({ended.describe('C-MOVE')})"
                )
            result.instances.append(PulledInstance(study, sop, "missing", reason=reason))
            continue
        try:
            _, digest = dataset_digest(copies[0])
        except (OSError, NotPart10Error, MalformedFileError) as exc:
            result.instances.append(
                PulledInstance(study, sop, "failed", reason=f"stored copy unreadable: {exc}")
            )
            continue
        result.instances.append(
            PulledInstance(study, sop, "stored", copies[0].parent.name, str(copies[0]), digest)
        )


# -- query ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyQuery:
    """Study-level matching keys; empty ones match everything."""

    patient_id: str | None = None
    accession: str | None = None
    study_date: str | None = None
    """A date or range: ``20240115``, ``20240101-20240131``, ``-20231231``, ``20240101-``."""

    def __post_init__(self) -> None:
        if self.study_date is not None and (
            not self.study_date.strip("-") or not _DATE_RANGE.match(self.study_date)
        ):
            raise UsageError(
                f"--study-date {self.study_date!r} is not a date or a date range",
                hint="use YYYYMMDD, YYYYMMDD-YYYYMMDD, -YYYYMMDD or YYYYMMDD-",
            )
        if not (self.patient_id or self.accession or self.study_date):
            raise UsageError(
                "--list needs a key: --patient-id, --accession or --study-date",
                hint="listing every study of a PACS is not offered",
            )


def list_studies(
    peer: AnyPeer,
    query: StudyQuery,
    *,
    transport_for: Callable[[AnyPeer], Any],
    timeout: float = 30.0,
) -> list[dict[str, Any]]:
    """The studies matching ``query`` at the peer (QIDO-RS or C-FIND STUDY level).

    Each: study_uid, study_date, accession, modalities, description, series, instances;
    never the patient's name or ID.
    """
    if isinstance(peer, DicomWebPeer):
        filters = {
            key: value
            for key, value in (
                ("PatientID", query.patient_id),
                ("AccessionNumber", query.accession),
                ("StudyDate", query.study_date),
            )
            if value
        }
        transport = transport_for(peer)
        assert isinstance(transport, DicomwebTransport)
        with closing(transport):
            return search_studies(transport, filters)
    if isinstance(peer, DimsePeer):
        from dvdexit_cli.transport.dimse_query import find_studies

        return find_studies(
            peer,
            patient_id=query.patient_id,
            accession=query.accession,
            study_date=query.study_date,
            timeout=timeout,
        )
    raise UsageError(
        f"peer {peer.name} is a {peer.kind} peer: --list works with DICOMweb and DIMSE peers"
    )
