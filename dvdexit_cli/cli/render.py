"""Rendering: results to stdout, progress and diagnostics to stderr."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from dvdexit_cli.events import (
    AssociationOpened,
    Event,
    InstanceDone,
    ReplayStarted,
    RetryScheduled,
    ScanFinished,
    TransferStarted,
)
from dvdexit_cli.units import format_size

__all__ = ["SendProgress", "err", "human_bytes", "out", "print_json"]

# Piped output (cron mail, a log file) gets room for full 64-character UIDs in tables.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def print_json(document: Any) -> None:
    """Write exactly one JSON document to stdout."""
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


# Sizes shown in the units the options read (1.0 MiB, not 1.0 MB for a --batch-bytes 1M).
human_bytes = format_size


class SendProgress:
    """Observer that shows a progress bar on a terminal's stderr, and failures as they come."""

    def __init__(self, *, quiet: bool) -> None:
        self.quiet = quiet
        self._progress: Progress | None = None
        self._task: Any = None

    def __enter__(self) -> SendProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def __call__(self, event: Event) -> None:
        if self.quiet:
            return
        if isinstance(event, ScanFinished):
            err.print(
                f"found {event.instances} instance(s), {human_bytes(event.total_bytes)}"
                + (f"; {event.skipped} file(s) skipped" if event.skipped else "")
                + (f"; {event.failed} unreadable" if event.failed else "")
            )
        elif isinstance(event, TransferStarted):
            err.print(f"transfer {event.transfer_id} to {event.peer}")
            if err.is_terminal:
                self._progress = Progress(
                    TextColumn("sending"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    DownloadColumn(),
                    TransferSpeedColumn(),
                    TimeRemainingColumn(),
                    console=err,
                    transient=True,
                )
                self._task = self._progress.add_task("send", total=event.total_bytes)
                self._progress.start()
        elif isinstance(event, ReplayStarted):
            err.print(
                f"retry-failed: resending {event.instances} instance(s) of transfer(s) "
                f"{', '.join(map(str, event.transfers))} to {event.peer}"
            )
            if err.is_terminal and self._progress is None:
                self._progress = Progress(
                    TextColumn("resending"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    DownloadColumn(),
                    TransferSpeedColumn(),
                    TimeRemainingColumn(),
                    console=err,
                    transient=True,
                )
                self._task = self._progress.add_task("resend", total=event.total_bytes)
                self._progress.start()
        elif isinstance(event, AssociationOpened):
            if event.rejected_contexts:
                err.print(
                    f"association open: {event.accepted_contexts} presentation context(s) "
                    f"accepted, {event.rejected_contexts} rejected"
                )
        elif isinstance(event, InstanceDone):
            if self._progress is not None and event.state == "sent":
                self._progress.advance(self._task, event.size)
            if event.state == "failed":
                err.print(f"[red]failed[/red] {event.path}: {event.reason}", markup=True)
        elif isinstance(event, RetryScheduled):
            err.print(
                f"retrying {event.instances} instance(s) in {event.delay:g} s "
                f"(attempt {event.attempt})"
            )
