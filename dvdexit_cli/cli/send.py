"""``dvdexit send``: send studies from files, folders and DICOMDIR media to a peer."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from dvdexit_cli.cli.errors import handle_errors
from dvdexit_cli.cli.options import JsonOption
from dvdexit_cli.cli.render import SendProgress, err, human_bytes, out, print_json
from dvdexit_cli.config import PeerBook, resolve_paths
from dvdexit_cli.engine import FileProblem, SendResult, SendSettings, send
from dvdexit_cli.journal import Journal
from dvdexit_cli.transport.dimse import DimseTransport

__all__ = ["send_command"]

_LISTED = 20


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Let SIGTERM stop a send the way Ctrl-C does: journal consistent, exit 130."""

    def _raise(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@handle_errors
def send_command(
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="DICOM files, folders, or DVD media with a DICOMDIR.", show_default=False
        ),
    ],
    to: Annotated[
        str, typer.Option("--to", help="The peer to send to (see 'dvdexit peers list').")
    ],
    retries: Annotated[
        int, typer.Option("--retries", min=0, max=20, help="Retries of retryable failures.")
    ] = 2,
    note: Annotated[
        str | None, typer.Option("--note", help="A note kept with the transfer.")
    ] = None,
    reason: Annotated[
        str | None, typer.Option("--reason", help="The reason for the transfer (referral).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Send studies to a peer; every instance is journaled and its outcome recorded."""
    home = resolve_paths()
    peer = PeerBook(home.peers_file).get(to)
    settings = SendSettings(
        inputs=tuple(paths),
        peer_name=peer.name,
        peer_address=peer.address,
        retries=retries,
        note=note,
        reason=reason,
    )
    with (
        Journal(home.journal_file) as journal,
        SendProgress(quiet=quiet or json_output) as progress,
        _sigterm_interrupts(),
    ):
        transport = DimseTransport(peer, observer=progress)
        result = send(settings, journal=journal, transport=transport, observer=progress)
    if json_output:
        print_json(result.to_json())
    else:
        _render(result)
    raise typer.Exit(int(result.exit_code))


def _list(title: str, problems: tuple[FileProblem, ...], style: str) -> None:
    if not problems:
        return
    out.print(f"[{style}]{title} ({len(problems)}):[/{style}]")
    for p in problems[:_LISTED]:
        status = f" [{p.status:04X}]" if p.status else ""
        out.print(f"  {p.path}{status}: {p.reason}", markup=False)
    if len(problems) > _LISTED:
        out.print(f"  ... and {len(problems) - _LISTED} more (--json lists them all)")


def _render(result: SendResult) -> None:
    rate = result.bytes_sent / result.seconds if result.seconds > 0 else 0.0
    out.print(
        f"transfer {result.transfer_id} to {result.peer}: {result.sent} sent, "
        f"{result.failed} failed, {result.skipped} skipped"
        + (f", {result.pending} not sent" if result.pending else "")
        + f" ({result.studies} stud{'y' if result.studies == 1 else 'ies'}, "
        f"{human_bytes(result.bytes_sent)} in {result.seconds:.1f} s, {human_bytes(rate)}/s)",
        markup=False,
    )
    _list("failed", result.failures, "red")
    _list("sent with a warning", result.warnings, "yellow")
    _list("skipped", result.skipped_files, "dim")
    if result.error:
        err.print(
            f"dvdexit: error: {result.error}"
            + (f" ({result.error_hint})" if result.error_hint else ""),
            markup=False,
        )
    elif result.failed:
        err.print(
            f"dvdexit: {result.failed} instance(s) failed; they are in the journal "
            f"(dvdexit status)",
            markup=False,
        )
