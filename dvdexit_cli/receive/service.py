"""The completion stack of a receiver, built once for listening and for ``--watch``.

A complete study goes to the completeness tracker's study sinks: the on-complete hook
(receive/hooks.py) and, when forwarding, a forwarder (relay/forward.py, built above this
layer and passed in). Starting the stack starts each sink for this receiver, which
resumes what a stopped one left owed (hook runs cut off, forwards pending); stopping it
lets queued work finish up to a deadline (the rest stays journaled).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from dvdexit_cli.audit import ReceiveAuditor
from dvdexit_cli.events import Observer, ignore
from dvdexit_cli.journal import Journal
from dvdexit_cli.receive.completeness import CompletenessTracker, StudySink
from dvdexit_cli.receive.hooks import HookRunner

__all__ = ["CompletionStack", "completion_stack"]


@dataclass
class CompletionStack:
    """The tracker and its sinks, started and stopped together."""

    tracker: CompletenessTracker
    hooks: HookRunner | None

    def start(self, receiver: str, *, idle: bool) -> None:
        """Start every sink for ``receiver``; with ``idle``, complete studies gone idle."""
        self.tracker.receiver = receiver
        for sink in self.tracker.sinks:
            sink.start(receiver=receiver)
        if idle:
            self.tracker.start()

    def stop(self, timeout: float) -> None:
        """Stop completing; let the sinks finish their queues within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        self.tracker.stop()
        for sink in self.tracker.sinks:
            sink.stop(max(1.0, deadline - time.monotonic()))


def completion_stack(
    journal: Journal,
    *,
    on_complete: str | None,
    forwarder: StudySink | None,
    idle_timeout: float,
    audit: ReceiveAuditor | None,
    observer: Observer = ignore,
) -> CompletionStack:
    """Hook runner (with ``on_complete``), then the forwarder, behind one tracker."""
    hooks = HookRunner(on_complete, journal=journal, observer=observer) if on_complete else None
    sinks: Sequence[StudySink] = [s for s in (hooks, forwarder) if s is not None]
    tracker = CompletenessTracker(
        journal=journal,
        idle_timeout=idle_timeout,
        sinks=sinks,
        observer=observer,
        audit=audit,
    )
    return CompletionStack(tracker, hooks)
