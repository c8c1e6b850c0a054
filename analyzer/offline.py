"""Offline analysis of log files (the `match` and `scan` commands) through the service's own pipeline.

`scan` runs what `serve` runs: batches of lines -> ``Pipeline`` (decode, match, the proxy-readiness gate, the
unclassified lane) -> the store's ``commit_batch`` into an in-memory SQLite store -> the store's list query.
What a file has that a Kafka record has not is handled before the pipeline (CRI partial lines joined) or by its
hooks (a kubectl/stern prefix or ``--pod`` for metadata; the time of the line before for a line without one, in
place of the Kafka time). Where the gate cannot rest on the pod's istio-proxy lines (no pod metadata, none of
the pod's istio-proxy lines in the input, a line without a time of its own), the report says so.
"""

from __future__ import annotations

import asyncio
import heapq
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from operator import itemgetter
from typing import overload

from analyzer import causes, incidents
from analyzer.causes import Affected
from analyzer.decode import Decoder, Format
from analyzer.decode.cri import PartialLines, split_cri
from analyzer.incidents import StreamClock
from analyzer.match import CompiledCatalogue, RecordPrefilter
from analyzer.pipeline import BatchResult, Pipeline
from analyzer.store.base import MAX_LIMIT, IncidentQuery, IncidentRow
from analyzer.store.sqlite import SqliteStore
from analyzer.types import Catalogue, Changes, IncidentKey, Interval, LogRecord, Rule, Status
from analyzer.unclassified import TemplateRegistry, with_rules

# A CRI partial line ("<time> stdout P <chunk>"): a block holding one is joined line by line before the pipeline.
_CRI_PARTIAL = re.compile(rb"^\S+ (?:stdout|stderr) P ", re.M)
_LOOKBACK = 200  # lines searched for a timestamp when a matching line has none
BATCH = 5000  # records per pipeline batch: the service's default (ANALYZER_KAFKA_MAX_RECORDS)
MAX_RECORD_BYTES = 1 << 20  # the service's default (ANALYZER_MAX_RECORD_BYTES)

# Lines that name their pod and container: `kubectl logs --prefix` ("[pod/NAME/CONTAINER] ...") and stern
# ("[NAMESPACE ]POD CONTAINER <RFC3339 time> ...", i.e. `stern --timestamps`; without the time a stern
# prefix cannot be told from message text).
_KUBECTL_PREFIX = re.compile(rb"\[pod/([a-z0-9][-a-z0-9.]{0,252})/([a-z0-9][-a-z0-9]{0,62})\] ")
_STERN_PREFIX = re.compile(
    rb"(?:([a-z0-9][-a-z0-9]{0,62}) )?([a-z0-9][-a-z0-9.]{0,252}) ([a-z0-9][-a-z0-9]{0,62}) "
    rb"(?=[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:[.,][0-9]{1,9})?(?:Z|[+-][0-9]{2}:?[0-9]{2}) )"
)


def named_source(raw: bytes) -> tuple[str | None, str, str, bytes] | None:
    """(namespace, pod, container, rest of the line) of a kubectl --prefix or stern line, else None."""
    first = raw[:1]
    if first == b"[":
        m = _KUBECTL_PREFIX.match(raw)
        if m is None:
            return None
        return None, m[1].decode(), m[2].decode(), raw[m.end() :]
    if not first.islower() and not first.isdigit():
        return None
    m = _STERN_PREFIX.match(raw)
    if m is None:
        return None
    return (m[1].decode() if m[1] else None), m[2].decode(), m[3].decode(), raw[m.end() :]


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


# Why a gated rule's match was kept without the readiness gate resting on the pod's istio-proxy lines.
NO_POD = "no-pod-metadata"
NO_PROXY = "no-proxy-lines"
NO_TIME = "no-timestamp"
_MAX_NOTED_PODS = 20
GROUP = "scan"  # the store's consumer group for a scan (its stream time)


@dataclass(slots=True)
class GateStats:
    """What the proxy-readiness gate did with the gated rules' matches in one scan."""

    applied: int = 0  # kept by the gate on both signals (the pod's istio-proxy lines were in the input)
    dropped: int = 0  # dropped by the gate: proxy ready long after start, or draining
    ungated: Counter[str] = field(default_factory=Counter)  # reason -> kept on the line rule alone
    pods: set[str] = field(default_factory=set)  # pods with matches but no istio-proxy lines (first few)
    rules: set[str] = field(default_factory=set)  # gated rules with lines kept on the line rule alone


@dataclass(slots=True)
class Stats:
    lines: int = 0  # physical lines read
    records: int = 0  # records handed to the pipeline (CRI partial lines joined)
    rejected: Counter[str] = field(default_factory=Counter)
    last_time: float | None = None  # the input's latest event time (lines near each batch's end, and matches)
    gate: GateStats = field(default_factory=GateStats)


def line_time(raw: bytes) -> float | None:
    """A physical line's own event time: its decoded time, else the time after its kubectl/stern prefix."""
    result = Decoder(Format.AUTO)(raw)
    if isinstance(result, LogRecord) and result.time is not None:
        return result.time
    named = named_source(raw)
    if named is not None and named[3]:
        inner = Decoder(Format.AUTO)(named[3])
        if isinstance(inner, LogRecord):
            return inner.time
    return None


class _FallbackTimes(Sequence[float]):
    """What the service's Kafka times are to the pipeline, for the lines of one batch: the event time of last
    resort, the latest time seen before the line. Read lazily (the pipeline reads it for decoded records only);
    0.0 ("none known": never used, never clamps) for a line with a time of its own."""

    def __init__(self, values: Sequence[bytes], before: float | None) -> None:
        self._values = values
        self._before = before or 0.0
        self._own: dict[int, float | None] = {}

    def _time(self, i: int) -> float | None:
        if i not in self._own:
            self._own[i] = line_time(self._values[i])
        return self._own[i]

    @overload
    def __getitem__(self, i: int) -> float: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[float]: ...
    def __getitem__(self, i: int | slice) -> float | Sequence[float]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if self._time(i) is not None:
            return 0.0
        for j in range(i - 1, max(-1, i - _LOOKBACK), -1):  # a multi-line message takes its head's time
            t = self._time(j)
            if t is not None:
                return t
        return self._before

    def __len__(self) -> int:
        return len(self._values)


def _edge_time(values: Sequence[bytes]) -> float | None:
    """The latest event time of a batch, from the lines nearest its end."""
    for raw in reversed(values[-_LOOKBACK:]):
        t = line_time(raw)
        if t is not None:
            return t
    return None


class _Fill:
    """The pipeline's ``fill`` hook: what a line's kubectl/stern prefix names, then the assumed metadata."""

    def __init__(self, values: Sequence[bytes], metadata: Metadata) -> None:
        self._values, self._metadata = values, metadata

    def __call__(self, i: int, record: LogRecord) -> LogRecord:
        if record.pod is None:
            named = named_source(self._values[i])
            if named is not None:
                namespace, pod, container, rest = named
                when = record.time
                if when is None:  # a prefix the decoder does not read: the time follows it
                    inner = Decoder(Format.AUTO)(rest) if rest else None
                    when = inner.time if isinstance(inner, LogRecord) else None
                record = replace(
                    record, namespace=record.namespace or namespace, pod=pod, container=container, time=when
                )
        return self._metadata.apply(record)


class _Joiner:
    """Physical lines -> record values: CRI partial lines joined (Fluent Bit does it before Kafka), with the
    physical line number that completed each record."""

    def __init__(self, fmt: Format, max_bytes: int) -> None:
        self._force = fmt is Format.CRI
        self._partials = PartialLines(max_bytes)
        self.lines = 0  # physical lines read
        self.too_large = 0

    def __call__(self, block: list[bytes]) -> tuple[list[bytes], list[int]]:
        base = self.lines
        self.lines += len(block)
        if not (self._force or self._partials or _CRI_PARTIAL.search(b"\n".join(block))):
            return block, list(range(base + 1, base + len(block) + 1))
        values: list[bytes] = []
        numbers: list[int] = []
        for n, raw in enumerate(block, base + 1):
            cri = split_cri(raw)
            if cri is None:
                values.append(raw)
                numbers.append(n)
                continue
            when, stream, partial, chunk = cri
            if partial:
                self._partials.add(stream, chunk, when)
                continue
            joined = self._partials.finish(stream, chunk, when)
            if isinstance(joined, int):
                self.too_large += 1
                continue
            text, first = joined
            values.append(raw if text is chunk else b"%s %s F %s" % (first, stream.encode(), text))
            numbers.append(n)
        return values, numbers

    def flush(self) -> tuple[list[bytes], list[int]]:
        """Partial lines still waiting for their final chunk at the end of the input, as whole lines."""
        values = [b"%s %s F %s" % (first, stream.encode(), text) for stream, text, first in self._partials.drain()]
        return values, [self.lines] * len(values)


def _batches(joiner: _Joiner, blocks: Iterable[list[bytes]], size: int) -> Iterator[tuple[list[bytes], list[int]]]:
    """(values, line numbers) in batches of at most ``size`` records."""
    for block in blocks:
        values, numbers = joiner(block)
        for start in range(0, len(values), size):
            yield values[start : start + size], numbers[start : start + size]
    values, numbers = joiner.flush()
    if values:
        yield values, numbers


def by_time(sources: Sequence[Iterable[list[bytes]]], size: int = BATCH) -> Iterator[list[bytes]]:
    """The lines of several files interleaved by event time, in blocks (one file: its blocks as they are).

    Files of one pod's containers arrive at the service interleaved by time (they ship concurrently); the
    proxy-readiness gate needs that order, whatever order the files are named in. A line without a time of
    its own keeps its place after the line before it.
    """
    if len(sources) == 1:
        yield from sources[0]
        return

    def timed(blocks: Iterable[list[bytes]]) -> Iterator[tuple[float, bytes]]:
        last = float("-inf")
        for block in blocks:
            for raw in block:
                t = line_time(raw)
                if t is not None:
                    last = t
                yield last, raw

    out: list[bytes] = []
    for _, raw in heapq.merge(*(timed(s) for s in sources), key=itemgetter(0)):
        out.append(raw)
        if len(out) >= size:
            yield out
            out = []
    if out:
        yield out


class _GateWatch:
    """The pipeline's ``on_gate`` hook: where the gate could not rest on the pod's istio-proxy lines."""

    def __init__(self, pipeline: Pipeline, default_cluster: str, stats: GateStats) -> None:
        self._pipeline, self._cluster, self.stats = pipeline, default_cluster, stats
        self.marks: dict[tuple[str, IncidentKey], list[tuple[float, str]]] = {}
        self._unknown: list[tuple[str, LogRecord, float]] = []  # pod named, no proxy signal seen yet

    def __call__(self, rule_id: str, record: LogRecord, when: float, admitted: bool) -> None:
        if not admitted:
            self.stats.dropped += 1
        elif not record.pod:
            self._mark(rule_id, record, when, NO_POD)
        elif record.time is None:  # judged at a neighbour's (or another file's) time
            self._mark(rule_id, record, when, NO_TIME)
        elif self._pipeline.readiness.knows(record):
            self.stats.applied += 1
        else:
            self._unknown.append((rule_id, record, when))

    def _mark(self, rule_id: str, record: LogRecord, when: float, reason: str) -> None:
        rule = self._pipeline.rules[rule_id]
        key = incidents.occurrence(rule, record, self._cluster, when).key
        self.marks.setdefault((rule_id, key), []).append((when, reason))
        self.stats.ungated[reason] += 1
        self.stats.rules.add(rule_id)

    def settle(self) -> None:
        """At the end of the input: the pod's istio-proxy lines may have come after the match."""
        for rule_id, record, when in self._unknown:
            if self._pipeline.readiness.knows(record):
                self.stats.applied += 1
                continue
            self._mark(rule_id, record, when, NO_PROXY)
            if len(self.stats.pods) < _MAX_NOTED_PODS:
                self.stats.pods.add(f"{record.namespace}/{record.pod}" if record.namespace else str(record.pod))
        self._unknown.clear()

    def reasons(self, rule_id: str, interval: Interval) -> tuple[tuple[str, int], ...]:
        marks = self.marks.get((rule_id, interval.key), [])
        found = Counter(r for t, r in marks if interval.first_seen <= t <= interval.last_seen)
        return tuple(sorted(found.items()))


def match_lines(
    catalogue: Catalogue, compiled: CompiledCatalogue, blocks: Iterable[list[bytes]], fmt: Format = Format.AUTO
) -> Iterator[tuple[int, LogRecord, tuple[Rule, ...]]]:
    """(line number, record, rules) of every record a rule matches: the pipeline's decode and match, per line."""
    pipeline = Pipeline(catalogue, compiled, default_cluster="-")
    prefilter = RecordPrefilter(compiled)
    joiner = _Joiner(fmt, MAX_RECORD_BYTES)
    for values, numbers in _batches(joiner, blocks, BATCH):
        fill = _Fill(values, Metadata())
        candidates = [i for i in prefilter(values).tolist() if values[i]]
        # the service's candidate decode and match; rejected records are skipped, as `match` reports matches only
        for i, record, owners in pipeline.match_candidates(values, candidates, BatchResult()):
            record = fill(i, record)
            rules = tuple(
                rule
                for owner in owners
                if (rule := pipeline.rules.get(owner)) is not None
                and rule.applies_to(record.container, record.namespace)
            )
            if rules:
                yield numbers[i], record, rules


@dataclass(frozen=True, slots=True)
class Incident:
    id: str  # the store's id
    interval: Interval
    rule: Rule
    status: Status
    # Lines of a gated rule kept without the readiness gate, by reason (see GateStats); empty when it applied.
    ungated: tuple[tuple[str, int], ...] = ()
    caused_by: str | None = None  # the root cause's id when this incident is a symptom (analyzer/causes.py)
    symptoms: tuple[Incident, ...] = ()  # a root cause's symptoms, earliest first
    affected: Affected | None = None  # a root cause's: what its symptoms cover
    # A root cause's status is its group's (open while a symptom is, as the API shows it); this is its own, as
    # the store derives it from its interval alone. None: the same as ``status``.
    own_status: Status | None = None

    @property
    def note(self) -> str | None:
        """Why this incident rests (partly) on the line rule alone, or None."""
        if not self.ungated:
            return None
        n = sum(count for _, count in self.ungated)
        why = ", ".join(f"{_REASON_TEXT[reason]}: {count}" for reason, count in self.ungated)
        return (
            f"the proxy-readiness gate could not be applied to {n} of {self.interval.count} lines ({why}); "
            "they count on the line rule alone, whatever the proxy's state"
        )


def with_causes(found: Sequence[Incident], rules: Mapping[str, Rule]) -> list[Incident]:
    """The incidents with their cause grouping: a symptom with its root's id, a root with its symptoms, what
    they affect, and its group status (open while a symptom is). Same order as ``found``."""
    grouping = causes.group((causes.Span.of(i.id, i.interval) for i in found), rules)
    if not grouping.root:
        return list(found)
    by_id = {i.id: i for i in found}
    symptoms_of = {
        root: tuple(replace(by_id[s], caused_by=root) for s in ids) for root, ids in grouping.symptoms.items()
    }
    out = []
    for i in found:
        if i.id in symptoms_of:
            group = symptoms_of[i.id]
            status = causes.group_status(i.status, (s.status for s in group))
            affected = grouping.affected_of(i.id)
            out.append(replace(i, status=status, own_status=i.status, symptoms=group, affected=affected))
        else:
            out.append(replace(i, caused_by=grouping.caused_by(i.id)))
    return out


def symptom_lines(incident: Incident) -> list[str]:
    """A root cause's symptoms, one line each, indented under it in the incident table (`scan`, `incidents`)."""
    if not incident.symptoms:
        return []
    a = incident.affected
    head = f"  symptoms: {len(incident.symptoms)} incident(s) caused by this"
    if a is not None:
        head += f", {a.workloads} workload(s), {a.pods} pod(s) affected"
    lines = [head]
    for s in incident.symptoms:
        k, rule = s.interval.key, s.rule
        lines.append(
            f"    ↳ {s.status.value.upper():<10} {rule.severity.value:<8} {rule.id}  [{rule.category.value}]  "
            f"{k.namespace}/{k.workload}  {s.interval.count} lines"
        )
    return lines


STATUS_ORDER = {Status.OPEN: 0, Status.PENDING: 1, Status.SUPPRESSED: 2, Status.RESOLVED: 3}
SEVERITY_ORDER = {"critical": 0, "high": 1, "medium": 2, "low": 3, "info": 4}
_REASON_TEXT = {
    NO_POD: "no pod metadata",
    NO_PROXY: "no istio-proxy lines for the pod",
    NO_TIME: "no timestamp of their own",
}
HOW_TO_GATE = (
    "give the pod's istio-proxy and app logs together, with timestamps: "
    "`kubectl logs POD --all-containers --prefix --timestamps | mesh-analyzer scan -`, "
    "`stern --timestamps POD | mesh-analyzer scan -`, or "
    "`mesh-analyzer scan --namespace NS --pod POD proxy.log app.log` "
    "(each file from `kubectl logs --timestamps POD -c CONTAINER`)"
)


def gate_notes(stats: GateStats) -> list[str]:
    """Lines for the user when the gate could not be applied to some matches; empty when it always was."""
    if not stats.ungated:
        return []
    n = sum(stats.ungated.values())
    why = ", ".join(f"{_REASON_TEXT[reason]}: {count}" for reason, count in sorted(stats.ungated.items()))
    notes = [
        f"{', '.join(sorted(stats.rules))}: the proxy-readiness gate (pod just started, or its istio-proxy not "
        f"ready) could not be applied to {n} matching lines ({why}); those incidents rest on the line rule alone"
    ]
    if stats.pods:
        notes.append(f"pods without istio-proxy lines in the input: {', '.join(sorted(stats.pods))}")
    notes.append("to apply the gate, " + HOW_TO_GATE)
    return notes


@dataclass(slots=True)
class ScanResult:
    incidents: list[Incident]  # known problems: status, then severity, then newest first
    unclassified: list[Incident]  # errors of mesh components no rule knows: most lines first
    stats: Stats
    stream_time: float  # where status was derived


def scan(
    catalogue: Catalogue,
    compiled: CompiledCatalogue,
    blocks: Iterable[list[bytes]],
    *,
    fmt: Format = Format.AUTO,
    metadata: Metadata | None = None,
    default_cluster: str = "-",
    stream_time: float | None = None,
    unclassified: bool = True,
    startup_window: float = 60.0,
    allowed_lateness: float = 30.0,
    batch: int = BATCH,
) -> ScanResult:
    """Incidents in the input, exactly as the service would store them from the same records.

    Batches of lines go through the service's ``Pipeline`` (proxy-readiness gate and unclassified lane
    included) and its store commit, into an in-memory SQLite store; the incidents are read back with the
    store's list query, status derived at ``stream_time`` (default: the input's last event time, or the latest
    occurrence time when the input has no times at all). ``compiled`` needs ``correlation.SIGNALS`` for the
    gate to see the proxy's readiness; without them every gated match counts on the line rule alone.
    """
    return asyncio.run(
        _scan(
            catalogue,
            compiled,
            blocks,
            fmt=fmt,
            metadata=metadata or Metadata(),
            default_cluster=default_cluster,
            stream_time=stream_time,
            registry=TemplateRegistry() if unclassified else None,
            startup_window=startup_window,
            allowed_lateness=allowed_lateness,
            batch=batch,
        )
    )


async def _scan(
    catalogue: Catalogue,
    compiled: CompiledCatalogue,
    blocks: Iterable[list[bytes]],
    *,
    fmt: Format,
    metadata: Metadata,
    default_cluster: str,
    stream_time: float | None,
    registry: TemplateRegistry | None,
    startup_window: float,
    allowed_lateness: float,
    batch: int,
) -> ScanResult:
    stats = Stats()
    pipeline = Pipeline(
        catalogue, compiled, default_cluster=default_cluster, startup_window=startup_window, unclassified=registry
    )
    watch = _GateWatch(pipeline, default_cluster, stats.gate)
    pipeline.on_gate = watch
    joiner = _Joiner(fmt, MAX_RECORD_BYTES)
    clock = StreamClock(time.time, allowed_lateness)  # as the service's consumer keeps it
    latest: float | None = None  # the latest occurrence time
    carry: float | None = None  # the last line time of the batches before: a line's time of last resort
    store = SqliteStore(":memory:")
    await store.open()
    try:
        for values, _ in _batches(joiner, blocks, batch):
            stats.records += len(values)
            result = pipeline(values, _FallbackTimes(values, carry), _Fill(values, metadata))
            stats.rejected.update(result.rejected)
            edge = _edge_time(values)
            carry = edge if edge is not None else carry
            for t in (edge, result.max_event_time):
                if t is not None and t > 0 and (stats.last_time is None or t > stats.last_time):
                    stats.last_time = t
            if result.max_event_time is not None:
                latest = result.max_event_time if latest is None else max(latest, result.max_event_time)
                clock.observe(result.max_event_time)
            now = clock.now()
            changes = Changes(merges=tuple(result.intervals), stream_time=now)
            await store.commit_batch(GROUP, changes, (), with_rules(pipeline.rules, result.unclassified_rules))
            pipeline.evict(now)
        watch.settle()
        stats.lines = joiner.lines
        if joiner.too_large:
            stats.rejected["too-large"] += joiner.too_large
        at = stream_time if stream_time is not None else stats.last_time
        if at is None:
            at = latest if latest is not None else time.time()
        rules = with_rules(pipeline.rules, registry.rules if registry is not None else {})
        known: list[Incident] = []
        unknown: list[Incident] = []
        async for row in _rows(store, at):
            rule = rules[row.rule_id]
            incident = Incident(row.id, row.interval, rule, row.status, watch.reasons(rule.id, row.interval))
            (unknown if registry is not None and rule.id in registry.rules else known).append(incident)
    finally:
        await store.close()
    known = with_causes(known, rules)
    known.sort(
        key=lambda i: (STATUS_ORDER[i.status], SEVERITY_ORDER[i.rule.severity.value], -i.interval.last_seen, i.rule.id)
    )
    unknown.sort(key=lambda i: (-i.interval.count, -i.interval.last_seen, i.rule.id))
    return ScanResult(known, unknown, stats, at)


async def _rows(store: SqliteStore, at: float) -> AsyncIterator[IncidentRow]:
    """Every stored incident, with its evidence, status at ``at``."""
    cursor = None
    while True:
        page = await store.list_incidents(IncidentQuery(limit=MAX_LIMIT, cursor=cursor, stream_time=at, now=at))
        for item in page.items:
            yield await store.get_incident(item.id, at, at) or item
        cursor = page.next_cursor
        if cursor is None:
            return
