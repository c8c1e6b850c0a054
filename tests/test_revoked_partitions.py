"""A revoked partition drops its lag series: its new owner reports it, a frozen copy here would add to it."""

from __future__ import annotations

from pathlib import Path

from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from analyzer.config import Settings
from analyzer.incidents import StreamClock
from analyzer.ingest.kafka import KafkaIngest, _Rebalance
from analyzer.metrics import Metrics
from analyzer.store import open_store


def lag(registry: CollectorRegistry, partition: int) -> float | None:
    return registry.get_sample_value("analyzer_consumer_lag_records", {"topic": "logs", "partition": str(partition)})


async def test_revoked_partitions_lose_their_lag_series(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    ingest = KafkaIngest(
        Settings(),
        lambda: None,  # type: ignore[arg-type,return-value]  # no batch is processed here
        open_store(f"sqlite:///{tmp_path}/s.db"),
        metrics,
        StreamClock(lambda: 0.0),
    )
    for partition, behind in ((0, 5), (1, 7), (2, 0)):  # as the consumer's probe sets them
        metrics.lag.labels("logs", str(partition)).set(behind)
    await _Rebalance(ingest).on_partitions_revoked([TopicPartition("logs", 0), TopicPartition("logs", 2)])
    assert (lag(registry, 0), lag(registry, 1), lag(registry, 2)) == (None, 7, None)
    # Revoking a partition that never had a series (assigned, no probe yet) is fine.
    await _Rebalance(ingest).on_partitions_revoked([TopicPartition("logs", 9)])
    assert lag(registry, 1) == 7
