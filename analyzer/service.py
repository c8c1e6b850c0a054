"""Composition root: settings, store, catalogue, consumer and HTTP API; signal-aware shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
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
from analyzer.store import IncidentQuery, Store, open_store
from analyzer.store.causes import open_roots
from analyzer.types import Catalogue, Category, Rule
from analyzer.unclassified import TemplateRegistry, template_from_evidence

if TYPE_CHECKING:
    from fastapi import FastAPI

log = structlog.get_logger("analyzer.service")

METRICS_REFRESH = 5.0
READY_PROBE_INTERVAL = 1.0  # seconds between the background store probes /readyz answers from
READY_FRESH = 3.0  # a probe older than this is not trusted (the prober is stuck behind the store)
READY_INLINE = 0.8  # without a fresh probe, /readyz probes itself, never longer than this
RETENTION_PAUSE = 0.05  # seconds between retention batches: batch writes get the store in between
STREAM_TIME_TTL = 1.0  # seconds the API may reuse the stream time it read from the store
TEMPLATE_REFRESH = 10.0  # seconds between the `api` role's reads of new unclassified templates


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

    def template_rules(self) -> Mapping[str, Rule] | None:
        """The synthetic rules of the unclassified templates this process knows (None: the lane is off)."""
        registry = self.pipeline.unclassified
        return registry.rules if registry is not None else None

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
        pipeline = _pipeline(self.settings, catalogue, compiled, old.unclassified)  # templates survive too
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


def _pipeline(
    settings: Settings, catalogue: Catalogue, compiled: CompiledCatalogue, templates: TemplateRegistry | None = None
) -> Pipeline:
    if settings.unclassified and templates is None:
        templates = TemplateRegistry(settings.unclassified_max_templates)
    return Pipeline(
        catalogue,
        compiled,
        default_cluster=settings.cluster,
        max_record_bytes=settings.max_record_bytes,
        max_keys_per_rule=settings.max_keys_per_rule,
        startup_window=settings.startup_window,
        unclassified=templates if settings.unclassified else None,
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
    _probe: tuple[float, bool] | None = None  # (monotonic time, the store answered) of the last store probe

    async def probe_store(self, bound: float = READY_FRESH) -> bool:
        """Ping the store within ``bound`` seconds and remember the answer for /readyz."""
        try:
            ok = await asyncio.wait_for(self.store.ping(), bound)
        except TimeoutError:
            ok = False
        self._probe = (time.monotonic(), ok)
        return ok

    async def ready(self) -> tuple[bool, dict[str, object]]:
        """Readiness from cached state: the background probe's answer (at most READY_FRESH old), the consumer's
        flag and the store's last write. Without a fresh probe it probes itself, bounded by READY_INLINE, so an
        answer never takes a second, and never waits behind a batch write.

        The `api` role consumes nothing: it is ready when the store answers."""
        probe = self._probe
        if probe is None or time.monotonic() - probe[0] > READY_FRESH:
            self.store_ok = await self.probe_store(READY_INLINE)
        else:
            self.store_ok = probe[1]
        if self.settings.role == "api":
            self.metrics.ready.set(1 if self.store_ok else 0)
            return self.store_ok, {"role": "api", "store": self.store_ok}
        consuming = bool(getattr(self.ingest, "consuming", False))
        # Reads answering is not enough: a store whose writes fail (disk full, read-only, a wedged connection)
        # holds every partition still, so it is not ready until a write succeeds again.
        write_failure = self.store.write_failure()
        detail: dict[str, object] = {"consuming": consuming, "store": self.store_ok, "store_writes": not write_failure}
        if write_failure:
            detail["store_error"] = write_failure
        ok = consuming and self.store_ok and not write_failure
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


def health_app_for(service: Service) -> FastAPI:
    """What the `ingest` role serves: /healthz, /readyz (the consumer's and the store's health) and /metrics."""
    from fastapi import FastAPI

    from analyzer.api import health
    from analyzer.api.context import ApiContext

    app = FastAPI(title="mesh-log-analyzer (ingest)", docs_url=None, redoc_url=None, openapi_url=None)
    ctx = ApiContext(
        service.settings, service.store, service.holder, service, service.registry, service.metrics, time.time, None
    )
    app.include_router(health.build_router(ctx))
    return app


def api_for(service: Service, wall: Callable[[], float] = time.time) -> FastAPI:
    """The HTTP API over the service's store, catalogue and ingest state: the API sees only those."""
    from analyzer.api.app import create_app

    return create_app(
        service.settings,
        service.store,
        service.holder,
        service,
        registry=service.registry,
        metrics=service.metrics,
        wall=wall,
    )


async def restore_templates(store: Store, templates: TemplateRegistry, stream_time: float, limit: float) -> int:
    """Know the stored unclassified templates again after a restart (their titles, for the API).

    Templates are pure functions of lines, so each is re-derived from one stored evidence line. Bounded:
    at most a few pages of incidents and one read per template (each within ``limit`` seconds); a failure
    only costs titles, not data.
    """
    seen: set[str] = set()
    cursor: str | None = None
    try:
        for _ in range(5):
            query = IncidentQuery(
                category=Category.UNCLASSIFIED.value, limit=1000, cursor=cursor, stream_time=stream_time
            )
            page = await asyncio.wait_for(store.list_incidents(query), limit)
            for item in page.items:
                if item.rule_id in seen or item.rule_id in templates.rules or len(seen) >= templates.max_templates:
                    continue
                seen.add(item.rule_id)
                row = await asyncio.wait_for(store.get_incident(item.id, stream_time), limit)
                lines = [e.line for e in (*row.head, *row.tail)] if row is not None else []
                template = template_from_evidence(item.rule_id, lines)
                if template is not None:
                    templates.restore(template, item.last_seen)
            cursor = page.next_cursor
            if cursor is None:
                break
    except (StoreError, TimeoutError) as exc:
        log.warning("cannot read back unclassified templates", error=str(exc) or type(exc).__name__)
    return len(seen)


def store_for(settings: Settings) -> Store:
    """The store the settings name (not yet open), bounded by the store timeout, with its read connections."""
    return open_store(
        settings.store_url.get_secret_value(), timeout=settings.store_timeout, readers=settings.store_readers
    )


async def _refresh_metrics(service: Service, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            stream_time = await service.stream_time()
            rows = await asyncio.wait_for(service.store.counts_by_status(stream_time), service.settings.store_timeout)
            service.metrics.incidents.clear()
            for status, category, severity, count in rows:
                service.metrics.incidents.labels(status, category, severity).set(count)
            roots = open_roots(service.store, service.holder.catalogue.by_id(), stream_time)
            service.metrics.set_open_roots(await asyncio.wait_for(roots, service.settings.store_timeout))
            # Counted where it happens: each incident once, by the replica whose claim marks it.
            claimed = await asyncio.wait_for(
                service.store.claim_suppressed(stream_time), service.settings.store_timeout
            )
            for rule_id, count in claimed:
                service.metrics.suppressed.labels(rule_id).inc(count)
            service.metrics.watermark_age.set(max(0.0, time.time() - stream_time))
            await service.ready()
        except (StoreError, TimeoutError) as exc:
            log.warning("metrics refresh failed", error=str(exc) or type(exc).__name__)
            service.metrics.ready.set(0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), METRICS_REFRESH)


async def _refresh_templates(service: Service, stop: asyncio.Event) -> None:
    """The `api` role matches nothing: the unclassified templates the ingest processes find since are read back
    from the store now and then, so their incidents get their titles here too (known ones are not re-read)."""
    templates = service.holder.pipeline.unclassified
    while templates is not None and not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), TEMPLATE_REFRESH)
        if not stop.is_set():
            await restore_templates(
                service.store, templates, await service.stream_time(), service.settings.store_timeout
            )


async def _probe_store(service: Service, stop: asyncio.Event) -> None:
    """Keeps the store probe /readyz answers from fresh (a probe that hangs simply lets it go stale)."""
    while not stop.is_set():
        await service.probe_store()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), READY_PROBE_INTERVAL)


async def purge_once(store: Store, settings: Settings, stream_time: float | None, now: float) -> dict[str, int]:
    """One retention pass: batches of ``retention_batch`` rows (one transaction each) until none is full.

    Incidents settled more than ``retention`` ago in stream time (so a replay of old data is not deleted as it
    arrives), silences expired more than ``retention`` ago on the wall clock. Returns the totals deleted."""
    keep, batch = settings.retention, settings.retention_batch
    incidents_before = None if stream_time is None else stream_time - keep
    silences_before: float | None = now - keep
    totals = {"incidents": 0, "aliases": 0, "silences": 0}
    while incidents_before is not None or silences_before is not None:
        n_incidents, n_aliases, n_silences = await asyncio.wait_for(
            store.purge(incidents_before, silences_before, batch), settings.store_timeout
        )
        totals["incidents"] += n_incidents
        totals["aliases"] += n_aliases
        totals["silences"] += n_silences
        if n_incidents < batch:
            incidents_before = None
        if n_silences < batch:
            silences_before = None
        await asyncio.sleep(RETENTION_PAUSE)
    return totals


async def _retention(service: Service, stop: asyncio.Event, wall: Callable[[], float] = time.time) -> None:
    """Every ``retention_interval``: delete what retention no longer keeps (see ``purge_once``)."""
    settings = service.settings
    while not stop.is_set():
        try:
            stored = await asyncio.wait_for(service.store.stream_time(), settings.store_timeout)
            totals = await purge_once(service.store, settings, stored, wall())
        except (StoreError, TimeoutError) as exc:
            log.warning("retention pass failed; retrying later", error=(str(exc) or type(exc).__name__)[:300])
        else:
            for kind, n in totals.items():
                service.metrics.retention_deleted.labels(kind).inc(n)
            if any(totals.values()):
                log.info("retention deleted old rows", retention_seconds=settings.retention, **totals)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), settings.retention_interval)


async def run(settings: Settings) -> None:
    """One process of the role ``settings.role``: `all` (consume + API), `ingest` (consume; health and metrics
    only) or `api` (the HTTP API over the store; consumes nothing)."""
    from analyzer.broker import LocalBroker, ensure_topics

    if settings.process_name:
        structlog.contextvars.bind_contextvars(process=settings.process_name)
    consumes = settings.role in ("all", "ingest")
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    holder = CatalogueHolder.load(settings, metrics)
    log.info("catalogue loaded", rules=len(holder.catalogue.rules), cached=holder.compiled.from_cache)

    broker: LocalBroker | None = None
    if settings.kafka_bootstrap is None and consumes:
        broker = LocalBroker().start()
        # The local broker keeps nothing across restarts: offsets stored for an earlier one mean nothing here,
        # so each start consumes as a group of its own (incidents in the store carry over and merge).
        group = f"{settings.kafka_group}-local-{int(time.time())}"
        settings = settings.model_copy(update={"kafka_bootstrap": broker.bootstrap, "kafka_group": group})
        await ensure_topics(broker.bootstrap, list(settings.kafka_topics))
        log.info("started the bundled local broker (memory only)", bootstrap=broker.bootstrap)

    store = store_for(settings)
    await store.open()
    clock = StreamClock(time.time, settings.allowed_lateness)
    if consumes:
        stored_time = await store.stream_time(settings.kafka_group)
        if stored_time is not None:
            clock.observe(stored_time + settings.allowed_lateness)
    if holder.pipeline.unclassified is not None:
        await restore_templates(store, holder.pipeline.unclassified, clock.now(), settings.store_timeout)
    service = Service(settings, registry, metrics, store, holder, clock)

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
    app = health_app_for(service) if settings.role == "ingest" else api_for(service)
    config = uvicorn.Config(
        app, host=settings.http_host, port=settings.http_port, log_config=None, access_log=False, lifespan="off"
    )
    server = _QuietServer(config)
    # What start-up built (the compiled catalogue, the app, the imported modules) lives as long as the process:
    # out of the collector's sight, a full collection no longer walks it (50 ms pauses of every request). A
    # reload leaves no cyclic garbage (tests/api/test_rules_api.py), so nothing frozen outlives its use.
    gc.freeze()
    tasks = [
        asyncio.create_task(_refresh_metrics(service, stop), name="metrics"),
        asyncio.create_task(server.serve(), name="http"),
        asyncio.create_task(_probe_store(service, stop), name="readiness"),
    ]
    if consumes:
        from analyzer.ingest.kafka import KafkaIngest

        ingest = KafkaIngest(settings, lambda: holder.pipeline, store, metrics, clock)
        service.ingest = ingest
        tasks.append(asyncio.create_task(ingest.run(stop), name="ingest"))
    # Retention is a store-wide chore: the process that serves the API does it, not each of N ingest workers.
    if settings.retention > 0 and settings.role != "ingest":
        tasks.append(asyncio.create_task(_retention(service, stop), name="retention"))
    if settings.role == "api":
        tasks.append(asyncio.create_task(_refresh_templates(service, stop), name="templates"))
    if broker is not None and settings.demo:
        from analyzer.demo import feed

        tasks.append(asyncio.create_task(feed(broker.bootstrap, settings.kafka_topics[0], stop), name="demo"))
    log.info(
        "serving",
        role=settings.role,
        http=f"http://{settings.http_host}:{settings.http_port}",
        store=_redact(settings.store_url.get_secret_value()),
    )
    if broker is not None:
        print_where_to_look(settings)
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


def print_where_to_look(settings: Settings) -> None:
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


def main(overrides: Mapping[str, Any] | None = None) -> int:
    """`serve`: ``overrides`` (the command line's --role, --workers) win over the ANALYZER_* environment."""
    from analyzer.logging import configure

    try:
        settings = Settings(**dict(overrides or {}))
    except ValueError as exc:
        print(f"mesh-analyzer: error: invalid settings: {exc}")
        return 2
    configure(settings.log_level, settings.log_format)
    if settings.workers > 0:
        from analyzer.supervisor import supervise

        return supervise(settings)
    try:
        asyncio.run(run(settings))
    except ServiceFailed as exc:
        log.error("service failed", error=str(exc))
        return 1
    except AnalyzerError as exc:
        log.error("cannot start", error=str(exc))
        return 2
    return 0
