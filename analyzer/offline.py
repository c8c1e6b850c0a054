"""Offline analysis of log files (the `match` and `scan` commands): decode, match, fold into incidents."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

from analyzer import incidents
from analyzer.decode import Decoder, Format
from analyzer.match import CompiledCatalogue, Matcher, RecordPrefilter
from analyzer.types import Catalogue, Interval, LogRecord, Rejected, Rule, Status

# A CRI partial line ("<time> stdout P <chunk>"): such blocks are decoded in order, so chunks are joined.
_CRI_PARTIAL = re.compile(rb"^\S+ (?:stdout|stderr) P ", re.M)
_LOOKBACK = 200  # lines searched for a timestamp when a matching line has none


@dataclass(frozen=True, slots=True)
class Metadata:
    """Metadata to assume for records that carry none (a `kubectl logs` file names no pod)."""

    cluster: str | None = None
    namespace: str | None = None
    pod: str | None = None
    container: str | None = None

    def apply(self, record: LogRecord) -> LogRecord:
        if not any((self.cluster, self.namespace, self.pod, self.container)):
            return record
        return replace(
            record,
            cluster=record.cluster or self.cluster,
            namespace=record.namespace or self.namespace,
            pod=record.pod or self.pod,
            container=record.container or self.container,
        )


@dataclass(frozen=True, slots=True)
class Found:
    line_no: int  # 1-based physical line that completed the record
    record: LogRecord
    time: float  # the record's own time, else the last time seen before it
    rules: tuple[Rule, ...]


@dataclass(slots=True)
class Stats:
    lines: int = 0
    records: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    first_time: float | None = None
    last_time: float | None = None


class LineMatcher:
    """Blocks of physical lines -> the records that match a rule, with their line numbers."""

    def __init__(
        self,
        catalogue: Catalogue,
        compiled: CompiledCatalogue,
        fmt: Format = Format.AUTO,
        metadata: Metadata | None = None,
    ) -> None:
        self._rules = catalogue.by_id()
        self._matcher = Matcher(compiled)
        self._prefilter = RecordPrefilter(compiled)
        self._fmt = fmt
        self._decoder = Decoder(fmt)
        self._block_last: float | None = None
        self._metadata = metadata or Metadata()
        self.stats = Stats()
        self._last_time: float | None = None

    def _timed(self, record: LogRecord) -> float:
        stats = self.stats
        if record.time is not None:
            self._last_time = record.time
            if stats.first_time is None or record.time < stats.first_time:
                stats.first_time = record.time
            if stats.last_time is None or record.time > stats.last_time:
                stats.last_time = record.time
        return record.time if record.time is not None else (self._last_time or 0.0)

    def _match(self, decoded: list[tuple[int, LogRecord, float]]) -> list[Found]:
        out = []
        for index, owners in self._matcher([r.line for _, r, _ in decoded]):
            line_no, record, when = decoded[index]
            rules = tuple(
                rule
                for owner in owners
                if (rule := self._rules.get(owner)) is not None and rule.applies_to(record.container, record.namespace)
            )
            if rules:
                out.append(Found(line_no, record, when, rules))
        return out

    def __call__(self, block: list[bytes]) -> list[Found]:
        if self._fmt is Format.CRI or (self._fmt is Format.AUTO and _CRI_PARTIAL.search(b"\n".join(block))):
            return self._sequential(block)
        return self._match_first(block)

    def _sequential(self, block: list[bytes]) -> list[Found]:
        """Decode every line in order: needed where CRI partial lines must be joined."""
        decoded: list[tuple[int, LogRecord, float]] = []
        stats = self.stats
        for raw in block:
            stats.lines += 1
            result = self._decoder(raw)
            if result is None:
                continue
            if isinstance(result, Rejected):
                stats.rejected[result.reason] += 1
                continue
            record = self._metadata.apply(result)
            decoded.append((stats.lines, record, self._timed(record)))
        stats.records += len(decoded)
        return self._match(decoded)

    def _match_first(self, block: list[bytes]) -> list[Found]:
        """Scan the raw lines for the required literals; decode only candidates (and a few neighbours
        for the time of a line that has none of its own)."""
        stats = self.stats
        base = stats.lines
        stats.lines += len(block)
        stats.records += len(block)
        self._note_edges(block)
        decoded: list[tuple[int, LogRecord, float]] = []
        for i in self._prefilter(block).tolist():
            result = Decoder(self._fmt)(block[i])
            if result is None:
                continue
            if isinstance(result, Rejected):
                stats.rejected[result.reason] += 1
                continue
            record = self._metadata.apply(result)
            when = record.time if record.time is not None else self._time_before(block, i)
            if record.time is not None and (stats.last_time is None or record.time > stats.last_time):
                stats.last_time = record.time
            decoded.append((base + i + 1, record, when))
        if self._block_last is not None:
            self._last_time = self._block_last
        return self._match(decoded)

    def _line_time(self, raw: bytes) -> float | None:
        result = Decoder(self._fmt)(raw)
        return result.time if isinstance(result, LogRecord) else None

    def _time_before(self, block: list[bytes], index: int) -> float:
        """The time of the nearest earlier line that has one (a multi-line message inherits its head's)."""
        for j in range(index - 1, max(-1, index - _LOOKBACK), -1):
            t = self._line_time(block[j])
            if t is not None:
                return t
        return self._last_time or 0.0

    def _note_edges(self, block: list[bytes]) -> None:
        """First and last event time of the block, from the lines nearest its edges."""
        stats = self.stats
        first = next((t for raw in block[:_LOOKBACK] if (t := self._line_time(raw)) is not None), None)
        last = next((t for raw in reversed(block[-_LOOKBACK:]) if (t := self._line_time(raw)) is not None), None)
        for t in (first, last):
            if t is not None:
                stats.first_time = t if stats.first_time is None else min(stats.first_time, t)
                stats.last_time = t if stats.last_time is None else max(stats.last_time, t)
        self._block_last = last

    def flush(self) -> list[Found]:
        rest = [(self.stats.lines, self._metadata.apply(r), 0.0) for r in self._decoder.flush()]
        rest = [(n, r, self._timed(r)) for n, r, _ in rest]
        self.stats.records += len(rest)
        return self._match(rest)


def find_all(matcher: LineMatcher, blocks: Iterable[list[bytes]]) -> Iterator[Found]:
    for block in blocks:
        yield from matcher(block)
    yield from matcher.flush()


@dataclass(frozen=True, slots=True)
class Incident:
    interval: Interval
    rule: Rule
    status: Status


STATUS_ORDER = {Status.OPEN: 0, Status.PENDING: 1, Status.SUPPRESSED: 2, Status.RESOLVED: 3}
SEVERITY_ORDER = {"critical": 0, "high": 1, "medium": 2, "low": 3, "info": 4}


def _near(a: Interval, b: Interval, gap: float) -> bool:
    return b.first_seen - a.last_seen <= gap and a.first_seen - b.last_seen <= gap


def scan(
    matcher: LineMatcher,
    blocks: Iterable[list[bytes]],
    *,
    default_cluster: str = "-",
    stream_time: float | None = None,
) -> list[Incident]:
    """Incidents in the input, with status derived at ``stream_time`` (default: the last event time seen)."""
    by_rule_key: dict[tuple[str, object], list[Interval]] = {}
    rules: dict[str, Rule] = {}
    for found in find_all(matcher, blocks):
        for rule in found.rules:
            o = incidents.occurrence(rule, found.record, default_cluster, found.time)
            rules[rule.id] = rule
            single = incidents.singleton(o)
            held = by_rule_key.setdefault((rule.id, o.key), [])
            # Logs are mostly in time order: fold into the latest interval as we go, so memory holds
            # intervals, not lines; fold() at the end settles whatever arrived out of order.
            if held and _near(held[-1], single, rule.resolve_after):
                held[-1] = incidents.merge(held[-1], single)
            else:
                held.append(single)
    if stream_time is None:
        stream_time = matcher.stats.last_time if matcher.stats.last_time is not None else time.time()
    out = []
    for (rule_id, _), singles in by_rule_key.items():
        rule = rules[rule_id]
        for interval in incidents.fold(singles, rule.resolve_after):
            out.append(Incident(interval, rule, incidents.status(interval, rule, stream_time)))
    out.sort(
        key=lambda i: (
            STATUS_ORDER[i.status],
            SEVERITY_ORDER[i.rule.severity.value],
            -i.interval.last_seen,
            i.rule.id,
        )
    )
    return out
