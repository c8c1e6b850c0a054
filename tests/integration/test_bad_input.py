"""Malformed records mixed with good ones: counted by reason, skipped, and the service keeps going."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from analyzer.broker import LocalBroker
from tests.integration.support import (
    Message,
    Pod,
    Services,
    StoreView,
    apiserver_error,
    create_topic,
    fluent_bit_record,
    iptables_failed,
    istiod_pod,
    noise,
    produce,
    sources,
    wait_consumed,
)

pytestmark = pytest.mark.integration

CLUSTER = "it-bad"


def rejected(service_metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], reason: str) -> float:
    return service_metrics.get(("analyzer_records_rejected_total", (("reason", reason),)), 0.0)


def test_malformed_records_are_counted_and_skipped(
    broker: LocalBroker,
    services: Services,
    open_view: Callable[[str], StoreView],
    sqlite_url: str,
    group: str,
) -> None:
    now = time.time()
    good = sources()
    pods = [s.pod for s in good]

    def good_batch(t: float) -> list[Message]:
        return [s.message(t + i, CLUSTER) for i, s in enumerate(good)] + [noise(pods, t, n) for n in range(20)]

    istiod = istiod_pod()
    matching = fluent_bit_record(istiod, "discovery", apiserver_error(now - 100), now - 100)
    boring = noise(pods, now - 100, 1).value
    truncated = [matching[: len(matching) // 2], boring[:-1], matching[:-3] + b"\n"]
    empty = [b"", b"   ", b"\n", None]
    huge = fluent_bit_record(istiod, "discovery", apiserver_error(now - 90) + " " + "x" * (5 << 20), now - 90)
    garbage = [
        b"\xff\xfe\xfd not utf-8 \x80\x81\x82",
        b"\x00" * 64,
        b'\x00\x01\x02{"log":\x00}',
        b"[1, 2, 3",
        b"{{{{",
        b"\xc3\x28 \xa0\xa1",
        b'{"@timestamp": 1.5, "log": "broken \xff\xfe utf-8", "kubernetes": {"pod_name": "x"}}',
    ]
    # Matching lines whose timestamps are absurd everywhere: the event time falls back to the Kafka record's.
    odd = Pod("legacy-7c9f5d8b6d-q2w4x", "odd-times", {"app": "legacy"})
    absurd_times: list[object] = [
        0,
        -1,
        -1e12,
        253402300799.0,
        "9999-12-31T23:59:59Z",
        "1970-01-01T00:00:00Z",
        "NaN",
        "nan",
        "-inf",
        "Infinity",
        "not a time",
        "",
    ]
    absurd = [
        Message(
            fluent_bit_record(odd, "istio-init", iptables_failed(0), 0.0, extra={"@timestamp": ts, "time": ts}),
            odd.key,
            ("istio-init-iptables-failure", CLUSTER, "odd-times", "legacy"),
        )
        for ts in absurd_times
    ]
    line_9999 = apiserver_error(now).replace(apiserver_error(now)[:27], "9999-12-31T23:59:59.999999Z")
    absurd.append(
        Message(
            fluent_bit_record(istiod, "discovery", line_9999, 0.0, extra={"@timestamp": "NaN", "time": -5}),
            istiod.key,
            ("istiod-apiserver-unreachable", CLUSTER, "istio-system", "istiod"),
        )
    )
    # NUL characters inside a good record's text (JSON-escaped, as Fluent Bit writes them) are data.
    nul_line = apiserver_error(now - 80) + "\u0000\u0000 trailing NULs"
    with_nul = Message(
        fluent_bit_record(istiod, "discovery", nul_line, now - 80),
        istiod.key,
        ("istiod-apiserver-unreachable", CLUSTER, "istio-system", "istiod"),
    )

    messages = good_batch(now - 200)
    messages += [Message(v) for v in truncated] + [Message(v) for v in garbage]
    messages += [Message(v) for v in empty]
    messages.append(Message(huge, istiod.key))
    messages += good_batch(now - 150)  # right behind the 5 MB record, same partition
    messages += [*absurd, with_nul]
    messages += good_batch(now - 60)

    topic = create_topic(broker.bootstrap, partitions=1, prefix="bad")
    produced = produce(broker.bootstrap, topic, messages, codec="zstd")
    service = services.spawn(
        bootstrap=broker.bootstrap, topics=[topic], group=group, store_url=sqlite_url, cluster=CLUSTER
    )
    view = open_view(sqlite_url)
    wait_consumed(view, group, topic, produced.ends, [service])

    assert service.alive() and service.readyz() == 200
    assert view.counts() == produced.expected()
    metrics = service.metrics()
    assert rejected(metrics, "invalid-json") == len(truncated)
    assert rejected(metrics, "empty") == len(empty)
    assert rejected(metrics, "too-large") == 1
    consumed = metrics[("analyzer_records_consumed_total", (("topic", topic),))]
    assert consumed == len(messages)

    for row in view.incidents():
        if row.key.namespace == "odd-times" or row.rule_id == "istiod-apiserver-unreachable":
            # Absurd or missing times never reach the store: event time fell back to the Kafka timestamp.
            assert now - 300 <= row.first_seen <= row.last_seen <= time.time() + 1, row
