"""The ``dvdexit`` Typer application: global options and the subcommands."""

from __future__ import annotations

import logging
from typing import Annotated

import pydicom.config
import typer

from dvdexit_cli import __version__
from dvdexit_cli.cli import peers, receive, send, status, verify
from dvdexit_cli.cli.errors import JsonErrorsCommand

__all__ = ["app", "main"]

app = typer.Typer(
    name="dvdexit",
    help="Send, receive, verify and track radiology studies between hospitals.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)
app.command("send", cls=JsonErrorsCommand)(send.send_command)
app.command("receive", cls=JsonErrorsCommand)(receive.receive_command)
app.command("verify", cls=JsonErrorsCommand)(verify.verify_command)
app.command("status", cls=JsonErrorsCommand)(status.status_command)
app.add_typer(peers.app, name="peers")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dvdexit {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    verbose: Annotated[
        int,
        typer.Option(
            "--verbose",
            "-v",
            count=True,
            help="More detail on stderr: -v for protocol events, -vv for debugging "
            "(may show identifiers of received data).",
        ),
    ] = 0,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """dvdexit: the DVD that travels with a patient, replaced."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="dvdexit: %(levelname)s %(name)s: %(message)s")
    # pynetdicom reports failures that we translate and report ourselves; its own lines
    # are protocol detail, shown with -v.
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL if verbose == 0 else level)
    # dvdexit validates every UID it uses itself. pydicom's own warnings about invalid
    # values would let a hostile peer or file flood the log (and may quote identifiers).
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE


def main() -> None:
    """Console-script entry point."""
    app()
