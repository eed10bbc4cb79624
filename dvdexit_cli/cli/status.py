"""``dvdexit status``: the journal at a glance, or a staged diagnosis of one peer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from dvdexit_cli import units
from dvdexit_cli.audit import audit_path, read_audit
from dvdexit_cli.cli import options
from dvdexit_cli.cli.errors import handle_errors
from dvdexit_cli.cli.options import JsonOption
from dvdexit_cli.cli.render import err, human_bytes, out, print_json
from dvdexit_cli.config import PeerBook, resolve_paths
from dvdexit_cli.diagnose import Diagnosis, diagnose
from dvdexit_cli.errors import UsageError
from dvdexit_cli.journal import Journal, TransferSummary
from dvdexit_cli.journal.store import ItemRecord
from dvdexit_cli.transport.statuses import classify_store_status

__all__ = ["parse_duration", "plain_reason", "render_diagnosis", "status_command"]

_STATES = ("pending", "sending", "sent", "committed", "failed", "skipped", "abandoned")

# What a user should do about a failure status (PS3.4 B.2.3), beyond what it means.
_ADVICE = {
    "out of resources at the peer": "retry later",
    "resource limitation at the peer": "retry later",
    "SOP class not supported by the peer": "ask the peer to accept this kind of object",
    "refused: not authorised": "ask the peer's administrator to allow our AE title",
    "data set does not match SOP class": "the file is malformed for its SOP class",
    "the peer cannot understand the data set": "the file may be damaged; check it",
}


def parse_duration(text: str) -> timedelta:
    """Kept one release for old imports: use :func:`dvdexit_cli.units.parse_duration`."""
    return timedelta(seconds=units.parse_duration(text))


def plain_reason(status: int | None, reason: str | None) -> str:
    """A failure in words: "A700 out of resources at the peer: retry later"."""
    if status is None:
        return reason or "failed (no status from the peer)"
    meaning = classify_store_status(status)
    text = f"{status:04X} {meaning.text}"
    advice = _ADVICE.get(meaning.text)
    if advice:
        text += f": {advice}"
    return text


def _seconds(t: TransferSummary) -> float | None:
    if not t.finished_at:
        return None
    start = datetime.fromisoformat(t.created_at.replace("Z", "+00:00"))
    end = datetime.fromisoformat(t.finished_at.replace("Z", "+00:00"))
    return max(0.0, (end - start).total_seconds())


def _failure_json(item: ItemRecord) -> dict[str, object]:
    return {
        "path": item.path,
        "sop_instance_uid": item.sop_instance_uid,
        "status": f"{item.status:04X}" if item.status is not None else None,
        "reason": item.reason,
        "plain_reason": plain_reason(item.status, item.reason),
        "retryable": item.retryable,
    }


def _not_sent_json(item: ItemRecord) -> dict[str, object]:
    return {"path": item.path, "sop_instance_uid": item.sop_instance_uid, "reason": item.reason}


def _transfer_json(
    t: TransferSummary,
    failures: list[ItemRecord],
    not_sent: list[ItemRecord],
    abandoned: list[dict[str, object]],
) -> dict[str, object]:
    seconds = _seconds(t)
    return {
        "transfer_id": t.id,
        "peer": t.peer,
        "peer_address": t.peer_address,
        "created_at": t.created_at,
        "finished_at": t.finished_at,
        "outcome": t.outcome,
        "error": t.error,
        "note": t.note,
        "reason": t.reason,
        "recipient": t.recipient,
        "counts": {s: t.counts.get(s, 0) for s in _STATES},
        "bytes_sent": t.bytes_sent,
        "seconds": round(seconds, 3) if seconds is not None else None,
        "bytes_per_second": round(t.bytes_sent / seconds) if seconds else None,
        "failures": [_failure_json(i) for i in failures],
        "not_sent": [_not_sent_json(i) for i in not_sent],
        "abandoned": abandoned,
    }


def render_diagnosis(diagnosis: Diagnosis) -> None:
    """Print a diagnosis, one line per stage, on stdout."""
    for stage in diagnosis.stages:
        mark = {"ok": "ok", "failed": "FAILED", "skipped": "skipped"}[stage.status]
        out.print(
            f"{stage.stage:<12} {mark:<8} {stage.seconds * 1000:8.1f} ms  {stage.detail}",
            markup=False,
        )
        if stage.hint:
            out.print(f"{'':<12} hint: {stage.hint}", markup=False)
    failed = diagnosis.failed_stage
    verdict = "healthy" if failed is None else f"NOT healthy (failed at {failed.stage})"
    out.print(f"peer {diagnosis.peer} ({diagnosis.address}): {verdict}", markup=False)


@handle_errors
def status_command(
    peer: Annotated[
        str | None,
        typer.Option(
            "--peer",
            metavar="NAME",
            help="Diagnose this peer stage by stage (exit 0 healthy, 5 not); with --failed or "
            "--since, show only its transfers instead.",
        ),
    ] = None,
    contexts: Annotated[
        bool,
        typer.Option(
            "--contexts", help="With --peer: also show which storage SOP classes the peer accepts."
        ),
    ] = False,
    timeout: options.StageTimeoutOption = 10.0,
    failed: Annotated[
        bool, typer.Option("--failed", help="Only transfers with failures, with the reasons.")
    ] = False,
    since: Annotated[
        float | None,
        typer.Option(
            "--since",
            parser=options.duration,
            metavar=options.DURATION,
            help="Only transfers started within DURATION (30m, 12h, 7d, 2w; plain: seconds).",
        ),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="How many transfers.")] = 20,
    audit: Annotated[
        bool,
        typer.Option(
            "--audit", help="Show the audit trail (latest --limit records; --since filters)."
        ),
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Show the latest transfers and received studies, or diagnose a peer (--peer)."""
    home = resolve_paths()
    if audit:
        if peer is not None or failed or contexts:
            raise UsageError("--audit goes with --since, --limit and --json only")
        _show_audit(audit_path(home), since=since, limit=limit, json_output=json_output)
        return
    if peer is not None and not failed and since is None:
        diagnosis = diagnose(
            PeerBook(home.peers_file).get_any(peer), timeout=timeout, contexts=contexts
        )
        if json_output:
            print_json(diagnosis.to_json())
        else:
            render_diagnosis(diagnosis)
        raise typer.Exit(int(diagnosis.exit_code))
    if contexts:
        raise UsageError("--contexts goes with --peer NAME alone (the diagnosis)")
    cutoff = None
    if since is not None:
        moment = datetime.now(UTC) - timedelta(seconds=since)
        cutoff = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    transfers: list[TransferSummary] = []
    received: list[dict[str, object]] = []
    failures: dict[int, list[ItemRecord]] = {}
    not_sent: dict[int, list[ItemRecord]] = {}
    abandoned: dict[int, list[dict[str, object]]] = {}
    if home.journal_file.exists():
        with Journal(home.journal_file) as journal:
            transfers = journal.transfers(limit=limit, peer=peer, since=cutoff, failed_only=failed)
            failures = {t.id: journal.items(t.id, states=("failed",)) for t in transfers}
            not_sent = {
                t.id: journal.items(t.id, states=("pending", "sending"))
                for t in transfers
                if t.outcome != "running"
            }
            abandoned = {t.id: journal.abandonments(t.id) for t in transfers}
            if peer is None and not failed:
                received = [
                    {**r, **_completeness(journal, str(r["study_uid"]))}
                    for r in journal.received_summary(limit=limit)
                    if cutoff is None or str(r["last_received_at"]) >= cutoff
                ]
    if json_output:
        print_json(
            {
                "journal": str(home.journal_file),
                "transfers": [
                    _transfer_json(
                        t, failures.get(t.id, []), not_sent.get(t.id, []), abandoned.get(t.id, [])
                    )
                    for t in transfers
                ],
                "received": received,
            }
        )
        return
    if not transfers and not received:
        err.print(f"nothing in the journal matches ({home.journal_file})")
        return
    if transfers:
        table = Table(title="transfers", title_justify="left")
        for column in (
            "id",
            "peer",
            "started",
            "outcome",
            "sent",
            "failed",
            "skipped",
            "not sent",
            "abandoned",
            "bytes",
            "time",
            "rate",
            "note",
        ):
            table.add_column(column)
        for t in transfers:
            not_done = t.counts.get("pending", 0) + t.counts.get("sending", 0)
            seconds = _seconds(t)
            table.add_row(
                str(t.id),
                t.peer,
                t.created_at,
                t.outcome,
                str(t.counts.get("sent", 0) + t.counts.get("committed", 0)),
                str(t.counts.get("failed", 0)),
                str(t.counts.get("skipped", 0)),
                str(not_done),
                str(t.counts.get("abandoned", 0)),
                human_bytes(t.bytes_sent),
                f"{seconds:.1f} s" if seconds is not None else "-",
                f"{human_bytes(t.bytes_sent / seconds)}/s" if seconds else "-",
                t.note or t.reason or "",
            )
        out.print(table)
        for t in transfers:
            items = failures.get(t.id, [])
            if t.error:
                out.print(f"transfer {t.id}: {t.error}", markup=False)
            reasons: dict[str, int] = {}
            for item in not_sent.get(t.id, []):
                key = item.reason or "not sent yet"
                reasons[key] = reasons.get(key, 0) + 1
            for why, count in reasons.items():
                out.print(f"  transfer {t.id}: {count} not sent: {why}", markup=False)
            for given_up in abandoned.get(t.id, []):
                out.print(
                    f"  transfer {t.id}: {given_up['items']} abandoned by {given_up['by']} "
                    f"at {given_up['at']}: {given_up['reason']}",
                    markup=False,
                )
            for item in items[:20]:
                out.print(
                    f"  transfer {t.id} failed {item.path}: "
                    f"{plain_reason(item.status, item.reason)}",
                    markup=False,
                )
            if len(items) > 20:
                out.print(f"  ... and {len(items) - 20} more failure(s) (--json lists them)")
    if received:
        table = Table(title="received studies", title_justify="left")
        for column in (
            "study",
            "from AE",
            "last",
            "stored",
            "duplicate",
            "conflict",
            "refused",
            "state",
            "hook",
            "forward",
        ):
            table.add_column(column)
        for r in received:
            state = str(r["state"] or "")
            if r["completed_by"]:
                state += f" ({r['completed_by']})"
            table.add_row(
                str(r["study_uid"]),
                str(r["calling_ae"]),
                str(r["last_received_at"]),
                *(str(r[k]) for k in ("stored", "duplicate", "conflict", "refused")),
                state,
                str(r["hook"] or ""),
                str(r["forward"] or ""),
            )
        out.print(table)
        for r in received:
            note = r.get("sender_note")
            if isinstance(note, dict):
                said = "; ".join(
                    f"{key} {note[key]!r}" for key in ("reason", "recipient", "note") if note[key]
                )
                out.print(
                    f"study {r['study_uid']}: sender's {said} (untrusted text from the sender)",
                    markup=False,
                )


def _completeness(journal: Journal, study_uid: str) -> dict[str, object]:
    """Whether a received study is complete, and what its hook and forward did last."""
    study = journal.study(study_uid)
    hooks = journal.hook_runs(study_uid)
    forwards = journal.forwards(study_uid)
    return {
        "state": study.state if study else None,
        "completed_by": study.completed_by if study else None,
        "receiver": study.receiver if study else None,
        "hook": hooks[-1]["outcome"] if hooks else None,
        "forward": forwards[-1]["outcome"] if forwards else None,
        "sender_note": journal.study_note(study_uid),
    }


def _show_audit(path: Path, *, since: float | None, limit: int, json_output: bool) -> None:
    cutoff = datetime.now(UTC) - timedelta(seconds=since) if since is not None else None
    records = list(read_audit(path, since=cutoff))[-limit:]
    if json_output:
        print_json({"audit_file": str(path), "records": records})
        return
    if not records:
        err.print(f"no audit records match ({path})")
        return
    table = Table(title=f"audit trail ({path})", title_justify="left")
    for column in ("time", "type", "outcome", "study", "from", "to", "instances", "transfer"):
        table.add_column(column)
    for r in records:
        src, dst = r.get("source") or {}, r.get("destination") or {}
        table.add_row(
            str(r.get("time", "")),
            f"{r.get('type', '')} ({r.get('action', '')})",
            f"{r.get('outcome', '')} {r.get('outcome_text', '')}",
            str((r.get("study") or {}).get("uid", "")),
            str(src.get("name") or src.get("ae_title") or ""),
            str(dst.get("name") or dst.get("ae_title") or ""),
            str((r.get("study") or {}).get("instances", "")),
            str(r.get("transfer_id") or ""),
        )
    out.print(table)
