"""Exactly once: SIGKILL the service at random points of a stream; every per-key count ends exact."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable

import pytest

from analyzer.broker import LocalBroker
from tests.integration.support import Services, StoreView, create_topic, mixed_stream, produce, wait_consumed

pytestmark = pytest.mark.integration

RECORDS = 24_000
KILLS = 4


def test_sigkill_restarts_count_every_occurrence_once(
    broker: LocalBroker,
    services: Services,
    open_view: Callable[[str], StoreView],
    store_url: str,
    group: str,
) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    cluster = f"it-eo-{uuid.uuid4().hex[:8]}"
    topic = create_topic(broker.bootstrap, partitions=3, prefix="eo")
    # Two bursts per key, 20 minutes apart (past every resolve_after): several intervals per key.
    stream = mixed_stream(RECORDS, cluster=cluster, rng=rng, t0=time.time() - 3600, bursts=(0.0, 1200.0))
    produced = produce(broker.bootstrap, topic, stream, codec="lz4")
    expected = produced.expected()
    assert len(expected) == 5 and sum(expected.values()) > RECORDS // 20

    view = open_view(store_url)
    service = services.spawn(
        bootstrap=broker.bootstrap, topics=[topic], group=group, store_url=store_url, cluster=cluster, max_records=250
    )
    thresholds = sorted(rng.sample(range(RECORDS // 10, RECORDS * 9 // 10), KILLS))
    kills_mid_stream = 0
    for threshold in thresholds:
        deadline = time.monotonic() + 60
        while sum(view.offsets(group, topic).values()) < threshold:
            assert service.alive(), service.log_tail()
            assert time.monotonic() < deadline, f"no progress to {threshold} (seed {seed}):\n{service.log_tail()}"
            time.sleep(0.01)
        service.kill()
        # Whatever the moment of the kill, the store holds exactly the counts of the records below its offsets.
        stored = view.offsets(group, topic)
        assert view.counts() == produced.expected(upto=stored), f"seed {seed}, killed at {stored}"
        kills_mid_stream += sum(stored.values()) < RECORDS
        service = services.restart(service)
    assert kills_mid_stream == KILLS, "every kill landed before the end of the stream"

    wait_consumed(view, group, topic, produced.ends, [service])
    assert view.counts() == expected, f"seed {seed}"
