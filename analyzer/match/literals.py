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

# Shorter literals are common in any traffic mix: a two-letter response flag such as UT is inside every PUT.
MIN_FRAGMENT = 3

# Words every record of some kind carries (Fluent Bit envelope and kubernetes keys, Istio JSON keys, Envoy
# JSON access-log keys): a fragment inside one of them flags every such record, so it is no prefilter.
COMMON_WORDS = [
    "@timestamp",
    "stream",
    "log",
    "message",
    "time",
    "_p",
    "kubernetes",
    "pod_name",
    "namespace_name",
    "pod_id",
    "labels",
    "annotations",
    "host",
    "pod_ip",
    "container_name",
    "docker_id",
    "container_hash",
    "container_image",
    "cluster_name",
    "level",
    "scope",
    "msg",
    "caller",
    "thread",
    "start_time",
    "route_name",
    "method",
    "path",
    "protocol",
    "response_code",
    "response_flags",
    "response_code_details",
    "connection_termination_details",
    "bytes_received",
    "bytes_sent",
    "duration",
    "upstream_service_time",
    "x_forwarded_for",
    "user_agent",
    "request_id",
    "authority",
    "upstream_host",
    "upstream_cluster",
    "upstream_local_address",
    "downstream_local_address",
    "downstream_remote_address",
    "requested_server_name",
    "upstream_transport_failure_reason",
]

# Printable ASCII minus what JSON encoders escape in more than one way (\, and / by some, e.g. Fluent Bit's
# old one). A quote is always escaped as \": a literal holding one is looked for in both forms (``variants``),
# so a token can be matched in its position in a JSON access log ('"UF' or ',UF' in "response_flags":"UF").
_SAFE = frozenset(range(0x20, 0x7F)) - {ord("\\"), ord("/")}

Alternatives = frozenset[bytes]


def _score(alternatives: Alternatives) -> tuple[int, int]:
    """Prefer the set whose shortest member is longest, then fewer members."""
    return (min(len(a) for a in alternatives), -len(alternatives))


def _usable(fragment: bytes, caseless: bool) -> bool:
    return len(fragment) >= MIN_FRAGMENT and not any(fragment.decode() in word for word in COMMON_WORDS)


def _best(options: list[Alternatives], caseless: bool) -> Alternatives | None:
    usable = [o for o in options if o and all(_usable(a, caseless) for a in o)]
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


def _options(items: Any, caseless: bool) -> list[Alternatives]:
    """Every usable required alternative-set of a sequence of nodes (nested ones: their best)."""
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
            sub = _sequence(av[-1], caseless)
            if sub is not None:
                options.append(sub)
        elif op is C.BRANCH:
            branch = _branch(av[1], caseless)
            if branch is not None:
                options.append(branch)
        elif op in (C.MAX_REPEAT, C.MIN_REPEAT, C.POSSESSIVE_REPEAT) and av[0] >= 1:
            sub = _sequence(av[2], caseless)
            if sub is not None:
                options.append(sub)
    close_run()
    return [o for o in options if o and all(_usable(a, caseless) for a in o)]


def _sequence(items: Any, caseless: bool) -> Alternatives | None:
    """Best (longest) required alternative-set of a sequence of nodes."""
    return _best(_options(items, caseless), caseless)


def _branch(branches: Any, caseless: bool) -> Alternatives | None:
    union: set[bytes] = set()
    for branch in branches:
        alternatives = _sequence(branch, caseless)
        if alternatives is None:
            return None
        union.update(alternatives)
    return frozenset(union)


def required_fragments(pattern: str, caseless: bool = False) -> Alternatives | None:
    """JSON-safe literals, one of which occurs in every match; None if there are none.

    A fragment is 3+ characters (or a 2-letter upper-case token) and not part of a key every record carries.
    """
    try:
        tree = P.parse(pattern)
    except (re.error, OverflowError, RecursionError):
        return None
    return _sequence(tree.data, caseless)


def variants(fragment: bytes) -> tuple[bytes, ...]:
    """How a literal can appear in a raw record: as it is, and inside a JSON string (quotes as \\")."""
    return (fragment, fragment.replace(b'"', b'\\"')) if b'"' in fragment else (fragment,)


def fragment_options(pattern: str, caseless: bool = False) -> list[Alternatives]:
    """Every alternative-set of JSON-safe literals one of which occurs in every match (empty: none).

    The prefilter uses one set per expression: the caller picks it (the compiler: the rarest in ordinary
    traffic, see ``analyzer.match.ordinary``).
    """
    try:
        tree = P.parse(pattern)
    except (re.error, OverflowError, RecursionError):
        return []
    return _options(tree.data, caseless)


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


_NEWLINE = 10
# Classes (\s, \D, \W, linebreak) that contain the newline.
_NEWLINE_CATEGORIES = {C.CATEGORY_SPACE, C.CATEGORY_NOT_DIGIT, C.CATEGORY_NOT_WORD, C.CATEGORY_LINEBREAK}


def _class_has_newline(items: Any) -> bool:
    negate = bool(items) and items[0][0] is C.NEGATE
    hit = False
    for op, av in items[1:] if negate else items:
        if (
            (op is C.LITERAL and av == _NEWLINE)
            or (op is C.RANGE and av[0] <= _NEWLINE <= av[1])
            or (op is C.CATEGORY and av in _NEWLINE_CATEGORIES)
        ):
            hit = True
    return hit != negate


def _crosses(items: Any) -> bool:
    for op, av in items:
        if op is C.LITERAL:
            if av == _NEWLINE:
                return True
        elif op is C.NOT_LITERAL:
            if av != _NEWLINE:
                return True
        elif op is C.IN:
            if _class_has_newline(av):
                return True
        elif op is C.ANY:
            continue  # "." stops at a newline (no DOTALL)
        elif op is C.AT:
            if av is C.AT_NON_BOUNDARY:
                return True  # \B next to the separator is not \B at the text's edge
        elif op is C.SUBPATTERN:
            if _crosses(av[-1]):
                return True
        elif op is C.BRANCH:
            if any(_crosses(b) for b in av[1]):
                return True
        elif op in (C.MAX_REPEAT, C.MIN_REPEAT, C.POSSESSIVE_REPEAT):
            if _crosses(av[2]):
                return True
        elif op is C.CATEGORY:
            if av in _NEWLINE_CATEGORIES:
                return True
        else:
            return True  # anything unknown: assume it can
    return False


def can_cross_newline(pattern: str) -> bool:
    """Whether a match could span a ``\\n`` (then a batch joined with ``\\n`` needs a per-line rescan)."""
    try:
        tree = P.parse(pattern)
    except (re.error, OverflowError, RecursionError):
        return True
    return _crosses(tree.data)
