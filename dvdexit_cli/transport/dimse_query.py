"""DIMSE operations that ask a peer what it holds or fetch it: C-FIND, Storage Commitment,
C-GET, C-MOVE.

Used by remote verification (``dvdexit_cli.verify_remote``) and pulls
(``dvdexit_cli.pull``). Each operation opens its own association (``open_association``:
TCP_NODELAY, the pynetdicom response race closed, rejections translated), checks every
status it gets, and translates pynetdicom's failures into ``dvdexit_cli.errors`` classes.
Nothing here prints or logs identifying values.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from dvdexit_cli.config import DimsePeer, LocalSettings
from dvdexit_cli.dicom.contexts import EXPLICIT_LE, IMPLICIT_LE
from dvdexit_cli.dicom.digest import MalformedFileError, NotPart10Error, dataset_digest
from dvdexit_cli.errors import (
    AssociationRejectedError,
    ConfigError,
    InputError,
    PeerError,
    PeerUnreachableError,
)
from dvdexit_cli.fsmode import PRIVATE
from dvdexit_cli.tls import peer_context
from dvdexit_cli.transport.dimse import bound_pdus, guard_reactor, set_nodelay
from dvdexit_cli.transport.handoff import HandoffAE

__all__ = [
    "CHECK_COMMIT",
    "CHECK_FIND",
    "CHECK_GET",
    "CommitmentResult",
    "GetResult",
    "MoveResult",
    "Retrieved",
    "Suboperations",
    "compare_datasets",
    "find",
    "find_studies",
    "find_study_instances",
    "get_study",
    "move_refusal",
    "move_study",
    "no_answer_error",
    "open_association",
    "probe_checks",
    "request_commitment",
    "retrieve_status_category",
    "retrieve_status_text",
    "retrieve_study",
    "status_code",
]

log = logging.getLogger(__name__)

CHECK_FIND = "c-find"
CHECK_COMMIT = "storage-commitment"
CHECK_GET = "c-get"

# The well-known SOP Instance of the Storage Commitment Push Model (PS3.4 J.3.5).
_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
_PENDING = (0xFF00, 0xFF01)
_MAX_CONTEXTS = 128


def _ae(peer: DimsePeer, timeout: float) -> AE:
    ae = HandoffAE(ae_title=peer.calling_ae)
    ae.connection_timeout = timeout
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    return ae


@contextmanager
def open_association(
    peer: DimsePeer,
    timeout: float,
    contexts: Sequence[Any],
    *,
    ext_neg: Sequence[Any] = (),
    handlers: Sequence[Any] = (),
    ae: AE | None = None,
) -> Iterator[Any]:
    """An established association to ``peer`` proposing ``contexts``; released on exit.

    Raises AssociationRejectedError (A-ASSOCIATE-RJ) or PeerUnreachableError.
    """
    ae = ae or _ae(peer, timeout)
    assoc = ae.associate(
        peer.host,
        peer.port,
        contexts=list(contexts),
        ae_title=peer.called_ae,
        ext_neg=list(ext_neg) or None,
        evt_handlers=list(handlers) or None,
        max_pdu=peer.pdu_limit,
        tls_args=(context, peer.host) if (context := peer_context(peer)) is not None else None,
    )
    if not assoc.is_established:
        primitive = assoc.acceptor.primitive
        if assoc.is_rejected and primitive is not None:
            raise AssociationRejectedError(
                f"association rejected by {peer.name} ({primitive.reason_str})",
                hint=f"run 'dvdexit status --peer {peer.name}' for a diagnosis",
            )
        raise PeerUnreachableError(
            f"peer {peer.name} unreachable at {peer.address}",
            hint=f"run 'dvdexit status --peer {peer.name}' for a diagnosis",
        )
    # Nagle's algorithm delays every DIMSE message that is written in pieces (PEERS.md);
    # with fast answers, keep the reactor thread off our responses (the pynetdicom race).
    set_nodelay(assoc)
    # pynetdicom's reactor may take a C-FIND / C-GET / N-ACTION response off the DIMSE
    # queue while we wait for it (PEERS.md); requests (C-GET sub-operations,
    # N-EVENT-REPORT) still reach it and our handlers.
    guard_reactor(assoc)
    bound_pdus(assoc, peer.pdu_limit)
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def probe_checks(peer: DimsePeer, *, timeout: float = 10.0) -> dict[str, bool]:
    """Which remote checks the peer accepts: one association proposing all of them."""
    wanted = {
        CHECK_FIND: StudyRootQueryRetrieveInformationModelFind,
        CHECK_GET: StudyRootQueryRetrieveInformationModelGet,
        CHECK_COMMIT: StorageCommitmentPushModel,
    }
    # Verification keeps a peer that accepts none of the others talking to us.
    contexts = [build_context(Verification)] + [build_context(uid) for uid in wanted.values()]
    with open_association(peer, timeout, contexts) as assoc:
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
    return {name: str(uid) in accepted for name, uid in wanted.items()}


def status_code(status: Any) -> int | None:
    """The Status of a DIMSE response dataset; None when there was no valid response."""
    code = getattr(status, "Status", None)
    return int(code) if code is not None else None


def no_answer_error(assoc: Any, peer: DimsePeer, what: str) -> PeerError:
    """A request that got no valid status: refused without a status, aborted, or silent."""
    how = "aborted the association on" if assoc.is_aborted else "gave no valid answer to"
    return PeerError(
        f"{peer.name} {how} our {what}",
        hint=f"the peer may not allow {what} for our AE title {peer.calling_ae!r}: ask its "
        f"administrator to register it (with our address); or it is busy: retry later",
    )


def find(assoc: Any, query: Dataset, peer: DimsePeer) -> Iterator[Dataset]:
    """Study Root C-FIND on an open association: each matching identifier.

    Raises PeerError on a failure status or a missing answer.
    """
    for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
        code = status_code(status)
        if code is None:
            raise no_answer_error(assoc, peer, "C-FIND")
        if code in _PENDING:
            if identifier is not None:
                yield identifier
        elif code != 0:
            raise PeerError(
                f"{peer.name} answered a C-FIND with status {code:04X}",
                hint="the peer's query service failed; check its log",
            )


def find_study_instances(
    peer: DimsePeer, study_uid: str, *, timeout: float = 30.0
) -> dict[str, str]:
    """SOP Instance UID -> SOP Class UID of every instance the peer lists for a study.

    Queries hierarchically (SERIES, then IMAGE per series), which every Study Root
    C-FIND SCP must support.
    """
    found: dict[str, str] = {}
    context = [build_context(StudyRootQueryRetrieveInformationModelFind)]
    with open_association(peer, timeout, context) as assoc:
        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.StudyInstanceUID = study_uid
        query.SeriesInstanceUID = ""
        series = [
            str(ds.SeriesInstanceUID)
            for ds in find(assoc, query, peer)
            if "SeriesInstanceUID" in ds
        ]
        for series_uid in dict.fromkeys(series):
            query = Dataset()
            query.QueryRetrieveLevel = "IMAGE"
            query.StudyInstanceUID = study_uid
            query.SeriesInstanceUID = series_uid
            query.SOPInstanceUID = ""
            query.SOPClassUID = ""
            for ds in find(assoc, query, peer):
                if "SOPInstanceUID" in ds:
                    found[str(ds.SOPInstanceUID)] = str(ds.get("SOPClassUID", ""))
    return found


@dataclass
class CommitmentResult:
    """The peer's Storage Commitment answer for one request."""

    transaction_uid: str
    committed: set[str] = field(default_factory=set)
    failed: dict[str, int] = field(default_factory=dict)
    """SOP Instance UID -> Failure Reason (PS3.4 J.3.2.1.1.1.1), e.g. 0x0112 no such object."""
    answered: bool = False
    """Whether an N-EVENT-REPORT for this transaction arrived before the timeout."""


class _CommitmentListener:
    """Collects the N-EVENT-REPORT for one transaction, on any association."""

    def __init__(self, transaction_uid: str) -> None:
        self.result = CommitmentResult(transaction_uid)
        self.done = threading.Event()

    def __call__(self, event: Any) -> tuple[int, None]:
        info = event.event_information
        if info is None or str(info.get("TransactionUID", "")) != self.result.transaction_uid:
            return 0x0000, None  # another transaction's report: acknowledge, ignore
        for item in info.get("ReferencedSOPSequence", []):
            self.result.committed.add(str(item.ReferencedSOPInstanceUID))
        for item in info.get("FailedSOPSequence", []):
            self.result.failed[str(item.ReferencedSOPInstanceUID)] = int(
                item.get("FailureReason", 0x0110)
            )
        self.result.answered = True
        self.done.set()
        return 0x0000, None


def request_commitment(
    peer: DimsePeer,
    references: Iterable[tuple[str, str]],
    *,
    local: LocalSettings,
    timeout: float = 30.0,
) -> CommitmentResult:
    """Ask the peer to commit to holding (SOP Class UID, SOP Instance UID) ``references``.

    Sends N-ACTION (push model), then waits up to ``timeout`` seconds for the
    N-EVENT-REPORT, on the same association or on a new one the peer opens to
    ``local.port`` (when set; many PACS, Orthanc among them, report that way).
    """
    listener = _CommitmentListener(generate_uid())
    request = Dataset()
    request.TransactionUID = listener.result.transaction_uid
    sequence = []
    for sop_class, sop_instance in references:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        sequence.append(item)
    request.ReferencedSOPSequence = sequence

    ae = _ae(peer, timeout)
    server = None
    handlers: list[Any] = [(evt.EVT_N_EVENT_REPORT, listener)]
    if local.port is not None:
        server_ae = AE(ae_title=local.ae_title)
        server_ae.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
        server_ae.add_supported_context(Verification)
        server_ae.network_timeout = timeout
        server_ae.maximum_pdu_size = local.max_pdu
        try:
            server = server_ae.start_server(
                (local.host, local.port), block=False, evt_handlers=handlers
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on port {local.port} for the Storage Commitment report: "
                f"{exc.strerror or exc}",
                hint="another program uses that port; change [local] port in peers.toml",
            ) from exc
    try:
        context = [build_context(StorageCommitmentPushModel)]
        with open_association(peer, timeout, context, handlers=handlers, ae=ae) as assoc:
            status, _reply = assoc.send_n_action(
                request, 1, StorageCommitmentPushModel, _COMMITMENT_INSTANCE
            )
            code = status_code(status)
            if code is None:
                raise no_answer_error(assoc, peer, "Storage Commitment request")
            if code != 0:
                raise PeerError(
                    f"{peer.name} refused the Storage Commitment request (status {code:04X})",
                    hint="the peer may not allow commitment for our AE title",
                )
            # Keep the association open for a while: some peers report on it.
            listener.done.wait(timeout)
    finally:
        if server is not None:
            server.shutdown()
    return listener.result


@dataclass(frozen=True)
class Retrieved:
    """One instance fetched back from the peer into a temporary Part 10 file."""

    path: Path
    sop_class_uid: str
    transfer_syntax: str
    digest: str


class _GetReceiver:
    """C-STORE sub-operations of a C-GET, written to ``folder`` as Part 10 files."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.received: dict[str, Retrieved] = {}
        self.broken: dict[str, str] = {}

    def __call__(self, event: Any) -> int:
        request = event.request
        sop_class = str(request.AffectedSOPClassUID or "")
        sop_instance = str(request.AffectedSOPInstanceUID or "")
        syntax = str(event.context.transfer_syntax)
        target = self.folder / f"{len(self.received) + len(self.broken):06d}.dcm"
        try:
            source = getattr(event, "dataset_path", None)
            if source is not None:  # pynetdicom already wrote a Part 10 file
                shutil.move(str(source), target)
            else:
                meta = FileMetaDataset()
                meta.MediaStorageSOPClassUID = UID(sop_class)
                meta.MediaStorageSOPInstanceUID = UID(sop_instance)
                meta.TransferSyntaxUID = UID(syntax)
                with PRIVATE.open_new(target) as fh:
                    fh.write(b"\0" * 128 + b"DICM")
                    write_file_meta_info(fh, meta, enforce_standard=True)  # type: ignore[arg-type]
                    fh.write(request.DataSet.getvalue())
            _meta, digest = dataset_digest(target)
        except (OSError, NotPart10Error, MalformedFileError) as exc:
            self.broken[sop_instance] = f"retrieved copy unreadable: {exc}"
            return 0x0000  # we asked for it; the verdict records the problem
        self.received[sop_instance] = Retrieved(target, sop_class, syntax, digest)
        return 0x0000


@dataclass
class Suboperations:
    """How a C-GET or C-MOVE ended, as the peer said: its final status and the numbers of
    completed, failed and warning sub-operations (None where the peer did not say)."""

    status: int | None = None
    """The final status; None when the retrieval was cut short (the peer was lost)."""
    completed: int | None = None
    failed: int | None = None
    warning: int | None = None

    def update(self, response: Any, code: int) -> None:
        """Take the status and any sub-operation counts of one (pending or final) answer."""
        if code not in _PENDING:
            self.status = code
        for name, keyword in (
            ("completed", "NumberOfCompletedSuboperations"),
            ("failed", "NumberOfFailedSuboperations"),
            ("warning", "NumberOfWarningSuboperations"),
        ):
            value = getattr(response, keyword, None)
            if value is not None and value != "":
                setattr(self, name, int(value))

    @property
    def failure(self) -> bool:
        """The final status is a failure or a cancel (not success, not a warning)."""
        return self.status is not None and retrieve_status_category(self.status) in (
            "failure",
            "cancel",
        )

    @property
    def sent_something(self) -> bool:
        """Whether the peer reports any completed (or warning) sub-operation."""
        return bool(self.completed) or bool(self.warning)

    def describe(self, operation: str) -> str:
        """E.g. 'the peer ended the C-MOVE with status A702 (...): 2 completed, 3 failed'."""
        if self.status is None:
            head = f"the {operation} was cut short"
        else:
            head = (
                f"the peer ended the {operation} with status {self.status:04X} "
                f"({retrieve_status_text(self.status)})"
            )
        counts = [
            f"{value} {name}"
            for name, value in (
                ("completed", self.completed),
                ("failed", self.failed),
                ("warning", self.warning),
            )
            if value is not None
        ]
        return head + (": " + ", ".join(counts) if counts else "")

    def to_json(self) -> dict[str, object]:
        return {
            "status": f"{self.status:04X}" if self.status is not None else None,
            "category": retrieve_status_category(self.status) if self.status is not None else None,
            "meaning": retrieve_status_text(self.status) if self.status is not None else None,
            "completed": self.completed,
            "failed": self.failed,
            "warning": self.warning,
        }


_RETRIEVE_STATUSES = {
    0x0000: ("success", "all sub-operations complete"),
    0xB000: ("warning", "sub-operations complete, one or more failures or warnings"),
    0xFE00: ("cancel", "sub-operations terminated by a cancel"),
    0xA701: ("failure", "out of resources: unable to calculate the number of matches"),
    0xA702: ("failure", "out of resources: unable to perform sub-operations"),
    0xA801: ("failure", "move destination unknown"),
    0xA900: ("failure", "identifier does not match SOP class"),
    0x0122: ("failure", "SOP class not supported"),
    0x0124: ("failure", "refused: not authorised"),
    0x0211: ("failure", "unrecognised operation"),
    0x0213: ("failure", "resource limitation at the peer"),
}


def retrieve_status_category(code: int) -> str:
    """'success', 'warning', 'cancel' or 'failure' for a final C-GET / C-MOVE status."""
    if code in _RETRIEVE_STATUSES:
        return _RETRIEVE_STATUSES[code][0]
    if 0xB000 <= code <= 0xBFFF:
        return "warning"
    return "failure"


def retrieve_status_text(code: int) -> str:
    """What a final C-GET / C-MOVE status means (PS3.4 C.4.2.1.5, C.4.3.1.4)."""
    if code in _RETRIEVE_STATUSES:
        return _RETRIEVE_STATUSES[code][1]
    if 0xA700 <= code <= 0xA7FF:
        return "out of resources"
    if 0xA900 <= code <= 0xA9FF:
        return "identifier does not match SOP class"
    if 0xAA00 <= code <= 0xAAFF:
        return "none of the requested frames found"
    if 0xC000 <= code <= 0xCFFF:
        return "unable to process"
    if 0xB000 <= code <= 0xBFFF:
        return "warning"
    return "unknown status"


@dataclass
class GetResult:
    """What one C-GET brought: the instances that arrived, and how it ended."""

    received: dict[str, Retrieved] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)
    """SOP Instance UID -> why the copy that arrived is unusable."""
    ended: Suboperations = field(default_factory=Suboperations)
    """The final status and sub-operation counts the peer gave."""
    lost: str | None = None
    """Why the C-GET ended before its final answer (the peer aborted or went silent)."""

    @property
    def status(self) -> int | None:
        """The final C-GET status; None when the C-GET was cut short."""
        return self.ended.status

    @property
    def failed_suboperations(self) -> int:
        return self.ended.failed or 0


def get_study(
    peer: DimsePeer,
    study_uid: str,
    folder: Path,
    *,
    sop_classes: dict[str, set[str]],
    timeout: float = 60.0,
) -> GetResult:
    """C-GET a whole study into ``folder``, keeping whatever arrived.

    ``sop_classes`` maps each SOP Class UID expected to the transfer syntaxes to offer
    for the peer's C-STORE sub-operations (we take the SCP role, and explicit and
    implicit VR little endian are always offered too), so a peer that kept the bytes
    sends them as they are. A peer lost after sending something is not raised: the
    result says so in ``lost`` and holds what arrived before. Raises PeerUnreachableError /
    AssociationRejectedError when no association can be made, and PeerError when the
    peer does not support C-GET, refuses it, or goes silent before sending anything.
    """
    contexts = [build_context(StudyRootQueryRetrieveInformationModelGet)]
    roles = []
    for sop_class, syntaxes in sop_classes.items():
        if len(contexts) >= _MAX_CONTEXTS:
            break
        offered = [
            *sorted(syntaxes),
            *(ts for ts in (EXPLICIT_LE, IMPLICIT_LE) if ts not in syntaxes),
        ]
        contexts.append(build_context(sop_class, offered))
        roles.append(build_role(sop_class, scp_role=True))
    receiver = _GetReceiver(folder)
    result = GetResult(receiver.received, receiver.broken)
    with open_association(
        peer, timeout, contexts, ext_neg=roles, handlers=[(evt.EVT_C_STORE, receiver)]
    ) as assoc:
        accepted = [cx for cx in assoc.accepted_contexts]
        get_model = str(StudyRootQueryRetrieveInformationModelGet)
        if not any(str(cx.abstract_syntax) == get_model for cx in accepted):
            raise PeerError(
                f"{peer.name} does not support C-GET (it refused the Study Root "
                f"Query/Retrieve GET context)"
            )
        if sop_classes and not any(
            str(cx.abstract_syntax) in sop_classes and cx.as_scp for cx in accepted
        ):
            raise PeerError(
                f"{peer.name} accepted C-GET but none of the storage contexts with us in "
                f"the Storage SCP role, so it cannot send us the instances"
            )
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study_uid
        for status, _identifier in assoc.send_c_get(
            query, StudyRootQueryRetrieveInformationModelGet
        ):
            code = status_code(status)
            if code is None:
                error = no_answer_error(assoc, peer, "C-GET")
                if not receiver.received and not receiver.broken:
                    raise error  # refused (or dead) before sending anything
                result.lost, result.ended.status = error.message, None
                break
            result.ended.update(status, code)
        # A final failure (A702, A900, Cxxx, a cancel...) or warning (B000) after some
        # instances arrived leaves those usable: the callers store them and name the rest
        # missing. Only a failure before anything arrived is a refusal.
        if result.ended.failure and not receiver.received and not receiver.broken:
            raise PeerError(f"{peer.name} refused the C-GET ({result.ended.describe('C-GET')})")
    return result


def retrieve_study(
    peer: DimsePeer,
    study_uid: str,
    folder: Path,
    *,
    sop_classes: dict[str, set[str]],
    timeout: float = 60.0,
) -> tuple[dict[str, Retrieved], dict[str, str]]:
    """``get_study`` for verification: what arrived and what arrived broken.

    Raises PeerError (with a hint) also when the peer was lost mid-way.
    """
    hint = "the peer may not allow retrieval by our AE title"
    try:
        got = get_study(peer, study_uid, folder, sop_classes=sop_classes, timeout=timeout)
    except (PeerUnreachableError, AssociationRejectedError):
        raise
    except PeerError as exc:
        raise PeerError(exc.message, hint=exc.hint or hint) from exc
    if got.lost is not None:
        raise PeerError(got.lost, hint=hint)
    return got.received, got.broken


@dataclass(frozen=True)
class MoveResult:
    """How a C-MOVE ended: the peer's final status and counts, or why it was cut short."""

    ended: Suboperations = field(default_factory=Suboperations)
    lost: str | None = None
    """Why the C-MOVE ended before its final answer (the peer aborted or went silent)."""

    @property
    def failed_suboperations(self) -> int:
        return self.ended.failed or 0


def move_refusal(peer: DimsePeer, destination: str, ended: Suboperations) -> PeerError:
    """The error for a C-MOVE the peer refused outright (a failure, nothing sent)."""
    if ended.status == 0xA801:
        return PeerError(
            f"{peer.name} does not know the move destination {destination!r} (A801)",
            hint=f"register AE title {destination} with our receiver's address and port at "
            f"the peer, or pull with C-GET (drop --move-dest)",
        )
    return PeerError(
        f"{peer.name} refused the C-MOVE to {destination!r}: {ended.describe('C-MOVE')}",
        hint=f"the peer may not know the move destination {destination!r} (register it "
        f"with our receiver's address and port) or may not allow retrieval by our AE "
        f"title; check its log",
    )


def move_study(peer: DimsePeer, study_uid: str, destination: str, *, timeout: float) -> MoveResult:
    """C-MOVE a study to ``destination`` (an AE title the peer knows).

    Every final status is returned, not raised, A801 included: only the caller sees what
    reached the destination, and decides (``move_refusal`` when nothing did). A peer lost
    after its first answer is returned too, with ``lost``. Raises PeerError when the peer
    goes silent or aborts before answering at all.
    """
    context = [build_context(StudyRootQueryRetrieveInformationModelMove)]
    ended = Suboperations()
    answered = False
    with open_association(peer, timeout, context) as assoc:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study_uid
        for status, _identifier in assoc.send_c_move(
            query, destination, StudyRootQueryRetrieveInformationModelMove
        ):
            code = status_code(status)
            if code is None:
                error = no_answer_error(assoc, peer, "C-MOVE")
                if not answered:
                    raise error  # refused (or dead) before its first sub-operation
                ended.status = None
                return MoveResult(ended, error.message)
            answered = True
            ended.update(status, code)
    return MoveResult(ended)


def find_studies(
    peer: DimsePeer,
    *,
    patient_id: str | None = None,
    accession: str | None = None,
    study_date: str | None = None,
    timeout: float = 30.0,
) -> list[dict[str, Any]]:
    """C-FIND at STUDY level: each matching study's UID, date, accession, modalities,
    description and counts; never the patient's name or ID (a matching key only)."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ""
    identifier.PatientID = patient_id or ""
    identifier.AccessionNumber = accession or ""
    identifier.StudyDate = study_date or ""
    identifier.ModalitiesInStudy = ""
    identifier.StudyDescription = ""
    identifier.NumberOfStudyRelatedSeries = None
    identifier.NumberOfStudyRelatedInstances = None
    context = [build_context(StudyRootQueryRetrieveInformationModelFind)]
    studies: list[dict[str, Any]] = []
    with open_association(peer, timeout, context) as assoc:
        for ds in find(assoc, identifier, peer):
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
                    "series": _as_int(ds.get("NumberOfStudyRelatedSeries", None)),
                    "instances": _as_int(ds.get("NumberOfStudyRelatedInstances", None)),
                }
            )
    return studies


def _as_int(value: object) -> int | None:
    try:
        return int(str(value)) if value not in (None, "") else None
    except ValueError:
        return None


def compare_datasets(sent: Path, retrieved: Path) -> list[str]:
    """Element-by-element comparison; the keywords (or tags) that differ, values never.

    File Meta Information is not compared: a re-encoded copy legitimately differs there.
    Raises InputError when the sent file can no longer be read (a DVD taken out).
    """
    try:
        a = pydicom.dcmread(sent)
    except (OSError, InvalidDicomError) as exc:
        raise InputError(f"the sent file {sent} cannot be read for comparison: {exc}") from exc
    b = pydicom.dcmread(retrieved)
    differing: list[str] = []
    for tag in sorted(set(a.keys()) | set(b.keys())):
        left, right = a.get(tag), b.get(tag)
        if left is None or right is None or left.value != right.value:
            keyword = (left or right).keyword if (left or right) is not None else ""
            differing.append(keyword or f"({tag.group:04X},{tag.element:04X})")
    return differing


def temporary_folder() -> tempfile.TemporaryDirectory[str]:
    """Where retrieved copies live until they are compared (removed afterwards)."""
    return tempfile.TemporaryDirectory(prefix="dvdexit-verify-")
