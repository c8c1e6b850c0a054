"""Rebalances under load: members leave and join while the others are mid-batch; every count stays exact."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable

import pytest

from analyzer.broker import LocalBroker
from tests.integration.support import (
    ServiceProcess,
    Services,
    Shipper,
    StoreView,
    create_topic,
    mixed_stream,
    poll,
    wait_consumed,
)

pytestmark = pytest.mark.integration

CHUNK = 200  # records per produce call (about 5 a second) until the cycles are done
CYCLES = 4


def test_members_leaving_and_joining_never_double_count(
    pg_store_url: str,
    open_view: Callable[[str], StoreView],
    services: Services,
    broker: LocalBroker,
    group: str,
) -> None:
    cluster = f"it-rebalance-{uuid.uuid4().hex[:8]}"
    topic = create_topic(broker.bootstrap, partitions=4, prefix="rebalance")
    rng = random.Random(17)
    shipper = Shipper(broker.bootstrap, topic, lambda: mixed_stream(CHUNK, cluster=cluster, rng=rng), pause=0.2)
    shipper.start()
    store_url = pg_store_url  # the shared store of a replicated deployment
    view = open_view(store_url)

    def spawn(wait: bool = True) -> ServiceProcess:
        return services.spawn(
            bootstrap=broker.bootstrap,
            topics=[topic],
            group=group,
            store_url=store_url,
            cluster=cluster,
            max_records=20,
            wait=wait,
        )

    def assigned(service: ServiceProcess) -> int:
        return len([e for e in service.log_events() if e.get("event") == "partitions assigned" and e["partitions"]])

    def progress() -> int:
        return sum(view.offsets(group, topic).values())

    steady = spawn()
    member = spawn()
    for _ in range(CYCLES):
        # Once the member owns partitions and batches flow, it leaves and a new one joins: the group
        # rebalances while the steady member is mid-batch, and partitions change hands both ways.
        poll(lambda: assigned(member) > 0 and assigned(steady) > 0, 30, 0.05, "member assigned")  # noqa: B023
        mark = progress()
        poll(lambda: progress() > mark + 200, 30, 0.02, "progress")  # noqa: B023
        assert member.terminate() == 0, member.log_tail()
        member = services.restart(member)
    produced = shipper.stop()
    wait_consumed(view, group, topic, produced.ends, [steady, member], timeout=120)
    assert view.counts() == produced.expected()
    assert assigned(steady) > CYCLES, "the steady member went through the rebalances"
