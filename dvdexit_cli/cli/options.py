"""Option types shared by several commands, and the parsers of sizes, durations and rates.

Every option that takes a size, a duration or a rate parses it here, through
:mod:`dvdexit_cli.units`, while the command line is read: a bad value is a usage error
(exit 2) naming the option, before any work starts (``tests/cli/test_units_drift.py`` finds
options that bypass these).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

import typer

from dvdexit_cli import units
from dvdexit_cli.errors import UnitError

__all__ = [
    "DURATION",
    "RATE",
    "SIZE",
    "JsonOption",
    "StageTimeoutOption",
    "duration",
    "positive_duration",
    "positive_size",
    "rate",
    "size",
]

SIZE = "SIZE"
DURATION = "DURATION"
RATE = "RATE"

JsonOption = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print one JSON document with the result on stdout, and nothing else there.",
    ),
]


T = TypeVar("T")


def _option_parser(parse: Callable[[object], T]) -> Callable[[object], T]:
    def parser(value: object) -> T:
        try:
            return parse(value)
        except UnitError as exc:
            # The message stands alone (click's own wording); the command class
            # (cli.errors.JsonErrorsCommand) reports the UnitError it was raised from.
            raise typer.BadParameter(f"{exc.message} ({exc.hint})") from exc

    return parser


size = _option_parser(units.parse_size)
"""A size option (0 allowed): ``typer.Option(..., parser=size, metavar=SIZE)``."""
positive_size = _option_parser(lambda v: units.parse_size(v, positive=True))
duration = _option_parser(units.parse_duration)
"""A duration option in seconds (0 allowed)."""
positive_duration = _option_parser(lambda v: units.parse_duration(v, positive=True))
rate = _option_parser(units.parse_rate)

StageTimeoutOption = Annotated[
    float,
    typer.Option(
        "--timeout",
        parser=positive_duration,
        metavar=DURATION,
        help="Time allowed per stage of the diagnosis.",
    ),
]
"""``status --peer`` and ``peers test``: the same diagnosis, the same limit."""
