"""`serve --workers N`: N `ingest` processes in one consumer group and one `api` process, kept running.

Kafka spreads the topic's partitions over the N workers (one consumer group); every worker commits each batch
with its offsets in one store transaction, so exactly-once holds as it does for replicas. Each child is
`mesh-analyzer serve` with its own role and HTTP port, so each has its own /healthz, /readyz and /metrics:

    api          ANALYZER_HTTP_PORT          the HTTP API (readiness: the store answers)
    ingest-<i>   ANALYZER_HTTP_PORT + 1 + i  /healthz, /readyz (consuming, store writable), /metrics

(with ANALYZER_HTTP_PORT=0 every child picks a free port of its own). SIGTERM and SIGINT are forwarded (each
child finishes the batch in hand), SIGHUP too (every child reloads the catalogue). A child that dies is
started again after a back-off (1 s, doubling up to 30 s); one that dies MAX_FAILURES times in a row, each
within STABLE_AFTER seconds of its start, stops everything with exit 1 (a child that cannot start at all,
exit 2 on its first run, at once with exit 2).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog

from analyzer.config import Settings
from analyzer.errors import AnalyzerError, ConfigError

log = structlog.get_logger("analyzer.supervisor")

RESTART_BACKOFF_MIN = 1.0
RESTART_BACKOFF_MAX = 30.0
STABLE_AFTER = 60.0  # a child that ran this long before dying starts a new streak of failures
MAX_FAILURES = 5
STOP_GRACE = 40.0  # seconds the children get after SIGTERM (a batch in hand is bounded by the store timeout)
CANNOT_START = 2  # the exit code of `serve` that could not start (bad settings, store unreachable at start)


@dataclass
class Child:
    """One supervised process: its name (`api`, `ingest-0`, ...), its environment, its current process."""

    name: str
    env: dict[str, str]
    proc: asyncio.subprocess.Process | None = None
    starts: int = 0
    failures: int = 0  # deaths in a row, each soon after its start

    @property
    def port(self) -> int:
        return int(self.env["ANALYZER_HTTP_PORT"])

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


def plan(settings: Settings, environ: Mapping[str, str], **shared: str) -> list[Child]:
    """The children's names and environments (pure): the API on the configured port, worker i on port + 1 + i.

    ``shared``: ANALYZER_* settings every child gets on top of ``environ`` (the local broker's bootstrap)."""
    if settings.store_url.get_secret_value().startswith("sqlite:///:memory:"):
        raise ConfigError("ANALYZER_WORKERS needs a store the processes share: a file or PostgreSQL, not :memory:")
    base = settings.http_port
    if base and base + settings.workers > 65535:
        raise ConfigError(f"ANALYZER_HTTP_PORT {base} leaves no room for {settings.workers} worker ports above it")
    common = {**environ, **{f"ANALYZER_{k.upper()}": v for k, v in shared.items()}, "ANALYZER_WORKERS": "0"}

    def child(name: str, role: str, port: int) -> Child:
        env = {**common, "ANALYZER_ROLE": role, "ANALYZER_HTTP_PORT": str(port), "ANALYZER_PROCESS_NAME": name}
        return Child(name, env)

    workers = [child(f"ingest-{i}", "ingest", base + 1 + i if base else 0) for i in range(settings.workers)]
    return [child("api", "api", base), *workers]


def restart_delay(failures: int) -> float:
    return float(min(RESTART_BACKOFF_MIN * 2 ** max(0, failures - 1), RESTART_BACKOFF_MAX))


# Resolved in the supervisor, not in the forked child (loading a library after fork can deadlock).
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> Callable[[], None]:
    """In the child before exec: SIGTERM when the supervisor dies, even by SIGKILL (Linux), so no worker is
    left consuming on its own."""

    def arm() -> None:
        if _PRCTL is not None:
            _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the supervisor died before the line above
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


class Supervisor:
    def __init__(self, children: list[Child], command: list[str]) -> None:
        self.children = children
        self.command = command
        self.stop = asyncio.Event()
        self.exit_code = 0

    async def _start(self, child: Child) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            *self.command,
            env=child.env,
            stdin=asyncio.subprocess.DEVNULL,
            preexec_fn=_die_with_parent(os.getpid()),
        )
        child.proc, child.starts = proc, child.starts + 1
        log.info("worker started", worker=child.name, role=child.env["ANALYZER_ROLE"], pid=proc.pid, port=child.port)
        return proc

    async def keep(self, child: Child) -> None:
        """Run the child until the supervisor stops; start it again whenever it dies."""
        stopping = asyncio.create_task(self.stop.wait())
        try:
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    proc = await self._start(child)
                except OSError as exc:  # cannot even run the command: nothing a restart would change
                    log.error("worker cannot start; stopping", worker=child.name, error=str(exc))
                    self.give_up(CANNOT_START)
                    return
                exited = asyncio.create_task(proc.wait())
                await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not exited.done():
                    exited.cancel()
                    return  # stopping: shutdown() signals and reaps it
                code = proc.returncode
                child.failures = 1 if time.monotonic() - started >= STABLE_AFTER else child.failures + 1
                if code == CANNOT_START and child.starts == 1:
                    log.error("worker cannot start; stopping", worker=child.name, pid=proc.pid, returncode=code)
                    self.give_up(CANNOT_START)
                    return
                if child.failures >= MAX_FAILURES:
                    log.error(
                        "worker keeps dying; stopping",
                        worker=child.name,
                        pid=proc.pid,
                        returncode=code,
                        failures=child.failures,
                    )
                    self.give_up(1)
                    return
                delay = restart_delay(child.failures)
                log.error("worker died; restarting", worker=child.name, pid=proc.pid, returncode=code, restart_in=delay)
                await asyncio.wait({stopping}, timeout=delay)
        finally:
            stopping.cancel()

    def give_up(self, code: int) -> None:
        self.exit_code = self.exit_code or code
        self.stop.set()

    def signal_all(self, sig: signal.Signals) -> None:
        for child in self.children:
            if child.alive and child.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(sig)

    async def shutdown(self) -> None:
        """SIGTERM to every child; SIGKILL to any still running after STOP_GRACE."""
        self.signal_all(signal.SIGTERM)
        running = [c.proc for c in self.children if c.alive and c.proc is not None]
        if not running:
            return
        _, late = await asyncio.wait([asyncio.create_task(p.wait()) for p in running], timeout=STOP_GRACE)
        if late:
            log.error("workers did not stop in time; killing them", count=len(late))
            self.signal_all(signal.SIGKILL)
            await asyncio.wait(late, timeout=10)


async def run(settings: Settings) -> int:
    from analyzer.broker import LocalBroker, ensure_topics

    shared: dict[str, str] = {}
    broker: LocalBroker | None = None
    if settings.kafka_bootstrap is None:
        # One bundled broker for all the children (each would otherwise start its own and share nothing).
        broker = LocalBroker().start()
        shared = {
            "kafka_bootstrap": broker.bootstrap,
            "kafka_group": f"{settings.kafka_group}-local-{int(time.time())}",
        }
        await ensure_topics(broker.bootstrap, list(settings.kafka_topics))
        log.info("started the bundled local broker (memory only)", bootstrap=broker.bootstrap)
    try:
        children = plan(settings, os.environ, **shared)
        supervisor = Supervisor(children, [sys.executable, "-m", "analyzer", "serve"])
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, supervisor.stop.set)
        loop.add_signal_handler(signal.SIGHUP, supervisor.signal_all, signal.SIGHUP)
        tasks = [asyncio.create_task(supervisor.keep(child), name=child.name) for child in children]
        if broker is not None and settings.demo:
            from analyzer.demo import feed

            tasks.append(asyncio.create_task(feed(broker.bootstrap, settings.kafka_topics[0], supervisor.stop)))
        log.info("supervising", workers=settings.workers, processes=[c.name for c in children])
        if broker is not None:
            from analyzer.service import print_where_to_look

            print_where_to_look(settings)
        await supervisor.stop.wait()
        log.info("stopping the workers")
        await asyncio.wait(tasks, timeout=5)  # no child is being started any more: all are known to shutdown()
        await supervisor.shutdown()
        for task in tasks:
            task.cancel()
        log.info("stopped", exit_code=supervisor.exit_code)
        return supervisor.exit_code
    finally:
        if broker is not None:
            broker.stop()


def supervise(settings: Settings) -> int:
    try:
        return asyncio.run(run(settings))
    except AnalyzerError as exc:
        log.error("cannot start", error=str(exc))
        return CANNOT_START
