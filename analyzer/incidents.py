"""Occurrences -> incidents: keys, the interval merge, derived status, stream time and the live tracker.

Pure: no I/O, the wall clock is injected. The merge is commutative and associative, so the final set of
intervals does not depend on arrival order, batch size or how keys are spread over consumers (as long as
no interval is evicted before late data that would extend it arrives: see ``StreamClock``).
"""

from __future__ import annotations

import heapq
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from analyzer.types import (
    Changes,
    Component,
    Evidence,
    IncidentKey,
    Interval,
    LogRecord,
    Occurrence,
    Rule,
    Status,
)

EVIDENCE_LINES = 5
MAX_PODS = 20
MAX_EVIDENCE_CHARS = 2000

OVERFLOW_WORKLOAD = "(overflow)"
# An event time this far past the wall clock is a broken clock, not data: it must not drag stream time along.
MAX_FUTURE = 300.0

# Pod-owner labels, most specific first.
_WORKLOAD_LABELS = ("service.istio.io/canonical-name", "app.kubernetes.io/name", "app", "k8s-app")
_REVISION_LABEL = "istio.io/rev"

# Kubernetes generates name suffixes from this alphabet (apimachinery util/rand: no vowels, no 0/1/3), so a
# suffix made of it is machine-made. Old ReplicaSet hashes and CronJob Job names are plain decimal.
_SAFE = "bcdfghjklmnpqrstvwxz2456789"
_REPLICASET = re.compile(rf"^(?P<base>.+)-[{_SAFE}0-9]{{6,10}}-[{_SAFE}]{{5}}$")
_GENERATED = re.compile(rf"^(?P<base>.+)-[{_SAFE}]{{5}}$")  # DaemonSet, Job, bare ReplicaSet pods
_ORDINAL = re.compile(r"^(?P<base>.+)-[0-9]+$")  # StatefulSet


def workload_of(pod: str | None, labels: Mapping[str, str]) -> str:
    """The workload a pod belongs to: from its labels, else its name without the generated suffixes."""
    for label in _WORKLOAD_LABELS:
        value = labels.get(label)
        if value:
            return value
    if not pod:
        return "-"
    for pattern in (_REPLICASET, _GENERATED, _ORDINAL):
        m = pattern.match(pod)
        if m:
            return m.group("base")
    return pod


def key_for(rule: Rule, record: LogRecord, default_cluster: str) -> IncidentKey:
    """The rule's grouping of a record: (cluster, namespace, workload); istiod groups by revision."""
    workload = None
    if rule.component is Component.ISTIOD:
        revision = record.labels.get(_REVISION_LABEL)
        if revision and revision != "default":
            workload = f"istiod-{revision}"
    if workload is None:
        workload = workload_of(record.pod, record.labels)
    return IncidentKey(record.cluster or default_cluster, record.namespace or "-", workload)


def _evidence_text(text: str) -> str:
    text = text.rstrip("\r\n")
    if len(text) > MAX_EVIDENCE_CHARS:
        return text[: MAX_EVIDENCE_CHARS - 1] + "\u2026"
    return text


def occurrence(rule: Rule, record: LogRecord, default_cluster: str, fallback_time: float) -> Occurrence:
    time = record.time if record.time is not None else fallback_time
    evidence = Evidence(time, _evidence_text(record.text), record.pod, record.container)
    return Occurrence(rule.id, key_for(rule, record, default_cluster), time, evidence)


def _evidence_order(e: Evidence) -> tuple[float, str, bool, str, bool, str]:
    # Total over every field, so equal keys mean identical evidence and truncation never depends on order.
    return (e.time, e.line, e.pod is not None, e.pod or "", e.container is not None, e.container or "")


def singleton(o: Occurrence) -> Interval:
    pods = (o.evidence.pod,) if o.evidence.pod else ()
    return Interval(o.rule_id, o.key, o.time, o.time, 1, (o.evidence,), (o.evidence,), pods)


def merge(a: Interval, b: Interval) -> Interval:
    """Commutative and associative: counts add, first/last are min/max, evidence keeps both ends."""
    if a.rule_id != b.rule_id or a.key != b.key:
        raise ValueError(f"cannot merge intervals of {a.rule_id}/{a.key} and {b.rule_id}/{b.key}")
    head = heapq.nsmallest(EVIDENCE_LINES, (*a.head, *b.head), key=_evidence_order)
    tail = heapq.nlargest(EVIDENCE_LINES, (*a.tail, *b.tail), key=_evidence_order)
    tail.reverse()
    pods = sorted(set(a.pods) | set(b.pods))[:MAX_PODS]
    return Interval(
        a.rule_id,
        a.key,
        min(a.first_seen, b.first_seen),
        max(a.last_seen, b.last_seen),
        a.count + b.count,
        tuple(head),
        tuple(tail),
        tuple(pods),
    )


def _touches(a: Interval, b: Interval, resolve_after: float) -> bool:
    """Overlapping, or the gap between them is at most resolve_after."""
    return b.first_seen - a.last_seen <= resolve_after and a.first_seen - b.last_seen <= resolve_after


def _sort_key(i: Interval) -> tuple[str, str, str, str, float]:
    return (i.rule_id, i.key.cluster, i.key.namespace, i.key.workload, i.first_seen)


def fold(intervals: Iterable[Interval], resolve_after: float) -> list[Interval]:
    """Merge every two intervals of one rule and key whose gap is at most resolve_after.

    The result (sorted by rule, key, first_seen) does not depend on the input order.
    """
    out: list[Interval] = []
    current: Interval | None = None
    for i in sorted(intervals, key=_sort_key):
        same_key = current is not None and (current.rule_id, current.key) == (i.rule_id, i.key)
        if current is not None and same_key and i.first_seen - current.last_seen <= resolve_after:
            current = merge(current, i)
            continue
        if current is not None:
            out.append(current)
        current = i
    if current is not None:
        out.append(current)
    return out


def status_of(
    first_seen: float, last_seen: float, transient: float | None, resolve_after: float, stream_time: float
) -> Status:
    """Status of an interval at a stream time. Derived, never stored (the store mirrors this in SQL)."""
    quiet = stream_time - last_seen
    if transient is None or last_seen - first_seen >= transient:
        return Status.OPEN if quiet < resolve_after else Status.RESOLVED
    if stream_time - first_seen < transient and quiet < resolve_after:
        return Status.PENDING
    return Status.SUPPRESSED


def status(interval: Interval, rule: Rule, stream_time: float) -> Status:
    return status_of(interval.first_seen, interval.last_seen, rule.transient, rule.resolve_after, stream_time)


class StreamClock:
    """Stream time: a watermark (highest event time seen minus the allowed lateness).

    While records keep arriving, stream time follows event time, so a replay of old data folds and resolves
    exactly as it did live. When the stream goes quiet, stream time advances with the wall clock from the
    last observation (never past ``wall - allowed_lateness``), so incidents still resolve. It steps back to
    the watermark when records resume with older event times: conservative, never evicts too early.
    Data later than the allowed lateness may start a new interval next to an evicted one.
    """

    def __init__(self, clock: Callable[[], float], allowed_lateness: float = 30.0) -> None:
        self._clock = clock
        self.allowed_lateness = allowed_lateness
        self._max_event: float | None = None
        self._wall_at_observe = 0.0

    def observe(self, event_time: float) -> None:
        """Record that an event with this time arrived (call per occurrence or batch, with the max)."""
        if not math.isfinite(event_time):
            return
        wall = self._clock()
        if event_time > wall + MAX_FUTURE:
            event_time = wall
        if self._max_event is None or event_time > self._max_event:
            self._max_event = event_time
        self._wall_at_observe = wall

    @property
    def watermark(self) -> float | None:
        return None if self._max_event is None else self._max_event - self.allowed_lateness

    def now(self) -> float:
        wall = self._clock()
        if self._max_event is None:
            return wall - self.allowed_lateness
        watermark = self._max_event - self.allowed_lateness
        drift = wall - self._wall_at_observe
        return max(watermark, min(wall - self.allowed_lateness, watermark + drift))


@dataclass(slots=True)
class _Pending:
    upserts: dict[str, Interval]
    deletes: set[str]


class IncidentTracker:
    """The live (unsettled) intervals per rule and key, and what changed since the last ``changes()``.

    Settled intervals are evicted from memory and live on in the store only. When a rule already has
    ``max_keys_per_rule`` live keys, a new key's occurrences fold into ``(cluster, "-", "(overflow)")`` and
    ``overflowed[rule_id]`` counts them: memory stays bounded and nothing is silently dropped.
    """

    def __init__(self, rules: Mapping[str, Rule], clock: StreamClock, *, max_keys_per_rule: int = 10000) -> None:
        self._rules = rules
        self._clock = clock
        self._max_keys = max_keys_per_rule
        self._live: dict[str, dict[IncidentKey, list[Interval]]] = {}
        self._pending = _Pending({}, set())
        self.overflowed: dict[str, int] = {}

    def add(self, occurrences: Iterable[Occurrence]) -> None:
        """Fold occurrences into the live intervals. Raises KeyError for a rule id not in ``rules``."""
        groups: dict[tuple[str, IncidentKey], list[Occurrence]] = {}
        new_keys: dict[str, set[IncidentKey]] = {}
        latest: float | None = None
        for o in occurrences:
            if o.rule_id not in self._rules:
                raise KeyError(f"occurrence of unknown rule {o.rule_id!r}")
            key = self._admit_key(o.rule_id, o.key, new_keys)
            groups.setdefault((o.rule_id, key), []).append(o)
            if latest is None or o.time > latest:
                latest = o.time
        if latest is not None:
            self._clock.observe(latest)
        for (rule_id, key), group in groups.items():
            for run in _runs(rule_id, key, group, self._rules[rule_id].resolve_after):
                self._absorb(run, stored=False)

    def _admit_key(self, rule_id: str, key: IncidentKey, new_keys: dict[str, set[IncidentKey]]) -> IncidentKey:
        live = self._live.get(rule_id, {})
        fresh = new_keys.setdefault(rule_id, set())
        if key in live or key in fresh:
            return key
        if len(live) + len(fresh) >= self._max_keys:
            self.overflowed[rule_id] = self.overflowed.get(rule_id, 0) + 1
            key = IncidentKey(key.cluster, "-", OVERFLOW_WORKLOAD)
            if key in live:
                return key
        fresh.add(key)
        return key

    def restore(self, intervals: Iterable[Interval]) -> None:
        """Load the live intervals read back from the store on start-up.

        Intervals of rules no longer in the catalogue are skipped; one whose id is already live is skipped
        (memory is at least as new as the store). Restored intervals that touch are merged, and that merge
        is reported by ``changes()``. The stream clock observes the latest restored event, so an ``evict()``
        right after start-up does not settle intervals that a replay is about to extend.
        """
        latest: float | None = None
        for interval in intervals:
            if interval.rule_id not in self._rules:
                continue
            live = self._live.get(interval.rule_id, {}).get(interval.key, [])
            if any(x.id == interval.id for x in live):
                continue
            self._absorb(interval, stored=True)
            if latest is None or interval.last_seen > latest:
                latest = interval.last_seen
        if latest is not None:
            self._clock.observe(latest)

    def _absorb(self, interval: Interval, *, stored: bool) -> None:
        """Merge ``interval`` into the live set. ``stored``: it came from the store (restore), so it is
        reported only if a merge replaced it, and its own id is then deleted too."""
        by_key = self._live.setdefault(interval.rule_id, {})
        others = by_key.get(interval.key, [])
        resolve_after = self._rules[interval.rule_id].resolve_after
        # One pass is enough: live intervals of a key never touch each other, so a further one that the
        # merged interval could reach would have to touch an absorbed neighbour, which it does not.
        replaced = [x for x in others if _touches(interval, x, resolve_after)]
        merged = interval
        for x in replaced:
            merged = merge(merged, x)
        others = [x for x in others if not _touches(interval, x, resolve_after)]
        others.append(merged)
        others.sort(key=lambda x: x.first_seen)
        by_key[interval.key] = others
        if stored:
            if not replaced:
                return
            replaced.append(interval)
        for old in replaced:
            if old.id != merged.id:
                self._pending.upserts.pop(old.id, None)
                self._pending.deletes.add(old.id)
        self._pending.deletes.discard(merged.id)
        self._pending.upserts[merged.id] = merged

    def changes(self) -> Changes:
        """Return and clear what changed since the last call (upserts and deletes are disjoint)."""
        pending, self._pending = self._pending, _Pending({}, set())
        return Changes(
            upserts=tuple(sorted(pending.upserts.values(), key=_sort_key)),
            deletes=tuple(sorted(pending.deletes)),
            stream_time=self._clock.now(),
        )

    def evict(self) -> int:
        """Drop intervals settled at the current stream time (they stay in the store); return how many."""
        now = self._clock.now()
        dropped = 0
        for rule_id, by_key in self._live.items():
            rule = self._rules[rule_id]
            for key in list(by_key):
                keep = [i for i in by_key[key] if not _settled(i, rule, now)]
                dropped += len(by_key[key]) - len(keep)
                if keep:
                    by_key[key] = keep
                else:
                    del by_key[key]
        return dropped

    def live_count(self) -> int:
        return sum(len(ivs) for by_key in self._live.values() for ivs in by_key.values())

    def live_intervals(self) -> list[Interval]:
        return sorted((i for by_key in self._live.values() for ivs in by_key.values() for i in ivs), key=_sort_key)

    @property
    def stream_time(self) -> float:
        return self._clock.now()


def _settled(interval: Interval, rule: Rule, stream_time: float) -> bool:
    if stream_time - interval.last_seen < rule.resolve_after:
        return False
    return status(interval, rule, stream_time) in (Status.RESOLVED, Status.SUPPRESSED)


def _runs(rule_id: str, key: IncidentKey, group: list[Occurrence], resolve_after: float) -> list[Interval]:
    """Fold one key's occurrences of a batch at once: the same result as merging singletons, sorted once."""
    group.sort(key=lambda o: o.time)
    runs: list[list[Occurrence]] = [[group[0]]]
    for o in group[1:]:
        if o.time - runs[-1][-1].time <= resolve_after:
            runs[-1].append(o)
        else:
            runs.append([o])
    out = []
    for run in runs:
        evidence = sorted((o.evidence for o in run), key=_evidence_order)
        pods = sorted({o.evidence.pod for o in run if o.evidence.pod})[:MAX_PODS]
        out.append(
            Interval(
                rule_id,
                key,
                run[0].time,
                run[-1].time,
                len(run),
                tuple(evidence[:EVIDENCE_LINES]),
                tuple(evidence[-EVIDENCE_LINES:]),
                tuple(pods),
            )
        )
    return out
