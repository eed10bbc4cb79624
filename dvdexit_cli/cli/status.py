"""``dvdexit status``: the journal at a glance."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from dvdexit_cli.cli.errors import handle_errors
from dvdexit_cli.cli.options import JsonOption
from dvdexit_cli.cli.render import err, human_bytes, out, print_json
from dvdexit_cli.config import resolve_paths
from dvdexit_cli.journal import Journal, TransferSummary

__all__ = ["status_command"]

_STATES = ("pending", "sending", "sent", "committed", "failed", "skipped")


def _transfer_json(t: TransferSummary) -> dict[str, object]:
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
        "counts": {s: t.counts.get(s, 0) for s in _STATES},
        "bytes_sent": t.bytes_sent,
    }


@handle_errors
def status_command(
    limit: Annotated[int, typer.Option("--limit", min=1, help="How many transfers.")] = 20,
    json_output: JsonOption = False,
) -> None:
    """Show the latest transfers and received studies from the journal."""
    home = resolve_paths()
    if not home.journal_file.exists():
        transfers: list[TransferSummary] = []
        received: list[dict[str, object]] = []
    else:
        with Journal(home.journal_file) as journal:
            transfers = journal.transfers(limit=limit)
            received = journal.received_summary(limit=limit)
    if json_output:
        print_json(
            {
                "journal": str(home.journal_file),
                "transfers": [_transfer_json(t) for t in transfers],
                "received": received,
            }
        )
        return
    if not transfers and not received:
        err.print(f"nothing in the journal yet ({home.journal_file})")
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
            "pending",
            "bytes",
        ):
            table.add_column(column)
        for t in transfers:
            not_done = t.counts.get("pending", 0) + t.counts.get("sending", 0)
            table.add_row(
                str(t.id),
                t.peer,
                t.created_at,
                t.outcome,
                str(t.counts.get("sent", 0) + t.counts.get("committed", 0)),
                str(t.counts.get("failed", 0)),
                str(t.counts.get("skipped", 0)),
                str(not_done),
                human_bytes(t.bytes_sent),
            )
        out.print(table)
    if received:
        table = Table(title="received studies", title_justify="left")
        for column in ("study", "from AE", "last", "stored", "duplicate", "conflict", "refused"):
            table.add_column(column)
        for r in received:
            table.add_row(
                str(r["study_uid"]),
                str(r["calling_ae"]),
                str(r["last_received_at"]),
                *(str(r[k]) for k in ("stored", "duplicate", "conflict", "refused")),
            )
        out.print(table)
