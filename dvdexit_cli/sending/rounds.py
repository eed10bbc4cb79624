"""Rounds of sending: claim, store, journal the answer, back off, try the retryable again.

One loop (``send_rounds``) serves every kind of transport; only one round's step differs:

* sequential: groups one after the other, one request each. A plain Transport (C-STORE,
  folder, memory) gets groups of one instance; a BatchTransport (STOW-RS) gets batches
  of at most ``batch_size`` instances and ``batch_bytes`` bytes;
* concurrent: the same batches with up to ``concurrency`` requests in flight
  (a BatchTransport with concurrency > 1).

Each group is claimed in the journal (``sending``) before its request, so a kill -9
mid-request leaves every instance of it to the replay, and each instance's answer is
journaled right after. The delay before the next round doubles each time; a peer's
Retry-After (429/503) is a floor for it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from dvdexit_cli.dicom.scan import Instance
from dvdexit_cli.errors import PeerError
from dvdexit_cli.events import InstanceDone, Observer, RetryScheduled, ignore
from dvdexit_cli.journal import Journal
from dvdexit_cli.sending.settings import (
    DEFAULT_BATCH_BYTES,
    DEFAULT_BATCH_SIZE,
    MAX_RETRY_AFTER,
    RetrySettings,
    SendSettings,
)
from dvdexit_cli.transport.base import BatchResult, BatchTransport, StoreOutcome, Transport

__all__ = [
    "RoundContext",
    "RoundSettings",
    "Work",
    "batches",
    "cut_short",
    "send_rounds",
]

log = logging.getLogger(__name__)

Work = list[tuple[int, Instance]]
"""Journal item ids with the instances they stand for, in sending order."""

_Store = Callable[[Sequence[Instance]], BatchResult]


@dataclass(frozen=True)
class RoundSettings:
    """How hard to try and how to group requests: what a worker process is handed.

    With ``claim``, an item whose claim was lost (our lease ran out and another run took
    it) is left alone: that run sends it.
    """

    retries: int = 2
    retry_delay: float = 2.0
    claim: str | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    batch_bytes: int = DEFAULT_BATCH_BYTES
    concurrency: int = 1
    """Requests in flight at once, for a BatchTransport (a plain Transport sends one)."""

    @classmethod
    def of(
        cls, settings: SendSettings | RetrySettings, *, claim: str, concurrency: int = 1
    ) -> RoundSettings:
        """The rounds a send's or a replay's settings ask for, under ``claim``."""
        return cls(
            retries=settings.retries,
            retry_delay=settings.retry_delay,
            claim=claim,
            batch_size=settings.batch_size,
            batch_bytes=settings.batch_bytes,
            concurrency=concurrency,
        )


@dataclass(frozen=True)
class RoundContext:
    """Everything the rounds of one transport need besides the transport and the work."""

    journal: Journal
    settings: RoundSettings = field(default_factory=RoundSettings)
    observer: Observer = ignore
    sleep: Callable[[float], None] = time.sleep


@dataclass(frozen=True)
class _Round:
    """What one round left: the items to try again, the peer's Retry-After, and the
    PeerError that stopped it (the peer could not be reached)."""

    retry: Work
    retry_after: float | None = None
    stopped: PeerError | None = None


def send_rounds(
    ctx: RoundContext, transport: Transport, pending: Work
) -> tuple[str | None, str | None]:
    """Send, retrying retryable failures; return the peer error that stopped us, if any.

    Returns (message, hint) of the PeerError that ended the last round allowed, or
    (None, None). Anything else raised leaves the items in flight ``pending``, with why.
    """
    try:
        transport.open([inst for _, inst in pending])
    except PeerError as exc:
        _not_sent(ctx.journal, pending, str(exc))
        return exc.message, exc.hint
    rules = ctx.settings
    attempt = 1
    while True:
        done = _one_round(ctx, transport, pending, attempt)
        if done.stopped is not None and attempt > rules.retries:
            return done.stopped.message, done.stopped.hint
        if not done.retry or attempt > rules.retries:
            return None, None
        delay = rules.retry_delay * 2 ** (attempt - 1)
        if done.retry_after is not None:
            delay = max(delay, min(done.retry_after, MAX_RETRY_AFTER))
        ctx.observer(RetryScheduled(len(done.retry), attempt + 1, delay))
        ctx.sleep(delay)
        attempt += 1
        pending = done.retry


def _one_round(ctx: RoundContext, transport: Transport, pending: Work, attempt: int) -> _Round:
    """Pick the step for this transport: one instance at a time, batches, or concurrent
    batches."""
    if not isinstance(transport, BatchTransport):
        return _sequential_round(
            ctx, [[entry] for entry in pending], _store_one(transport), attempt
        )
    rules = ctx.settings
    groups = list(batches(pending, max(1, rules.batch_size), max(1, rules.batch_bytes)))
    if rules.concurrency > 1:
        return _concurrent_round(ctx, transport, groups, attempt)
    return _sequential_round(ctx, groups, transport.store_batch, attempt)


def batches(pending: Sequence[tuple[int, Instance]], size: int, max_bytes: int) -> Iterator[Work]:
    """Consecutive batches of at most ``size`` instances and ``max_bytes`` bytes.

    An instance larger than ``max_bytes`` goes alone: it cannot be split.
    """
    batch: Work = []
    total = 0
    for entry in pending:
        if batch and (len(batch) >= size or total + entry[1].size > max_bytes):
            yield batch
            batch, total = [], 0
        batch.append(entry)
        total += entry[1].size
    if batch:
        yield batch


def _store_one(transport: Transport) -> _Store:
    """A plain transport's store, answering like a batch of one."""

    def store(instances: Sequence[Instance]) -> BatchResult:
        (inst,) = instances
        return BatchResult({inst.sop_instance_uid: transport.store(inst)})

    return store


def _sequential_round(ctx: RoundContext, groups: list[Work], store: _Store, attempt: int) -> _Round:
    """One request per group, in order. Once the peer cannot be reached, the group and
    every later one are not sent (pending, retryable)."""
    retry: Work = []
    retry_after: float | None = None
    for position, group in enumerate(groups):
        claimed = _claim(ctx, group)
        if not claimed:
            continue
        try:
            result = store([inst for _, inst in claimed])
        except PeerError as exc:
            rest = claimed + [entry for later in groups[position + 1 :] for entry in later]
            _not_sent(ctx.journal, rest, exc.message)
            return _Round(retry + rest, retry_after, exc)
        except BaseException as exc:
            _leave_pending(ctx.journal, claimed, exc)
            raise
        if result.retry_after is not None:
            retry_after = max(retry_after or 0.0, result.retry_after)
        retry.extend(_record_batch(ctx, claimed, result, attempt))
    return _Round(retry, retry_after)


def _concurrent_round(
    ctx: RoundContext, transport: BatchTransport, groups: list[Work], attempt: int
) -> _Round:
    """One round of batches with up to ``concurrency`` requests in flight.

    Only this thread touches the journal (one SQLite connection); request threads only
    talk to the peer. Once the peer is unreachable no new batch starts, the ones in flight
    are still recorded, and the rest stay failed and retryable. Request threads are
    daemons: an interrupted send does not wait for them (their batches are left pending).
    """
    results: queue.Queue[tuple[int, BatchResult | BaseException]] = queue.Queue()
    waiting = list(reversed(groups))
    in_flight: dict[int, Work] = {}
    retry: Work = []
    retry_after: float | None = None
    stopped: PeerError | None = None
    tickets = 0
    try:
        while waiting or in_flight:
            while waiting and stopped is None and len(in_flight) < ctx.settings.concurrency:
                claimed = _claim(ctx, waiting.pop())
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
                _not_sent(ctx.journal, rest, answer.message)
                retry.extend(rest)
                continue
            if answer.retry_after is not None:
                retry_after = max(retry_after or 0.0, answer.retry_after)
            retry.extend(_record_batch(ctx, claimed, answer, attempt))
    except BaseException as exc:
        for claimed in in_flight.values():
            _leave_pending(ctx.journal, claimed, exc)
        raise
    return _Round(retry, retry_after, stopped)


def _store_batch_into(
    transport: BatchTransport, ticket: int, instances: list[Instance], results: Any
) -> None:
    """A request thread: the batch's result (or what it raised) goes to ``results``."""
    try:
        results.put((ticket, transport.store_batch(instances)))
    except BaseException as exc:  # handed to the journaling thread, which decides
        results.put((ticket, exc))


def _claim(ctx: RoundContext, group: Sequence[tuple[int, Instance]]) -> Work:
    """Mark the group's items ``sending`` under our claim; leave those another run holds."""
    claimed = []
    for item_id, inst in group:
        if ctx.journal.mark_sending(item_id, claim=ctx.settings.claim):
            claimed.append((item_id, inst))
        else:
            log.warning("item %d was claimed by another run; not sending it", item_id)
    return claimed


def _record_batch(
    ctx: RoundContext, claimed: Sequence[tuple[int, Instance]], result: BatchResult, attempt: int
) -> Work:
    """Journal a request's answer item by item; return the items to try again.

    An instance the answer does not mention is unknown: failed, and retried.
    """
    again: Work = []
    for item_id, inst in claimed:
        outcome = result.outcomes.get(inst.sop_instance_uid) or StoreOutcome(
            "failed", None, "the peer gave no answer for this instance", retryable=True
        )
        ctx.journal.record_outcome(
            item_id,
            state=outcome.state,
            status=outcome.status,
            reason=outcome.reason,
            retryable=outcome.retryable,
        )
        ctx.observer(
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
        if outcome.state == "failed" and outcome.retryable:
            again.append((item_id, inst))
    return again


def cut_short(exc: BaseException) -> str:
    """Why an item was left unanswered when sending stopped by an exception."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted while sending"
    return (
        f"internal error while sending ({type(exc).__name__}); whether the peer kept it is unknown"
    )


def _leave_pending(
    journal: Journal, claimed: Sequence[tuple[int, Instance]], exc: BaseException
) -> None:
    """Items in flight when an exception stopped us: unanswered, pending, with why."""
    for item_id, _ in claimed:
        journal.record_outcome(item_id, state="pending", status=None, reason=cut_short(exc))


def _not_sent(journal: Journal, items: Sequence[tuple[int, Instance]], reason: str) -> None:
    """The peer could not be reached (again): these items did not reach it. They are not
    failed (the peer said nothing about them) but not sent: ``pending`` with the reason,
    for ``send --retry-failed``."""
    for item_id, _ in items:
        journal.record_outcome(item_id, state="pending", status=None, reason=reason)
