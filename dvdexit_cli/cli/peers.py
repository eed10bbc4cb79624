"""``dvdexit peers``: the address book of peers (peers.toml)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from dvdexit_cli.cli.errors import handle_errors
from dvdexit_cli.cli.options import JsonOption
from dvdexit_cli.cli.render import err, out, print_json
from dvdexit_cli.config import (
    DEFAULT_CALLING_AE,
    DimsePeer,
    PeerBook,
    parse_host_port,
    resolve_paths,
)
from dvdexit_cli.errors import UsageError

__all__ = ["app"]

app = typer.Typer(help="Add, list and remove peers.", no_args_is_help=True)


def _book() -> PeerBook:
    return PeerBook(resolve_paths().peers_file)


@app.command("add")
@handle_errors
def add_command(
    name: Annotated[str, typer.Argument(help="A short name for the peer, used with --to.")],
    dimse: Annotated[
        str | None, typer.Option("--dimse", metavar="HOST:PORT", help="The peer's DICOM address.")
    ] = None,
    ae: Annotated[
        str | None, typer.Option("--ae", metavar="CALLED_AE", help="The peer's AE title.")
    ] = None,
    calling_ae: Annotated[
        str, typer.Option("--calling-ae", metavar="AE", help="Our AE title towards this peer.")
    ] = DEFAULT_CALLING_AE,
    replace: Annotated[
        bool, typer.Option("--replace", help="Overwrite a peer of that name.")
    ] = False,
) -> None:
    """Add a DICOM (DIMSE) peer."""
    if dimse is None or ae is None:
        raise UsageError("a DIMSE peer needs --dimse HOST:PORT and --ae CALLED_AE")
    host, port = parse_host_port(dimse)
    peer = DimsePeer(name=name, host=host, port=port, called_ae=ae, calling_ae=calling_ae)
    book = _book()
    book.add(peer, replace=replace)
    err.print(f"peer {name} added: {peer.called_ae}@{peer.address} (we call as {calling_ae})")


@app.command("list")
@handle_errors
def list_command(json_output: JsonOption = False) -> None:
    """List the peers."""
    book = _book()
    if json_output:
        print_json({"peers": [p.describe() for p in book]})
        return
    if not len(book):
        err.print(f"no peers yet ({book.path}); add one with 'dvdexit peers add'")
        return
    table = Table("name", "kind", "address", "called AE", "calling AE")
    for p in book:
        table.add_row(p.name, p.kind, p.address, p.called_ae, p.calling_ae)
    out.print(table)


@app.command("remove")
@handle_errors
def remove_command(name: Annotated[str, typer.Argument(help="The peer to remove.")]) -> None:
    """Remove a peer."""
    _book().remove(name)
    err.print(f"peer {name} removed")
