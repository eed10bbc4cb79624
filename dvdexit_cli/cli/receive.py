"""``dvdexit receive``: a Storage SCP that stores durably and journals every instance."""

from __future__ import annotations

import signal
import threading
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from dvdexit_cli.cli.errors import handle_errors
from dvdexit_cli.cli.render import err
from dvdexit_cli.config import resolve_paths, validate_ae_title
from dvdexit_cli.events import Event, InstanceReceived
from dvdexit_cli.journal import Journal
from dvdexit_cli.receive import ReceiveSettings, StorageServer

__all__ = ["receive_command"]


class _ReceiveLog:
    """Observer: counts outcomes, and reports every instance not stored on stderr."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.studies: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        if not isinstance(event, InstanceReceived):
            return
        with self._lock:
            self.counts[event.outcome] += 1
            if event.study_uid and event.outcome == "stored":
                self.studies.add(event.study_uid)
        if event.outcome in ("conflict", "refused"):
            err.print(
                f"{event.outcome}: instance {event.sop_instance_uid or '(invalid UID)'} from "
                f"{event.calling_ae} answered {event.status:04X}: {event.reason}",
                markup=False,
            )


@handle_errors
def receive_command(
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port to listen on.")],
    ae: Annotated[str, typer.Option("--ae", help="Our AE title; callers must use it.")] = "DVDEXIT",
    store: Annotated[
        Path | None,
        typer.Option("--store", help="Folder for received instances [default: DATA/received]."),
    ] = None,
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on (0.0.0.0: every interface).")
    ] = "0.0.0.0",
) -> None:
    """Receive studies over DICOM (C-STORE) until stopped with Ctrl-C or SIGTERM."""
    home = resolve_paths()
    settings = ReceiveSettings(
        host=host,
        port=port,
        ae_title=validate_ae_title(ae),
        store=(store or home.default_store).resolve(),
    )
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    log = _ReceiveLog()
    with Journal(home.journal_file) as journal:
        server = StorageServer(settings, journal=journal, observer=log)
        server.start()
        previous = {s: signal.signal(s, _stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            err.print(
                f"dvdexit receive: listening on {host}:{server.port} as {settings.ae_title}, "
                f"storing in {settings.store} (stop with Ctrl-C or SIGTERM)",
                markup=False,
            )
            while not stop.wait(0.5):
                pass
            err.print("dvdexit receive: stopping; finishing associations in progress")
            aborted = server.stop()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            server.stop()
    c = log.counts
    err.print(
        f"dvdexit receive: stopped; {c['stored']} instance(s) stored in {len(log.studies)} "
        f"stud{'y' if len(log.studies) == 1 else 'ies'}, {c['duplicate']} duplicate, "
        f"{c['conflict']} conflict, {c['refused']} refused"
        + (f"; {aborted} association(s) aborted at shutdown" if aborted else ""),
        markup=False,
    )
