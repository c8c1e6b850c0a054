"""Builders for the API tests: a real service (real catalogue, real SQLite store in tmp_path, no Kafka)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from analyzer.config import Settings
from analyzer.incidents import StreamClock
from analyzer.metrics import Metrics
from analyzer.service import CatalogueHolder, Service, api_for, store_for
from analyzer.store import Store
from analyzer.types import Changes, Evidence, IncidentKey, Interval

ROOT = Path(__file__).resolve().parents[2]
PATTERNS = ROOT / "patterns"
TOKEN = "t0k3n-for-tests"
GROUP = "mesh-analyzer"
# Fixed clocks: stream time is what the store was last told; the wall clock drives silence expiry.
STREAM_TIME = 1_700_000_000.0
WALL = STREAM_TIME + 60.0


def interval(
    rule_id: str,
    *,
    first_seen: float,
    last_seen: float | None = None,
    count: int = 3,
    cluster: str = "prod",
    namespace: str = "shop",
    workload: str = "checkout",
    pods: Sequence[str] = ("checkout-7d9f8b6c5d-x2x4q",),
    container: str | None = "istio-proxy",
    line: str = "upstream connect error or disconnect/reset before headers",
) -> Interval:
    last = first_seen if last_seen is None else last_seen
    head = tuple(Evidence(first_seen + i, f"{line} #{i}", pods[0] if pods else None, container) for i in range(2))
    tail = (Evidence(last, f"{line} (last)", pods[-1] if pods else None, container),)
    return Interval(
        rule_id=rule_id,
        key=IncidentKey(cluster, namespace, workload),
        first_seen=first_seen,
        last_seen=last,
        count=count,
        head=head,
        tail=tail,
        pods=tuple(sorted(pods)),
    )


@dataclass
class Harness:
    settings: Settings
    service: Service
    app: FastAPI
    client: httpx.AsyncClient

    @property
    def store(self) -> Store:
        return self.service.store

    async def commit(self, *intervals: Interval, stream_time: float = STREAM_TIME) -> None:
        rules = self.service.holder.catalogue.by_id()
        await self.store.commit_batch(GROUP, Changes(merges=intervals, stream_time=stream_time), [], rules)


async def build_service(settings: Settings) -> Service:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    holder = CatalogueHolder.load(settings, metrics)
    store = store_for(settings)
    await store.open()
    clock = StreamClock(time.time, settings.allowed_lateness)
    return Service(settings, registry, metrics, store, holder, clock)


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "api_token": TOKEN,
        "patterns_dir": PATTERNS,
        "store_url": f"sqlite:///{tmp_path / 'store.db'}",
        "kafka_bootstrap": "127.0.0.1:9",  # never contacted: there is no consumer in these tests
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Harness]:
    """The service and its app, with an in-process client (ASGI transport: no sockets)."""
    service = await build_service(settings)
    app = api_for(service, wall=lambda: WALL)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://analyzer") as client:
            yield Harness(settings, service, app, client)
    finally:
        await service.store.close()


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# istiod cut off from the API server (a mesh-wide root cause) and two proxies' trouble meanwhile: the scene the
# dashboard's panel and the incidents CLI read through the API.
OUTAGE_ROOT = interval(
    "istiod-apiserver-unreachable",
    namespace="istio-system",
    workload="istiod",
    pods=("istiod-6b7c9d5f4-q2w8r",),
    container="discovery",
    first_seen=STREAM_TIME - 400,
    last_seen=STREAM_TIME,
    count=40,
)
OUTAGE_NOT_READY = interval(
    "proxy-not-ready",
    namespace="shop",
    workload="cart",
    pods=("cart-5d8f-abcde",),
    first_seen=STREAM_TIME - 200,
    last_seen=STREAM_TIME,
)
OUTAGE_UPSTREAM = interval(
    "access-upstream-connect-failure",
    namespace="bank",
    workload="ledger",
    pods=("ledger-7c9d-fghij", "ledger-7c9d-klmno"),
    first_seen=STREAM_TIME - 350,
    last_seen=STREAM_TIME,
)
