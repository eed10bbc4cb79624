"""UID checks made before a UID becomes part of a path or a journal key.

The check is the path-safety subset of the PS3.5 section 9 grammar: digits and single
dots, no empty component, at most 64 characters. Leading zeros in a component break the
standard's grammar but are common in the field, and refusing a clinical image for them
would do more harm than good; they are accepted.
"""

from __future__ import annotations

import re

__all__ = ["is_valid_uid"]

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def is_valid_uid(value: object) -> bool:
    """Return True when ``value`` is a string of digits and dots that is safe as a name."""
    return isinstance(value, str) and 0 < len(value) <= 64 and _UID.fullmatch(value) is not None
