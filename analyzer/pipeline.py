"""Pure orchestration: a batch of raw record values -> matches -> batch-local incident intervals.

Match first, parse later: the raw values are scanned for the catalogue's required literals, and only the
candidates are decoded (orjson) and matched exactly on their decoded text. The intervals a batch yields are
folded within the batch only; the store merges them into what it holds (the merge is commutative and
associative, so the result does not depend on how records were split into batches or consumers).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import orjson

from analyzer import incidents
from analyzer.correlation import GATED_RULES, SIGNALS, ProxyReadiness
from analyzer.decode import Decoder, Format, record_from_mapping
from analyzer.decode.docker import log_line
from analyzer.decode.events import event_object, record_from_event
from analyzer.match import CompiledCatalogue, Matcher, RecordPrefilter
from analyzer.match.levels import CombinedPrefilter, LevelWords
from analyzer.types import Catalogue, IncidentKey, Interval, LogRecord, Occurrence, Rejected, Rule
from analyzer.unclassified import LEVELS, RESOLVE_AFTER, Lane, TemplateRegistry


@dataclass(slots=True)
class BatchResult:
    intervals: list[Interval] = field(default_factory=list)
    matches: Counter[str] = field(default_factory=Counter)  # rule id -> matched lines
    rejected: Counter[str] = field(default_factory=Counter)  # reason -> records
    candidates: int = 0  # records decoded because the prefilter flagged them
    max_event_time: float | None = None
    clamped: int = 0  # event times too far past their record's Kafka time (a node clock ahead), clamped to it
    overflowed: Counter[str] = field(default_factory=Counter)  # rule id -> occurrences sent to the overflow key
    # The unclassified lane: component -> lines, component -> lines sent to the overflow template, and the
    # synthetic rule of every unclassified rule id in ``intervals`` (the store needs a rule for each).
    unclassified: Counter[str] = field(default_factory=Counter)
    unclassified_overflow: Counter[str] = field(default_factory=Counter)
    unclassified_rules: dict[str, Rule] = field(default_factory=dict)


def _event_time(record: LogRecord, kafka_time: float, result: BatchResult) -> tuple[float, LogRecord]:
    """The record's event time (its line's, else the Kafka time), at most MAX_FUTURE past the Kafka time.

    A node clock running ahead would otherwise make an incident that sorts first and never resolves. Such a
    time is replaced by the Kafka time (the best estimate of when the line was written) and counted. A Kafka
    time of 0 or less means none is known (files, tests): the line's time is kept.
    """
    if record.time is None:
        return kafka_time, record
    if kafka_time > 0 and record.time > kafka_time + incidents.MAX_FUTURE:
        result.clamped += 1
        return kafka_time, replace(record, time=kafka_time)
    return record.time, record


def _rejected(values: Sequence[bytes], suspects: Iterable[int], max_bytes: int, counts: Counter[str]) -> set[int]:
    """The suspects refused without decoding, counted by reason."""
    out = set()
    for i in suspects:
        value = values[i]
        if not value or value.isspace():
            counts["empty"] += 1
        elif len(value) > max_bytes:
            counts["too-large"] += 1
        elif value[0] == 0x7B and value.rstrip()[-1:] != b"}":
            counts["invalid-json"] += 1  # "{" without its "}": truncated, caught without parsing
        else:
            continue
        out.add(i)
    return out


def _first_id(expr_id: int, _from: int, _to: int, _flags: int, ids: list[int]) -> None:
    ids.append(expr_id)  # (stopping the scan at the first match raises ScanTerminated: not worth it)


def _undecodable(raw: bytes) -> Rejected:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return Rejected("invalid-utf8", "a JSON record that is not UTF-8")
    return Rejected("invalid-json", "a record that starts like JSON but does not parse")


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
        unclassified: TemplateRegistry | None = None,  # None: no lane for errors no rule knows
    ) -> None:
        self.catalogue = catalogue
        self.rules: Mapping[str, Rule] = catalogue.by_id()
        self._matcher = Matcher(compiled)
        self._prefilter: RecordPrefilter | CombinedPrefilter = RecordPrefilter(compiled)
        self._default_cluster = default_cluster
        self._max_bytes = max_record_bytes
        self.readiness = ProxyReadiness(startup_window=startup_window, state_ttl=3600.0)
        self.keys = KeyCap(max_keys_per_rule)
        self.unclassified = unclassified
        self._exact = compiled.db
        # The lane needs the error lines no rule literal flags: one scan flags both (rule literals, level words).
        if unclassified is not None:
            self._prefilter = CombinedPrefilter(compiled)
            self._level_words = LevelWords()
        self._lane = None if unclassified is None else Lane(unclassified, default_cluster)
        # Told of every gated match (rule id, record, event time, admitted): `scan` reports where the gate
        # could not rest on the pod's istio-proxy lines. None in the service.
        self.on_gate: Callable[[str, LogRecord, float, bool], None] | None = None

    def _decode_candidate(self, raw: bytes) -> tuple[bytes, LogRecord | dict[str, object]] | Rejected:
        """Decode just enough to match: (the line to match, its record or, for a Fluent Bit envelope, the
        parsed object the record is built from if the line matches)."""
        if raw[0] == 0x7B:
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError:
                return _undecodable(raw)
            if type(obj) is dict:
                if event_object(obj) is not None:  # a Kubernetes event: matched on its canonical text
                    event = record_from_event(obj, max_line_bytes=self._max_bytes)
                    return event if isinstance(event, Rejected) else (event.line, event)
                text = obj.get("log")
                if type(text) is not str:
                    text = obj.get("message")
                if type(text) is str:
                    return log_line(text), obj
        # CRI, plain lines and JSON lines that are not envelopes (Istio --log_as_json, Envoy JSON access logs).
        # A fresh decoder per record: Fluent Bit joined any CRI partials, and state shared across records of
        # different partitions would mix pods.
        decoded = Decoder(Format.AUTO, max_line_bytes=self._max_bytes)(raw)
        if decoded is None:
            return Rejected("partial", "a CRI partial line without its final chunk")
        return decoded if isinstance(decoded, Rejected) else (decoded.line, decoded)

    def match_candidates(
        self, values: Sequence[bytes], candidates: Sequence[int], result: BatchResult
    ) -> list[tuple[int, LogRecord, tuple[str, ...]]]:
        """(index, record, owners) of the candidates that match. One exact scan for all the candidates' lines
        (a scan call has a fixed cost that a large database makes dear); full records built for matches only."""
        decoded: list[tuple[int, LogRecord | dict[str, object]]] = []
        lines: list[bytes] = []
        for i in candidates:
            d = self._decode_candidate(values[i])
            if isinstance(d, Rejected):
                result.rejected[d.reason] += 1
            else:
                lines.append(d[0])
                decoded.append((i, d[1]))
        out = []
        # The prefilter flagged these lines already: the exact database only, not the Matcher's two stages.
        for j, owners in self._matcher.exact(lines):
            i, source = decoded[j]
            if isinstance(source, LogRecord):
                out.append((i, source, owners))
                continue
            record = record_from_mapping(source, max_line_bytes=self._max_bytes)
            if isinstance(record, Rejected):
                result.rejected[record.reason] += 1
            else:
                out.append((i, record, owners))
        return out

    def __call__(
        self,
        values: Sequence[bytes],
        timestamps: Sequence[float],
        fill: Callable[[int, LogRecord], LogRecord] | None = None,
    ) -> BatchResult:
        """``timestamps``: the Kafka record times (seconds), the event time of last resort (read only for the
        records decoded). ``fill(index, record)``: metadata for decoded records that carry none (`scan`)."""
        result = BatchResult()
        hits, suspects = self._prefilter.screened(values, self._max_bytes)
        rejected = _rejected(values, suspects.tolist(), self._max_bytes, result.rejected)
        candidates = [i for i in hits.tolist() if i not in rejected] if rejected else hits.tolist()
        result.candidates = len(candidates)

        found: list[tuple[float, LogRecord, tuple[str, ...]]] = []
        for i, record, owners in self.match_candidates(values, candidates, result):
            if fill is not None:
                record = fill(i, record)
            when, record = _event_time(record, timestamps[i], result)
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
                if owner in GATED_RULES:
                    admitted = self.readiness.admits(record, when)
                    if self.on_gate is not None:
                        self.on_gate(owner, record, when, admitted)
                    if not admitted:
                        continue
                result.matches[owner] += 1
                o = self.keys(
                    incidents.occurrence(rule, record, self._default_cluster, when), rule.resolve_after, result
                )
                per_key.setdefault((owner, o.key), []).append(incidents.singleton(o))
        for (owner, _), singles in per_key.items():
            result.intervals.extend(incidents.fold(singles, self.rules[owner].resolve_after))
        if self._lane is not None:  # the combined prefilter flagged the level words too
            self._unclassified(values, timestamps, candidates, result, fill)
        return result

    def sizes(self) -> tuple[int, int]:
        """(live keys, live unclassified templates). Read it on the thread that runs the pipeline: it walks
        state the batches change (the ingest calls it after each batch and each eviction)."""
        return len(self.keys), len(self.unclassified) if self.unclassified is not None else 0

    def _unclassified(
        self,
        values: Sequence[bytes],
        timestamps: Sequence[float],
        hits: list[int],
        result: BatchResult,
        fill: Callable[[int, LogRecord], LogRecord] | None = None,
    ) -> None:
        """Error lines of mesh components that no catalogue expression matched -> unclassified intervals.

        Only records with a level word are looked at (most candidates hold a rule literal and no level word);
        they are decoded again, apart from the catalogue path, which keeps that path untouched for the lines
        that are not errors.
        """
        lane, registry = self._lane, self.unclassified
        assert lane is not None and registry is not None
        per_key: dict[tuple[str, IncidentKey], list[Interval]] = {}
        for i in hits:
            if not self._level_words(values[i]):
                continue
            record = Decoder(Format.AUTO, max_line_bytes=self._max_bytes)(values[i])
            if not isinstance(record, LogRecord) or record.level not in LEVELS:
                continue
            if fill is not None:
                record = fill(i, record)
            ids: list[int] = []
            self._exact.scan(record.line, match_event_handler=_first_id, context=ids)
            if ids:
                continue  # a rule (or a rule's look-alike exclusion) knows this line
            when, record = _event_time(record, timestamps[i], result)
            found = lane(record, when)
            if found is None:
                continue
            component, rid = found.template.component, found.template.rule_id
            result.unclassified[component] += 1
            if found.overflow:
                result.unclassified_overflow[component] += 1
            result.unclassified_rules[rid] = registry.rules[rid]
            if result.max_event_time is None or when > result.max_event_time:
                result.max_event_time = when
            o = self.keys(found.occurrence, RESOLVE_AFTER, result)
            per_key.setdefault((rid, o.key), []).append(incidents.singleton(o))
        for singles in per_key.values():
            result.intervals.extend(incidents.fold(singles, RESOLVE_AFTER))

    def evict(self, stream_time: float) -> int:
        if self.unclassified is not None:
            self.unclassified.note_stream_time(stream_time)
        return self.readiness.evict(stream_time) + self.keys.evict(stream_time)
