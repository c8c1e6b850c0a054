"""SIGTERM: the service finishes the batch in hand, stores it with its offsets, and exits 0."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import pytest

from analyzer.broker import LocalBroker
from tests.integration.support import Services, StoreView, create_topic, mixed_stream, produce

pytestmark = pytest.mark.integration

RECORDS = 20_000


def test_sigterm_stores_the_batch_and_exits_zero(
    broker: LocalBroker,
    services: Services,
    open_view: Callable[[str], StoreView],
    sqlite_url: str,
    group: str,
) -> None:
    topic = create_topic(broker.bootstrap, partitions=2, prefix="term")
    produced = produce(broker.bootstrap, topic, mixed_stream(RECORDS, cluster="it-term", rng=random.Random(3)))
    view = open_view(sqlite_url)
    service = services.spawn(
        bootstrap=broker.bootstrap,
        topics=[topic],
        group=group,
        store_url=sqlite_url,
        cluster="it-term",
        max_records=50,
    )
    deadline = time.monotonic() + 60
    while not view.offsets(group, topic):
        assert time.monotonic() < deadline and service.alive(), service.log_tail()
        time.sleep(0.01)

    assert service.terminate(timeout=40) == 0, service.log_tail()
    events = [e.get("event") for e in service.log_events()]
    assert "stopped" in events
    assert not [e for e in service.log_events() if e.get("level") in ("error", "critical")]
    stored = view.offsets(group, topic)
    assert sum(stored.values()) < RECORDS, "stopped mid-stream, not after draining the topic"
    # What was stored is exactly the records below the stored offsets: no half batch, nothing lost.
    assert view.counts() == produced.expected(upto=stored)
