"""Send and verify orchestration: scan, journal, transport, retries, summaries.

The engine owns the order of things that make a send honest: every item is in the
journal before anything goes on the wire, each item is marked ``sending`` before its
C-STORE and gets the peer's answer recorded right after, and the result is computed
from the journal, not from counters kept on the side.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from dvdexit_cli.dicom.scan import Instance, scan
from dvdexit_cli.errors import NoDicomFoundError, PeerError
from dvdexit_cli.events import (
    InstanceDone,
    Observer,
    RetryScheduled,
    ScanFinished,
    TransferFinished,
    TransferStarted,
    ignore,
)
from dvdexit_cli.exitcodes import ExitCode
from dvdexit_cli.journal import ItemRecord, Journal
from dvdexit_cli.transport.base import StoreOutcome, Transport

__all__ = [
    "VERDICTS",
    "FileProblem",
    "SendResult",
    "SendSettings",
    "VerifiedFile",
    "VerifyResult",
    "send",
    "verify_paths",
]


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

    @property
    def exit_code(self) -> ExitCode:
        if self.outcome == "unreachable":
            return ExitCode.PEER_UNREACHABLE
        if self.failed or self.pending:
            return ExitCode.PARTIAL_FAILURE
        return ExitCode.OK

    def to_json(self) -> dict[str, object]:
        return {
            "transfer_id": self.transfer_id,
            "peer": self.peer,
            "outcome": self.outcome,
            "sent": self.sent,
            "failed": self.failed,
            "skipped": self.skipped,
            "pending": self.pending,
            "studies": self.studies,
            "bytes_sent": self.bytes_sent,
            "seconds": round(self.seconds, 3),
            "error": self.error,
            "failures": [f.to_json() for f in self.failures],
            "warnings": [w.to_json() for w in self.warnings],
            "skipped_files": [s.to_json() for s in self.skipped_files],
            "exit_code": int(self.exit_code),
        }


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
) -> SendResult:
    """Send what ``settings.inputs`` hold through ``transport``, journaling every item.

    Raises InputError (NoDicomFoundError) when there is nothing to send. An unreachable
    peer is not raised: it is the result's outcome (``unreachable``, exit 5), with every
    item left failed and retryable in the journal.
    """
    started = time.monotonic()
    found = scan(list(settings.inputs))
    skipped = sum(r.disposition == "skipped" for r in found.rejected)
    unreadable = len(found.rejected) - skipped
    observer(ScanFinished(len(found.instances), found.total_bytes, skipped, unreadable))
    if not found.instances:
        reasons = sorted({r.reason for r in found.rejected})[:3]
        raise NoDicomFoundError(
            f"no DICOM instance to send in {', '.join(map(str, settings.inputs))}"
            + (
                f" ({skipped} file(s) skipped, {unreadable} unreadable: {'; '.join(reasons)})"
                if found.rejected
                else " (no files)"
            ),
            hint="point dvdexit at a folder, DICOMDIR medium or DICOM files",
        )
    transfer_id, item_ids = journal.create_transfer(
        peer=settings.peer_name,
        peer_address=settings.peer_address,
        inputs=settings.inputs,
        instances=found.instances,
        rejected=found.rejected,
        note=settings.note,
        reason=settings.reason,
    )
    observer(
        TransferStarted(transfer_id, settings.peer_name, len(found.instances), found.total_bytes)
    )
    outcome, error, hint = "complete", None, None
    try:
        error, hint = _send_all(
            settings,
            journal,
            transport,
            list(zip(item_ids, found.instances, strict=True)),
            observer,
            sleep,
        )
    except KeyboardInterrupt:
        journal.finish_transfer(transfer_id, outcome="interrupted", error="interrupted")
        observer(TransferFinished(transfer_id, "interrupted"))
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
    observer(TransferFinished(transfer_id, outcome))
    return replace(result, outcome=outcome)


def _send_all(
    settings: SendSettings,
    journal: Journal,
    transport: Transport,
    pending: list[tuple[int, Instance]],
    observer: Observer,
    sleep: Callable[[float], None],
) -> tuple[str | None, str | None]:
    """Send, retrying retryable failures; return the peer error that stopped us, if any."""
    attempt = 1
    try:
        transport.open([inst for _, inst in pending])
    except PeerError as exc:
        _fail_all(journal, pending, str(exc))
        return exc.message, exc.hint
    while True:
        retry: list[tuple[int, Instance]] = []
        for position, (item_id, inst) in enumerate(pending):
            journal.mark_sending(item_id)
            try:
                outcome = transport.store(inst)
            except PeerError as exc:
                # The peer went away and could not be reached again: nothing more can be
                # sent in this round. Keep every remaining item retryable.
                _fail_all(journal, pending[position:], exc.message)
                if attempt > settings.retries:
                    return exc.message, exc.hint
                retry.extend(pending[position:])
                break
            except BaseException:
                journal.record_outcome(
                    item_id, state="pending", status=None, reason="interrupted while sending"
                )
                raise
            _record(journal, item_id, inst, outcome, attempt, observer)
            if outcome.state == "failed" and outcome.retryable:
                retry.append((item_id, inst))
        if not retry or attempt > settings.retries:
            return None, None
        delay = settings.retry_delay * 2 ** (attempt - 1)
        observer(RetryScheduled(len(retry), attempt + 1, delay))
        sleep(delay)
        attempt += 1
        pending = retry


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


def _fail_all(journal: Journal, items: Sequence[tuple[int, Instance]], reason: str) -> None:
    for item_id, _ in items:
        journal.record_outcome(item_id, state="failed", status=None, reason=reason, retryable=True)


# -- verify ---------------------------------------------------------------------------


VERDICTS = ("identical", "different", "conflict", "unknown", "invalid")


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

    def to_json(self) -> dict[str, object]:
        return {
            "identical": self.count("identical"),
            "different": self.count("different"),
            "conflict": self.count("conflict"),
            "unknown": self.count("unknown"),
            "invalid": self.count("invalid"),
            "ignored": len(self.ignored),
            "studies": self.studies(),
            "problems": [f.to_json() for f in self.files if f.verdict != "identical"],
            "ignored_files": [i.to_json() for i in self.ignored],
            "exit_code": int(self.exit_code),
        }


def verify_paths(paths: Sequence[Path], *, journal: Journal) -> VerifyResult:
    """Check local files against the journal: each must parse and match a recorded digest.

    A file's digest is compared with what was last *sent* for its SOP Instance UID, or,
    for a file this machine received, with what the receiver *stored*. A file the journal
    does not know is ``unknown``: it cannot be verified, and verification fails.
    """
    found = scan(list(paths), deduplicate=False)
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
    return VerifyResult(tuple(files), tuple(ignored))
