"""One send: scan, journal, rounds (here or in worker processes), result.

The order of things that makes a send honest: every item is in the journal before
anything goes on the wire, each item is marked ``sending`` before its request and gets
the peer's answer recorded right after, and the result is computed from the journal,
not from counters kept on the side.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from dvdexit_cli.audit import TransferAuditor
from dvdexit_cli.errors import Interrupted
from dvdexit_cli.events import Observer, TransferFinished, TransferStarted, ignore
from dvdexit_cli.journal import Journal
from dvdexit_cli.journal.store import new_claim
from dvdexit_cli.sending.inputs import remove_folders, scan_selected
from dvdexit_cli.sending.lease import Lease
from dvdexit_cli.sending.results import (
    SendResult,
    audit_transfer,
    interrupted,
    result_from_journal,
)
from dvdexit_cli.sending.rounds import RoundContext, RoundSettings, cut_short, send_rounds
from dvdexit_cli.sending.settings import SendSettings, TransportFactory
from dvdexit_cli.sending.workers import partition, send_parallel
from dvdexit_cli.transport.base import BatchTransport, Transport

__all__ = ["send"]


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
    found, excluded = scan_selected(settings, observer)
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
    outcome = "complete"
    work = list(zip(item_ids, found.instances, strict=True))
    # A batch transport (STOW-RS) runs its workers as concurrent requests in this process:
    # batches of one study may travel in parallel, unlike DIMSE associations.
    batched = isinstance(transport, BatchTransport)
    shares = (
        partition(work, settings.workers)
        if transport_factory is not None and not batched
        else [work]
    )
    rules = RoundSettings.of(settings, claim=claim, concurrency=settings.workers if batched else 1)
    try:
        with Lease(journal, claim, settings.lease_seconds):
            if len(shares) > 1 and transport_factory is not None:
                error, hint = send_parallel(
                    journal.path, rules, transport_factory, shares, observer
                )
            else:
                ctx = RoundContext(journal, rules, observer, sleep)
                error, hint = send_rounds(ctx, transport, work)
    except KeyboardInterrupt as exc:
        raise _stopped_by_interrupt(settings, journal, transfer_id, observer, audit) from exc
    except Exception as exc:
        # A bug, not a peer's answer: the transfer must not read "running" forever, and
        # its unsent items stay pending for --retry-failed.
        journal.finish_transfer(transfer_id, outcome="failed", error=cut_short(exc))
        audit_transfer(audit, journal, transfer_id, "failed", cut_short(exc))
        observer(TransferFinished(transfer_id, "failed"))
        raise
    finally:
        transport.close()
    result = result_from_journal(
        journal, transfer_id, settings.peer_name, time.monotonic() - started, outcome, error, hint
    )
    if error is not None and result.sent == 0:
        outcome = "unreachable"
    elif result.failed or result.pending:
        outcome = "partial"
    journal.finish_transfer(transfer_id, outcome=outcome, error=error)
    audit_transfer(audit, journal, transfer_id, outcome, error)
    if outcome == "complete":
        # Unpacked archives are kept only while --retry-failed may need their files.
        remove_folders(journal, found.unpacked)
    observer(TransferFinished(transfer_id, outcome))
    return replace(result, outcome=outcome, excluded=excluded)


def _stopped_by_interrupt(
    settings: SendSettings,
    journal: Journal,
    transfer_id: int,
    observer: Observer,
    audit: TransferAuditor | None,
) -> Interrupted:
    """Close an interrupted transfer in the journal and the audit; say how far it got."""
    journal.finish_transfer(transfer_id, outcome="interrupted", error="interrupted")
    audit_transfer(audit, journal, transfer_id, "interrupted", "interrupted")
    observer(TransferFinished(transfer_id, "interrupted"))
    so_far = result_from_journal(
        journal, transfer_id, settings.peer_name, 0.0, "interrupted", None, None
    )
    return interrupted(
        {
            "sent": so_far.sent,
            "failed": so_far.failed,
            "not_sent": so_far.pending,
            "skipped": so_far.skipped,
            "total": so_far.total,
        },
        peer=settings.peer_name,
        transfer_id=transfer_id,
    )
