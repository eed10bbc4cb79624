"""The replay (``send --retry-failed``): resend what earlier sends left open.

Items are claimed in the journal first, so two replays (or a replay and a send) never
send the same item; then grouped by peer and by the sender's note of their transfers,
and each group goes through the same rounds as a send.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from dvdexit_cli.audit import TransferAuditor
from dvdexit_cli.errors import ConfigError, Interrupted
from dvdexit_cli.events import Observer, ReplayStarted, ignore
from dvdexit_cli.journal import ItemRecord, Journal
from dvdexit_cli.journal.store import new_claim
from dvdexit_cli.sending.inputs import reload, remove_unpacked
from dvdexit_cli.sending.lease import Lease
from dvdexit_cli.sending.results import RetryResult, audit_transfer, interrupted, problem
from dvdexit_cli.sending.rounds import RoundContext, RoundSettings, Work, send_rounds
from dvdexit_cli.sending.settings import RetrySettings
from dvdexit_cli.transport.base import BatchTransport, Transport
from dvdexit_cli.transport.folder import FolderTransport

__all__ = ["retry_failed"]

_TransferNote = tuple[str | None, str | None, str | None]
"""The sender's note, reason and recipient of a transfer."""

_Claimed = Sequence[tuple[str, ItemRecord]]
"""The items a replay claimed, each with the name of its peer."""


@dataclass
class _Errors:
    """What stopped the replay at each peer (a peer unknown, or unreachable)."""

    messages: list[str] = field(default_factory=list)
    by_peer: dict[str, str] = field(default_factory=dict)
    unreachable: int = 0

    def add(self, peer_name: str, message: str) -> None:
        self.messages.append(f"{peer_name}: {message}")
        self.by_peer[peer_name] = message


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
    by_peer = _by_peer_and_note(journal, claimed)
    ctx = RoundContext(journal, RoundSettings.of(settings, claim=claim), observer, sleep)
    errors = _Errors()
    try:
        with Lease(journal, claim, settings.lease_seconds):
            for (peer_name, note), items in by_peer.items():
                _replay_to(ctx, peer_name, note, items, transport_for, workers_for, errors)
    except KeyboardInterrupt as exc:
        # The claims are released (the lease's exit); what was not sent stays open.
        raise _replay_interrupted(journal, claimed, settings.peer_name) from exc
    _close_transfers(journal, claimed, errors, settings, audit)
    return _replay_result(journal, claimed, by_peer, errors, settings, time.monotonic() - started)


def _by_peer_and_note(
    journal: Journal, claimed: _Claimed
) -> dict[tuple[str, _TransferNote], list[ItemRecord]]:
    """Group by peer and by the sender's note of the items' transfers, so a package
    written for a folder peer carries the note, reason and recipient of its own send."""
    notes = {tid: _transfer_note(journal, tid) for tid in {i.transfer_id for _, i in claimed}}
    by_peer: dict[tuple[str, _TransferNote], list[ItemRecord]] = {}
    for peer_name, item in claimed:
        by_peer.setdefault((peer_name, notes[item.transfer_id]), []).append(item)
    return by_peer


def _transfer_note(journal: Journal, transfer_id: int) -> _TransferNote:
    row = journal.transfer_row(transfer_id)
    if row is None:
        return (None, None, None)
    return (row["note"], row["reason"], row["recipient"])


def _replay_to(
    ctx: RoundContext,
    peer_name: str,
    note: _TransferNote,
    items: list[ItemRecord],
    transport_for: Callable[[str], Transport],
    workers_for: Callable[[str], int] | None,
    errors: _Errors,
) -> None:
    """Resend one peer's items (of one sender's note) over one transport."""
    journal = ctx.journal
    ready, twins = _ready_to_resend(journal, peer_name, items)
    if not ready:
        return
    try:
        transport = transport_for(peer_name)
    except ConfigError as exc:
        # The items stay open, for when the peer is back; they show this reason (not the
        # one of an earlier attempt) until then.
        errors.add(peer_name, exc.message)
        journal.note_reason(
            [item_id for item_id, _ in ready]
            + [other for others in twins.values() for other in others],
            f"not resent: {exc.message}",
        )
        return
    if isinstance(transport, FolderTransport):
        transport.set_sender_note(*note)
    ctx.observer(
        ReplayStarted(
            peer_name,
            tuple(sorted({i.transfer_id for i in items})),
            len(ready),
            sum(inst.size for _, inst in ready),
        )
    )
    try:
        concurrency = (
            max(1, workers_for(peer_name))
            if workers_for is not None and isinstance(transport, BatchTransport)
            else 1
        )
        rules = replace(ctx.settings, concurrency=concurrency)
        error, _hint = send_rounds(replace(ctx, settings=rules), transport, ready)
    finally:
        transport.close()
    _copy_outcomes(journal, twins)
    if error is not None:
        errors.add(peer_name, error)
        errors.unreachable += 1


def _ready_to_resend(
    journal: Journal, peer_name: str, items: list[ItemRecord]
) -> tuple[Work, dict[int, list[int]]]:
    """The items to send, each instance once; and, per item sent, the items of the same
    instance that take its outcome (twins). Items the peer already confirmed elsewhere,
    or whose file cannot be resent as journaled, are settled here."""
    ready: Work = []
    twins: dict[int, list[int]] = {}  # item sent -> items of the same instance
    first: dict[tuple[str, str], int] = {}
    confirmed = journal.confirmed_by_peer(
        peer_name, (i.sop_instance_uid for i in items if i.sop_instance_uid)
    )
    for item in items:
        key = (item.sop_instance_uid or "", item.digest or "")
        if item.digest in confirmed.get(key[0], ()):
            # The same instance (same digest) reached this peer in another transfer:
            # sending it again would only make a duplicate.
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
        loaded = reload(item)
        if isinstance(loaded, str):
            journal.record_outcome(item.id, state="failed", status=None, reason=loaded)
        else:
            first[key] = item.id
            twins[item.id] = []
            ready.append((item.id, loaded))
    return ready, twins


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


def _replay_interrupted(journal: Journal, claimed: _Claimed, peer: str | None) -> Interrupted:
    """Bring the touched transfers' outcomes up to date; say how far the replay got."""
    touched = tuple(sorted({item.transfer_id for _, item in claimed}))
    for transfer_id in touched:
        journal.refresh_outcome(transfer_id)
    now = journal.items_by_id(item.id for _, item in claimed)
    return interrupted(
        {
            "sent": sum(i.state in ("sent", "committed") for i in now),
            "failed": sum(i.state == "failed" for i in now),
            "not_sent": sum(i.state in ("pending", "sending") for i in now),
            "skipped": 0,
            "total": len(now),
        },
        peer=peer,
        transfers=touched,
    )


def _close_transfers(
    journal: Journal,
    claimed: _Claimed,
    errors: _Errors,
    settings: RetrySettings,
    audit: TransferAuditor | None,
) -> None:
    """Refresh each touched transfer's outcome, audit the studies replayed, and remove
    the unpacked copies of a transfer now complete."""
    peer_of = {item.transfer_id: peer_name for peer_name, item in claimed}
    for transfer_id in sorted(peer_of):
        # What stopped this replay replaces what stopped an earlier attempt.
        refreshed = journal.refresh_outcome(
            transfer_id, error=errors.by_peer.get(peer_of[transfer_id])
        )
        # Only the studies this replay worked on: the others were not transferred again.
        replayed = {i.study_uid for _, i in claimed if i.transfer_id == transfer_id and i.study_uid}
        audit_transfer(audit, journal, transfer_id, refreshed, None, replayed)
        if refreshed == "complete" and settings.unpack_dir:
            remove_unpacked(journal, journal.items(transfer_id), settings.unpack_dir)


def _replay_result(
    journal: Journal,
    claimed: _Claimed,
    by_peer: dict[tuple[str, _TransferNote], list[ItemRecord]],
    errors: _Errors,
    settings: RetrySettings,
    seconds: float,
) -> RetryResult:
    """The replay's result, from what the journal now says of the items it claimed."""
    final = journal.items_by_id(item.id for _, item in claimed)
    by_state: dict[str, list[ItemRecord]] = {}
    for item in final:
        by_state.setdefault(item.state, []).append(item)
    sent = by_state.get("sent", []) + by_state.get("committed", [])
    backlog = journal.replay_backlog(peer=settings.peer_name, max_attempts=settings.max_attempts)
    if not claimed:
        outcome = "nothing to do"
    elif errors.unreachable and errors.unreachable == len(by_peer) and not sent:
        outcome = "unreachable"
    elif len(sent) == len(final):
        outcome = "complete"
    else:
        outcome = "partial"
    return RetryResult(
        peers=tuple(sorted({peer for peer, _ in by_peer})),
        transfers=tuple(sorted({item.transfer_id for _, item in claimed})),
        claimed=len(claimed),
        sent=len(sent),
        failed=len(by_state.get("failed", [])),
        pending=len(by_state.get("pending", [])) + len(by_state.get("sending", [])),
        given_up=backlog["given_up"],
        not_retryable=backlog["not_retryable"],
        failures=tuple(problem(i) for i in by_state.get("failed", [])),
        warnings=tuple(problem(i) for i in sent if i.reason),
        bytes_sent=sum(i.size or 0 for i in sent),
        seconds=seconds,
        outcome=outcome,
        errors=tuple(errors.messages),
    )
