"""Pull whole studies from a peer into the durable store, then check none is missing.

* a DICOMweb peer: QIDO-RS lists the study's instances, WADO-RS fetches each one as the
  peer stores it (streamed to disk), and each goes through ``InstanceStore.put`` and the
  journal's ``received`` table like an instance a peer pushed to ``dvdexit receive``;
* a DIMSE peer: C-FIND lists the instances, C-GET fetches the study on the same
  association (we take the Storage SCP role), or, with a move destination, C-MOVE asks
  the peer to send it to our own running ``dvdexit receive`` (which stores and journals).

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
from typing import Any

from dvdexit_cli.config import AnyPeer, DicomWebPeer, DimsePeer
from dvdexit_cli.dicom.digest import (
    MalformedFileError,
    NotPart10Error,
    dataset_digest,
    read_file_meta,
)
from dvdexit_cli.dicom.uids import is_valid_uid
from dvdexit_cli.errors import InputError, PeerError, PeerUnreachableError, UsageError
from dvdexit_cli.exitcodes import ExitCode
from dvdexit_cli.journal import Journal
from dvdexit_cli.receive.store import InstanceStore, RefusedInstance, StoreWriteError
from dvdexit_cli.transport.dicomweb import (
    DicomwebTransport,
    retrieve_instance,
    search_studies,
    study_instances,
)

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

    def counts(self, study_uid: str | None = None) -> Counter[str]:
        return Counter(
            i.outcome for i in self.instances if study_uid is None or i.study_uid == study_uid
        )

    @property
    def complete(self) -> bool:
        return all(self.listed.get(s) for s in self.studies) and all(
            i.outcome in ("stored", "duplicate") for i in self.instances
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
                    "listed": self.listed.get(study, 0),
                    **{name: self.counts(study)[name] for name in PULL_OUTCOMES},
                }
                for study in self.studies
            ],
            "problems": [
                i.to_json() for i in self.instances if i.outcome not in ("stored", "duplicate")
            ],
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

    Raises PeerUnreachableError / PeerError when the peer cannot be asked at all
    (nothing stored so far is lost: each instance is stored and journaled as it arrives).
    """
    _check_uids(settings.studies)
    started = time.monotonic()
    store = InstanceStore(settings.store, fsync=settings.fsync)
    if isinstance(peer, DicomWebPeer):
        transport = transport_for(peer)
        assert isinstance(transport, DicomwebTransport)
        result = PullResult(peer.name, "wado-rs", settings.store, settings.studies)
        with closing(transport):
            for study in settings.studies:
                _pull_dicomweb(transport, peer, study, store, journal, result)
    elif isinstance(peer, DimsePeer):
        method = "c-move" if settings.move_dest else "c-get"
        result = PullResult(peer.name, method, settings.store, settings.studies)
        for study in settings.studies:
            if settings.move_dest:
                _pull_move(peer, study, settings, result)
            else:
                _pull_get(peer, study, store, journal, settings, result)
    else:
        raise UsageError(
            f"peer {peer.name} is a {peer.kind} peer: pull works from DICOMweb and DIMSE peers"
        )
    result.seconds = time.monotonic() - started
    return result


def _scratch(store: InstanceStore) -> tempfile.TemporaryDirectory[str]:
    """A folder on the store's file system for copies not yet stored (removed after)."""
    try:
        store.root.mkdir(parents=True, exist_ok=True)
        return tempfile.TemporaryDirectory(prefix=".pull-", dir=store.root)
    except OSError as exc:
        raise InputError(f"cannot write to the store {store.root}: {exc.strerror}") from exc


def _put(
    store: InstanceStore,
    journal: Journal,
    peer: AnyPeer,
    calling_ae: str,
    study: str,
    sop: str,
    source: Path,
) -> PulledInstance:
    """Store one retrieved Part 10 file and journal it as received."""
    meta = None
    try:
        with source.open("rb") as fh:
            meta = read_file_meta(fh)  # the header only: the store digests while copying
        put = store.put(
            source,
            sop_class_uid=meta.sop_class_uid,
            sop_instance_uid=sop,
            transfer_syntax=meta.transfer_syntax,
            calling_ae=calling_ae,
        )
    except (OSError, NotPart10Error, MalformedFileError, RefusedInstance, StoreWriteError) as exc:
        reason = f"not stored: {exc}"
        journal.record_received(
            calling_ae=calling_ae,
            peer_address=peer.address,
            sop_class_uid=meta.sop_class_uid if meta else None,
            sop_instance_uid=sop,
            study_uid=study,
            series_uid=None,
            transfer_syntax=meta.transfer_syntax if meta else None,
            size=None,
            digest=None,
            path=None,
            outcome="refused",
            status=0xA900 if isinstance(exc, RefusedInstance) else 0xA700,
            reason=reason,
        )
        return PulledInstance(study, sop, "failed", reason=reason)
    journal.record_received(
        calling_ae=calling_ae,
        peer_address=peer.address,
        sop_class_uid=meta.sop_class_uid,
        sop_instance_uid=sop,
        study_uid=put.study_uid,
        series_uid=put.series_uid,
        transfer_syntax=meta.transfer_syntax,
        size=put.size,
        digest=put.digest,
        path=str(put.path),
        outcome=put.outcome,
        status=0,
        reason="pulled from the peer",
    )
    note: str | None = None
    if put.study_uid != study:
        note = "the peer sent it for this study but its dataset names another study"
    if put.outcome == "conflict":
        note = "the store already holds other content under this SOP Instance UID; kept aside"
    return PulledInstance(study, sop, put.outcome, put.series_uid, str(put.path), put.digest, note)


def _pull_dicomweb(
    transport: DicomwebTransport,
    peer: DicomWebPeer,
    study: str,
    store: InstanceStore,
    journal: Journal,
    result: PullResult,
) -> None:
    listed = study_instances(transport, study)
    result.listed[study] = len(listed)
    with _scratch(store) as scratch:
        for n, (sop, (_sop_class, series)) in enumerate(sorted(listed.items())):
            target = Path(scratch) / f"{n:06d}.dcm"
            try:
                found = retrieve_instance(transport, study, series, sop, target)
            except PeerUnreachableError:
                raise  # stored instances stay stored; the rest is for another pull
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
            result.instances.append(_put(store, journal, peer, peer.name, study, sop, target))
            target.unlink(missing_ok=True)


def _pull_get(
    peer: DimsePeer,
    study: str,
    store: InstanceStore,
    journal: Journal,
    settings: PullSettings,
    result: PullResult,
) -> None:
    from dvdexit_cli.transport.dimse_query import find_study_instances, retrieve_study

    listed = find_study_instances(peer, study, timeout=settings.timeout)
    result.listed[study] = len(listed)
    if not listed:
        return
    classes = {sop_class: set(_GET_SYNTAXES) for sop_class in listed.values() if sop_class}
    with _scratch(store) as scratch:
        received, broken = retrieve_study(
            peer, study, Path(scratch), sop_classes=classes, timeout=settings.timeout
        )
        for sop in sorted(set(listed) | set(received)):
            if sop in received:
                result.instances.append(
                    _put(store, journal, peer, peer.called_ae, study, sop, received[sop].path)
                )
            elif sop in broken:
                result.instances.append(PulledInstance(study, sop, "failed", reason=broken[sop]))
            else:
                result.instances.append(
                    PulledInstance(
                        study, sop, "missing", reason="listed by C-FIND, not sent by the C-GET"
                    )
                )


def _pull_move(peer: DimsePeer, study: str, settings: PullSettings, result: PullResult) -> None:
    from dvdexit_cli.transport.dimse_query import find_study_instances

    listed = find_study_instances(peer, study, timeout=settings.timeout)
    result.listed[study] = len(listed)
    if not listed:
        return
    failures = move_study(peer, study, str(settings.move_dest), timeout=settings.timeout)
    # The receiver answers each C-STORE only once the file is durable, and the peer's
    # final C-MOVE response follows its last sub-operation: what arrived is on disk now.
    folder = settings.store / study
    for sop in sorted(listed):
        hits = sorted(folder.glob(f"*/{sop}.dcm")) if folder.is_dir() else []
        if not hits:
            reason = "listed by C-FIND, not in the store after the C-MOVE"
            if failures:
                reason += f" ({failures} sub-operation(s) failed at the peer)"
            result.instances.append(PulledInstance(study, sop, "missing", reason=reason))
            continue
        try:
            _, digest = dataset_digest(hits[0])
        except (OSError, NotPart10Error, MalformedFileError) as exc:
            result.instances.append(
                PulledInstance(study, sop, "failed", reason=f"stored copy unreadable: {exc}")
            )
            continue
        result.instances.append(
            PulledInstance(study, sop, "stored", hits[0].parent.name, str(hits[0]), digest)
        )


def move_study(peer: DimsePeer, study_uid: str, destination: str, *, timeout: float) -> int:
    """C-MOVE a study to ``destination``; the number of failed sub-operations.

    PeerError when the peer refuses the move (A801: it does not know the destination).
    """
    from pydicom.dataset import Dataset
    from pynetdicom.presentation import build_context
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        StudyRootQueryRetrieveInformationModelMove,
    )

    # The association helpers of dimse_query: TCP_NODELAY, the pynetdicom race, errors.
    from dvdexit_cli.transport.dimse_query import _association, _no_answer, _status

    context = [build_context(StudyRootQueryRetrieveInformationModelMove)]
    with _association(peer, timeout, context) as assoc:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study_uid
        final: int | None = None
        failed = 0
        for status, _identifier in assoc.send_c_move(
            query, destination, StudyRootQueryRetrieveInformationModelMove
        ):
            final = _status(status)
            if final is None:
                raise _no_answer(assoc, peer, "C-MOVE")
            failed = int(getattr(status, "NumberOfFailedSuboperations", 0) or 0)
    if final == 0xA801:
        raise PeerError(
            f"{peer.name} does not know the move destination {destination!r} (A801)",
            hint=f"register AE title {destination} with our receiver's address and port at "
            f"the peer, or pull with C-GET (drop --move-dest)",
        )
    if final is not None and final not in (0x0000, 0xB000, 0xFE00):
        raise PeerError(
            f"{peer.name} answered the C-MOVE to {destination!r} with status {final:04X}",
            hint=f"the peer may not know the move destination {destination!r} (register it "
            f"with our receiver's address and port) or may not allow retrieval by our AE "
            f"title; check its log",
        )
    return failed


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
        return _find_studies(peer, query, timeout)
    raise UsageError(
        f"peer {peer.name} is a {peer.kind} peer: --list works with DICOMweb and DIMSE peers"
    )


def _find_studies(peer: DimsePeer, query: StudyQuery, timeout: float) -> list[dict[str, Any]]:
    from pydicom.dataset import Dataset
    from pynetdicom.presentation import build_context
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        StudyRootQueryRetrieveInformationModelFind,
    )

    from dvdexit_cli.transport.dimse_query import _association, _find

    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ""
    identifier.PatientID = query.patient_id or ""
    identifier.AccessionNumber = query.accession or ""
    identifier.StudyDate = query.study_date or ""
    identifier.ModalitiesInStudy = ""
    identifier.StudyDescription = ""
    identifier.NumberOfStudyRelatedSeries = None
    identifier.NumberOfStudyRelatedInstances = None
    context = [build_context(StudyRootQueryRetrieveInformationModelFind)]
    studies: list[dict[str, Any]] = []
    with _association(peer, timeout, context) as assoc:
        for ds in _find(assoc, identifier, peer):
            uid = str(ds.get("StudyInstanceUID", "") or "")
            if not uid:
                continue
            modalities = ds.get("ModalitiesInStudy", None)
            studies.append(
                {
                    "study_uid": uid,
                    "study_date": str(ds.get("StudyDate", "") or "") or None,
                    "accession": str(ds.get("AccessionNumber", "") or "") or None,
                    "modalities": [str(m) for m in modalities]
                    if isinstance(modalities, Sequence) and not isinstance(modalities, str)
                    else ([str(modalities)] if modalities else []),
                    "description": str(ds.get("StudyDescription", "") or "") or None,
                    "series": _int(ds.get("NumberOfStudyRelatedSeries", None)),
                    "instances": _int(ds.get("NumberOfStudyRelatedInstances", None)),
                }
            )
    return studies


def _int(value: object) -> int | None:
    try:
        return int(str(value)) if value not in (None, "") else None
    except ValueError:
        return None
