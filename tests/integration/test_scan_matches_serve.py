"""The same records through `serve` (real broker, real service) and through `scan` (a file): the same incidents."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from analyzer.broker import LocalBroker
from analyzer.catalogue import load_catalogue
from analyzer.correlation import SIGNALS
from analyzer.lines import iter_blocks
from analyzer.match import compile_catalogue
from analyzer.offline import scan
from tests.conftest import PATTERNS
from tests.integration.support import (
    Message,
    Pod,
    Services,
    StoreView,
    app_pod,
    create_topic,
    fluent_bit_record,
    iso_micro,
    istiod_pod,
    mixed_stream,
    produce,
    wait_consumed,
)

pytestmark = pytest.mark.integration

CLUSTER = "it-scan"


def proxy(pod: Pod, t: float, text: str, level: str = "info") -> Message:
    return Message(fluent_bit_record(pod, "istio-proxy", f"{iso_micro(t)}\t{level}\t{text}", t), pod.key)


def app(pod: Pod, t: float, text: str) -> Message:
    return Message(fluent_bit_record(pod, "app", text, t), pod.key)


def pod_start(pod: Pod, t: float, ready_after: float, refused_at: tuple[float, ...]) -> list[Message]:
    """A pod's start: proxy signals and the app's refused connections, in time order (as on its partition)."""
    timed = [
        (t, proxy(pod, t, 'FLAG: --concurrency="2"')),
        (t + 0.1, proxy(pod, t + 0.1, "Starting proxy agent")),
        *(
            (t + s, proxy(pod, t + s, "Envoy proxy is NOT ready: config not received from XDS server", "warn"))
            for s in range(2, int(ready_after), 2)
        ),
        (t + ready_after, proxy(pod, t + ready_after, "Envoy proxy is ready")),
        *((t + s, app(pod, t + s, "Error: connect ECONNREFUSED 10.96.14.2:6379")) for s in refused_at),
    ]
    return [m for _, m in sorted(timed, key=lambda item: item[0])]


def unknown_errors(pod: Pod, t0: float, rng: random.Random) -> list[Message]:
    """istiod errors no rule knows: the unclassified lane."""
    out = []
    for n in range(40):
        t = t0 + rng.uniform(0, 300)
        line = f"{iso_micro(t)}\terror\tads\tpush budget exhausted for proxy sidecar~10.8.{n % 7}.3 after {n} tries"
        out.append(Message(fluent_bit_record(pod, "discovery", line, t), pod.key))
    return out


def records(rng: random.Random, t0: float) -> list[Message]:
    messages = mixed_stream(1500, cluster=CLUSTER, rng=rng, match_ratio=0.2, t0=t0, bursts=(0.0, 900.0))
    messages += unknown_errors(istiod_pod(revision="1-22"), t0, rng)
    starts = [
        # the app tries before its proxy is ready (counts), and long after (does not)
        pod_start(app_pod("checkout", "shop", suffix="5f7d8c9b4f-xk2zp"), t0 + 100, 90, (70, 75, 80, 400)),
        pod_start(app_pod("checkout", "shop", suffix="5f7d8c9b4f-m9vbn"), t0 + 110, 4, (1, 3, 200, 210)),
        pod_start(app_pod("payments", "shop", suffix="84c5f7b9d8-x9z2p"), t0 + 50, 3, (600, 610)),
    ]
    # each pod's lines keep their order (they share a partition); pods interleave
    queues = [*starts, messages]
    out: list[Message] = []
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop(0))
    return out


Row = tuple[str, str, str, str, float, float, int, str]


def test_scan_of_the_records_equals_serve(
    broker: LocalBroker,
    services: Services,
    open_view: Callable[[str], StoreView],
    sqlite_url: str,
    group: str,
    tmp_path: Path,
) -> None:
    t0 = float(int(time.time()) - 1800)
    messages = records(random.Random(20261129), t0)
    topic = create_topic(broker.bootstrap, partitions=2, prefix="scan")
    produced = produce(broker.bootstrap, topic, messages, codec="lz4")
    service = services.spawn(
        bootstrap=broker.bootstrap, topics=[topic], group=group, store_url=sqlite_url, cluster=CLUSTER
    )
    # the same record values, one a line, in production order: what `kubectl logs`-style files hold
    path = tmp_path / "records.jsonl"
    path.write_bytes(b"".join(m.value + b"\n" for m in messages if m.value is not None))

    view = open_view(sqlite_url)
    wait_consumed(view, group, topic, produced.ends, [service])
    at = time.time()
    served: list[Row] = sorted(
        (r.rule_id, r.key.cluster, r.key.namespace, r.key.workload, r.first_seen, r.last_seen, r.count, r.status.value)
        for r in view.incidents(stream_time=at)
    )

    catalogue = load_catalogue(PATTERNS)
    compiled = compile_catalogue(catalogue, SIGNALS, cache_dir=tmp_path / "hs")
    with path.open("rb") as stream:
        result = scan(catalogue, compiled, iter_blocks(stream), default_cluster=CLUSTER, stream_time=at)
    scanned: list[Row] = sorted(
        (
            i.rule.id,
            i.interval.key.cluster,
            i.interval.key.namespace,
            i.interval.key.workload,
            i.interval.first_seen,
            i.interval.last_seen,
            i.interval.count,
            (i.own_status or i.status).value,  # the store's own, not a root cause's group status
        )
        for i in result.incidents + result.unclassified
    )
    rules = {row[0] for row in served}
    assert "app-started-before-proxy" in rules, "the gate's incidents are part of the comparison"
    assert any(rule.startswith("unclassified-") for rule in rules), "and the unclassified lane's"
    assert len({row[:4] for row in served}) < len(served), "some keys have several intervals"
    assert scanned == served

    # The command line over the same file (JSON times are whole seconds).
    out = subprocess.run(
        [sys.executable, "-m", "analyzer", "scan", "--output", "json", "--cluster", CLUSTER, str(path)],
        capture_output=True,
        check=True,
        timeout=300,
    )
    cli = sorted(
        (i["rule"], i["key"]["namespace"], i["key"]["workload"], i["first_seen"], i["last_seen"], i["count"])
        for i in json.loads(out.stdout)
    )
    assert cli == sorted((r[0], r[2], r[3], _iso(r[4]), _iso(r[5]), r[6]) for r in served)
    gated = [r for r in served if r[0] == "app-started-before-proxy"]
    assert [(r[3], r[6]) for r in gated] == [("checkout", 5)], gated  # 3 + 2 lines before the proxy was ready
    assert service.alive()


def _iso(t: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
