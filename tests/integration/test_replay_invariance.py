"""Replay invariance: one consumer, two consumers in one group, tiny and large batches: the same incidents."""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from collections.abc import Callable

import pytest

from analyzer.broker import LocalBroker
from tests.integration.support import (
    ServiceProcess,
    Services,
    StoreView,
    create_topic,
    mixed_stream,
    produce,
    wait_consumed,
)

pytestmark = pytest.mark.integration

RECORDS = 4000

IncidentFacts = tuple[str, str, str, str, float, float, int, tuple[str, ...], tuple[str, ...], tuple[str, ...]]


def incident_set(view: StoreView) -> list[IncidentFacts]:
    """Each stored interval by (rule, key, first_seen, last_seen, count) and its evidence; ids aside."""
    rows = view.incidents(evidence=True)
    assert rows and all(r.head and r.tail for r in rows)  # the evidence comparison is never vacuous
    return sorted(
        (
            r.rule_id,
            r.key.cluster,
            r.key.namespace,
            r.key.workload,
            r.first_seen,
            r.last_seen,
            r.count,
            tuple(e.line for e in r.head),
            tuple(e.line for e in r.tail),
            r.pods,
        )
        for r in rows
    )


def test_same_incidents_whatever_the_consumers_and_batches(
    new_store: Callable[[], str],
    open_view: Callable[[str], StoreView],
    services: Services,
    broker: LocalBroker,
) -> None:
    cluster = f"it-replay-{uuid.uuid4().hex[:8]}"
    topic = create_topic(broker.bootstrap, partitions=4, prefix="replay")
    # Bursts 10 minutes apart on rules whose resolve_after is 10 or 15 minutes: some bursts merge into one
    # interval and some stay apart, and arrival order within a key is shuffled across partitions.
    stream = mixed_stream(
        RECORDS,
        cluster=cluster,
        rng=random.Random(11),
        match_ratio=0.3,
        t0=time.time() - 7200,
        bursts=(0.0, 700.0, 1400.0, 3500.0),
    )
    produced = produce(broker.bootstrap, topic, stream, codec="gzip")

    runs: dict[str, tuple[str, str, list[ServiceProcess]]] = {}

    def run(name: str, consumers: int, max_records: int) -> None:
        url, group = new_store(), f"it-replay-{name}-{uuid.uuid4().hex[:8]}"
        started = [
            services.spawn(
                bootstrap=broker.bootstrap,
                topics=[topic],
                group=group,
                store_url=url,
                cluster=cluster,
                max_records=max_records,
                wait=False,
            )
            for _ in range(consumers)
        ]
        runs[name] = (url, group, started)

    # All at once (each configuration has its own group and store): the two-consumer group then splits the
    # partitions from the start.
    run("one-consumer", 1, 5000)
    run("tiny-batches", 1, 7)
    run("two-consumers", 2, 50)
    results = {}
    for name, (url, group, started) in runs.items():
        for service in started:
            service.wait_ready()
        view = open_view(url)
        wait_consumed(view, group, topic, produced.ends, started, timeout=120)
        results[name] = incident_set(view)

    reference = results["one-consumer"]
    counts: Counter[tuple[str, str, str, str]] = Counter()
    for facts in reference:
        counts[facts[:4]] += facts[6]
    assert counts == produced.expected()
    per_key = Counter(facts[:4] for facts in reference)
    assert max(per_key.values()) >= 2, "some key has several intervals"
    assert any(facts[5] - facts[4] > 700 for facts in reference), "some interval spans merged bursts"
    assert results["tiny-batches"] == reference
    assert results["two-consumers"] == reference

    # Both members of the two-consumer group really consumed partitions.
    for service in runs["two-consumers"][2]:
        assigned = [e for e in service.log_events() if e.get("event") == "partitions assigned" and e["partitions"]]
        assert assigned, service.log_tail()
