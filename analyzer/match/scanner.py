"""Batch scanning: many lines per Hyperscan call, match ends mapped back to lines with numpy.

Contract: an owner (rule or signal) is reported for a line if and only if one of its expressions matches
the line alone. Lines are joined with ``\\n`` and scanned in batches; a match can only be claimed by a line
after an exact rescan of that line, so expressions that cross the separator (``\\s``, ``[^x]``) cannot
produce false matches, and the batch scan cannot miss one (a match inside a line is a match in the batch).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from analyzer.match.compiler import CompiledCatalogue
from analyzer.match.windows import Windowed

# 1-5k lines (0.3-3 MB) keep a batch in cache; far larger batches were measured slower (DESIGN.md).
BATCH_BYTES = 1 << 20
BATCH_LINES = 4096

IndexArray = npt.NDArray[np.intp]
_ID_BITS = 20  # expression ids packed under the end offset: one int per match event, cheap in the callback
_ID_MASK = (1 << _ID_BITS) - 1


def _collect_end(_id: int, _from: int, to: int, _flags: int, ends: list[int]) -> None:
    ends.append(to)


def _collect_pair(expr_id: int, _from: int, to: int, _flags: int, pairs: list[int]) -> None:
    pairs.append(to << _ID_BITS | expr_id)


def _collect_id(expr_id: int, _from: int, _to: int, _flags: int, ids: set[int]) -> None:
    ids.add(expr_id)


def _chunks(lines: Sequence[bytes]) -> Iterator[tuple[int, bytes, npt.NDArray[np.int64], npt.NDArray[np.int64]]]:
    """(index of the chunk's first line, the chunk's lines joined with \\n, where each starts in it, their
    lengths). A chunk holds up to BATCH_LINES lines and about BATCH_BYTES: its line count is set from the mean
    length of the lines before it (or of the first few). The lengths are read after the join, while the lines
    are in cache: reading them first, for the whole batch, costs a cache miss per line."""
    n, a = len(lines), 0
    head = lines[:64]
    mean = (sum(map(len, head)) + len(head)) / max(len(head), 1)
    while a < n:
        b = min(n, a + max(1, min(BATCH_LINES, int(BATCH_BYTES / max(mean, 1.0)))))
        part = lines[a:b]
        joined = b"\n".join(part)
        lengths = np.array(list(map(len, part)), dtype=np.int64)
        starts = np.zeros(b - a, dtype=np.int64)
        np.cumsum(lengths[:-1] + 1, out=starts[1:])
        yield a, joined, starts, lengths
        mean = (len(joined) + 1) / (b - a)
        a = b


def _hit_lines(db: Any, joined: bytes, local: npt.NDArray[np.int64]) -> IndexArray | None:
    ends: list[int] = []
    db.scan(joined, match_event_handler=_collect_end, context=ends)
    if not ends:
        return None
    # The last byte of a match (end - 1) lies in the line that started at or before it.
    return np.unique(np.searchsorted(local, np.asarray(ends, dtype=np.int64) - 1, side="right") - 1)


def _confirmed_lines(windowed: Windowed, joined: bytes, local: npt.NDArray[np.int64]) -> IndexArray | None:
    """``_hit_lines`` for a windowed database: a window's hit counts if a full form it was cut from lies
    around it (``joined.startswith`` at the form's start, given the window's place in it: no search of the
    line). The same lines as a scan for the full forms would give."""
    pairs: list[int] = []
    windowed.db.scan(joined, match_event_handler=_collect_pair, context=pairs)
    if not pairs:
        return None
    packed = np.asarray(pairs, dtype=np.int64)
    ends = packed >> _ID_BITS
    line = np.searchsorted(local, ends - 1, side="right") - 1
    ident = packed & _ID_MASK
    need = windowed.needs[ident]
    if not need.any():
        return np.unique(line)
    sure = np.unique(line[~need])
    known = set(sure.tolist())
    confirm = windowed.confirm
    extra: list[int] = []
    for end, i, at in zip(ends[need].tolist(), ident[need].tolist(), line[need].tolist(), strict=True):
        if at in known:
            continue
        for form, back in confirm[i] or ():
            start = end - back
            if start >= 0 and joined.startswith(form, start):
                known.add(at)
                extra.append(at)
                break
    if not extra:
        return sure if len(sure) else None
    return np.union1d(sure, np.asarray(extra, dtype=np.intp))


def _scan_chunk(target: Any, joined: bytes, local: npt.NDArray[np.int64]) -> IndexArray | None:
    if isinstance(target, Windowed):
        return _confirmed_lines(target, joined, local)
    return _hit_lines(target, joined, local)


def scan_batches(target: Any, lines: Sequence[bytes]) -> IndexArray:
    """Indices of lines where a batch scan reported a match end (a superset of the matching lines).
    ``target``: a Hyperscan database, or a ``Windowed`` one (hits confirmed against the full literals)."""
    if not lines:
        return np.empty(0, dtype=np.intp)
    found = []
    for a, joined, local, _ in _chunks(lines):
        hit = _scan_chunk(target, joined, local)
        if hit is not None:
            found.append(hit + a)
    return np.concatenate(found) if found else np.empty(0, dtype=np.intp)


_BLANK = np.zeros(256, dtype=bool)
_BLANK[list(b" \t\n\r\x0b\x0c")] = True


def screen_and_scan(target: Any, records: Sequence[bytes], max_bytes: int) -> tuple[IndexArray, IndexArray]:
    """``scan_batches`` plus the records worth a second look before decoding (empty, starting blank, larger
    than ``max_bytes``, or ``{`` not ending in ``}``), read off the joined chunk with numpy: no Python per
    record on the path every record takes."""
    if not records:
        return np.empty(0, dtype=np.intp), np.empty(0, dtype=np.intp)
    found, suspects = [], []
    for a, joined, local, lengths in _chunks(records):
        hit = _scan_chunk(target, joined, local)
        if hit is not None:
            found.append(hit + a)
        buf = np.frombuffer(joined, dtype=np.uint8)
        if not len(buf):  # every record of the chunk is empty
            suspects.append(np.arange(len(local)) + a)
            continue
        firsts = buf[np.minimum(local, len(buf) - 1)]
        lasts = buf[np.maximum(local + lengths - 1, 0)]
        odd = (lengths == 0) | (lengths > max_bytes) | _BLANK[firsts] | ((firsts == 0x7B) & (lasts != 0x7D))
        if odd.any():
            suspects.append(np.flatnonzero(odd) + a)
    none = np.empty(0, dtype=np.intp)
    return (
        np.concatenate(found) if found else none,
        np.concatenate(suspects) if suspects else none,
    )


def _scan_pairs(db: Any, lines: Sequence[bytes]) -> list[tuple[int, list[int]]]:
    """(line index, sorted expression ids) from batch scans: exact when no expression spans a newline."""
    if not lines:
        return []
    out: list[tuple[int, list[int]]] = []
    for a, joined, local, _ in _chunks(lines):
        pairs: list[int] = []
        db.scan(joined, match_event_handler=_collect_pair, context=pairs)
        if not pairs:
            continue
        packed = np.asarray(pairs, dtype=np.int64)
        line = np.searchsorted(local, (packed >> _ID_BITS) - 1, side="right") - 1 + a
        ident = packed & ((1 << _ID_BITS) - 1)
        keys = np.unique(line * (1 << _ID_BITS) + ident)  # sorted by line, then expression id
        line_of, id_of = (keys >> _ID_BITS).tolist(), (keys & ((1 << _ID_BITS) - 1)).tolist()
        for index, expr in zip(line_of, id_of, strict=True):
            if out and out[-1][0] == index:
                out[-1][1].append(expr)
            else:
                out.append((index, [expr]))
    return out


class Matcher:
    """Exact matching of decoded lines against a compiled catalogue."""

    def __init__(self, compiled: CompiledCatalogue) -> None:
        self.compiled = compiled
        self._db = compiled.db
        self._windowed = compiled.windowed
        self._owners = compiled.owners
        self._excludes = compiled.excludes

    def _kept(self, owners: tuple[str, ...], line: bytes) -> tuple[str, ...]:
        """Drop the rules one of whose ``exclude`` expressions finds the line (a benign look-alike)."""
        excludes = self._excludes
        return tuple(o for o in owners if o not in excludes or not any(rx.search(line) for rx in excludes[o]))

    def one(self, line: bytes) -> tuple[str, ...]:
        """Owners matching one line, in catalogue order, without duplicates."""
        ids: set[int] = set()
        self._db.scan(line, match_event_handler=_collect_id, context=ids)
        if not ids:
            return ()
        owners = tuple(dict.fromkeys(self._owners[i] for i in sorted(ids)))
        return self._kept(owners, line) if self._excludes else owners

    def __call__(self, lines: Sequence[bytes]) -> list[tuple[int, tuple[str, ...]]]:
        """(index, owners) for every line that matches, in input order.

        Two stages: the literal prefilter (``compiled.windowed``) over every line, then the exact database
        over the lines it flags only. A line that matches holds one of its expressions' required literals
        (the prefilter's forms include each literal as it is), so the flagged lines are a superset of the
        matching ones; the literal scan is the cheaper pass over ordinary text, and few lines are flagged."""
        flagged = scan_batches(self._windowed, lines).tolist()
        if not flagged:
            return []
        return [(flagged[j], owners) for j, owners in self.exact([lines[i] for i in flagged])]

    def exact(self, lines: Sequence[bytes]) -> list[tuple[int, tuple[str, ...]]]:
        """``__call__`` without the prefilter: the exact database over every line given. For lines the
        prefilter has flagged already (the pipeline's decoded candidates), where a second literal scan would
        flag nearly all of them again."""
        if self.compiled.line_local:
            owners = self._owners
            found = [(i, tuple(dict.fromkeys(owners[e] for e in ids))) for i, ids in _scan_pairs(self._db, lines)]
            if not self._excludes:
                return found
            kept = [(i, self._kept(names, lines[i])) for i, names in found]
            return [(i, names) for i, names in kept if names]
        out = []
        for i in scan_batches(self._db, lines).tolist():
            owners = self.one(lines[i])
            if owners:
                out.append((i, owners))
        return out


class RecordPrefilter:
    """Which raw JSON-encoded records can match at all: literal scan of the encoded bytes.

    A record is a candidate when it contains one of the required literal fragments (case as the expression
    asks). Candidates must then be decoded and checked with ``Matcher.one``; the rest cannot match. Every
    expression has such literals: the compiler refuses one without (see ``prefilter_literals``). The scan
    looks for a rare window of each long literal and confirms its hits (``analyzer.match.windows``).
    """

    def __init__(self, compiled: CompiledCatalogue) -> None:
        self._db = compiled.windowed

    def __call__(self, records: Sequence[bytes]) -> IndexArray:
        return scan_batches(self._db, records)

    def screened(self, records: Sequence[bytes], max_bytes: int) -> tuple[IndexArray, IndexArray]:
        """(candidates, records to screen one by one): see ``screen_and_scan``."""
        return screen_and_scan(self._db, records, max_bytes)
