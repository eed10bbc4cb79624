"""What a send, a replay or an abandon did, read from the journal; exit codes and JSON.

Results are computed from the journal, not from counters kept on the side: what the
journal says was confirmed is what the result calls sent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from dvdexit_cli.audit import TransferAuditor
from dvdexit_cli.errors import Interrupted
from dvdexit_cli.exitcodes import ExitCode
from dvdexit_cli.journal import ItemRecord, Journal

__all__ = [
    "AbandonResult",
    "FileProblem",
    "RetryResult",
    "SendResult",
    "audit_transfer",
    "interrupted",
    "problem",
    "result_from_journal",
    "resume_command",
]

log = logging.getLogger(__name__)


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


def interrupted(
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


def problem(item: ItemRecord) -> FileProblem:
    return FileProblem(
        path=item.path,
        sop_instance_uid=item.sop_instance_uid,
        reason=item.reason or "",
        status=item.status,
        retryable=item.retryable,
    )


def result_from_journal(
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
        warnings=tuple(problem(i) for i in sent if i.reason),
        failures=tuple(problem(i) for i in by_state.get("failed", [])),
        skipped_files=tuple(problem(i) for i in by_state.get("skipped", [])),
        studies=len({i.study_uid for i in items if i.study_uid}),
        bytes_sent=sum(i.size or 0 for i in sent),
        seconds=seconds,
        outcome=outcome,
        error=error,
        error_hint=hint,
    )


def audit_transfer(
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
