"""Fluent Bit records in every librdkafka codec -> the real service -> incidents in the store."""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from collections.abc import Callable

import pytest

from analyzer.broker import LocalBroker
from analyzer.types import Status
from tests.integration.support import (
    CODECS,
    CountKey,
    Message,
    Produced,
    Services,
    StoreView,
    apiserver_error,
    create_topic,
    fluent_bit_record,
    istiod_pod,
    kafka_committed,
    mixed_stream,
    poll,
    produce,
    wait_consumed,
)

pytestmark = pytest.mark.integration

# With the burst layout below (one 120 s burst ending ~8 min ago), at the wall clock: rules with a transient
# window (5 min) stopped within it -> suppressed; rules without one are still inside resolve_after -> open.
STATUS_NOW = {
    "istiod-apiserver-unreachable": Status.SUPPRESSED,
    "access-upstream-no-healthy": Status.SUPPRESSED,
    "istiod-xds-nack": Status.OPEN,
    "proxy-envoy-crashed": Status.OPEN,
    "istio-init-iptables-failure": Status.OPEN,
}


def test_every_codec_end_to_end(
    broker: LocalBroker,
    services: Services,
    open_view: Callable[[str], StoreView],
    sqlite_url: str,
    group: str,
) -> None:
    cluster = f"it-e2e-{uuid.uuid4().hex[:8]}"
    rng = random.Random(20261125)
    t0 = time.time() - 600
    topics: dict[str, str] = {}
    produced: dict[str, Produced] = {}
    for codec in CODECS:
        topics[codec] = create_topic(broker.bootstrap, partitions=2, prefix=f"e2e-{codec}")
        stream = mixed_stream(600, cluster=cluster, rng=rng, match_ratio=0.2, t0=t0, namespace_suffix=f"-{codec}")
        produced[codec] = produce(broker.bootstrap, topics[codec], stream, codec=codec)

    service = services.spawn(
        bootstrap=broker.bootstrap, topics=topics.values(), group=group, store_url=sqlite_url, cluster=cluster
    )
    view = open_view(sqlite_url)
    for codec, topic in topics.items():
        wait_consumed(view, group, topic, produced[codec].ends, [service])

    counts = view.counts()
    for codec in CODECS:
        expected = produced[codec].expected()
        assert len(expected) == 5, "every source appears in the stream"
        got = {k: n for k, n in counts.items() if k[2].endswith(f"-{codec}")}
        assert got == dict(expected), f"codec {codec}"
    total: Counter[CountKey] = Counter()
    for p in produced.values():
        total += p.expected()
    assert counts == total, "no incident from a line that matches no rule"

    now = time.time()
    rows = view.incidents(stream_time=now, evidence=True)
    assert len(rows) == len(total), "one burst per key: one interval each"
    for row in rows:
        assert row.key.cluster == cluster
        assert row.status is STATUS_NOW[row.rule_id], (row.rule_id, row.key, row.first_seen - t0, row.last_seen - t0)
        assert t0 <= row.first_seen <= row.last_seen <= t0 + 120
        assert row.head and row.tail and len(row.head) <= 5 and len(row.tail) <= 5
        assert row.pods
    assert service.alive()


def test_apiserver_burst_suppressed_recurring_open(
    broker: LocalBroker,
    services: Services,
    open_view: Callable[[str], StoreView],
    sqlite_url: str,
    group: str,
) -> None:
    """The seed case: istiod's API-server errors (5 min transient window, 10 min resolve_after)."""
    cluster = "it-seed"
    now = time.time()
    t0 = float(int(now) - 1200)  # whole seconds: the lines' microsecond timestamps are then exact
    burst_pod = istiod_pod(revision="1-20")  # an API-server restart: errors for 90 s, then quiet
    stuck_pod = istiod_pod(revision="1-21")  # persistent breakage: errors for 15 minutes
    messages = [
        Message(fluent_bit_record(burst_pod, "discovery", apiserver_error(t0 + s), t0 + s), burst_pod.key)
        for s in range(0, 91, 15)
    ]
    messages += [
        Message(fluent_bit_record(stuck_pod, "discovery", apiserver_error(t0 + s), t0 + s), stuck_pod.key)
        for s in range(0, 901, 15)
    ]
    random.Random(7).shuffle(messages)
    topic = create_topic(broker.bootstrap, partitions=2, prefix="seed")
    produced = produce(broker.bootstrap, topic, messages, codec="lz4")
    service = services.spawn(
        bootstrap=broker.bootstrap, topics=[topic], group=group, store_url=sqlite_url, cluster=cluster
    )
    view = open_view(sqlite_url)
    wait_consumed(view, group, topic, produced.ends, [service])
    # Kafka's committed offsets follow the store's (sent in the background, after each stored batch).
    poll(
        lambda: kafka_committed(broker.bootstrap, group, topic, produced.ends) == produced.ends,
        10,
        what=f"advisory commits at {produced.ends}",
    )

    def incident(revision: str, stream_time: float) -> tuple[Status, int, float, float]:
        rows = [r for r in view.incidents(stream_time) if r.key.workload == f"istiod-{revision}"]
        assert len(rows) == 1, rows
        r = rows[0]
        assert (r.rule_id, r.key.cluster, r.key.namespace) == ("istiod-apiserver-unreachable", cluster, "istio-system")
        return r.status, r.count, r.first_seen - t0, r.last_seen - t0

    # Both still recurring and young: pending.
    assert incident("1-20", t0 + 60) == (Status.PENDING, 7, 0, 90)
    # The burst stopped within the window: a suppressed transient (counted, not alerted) ...
    assert incident("1-20", t0 + 400) == (Status.SUPPRESSED, 7, 0, 90)
    # ... while the same error recurring past the window is open.
    assert incident("1-21", t0 + 400)[0] is Status.OPEN
    assert incident("1-21", now) == (Status.OPEN, 61, 0, 900)
    # At the service's own stream time (event-time watermark), the same verdicts.
    stream_time = view.stream_time(group)
    assert stream_time is not None and t0 + 900 - 60 <= stream_time <= now
    assert incident("1-20", stream_time)[0] is Status.SUPPRESSED
    assert incident("1-21", stream_time)[0] is Status.OPEN
