"""Which raw records can be error/critical/fatal lines: a cheap screen for the unclassified lane.

The catalogue prefilter only flags records holding a rule's literal, so an error no rule knows is never
decoded. This database flags the level words in every form a mesh component writes them, raw (Fluent Bit's
JSON escapes TAB as ``\\t`` or ``\\u0009`` and ``"`` as ``\\"``) or decoded: zap/ztunnel text
(``<time>\\terror\\t``, or spaces where a paste lost the tabs), JSON (``"level":"error"``, nested or
merged), Envoy's native ``][critical][`` and klog's ``E0102 15:04:05`` head. Every expression is led by a
literal, so the scan runs at literal speed; a hit is only a candidate: the lane decodes it and reads the
normalised level.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import hyperscan

from analyzer.match.compiler import CompiledCatalogue
from analyzer.match.literal_db import literal_database
from analyzer.match.scanner import IndexArray, scan_batches, screen_and_scan
from analyzer.match.windows import compile_windows

_WORD = "(?:error|fatal|critical)"
LEVEL_EXPRESSIONS: tuple[str, ...] = (
    rf"\t{_WORD}\t",  # zap / ztunnel text (and CRI or plain records, whose TABs are raw)
    rf"\\t{_WORD}\\t",  # the same inside a JSON string
    rf"\\u0009{_WORD}\\u0009",
    rf"level\\?\": ?\\?\"(?:{_WORD}|ERROR|FATAL|CRITICAL)\\?\"",  # JSON lines: plain, nested, merged
    r"\]\[(?:error|critical)\]\[",  # Envoy's native format
    rf"[0-9][Zz] {{1,16}}{_WORD} ",  # zap text pasted with spaces for tabs (files given to `scan`)
    r"(?:^|log\\?\":\\?\"|message\\?\":\\?\"| [FP] )[EF][01][0-9][0-3][0-9] [0-2][0-9]:",  # klog header
)


class LevelPrefilter:
    """Indices of the records (raw or decoded lines) that carry an error-level word."""

    def __init__(self, expressions: Sequence[str] = LEVEL_EXPRESSIONS) -> None:
        db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
        db.compile(
            expressions=[e.encode() for e in expressions],
            ids=list(range(len(expressions))),
            elements=len(expressions),
            flags=[hyperscan.HS_FLAG_MULTILINE] * len(expressions),
        )
        db.scratch = hyperscan.Scratch(db)
        self._db = db

    def __call__(self, records: Sequence[bytes]) -> IndexArray:
        return scan_batches(self._db, records)


def _level_literals() -> tuple[bytes, ...]:
    """The level words as they appear in raw Kafka records: Fluent Bit JSON (TAB as ``\\t`` or ``\\u0009``,
    nested quotes as ``\\"``), JSON lines merged into the record, CRI lines with raw TABs."""
    out: list[bytes] = []
    for word in (b"error", b"fatal", b"critical"):
        out += [b"\t" + word + b"\t", b"\\t" + word + b"\\t", b"\\u0009" + word + b"\\u0009"]
    for word in (b"error", b"fatal", b"critical", b"ERROR", b"FATAL", b"CRITICAL"):
        out += [b'"level":"' + word + b'"', b'\\"level\\":\\"' + word + b'\\"']
    out += [b"][error][", b"][critical]["]
    for head in (b"E0", b"E1", b"F0", b"F1"):  # klog's "Lmmdd" as the first characters of the line
        out += [b'"log":"' + head, b'"message":"' + head, b" F " + head, b" P " + head]
    return tuple(out)


LEVEL_LITERALS = _level_literals()


class CombinedPrefilter:
    """The catalogue's literal prefilter and the level literals in one database: one scan per batch.

    A record it flags may hold a rule's literal, a level word, or both; the pipeline decodes it either way
    (error lines are few).
    """

    def __init__(self, compiled: CompiledCatalogue) -> None:
        # The catalogue's prefilter forms as their windows (a hit confirmed against the full forms), and the
        # level literals as they are.
        entries = set(compiled.windows) | {(lit, False, lit) for lit in LEVEL_LITERALS}
        self._db = compile_windows(sorted(entries))

    def __call__(self, records: Sequence[bytes]) -> IndexArray:
        return scan_batches(self._db, records)

    def screened(self, records: Sequence[bytes], max_bytes: int) -> tuple[IndexArray, IndexArray]:
        """(candidates, records to screen one by one): see ``screen_and_scan``."""
        return screen_and_scan(self._db, records, max_bytes)


def _stop(_id: int, _from: int, _to: int, _flags: int, found: Any) -> None:
    found.append(True)


class LevelWords:
    """The level literals, one record at a time: which of the combined prefilter's candidates hold one."""

    def __init__(self) -> None:
        self._db = literal_database([(word, False) for word in LEVEL_LITERALS], single_match=True)

    def __call__(self, record: bytes) -> bool:
        found: list[bool] = []
        self._db.scan(record, match_event_handler=_stop, context=found)
        return bool(found)
