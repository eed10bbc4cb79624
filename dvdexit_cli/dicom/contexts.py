"""Presentation-context plans: which (SOP class, transfer syntaxes) to propose, per association.

Each SOP class is proposed in each transfer syntax its files use, one context per
syntax, followed by contexts for the uncompressed fallbacks (explicit and implicit VR
little endian) it does not use already. The fallbacks let an uncompressed file be
re-encoded for a peer that does not take its own syntax, and tell us (and the user) when
a peer would take a compressed instance only decompressed. DICOM allows at most 128 contexts per
association: a larger plan is split into several associations, used in order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "MAX_CONTEXTS",
    "UNCOMPRESSED",
    "ContextPlan",
    "ProposedContext",
    "plan_contexts",
]

MAX_CONTEXTS = 128
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
UNCOMPRESSED = frozenset({EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE})
_FALLBACK = (EXPLICIT_LE, IMPLICIT_LE)


@dataclass(frozen=True)
class ProposedContext:
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True)
class ContextPlan:
    """The contexts of one association, and the (SOP class, syntax) pairs they serve."""

    contexts: tuple[ProposedContext, ...]
    serves: frozenset[tuple[str, str]]


def _contexts_for(sop_class: str, syntaxes: list[str]) -> list[ProposedContext]:
    # One syntax per context: a peer that knows the file's own syntax can only accept it
    # as it is (an acceptor picks from a multi-syntax context by its own preference, which
    # would make us re-encode). The fallbacks follow as contexts of their own.
    ordered = [*syntaxes, *(ts for ts in _FALLBACK if ts not in syntaxes)]
    return [ProposedContext(sop_class, (ts,)) for ts in ordered]


def plan_contexts(pairs: Iterable[tuple[str, str]]) -> list[ContextPlan]:
    """Plan associations for these (SOP class UID, transfer syntax UID) pairs, in order seen."""
    by_class: dict[str, list[str]] = {}
    for sop_class, ts in pairs:
        syntaxes = by_class.setdefault(sop_class, [])
        if ts not in syntaxes:
            syntaxes.append(ts)
    plans: list[ContextPlan] = []
    contexts: list[ProposedContext] = []
    serves: set[tuple[str, str]] = set()
    for sop_class, syntaxes in by_class.items():
        needed = _contexts_for(sop_class, syntaxes)
        if len(needed) > MAX_CONTEXTS:
            # One SOP class in more than 127 compressed syntaxes does not exist in practice;
            # keep the plan valid anyway.
            needed = needed[:MAX_CONTEXTS]
        if len(contexts) + len(needed) > MAX_CONTEXTS:
            plans.append(ContextPlan(tuple(contexts), frozenset(serves)))
            contexts, serves = [], set()
        contexts.extend(needed)
        serves.update((sop_class, ts) for ts in syntaxes)
    if contexts:
        plans.append(ContextPlan(tuple(contexts), frozenset(serves)))
    return plans
