"""The metric set, created against an injected registry. Few labels; never a pod name."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
        for result in ("success", "failure"):
            self.reloads.labels(result)
