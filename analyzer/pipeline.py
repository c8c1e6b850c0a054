"""Pure orchestration: a batch of raw record values -> matches -> batch-local incident intervals.

Match first, parse later: the raw values are scanned for the catalogue's required literals, and only the
candidates are decoded (orjson) and matched exactly on their decoded text. The intervals a batch yields are
folded within the batch only; the store merges them into what it holds (the merge is commutative and
associative, so the result does not depend on how records were split into batches or consumers).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from analyzer import incidents
from analyzer.correlation import SIGNALS, ProxyReadiness
from analyzer.decode import Decoder, Format
from analyzer.match import CompiledCatalogue, Matcher, RecordPrefilter
from analyzer.types import Catalogue, IncidentKey, Interval, LogRecord, Occurrence, Rejected, Rule

CORRELATED_RULE = "app-started-before-proxy"


@dataclass(slots=True)
class BatchResult:
    intervals: list[Interval] = field(default_factory=list)
    matches: Counter[str] = field(default_factory=Counter)  # rule id -> matched lines
    rejected: Counter[str] = field(default_factory=Counter)  # reason -> records
    candidates: int = 0  # records decoded because the prefilter flagged them
    max_event_time: float | None = None
    overflowed: Counter[str] = field(default_factory=Counter)  # rule id -> occurrences sent to the overflow key


class KeyCap:
    """Caps the live keys per rule; occurrences of further keys fold into one overflow key, counted."""

    def __init__(self, max_keys_per_rule: int) -> None:
        self.max_keys = max_keys_per_rule
        self._live: dict[str, dict[tuple[str, str, str], float]] = {}

    def __call__(self, o: Occurrence, resolve_after: float, result: BatchResult) -> Occurrence:
        keys = self._live.setdefault(o.rule_id, {})
        ident = (o.key.cluster, o.key.namespace, o.key.workload)
        if ident in keys or len(keys) < self.max_keys:
            keys[ident] = max(keys.get(ident, o.time), o.time + resolve_after)
            return o
        result.overflowed[o.rule_id] += 1
        overflow = IncidentKey(o.key.cluster, "-", "(overflow)")
        return Occurrence(o.rule_id, overflow, o.time, o.evidence)

    def evict(self, stream_time: float) -> int:
        """Forget keys whose incidents have settled (quiet past resolve_after): memory follows stream time."""
        dropped = 0
        for keys in self._live.values():
            stale = [k for k, settles_at in keys.items() if settles_at < stream_time]
            for k in stale:
                del keys[k]
            dropped += len(stale)
        return dropped

    def __len__(self) -> int:
        return sum(len(k) for k in self._live.values())


class Pipeline:
    """Raw values (one Kafka batch) -> BatchResult. Holds only bounded per-pod and per-key state."""

    def __init__(
        self,
        catalogue: Catalogue,
        compiled: CompiledCatalogue,
        *,
        default_cluster: str,
        max_record_bytes: int = 1 << 20,
        max_keys_per_rule: int = 10_000,
        startup_window: float = 60.0,
    ) -> None:
        self.catalogue = catalogue
        self.rules: Mapping[str, Rule] = catalogue.by_id()
        self._matcher = Matcher(compiled)
        self._prefilter = RecordPrefilter(compiled)
        self._default_cluster = default_cluster
        self._max_bytes = max_record_bytes
        self.readiness = ProxyReadiness(startup_window=startup_window, state_ttl=3600.0)
        self.keys = KeyCap(max_keys_per_rule)

    def _decode(self, raw: bytes) -> LogRecord | Rejected:
        # A fresh decoder per record: Kafka records are complete lines (Fluent Bit joined any CRI partials),
        # and state shared across records of different partitions would mix pods.
        result = Decoder(Format.AUTO, max_line_bytes=self._max_bytes)(raw)
        return result if result is not None else Rejected("partial", "a CRI partial line without its final chunk")

    def __call__(self, values: Sequence[bytes], timestamps: Sequence[float]) -> BatchResult:
        """``timestamps``: the Kafka record times (seconds), the event time of last resort."""
        result = BatchResult()
        screened: list[int] = []
        for i, value in enumerate(values):
            if not value.strip():
                result.rejected["empty"] += 1
            elif len(value) > self._max_bytes:
                result.rejected["too-large"] += 1
            elif value[:1] == b"{" and value.rstrip()[-1:] != b"}":
                result.rejected["invalid-json"] += 1  # truncated: caught without parsing
            else:
                screened.append(i)
        kept = [values[i] for i in screened]
        candidates = [screened[j] for j in self._prefilter(kept).tolist()]
        result.candidates = len(candidates)

        found: list[tuple[float, LogRecord, tuple[str, ...]]] = []
        for i in candidates:
            record = self._decode(values[i])
            if isinstance(record, Rejected):
                result.rejected[record.reason] += 1
                continue
            owners = self._matcher.one(record.line)
            if owners:
                when = record.time if record.time is not None else timestamps[i]
                found.append((when, record, owners))
        # Signals and app lines of one pod can share a batch: feed them in event-time order.
        found.sort(key=lambda item: item[0])

        per_key: dict[tuple[str, object], list[Interval]] = {}
        for when, record, owners in found:
            if result.max_event_time is None or when > result.max_event_time:
                result.max_event_time = when
            for owner in owners:
                if owner in SIGNALS:
                    self.readiness.observe_signal(owner, record, when)
                    continue
                rule = self.rules.get(owner)
                if rule is None or not rule.applies_to(record.container, record.namespace):
                    continue
                if owner == CORRELATED_RULE and not self.readiness.admits(record, when):
                    continue
                result.matches[owner] += 1
                o = self.keys(
                    incidents.occurrence(rule, record, self._default_cluster, when), rule.resolve_after, result
                )
                per_key.setdefault((owner, o.key), []).append(incidents.singleton(o))
        for (owner, _), singles in per_key.items():
            result.intervals.extend(incidents.fold(singles, self.rules[owner].resolve_after))
        return result

    def evict(self, stream_time: float) -> int:
        return self.readiness.evict(stream_time) + self.keys.evict(stream_time)
