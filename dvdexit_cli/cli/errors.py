"""How errors reach the user: one table of messages with a next step, and exit codes.

The table is ordered subclass-first; the first matching row wins. A DvdexitError carries
its own message and, usually, a hint; the table adds the generic next step where the
error has none.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import typer
from typer.core import TyperCommand

from dvdexit_cli import errors
from dvdexit_cli.cli.render import err, print_json
from dvdexit_cli.exitcodes import ExitCode

__all__ = ["JsonErrorsCommand", "handle_errors", "report"]

ERROR_TABLE: tuple[tuple[type[BaseException], str], ...] = (
    (errors.UnknownPeerError, "list the peers with 'dvdexit peers list'"),
    (errors.ConfigError, "check the configuration ('dvdexit peers list')"),
    (errors.NoDicomFoundError, "point dvdexit at DICOM files, a folder or a DICOMDIR medium"),
    (errors.InputError, "check the paths given"),
    (errors.AssociationRejectedError, "compare our AE titles with the peer's configuration"),
    (errors.PeerUnreachableError, "check that the peer is running and reachable"),
    (errors.PeerError, "retry later; the journal keeps what was not sent"),
    (errors.VerificationError, "see the list of instances above"),
    (errors.JournalBusyError, "another dvdexit process is using the journal; retry later"),
    (errors.JournalDamagedError, "move the damaged journal aside and restore a backup"),
    (errors.JournalError, "check the disk; move a damaged journal aside"),
    (errors.UsageError, "see --help"),
)

P = ParamSpec("P")
R = TypeVar("R")


def _hint_for(exc: BaseException) -> str:
    if isinstance(exc, errors.DvdexitError) and exc.hint:
        return exc.hint
    for cls, hint in ERROR_TABLE:
        if isinstance(exc, cls):
            return hint
    return ""


def report(exc: BaseException, *, as_json: bool) -> ExitCode:
    """Tell the user about ``exc`` (stderr, plus a JSON document when asked); return the code."""
    if isinstance(exc, errors.DvdexitError):
        code = exc.exit_code
        message = exc.message
        kind = type(exc).__name__
    else:
        code = ExitCode.INTERNAL
        message = f"internal error: {type(exc).__name__}: {exc}"
        kind = "InternalError"
    hint = (
        _hint_for(exc)
        if code != ExitCode.INTERNAL
        else (
            "this is a bug in dvdexit: please report it on the dvdexit issue tracker with the "
            "command and the output of the same command run with -v"
        )
    )
    line = f"dvdexit: error: {message}"
    if hint:
        line += f" ({hint})"
    err.print(line, markup=False)
    if as_json:
        print_json(
            {"error": {"type": kind, "message": message, "hint": hint}, "exit_code": int(code)}
        )
    return code


def handle_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn exceptions raised by a command body into a message and a documented exit code."""
    signature = inspect.signature(func)

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        as_json = bool(signature.bind_partial(*args, **kwargs).arguments.get("json_output"))
        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except errors.Interrupted as stop:
            # A send or replay that knows how far it got: the counts and the way to resume.
            err.print(f"dvdexit: {stop.message}; {stop.hint}", markup=False)
            if as_json:
                print_json(stop.to_json())
            raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
        except KeyboardInterrupt:
            err.print("dvdexit: interrupted; the journal is consistent and the work can resume")
            if as_json:
                print_json({"error": {"type": "Interrupted"}, "exit_code": 130})
            raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
        except Exception as exc:
            log = logging.getLogger("dvdexit_cli")
            if not isinstance(exc, errors.DvdexitError) and log.isEnabledFor(logging.INFO):
                log.exception("internal error")
            raise typer.Exit(int(report(exc, as_json=as_json))) from None

    return wrapper


class JsonErrorsCommand(TyperCommand):
    """A command whose unreadable option values are reported like every other error.

    Typer refuses a value (``--older-than soon``, ``--batch-bytes lots``) while reading the
    command line, before the body and :func:`handle_errors` run. This reports it the same
    way: ``dvdexit: error: --older-than: 'soon' is not a duration (hint)``, exit 2, and
    under ``--json`` the error document that docs/json-output.md promises.
    """

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        as_json = "--json" in args  # before parsing: click consumes ``args``
        try:
            return super().parse_args(ctx, args)
        except typer.BadParameter as exc:
            cause = exc.__cause__
            if isinstance(cause, errors.UnitError) and exc.param is not None:
                option = exc.param.opts[0] if exc.param.opts else exc.param.name
                error: errors.UsageError = errors.UnitError(
                    f"{option}: {cause.message}", hint=cause.hint
                )
            else:
                error = errors.UsageError(exc.format_message())
            raise typer.Exit(int(report(error, as_json=as_json))) from None
