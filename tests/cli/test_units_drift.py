"""Every option that takes a size, a duration or a rate reads it with one grammar.

The options are found by walking the whole command tree (a new ``--something-timeout`` is
tested without being listed here), and each is parsed the way the command line parses it
(click's ``make_context``: the options are read and converted, the command does not run).
Before issue 12, ``send --older-than 1w`` was refused while ``status --since 1w`` worked,
and ``send --batch-bytes 1.5G`` was refused while ``receive --max-instance-size 1.5G``
worked.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import typer

from dvdexit_cli import units
from dvdexit_cli.cli.app import app

_KINDS = {
    "duration": re.compile(r"timeout|interval|settle|since|older-than|wait|delay"),
    "size": re.compile(r"bytes|(?<!batch-)size|free|max-pdu"),
    "rate": re.compile(r"rate"),
}

_ACCEPTED: dict[str, list[tuple[str, float]]] = {
    "duration": [
        ("90", 90),
        ("90s", 90),
        ("15m", 900),
        ("1.5h", 5400),
        ("7d", 7 * 86400),
        ("1w", 7 * 86400),
        ("2W", 14 * 86400),
    ],
    "size": [
        ("1048576", 1048576),
        ("512K", 512 * 1024),
        ("64M", 64 * 1024**2),
        ("64MB", 64 * 1024**2),
        ("64MiB", 64 * 1024**2),
        ("1.5G", int(1.5 * 1024**3)),
        ("2gib", 2 * 1024**3),
    ],
    "rate": [
        ("262144", 262144),
        ("256K", 256 * 1024),
        ("1M/s", 1024**2),
        ("1.5MiB/s", int(1.5 * 1024**2)),
    ],
}

_REFUSED = ["1x", "-5", "abc", "1.2.3", "5 parsecs"]

_HINTS = {"duration": units.DURATION_HINT, "size": units.SIZE_HINT, "rate": units.RATE_HINT}


def _options() -> Iterator[tuple[str, list[str], str, Any]]:
    """(kind, command path, option name, click command) for every unit option."""

    def walk(command: Any, path: list[str]) -> Iterator[tuple[list[str], Any]]:
        subcommands = getattr(command, "commands", None)
        if subcommands:
            for name, sub in subcommands.items():
                yield from walk(sub, [*path, name])
        else:
            yield path, command

    for path, command in walk(typer.main.get_command(app), []):
        for param in command.params:
            if param.param_type_name != "option" or param.is_flag:
                continue
            name = param.opts[0]
            for kind, pattern in _KINDS.items():
                if pattern.search(name):
                    yield kind, path, name, command
                    break


_ALL = [pytest.param(*o, id=" ".join([*o[1], o[2]])) for o in _options()]
_WITH_JSON = [p for p in _ALL if any(q.opts[0] == "--json" for q in p.values[3].params)]


def _required_arguments(command: Any) -> list[str]:
    return ["x" for p in command.params if p.param_type_name == "argument" and p.required]


def _parse(command: Any, path: list[str], option: str, value: str) -> Any:
    """The value the command would receive, or the exit the command line would take."""
    args = [*_required_arguments(command), option, value]
    try:
        context = command.make_context(path[-1], args)
    except (typer.BadParameter, typer.Exit) as exc:
        return exc
    param = next(p for p in command.params if p.opts[0] == option)
    return context.params[param.name]


def test_the_walk_finds_every_kind_of_unit_option() -> None:
    found = {(k, " ".join(p), o) for k, p, o, _ in _options()}
    assert ("duration", "send", "--older-than") in found
    assert ("duration", "status", "--since") in found
    assert ("size", "send", "--batch-bytes") in found
    assert ("size", "receive", "--max-instance-size") in found
    assert ("rate", "peers add", "--min-rate") in found


@pytest.mark.parametrize(("kind", "path", "option", "command"), _ALL)
def test_every_unit_option_accepts_the_same_values(
    kind: str, path: list[str], option: str, command: Any
) -> None:
    for text, expected in _ACCEPTED[kind]:
        value = _parse(command, path, option, text)
        assert not isinstance(value, Exception), f"{option} {text}: {value}"
        assert value == pytest.approx(expected), f"{option} {text}"


@pytest.mark.parametrize(("kind", "path", "option", "command"), _ALL)
def test_every_unit_option_refuses_the_same_values_with_one_message(
    kind: str, path: list[str], option: str, command: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    for text in _REFUSED:
        refusal = _parse(command, path, option, text)
        assert isinstance(refusal, typer.Exit), f"{option} {text} was accepted: {refusal}"
        assert refusal.exit_code == 2
        assert capsys.readouterr().err.strip() == (
            f"dvdexit: error: {option}: '{text}' is not a {kind} ({_HINTS[kind]})"
        )


@pytest.mark.parametrize(("kind", "path", "option", "command"), _WITH_JSON)
def test_a_refused_unit_value_is_a_json_error_document_under_json(
    kind: str, path: list[str], option: str, command: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [*_required_arguments(command), option, "1x", "--json"]
    with pytest.raises(typer.Exit):
        command.make_context(path[-1], args)
    document = json.loads(capsys.readouterr().out)
    assert document["exit_code"] == 2
    assert document["error"] == {
        "type": "UnitError",
        "message": f"{option}: '1x' is not a {kind}",
        "hint": _HINTS[kind],
    }
