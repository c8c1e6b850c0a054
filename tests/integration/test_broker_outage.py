"""Broker outage: freeze the broker mid-stream; the service reports it, recovers by itself, loses nothing."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from analyzer.broker import LocalBroker
from tests.integration.support import (
    Produced,
    Services,
    StoreView,
    create_topic,
    make_producer,
    mixed_stream,
    produce,
    wait_consumed,
)

pytestmark = pytest.mark.integration

OUTAGE = 22.0  # seconds the broker stays frozen


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[LocalBroker]:
    """A broker for this test alone: freezing it cannot hurt the session broker."""
    b = LocalBroker(log_path=tmp_path / "tansu.log").start()
    try:
        yield b
    finally:
        if b.process is not None and b.process.poll() is None:
            os.kill(b.process.pid, signal.SIGCONT)
        b.stop()


def test_frozen_broker_readiness_and_recovery(
    own_broker: LocalBroker,
    sqlite_url: str,
    tmp_path: Path,
    open_view: Callable[[str], StoreView],
    services: Services,
) -> None:
    assert own_broker.process is not None
    broker_pid = own_broker.process.pid
    cluster = f"it-outage-{uuid.uuid4().hex[:8]}"
    group = f"it-outage-{uuid.uuid4().hex[:8]}"
    rng = random.Random(5)
    topic = create_topic(own_broker.bootstrap, partitions=2, prefix="outage")
    before = produce(own_broker.bootstrap, topic, mixed_stream(3000, cluster=cluster, rng=rng), codec="lz4")

    service = services.spawn(
        bootstrap=own_broker.bootstrap,
        topics=[topic],
        group=group,
        store_url=sqlite_url,
        cluster=cluster,
        max_records=200,
    )
    # A second service (own group and store) that is asked to stop while the broker is frozen.
    leaving = services.spawn(
        bootstrap=own_broker.bootstrap,
        topics=[topic],
        group=f"{group}-leaving",
        store_url=f"sqlite:///{tmp_path / 'leaving.db'}",
        cluster=cluster,
    )
    view = open_view(sqlite_url)
    wait_consumed(view, group, topic, before.ends, [service])

    # Fluent Bit keeps shipping through the outage: its librdkafka producer buffers and retries.
    during = Produced()
    producer = make_producer(own_broker.bootstrap, "lz4")
    failure: list[BaseException] = []

    def keep_producing() -> None:
        try:
            for _ in range(8):
                chunk = mixed_stream(500, cluster=cluster, rng=rng)
                during.merge(produce(own_broker.bootstrap, topic, chunk, producer=producer, flush_timeout=120))
        except BaseException as exc:  # reported by the main thread
            failure.append(exc)

    os.kill(broker_pid, signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        shipper = threading.Thread(target=keep_producing, daemon=True)
        shipper.start()
        # Readiness must answer (not hang) and say "not ready" while the broker is frozen.
        states: list[int | None] = []
        asked_to_stop = False
        while time.monotonic() - frozen_at < OUTAGE:
            states.append(service.readyz(timeout=2.0))
            assert service.alive(), service.log_tail()
            if not asked_to_stop and time.monotonic() - frozen_at > 5:
                assert leaving.proc is not None
                leaving.proc.send_signal(signal.SIGTERM)  # once, as the kubelet does
                asked_to_stop = True
            time.sleep(0.5)
        assert 503 in states, f"readiness never reported the outage: {states}"
        assert None not in states, "readiness did not answer within 2 s during the outage"
    finally:
        os.kill(broker_pid, signal.SIGCONT)

    deadline = time.monotonic() + 90
    while service.readyz(timeout=2.0) != 200:
        assert service.alive(), service.log_tail()
        assert time.monotonic() < deadline, f"not ready again after the outage:\n{service.log_tail()}"
        time.sleep(0.2)
    shipper.join(150)
    assert not shipper.is_alive() and not failure, failure
    during.merge(before)
    wait_consumed(view, group, topic, during.ends, [service], timeout=90)
    assert view.counts() == during.expected(), "nothing lost, nothing doubled"
    assert service.alive()
    # Shutdown during the outage was bounded: every call that could hang on the frozen broker timed out.
    assert leaving.proc is not None and leaving.proc.wait(60) == 0, leaving.log_tail()
