"""Giving up deliberately (``send --abandon``): open items become ``abandoned``, audited,
and are never resent."""

from __future__ import annotations

from dvdexit_cli.audit import TransferAuditor
from dvdexit_cli.errors import UsageError
from dvdexit_cli.journal import Journal
from dvdexit_cli.sending.results import AbandonResult, audit_transfer

__all__ = ["abandon"]


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
        audit_transfer(audit, journal, tid, "abandoned", f"abandoned by {by}: {reason}", studies)
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
