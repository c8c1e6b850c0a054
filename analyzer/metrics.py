"""The metric set, created against an injected registry. Few labels; never a pod name."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from analyzer.types import Rule
from analyzer.unclassified import COMPONENTS as UNCLASSIFIED_COMPONENTS

# Every reason a record can be skipped for (decoders and the pipeline's cheap checks).
REJECT_REASONS = ("empty", "too-large", "invalid-json", "invalid-utf8", "not-an-object", "missing-log", "partial")
STAGES = ("match", "store", "total")
RETENTION_KINDS = ("incidents", "aliases", "silences")

_STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.records = Counter("analyzer_records_consumed", "Kafka records consumed.", ["topic"], registry=registry)
        self.bytes = Counter(
            "analyzer_bytes_consumed", "Bytes of record values consumed.", ["topic"], registry=registry
        )
        self.rejected = Counter(
            "analyzer_records_rejected", "Records skipped as malformed, by reason.", ["reason"], registry=registry
        )
        self.matches = Counter(
            "analyzer_rule_matches", "Log lines matched, by rule.", ["rule", "category", "severity"], registry=registry
        )
        self.incidents = Gauge(
            "analyzer_incidents",
            "Incidents in the store by derived status.",
            ["status", "category", "severity"],
            registry=registry,
        )
        self.open_roots = Gauge(
            "analyzer_open_roots",
            "Open incidents that are no other incident's symptom: root causes (open while one of their symptoms "
            "is) and standalone incidents, by the root's category and the most severe open member's severity; "
            "symptoms grouped under a root are not counted on their own.",
            ["category", "severity"],
            registry=registry,
        )
        self.suppressed = Counter(
            "analyzer_transients_suppressed",
            "Incidents that ended within their transient window (counted, not alerted).",
            ["rule"],
            registry=registry,
        )
        self.stage = Histogram(
            "analyzer_batch_duration_seconds",
            "Time spent per batch, by stage.",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=registry,
        )
        self.lag = Gauge(
            "analyzer_consumer_lag_records",
            "Records behind the partition end.",
            ["topic", "partition"],
            registry=registry,
        )
        self.watermark_age = Gauge("analyzer_watermark_age_seconds", "Wall clock minus stream time.", registry=registry)
        self.reloads = Counter(
            "analyzer_catalogue_reloads", "Catalogue reloads, by result.", ["result"], registry=registry
        )
        self.rules = Gauge("analyzer_catalogue_rules", "Rules in the running catalogue.", registry=registry)
        self.live_intervals = Gauge(
            "analyzer_live_intervals", "Unsettled incident intervals held in memory.", registry=registry
        )
        self.overflow = Counter(
            "analyzer_incident_keys_overflow",
            "Occurrences folded into the overflow key because a rule reached its live-key cap.",
            ["rule"],
            registry=registry,
        )
        self.clamped = Counter(
            "analyzer_event_time_clamped",
            "Records whose event time was more than MAX_FUTURE past their Kafka time (a node clock ahead), "
            "clamped to the Kafka time.",
            registry=registry,
        )
        self.retention_deleted = Counter(
            "analyzer_retention_deleted",
            "Rows deleted by retention: resolved incidents (and their aliases) older than ANALYZER_RETENTION, "
            "expired silences.",
            ["kind"],
            registry=registry,
        )
        self.streams = Gauge("analyzer_sse_streams", "Open /v1/incidents/stream responses.", registry=registry)
        self.streams_refused = Counter(
            "analyzer_sse_streams_refused", "Streams refused (503) at ANALYZER_MAX_STREAMS.", registry=registry
        )
        self.ready = Gauge("analyzer_ready", "1 when consuming and the store is reachable.", registry=registry)
        # The lane for errors no rule knows (analyzer/unclassified.py): by component, never by template.
        self.unclassified = Counter(
            "analyzer_unclassified_lines",
            "Error lines of mesh components that no rule matched (unclassified incidents), by component.",
            ["component"],
            registry=registry,
        )
        self.unclassified_overflow = Counter(
            "analyzer_unclassified_overflow_lines",
            "Unclassified lines folded into the overflow template because the template limit was reached.",
            ["component"],
            registry=registry,
        )
        self.unclassified_templates = Gauge(
            "analyzer_unclassified_templates", "Unclassified templates held in memory.", registry=registry
        )
        for component in UNCLASSIFIED_COMPONENTS:
            self.unclassified.labels(component)
            self.unclassified_overflow.labels(component)
        # Series exist from the start at 0: increase() and rate() miss a series whose first sample is already 1.
        for result in ("success", "failure"):
            self.reloads.labels(result)
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)
        for stage in STAGES:
            self.stage.labels(stage)
        for kind in RETENTION_KINDS:
            self.retention_deleted.labels(kind)

    def set_open_roots(self, rows: Iterable[tuple[str, str, int]]) -> None:
        """Replace the analyzer_open_roots series with (category, severity, count) rows."""
        self.open_roots.clear()
        for category, severity, count in rows:
            self.open_roots.labels(category, severity).set(count)

    def drop_partitions(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Forget the lag series of partitions this consumer no longer owns (another replica reports them)."""
        for topic, partition in partitions:
            with contextlib.suppress(KeyError):
                self.lag.remove(topic, str(partition))

    def for_catalogue(self, rules: Iterable[Rule]) -> None:
        """Per-rule series at 0 for the running catalogue (called on load and reload)."""
        count = 0
        for rule in rules:
            count += 1
            self.matches.labels(rule.id, rule.category.value, rule.severity.value)
            self.suppressed.labels(rule.id)
            self.overflow.labels(rule.id)
        self.rules.set(count)
