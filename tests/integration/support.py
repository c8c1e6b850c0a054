"""Helpers for the service tests: Fluent Bit records, librdkafka producers, the service as a subprocess.

Nothing here is mocked: records go through confluent-kafka (the library inside Fluent Bit's kafka output)
into the bundled Tansu broker, the real ``mesh-analyzer serve`` consumes them, and the tests read the
incidents back from the store the service wrote (SQLite file or a fresh PostgreSQL schema).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import Consumer, Producer, TopicPartition

from analyzer.broker import ensure_topics, free_port
from analyzer.store import IncidentQuery, IncidentRow, Store, open_store

SERVE = Path(sys.executable).parent / "mesh-analyzer"
CODECS = ("none", "gzip", "snappy", "lz4", "zstd")

# (rule id, cluster, namespace, workload): what the tests count incidents by.
CountKey = tuple[str, str, str, str]


# -- time formats -------------------------------------------------------------------------------------------


def iso_micro(t: float) -> str:
    """Istio's own line timestamp: UTC, microseconds, Z (pkg/log formatDate)."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def iso_millis(t: float) -> str:
    """Envoy access-log START_TIME."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def iso_nanos(t: float) -> str:
    """The CRI log file's time, which Fluent Bit's cri parser keeps in ``time``."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"


# -- Fluent Bit records ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pod:
    name: str
    namespace: str
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> bytes:
        """Fluent Bit's kafka output keyed by pod (message_key_field): a pod's lines share a partition."""
        return f"{self.namespace}/{self.name}".encode()


def fluent_bit_record(
    pod: Pod,
    container: str,
    line: str,
    t: float,
    *,
    stream: str = "stdout",
    extra: Mapping[str, Any] | None = None,
) -> bytes:
    """One record as tail (cri multiline) + kubernetes filter + kafka output (format json) emit it.

    ``@timestamp`` comes first as a double (the output's default timestamp_format); json.dumps escapes
    non-ASCII as \\uXXXX like Fluent Bit's encoder.
    """
    digest = hashlib.sha256(f"{pod.namespace}/{pod.name}/{container}".encode()).hexdigest()
    record: dict[str, Any] = {
        "@timestamp": t,
        "time": iso_nanos(t),
        "stream": stream,
        "_p": "F",
        "log": line,
        "kubernetes": {
            "pod_name": pod.name,
            "namespace_name": pod.namespace,
            "pod_id": str(uuid.UUID(digest[:32])),
            "labels": dict(pod.labels),
            "host": "gke-node-pool-1-a1b2",
            "pod_ip": "10.8.0.17",
            "container_name": container,
            "docker_id": digest,
            "container_hash": f"docker.io/istio/proxyv2@sha256:{digest}",
            "container_image": "docker.io/istio/proxyv2:1.22.3",
        },
    }
    if extra:
        record.update(extra)
    return json.dumps(record, separators=(",", ":")).encode()


# -- broker and topics -----------------------------------------------------------------------------------------


def create_topic(bootstrap: str, partitions: int = 1, prefix: str = "it") -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    asyncio.run(ensure_topics(bootstrap, [name], partitions=partitions))
    return name


# -- producing -------------------------------------------------------------------------------------------------


@dataclass
class Message:
    value: bytes | None  # None: a tombstone (Kafka allows it; Fluent Bit never sends one)
    key: bytes | None = None
    tag: CountKey | None = None  # the (rule, key) this record must count towards, if any
    partition: int | None = None  # None: librdkafka's partitioner (by key)


@dataclass
class Produced:
    """Where each message landed: (partition, offset, tag) in production order, and the end offsets."""

    placed: list[tuple[int, int, CountKey | None]] = field(default_factory=list)

    @property
    def ends(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for partition, offset, _ in self.placed:
            out[partition] = max(out.get(partition, 0), offset + 1)
        return out

    def expected(self, upto: Mapping[int, int] | None = None) -> Counter[CountKey]:
        """Counts per (rule, key) of the messages below ``upto`` (next offsets per partition; None: all)."""
        out: Counter[CountKey] = Counter()
        for partition, offset, tag in self.placed:
            if tag is not None and (upto is None or offset < upto.get(partition, 0)):
                out[tag] += 1
        return out

    def merge(self, other: Produced) -> None:
        self.placed.extend(other.placed)


def make_producer(bootstrap: str, codec: str = "lz4", **overrides: Any) -> Producer:
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "compression.type": codec,
        "linger.ms": 20,
        "batch.num.messages": 2000,
        "message.max.bytes": 8_000_000,
        "queue.buffering.max.messages": 500_000,
        "message.timeout.ms": 120_000,
        "acks": "all",
    }
    config.update(overrides)
    return Producer(config)


def produce(
    bootstrap: str,
    topic: str,
    messages: Iterable[Message],
    *,
    codec: str = "lz4",
    producer: Producer | None = None,
    flush_timeout: float = 60.0,
) -> Produced:
    """Produce and wait for every delivery report; fails the test on any delivery error."""
    own = producer is None
    p = make_producer(bootstrap, codec) if producer is None else producer
    produced = Produced()
    errors: list[str] = []
    reports: list[tuple[int, int, int, CountKey | None]] = []

    def report(seq: int, tag: CountKey | None) -> Callable[[Any, Any], None]:
        def on_delivery(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(str(err))
            else:
                reports.append((seq, msg.partition(), msg.offset(), tag))

        return on_delivery

    for seq, m in enumerate(messages):
        kwargs: dict[str, Any] = {"value": m.value, "key": m.key, "on_delivery": report(seq, m.tag)}
        if m.partition is not None:
            kwargs["partition"] = m.partition
        while True:
            try:
                p.produce(topic, **kwargs)
                break
            except BufferError:
                p.poll(0.1)
        p.poll(0)
    remaining = p.flush(flush_timeout)
    assert remaining == 0, f"{remaining} messages still undelivered after {flush_timeout}s"
    assert not errors, f"delivery failed: {errors[:3]}"
    for _, partition, offset, tag in sorted(reports):
        produced.placed.append((partition, offset, tag))
    if own:
        del p
    return produced


# -- stores ----------------------------------------------------------------------------------------------------


class StoreView:
    """Reads what the service wrote, through the store's own protocol (one event loop kept open)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._runner = asyncio.Runner()
        self._store: Store = open_store(url)
        self._runner.run(self._store.open())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._runner.run(self._store.close())
        self._runner.close()

    def offsets(self, group: str, topic: str) -> dict[int, int]:
        return self._runner.run(self._store.load_offsets(group, topic))

    def stream_time(self, group: str) -> float | None:
        return self._runner.run(self._store.stream_time(group))

    def incidents(
        self, stream_time: float | None = None, rule: str | None = None, *, evidence: bool = False
    ) -> list[IncidentRow]:
        """Every stored incident, status derived at ``stream_time`` (default: now). List pages carry no
        evidence; ``evidence=True`` reads each incident whole."""
        at = time.time() if stream_time is None else stream_time
        rows: list[IncidentRow] = []
        cursor: str | None = None
        while True:
            page = self._runner.run(
                self._store.list_incidents(IncidentQuery(stream_time=at, rule=rule, limit=1000, cursor=cursor))
            )
            rows.extend(page.items)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        if not evidence:
            return rows
        whole = [self._runner.run(self._store.get_incident(row.id, at)) for row in rows]
        return [row for row in whole if row is not None]

    def counts(self) -> Counter[CountKey]:
        """Summed counts per (rule, cluster, namespace, workload) over all stored intervals."""
        out: Counter[CountKey] = Counter()
        for row in self.incidents():
            out[(row.rule_id, row.key.cluster, row.key.namespace, row.key.workload)] += row.count
        return out


# -- the service -----------------------------------------------------------------------------------------------


class ServiceProcess:
    """``mesh-analyzer serve`` as a subprocess, its output in a log file."""

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self.env = dict(env)
        self.port = int(env["ANALYZER_HTTP_PORT"])
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.base = f"http://127.0.0.1:{self.port}"

    def start(self) -> ServiceProcess:
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(SERVE), "serve"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def log_events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    out.append(event)
        return out

    def get(self, path: str, timeout: float = 1.0) -> httpx.Response | None:
        """One HTTP GET, or None when the service does not answer within ``timeout``."""
        try:
            return httpx.get(self.base + path, timeout=timeout)
        except httpx.HTTPError:
            return None

    def readyz(self, timeout: float = 1.0) -> int | None:
        response = self.get("/readyz", timeout)
        return None if response is None else response.status_code

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise AssertionError(f"service exited with {self.returncode}:\n{self.log_tail()}")
            if self.readyz(0.5) == 200:
                return
            time.sleep(0.1)
        raise AssertionError(f"service not ready within {timeout}s:\n{self.log_tail()}")

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        response = self.get("/metrics", 5.0)
        assert response is not None and response.status_code == 200, "no /metrics"
        return parse_metrics(response.text)

    def terminate(self, timeout: float = 40.0) -> int:
        """SIGTERM, then wait for the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def cleanup(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text format -> {(name, sorted labels): value}."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m:
            labels = tuple(sorted(_LABEL.findall(m.group(2) or "")))
            out[(m.group(1), labels)] = float(m.group(3))
    return out


@dataclass
class Services:
    """Starts services for one test; every one still running at the end is killed."""

    tmp_path: Path
    started: list[ServiceProcess] = field(default_factory=list)

    def spawn(
        self,
        *,
        bootstrap: str,
        topics: Iterable[str],
        group: str,
        store_url: str,
        cluster: str = "it-cluster",
        max_records: int | None = None,
        wait: bool = True,
        **extra: str,
    ) -> ServiceProcess:
        env = dict(os.environ)
        env.update(
            ANALYZER_KAFKA_BOOTSTRAP=bootstrap,
            ANALYZER_KAFKA_TOPICS=",".join(topics),
            ANALYZER_KAFKA_GROUP=group,
            ANALYZER_STORE_URL=store_url,
            ANALYZER_HTTP_HOST="127.0.0.1",
            ANALYZER_HTTP_PORT=str(free_port()),
            ANALYZER_CLUSTER=cluster,
            ANALYZER_LOG_FORMAT="json",
            ANALYZER_LOG_LEVEL="info",
            # A SIGKILLed consumer holds its partitions until its group session expires, and the broker
            # delays a group's first assignment by half of it: a short session keeps restarts quick.
            ANALYZER_KAFKA_SESSION_TIMEOUT="3",
        )
        if max_records is not None:
            env["ANALYZER_KAFKA_MAX_RECORDS"] = str(max_records)
        env.update({f"ANALYZER_{k.upper()}": v for k, v in extra.items()})
        service = ServiceProcess(env, self.tmp_path / f"service-{len(self.started)}.log")
        self.started.append(service)
        service.start()
        if wait:
            service.wait_ready()
        return service

    def restart(self, service: ServiceProcess, wait: bool = True) -> ServiceProcess:
        """The same configuration (same port) in a new process."""
        fresh = ServiceProcess(service.env, self.tmp_path / f"service-{len(self.started)}.log")
        self.started.append(fresh)
        fresh.start()
        if wait:
            fresh.wait_ready()
        return fresh


def wait_consumed(
    view: StoreView,
    group: str,
    topic: str,
    ends: Mapping[int, int],
    running: Iterable[ServiceProcess],
    timeout: float = 90.0,
) -> None:
    """Until the store's offsets for the group reach the end offsets (the service stored every batch)."""
    running = list(running)
    deadline = time.monotonic() + timeout
    stored: dict[int, int] = {}
    while time.monotonic() < deadline:
        stored = view.offsets(group, topic)
        if all(stored.get(p, 0) >= end for p, end in ends.items()):
            return
        dead = [s for s in running if not s.alive()]
        if dead:
            raise AssertionError(f"service exited with {dead[0].returncode}:\n{dead[0].log_tail()}")
        time.sleep(0.05)
    tails = "\n---\n".join(s.log_tail() for s in running)
    raise AssertionError(f"not consumed within {timeout}s: stored {stored}, ends {dict(ends)}\n{tails}")


def kafka_committed(bootstrap: str, group: str, topic: str, partitions: Iterable[int]) -> dict[int, int]:
    """The group's committed offsets in Kafka (the service's advisory commits, for lag tooling), read with
    librdkafka as lag exporters do; partitions with none are left out."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        got = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return {tp.partition: tp.offset for tp in got if tp.offset >= 0}
    finally:
        consumer.close()


def poll(predicate: Callable[[], bool], timeout: float, interval: float = 0.1, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout}s")


# -- a small mesh: pods, the lines they print, and the incident each line must count towards ----------------

ISTIOD_CONTAINER = "discovery"


def istiod_pod(namespace: str = "istio-system", revision: str = "default") -> Pod:
    """istiod's Deployment pod; a non-default revision groups its incidents as ``istiod-<revision>``."""
    name = "istiod" if revision == "default" else f"istiod-{revision}"
    return Pod(
        f"{name}-5d8f7c9b6d-k2x7q",
        namespace,
        {"app": "istiod", "istio": "pilot", "istio.io/rev": revision, "pod-template-hash": "5d8f7c9b6d"},
    )


def app_pod(workload: str, namespace: str, *, labelled: bool = True, suffix: str = "6b746f74dc-9stvs") -> Pod:
    """A Deployment pod with a sidecar. Unlabelled pods derive their workload from the name."""
    labels = {"app": workload, "pod-template-hash": suffix.split("-")[0]} if labelled else {}
    return Pod(f"{workload}-{suffix}", namespace, labels)


def apiserver_error(t: float) -> str:
    return (
        f"{iso_micro(t)}\terror\tklog\tk8s.io/client-go@v0.25.2/tools/cache/reflector.go:169: Failed to watch "
        '*v1.Service: failed to list *v1.Service: Get "https://10.96.0.1:443/api/v1/services?limit=500&'
        'resourceVersion=0": dial tcp 10.96.0.1:443: connect: connection refused'
    )


def xds_nack(t: float) -> str:
    return (
        f"{iso_micro(t)}\twarn\tads\tADS:CDS: ACK ERROR productpage-v1-6b746f74dc-9stvs.default "
        "Internal:Error adding/updating cluster(s) outbound|9080||reviews.default.svc.cluster.local: "
        "Proto constraint validation failed"
    )


def no_healthy_upstream(t: float, host: str = "cart.shop") -> str:
    return (
        f'[{iso_millis(t)}] "GET /api/cart HTTP/1.1" 503 UH no_healthy_upstream - "-" 0 19 0 - "-" "curl/8.5.0" '
        f'"{uuid.uuid4()}" "{host}" "-" outbound|80||{host}.svc.cluster.local - 10.98.203.175:80 '
        "172.17.0.8:52180 - default"
    )


def envoy_crashed(t: float) -> str:
    return f"{iso_micro(t)}\terror\tEnvoy exited with error: signal: segmentation fault"


def iptables_failed(_: float) -> str:
    return "iptables-restore: line 2 failed"  # istio-init prints no timestamp: event time from @timestamp


def access_ok(t: float, n: int) -> str:
    return (
        f'[{iso_millis(t)}] "GET /productpage?item={n} HTTP/1.1" 200 - via_upstream - "-" 0 5293 30 29 "-" '
        f'"curl/8.5.0" "{uuid.uuid4()}" "productpage.default" "10.8.0.21:9080" inbound|9080|| 127.0.0.6:51567 '
        "10.8.0.21:9080 10.8.0.30:43210 outbound_.9080_._.productpage.default.svc.cluster.local default"
    )


def istiod_info(t: float, n: int) -> str:
    return (
        f"{iso_micro(t)}\tinfo\tads\tPush debounce stable[{n}] 1 for config ServiceEntry/default/ext: "
        "100.2ms since last change, 100.2ms since last push, full=true"
    )


def app_info(_: float, n: int) -> str:
    return f"GET /health 200 {n % 97}.{n % 10}ms"


@dataclass(frozen=True)
class Source:
    """A (pod, container) that prints one kind of matching line, and the incident key it must land on."""

    pod: Pod
    container: str
    rule: str
    line: Callable[[float], str]
    workload: str  # the workload the service must derive (from labels or the pod name)

    def tag(self, cluster: str) -> CountKey:
        return (self.rule, cluster, self.pod.namespace, self.workload)

    def message(self, t: float, cluster: str) -> Message:
        return Message(fluent_bit_record(self.pod, self.container, self.line(t), t), self.pod.key, self.tag(cluster))


def sources(namespace_suffix: str = "") -> list[Source]:
    """Several keys over several rules: labelled and unlabelled pods, istiod by revision, istio-init."""
    shop = f"shop{namespace_suffix}"
    books = f"bookinfo{namespace_suffix}"
    system = f"istio-system{namespace_suffix}"
    cart = app_pod("cart", shop)
    reviews = app_pod("reviews-v2", books, labelled=False, suffix="7d79d5bd5d-tq7wz")
    payments = Pod("payments-84c5f7b9d8-x9z2p", shop, {"app.kubernetes.io/name": "payments"})
    return [
        Source(istiod_pod(system), ISTIOD_CONTAINER, "istiod-apiserver-unreachable", apiserver_error, "istiod"),
        Source(istiod_pod(system, "1-21"), ISTIOD_CONTAINER, "istiod-xds-nack", xds_nack, "istiod-1-21"),
        Source(cart, "istio-proxy", "access-upstream-no-healthy", no_healthy_upstream, "cart"),
        Source(reviews, "istio-proxy", "proxy-envoy-crashed", envoy_crashed, "reviews-v2"),
        Source(payments, "istio-init", "istio-init-iptables-failure", iptables_failed, "payments"),
    ]


def noise(pods: list[Pod], t: float, n: int) -> Message:
    """A line that matches no rule, from one of the pods (access log, istiod info, app output)."""
    pod = pods[n % len(pods)]
    kind = n % 3
    if kind == 0:
        return Message(fluent_bit_record(pod, "istio-proxy", access_ok(t, n), t), pod.key)
    if kind == 1:
        return Message(fluent_bit_record(pod, ISTIOD_CONTAINER, istiod_info(t, n), t), pod.key)
    return Message(fluent_bit_record(pod, "app", app_info(t, n), t), pod.key)


def mixed_stream(
    n: int,
    *,
    cluster: str,
    rng: random.Random,
    match_ratio: float = 0.1,
    t0: float | None = None,
    bursts: tuple[float, ...] = (0.0,),
    burst_length: float = 120.0,
    namespace_suffix: str = "",
) -> list[Message]:
    """``n`` records, ``match_ratio`` of them matching, event times in bursts starting at t0 + each offset.

    Event times are shuffled (records of one key arrive out of order, across partitions); bursts further
    apart than a rule's resolve_after give that key several intervals.
    """
    start = time.time() - 600 if t0 is None else t0
    srcs = sources(namespace_suffix)
    pods = [s.pod for s in srcs]
    out = []
    for i in range(n):
        t = start + rng.choice(bursts) + rng.uniform(0, burst_length)
        if rng.random() < match_ratio:
            out.append(srcs[rng.randrange(len(srcs))].message(t, cluster))
        else:
            out.append(noise(pods, t, i))
    return out


class Shipper:
    """Produces chunks in a background thread until stopped, as Fluent Bit ships a live cluster's logs."""

    def __init__(self, bootstrap: str, topic: str, chunk: Callable[[], list[Message]], pause: float = 0.05) -> None:
        self.bootstrap, self.topic, self.chunk, self.pause = bootstrap, topic, chunk, pause
        self.produced = Produced()
        self.failure: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Shipper:
        self._thread.start()
        return self

    def _run(self) -> None:
        producer = make_producer(self.bootstrap, "lz4")
        try:
            while not self._stop.is_set():
                self.produced.merge(produce(self.bootstrap, self.topic, self.chunk(), producer=producer))
                self._stop.wait(self.pause)
        except BaseException as exc:  # reported by stop()
            self.failure.append(exc)

    def stop(self, timeout: float = 150.0) -> Produced:
        self._stop.set()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "producer thread did not finish"
        assert not self.failure, self.failure
        return self.produced
