"""The metric set, created against an injected registry. Few labels; never a pod name."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from analyzer.types import Rule

# Every reason a record can be skipped for (decoders and the pipeline's cheap checks).
REJECT_REASONS = ("empty", "too-large", "invalid-json", "invalid-utf8", "not-an-object", "missing-log", "partial")
STAGES = ("match", "store", "total")

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
        self.ready = Gauge("analyzer_ready", "1 when consuming and the store is reachable.", registry=registry)
        # Series exist from the start at 0: increase() and rate() miss a series whose first sample is already 1.
        for result in ("success", "failure"):
            self.reloads.labels(result)
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)
        for stage in STAGES:
            self.stage.labels(stage)

    def for_catalogue(self, rules: Iterable[Rule]) -> None:
        """Per-rule series at 0 for the running catalogue (called on load and reload)."""
        count = 0
        for rule in rules:
            count += 1
            self.matches.labels(rule.id, rule.category.value, rule.severity.value)
            self.suppressed.labels(rule.id)
            self.overflow.labels(rule.id)
        self.rules.set(count)
