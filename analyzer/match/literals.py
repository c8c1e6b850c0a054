"""What every match of an expression must contain, read from the regex syntax tree.

Used for the raw-record prefilter: a literal that contains no character a JSON encoder escapes appears
verbatim in the encoded record whenever the decoded text contains it.
"""

from __future__ import annotations

import re

# The stdlib regex parser is the only parser of this syntax at hand; typeshed has no stubs for it.
import re._constants as C  # type: ignore[import-not-found]
import re._parser as P  # type: ignore[import-not-found]
from typing import Any

MIN_FRAGMENT = 3

# Printable ASCII minus the characters JSON encoders escape (", \, and / by some, e.g. Fluent Bit's old one).
_SAFE = frozenset(range(0x20, 0x7F)) - {ord('"'), ord("\\"), ord("/")}

Alternatives = frozenset[bytes]


def _score(alternatives: Alternatives) -> tuple[int, int]:
    """Prefer the set whose shortest member is longest, then fewer members."""
    return (min(len(a) for a in alternatives), -len(alternatives))


def _best(options: list[Alternatives]) -> Alternatives | None:
    usable = [o for o in options if o and min(len(a) for a in o) >= MIN_FRAGMENT]
    return max(usable, key=_score) if usable else None


def _safe_runs(chars: list[int]) -> list[bytes]:
    runs, current = [], bytearray()
    for c in chars:
        if c in _SAFE:
            current.append(c)
        else:
            if current:
                runs.append(bytes(current))
            current = bytearray()
    if current:
        runs.append(bytes(current))
    return runs


def _single_char(op: Any, av: Any) -> int | None:
    if op is C.LITERAL:
        return int(av)
    if op is C.IN and len(av) == 1 and av[0][0] is C.LITERAL:
        return int(av[0][1])
    return None


def _sequence(items: Any) -> Alternatives | None:
    """Best required alternative-set of a sequence of nodes."""
    options: list[Alternatives] = []
    run: list[int] = []

    def close_run() -> None:
        options.extend(frozenset({r}) for r in _safe_runs(run))
        run.clear()

    for op, av in items:
        char = _single_char(op, av)
        if char is not None:
            run.append(char)
            continue
        close_run()
        if op is C.SUBPATTERN:
            sub = _sequence(av[-1])
            if sub is not None:
                options.append(sub)
        elif op is C.BRANCH:
            branch = _branch(av[1])
            if branch is not None:
                options.append(branch)
        elif op in (C.MAX_REPEAT, C.MIN_REPEAT, C.POSSESSIVE_REPEAT) and av[0] >= 1:
            sub = _sequence(av[2])
            if sub is not None:
                options.append(sub)
    close_run()
    return _best(options)


def _branch(branches: Any) -> Alternatives | None:
    union: set[bytes] = set()
    for branch in branches:
        alternatives = _sequence(branch)
        if alternatives is None:
            return None
        union.update(alternatives)
    return frozenset(union)


def required_fragments(pattern: str) -> Alternatives | None:
    """Literals of 3+ JSON-safe bytes, one of which occurs in every match; None if there are none."""
    try:
        tree = P.parse(pattern)
    except (re.error, OverflowError, RecursionError):
        return None
    return _sequence(tree.data)


def trailing_unbounded_repeat(pattern: str) -> bool:
    """True if the expression ends in ``x*``, ``x+`` or ``x{n,}``: one match event per extra character."""
    try:
        tree = P.parse(pattern)
    except (re.error, OverflowError, RecursionError):
        return False
    items = tree.data
    while items:
        op, av = items[-1]
        if op in (C.MAX_REPEAT, C.MIN_REPEAT, C.POSSESSIVE_REPEAT):
            return bool(av[1] == C.MAXREPEAT)
        if op is C.SUBPATTERN:
            items = av[-1].data
            continue
        if op is C.BRANCH:
            return any(_ends_unbounded(b) for b in av[1])
        if op is C.AT:
            items = items[:-1]
            continue
        return False
    return False


def _ends_unbounded(branch: Any) -> bool:
    items = branch.data
    if not items:
        return False
    op, av = items[-1]
    return op in (C.MAX_REPEAT, C.MIN_REPEAT, C.POSSESSIVE_REPEAT) and bool(av[1] == C.MAXREPEAT)
