"""End-to-end benchmark: Fluent Bit records through the broker into the incident store.

One run, one broker (the bundled Tansu), one seeded corpus (benchmarks/corpus.py lines in ~550 B Fluent Bit
records, lz4, keyed by pod, ~1% problem lines), produced with confluent-kafka (librdkafka, as Fluent Bit):

  (a) bare aiokafka drain of the topic: getmany loop, no processing, at the service's max_records and at
      5000, 20000 and no limit; the service is compared with the fastest of them;
  (b) the service pipeline over the same topic, in process: the real KafkaIngest (ingest, match, incidents,
      SQLite store, offsets in the store transaction), built the way ``service.run`` builds it;
  (c) peak RSS of a real ``mesh-analyzer serve`` subprocess over a stream in which every record comes from
      a different pod (and, with no pod labels, a different workload), ~1% matching;
  (d) latency from producing a record to its incident being visible in the store, at a paced 10k records/s,
      against the ``serve`` subprocess;
  (e) start-up: seconds from spawning ``serve`` to its first partition assignment, beside a bare aiokafka
      consumer's group join on the same broker (the broker's share).

(a) and (b) run pinned to the same one CPU (the broker to the other one). Both rates are steady-state:
records after the first batch over the time from the end of the first batch to the end of the last one
(group join and start-up are shown apart).

    .venv/bin/python benchmarks/e2e_bench.py --quick      # 100k records, ~2 min
    .venv/bin/python benchmarks/e2e_bench.py              # 1M records
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import corpus as corpus_mod  # noqa: E402
from aiokafka import AIOKafkaConsumer, TopicPartition  # noqa: E402
from confluent_kafka import Producer  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from analyzer.broker import LocalBroker, ensure_topics, free_port  # noqa: E402
from analyzer.config import Settings  # noqa: E402
from analyzer.incidents import StreamClock  # noqa: E402
from analyzer.ingest.kafka import KafkaIngest  # noqa: E402
from analyzer.metrics import Metrics  # noqa: E402
from analyzer.service import CatalogueHolder  # noqa: E402
from analyzer.store import Store, open_store  # noqa: E402
from analyzer.types import Changes, OffsetUpdate, Rule  # noqa: E402

SERVE = Path(sys.executable).parent / "mesh-analyzer"
# What `serve` logs on its way to consuming: (e) reports the seconds from spawning to each.
STARTUP_EVENTS = ("catalogue loaded", "serving", "consuming", "partitions assigned")
TARGET_RATIO = 0.8  # issue 9 part 4: `serve` at >= 0.8x the bare drain
BARE_SIZES = (5000, 20000, None)  # max_records of the bare drains; None: all that is buffered
TARGET_RSS_MB = 500.0
TARGET_P99 = 2.0
MEASURE_CPU = 0  # the consumer under test
OTHER_CPU = 1  # the broker, the producer, the latency poller


# ------------------------------------------------------------------------------------------------- helpers


TICKS = os.sysconf("SC_CLK_TCK")


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (all cores; /proc/stat: everything but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / TICKS


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(") ", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def cpus() -> set[int]:
    return set(range(os.cpu_count() or 1))


def pin_process(pid: int, cpu_set: set[int]) -> None:
    """Every thread of ``pid`` (sched_setaffinity on a pid only moves its main thread)."""
    usable = cpu_set & cpus() or cpus()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task.name), usable)


def vm_hwm_mb(pid: int) -> tuple[float, float]:
    """(VmHWM, VmRSS) of a live process, in MB."""
    values = {"VmHWM": 0.0, "VmRSS": 0.0}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in values:
                values[name] = int(rest.split()[0]) / 1024.0
    return values["VmHWM"], values["VmRSS"]


def fmt_rate(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e3:
        return f"{x / 1e3:.0f}k"
    return f"{x:.0f}"


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q / 100.0 * (len(ordered) - 1))))]


def crecords_in_use() -> tuple[bool, str]:
    """aiokafka's C record classes are the ones aiokafka uses (its pure-Python fallback is ~35x slower)."""
    from aiokafka.record import default_records

    try:
        import aiokafka.record._crecords  # noqa: F401
    except ImportError as exc:
        return False, f"aiokafka.record._crecords not importable: {exc}"
    module = default_records.DefaultRecordBatch.__module__
    return "_crecords" in module, f"DefaultRecordBatch from {module}"


# ------------------------------------------------------------------------------------------------- records


@dataclass
class Records:
    keys: list[bytes] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)
    problems: int = 0

    @property
    def mean_bytes(self) -> float:
        return sum(map(len, self.values)) / max(1, len(self.values))


class TrimmedEncoder:
    """Fluent Bit records as corpus.RecordEncoder writes them, with a trimmed kubernetes map (~550 B records).

    The full map (pod_id, host, docker_id, container_hash, image, four labels) is ~560 B on its own; this keeps
    what the analyzer reads: pod, namespace, container and the ``app`` label (or no labels, so the workload
    comes from the pod name). No ``time`` key: the cri parser consumes it (Fluent Bit's Keep_Time_Key is off by
    default); ``@timestamp`` carries the read time.
    """

    def __init__(self, rnd: random.Random) -> None:
        self.rnd = rnd
        self._meta: dict[tuple[str, str], str] = {}

    def kubernetes(self, pod: str, namespace: str, container: str, app: str | None) -> str:
        meta: dict[str, Any] = {"pod_name": pod, "namespace_name": namespace}
        if app is not None:
            meta["labels"] = {"app": app}
        meta["container_name"] = container
        return json.dumps(meta, separators=(",", ":"))

    def cached(self, line: corpus_mod.Line) -> str:
        key = (line.pod.name, line.container)
        meta = self._meta.get(key)
        if meta is None:
            meta = self._meta[key] = self.kubernetes(line.pod.name, line.pod.namespace, line.container, line.pod.app)
        return meta

    def __call__(self, text: str, stream: str, t: float, kubernetes: str) -> bytes:
        flushed = t + self.rnd.uniform(0.05, 1.0)
        return (
            f'{{"@timestamp":{flushed:.6f},"stream":"{stream}","_p":"F",'
            f'"log":{corpus_mod.encode_string(text)},"kubernetes":{kubernetes}}}'
        ).encode("ascii")


def make_records(n: int, *, seed: int, distinct_pods: bool = False) -> Records:
    """n records of the seeded corpus; ``distinct_pods``: each record from its own pod and workload."""
    enc = TrimmedEncoder(random.Random(seed + 1))
    out = Records()
    for i, (line, t, kind) in enumerate(corpus_mod.iter_lines(n, seed=seed)):
        if distinct_pods:
            # A ReplicaSet-style name the analyzer strips to "<app>-w<i>": one pod and one workload per record.
            pod = f"{line.pod.app}-w{i:x}-7c9b6d5f8d-k2x7q"
            meta = enc.kubernetes(pod, line.pod.namespace, line.container, None)
            key = f"{line.pod.namespace}/{pod}".encode()
        else:
            meta = enc.cached(line)
            key = f"{line.pod.namespace}/{line.pod.name}".encode()
        out.keys.append(key)
        out.values.append(enc(line.text, line.stream, t, meta))
        out.problems += kind == "problem"
    return out


def make_producer(bootstrap: str, **overrides: Any) -> Producer:
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "compression.type": "lz4",
        "linger.ms": 50,
        "batch.num.messages": 10_000,
        "batch.size": 1_000_000,
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "message.timeout.ms": 300_000,
        "acks": "all",
    }
    config.update(overrides)
    return Producer(config)


def produce(bootstrap: str, topic: str, records: Records, timeout: float = 600.0) -> tuple[float, dict[int, int]]:
    """Produce every record, wait for every delivery report; (seconds, end offsets from the reports).

    The end offsets come from the delivery reports, not from ListOffsets: Tansu answers ListOffsets(latest)
    with the base offset of a partition's last batch, short of the high watermark by up to one batch.
    """
    failures: list[str] = []
    ends: dict[int, int] = {}

    def on_delivery(err: Any, msg: Any) -> None:
        if err is not None:
            failures.append(str(err))
        else:
            partition, offset = msg.partition(), msg.offset()
            if offset >= ends.get(partition, 0):
                ends[partition] = offset + 1

    producer = make_producer(bootstrap, on_delivery=on_delivery)
    t0 = time.perf_counter()
    for key, value in zip(records.keys, records.values, strict=True):
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    remaining = producer.flush(timeout)
    if remaining or failures:
        raise RuntimeError(f"produce: {remaining} undelivered, {len(failures)} failed: {failures[:3]}")
    return time.perf_counter() - t0, ends


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in sorted(partitions)])
        return {tp.partition: int(end) for tp, end in ends.items()}
    finally:
        await consumer.stop()


# ---------------------------------------------------------------------------------------- (a) bare drain


@dataclass
class Rate:
    name: str
    records: int  # after the first batch
    seconds: float  # from the end of the first batch to the end of the last one
    wall: float  # from start (connect, join) to the end
    note: str = ""
    cpu: float = 0.0  # process CPU seconds (every thread) over the same steady span

    @property
    def cpu_us(self) -> float:
        """CPU microseconds a record in steady state: steadier than the rate on a shared machine."""
        return self.cpu / self.records * 1e6 if self.records else 0.0

    @property
    def per_s(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0


async def bare_drain(
    bootstrap: str, topic: str, ends: Mapping[int, int], max_records: int | None, bound: float = 300.0
) -> Rate:
    """AIOKafkaConsumer.getmany until the end offsets; touches each value's length and nothing else."""
    started = time.perf_counter()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=max_records,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in ends]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        position = dict.fromkeys(ends, 0)
        total = sum(ends.values())
        seen = 0
        first_at: float | None = None
        first_cpu = 0.0
        first_n = 0
        nbytes = 0
        deadline = time.monotonic() + bound
        while any(position[p] < ends[p] for p in ends):
            if time.monotonic() > deadline:
                raise RuntimeError(f"bare drain stuck at {position} of {dict(ends)} after {bound:.0f}s")
            batch = await consumer.getmany(timeout_ms=500, max_records=max_records)
            for tp, records in batch.items():
                for r in records:
                    nbytes += len(r.value or b"")
                seen += len(records)
                if records:
                    position[tp.partition] = records[-1].offset + 1
            if batch and first_at is None:
                first_at, first_n, first_cpu = time.perf_counter(), seen, time.process_time()
        done, done_cpu = time.perf_counter(), time.process_time()
    finally:
        await consumer.stop()
    if seen != total:
        raise RuntimeError(f"bare drain read {seen} records, expected {total}")
    return Rate(
        f"bare aiokafka drain (getmany, no processing), max_records={max_records or 'all buffered'}",
        seen - first_n,
        done - (first_at or done),
        done - started,
        cpu=done_cpu - first_cpu,
    )


# ---------------------------------------------------------------------------------- (b) pipeline in process


class TimedStore:
    """Delegates to the real store; notes when each batch (with offsets) is committed. An instrument, not a fake."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.commits: list[tuple[float, dict[int, int]]] = []
        self.cpu: list[float] = []  # process CPU time at each commit
        self.reached = asyncio.Event()
        self.ends: Mapping[int, int] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def commit_batch(
        self, group: str, changes: Changes, offsets: Sequence[OffsetUpdate], rules: Mapping[str, Rule]
    ) -> None:
        await self._store.commit_batch(group, changes, offsets, rules)
        if offsets:
            at = time.perf_counter()
            previous = self.commits[-1][1] if self.commits else {}
            stored = {**previous, **{o.partition: o.next for o in offsets}}
            self.commits.append((at, stored))
            self.cpu.append(time.process_time())
            if all(stored.get(p, 0) >= end for p, end in self.ends.items()):
                self.reached.set()


async def pipeline_in_process(
    bootstrap: str, topic: str, ends: Mapping[int, int], workdir: Path, bound: float, max_records: int
) -> tuple[Rate, int]:
    """KafkaIngest as service.run builds it (no HTTP server) until the store holds the end offsets."""
    settings = Settings(
        kafka_bootstrap=bootstrap,
        kafka_topics=(topic,),
        kafka_group=f"bench-{uuid.uuid4().hex[:8]}",
        store_url=f"sqlite:///{workdir / 'pipeline.db'}",
        kafka_max_records=max_records,
        log_level="warning",
    )
    metrics = Metrics(CollectorRegistry())
    holder = CatalogueHolder.load(settings, metrics)
    real = open_store(settings.store_url.get_secret_value())
    await real.open()
    store = TimedStore(real)
    store.ends = ends
    clock = StreamClock(time.time, settings.allowed_lateness)
    ingest = KafkaIngest(settings, lambda: holder.pipeline, cast(Store, store), metrics, clock)
    stop = asyncio.Event()
    started = time.perf_counter()
    task = asyncio.create_task(ingest.run(stop))
    try:
        await asyncio.wait_for(store.reached.wait(), bound)
    except TimeoutError:
        last = store.commits[-1][1] if store.commits else {}
        raise RuntimeError(f"pipeline stuck at {last} of {dict(ends)} after {bound:.0f}s") from None
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
    await real.close()
    with contextlib.closing(sqlite3.connect(workdir / "pipeline.db")) as conn:
        incidents = int(conn.execute("SELECT COUNT(*) FROM incidents").fetchone()[0])
    first_at, first = store.commits[0]
    last_at = store.commits[-1][0]
    records = sum(ends.values()) - sum(first.values())

    def stage(name: str) -> float:
        value = metrics.registry.get_sample_value("analyzer_batch_duration_seconds_sum", {"stage": name})
        return float(value or 0.0)

    total = stage("total")
    rate = Rate(
        "OURS: KafkaIngest in process (match, incidents, SQLite, offsets)",
        records,
        last_at - first_at,
        last_at - started,
        f"{len(store.commits)} batches; of the steady time: pipeline {stage('match') / (last_at - first_at):.0%}, "
        f"store {stage('store') / (last_at - first_at):.0%}, rest of _process "
        f"{(total - stage('match') - stage('store')) / (last_at - first_at):.0%}",
        cpu=store.cpu[-1] - store.cpu[0],
    )
    return rate, incidents


# --------------------------------------------------------------------------------- the service subprocess


class Serve:
    """``mesh-analyzer serve`` as a subprocess pinned to one CPU, its log in a file."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        store_url: str,
        log_path: Path,
        cpu: int,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.group = f"bench-{uuid.uuid4().hex[:8]}"
        env = dict(os.environ)
        env.update(
            ANALYZER_KAFKA_BOOTSTRAP=bootstrap,
            ANALYZER_KAFKA_TOPICS=topic,
            ANALYZER_KAFKA_GROUP=self.group,
            ANALYZER_STORE_URL=store_url,
            ANALYZER_HTTP_HOST="127.0.0.1",
            ANALYZER_HTTP_PORT=str(self.port),
            ANALYZER_LOG_FORMAT="json",
            ANALYZER_LOG_LEVEL="info",
        )
        env.update(extra_env or {})  # e.g. ANALYZER_ROLE
        self.log_path = log_path
        self.spawned = time.time()
        with log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(SERVE), "serve"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=lambda: os.sched_setaffinity(0, {cpu} & cpus() or cpus()),
            )

    def get(self, path: str, timeout: float = 2.0) -> tuple[int, str] | None:
        import httpx

        try:
            r = httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=timeout)
        except httpx.HTTPError:
            return None
        return r.status_code, r.text

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited with {self.proc.returncode}: {self.tail()}")
            answer = self.get("/readyz", 0.5)
            if answer is not None and answer[0] == 200:
                return
            time.sleep(0.1)
        raise RuntimeError(f"service not ready within {timeout}s: {self.tail()}")

    def metric(self, name: str) -> float:
        """Sum of a metric's samples (all label sets)."""
        answer = self.get("/metrics", 5.0)
        if answer is None:
            return float("nan")
        total = 0.0
        for line in answer[1].splitlines():
            if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def startup(self) -> dict[str, float]:
        """Seconds from spawning to each start-up milestone the service logs (JSON lines with a timestamp)."""
        import datetime as dt

        seen: dict[str, float] = {}
        with contextlib.suppress(OSError):
            for line in self.log_path.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    event = json.loads(line)
                    if event["event"] in STARTUP_EVENTS and event["event"] not in seen:
                        at = dt.datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()
                        seen[event["event"]] = at - self.spawned
        return seen

    def wait_assigned(self, timeout: float = 60.0) -> dict[str, float]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = self.startup()
            if "partitions assigned" in seen:
                return seen
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"no partitions assigned within {timeout}s: {self.tail()}")

    def tail(self, n: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return "(no log)"

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def stored_offsets(db: Path, group: str, topic: str) -> dict[int, int]:
    sql = "SELECT partition_id, next_offset FROM offsets WHERE consumer_group = ? AND topic = ?"
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
            return {int(p): int(o) for p, o in conn.execute(sql, (group, topic)).fetchall()}
    except sqlite3.OperationalError:  # not created yet
        return {}


# -------------------------------------------------------------------------------------------- (c) peak RSS


@dataclass
class RssResult:
    records: int
    pods: int
    idle_mb: float
    peak_mb: float
    final_rss_mb: float
    seconds: float
    incidents: int
    live_keys: float
    overflowed: float
    note: str = ""


def rss_run(bootstrap: str, n: int, seed: int, workdir: Path, timeout: float) -> RssResult:
    topic = f"e2e-pods-{uuid.uuid4().hex[:8]}"
    asyncio.run(ensure_topics(bootstrap, [topic], partitions=4))
    print(f"  (c) generating {n:,} records, one pod per record ...", flush=True)
    records = make_records(n, seed=seed + 7, distinct_pods=True)
    pods = len(set(records.keys))
    print(f"  (c) producing ({records.mean_bytes:.0f} B/record) ...", flush=True)
    _, ends = produce(bootstrap, topic, records)
    del records
    db = workdir / "rss.db"
    serve = Serve(bootstrap, topic, f"sqlite:///{db}", workdir / "rss-serve.log", MEASURE_CPU)
    try:
        serve.wait_ready()
        idle_hwm, _ = vm_hwm_mb(serve.proc.pid)
        t0 = time.perf_counter()
        deadline = time.monotonic() + timeout
        while True:
            stored = stored_offsets(db, serve.group, topic)
            if all(stored.get(p, 0) >= e for p, e in ends.items()):
                break
            if serve.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"service did not consume the topic: {stored} of {ends}\n{serve.tail()}")
            time.sleep(0.2)
        seconds = time.perf_counter() - t0
        time.sleep(6)  # one metrics refresh (5 s) after the last batch: live keys, incidents
        peak, rss = vm_hwm_mb(serve.proc.pid)
        live = serve.metric("analyzer_live_intervals")
        overflowed = serve.metric("analyzer_incident_keys_overflow_total")
    finally:
        serve.stop()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        incidents = int(conn.execute("SELECT COUNT(*) FROM incidents").fetchone()[0])
    return RssResult(sum(ends.values()), pods, idle_hwm, peak, rss, seconds, incidents, live, overflowed)


# ----------------------------------------------------------------------------------------------- (d) latency


@dataclass
class LatencyResult:
    rate: float
    seconds: float
    produced: int
    probes: int
    visible: list[float]
    missing: int
    poll_interval: float


def probe_record(enc: TrimmedEncoder, seq: int, t: float) -> tuple[bytes, bytes]:
    """An access line that matches ``access-upstream-no-healthy`` in a workload of its own."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"
    line = (
        f'[{stamp}] "GET /api/cart HTTP/1.1" 503 UH no_healthy_upstream - "-" 0 19 0 - "-" "curl/8.5.0" '
        f'"{uuid.uuid4()}" "cart.shop" "-" outbound|80||cart.shop.svc.cluster.local - 10.98.203.175:80 '
        "172.17.0.8:52180 - default"
    )
    pod = f"lat{seq}-7c9b6d5f8d-k2x7q"
    meta = enc.kubernetes(pod, "latency", "istio-proxy", f"lat-{seq}")
    return f"latency/{pod}".encode(), enc(line, "stdout", t, meta)


def latency_run(
    bootstrap: str, background: Records, rate: float, seconds: float, every: int, workdir: Path
) -> LatencyResult:
    topic = f"e2e-latency-{uuid.uuid4().hex[:8]}"
    asyncio.run(ensure_topics(bootstrap, [topic], partitions=4))
    db = workdir / "latency.db"
    serve = Serve(bootstrap, topic, f"sqlite:///{db}", workdir / "latency-serve.log", MEASURE_CPU)
    enc = TrimmedEncoder(random.Random(5))
    produced_at: dict[str, float] = {}
    visible_at: dict[str, float] = {}
    poll_interval = 0.02
    stop_polling = threading.Event()

    def poller() -> None:
        conn: sqlite3.Connection | None = None
        while not stop_polling.is_set():
            try:
                if conn is None:
                    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
                rows = conn.execute("SELECT workload FROM incidents WHERE namespace = 'latency'").fetchall()
            except sqlite3.Error:
                rows = []
            now = time.time()
            for (workload,) in rows:
                visible_at.setdefault(workload, now)
            stop_polling.wait(poll_interval)
        if conn is not None:
            conn.close()

    producer = make_producer(bootstrap, **{"linger.ms": 5})
    try:
        serve.wait_ready()
        # Warm up: one record through, so the group has joined and the first batch is stored.
        producer.produce(topic, background.values[0], background.keys[0])
        producer.flush(10)
        deadline = time.monotonic() + 60
        while sum(stored_offsets(db, serve.group, topic).values()) < 1:
            if time.monotonic() > deadline or serve.proc.poll() is not None:
                raise RuntimeError(f"warm-up record never stored\n{serve.tail()}")
            time.sleep(0.1)
        thread = threading.Thread(target=poller, daemon=True)
        thread.start()
        total = int(rate * seconds)
        sent = 0
        seq = 0
        t0 = time.perf_counter()
        while sent < total:
            due = min(total, int((time.perf_counter() - t0) * rate))
            while sent < due:
                if sent % every == every - 1:
                    now = time.time()
                    key, value = probe_record(enc, seq, now)
                    produced_at[f"lat-{seq}"] = now
                    seq += 1
                else:
                    i = sent % len(background.values)
                    key, value = background.keys[i], background.values[i]
                try:
                    producer.produce(topic, value, key)
                except BufferError:
                    producer.poll(0.01)
                    continue
                sent += 1
            producer.poll(0)
            time.sleep(0.002)
        elapsed = time.perf_counter() - t0
        producer.flush(30)
        wait_until = time.monotonic() + 15
        while len(visible_at) < len(produced_at) and time.monotonic() < wait_until:
            time.sleep(0.1)
        stop_polling.set()
        thread.join(5)
    finally:
        stop_polling.set()
        serve.stop()
    delays = [visible_at[w] - t for w, t in produced_at.items() if w in visible_at]
    return LatencyResult(
        sent / elapsed, elapsed, sent, len(produced_at), delays, len(produced_at) - len(delays), poll_interval
    )


# ---------------------------------------------------------------------------------------------- (e) start-up


async def bare_join(bootstrap: str, topic: str) -> float:
    """Seconds from creating a plain AIOKafkaConsumer in a new group to its first assignment: the broker's share."""
    started = time.perf_counter()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=f"bench-join-{uuid.uuid4().hex[:8]}", enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.subscribe([topic])
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=50)
        return time.perf_counter() - started
    finally:
        await consumer.stop()


def startup_run(bootstrap: str, runs: int, workdir: Path) -> tuple[list[dict[str, float]], list[float]]:
    """`serve` spawned ``runs`` times on an empty topic, each in a new group (fresh store); and the bare join."""
    topic = f"e2e-start-{uuid.uuid4().hex[:8]}"
    asyncio.run(ensure_topics(bootstrap, [topic], partitions=4))
    serves, bare = [], []
    for i in range(runs):
        serve = Serve(bootstrap, topic, f"sqlite:///{workdir / f'start{i}.db'}", workdir / f"start{i}.log", MEASURE_CPU)
        try:
            serves.append(serve.wait_assigned())
        finally:
            serve.stop()
        bare.append(asyncio.run(bare_join(bootstrap, topic)))
    return serves, bare


# -------------------------------------------------------------------------------------------------- main


@contextlib.contextmanager
def pinned(pid: int, cpu: int) -> Iterator[None]:
    pin_process(pid, {cpu})
    try:
        yield
    finally:
        pin_process(pid, cpus())


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--records", type=int, default=1_000_000, help="records for (a)/(b) and (c)")
    p.add_argument("--quick", action="store_true", help="100k records, a 10 s latency run")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--max-records", type=int, default=0, help="getmany max_records in (a)/(b); 0: the default")
    p.add_argument("--seed", type=int, default=corpus_mod.DEFAULT_SEED)
    p.add_argument("--latency-rate", type=float, default=10_000.0, help="records/s in (d)")
    p.add_argument("--latency-seconds", type=float, default=25.0)
    p.add_argument("--probe-every", type=int, default=100, help="one probe record every N in (d)")
    p.add_argument("--skip", default="", help="comma list of parts to skip: ab,c,d,e")
    p.add_argument("--startup-runs", type=int, default=3, help="`serve` starts timed in (e)")
    p.add_argument("--timeout", type=float, default=600.0, help="bound for each consuming part, seconds")
    p.add_argument("--keep", action="store_true", help="keep the work dir (stores, service and broker logs)")
    args = p.parse_args(argv)
    if args.quick:
        args.records = 100_000
        args.latency_seconds = min(args.latency_seconds, 10.0)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    from analyzer.logging import configure

    configure("warning", "console")  # the in-process ingest's per-batch debug lines would time the terminal
    max_records = args.max_records or Settings(kafka_bootstrap="x").kafka_max_records

    ok, how = crecords_in_use()
    print(
        f"e2e_bench: {time.strftime('%Y-%m-%d %H:%M:%S')}  python {platform.python_version()}  "
        f"{os.cpu_count()} CPUs  load avg {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(f"aiokafka C extension: {'yes' if ok else 'NO'} ({how})")
    if not ok:
        print("  WARNING: the pure-Python record path is ~35x slower; the rates below are not representative")

    workdir = Path(tempfile.mkdtemp(prefix="e2e-bench-"))
    broker = LocalBroker(log_path=workdir / "broker.log").start()
    assert broker.process is not None
    pin_process(broker.process.pid, {OTHER_CPU})
    me = os.getpid()
    failures: list[str] = []
    try:
        records: Records | None = None
        if "ab" not in skip or "d" not in skip:
            t0 = time.perf_counter()
            records = make_records(args.records, seed=args.seed)
            print(
                f"corpus: {len(records.values):,} Fluent Bit records, mean {records.mean_bytes:.0f} B, "
                f"{records.problems:,} problem lines ({records.problems / len(records.values):.2%}), "
                f"{len(set(records.keys))} pods; generated in {time.perf_counter() - t0:.1f}s (seed {args.seed})"
            )
        if "ab" not in skip and records is not None:
            topic = f"e2e-{uuid.uuid4().hex[:8]}"
            asyncio.run(ensure_topics(broker.bootstrap, [topic], partitions=args.partitions))
            took, ends = produce(broker.bootstrap, topic, records)
            listed = asyncio.run(end_offsets(broker.bootstrap, topic))
            print(
                f"produced {sum(ends.values()):,} records (lz4, keyed by pod, {args.partitions} partitions) "
                f"in {took:.1f}s = {fmt_rate(sum(ends.values()) / took)}/s"
            )
            if listed != ends:
                print(
                    f"  note: the broker's ListOffsets(latest) says {sum(listed.values()):,} ({listed}); the delivery "
                    f"reports say {sum(ends.values()):,} ({ends}): Tansu answers with the last batch's base offset"
                )
            with pinned(me, MEASURE_CPU):
                # The drain at every batch size a consumer would pick (ours is compared with the fastest): a
                # larger batch costs the drain too, so comparing at ours alone would flatter a large one.
                drains = []
                for size in dict.fromkeys((max_records, *BARE_SIZES)):
                    print(f"  (a) bare drain, max_records={size or 'all'} ...", flush=True)
                    drains.append(asyncio.run(bare_drain(broker.bootstrap, topic, ends, size, args.timeout)))
                bare = max(drains, key=lambda r: r.per_s)
                print("  (b) pipeline in process ...", flush=True)
                ours, incidents = asyncio.run(
                    pipeline_in_process(broker.bootstrap, topic, ends, workdir, args.timeout, max_records)
                )
            mb = records.mean_bytes
            print()
            print(
                f"(a)/(b) throughput, {sum(ends.values()):,} records; both consumers pinned to CPU {MEASURE_CPU}, "
                f"the broker to CPU {OTHER_CPU}; ours with max_records={max_records}; "
                "steady state (after the first batch)"
            )
            head = (
                f"  {'design':<70} {'records/s':>10} {'MB/s':>7} {'vs bare':>8} {'CPU µs/rec':>10} {'wall s':>7}  note"
            )
            print(head)
            print("  " + "-" * (len(head) - 2))
            for r in (*drains, ours):
                note = r.note if r is not ours else f"{r.note}, {incidents} incidents stored"
                note = "the fastest drain: what ours is compared with" if r is bare else note
                print(
                    f"  {r.name:<70} {fmt_rate(r.per_s):>10} {r.per_s * mb / 1e6:>7.0f} "
                    f"{r.per_s / bare.per_s:>7.2f}x {r.cpu_us:>10.2f} {r.wall:>7.1f}  {note}"
                )
            ratio = ours.per_s / bare.per_s
            line = f"pipeline >= {TARGET_RATIO}x bare drain on one core: {ratio:.2f}x"
            print(f"  CPU a record in steady state, ours / bare: {ours.cpu_us / bare.cpu_us:.2f}x (every thread)")
            print(f"  {'PASS' if ratio >= TARGET_RATIO else 'MISS'}  {line}")
            if ratio < TARGET_RATIO:
                failures.append(line)
        if "c" not in skip:
            print()
            print(f"(c) peak RSS of `mesh-analyzer serve` (pinned to CPU {MEASURE_CPU}), one pod per record")
            rss = rss_run(broker.bootstrap, args.records, args.seed, workdir, args.timeout)
            print(
                f"  {rss.records:,} records from {rss.pods:,} distinct pods/workloads consumed in {rss.seconds:.1f}s "
                f"({fmt_rate(rss.records / rss.seconds)}/s, including group join)"
            )
            print(
                f"  VmHWM after start-up (idle, ready): {rss.idle_mb:.0f} MB; peak VmHWM: {rss.peak_mb:.0f} MB; "
                f"VmRSS at the end: {rss.final_rss_mb:.0f} MB"
            )
            print(
                f"  incidents stored: {rss.incidents:,}; live keys (analyzer_live_intervals): {rss.live_keys:.0f}; "
                f"occurrences folded into overflow keys: {rss.overflowed:.0f}"
            )
            line = f"peak RSS <= {TARGET_RSS_MB:.0f} MB with {rss.pods:,} distinct pods: {rss.peak_mb:.0f} MB"
            print(f"  {'PASS' if rss.peak_mb <= TARGET_RSS_MB else 'MISS'}  {line}")
            if rss.peak_mb > TARGET_RSS_MB:
                failures.append(line)
        if "d" not in skip and records is not None:
            print()
            print(
                f"(d) produce -> incident visible in the store, paced {fmt_rate(args.latency_rate)} records/s for "
                f"{args.latency_seconds:.0f}s, one probe (own workload) every {args.probe_every} records; "
                f"`serve` pinned to CPU {MEASURE_CPU}"
            )
            lat = latency_run(
                broker.bootstrap, records, args.latency_rate, args.latency_seconds, args.probe_every, workdir
            )
            v = lat.visible
            print(
                f"  produced {lat.produced:,} records at {fmt_rate(lat.rate)}/s; probes {lat.probes:,}, "
                f"visible {len(v):,}, not visible within 15 s after the run: {lat.missing}"
            )
            if v:
                print(
                    f"  latency s: p50 {percentile(v, 50):.3f}  p90 {percentile(v, 90):.3f}  "
                    f"p99 {percentile(v, 99):.3f}  max {max(v):.3f}  mean {statistics.fmean(v):.3f}  "
                    f"(store polled every {lat.poll_interval * 1000:.0f} ms: adds up to that much)"
                )
            p99 = percentile(v, 99) if v else float("inf")
            good = p99 <= TARGET_P99 and lat.missing == 0
            line = f"p99 produce->visible <= {TARGET_P99:.0f} s at {fmt_rate(args.latency_rate)}/s: {p99:.3f} s"
            print(f"  {'PASS' if good else 'MISS'}  {line}")
            if not good:
                failures.append(line)
        if "e" not in skip:
            print()
            print(
                "(e) start-up of `mesh-analyzer serve` to its first assignment (new group, 4 partitions, empty "
                f"topic), seconds from spawning, median of {args.startup_runs}"
            )
            serves, joins = startup_run(broker.bootstrap, args.startup_runs, workdir)
            for event in STARTUP_EVENTS:
                times = [run[event] for run in serves if event in run]
                print(f"  {event:<22} {statistics.median(times):6.2f}  (runs: {', '.join(f'{t:.2f}' for t in times)})")
            join = statistics.median(joins)
            assigned = statistics.median(run["partitions assigned"] for run in serves)
            print(f"  bare aiokafka consumer, created to assigned (the broker's group join): {join:.2f}")
            print(f"  ours (assigned minus the bare join): {assigned - join:.2f}")
    finally:
        broker.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(f"load avg at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("targets missed: " + ("; ".join(failures) if failures else "none"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
