"""Sizes, durations and rates: one grammar for every option and every peers.toml key.

- A **size** is a number of bytes, or a number (a decimal point allowed) followed by K, M, G
  or T, optionally followed by ``B`` or ``iB``, in any case: ``1048576``, ``512K``, ``64MB``,
  ``1.5G``, ``2TiB``. The units are binary whatever the spelling: ``1K`` = ``1KB`` =
  ``1KiB`` = 1024 bytes (disks and PACS report sizes in binary units; a tool that read
  ``1GB`` as 10^9 would refuse a study a few percent early).
- A **duration** is a number of seconds, or a number followed by ``s``, ``m``, ``h``, ``d``
  or ``w``: ``90``, ``90s``, ``15m``, ``1.5h``, ``7d``, ``2w``.
- A **rate** is a size per second, the ``/s`` optional: ``262144``, ``256K``, ``1M/s``.

Each parser takes what the user wrote (a string from the command line or from TOML, or a
TOML number) and raises :class:`~dvdexit_cli.errors.UnitError` with one message shape per
kind: ``{what}: '1x' is not a duration`` and a hint with examples. The command line turns
that into a usage error naming the option; peers.toml loading into a configuration error
naming the key.
"""

from __future__ import annotations

import math
import re

from dvdexit_cli.errors import UnitError

__all__ = [
    "DURATION_HINT",
    "RATE_HINT",
    "SIZE_HINT",
    "format_size",
    "parse_duration",
    "parse_rate",
    "parse_size",
]

SIZE_HINT = "use bytes or a number with K, M, G or T (binary: 1K = 1024): 1048576, 512K, 1.5G"
DURATION_HINT = "use seconds or a number with s, m, h, d or w: 90, 15m, 1.5h, 7d, 2w"
RATE_HINT = "use bytes per second or a size with K, M or G: 262144, 256K, 1M/s"

_NUMBER = r"(\d+(?:\.\d+)?|\.\d+)"
_SIZE = re.compile(rf"^{_NUMBER}\s*(?:([kmgt])(?:i?b)?|b)?$", re.IGNORECASE)
_RATE = re.compile(rf"^{_NUMBER}\s*(?:([kmgt])(?:i?b)?|b)?\s*(?:/\s*s)?$", re.IGNORECASE)
_DURATION = re.compile(rf"^{_NUMBER}\s*([smhdw])?$", re.IGNORECASE)

_BYTES = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _refuse(value: object, kind: str, what: str, hint: str) -> UnitError:
    prefix = f"{what}: " if what else ""
    shown = value if isinstance(value, str) else str(value)
    return UnitError(f"{prefix}{shown!r} is not {kind}", hint=hint)


def _number(value: object) -> float | None:
    """A TOML or Python number as a float (None for booleans, NaN, infinity, anything else)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _read(value: object, grammar: re.Pattern[str]) -> tuple[float, str] | None:
    """A TOML number (no unit), or a string's number and its unit (lower case, maybe "")."""
    number = _number(value)
    if number is not None:
        return number, ""
    match = grammar.match(value.strip()) if isinstance(value, str) else None
    if match is None:
        return None
    return float(match.group(1)), (match.group(2) or "").lower()


def parse_size(value: object, *, what: str = "", positive: bool = False) -> int:
    """``"1.5G"`` -> 1610612736 bytes (rounded down). ``positive`` refuses zero."""
    number, unit = _read(value, _SIZE) or (None, "")
    if number is None or number < 0:
        raise _refuse(value, "a size", what, SIZE_HINT)
    size = int(number * _BYTES[unit])
    if positive and size < 1:
        raise UnitError(
            f"{what + ': ' if what else ''}the size must be at least 1 byte", hint=SIZE_HINT
        )
    return size


def parse_rate(value: object, *, what: str = "") -> int:
    """``"256K"`` or ``"1M/s"`` -> bytes per second (at least 1)."""
    number, unit = _read(value, _RATE) or (None, "")
    if number is None or int(number * _BYTES[unit]) < 1:
        raise _refuse(value, "a rate", what, RATE_HINT)
    return int(number * _BYTES[unit])


def parse_duration(value: object, *, what: str = "", positive: bool = False) -> float:
    """``"15m"`` -> 900.0 seconds; a plain number is seconds. ``positive`` refuses zero."""
    number, unit = _read(value, _DURATION) or (None, "")
    if number is None or number < 0:
        raise _refuse(value, "a duration", what, DURATION_HINT)
    seconds = number * _SECONDS[unit]
    if positive and seconds <= 0:
        raise UnitError(
            f"{what + ': ' if what else ''}the duration must be more than 0", hint=DURATION_HINT
        )
    return seconds


def format_size(n: float) -> str:
    """Bytes for people, in the units :func:`parse_size` reads back: ``1.5 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
