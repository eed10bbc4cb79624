"""Send and verify orchestration: scan, journal, transport, retries, summaries.

The engine owns the order of things that make a send honest: every item is in the
journal before anything goes on the wire, each item is marked ``sending`` before its
C-STORE and gets the peer's answer recorded right after, and the result is computed
from the journal, not from counters kept on the side.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import queue
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any

from dvdexit_cli.audit import TransferAuditor
from dvdexit_cli.dicom.contexts import plan_contexts
from dvdexit_cli.dicom.scan import Instance, ScanResult, UnsendableFile, read_instance, scan
from dvdexit_cli.errors import (
    ConfigError,
    Interrupted,
    JournalError,
    NoDicomFoundError,
    PeerError,
    UsageError,
)
from dvdexit_cli.events import (
    InstanceDone,
    Observer,
    ReplayStarted,
    RetryScheduled,
    ScanFinished,
    TransferFinished,
    TransferStarted,
    ignore,
)
from dvdexit_cli.exitcodes import ExitCode
from dvdexit_cli.journal import ItemRecord, Journal
from dvdexit_cli.journal.store import DEFAULT_LEASE_SECONDS, new_claim
from dvdexit_cli.package.onward import screen_packages
from dvdexit_cli.transport.base import BatchResult, BatchTransport, StoreOutcome, Transport
from dvdexit_cli.transport.folder import FolderTransport

__all__ = [
    "DEFAULT_BATCH_BYTES",
    "DEFAULT_BATCH_SIZE",
    "VERDICTS",
    "AbandonResult",
    "FileProblem",
    "RetryResult",
    "RetrySettings",
    "SendPlan",
    "SendResult",
    "SendSettings",
    "SeriesPlan",
    "VerifiedFile",
    "VerifyResult",
    "abandon",
    "batches",
    "plan_send",
    "retry_failed",
    "send",
    "verify_paths",
]

log = logging.getLogger(__name__)

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
class FileProblem:
    """A file that was not sent (failed or skipped), with the reason."""

    path: str
    sop_instance_uid: str | None
    reason: str
    status: int | None = None
    retryable: bool = False

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "sop_instance_uid": self.sop_instance_uid,
            "reason": self.reason,
            "status": f"{self.status:04X}" if self.status is not None else None,
            "retryable": self.retryable,
        }


@dataclass(frozen=True)
class SendResult:
    """The outcome of one send, as the journal records it."""

    transfer_id: int
    peer: str
    sent: int
    failed: int
    skipped: int
    pending: int
    warnings: tuple[FileProblem, ...]
    failures: tuple[FileProblem, ...]
    skipped_files: tuple[FileProblem, ...]
    studies: int
    bytes_sent: int
    seconds: float
    outcome: str
    error: str | None = None
    error_hint: str | None = None
    excluded: int = 0
    """Instances found but left out by the selection options (not journaled)."""

    @property
    def exit_code(self) -> ExitCode:
        if self.outcome == "unreachable":
            return ExitCode.PEER_UNREACHABLE
        if self.failed or self.pending:
            return ExitCode.PARTIAL_FAILURE
        return ExitCode.OK

    @property
    def total(self) -> int:
        """The instances this send was to deliver (skipped files not counted)."""
        return self.sent + self.failed + self.pending

    @property
    def resume_command(self) -> str:
        return resume_command(self.peer)

    def to_json(self) -> dict[str, object]:
        return {
            "transfer_id": self.transfer_id,
            "peer": self.peer,
            "outcome": self.outcome,
            "sent": self.sent,
            "failed": self.failed,
            "skipped": self.skipped,
            "not_sent": self.pending,
            "total": self.total,
            "pending": self.pending,
            "excluded": self.excluded,
            "studies": self.studies,
            "bytes_sent": self.bytes_sent,
            "seconds": round(self.seconds, 3),
            "error": self.error,
            "resume": self.resume_command if self.pending or self.failed else None,
            "failures": [f.to_json() for f in self.failures],
            "warnings": [w.to_json() for w in self.warnings],
            "skipped_files": [s.to_json() for s in self.skipped_files],
            "exit_code": int(self.exit_code),
        }


def resume_command(peer: str | None) -> str:
    """The command that resends what a send or replay to ``peer`` left not sent."""
    return "dvdexit send --retry-failed" + (f" --to {peer}" if peer else "")


def _interrupted(
    counts: dict[str, int],
    *,
    peer: str | None,
    transfer_id: int | None = None,
    transfers: tuple[int, ...] = (),
) -> Interrupted:
    return Interrupted(
        f"interrupted after {counts['sent']} of {counts['total']} sent"
        + (f" ({counts['failed']} failed)" if counts["failed"] else ""),
        hint=f"resume with: {resume_command(peer)}",
        counts=counts,
        transfer_id=transfer_id,
        transfers=transfers,
        peer=peer,
    )


def _problem(item: ItemRecord) -> FileProblem:
    return FileProblem(
        path=item.path,
        sop_instance_uid=item.sop_instance_uid,
        reason=item.reason or "",
        status=item.status,
        retryable=item.retryable,
    )


def _result_from_journal(
    journal: Journal,
    transfer_id: int,
    peer: str,
    seconds: float,
    outcome: str,
    error: str | None,
    hint: str | None,
) -> SendResult:
    items = journal.items(transfer_id)
    by_state: dict[str, list[ItemRecord]] = {}
    for item in items:
        by_state.setdefault(item.state, []).append(item)
    sent = by_state.get("sent", []) + by_state.get("committed", [])
    return SendResult(
        transfer_id=transfer_id,
        peer=peer,
        sent=len(sent),
        failed=len(by_state.get("failed", [])),
        skipped=len(by_state.get("skipped", [])),
        pending=len(by_state.get("pending", [])) + len(by_state.get("sending", [])),
        warnings=tuple(_problem(i) for i in sent if i.reason),
        failures=tuple(_problem(i) for i in by_state.get("failed", [])),
        skipped_files=tuple(_problem(i) for i in by_state.get("skipped", [])),
        studies=len({i.study_uid for i in items if i.study_uid}),
        bytes_sent=sum(i.size or 0 for i in sent),
        seconds=seconds,
        outcome=outcome,
        error=error,
        error_hint=hint,
    )


def send(
    settings: SendSettings,
    *,
    journal: Journal,
    transport: Transport,
    observer: Observer = ignore,
    sleep: Callable[[float], None] = time.sleep,
    transport_factory: TransportFactory | None = None,
    audit: TransferAuditor | None = None,
) -> SendResult:
    """Send what ``settings.inputs`` hold through ``transport``, journaling every item.

    With ``settings.workers`` > 1 and a ``transport_factory``, studies are spread over
    that many worker processes, each with its own association and journal connection;
    each study is sent whole, in order, by one worker. Raises InputError
    (NoDicomFoundError) when there is nothing to send. An unreachable peer is not
    raised: it is the result's outcome (``unreachable``, exit 5), with every item left
    not sent (``pending``, with the reason) in the journal. Ctrl-C or SIGTERM raises
    Interrupted with the counts the journal holds then.
    """
    started = time.monotonic()
    found, excluded = _scan_selected(settings, observer)
    claim = new_claim()
    transfer_id, item_ids = journal.create_transfer(
        peer=settings.peer_name,
        peer_address=settings.peer_address,
        inputs=settings.inputs,
        instances=found.instances,
        rejected=found.rejected,
        note=settings.note,
        reason=settings.reason,
        recipient=settings.recipient,
        claim=claim,
        lease_seconds=settings.lease_seconds,
    )
    observer(
        TransferStarted(transfer_id, settings.peer_name, len(found.instances), found.total_bytes)
    )
    outcome, error, hint = "complete", None, None
    work = list(zip(item_ids, found.instances, strict=True))
    # A batch transport (STOW-RS) runs its workers as concurrent requests in this process:
    # batches of one study may travel in parallel, unlike DIMSE associations.
    batched = isinstance(transport, BatchTransport)
    shares = (
        _partition(work, settings.workers)
        if transport_factory is not None and not batched
        else [work]
    )
    try:
        with _Lease(journal, claim, settings.lease_seconds):
            if len(shares) > 1 and transport_factory is not None:
                error, hint = _send_parallel(
                    settings, journal.path, claim, transport_factory, shares, observer
                )
            else:
                error, hint = _send_all(
                    settings.retries,
                    settings.retry_delay,
                    journal,
                    transport,
                    work,
                    observer,
                    sleep,
                    claim=claim,
                    batching=(settings.batch_size, settings.batch_bytes),
                    concurrency=settings.workers if batched else 1,
                )
    except KeyboardInterrupt as exc:
        journal.finish_transfer(transfer_id, outcome="interrupted", error="interrupted")
        _audit(audit, journal, transfer_id, "interrupted", "interrupted")
        observer(TransferFinished(transfer_id, "interrupted"))
        so_far = _result_from_journal(
            journal, transfer_id, settings.peer_name, 0.0, "interrupted", None, None
        )
        raise _interrupted(
            {
                "sent": so_far.sent,
                "failed": so_far.failed,
                "not_sent": so_far.pending,
                "skipped": so_far.skipped,
                "total": so_far.total,
            },
            peer=settings.peer_name,
            transfer_id=transfer_id,
        ) from exc
    except Exception as exc:
        # A bug, not a peer's answer: the transfer must not read "running" forever, and
        # its unsent items stay pending for --retry-failed.
        journal.finish_transfer(transfer_id, outcome="failed", error=_cut_short(exc))
        _audit(audit, journal, transfer_id, "failed", _cut_short(exc))
        observer(TransferFinished(transfer_id, "failed"))
        raise
    finally:
        transport.close()
    result = _result_from_journal(
        journal, transfer_id, settings.peer_name, time.monotonic() - started, outcome, error, hint
    )
    if error is not None and result.sent == 0:
        outcome = "unreachable"
    elif result.failed or result.pending:
        outcome = "partial"
    journal.finish_transfer(transfer_id, outcome=outcome, error=error)
    _audit(audit, journal, transfer_id, outcome, error)
    if outcome == "complete":
        # Unpacked archives are kept only while --retry-failed may need their files.
        _remove_folders(journal, found.unpacked)
    observer(TransferFinished(transfer_id, outcome))
    return replace(result, outcome=outcome, excluded=excluded)


def _audit(
    audit: TransferAuditor | None,
    journal: Journal,
    transfer_id: int,
    outcome: str,
    error: str | None,
    studies: set[str] | None = None,
) -> None:
    """One audit record per study of the finished transfer (only ``studies``, if given)."""
    if audit is None:
        return
    try:
        audit.transfer(journal, transfer_id, outcome=outcome, error=error, studies=studies)
    except Exception:  # the audit must never change what the send reports (or hide a ^C)
        audit.trail.failures += 1
        log.exception("audit records of transfer %d could not be written", transfer_id)


_TransferNote = tuple[str | None, str | None, str | None]
"""The sender's note, reason and recipient of a transfer."""


def _transfer_note(journal: Journal, transfer_id: int) -> _TransferNote:
    row = journal.transfer_row(transfer_id)
    if row is None:
        return (None, None, None)
    return (row["note"], row["reason"], row["recipient"])


TransportFactory = Callable[[Observer], Transport]
"""Builds a fresh transport (in a worker process) that reports to the given observer."""

_Work = list[tuple[int, Instance]]


def _partition(work: _Work, workers: int) -> list[_Work]:
    """Spread whole studies over at most ``workers`` shares of about equal bytes.

    Each study stays in one share, in its scan order (series by series), so a receiver
    sees every study arrive in order from one association.
    """
    studies: dict[str, _Work] = {}
    for entry in work:
        studies.setdefault(entry[1].study_uid, []).append(entry)
    count = max(1, min(workers, len(studies)))
    shares: list[_Work] = [[] for _ in range(count)]
    loads = [0] * count
    for study in sorted(studies.values(), key=lambda s: -sum(i.size for _, i in s)):
        lightest = loads.index(min(loads))
        shares[lightest].extend(study)
        loads[lightest] += sum(i.size for _, i in study)
    return [share for share in shares if share]


def _worker(
    journal_path: Path,
    claim: str,
    factory: TransportFactory,
    retries: int,
    retry_delay: float,
    share: _Work,
    events: Any,
    parent: int,
    batching: tuple[int, int] = (DEFAULT_BATCH_SIZE, DEFAULT_BATCH_BYTES),
) -> None:
    """One worker process: its own journal connection and association."""
    # Ctrl-C reaches the whole process group; the parent decides, the worker just stops.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    _die_with_parent(parent)
    with Journal(journal_path) as journal:
        transport = factory(events.put)
        try:
            error, hint = _send_all(
                retries, retry_delay, journal, transport, share, events.put, time.sleep,
                claim=claim, batching=batching,
            )  # fmt: skip
        finally:
            transport.close()
    events.put(_WorkerDone(error, hint))


def _die_with_parent(parent: int) -> None:
    """Have the kernel kill this worker when the parent dies (Linux).

    The claim on the items names the parent's process: once it is gone, a replay may take
    them, so an orphaned worker must not go on sending them.
    """
    if sys.platform == "linux":
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            log.debug("PR_SET_PDEATHSIG unavailable")
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


@dataclass(frozen=True)
class _WorkerDone:
    error: str | None
    hint: str | None


def _send_parallel(
    settings: SendSettings,
    journal_path: Path,
    claim: str,
    factory: TransportFactory,
    shares: list[_Work],
    observer: Observer,
) -> tuple[str | None, str | None]:
    """Run one worker process per share; relay their events; return the first peer error.

    A worker that dies leaves its unanswered items pending or sending in the journal:
    the result counts them, and ``--retry-failed`` resends them.
    """
    # fork: workers start in milliseconds and inherit the factory without pickling.
    context: Any = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    events = context.Queue()
    procs = [
        context.Process(
            target=_worker,
            args=(
                journal_path, claim, factory, settings.retries, settings.retry_delay, share,
                events, os.getpid(), (settings.batch_size, settings.batch_bytes),
            ),
            name=f"dvdexit-worker-{n}",
            daemon=True,
        )
        for n, share in enumerate(shares, 1)
    ]  # fmt: skip
    for proc in procs:
        proc.start()
    errors: list[tuple[str, str | None]] = []
    done = 0
    ended = False
    try:
        while done < len(procs):
            try:
                event = events.get(timeout=0.2 if ended else 0.5)
            except queue.Empty:
                if ended:
                    # Every worker ended and the queue is drained: the ones that died
                    # sent no _WorkerDone.
                    dead = sum(p.exitcode not in (0, None) for p in procs)
                    errors.append((f"{max(dead, len(procs) - done)} worker process(es) died", None))
                    break
                ended = not any(p.is_alive() for p in procs)
                continue
            if isinstance(event, _WorkerDone):
                done += 1
                if event.error is not None:
                    errors.append((event.error, event.hint))
            else:
                observer(event)
    finally:
        for proc in procs:
            if proc.is_alive() and done < len(procs):
                proc.terminate()
            proc.join(timeout=30)
        events.close()
    return errors[0] if errors else (None, None)


class _Lease:
    """Keep a claim's lease fresh from a background thread; release the claim at the end."""

    def __init__(self, journal: Journal, claim: str, lease_seconds: float) -> None:
        self._journal = journal
        self._claim = claim
        self._lease = lease_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="dvdexit-lease", daemon=True)

    def _renew(self) -> None:
        while not self._stop.wait(self._lease / 3):
            try:
                self._journal.renew_claims(self._claim, lease_seconds=self._lease)
            except JournalError as exc:  # a busy journal now and then: the next round renews
                log.warning("could not renew the journal claim: %s", exc.message)

    def __enter__(self) -> _Lease:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self._journal.release_claims(self._claim)


def _scan_selected(settings: SendSettings, observer: Observer) -> tuple[ScanResult, int]:
    """Scan the inputs and apply the selection; return what to send and how many were left out.

    Raises NoDicomFoundError when nothing is left to send.
    """
    found = scan(list(settings.inputs), unpack_dir=settings.unpack_dir)
    found = screen_packages(found, settings.inputs)
    skipped = sum(r.disposition == "skipped" for r in found.rejected)
    unreadable = len(found.rejected) - skipped
    observer(ScanFinished(len(found.instances), found.total_bytes, skipped, unreadable))
    kept = [inst for inst in found.instances if settings.selects(inst)]
    excluded = len(found.instances) - len(kept)
    if not kept:
        reasons = sorted({r.reason for r in found.rejected})[:3]
        raise NoDicomFoundError(
            f"no DICOM instance to send in {', '.join(map(str, settings.inputs))}"
            + (f" ({excluded} instance(s) left out by the selection options)" if excluded else "")
            + (
                f" ({skipped} file(s) skipped, {unreadable} unreadable: {'; '.join(reasons)})"
                if found.rejected
                else ""
            )
            + ("" if found.rejected or excluded else " (no files)"),
            hint="point dvdexit at a folder, DICOMDIR medium or DICOM files"
            + (", or widen --study/--modality/--exclude-*" if excluded else ""),
        )
    unpacked = list(found.unpacked)
    if settings.attach is not None:
        try:
            attached = [read_instance(path) for path in settings.attach(kept)]
        except BaseException:
            for folder in unpacked:  # nothing will be sent: keep no copies
                shutil.rmtree(folder, ignore_errors=True)
            raise
        kept.extend(attached)
        # Kept like unpacked copies: until the transfer is complete, for --retry-failed.
        unpacked.extend(sorted({inst.path.parent for inst in attached}))
    return ScanResult(instances=kept, rejected=found.rejected, unpacked=unpacked), excluded


@dataclass(frozen=True)
class SeriesPlan:
    series_uid: str
    modality: str
    instances: int
    bytes: int

    def to_json(self) -> dict[str, object]:
        return {
            "series_uid": self.series_uid,
            "modality": self.modality,
            "instances": self.instances,
            "bytes": self.bytes,
        }


@dataclass(frozen=True)
class SendPlan:
    """What ``send`` would do (``--dry-run``): studies, series, and presentation contexts."""

    studies: dict[str, tuple[SeriesPlan, ...]]
    instances: int
    bytes: int
    excluded: int
    skipped: tuple[FileProblem, ...]
    failed: tuple[FileProblem, ...]
    associations: tuple[tuple[tuple[str, tuple[str, ...]], ...], ...]
    workers: int
    peer_kind: str | None = None
    """``dimse``, ``dicomweb`` or ``folder`` when the plan is for a named peer."""
    requests: int | None = None
    """DICOMweb: STOW-RS requests (batches by --batch-size and --batch-bytes)."""
    batch_size: int = DEFAULT_BATCH_SIZE
    batch_bytes: int = DEFAULT_BATCH_BYTES

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.OK

    def to_json(self) -> dict[str, object]:
        return {
            "dry_run": True,
            "instances": self.instances,
            "bytes": self.bytes,
            "excluded": self.excluded,
            "workers": self.workers,
            "peer_kind": self.peer_kind,
            "studies": [
                {
                    "study_uid": study,
                    "instances": sum(s.instances for s in series),
                    "bytes": sum(s.bytes for s in series),
                    "series": [s.to_json() for s in series],
                }
                for study, series in self.studies.items()
            ],
            "associations": [
                [{"sop_class_uid": sop, "transfer_syntaxes": list(ts)} for sop, ts in plan]
                for plan in self.associations
            ],
            "failures": [f.to_json() for f in self.failed],
            "skipped_files": [f.to_json() for f in self.skipped],
            "exit_code": int(self.exit_code),
        } | self._kind_json()

    def _kind_json(self) -> dict[str, object]:
        if self.peer_kind == "dicomweb":
            return {
                "requests": self.requests,
                "batch_size": self.batch_size,
                "batch_bytes": self.batch_bytes,
            }
        if self.peer_kind == "folder":
            return {"packages": 1}
        return {}


def plan_send(
    settings: SendSettings, *, observer: Observer = ignore, peer_kind: str | None = None
) -> SendPlan:
    """Scan and select as ``send`` would, and say what it would send; send nothing.

    ``peer_kind`` puts the plan in that kind's terms: DIMSE associations (also when
    None), DICOMweb STOW-RS requests (no presentation contexts), one folder package.
    Journals nothing. Raises NoDicomFoundError when nothing would be sent.
    """
    found, excluded = _scan_selected(settings, observer)
    for folder in found.unpacked:  # a dry run keeps nothing
        shutil.rmtree(folder, ignore_errors=True)
    studies: dict[str, dict[str, list[Instance]]] = {}
    for inst in found.instances:
        studies.setdefault(inst.study_uid, {}).setdefault(inst.series_uid, []).append(inst)
    plans = plan_contexts((i.sop_class_uid, i.transfer_syntax) for i in found.instances)
    problems = [FileProblem(str(r.path), r.sop_instance_uid, r.reason) for r in found.rejected]
    workers = min(settings.workers, len(studies))
    requests: int | None = None
    if peer_kind == "dicomweb":
        # The same batches send would make (one request each), in the same order.
        requests = sum(
            1
            for _ in batches(
                list(enumerate(found.instances)),
                max(1, settings.batch_size),
                max(1, settings.batch_bytes),
            )
        )
        workers = min(settings.workers, requests)
        plans = []
    elif peer_kind == "folder":
        workers, plans = 1, []
    return SendPlan(
        studies={
            study: tuple(
                SeriesPlan(uid, members[0].modality, len(members), sum(i.size for i in members))
                for uid, members in series.items()
            )
            for study, series in studies.items()
        },
        instances=len(found.instances),
        bytes=found.total_bytes,
        excluded=excluded,
        skipped=tuple(
            p for p, r in zip(problems, found.rejected, strict=True) if r.disposition == "skipped"
        ),
        failed=tuple(
            p for p, r in zip(problems, found.rejected, strict=True) if r.disposition == "failed"
        ),
        associations=tuple(
            tuple((c.abstract_syntax, c.transfer_syntaxes) for c in plan.contexts) for plan in plans
        ),
        workers=workers,
        peer_kind=peer_kind,
        requests=requests,
        batch_size=settings.batch_size,
        batch_bytes=settings.batch_bytes,
    )


def _send_all(
    retries: int,
    retry_delay: float,
    journal: Journal,
    transport: Transport,
    pending: list[tuple[int, Instance]],
    observer: Observer,
    sleep: Callable[[float], None],
    *,
    claim: str | None = None,
    batching: tuple[int, int] = (DEFAULT_BATCH_SIZE, DEFAULT_BATCH_BYTES),
    concurrency: int = 1,
) -> tuple[str | None, str | None]:
    """Send, retrying retryable failures; return the peer error that stopped us, if any.

    With ``claim``, an item whose claim was lost (our lease ran out and another run took
    it) is left alone: that run sends it. A transport with ``store_batch`` (STOW-RS)
    gets ``batching`` = (instances, bytes) per request.
    """
    attempt = 1
    try:
        transport.open([inst for _, inst in pending])
    except PeerError as exc:
        _not_sent(journal, pending, str(exc))
        return exc.message, exc.hint
    if isinstance(transport, BatchTransport):
        return _send_batches(
            retries, retry_delay, journal, transport, pending, observer, sleep,
            claim=claim, batching=batching, concurrency=concurrency,
        )  # fmt: skip
    while True:
        retry: list[tuple[int, Instance]] = []
        for position, (item_id, inst) in enumerate(pending):
            if not journal.mark_sending(item_id, claim=claim):
                log.warning("item %d was claimed by another run; not sending it", item_id)
                continue
            try:
                outcome = transport.store(inst)
            except PeerError as exc:
                # The peer went away and could not be reached again: nothing more can be
                # sent in this round. Keep every remaining item retryable.
                _not_sent(journal, pending[position:], exc.message)
                if attempt > retries:
                    return exc.message, exc.hint
                retry.extend(pending[position:])
                break
            except BaseException as exc:
                journal.record_outcome(
                    item_id, state="pending", status=None, reason=_cut_short(exc)
                )
                raise
            _record(journal, item_id, inst, outcome, attempt, observer)
            if outcome.state == "failed" and outcome.retryable:
                retry.append((item_id, inst))
        if not retry or attempt > retries:
            return None, None
        delay = retry_delay * 2 ** (attempt - 1)
        observer(RetryScheduled(len(retry), attempt + 1, delay))
        sleep(delay)
        attempt += 1
        pending = retry


def batches(
    pending: Sequence[tuple[int, Instance]], size: int, max_bytes: int
) -> Iterator[list[tuple[int, Instance]]]:
    """Consecutive batches of at most ``size`` instances and ``max_bytes`` bytes.

    An instance larger than ``max_bytes`` goes alone: it cannot be split.
    """
    batch: list[tuple[int, Instance]] = []
    total = 0
    for entry in pending:
        if batch and (len(batch) >= size or total + entry[1].size > max_bytes):
            yield batch
            batch, total = [], 0
        batch.append(entry)
        total += entry[1].size
    if batch:
        yield batch


def _send_batches(
    retries: int,
    retry_delay: float,
    journal: Journal,
    transport: BatchTransport,
    pending: list[tuple[int, Instance]],
    observer: Observer,
    sleep: Callable[[float], None],
    *,
    claim: str | None,
    batching: tuple[int, int],
    concurrency: int = 1,
) -> tuple[str | None, str | None]:
    """The batch path of ``_send_all``: one request per batch, one outcome per instance.

    The whole batch is marked ``sending`` before its request, so a kill -9 mid-request
    leaves every instance of it to the replay. The peer's Retry-After (429/503) is a
    floor for the next round's delay. With ``concurrency`` > 1 that many requests are in
    flight at once (see ``_concurrent_round``).
    """
    size, max_bytes = max(1, batching[0]), max(1, batching[1])
    attempt = 1
    while True:
        retry: list[tuple[int, Instance]] = []
        retry_after: float | None = None
        groups = list(batches(pending, size, max_bytes))
        if concurrency > 1:
            retry, retry_after, stopped = _concurrent_round(
                journal, transport, groups, observer, attempt, claim=claim,
                concurrency=concurrency,
            )  # fmt: skip
            if stopped is not None and attempt > retries:
                return stopped.message, stopped.hint
            groups = []  # this round is done
        for position, batch in enumerate(groups):
            claimed: list[tuple[int, Instance]] = []
            for item_id, inst in batch:
                if journal.mark_sending(item_id, claim=claim):
                    claimed.append((item_id, inst))
                else:
                    log.warning("item %d was claimed by another run; not sending it", item_id)
            if not claimed:
                continue
            try:
                result = transport.store_batch([inst for _, inst in claimed])
            except PeerError as exc:
                rest = claimed + [entry for later in groups[position + 1 :] for entry in later]
                _not_sent(journal, rest, exc.message)
                if attempt > retries:
                    return exc.message, exc.hint
                retry.extend(rest)
                break
            except BaseException as exc:
                for item_id, _ in claimed:
                    journal.record_outcome(
                        item_id, state="pending", status=None, reason=_cut_short(exc)
                    )
                raise
            if result.retry_after is not None:
                retry_after = max(retry_after or 0.0, result.retry_after)
            retry.extend(_record_batch(journal, claimed, result, attempt, observer))
        if not retry or attempt > retries:
            return None, None
        delay = retry_delay * 2 ** (attempt - 1)
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
        observer(RetryScheduled(len(retry), attempt + 1, delay))
        sleep(delay)
        attempt += 1
        pending = retry


def _claim_batch(
    journal: Journal, batch: Sequence[tuple[int, Instance]], claim: str | None
) -> list[tuple[int, Instance]]:
    claimed = []
    for item_id, inst in batch:
        if journal.mark_sending(item_id, claim=claim):
            claimed.append((item_id, inst))
        else:
            log.warning("item %d was claimed by another run; not sending it", item_id)
    return claimed


def _store_batch_into(
    transport: BatchTransport, ticket: int, instances: list[Instance], results: Any
) -> None:
    """A request thread: the batch's result (or what it raised) goes to ``results``."""
    try:
        results.put((ticket, transport.store_batch(instances)))
    except BaseException as exc:  # handed to the journaling thread, which decides
        results.put((ticket, exc))


def _concurrent_round(
    journal: Journal,
    transport: BatchTransport,
    groups: list[list[tuple[int, Instance]]],
    observer: Observer,
    attempt: int,
    *,
    claim: str | None,
    concurrency: int,
) -> tuple[list[tuple[int, Instance]], float | None, PeerError | None]:
    """One round of batches with up to ``concurrency`` requests in flight.

    Only this thread touches the journal (one SQLite connection); request threads only
    talk to the peer. Once the peer is unreachable no new batch starts, the ones in flight
    are still recorded, and the rest stay failed and retryable. Request threads are
    daemons: an interrupted send does not wait for them (their batches are left pending).
    Returns the items to retry, the largest Retry-After and the first PeerError.
    """
    results: queue.Queue[tuple[int, BatchResult | BaseException]] = queue.Queue()
    waiting = list(reversed(groups))
    in_flight: dict[int, list[tuple[int, Instance]]] = {}
    retry: list[tuple[int, Instance]] = []
    retry_after: float | None = None
    stopped: PeerError | None = None
    tickets = 0
    try:
        while waiting or in_flight:
            while waiting and stopped is None and len(in_flight) < concurrency:
                claimed = _claim_batch(journal, waiting.pop(), claim)
                if claimed:
                    tickets += 1
                    in_flight[tickets] = claimed
                    threading.Thread(
                        target=_store_batch_into,
                        args=(transport, tickets, [inst for _, inst in claimed], results),
                        name=f"dvdexit-request-{tickets}",
                        daemon=True,
                    ).start()
            if not in_flight:
                break
            ticket, answer = results.get()
            if isinstance(answer, BaseException) and not isinstance(answer, PeerError):
                raise answer
            claimed = in_flight.pop(ticket)
            if isinstance(answer, PeerError):
                stopped = stopped or answer
                rest = claimed + [entry for later in waiting for entry in later]
                waiting = []
                _not_sent(journal, rest, answer.message)
                retry.extend(rest)
                continue
            if answer.retry_after is not None:
                retry_after = max(retry_after or 0.0, answer.retry_after)
            retry.extend(_record_batch(journal, claimed, answer, attempt, observer))
    except BaseException as exc:
        for claimed in in_flight.values():
            for item_id, _ in claimed:
                journal.record_outcome(
                    item_id, state="pending", status=None, reason=_cut_short(exc)
                )
        raise
    return retry, retry_after, stopped


def _record(
    journal: Journal,
    item_id: int,
    inst: Instance,
    outcome: StoreOutcome,
    attempt: int,
    observer: Observer,
) -> None:
    journal.record_outcome(
        item_id,
        state=outcome.state,
        status=outcome.status,
        reason=outcome.reason,
        retryable=outcome.retryable,
    )
    observer(
        InstanceDone(
            path=inst.path,
            sop_instance_uid=inst.sop_instance_uid,
            state=outcome.state,
            size=inst.size,
            status=outcome.status,
            reason=outcome.reason,
            attempt=attempt,
        )
    )


def _cut_short(exc: BaseException) -> str:
    """Why an item was left unanswered when sending stopped by an exception."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted while sending"
    return (
        f"internal error while sending ({type(exc).__name__}); whether the peer kept it is unknown"
    )


def _record_batch(
    journal: Journal,
    claimed: Sequence[tuple[int, Instance]],
    result: BatchResult,
    attempt: int,
    observer: Observer,
) -> list[tuple[int, Instance]]:
    """Journal a batch's answer item by item; return the items to try again.

    An instance the answer does not mention is unknown: failed, and retried.
    """
    again: list[tuple[int, Instance]] = []
    for item_id, inst in claimed:
        outcome = result.outcomes.get(inst.sop_instance_uid) or StoreOutcome(
            "failed", None, "the peer gave no answer for this instance", retryable=True
        )
        _record(journal, item_id, inst, outcome, attempt, observer)
        if outcome.state == "failed" and outcome.retryable:
            again.append((item_id, inst))
    return again


def _not_sent(journal: Journal, items: Sequence[tuple[int, Instance]], reason: str) -> None:
    """The peer could not be reached (again): these items did not reach it. They are not
    failed (the peer said nothing about them) but not sent: ``pending`` with the reason,
    for ``send --retry-failed``."""
    for item_id, _ in items:
        journal.record_outcome(item_id, state="pending", status=None, reason=reason)


# -- replay (send --retry-failed) -------------------------------------------------------


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


@dataclass(frozen=True)
class RetryResult:
    """What a replay did: counts over the items it claimed, and what it left behind."""

    peers: tuple[str, ...]
    transfers: tuple[int, ...]
    claimed: int
    sent: int
    failed: int
    pending: int
    given_up: int
    not_retryable: int
    failures: tuple[FileProblem, ...]
    warnings: tuple[FileProblem, ...]
    bytes_sent: int
    seconds: float
    outcome: str
    errors: tuple[str, ...] = ()

    @property
    def exit_code(self) -> ExitCode:
        if self.outcome == "unreachable":
            return ExitCode.PEER_UNREACHABLE
        if self.failed or self.pending or self.given_up:
            return ExitCode.PARTIAL_FAILURE
        return ExitCode.OK

    def to_json(self) -> dict[str, object]:
        return {
            "mode": "retry-failed",
            "outcome": self.outcome,
            "peers": list(self.peers),
            "transfers": list(self.transfers),
            "claimed": self.claimed,
            "sent": self.sent,
            "failed": self.failed,
            "not_sent": self.pending,
            "pending": self.pending,
            "given_up": self.given_up,
            "not_retryable": self.not_retryable,
            "bytes_sent": self.bytes_sent,
            "seconds": round(self.seconds, 3),
            "errors": list(self.errors),
            "failures": [f.to_json() for f in self.failures],
            "warnings": [w.to_json() for w in self.warnings],
            "exit_code": int(self.exit_code),
        }


def _reload(item: ItemRecord) -> Instance | str:
    """The instance behind a journaled item, or why it cannot be resent as journaled."""
    try:
        inst = read_instance(Path(item.path))
    except UnsendableFile as exc:
        return f"cannot resend: {exc.reason}"
    if inst.sop_instance_uid != item.sop_instance_uid or inst.digest != item.digest:
        return (
            "cannot resend: the file changed since it was journaled (its dataset digest or "
            "SOP Instance UID differs); send it again as a new transfer"
        )
    return inst


def _remove_unpacked(journal: Journal, items: Sequence[ItemRecord], unpack_dir: Path) -> None:
    """Remove the unpacked archive folders a completed transfer's items came from."""
    folders = set()
    for item in items:
        path = Path(item.path)
        if path.is_relative_to(unpack_dir) and path != unpack_dir:
            folders.add(unpack_dir / path.relative_to(unpack_dir).parts[0])
    _remove_folders(journal, folders)


def _remove_folders(journal: Journal, folders: Iterable[Path]) -> None:
    """Remove unpacked folders that no unfinished item (of any transfer) still needs."""
    for folder in folders:
        if not journal.has_open_items_under(folder):
            shutil.rmtree(folder, ignore_errors=True)


def _copy_outcomes(journal: Journal, twins: dict[int, list[int]]) -> None:
    """Give items of an instance sent once in this replay the outcome of that send."""
    wanted = [sent for sent, others in twins.items() if others]
    for record in journal.items_by_id(wanted):
        for other in twins[record.id]:
            journal.record_outcome(
                other,
                state=record.state if record.state in ("sent", "failed") else "pending",
                status=record.status,
                reason=(record.reason or "")
                + ("; " if record.reason else "")
                + f"the same instance as item {record.id}, sent once for both",
                retryable=record.retryable,
            )


def retry_failed(
    settings: RetrySettings,
    *,
    journal: Journal,
    transport_for: Callable[[str], Transport],
    observer: Observer = ignore,
    sleep: Callable[[float], None] = time.sleep,
    workers_for: Callable[[str], int] | None = None,
    audit: TransferAuditor | None = None,
) -> RetryResult:
    """Resend what earlier sends left failed (retryably), pending or unanswered.

    Items are claimed in the journal first, so two replays (or a replay and a send)
    running at the same time never send the same item; confirmed items are never
    touched. Each peer is looked up by name through ``transport_for``, so a peer whose
    address was corrected since is reached at its new address. Idempotent: once every
    item is sent, another replay finds nothing to do. ``workers_for`` gives a peer's
    concurrent requests for a batch transport (STOW-RS), as ``send`` uses them; a DIMSE
    peer's items are resent over one association.
    """
    started = time.monotonic()
    claim = new_claim()
    claimed = journal.claim_replay(
        claim,
        peer=settings.peer_name,
        older_than=settings.older_than,
        max_attempts=settings.max_attempts,
        lease_seconds=settings.lease_seconds,
        include_refused=settings.include_refused,
    )
    # Grouped by peer and by the sender's note of the items' transfers, so a package
    # written for a folder peer carries the note, reason and recipient of its own send.
    notes = {tid: _transfer_note(journal, tid) for tid in {i.transfer_id for _, i in claimed}}
    by_peer: dict[tuple[str, _TransferNote], list[ItemRecord]] = {}
    for peer_name, item in claimed:
        by_peer.setdefault((peer_name, notes[item.transfer_id]), []).append(item)
    errors: list[str] = []
    peer_errors: dict[str, str] = {}
    unreachable = 0
    try:
        with _Lease(journal, claim, settings.lease_seconds):
            for (peer_name, note), items in by_peer.items():
                ready: list[tuple[int, Instance]] = []
                twins: dict[int, list[int]] = {}  # item sent -> items of the same instance
                first: dict[tuple[str, str], int] = {}
                confirmed = journal.confirmed_by_peer(
                    peer_name, (i.sop_instance_uid for i in items if i.sop_instance_uid)
                )
                for item in items:
                    key = (item.sop_instance_uid or "", item.digest or "")
                    if item.digest in confirmed.get(key[0], ()):
                        # The same instance (same digest) reached this peer in another
                        # transfer: sending it again would only make a duplicate.
                        journal.record_outcome(
                            item.id,
                            state="sent",
                            status=None,
                            reason="not resent: the peer confirmed this instance (same digest) "
                            "in another transfer",
                        )
                        continue
                    if key in first:
                        twins[first[key]].append(item.id)
                        continue
                    loaded = _reload(item)
                    if isinstance(loaded, str):
                        journal.record_outcome(item.id, state="failed", status=None, reason=loaded)
                    else:
                        first[key] = item.id
                        twins[item.id] = []
                        ready.append((item.id, loaded))
                if not ready:
                    continue
                try:
                    transport = transport_for(peer_name)
                except ConfigError as exc:
                    # The items stay open, for when the peer is back; they show this reason
                    # (not the one of an earlier attempt) until then.
                    errors.append(f"{peer_name}: {exc.message}")
                    peer_errors[peer_name] = exc.message
                    journal.note_reason(
                        [item_id for item_id, _ in ready]
                        + [other for others in twins.values() for other in others],
                        f"not resent: {exc.message}",
                    )
                    continue
                if isinstance(transport, FolderTransport):
                    transport.set_sender_note(*note)
                observer(
                    ReplayStarted(
                        peer_name,
                        tuple(sorted({i.transfer_id for i in items})),
                        len(ready),
                        sum(inst.size for _, inst in ready),
                    )
                )
                try:
                    error, _hint = _send_all(
                        settings.retries,
                        settings.retry_delay,
                        journal,
                        transport,
                        ready,
                        observer,
                        sleep,
                        claim=claim,
                        batching=(settings.batch_size, settings.batch_bytes),
                        concurrency=(
                            max(1, workers_for(peer_name))
                            if workers_for is not None and isinstance(transport, BatchTransport)
                            else 1
                        ),
                    )
                finally:
                    transport.close()
                _copy_outcomes(journal, twins)
                if error is not None:
                    errors.append(f"{peer_name}: {error}")
                    peer_errors[peer_name] = error
                    unreachable += 1
    except KeyboardInterrupt as exc:
        # The claims are released (the lease's exit); what was not sent stays open.
        touched = tuple(sorted({item.transfer_id for _, item in claimed}))
        for transfer_id in touched:
            journal.refresh_outcome(transfer_id)
        now = journal.items_by_id(item.id for _, item in claimed)
        raise _interrupted(
            {
                "sent": sum(i.state in ("sent", "committed") for i in now),
                "failed": sum(i.state == "failed" for i in now),
                "not_sent": sum(i.state in ("pending", "sending") for i in now),
                "skipped": 0,
                "total": len(now),
            },
            peer=settings.peer_name,
            transfers=touched,
        ) from exc
    transfers = sorted({item.transfer_id for _, item in claimed})
    peer_of = {item.transfer_id: peer_name for peer_name, item in claimed}
    for transfer_id in transfers:
        # What stopped this replay replaces what stopped an earlier attempt.
        refreshed = journal.refresh_outcome(
            transfer_id, error=peer_errors.get(peer_of[transfer_id])
        )
        # Only the studies this replay worked on: the others were not transferred again.
        replayed = {i.study_uid for _, i in claimed if i.transfer_id == transfer_id and i.study_uid}
        _audit(audit, journal, transfer_id, refreshed, None, replayed)
        if refreshed == "complete" and settings.unpack_dir:
            _remove_unpacked(journal, journal.items(transfer_id), settings.unpack_dir)
    final = journal.items_by_id(item.id for _, item in claimed)
    by_state: dict[str, list[ItemRecord]] = {}
    for item in final:
        by_state.setdefault(item.state, []).append(item)
    sent = by_state.get("sent", []) + by_state.get("committed", [])
    backlog = journal.replay_backlog(peer=settings.peer_name, max_attempts=settings.max_attempts)
    if not claimed:
        outcome = "nothing to do"
    elif unreachable and unreachable == len(by_peer) and not sent:
        outcome = "unreachable"
    elif len(sent) == len(final):
        outcome = "complete"
    else:
        outcome = "partial"
    return RetryResult(
        peers=tuple(sorted({peer for peer, _ in by_peer})),
        transfers=tuple(transfers),
        claimed=len(claimed),
        sent=len(sent),
        failed=len(by_state.get("failed", [])),
        pending=len(by_state.get("pending", [])) + len(by_state.get("sending", [])),
        given_up=backlog["given_up"],
        not_retryable=backlog["not_retryable"],
        failures=tuple(_problem(i) for i in by_state.get("failed", [])),
        warnings=tuple(_problem(i) for i in sent if i.reason),
        bytes_sent=sum(i.size or 0 for i in sent),
        seconds=time.monotonic() - started,
        outcome=outcome,
        errors=tuple(errors),
    )


# -- giving up deliberately (send --abandon) -----------------------------------------


@dataclass(frozen=True)
class AbandonResult:
    """What ``abandon`` gave up on, and what it left to a run that holds it."""

    transfer_id: int | None
    peer: str | None
    abandoned: int
    held: int
    transfers: tuple[int, ...]
    by: str
    reason: str
    by_transfer: dict[int, int] = field(default_factory=dict)

    @property
    def exit_code(self) -> ExitCode:
        # Items a running send holds were not abandoned: say so with 6, so that a script
        # does not take the peer's backlog for cleared.
        return ExitCode.PARTIAL_FAILURE if self.held else ExitCode.OK

    def to_json(self) -> dict[str, object]:
        return {
            "mode": "abandon",
            "transfer_id": self.transfer_id,
            "peer": self.peer,
            "abandoned": self.abandoned,
            "held_by_a_running_send": self.held,
            "transfers": {str(t): n for t, n in sorted(self.by_transfer.items())},
            "by": self.by,
            "reason": self.reason,
            "exit_code": int(self.exit_code),
        }


def abandon(
    *,
    journal: Journal,
    by: str,
    reason: str,
    transfer_id: int | None = None,
    peer: str | None = None,
    audit: TransferAuditor | None = None,
) -> AbandonResult:
    """Give up on the open items of a transfer, or of every transfer to ``peer``.

    The items become ``abandoned`` (who, when, why), stay visible, and are never resent;
    each study concerned gets an audit record. Items a running send or replay holds are
    left to it (``held``). UsageError for a transfer id the journal does not have.
    """
    if not reason.strip():
        raise UsageError(
            "giving up on items needs a reason", hint="add --reason 'why they are abandoned'"
        )
    if transfer_id is not None and journal.transfer_row(transfer_id) is None:
        raise UsageError(
            f"transfer {transfer_id} is not in the journal",
            hint="'dvdexit status' lists the transfers with their ids",
        )
    done = journal.abandon(by=by, reason=reason, transfer_id=transfer_id, peer=peer)
    by_transfer: dict[int, int] = {}
    for item in done.items:
        by_transfer[item.transfer_id] = by_transfer.get(item.transfer_id, 0) + 1
    for tid in done.transfers:
        studies = {i.study_uid for i in done.items if i.transfer_id == tid and i.study_uid}
        _audit(audit, journal, tid, "abandoned", f"abandoned by {by}: {reason}", studies)
    return AbandonResult(
        transfer_id=transfer_id,
        peer=peer,
        abandoned=len(done.items),
        held=done.held,
        transfers=done.transfers,
        by=by,
        reason=reason,
        by_transfer=by_transfer,
    )


# -- verify ---------------------------------------------------------------------------


VERDICTS = ("identical", "different", "conflict", "missing", "unknown", "invalid")


@dataclass(frozen=True)
class VerifiedFile:
    path: str
    sop_instance_uid: str | None
    study_uid: str | None
    verdict: str  # identical, different, conflict, unknown, invalid
    reason: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "sop_instance_uid": self.sop_instance_uid,
            "study_uid": self.study_uid,
            "verdict": self.verdict,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class VerifyResult:
    files: tuple[VerifiedFile, ...]
    ignored: tuple[FileProblem, ...] = field(default=())
    elsewhere: tuple[VerifiedFile, ...] = field(default=())
    """Instances of the studies checked that were sent or stored from other paths (such
    as the reports and notes a send generated): not judged by this verification."""

    def count(self, verdict: str) -> int:
        return sum(f.verdict == verdict for f in self.files)

    @property
    def exit_code(self) -> ExitCode:
        bad = len(self.files) - self.count("identical")
        return ExitCode.OK if self.files and not bad else ExitCode.VERIFY_FAILED

    def studies(self) -> dict[str, dict[str, int]]:
        table: dict[str, dict[str, int]] = {}
        for f in self.files:
            row = table.setdefault(
                f.study_uid or "(unknown study)",
                dict.fromkeys(VERDICTS, 0),
            )
            row[f.verdict] += 1
        return table

    def study_status(self) -> dict[str, str]:
        """Per study: ``complete`` (all identical, none missing), ``incomplete`` (instances
        the journal recorded are missing) or ``different`` (anything else not identical)."""
        status = {}
        for study, counts in self.studies().items():
            if counts["missing"]:
                status[study] = "incomplete"
            elif sum(counts.values()) == counts["identical"]:
                status[study] = "complete"
            else:
                status[study] = "different"
        return status

    def to_json(self) -> dict[str, object]:
        return {
            "identical": self.count("identical"),
            "different": self.count("different"),
            "conflict": self.count("conflict"),
            "missing": self.count("missing"),
            "unknown": self.count("unknown"),
            "invalid": self.count("invalid"),
            "ignored": len(self.ignored),
            "studies": self.studies(),
            "study_status": self.study_status(),
            "problems": [f.to_json() for f in self.files if f.verdict != "identical"],
            "ignored_files": [i.to_json() for i in self.ignored],
            "elsewhere": len(self.elsewhere),
            "elsewhere_files": [f.to_json() for f in self.elsewhere],
            "exit_code": int(self.exit_code),
        }


def verify_paths(paths: Sequence[Path], *, journal: Journal) -> VerifyResult:
    """Check local files against the journal: each must parse and match a recorded digest.

    A file's digest is compared with what was last *sent* for its SOP Instance UID, or,
    for a file this machine received, with what the receiver *stored*. A file the journal
    does not know is ``unknown``: it cannot be verified, and verification fails. For each
    study found in a folder given, an instance the journal recorded as sent or stored from
    that folder that is not among the files is ``missing``: the study is incomplete there.
    Instances of those studies recorded at other paths (the SR and PDF copies a send
    generates under the data directory, another medium) are listed as ``elsewhere``, not
    judged. A receiver's temporaries in its store are skipped: they are no instances.
    """
    # Lazily: importing the receive package imports its forwarder, which imports the engine.
    from dvdexit_cli.receive.store import is_store_temporary

    scanned = scan(list(paths), deduplicate=False)
    found = ScanResult(
        instances=[i for i in scanned.instances if not is_store_temporary(i.path)],
        rejected=[r for r in scanned.rejected if not is_store_temporary(r.path)],
        unpacked=scanned.unpacked,
    )
    uids = [i.sop_instance_uid for i in found.instances]
    sent = journal.sent_digests(uids)
    received = journal.received_digests(uids)
    conflicts = journal.conflict_digests(uids)
    files: list[VerifiedFile] = []
    for inst in found.instances:
        expected = sent.get(inst.sop_instance_uid) or received.get(inst.sop_instance_uid)
        if expected == inst.digest:
            verdict, reason = "identical", None
        elif inst.digest in conflicts.get(inst.sop_instance_uid, ()):
            verdict, reason = (
                "conflict",
                (
                    "kept aside by the receiver: another instance with this SOP Instance UID "
                    "and other content is stored"
                ),
            )
        elif expected is None:
            verdict, reason = "unknown", "not in the journal (never sent or received here)"
        else:
            verdict, reason = "different", "dataset digest differs from the journal's"
        files.append(
            VerifiedFile(str(inst.path), inst.sop_instance_uid, inst.study_uid, verdict, reason)
        )
    present = {f.sop_instance_uid for f in files}
    # Completeness is asked of folders (a store, a medium), not of single files.
    folders = [p.resolve() for p in paths if p.is_dir()]
    in_folders = {
        i.study_uid
        for i in found.instances
        if any(i.path.resolve().is_relative_to(folder) for folder in folders)
    }
    recorded = journal.recorded_instances(in_folders)
    elsewhere = []
    for study_uid, instances in sorted(recorded.items()):
        for sop_uid, path in sorted(instances.items()):
            if sop_uid in present:
                continue
            if _recorded_inside(path, folders):
                files.append(
                    VerifiedFile(
                        path,
                        sop_uid,
                        study_uid,
                        "missing",
                        "recorded in the journal as sent or stored, not among the files checked",
                    )
                )
            else:
                elsewhere.append(
                    VerifiedFile(
                        path,
                        sop_uid,
                        study_uid,
                        "elsewhere",
                        "sent or stored from a path outside the folders checked "
                        "(for example a report or note generated for the send)",
                    )
                )
    ignored = []
    for rejected in found.rejected:
        if rejected.disposition == "failed":
            files.append(
                VerifiedFile(
                    str(rejected.path),
                    rejected.sop_instance_uid,
                    None,
                    "invalid",
                    rejected.reason,
                )
            )
        else:
            ignored.append(
                FileProblem(str(rejected.path), rejected.sop_instance_uid, rejected.reason)
            )
    return VerifyResult(tuple(files), tuple(ignored), tuple(elsewhere))


def _recorded_inside(path: str, folders: Sequence[Path]) -> bool:
    """Whether a journaled path lies in one of ``folders`` (resolved).

    A relative path (recorded from wherever that send ran) cannot be placed: it counts as
    inside, so an instance lost from a folder is never excused for want of knowing.
    """
    recorded = Path(path)
    if not recorded.is_absolute():
        return True
    real = recorded.resolve()
    return any(real.is_relative_to(folder) for folder in folders)
