"""App started before proxy, through the real service: proxy signals and app lines of one pod, correlated."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import pytest

from analyzer.broker import LocalBroker
from tests.integration.support import (
    Message,
    Pod,
    Services,
    StoreView,
    app_pod,
    create_topic,
    fluent_bit_record,
    iso_micro,
    produce,
    wait_consumed,
)

pytestmark = pytest.mark.integration

RULE = "app-started-before-proxy"
NAMESPACE = "shop"


def proxy(pod: Pod, t: float, text: str) -> Message:
    return Message(fluent_bit_record(pod, "istio-proxy", f"{iso_micro(t)}\tinfo\t{text}", t), pod.key)


def starting(pod: Pod, t: float) -> list[Message]:
    return [
        proxy(pod, t, 'FLAG: --concurrency="2"'),
        proxy(pod, t + 0.1, "Version 1.22.3-4c5bbc5bc1f7e5b9f3a1e4d5c2b6a7f8e9d0c1b2-Clean"),
        proxy(pod, t + 0.3, "Starting proxy agent"),
    ]


def not_ready(pod: Pod, t: float) -> Message:
    return proxy(
        pod,
        t,
        "Envoy proxy is NOT ready: config not received from Pilot (is Pilot running?): cds updates: 0 successful, "
        "0 rejected; lds updates: 0 successful, 0 rejected",
    )


def ready(pod: Pod, t: float) -> Message:
    return proxy(pod, t, "Envoy proxy is ready")


def refused(pod: Pod, t: float) -> Message:
    """The app container's own output: no timestamp of its own (event time from Fluent Bit's)."""
    return Message(fluent_bit_record(pod, "app", "Error: connect ECONNREFUSED 10.96.14.2:6379", t), pod.key)


def app_ok(pod: Pod, t: float) -> Message:
    return Message(fluent_bit_record(pod, "app", "listening on :8080", t), pod.key)


def interleave(streams: Iterable[list[Message]]) -> list[Message]:
    """Round-robin over the pods; each pod's own lines stay in order (as on its partition)."""
    queues = [list(s) for s in streams]
    out: list[Message] = []
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop(0))
    return out


def test_app_started_before_proxy_is_correlated_per_pod(
    broker: LocalBroker,
    services: Services,
    open_view: Callable[[str], StoreView],
    sqlite_url: str,
    group: str,
) -> None:
    t0 = float(int(time.time()) - 300)
    # Two replicas of checkout start; their apps try Redis before the sidecar listens.
    checkout_a = app_pod("checkout", NAMESPACE, suffix="5f7d8c9b4f-xk2zp")
    checkout_b = app_pod("checkout", NAMESPACE, suffix="5f7d8c9b4f-m9vbn")
    # payments started long ago with a ready proxy: its refused connections are some other problem.
    payments = app_pod("payments", NAMESPACE, suffix="84c5f7b9d8-x9z2p")
    # inventory started long ago too, but its proxy lost its configuration and says NOT ready right now.
    inventory = app_pod("inventory", NAMESPACE, suffix="6c8d9f7b5d-r4t6w")

    per_pod: dict[str, list[Message]] = {
        "checkout-a": [*starting(checkout_a, t0), not_ready(checkout_a, t0 + 1)]
        + [refused(checkout_a, t0 + s) for s in (1.5, 2.0, 3.0)]
        + [ready(checkout_a, t0 + 4), app_ok(checkout_a, t0 + 5)],
        "checkout-b": [
            *starting(checkout_b, t0 + 10),
            refused(checkout_b, t0 + 11),
            refused(checkout_b, t0 + 12),
            ready(checkout_b, t0 + 14),
        ],
        "payments": [*starting(payments, t0 - 200), ready(payments, t0 - 195), app_ok(payments, t0 - 190)]
        + [refused(payments, t0 + s) for s in (0, 5, 10, 20)],
        "inventory": [*starting(inventory, t0 - 200), ready(inventory, t0 - 195)]
        + [not_ready(inventory, t0 - 2)]
        + [refused(inventory, t0 + s) for s in (0, 1)],
    }
    messages = interleave(per_pod.values())

    topic = create_topic(broker.bootstrap, partitions=2, prefix="corr")
    produced = produce(broker.bootstrap, topic, messages, codec="snappy")
    service = services.spawn(
        bootstrap=broker.bootstrap, topics=[topic], group=group, store_url=sqlite_url, cluster="it-corr"
    )
    view = open_view(sqlite_url)
    wait_consumed(view, group, topic, produced.ends, [service])

    rows = view.incidents(rule=RULE)
    by_workload = {r.key.workload: r for r in rows}
    assert sorted(by_workload) == ["checkout", "inventory"], [(r.key, r.count) for r in rows]
    assert len(rows) == 2, "one incident per workload"
    checkout = by_workload["checkout"]
    assert (checkout.key.cluster, checkout.key.namespace, checkout.count) == ("it-corr", NAMESPACE, 5)
    assert set(checkout.pods) == {checkout_a.name, checkout_b.name}
    assert (checkout.first_seen, checkout.last_seen) == (t0 + 1.5, t0 + 12)
    assert by_workload["inventory"].count == 2
