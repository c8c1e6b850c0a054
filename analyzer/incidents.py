"""Occurrences -> incidents: keys, the interval merge, derived status and stream time.

Pure: no I/O, the wall clock is injected. The merge is commutative and associative, so the final set of
intervals does not depend on arrival order, batch size or how keys are spread over consumers. The store
applies the same merge to what it holds (analyzer.store.sql), so there is one fold, not a second live copy.
"""

from __future__ import annotations

import heapq
import math
import re
from collections.abc import Callable, Iterable, Mapping

from analyzer.types import (
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
        workload = record.workload or workload_of(record.pod, record.labels)
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


def evidence_order(e: Evidence) -> tuple[float, str, bool, str, bool, str]:
    # Total over every field, so equal keys mean identical evidence and truncation never depends on order.
    return (e.time, e.line, e.pod is not None, e.pod or "", e.container is not None, e.container or "")


def singleton(o: Occurrence) -> Interval:
    pods = (o.evidence.pod,) if o.evidence.pod else ()
    return Interval(o.rule_id, o.key, o.time, o.time, 1, (o.evidence,), (o.evidence,), pods)


def merge(a: Interval, b: Interval) -> Interval:
    """Commutative and associative: counts add, first/last are min/max, evidence keeps both ends."""
    if a.rule_id != b.rule_id or a.key != b.key:
        raise ValueError(f"cannot merge intervals of {a.rule_id}/{a.key} and {b.rule_id}/{b.key}")
    head = heapq.nsmallest(EVIDENCE_LINES, (*a.head, *b.head), key=evidence_order)
    tail = heapq.nlargest(EVIDENCE_LINES, (*a.tail, *b.tail), key=evidence_order)
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
    the watermark when records resume with older event times. Lateness only delays status changes and the
    pipeline's bookkeeping: the store merges a late line into its incident however late it comes.
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

    def now(self) -> float:
        wall = self._clock()
        if self._max_event is None:
            return wall - self.allowed_lateness
        watermark = self._max_event - self.allowed_lateness
        drift = wall - self._wall_at_observe
        return max(watermark, min(wall - self.allowed_lateness, watermark + drift))
