"""Catalogue reloads (SIGHUP) between parts of a stream: the batches after each run on the new pipeline (and
through the ingest's thaw, collect and re-freeze of its heap); every per-key count ends exact."""

from __future__ import annotations

import os
import random
import signal
import time
import uuid
from collections.abc import Callable

import pytest

from analyzer.broker import LocalBroker
from tests.integration.support import Services, StoreView, create_topic, mixed_stream, produce, wait_consumed

pytestmark = pytest.mark.integration

RECORDS = 12_000
RELOADS = 2  # the stream in RELOADS + 1 parts, a reload between two


def test_reloads_mid_stream_keep_every_count_exact(
    broker: LocalBroker,
    services: Services,
    open_view: Callable[[str], StoreView],
    store_url: str,
    group: str,
) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    cluster = f"it-reload-{uuid.uuid4().hex[:8]}"
    topic = create_topic(broker.bootstrap, partitions=2, prefix="reload")
    stream = list(mixed_stream(RECORDS, cluster=cluster, rng=rng, t0=time.time() - 3600, bursts=(0.0, 1200.0)))
    cut = len(stream) // (RELOADS + 1)
    parts = [stream[:cut], *(stream[i * cut : (i + 1) * cut] for i in range(1, RELOADS)), stream[RELOADS * cut :]]

    view = open_view(store_url)
    service = services.spawn(
        bootstrap=broker.bootstrap, topics=[topic], group=group, store_url=store_url, cluster=cluster, max_records=200
    )
    produced = produce(broker.bootstrap, topic, parts[0], codec="lz4")
    for reload, part in enumerate(parts[1:], start=1):
        wait_consumed(view, group, topic, produced.ends, [service])
        os.kill(service.pid, signal.SIGHUP)  # the next batches run on the new pipeline
        deadline = time.monotonic() + 30
        while sum(e.get("event") == "catalogue reloaded" for e in service.log_events()) < reload:
            assert time.monotonic() < deadline, f"reload {reload} not logged (seed {seed}):\n{service.log_tail()}"
            time.sleep(0.05)
        produced.merge(produce(broker.bootstrap, topic, part, codec="lz4"))
    wait_consumed(view, group, topic, produced.ends, [service])
    assert view.counts() == produced.expected(), f"seed {seed}"
    assert service.alive(), service.log_tail()
