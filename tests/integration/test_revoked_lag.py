"""A partition that moves to another replica in a rebalance leaves this replica's lag series (a real broker and
two service processes): the sum of analyzer_consumer_lag_records over replicas counts each partition once."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable

import pytest

from analyzer.broker import LocalBroker
from tests.integration.support import (
    ServiceProcess,
    Services,
    StoreView,
    create_topic,
    mixed_stream,
    poll,
    produce,
    wait_consumed,
)

pytestmark = pytest.mark.integration

PARTITIONS = 4


def lag_partitions(service: ServiceProcess, topic: str) -> set[int]:
    return {
        int(dict(labels)["partition"])
        for (name, labels), _ in service.metrics().items()
        if name == "analyzer_consumer_lag_records" and dict(labels).get("topic") == topic
    }


def owned(service: ServiceProcess, topic: str) -> set[int]:
    """The partitions of the service's latest assignment, from its log."""
    events = [e for e in service.log_events() if e.get("event") == "partitions assigned"]
    if not events:
        return set()
    return {int(p.rsplit("/", 1)[1]) for p in events[-1]["partitions"] if p.startswith(f"{topic}/")}


def test_a_revoked_partition_drops_its_lag_series(
    sqlite_url: str,
    open_view: Callable[[str], StoreView],
    services: Services,
    broker: LocalBroker,
    group: str,
) -> None:
    cluster = f"it-lag-{uuid.uuid4().hex[:8]}"
    topic = create_topic(broker.bootstrap, partitions=PARTITIONS, prefix="lag")
    produced = produce(broker.bootstrap, topic, mixed_stream(400, cluster=cluster, rng=random.Random(3)))
    view = open_view(sqlite_url)

    def spawn() -> ServiceProcess:
        return services.spawn(
            bootstrap=broker.bootstrap, topics=[topic], group=group, store_url=sqlite_url, cluster=cluster
        )

    first = spawn()
    wait_consumed(view, group, topic, produced.ends, [first], timeout=60)
    written = {p for p, end in produced.ends.items() if end > 0}
    assert len(written) >= 2, produced.ends  # records keyed by pod: more than one partition has data
    poll(lambda: lag_partitions(first, topic) == written, 30, 0.2, "lag of every partition with data")

    second = spawn()
    poll(lambda: owned(second, topic) != set(), 60, 0.2, "the second replica assigned")
    poll(lambda: len(owned(first, topic)) < PARTITIONS, 60, 0.2, "the first replica gave partitions up")
    mine, theirs = owned(first, topic), owned(second, topic)
    assert mine | theirs == set(range(PARTITIONS)) and not mine & theirs
    assert written - mine, "some partition with data moved to the second replica"
    # The first replica reports only what it owns now; the second reports what it took over (once probed).
    poll(lambda: lag_partitions(first, topic) == mine & written, 30, 0.2, "revoked series dropped")
    poll(lambda: lag_partitions(second, topic) == theirs & written, 30, 0.2, "the new owner's series")
