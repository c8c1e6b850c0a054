"""`serve --workers N` and `--role`: several ingest processes in one group over one store, and the API apart.

Real parts throughout: the bundled broker, librdkafka producers, `mesh-analyzer serve` as a subprocess (the
supervisor and its children), SQLite files and PostgreSQL schemas.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from analyzer.broker import LocalBroker, free_port
from tests.integration.support import (
    SERVE,
    CountKey,
    ServiceProcess,
    Services,
    StoreView,
    create_topic,
    mixed_stream,
    poll,
    produce,
    wait_consumed,
)

pytestmark = pytest.mark.integration

RECORDS = 12_000
PARTITIONS = 4


class Supervised(ServiceProcess):
    """`mesh-analyzer serve --workers N` (the flag, not the environment); its port is the API's."""

    def __init__(self, env: dict[str, str], log_path: Path, workers: int) -> None:
        super().__init__(env, log_path)
        self.workers = workers

    def start(self) -> Supervised:
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(SERVE), "serve", "--workers", str(self.workers)],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        return self

    def children(self) -> dict[str, int]:
        """Worker name -> pid of its latest start, from the supervisor's log."""
        started = [e for e in self.log_events() if e.get("event") == "worker started"]
        return {e["worker"]: int(e["pid"]) for e in started}

    def assigned_by(self) -> set[str]:
        """The children that were assigned partitions (their log lines carry their process name)."""
        return {
            str(e.get("process"))
            for e in self.log_events()
            if e.get("event") == "partitions assigned" and e.get("partitions")
        }


def free_port_block(n: int) -> int:
    """A port p with p .. p + n - 1 all free now."""
    for _ in range(100):
        base = free_port()
        if base + n > 65535:
            continue
        with contextlib.ExitStack() as stack:
            try:
                for port in range(base, base + n):
                    stack.enter_context(socket.socket()).bind(("127.0.0.1", port))
            except OSError:
                continue
        return base
    raise AssertionError(f"no {n} consecutive free ports")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) is not alive either.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ", 1)[1][0] != "Z"


def _api_counts(base: str) -> Counter[CountKey]:
    """Summed counts per (rule, cluster, namespace, workload), read through the API's HTTP list."""
    out: Counter[CountKey] = Counter()
    cursor: str | None = None
    while True:
        params = {"limit": "500", **({"cursor": cursor} if cursor else {})}
        page = httpx.get(f"{base}/v1/incidents", params=params, timeout=10).json()
        for item in page["items"]:
            key = item["key"]
            out[(item["rule"], key["cluster"], key["namespace"], key["workload"])] += item["count"]
        cursor = page["next_cursor"]
        if cursor is None:
            return out


def test_two_workers_count_exactly_even_when_one_is_killed_mid_stream(
    broker: LocalBroker,
    services: Services,
    open_view: Callable[[str], StoreView],
    store_url: str,
    group: str,
    tmp_path: Path,
) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    cluster = f"it-workers-{uuid.uuid4().hex[:8]}"
    topic = create_topic(broker.bootstrap, partitions=PARTITIONS, prefix="workers")
    stream = mixed_stream(RECORDS, cluster=cluster, rng=rng, t0=time.time() - 3600, bursts=(0.0, 1200.0))
    for i, message in enumerate(stream):
        # Round robin, not by pod: every incident key has records in every partition, so the two workers
        # merge into the same incidents concurrently.
        message.partition = i % PARTITIONS
    # Half now; the other half after the kill, so the stream flows through the restart and the rebalances.
    half = RECORDS // 2
    produced = produce(broker.bootstrap, topic, stream[:half], codec="lz4")
    assert len(produced.ends) == PARTITIONS

    view = open_view(store_url)
    template = services.spawn(
        bootstrap=broker.bootstrap, topics=[topic], group=group, store_url=store_url, cluster=cluster,
        max_records=50, wait=False,
    )  # fmt: skip
    template.cleanup()  # only its environment is wanted: the supervised run below replaces it
    # The API on the port, worker i on port + 1 + i: three free ports in a row.
    env = {**template.env, "ANALYZER_HTTP_PORT": str(free_port_block(3))}
    supervised = Supervised(env, tmp_path / "supervised.log", workers=2)
    services.started.append(supervised)
    supervised.start()
    supervised.wait_ready()

    # Kill a worker that holds partitions, mid-stream; the supervisor starts it again.
    poll(lambda: sum(view.offsets(group, topic).values()) >= half // 3, 60, interval=0.005,
         what=f"a third of the first half consumed (seed {seed})")  # fmt: skip
    victim_name = sorted(n for n in supervised.assigned_by() if n.startswith("ingest-"))[0]
    victim = supervised.children()[victim_name]
    os.kill(victim, signal.SIGKILL)
    killed_at = view.offsets(group, topic)
    assert sum(killed_at.values()) < half, "the kill landed after the end of the first half"
    # Whatever the moment of the kill, the store holds exactly the counts of the records below its offsets: read
    # between two equal offset reads (the other worker goes on writing; each batch commits with its offsets).
    deadline = time.monotonic() + 60
    while True:
        before, counts, after = view.offsets(group, topic), view.counts(), view.offsets(group, topic)
        if before == after:
            break
        assert time.monotonic() < deadline, "the store never held still (the first half is finite)"
    assert counts == produced.expected(upto=after), f"seed {seed}, killed at {killed_at}, read at {after}"
    poll(lambda: supervised.children()[victim_name] != victim, 30, what="the killed worker started again")

    produced.merge(produce(broker.bootstrap, topic, stream[half:], codec="lz4"))
    expected = produced.expected()
    assert len(expected) == 5
    wait_consumed(view, group, topic, produced.ends, [supervised], timeout=120)
    assert view.counts() == expected, f"seed {seed}"
    # Both workers consumed (one group, the partitions spread), and the API process serves the same counts.
    assert {"ingest-0", "ingest-1"} <= supervised.assigned_by()
    assert _api_counts(supervised.base) == expected
    died = [e for e in supervised.log_events() if e.get("event") == "worker died; restarting"]
    assert [(e["worker"], e["pid"]) for e in died] == [(victim_name, victim)]

    pids = supervised.children().values()
    assert supervised.terminate() == 0, supervised.log_tail()
    assert not [pid for pid in pids if _alive(pid)], "a worker outlived its supervisor"


def test_role_api_serves_what_role_ingest_writes(
    broker: LocalBroker,
    services: Services,
    open_view: Callable[[str], StoreView],
    store_url: str,
    group: str,
) -> None:
    cluster = f"it-roles-{uuid.uuid4().hex[:8]}"
    topic = create_topic(broker.bootstrap, partitions=2, prefix="roles")
    common = {"bootstrap": broker.bootstrap, "topics": [topic], "group": group, "store_url": store_url}
    ingest = services.spawn(**common, cluster=cluster, role="ingest")
    api = services.spawn(**common, cluster=cluster, role="api")

    stream = mixed_stream(2000, cluster=cluster, rng=random.Random(5))
    produced = produce(broker.bootstrap, topic, stream, codec="zstd")
    view = open_view(store_url)
    wait_consumed(view, group, topic, produced.ends, [ingest, api])
    assert _api_counts(api.base) == produced.expected()

    # The ingest process serves its health and metrics, not the API; the API process consumes nothing.
    ingest_ready = ingest.get("/readyz")
    assert ingest_ready is not None and ingest_ready.json()["consuming"] is True
    missing = ingest.get("/v1/incidents")
    assert missing is not None and missing.status_code == 404
    consumed = sum(v for (name, _), v in ingest.metrics().items() if name == "analyzer_records_consumed_total")
    assert consumed == len(stream)
    api_ready = api.get("/readyz")
    assert api_ready is not None and api_ready.status_code == 200 and api_ready.json()["role"] == "api"
    assert not [k for k in api.metrics() if k[0] == "analyzer_records_consumed_total"]
    assert "consuming" not in [e.get("event") for e in api.log_events()]
    assert ingest.terminate() == 0 and api.terminate() == 0


def _serve(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SERVE), "serve", *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_workers_refuse_a_store_they_cannot_share_and_stop_when_a_child_cannot_start(tmp_path: Path) -> None:
    env = {**os.environ, "ANALYZER_KAFKA_BOOTSTRAP": "127.0.0.1:9", "ANALYZER_HTTP_PORT": str(free_port())}
    env["ANALYZER_LOG_FORMAT"] = "json"
    memory = _serve(["--workers", "2"], {**env, "ANALYZER_STORE_URL": "sqlite:///:memory:"})
    assert memory.returncode == 2 and ":memory:" in memory.stderr
    # The store's directory cannot be made: every child exits 2 on its first start, the supervisor with it.
    blocked = tmp_path / "file"
    blocked.write_text("")
    unusable = _serve(["--workers", "1"], {**env, "ANALYZER_STORE_URL": f"sqlite:///{blocked}/sub/store.db"})
    assert unusable.returncode == 2, unusable.stderr[-2000:]
    assert "worker cannot start; stopping" in unusable.stderr
    bad_role = _serve(["--role", "reader"], env)
    assert bad_role.returncode == 2 and "--role" in bad_role.stderr
