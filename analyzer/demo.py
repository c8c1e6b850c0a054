"""A demo stream for `make run`: realistic mesh traffic in Fluent Bit's record shape with the seed problems.

Healthy Envoy access logs and istiod pushes, plus: a short API-server outage seen by istiod (transient), an
RBAC error that does not heal, istio-init failing to apply iptables rules, and an app that starts before its
proxy is ready. Everything is stamped with the current time, so incidents appear within a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
import time
import uuid
from collections.abc import Iterator

import orjson
import structlog

log = structlog.get_logger("analyzer.demo")

Record = tuple[bytes, bytes]  # (key, value)


def _istio_time(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _record(t: float, line: str, pod: str, namespace: str, container: str, app: str) -> Record:
    value = {
        "@timestamp": round(t, 6),
        "time": _istio_time(t),
        "stream": "stdout",
        "_p": "F",
        "log": line,
        "kubernetes": {
            "pod_name": pod,
            "namespace_name": namespace,
            "container_name": container,
            "labels": {"app": app, "service.istio.io/canonical-name": app},
            "host": "gke-demo-default-pool-1a2b3c4d-x9z8",
        },
    }
    return pod.encode(), orjson.dumps(value)


def _access_line(t: float, rng: random.Random) -> str:
    code, flags, details = rng.choice([(200, "-", "via_upstream")] * 30 + [(404, "-", "via_upstream")])
    path = rng.choice(["/productpage", "/reviews/0", "/ratings/0", "/details/0", "/static/css/app.css"])
    start = dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return (
        f'[{start}] "GET {path} HTTP/1.1" {code} {flags} {details} - "-" 0 {rng.randint(100, 5000)} '
        f'{rng.randint(1, 40)} {rng.randint(1, 35)} "-" "Mozilla/5.0" "{uuid.UUID(int=rng.getrandbits(128))}" '
        f'"productpage:9080" "10.8.{rng.randint(0, 9)}.{rng.randint(2, 250)}:9080" '
        "inbound|9080|| 127.0.0.6:51234 10.8.1.17:9080 10.8.0.1:40122 "
        "outbound_.9080_._.productpage.bookinfo.svc.cluster.local default"
    )


APISERVER_DOWN = (
    "k8s.io/client-go@v0.21.2/tools/cache/reflector.go:167: Failed to watch *v1.ConfigMap: failed to list "
    '*v1.ConfigMap: Get "https://10.96.0.1:443/api/v1/configmaps?limit=500&resourceVersion=0": '
    "dial tcp 10.96.0.1:443: connect: connection refused"
)
RBAC = (
    "k8s.io/client-go@v0.25.2/tools/cache/reflector.go:169: Failed to watch *v1.Deployment: failed to list "
    '*v1.Deployment: deployments.apps is forbidden: User "system:serviceaccount:istio-system:istiod" cannot '
    'list resource "deployments" in API group "apps" at the cluster scope'
)


def demo_records(now: float, rng: random.Random) -> Iterator[Record]:
    """One minute of traffic ending at ``now``, with the seed problems somewhere in it."""
    istiod = ("istiod-6b7c9d5f4-q2w8r", "istio-system", "discovery", "istiod")
    for i in range(600):
        t = now - 60 + i * 0.1
        pod = f"productpage-v1-7d9c6b8f5-{'abcde'[i % 5]}x{i % 3}z"
        yield _record(t, _access_line(t, rng), pod, "bookinfo", "istio-proxy", "productpage")
        if i % 50 == 0:
            line = f"{_istio_time(t)}\tinfo\tads\tCDS: PUSH for node:{pod}.bookinfo resources:23 size:19.9kB"
            yield _record(t, line, *istiod)
    # istiod loses the API server for ~20 s (an API-server restart): transient.
    for k in range(10):
        t = now - 40 + 2 * k
        yield _record(t, f"{_istio_time(t)}\terror\tklog\t{APISERVER_DOWN}", *istiod)
    # A permission istiod does not have: persistent.
    for k in range(3):
        t = now - 30 + 10 * k
        yield _record(t, f"{_istio_time(t)}\terror\tklog\t{RBAC}", *istiod)
    # istio-init cannot program iptables (no CAP_NET_ADMIN under a restrictive policy).
    t = now - 20
    init = ("ratings-v1-5c8d7b6f9-k3m2n", "bookinfo", "istio-init", "ratings")
    yield _record(t, "iptables-restore: line 2 failed", *init)
    yield _record(t + 0.01, "iptables v1.8.7 (legacy): can't initialize iptables table `nat': Permission denied", *init)
    # reviews starts, its app dials out before the sidecar is ready.
    reviews = ("reviews-v2-6f8d9c7b5-p4q7s", "bookinfo")
    t = now - 15
    not_ready = (
        f"{_istio_time(t)}\tinfo\tEnvoy proxy is NOT ready: config not received from Pilot (is Pilot running?): "
        "cds updates: 0 successful, 0 rejected; lds updates: 0 successful, 0 rejected"
    )
    yield _record(t, not_ready, *reviews, "istio-proxy", "reviews")
    refused = "Error: failed to create connection to ratings, err=dial tcp 10.8.3.21:9080: connect: connection refused"
    yield _record(t + 0.5, refused, *reviews, "reviews", "reviews")
    yield _record(t + 3, f"{_istio_time(t + 3)}\tinfo\tEnvoy proxy is ready", *reviews, "istio-proxy", "reviews")


async def feed(bootstrap: str, topic: str, stop: asyncio.Event, *, interval: float = 30.0) -> None:
    """Produce the demo minute now, then healthy-plus-problems minutes every ``interval`` seconds."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    rng = random.Random(7)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, compression_type="lz4", linger_ms=20)
    await producer.start()
    try:
        while not stop.is_set():
            batch = list(demo_records(time.time(), rng))
            try:
                for key, value in batch:
                    await producer.send(topic, value=value, key=key)
                await asyncio.wait_for(producer.flush(), 30)
                log.info("demo records produced", records=len(batch), topic=topic)
            except (KafkaError, TimeoutError) as exc:
                log.warning("demo feed failed", error=str(exc) or type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
    finally:
        await asyncio.wait_for(producer.stop(), 10)
