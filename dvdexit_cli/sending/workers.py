"""Worker processes for DIMSE sends with --workers > 1: one association each, whole studies.

Each worker has its own journal connection and transport, and runs the same rounds as a
single send (``rounds.send_rounds``); the parent relays their events to its observer.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import queue
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dvdexit_cli.events import Observer
from dvdexit_cli.journal import Journal
from dvdexit_cli.sending.rounds import RoundContext, RoundSettings, Work, send_rounds
from dvdexit_cli.sending.settings import TransportFactory

__all__ = ["partition", "send_parallel"]

log = logging.getLogger(__name__)


def partition(work: Work, workers: int) -> list[Work]:
    """Spread whole studies over at most ``workers`` shares of about equal bytes.

    Each study stays in one share, in its scan order (series by series), so a receiver
    sees every study arrive in order from one association.
    """
    studies: dict[str, Work] = {}
    for entry in work:
        studies.setdefault(entry[1].study_uid, []).append(entry)
    count = max(1, min(workers, len(studies)))
    shares: list[Work] = [[] for _ in range(count)]
    loads = [0] * count
    for study in sorted(studies.values(), key=lambda s: -sum(i.size for _, i in s)):
        lightest = loads.index(min(loads))
        shares[lightest].extend(study)
        loads[lightest] += sum(i.size for _, i in study)
    return [share for share in shares if share]


def _worker(
    journal_path: Path,
    factory: TransportFactory,
    rules: RoundSettings,
    share: Work,
    events: Any,
    parent: int,
) -> None:
    """One worker process: its own journal connection and association."""
    # Ctrl-C reaches the whole process group; the parent decides, the worker just stops.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    _die_with_parent(parent)
    with Journal(journal_path) as journal:
        transport = factory(events.put)
        try:
            error, hint = send_rounds(
                RoundContext(journal, rules, events.put, time.sleep), transport, share
            )
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


def send_parallel(
    journal_path: Path,
    rules: RoundSettings,
    factory: TransportFactory,
    shares: list[Work],
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
            args=(journal_path, factory, rules, share, events, os.getpid()),
            name=f"dvdexit-worker-{n}",
            daemon=True,
        )
        for n, share in enumerate(shares, 1)
    ]
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
