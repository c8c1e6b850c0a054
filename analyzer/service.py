"""Composition root: settings, store, catalogue, consumer and HTTP API; signal-aware shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import structlog
from prometheus_client import CollectorRegistry

from analyzer.catalogue import default_patterns_dir, load_catalogue
from analyzer.config import Settings
from analyzer.correlation import SIGNALS
from analyzer.errors import AnalyzerError, CatalogueError, StoreError
from analyzer.incidents import StreamClock
from analyzer.match import CompiledCatalogue, compile_catalogue
from analyzer.metrics import Metrics
from analyzer.pipeline import Pipeline
from analyzer.store import Store, open_store
from analyzer.types import Catalogue, Rule

log = structlog.get_logger("analyzer.service")

METRICS_REFRESH = 5.0
STREAM_TIME_TTL = 1.0  # seconds the API may reuse the stream time it read from the store


@dataclass
class CatalogueHolder:
    """The running catalogue and its pipeline; replaced whole on a successful reload, kept on a failed one."""

    settings: Settings
    metrics: Metrics
    catalogue: Catalogue
    compiled: CompiledCatalogue
    pipeline: Pipeline
    loaded_at: float = field(default_factory=time.time)
    # One reload at a time, whether SIGHUP or POST /v1/rules/reload asked for it.
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @classmethod
    def load(cls, settings: Settings, metrics: Metrics) -> CatalogueHolder:
        catalogue, compiled = _compile(settings)
        metrics.for_catalogue(catalogue.rules)
        return cls(settings, metrics, catalogue, compiled, _pipeline(settings, catalogue, compiled))

    def rules(self) -> Mapping[str, Rule]:
        return self.pipeline.rules

    async def reload_async(self) -> list[str]:
        """``reload`` off the event loop (compiling takes seconds), serialized with every other reload."""
        async with self.reload_lock:
            return await asyncio.to_thread(self.reload)

    def reload(self) -> list[str]:
        """Returns the problems (empty on success). The running catalogue stays when there are any."""
        try:
            catalogue, compiled = _compile(self.settings)
        except CatalogueError as exc:
            problems = [str(p) for p in exc.problems]
        except Exception as exc:  # any failure refuses the reload; the running catalogue stays
            problems = [f"{patterns_dir(self.settings)}: cannot load the catalogue: {type(exc).__name__}: {exc}"[:1000]]
        else:
            problems = []
        if problems:
            self.metrics.reloads.labels("failure").inc()
            log.error("catalogue reload refused; keeping the running one", problems=problems)
            return problems
        old = self.pipeline
        pipeline = _pipeline(self.settings, catalogue, compiled)
        pipeline.readiness, pipeline.keys = old.readiness, old.keys  # per-pod and per-key state survive
        self.catalogue, self.compiled, self.pipeline = catalogue, compiled, pipeline
        self.loaded_at = time.time()
        self.metrics.reloads.labels("success").inc()
        self.metrics.for_catalogue(catalogue.rules)
        log.info("catalogue reloaded", rules=len(catalogue.rules), digest=catalogue.digest[:12])
        return []


def patterns_dir(settings: Settings) -> Path:
    return settings.patterns_dir or default_patterns_dir()


def _compile(settings: Settings) -> tuple[Catalogue, CompiledCatalogue]:
    catalogue = load_catalogue(patterns_dir(settings))
    return catalogue, compile_catalogue(catalogue, SIGNALS)


def _pipeline(settings: Settings, catalogue: Catalogue, compiled: CompiledCatalogue) -> Pipeline:
    return Pipeline(
        catalogue,
        compiled,
        default_cluster=settings.cluster,
        max_record_bytes=settings.max_record_bytes,
        max_keys_per_rule=settings.max_keys_per_rule,
        startup_window=settings.startup_window,
    )


@dataclass
class Service:
    """Everything the API needs to see of the running service."""

    settings: Settings
    registry: CollectorRegistry
    metrics: Metrics
    store: Store
    holder: CatalogueHolder
    clock: StreamClock
    ingest: object | None = None  # KafkaIngest; typed loosely so the API does not import aiokafka
    store_ok: bool = True
    _stream_time: tuple[float, float] | None = None  # (monotonic time read, value)

    async def ready(self) -> tuple[bool, dict[str, object]]:
        consuming = bool(getattr(self.ingest, "consuming", False))
        self.store_ok = await self.store.ping()
        detail: dict[str, object] = {"consuming": consuming, "store": self.store_ok}
        ok = consuming and self.store_ok
        self.metrics.ready.set(1 if ok else 0)
        return ok, detail

    async def stream_time(self) -> float:
        """The store's stream time (the furthest any replica got), read at most once a second."""
        now = time.monotonic()
        if self._stream_time is not None and now - self._stream_time[0] < STREAM_TIME_TTL:
            return self._stream_time[1]
        try:
            stored = await asyncio.wait_for(self.store.stream_time(), self.settings.store_timeout)
        except (StoreError, TimeoutError):
            stored = None
        value = stored if stored is not None else self.clock.now()
        self._stream_time = (now, value)
        return value


async def _refresh_metrics(service: Service, stop: asyncio.Event) -> None:
    previous_suppressed: dict[str, int] = {}
    while not stop.is_set():
        try:
            stream_time = await service.stream_time()
            rows = await asyncio.wait_for(service.store.counts_by_status(stream_time), service.settings.store_timeout)
            service.metrics.incidents.clear()
            suppressed: dict[str, int] = {}
            for status, category, severity, count in rows:
                service.metrics.incidents.labels(status, category, severity).set(count)
            for rule_id, count in await service.store.suppressed_by_rule(stream_time):
                suppressed[rule_id] = count
                grew = count - previous_suppressed.get(rule_id, 0)
                if grew > 0:
                    service.metrics.suppressed.labels(rule_id).inc(grew)
            previous_suppressed = suppressed
            service.metrics.watermark_age.set(max(0.0, time.time() - stream_time))
            service.metrics.live_intervals.set(len(service.holder.pipeline.keys))
            await service.ready()
        except (StoreError, TimeoutError) as exc:
            log.warning("metrics refresh failed", error=str(exc) or type(exc).__name__)
            service.metrics.ready.set(0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), METRICS_REFRESH)


async def run(settings: Settings) -> None:
    from analyzer.api.app import create_app
    from analyzer.broker import LocalBroker, ensure_topics
    from analyzer.ingest.kafka import KafkaIngest

    registry = CollectorRegistry()
    metrics = Metrics(registry)
    holder = CatalogueHolder.load(settings, metrics)
    log.info("catalogue loaded", rules=len(holder.catalogue.rules), cached=holder.compiled.from_cache)

    broker: LocalBroker | None = None
    if settings.kafka_bootstrap is None:
        broker = LocalBroker().start()
        # The local broker keeps nothing across restarts: offsets stored for an earlier one mean nothing here,
        # so each start consumes as a group of its own (incidents in the store carry over and merge).
        group = f"{settings.kafka_group}-local-{int(time.time())}"
        settings = settings.model_copy(update={"kafka_bootstrap": broker.bootstrap, "kafka_group": group})
        await ensure_topics(broker.bootstrap, list(settings.kafka_topics))
        log.info("started the bundled local broker (memory only)", bootstrap=broker.bootstrap)

    store = open_store(settings.store_url.get_secret_value())
    await store.open()
    clock = StreamClock(time.time, settings.allowed_lateness)
    stored_time = await store.stream_time(settings.kafka_group)
    if stored_time is not None:
        clock.observe(stored_time + settings.allowed_lateness)
    service = Service(settings, registry, metrics, store, holder, clock)
    ingest = KafkaIngest(settings, lambda: holder.pipeline, holder.rules, store, metrics, clock)
    service.ingest = ingest

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[list[str]]] = set()

    def on_sighup() -> None:
        task = asyncio.create_task(holder.reload_async(), name="reload")
        reloads.add(task)  # keep a reference until it is done
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)

    import uvicorn

    _QuietServer = _quiet_server_class()
    app = create_app(service)
    config = uvicorn.Config(
        app, host=settings.http_host, port=settings.http_port, log_config=None, access_log=False, lifespan="off"
    )
    server = _QuietServer(config)
    tasks = [
        asyncio.create_task(ingest.run(stop), name="ingest"),
        asyncio.create_task(_refresh_metrics(service, stop), name="metrics"),
        asyncio.create_task(server.serve(), name="http"),
    ]
    if broker is not None and settings.demo:
        from analyzer.demo import feed

        tasks.append(asyncio.create_task(feed(broker.bootstrap, settings.kafka_topics[0], stop), name="demo"))
    log.info(
        "serving",
        http=f"http://{settings.http_host}:{settings.http_port}",
        store=_redact(settings.store_url.get_secret_value()),
    )
    if broker is not None:
        _print_where_to_look(settings)
    failed: BaseException | None = None
    try:
        stopping = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopping and not task.cancelled() and task.exception() is not None:
                # A dead consumer or HTTP server must not leave a process that looks alive: exit non-zero
                # so the orchestrator restarts it.
                failed = task.exception()
                log.error("a service task failed; stopping", task=task.get_name(), error=repr(failed), exc_info=failed)
    finally:
        log.info("shutting down: finishing the current batch")
        stop.set()
        server.should_exit = True
        await asyncio.wait(tasks, timeout=30)
        for task in tasks:
            task.cancel()
        await store.close()
        if broker is not None:
            broker.stop()
        log.info("stopped")
    if failed is not None:
        raise ServiceFailed(str(failed)) from failed


class ServiceFailed(AnalyzerError):
    """A service task (consumer, HTTP server) died unexpectedly."""


def _print_where_to_look(settings: Settings) -> None:
    host = "localhost" if settings.http_host in ("0.0.0.0", "::") else settings.http_host
    base = f"http://{host}:{settings.http_port}"
    lines = [
        "",
        "mesh-log-analyzer is running on a local demo broker; incidents appear within a minute:",
        f"  curl -s '{base}/v1/incidents' | python3 -m json.tool",
        f"  curl -s '{base}/v1/incidents?status=open&category=rbac-permissions'",
        f"  curl -s '{base}/v1/incidents/<id>?lang=pt-BR'",
        f"  curl -s '{base}/v1/rules' ; curl -s '{base}/readyz' ; curl -s '{base}/metrics'",
        f"  OpenAPI: {base}/docs",
        "",
    ]
    print("\n".join(lines), file=sys.stderr, flush=True)


def _quiet_server_class() -> type:
    import uvicorn

    class QuietServer(uvicorn.Server):
        """uvicorn without its own signal handlers: the service owns SIGTERM, SIGINT and SIGHUP."""

        def capture_signals(self) -> contextlib.AbstractContextManager[None]:  # type: ignore[override]
            return contextlib.nullcontext()

    return QuietServer


def _redact(url: str) -> str:
    """A DSN fit for a log line: no user info, no password in the query string."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = "&".join(
        f"{k}=***" if k.lower() in ("password", "pass", "passwd", "sslpassword") else f"{k}={v}"
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def main() -> int:
    from analyzer.logging import configure

    try:
        settings = Settings()
    except ValueError as exc:
        print(f"mesh-analyzer: error: invalid settings: {exc}")
        return 2
    configure(settings.log_level, settings.log_format)
    try:
        asyncio.run(run(settings))
    except ServiceFailed as exc:
        log.error("service failed", error=str(exc))
        return 1
    except AnalyzerError as exc:
        log.error("cannot start", error=str(exc))
        return 2
    return 0
