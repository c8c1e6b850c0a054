"""API benchmark: the incidents API under load while the consumer ingests, SQLite and PostgreSQL.

For each backend: a store filled with 100k incidents (synthetic intervals of the catalogue's real rules,
spread over namespaces, workloads and a week), the real ``mesh-analyzer serve`` pinned to one CPU over it,
consuming a backlog topic on the bundled broker (so it ingests flat out the whole time), and Debian's
``wrk`` on loopback (pinned to the other CPU) rotating through ``GET /v1/incidents`` with filters and
``GET /v1/incidents/{id}`` of known ids:

  idle      no HTTP load: the ingest rate to compare against
  from idle the open loop's first seconds: every shared read of the API has expired in the idle window
  open loop 200 requests/s from an asyncio generator (raw keep-alive HTTP/1.1), latency from each request's
            scheduled send time (no coordinated omission: queueing in the service counts), the row the targets
            are checked on
  paced     ~200 requests/s from wrk (closed loop: its Lua ``delay()`` makes each connection wait between
            requests, so a slow service gets fewer requests than asked, and queueing is not counted)
  max       wrk with no delay: the throughput ceiling
  idle      again, to check the ingest rate came back (and the backlog lasted)

The ingest rate is analyzer_records_consumed_total over each window. Without ``wrk`` (apt-get install
wrk) the max row comes from 16 asyncio loops.

    .venv/bin/python benchmarks/api_bench.py --quick
    .venv/bin/python benchmarks/api_bench.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import e2e_bench as e2e  # noqa: E402

from analyzer.broker import LocalBroker, ensure_topics  # noqa: E402
from analyzer.catalogue import default_patterns_dir, load_catalogue  # noqa: E402
from analyzer.store import open_store  # noqa: E402
from analyzer.types import Changes, Evidence, IncidentKey, Interval, Rule  # noqa: E402
from tests.conftest import pg_schema  # noqa: E402  (the tests' fresh-schema helper, one copy)

PG_DSN = os.environ.get("ANALYZER_TEST_POSTGRES_DSN", "postgresql://root@127.0.0.1:5432/test")
TARGET_P99_MS = 100.0
TARGET_RATE = 200.0
TARGET_INGEST = 0.8  # loaded ingest >= 80% of idle
OPEN_LOOP = f"open loop {TARGET_RATE:.0f} req/s (asyncio)"  # the row the targets are checked on
NAMESPACES = 20
WORKLOADS = 500
WEEK = 7 * 86400.0
# Incidents of cause rules among all: 0.3% of 100k over a week is ~40 control-plane or CA failures a day, already
# a bad week. Dealing every rule alike gives ~10%: a mesh whose istiod is down all the time.
CAUSE_SHARE = 0.003
BACKLOG_POOL, BACKLOG_SEED = 100_000, 20240611  # the backlog: this corpus repeated


# ------------------------------------------------------------------------------------------- the incidents


def synthetic_intervals(
    n: int, rules: Sequence[Rule], now: float, cause_share: float = CAUSE_SHARE, seed: int = 7
) -> list[Interval]:
    """n intervals with distinct ids: real rule ids, 20 namespaces x 500 workloads, last seen over a week.

    About 5% were last seen in the past hour (open or pending at ``now``), the rest are older (resolved or
    suppressed): a store that has been running for a while. ``cause_share`` of them are of rules that declare
    causes (istiod cut off, CA broken, ...), the rest are dealt round the other rules.
    """
    rnd = random.Random(seed)
    causers = [r for r in rules if r.causes is not None]
    others = [r for r in rules if r.causes is None]
    out: list[Interval] = []
    for i in range(n):
        rule = rnd.choice(causers) if causers and rnd.random() < cause_share else others[i % len(others)]
        ns = f"bench-{rnd.randrange(NAMESPACES):02d}"
        workload = f"wl-{rnd.randrange(WORKLOADS):03d}"
        recent = rnd.random() < 0.05
        last = now - (rnd.uniform(0, 3600) if recent else rnd.uniform(3600, WEEK))
        first = last - rnd.uniform(0, 7200)
        pod = f"{workload}-7c9b6d5f8d-{rnd.choice('bcdfghjk')}{i % 10_000:04d}"
        line = (
            f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(last))}.000000Z\terror\tbench\t{rule.title} "
            f"(synthetic evidence {i}) upstream connect error or disconnect/reset before headers"
        )
        ev = Evidence(last, line, pod, "istio-proxy")
        out.append(
            Interval(
                rule.id, IncidentKey("bench", ns, workload), first, last, rnd.randint(1, 5000), (ev,), (ev,), (pod,)
            )
        )
    return out


async def fill_store(url: str, intervals: Sequence[Interval], rules: Mapping[str, Rule], now: float) -> float:
    """Writes the intervals through the store's own commit_batch; returns the seconds it took."""
    store = open_store(url)
    await store.open()
    t0 = time.perf_counter()
    try:
        chunk = 5000
        for i in range(0, len(intervals), chunk):
            part = tuple(intervals[i : i + chunk])
            await store.commit_batch("bench-fill", Changes(merges=part, stream_time=now), [], rules)
    finally:
        await store.close()
    return time.perf_counter() - t0


def urls(ids: Sequence[str], rules: Sequence[Rule], seed: int = 11) -> list[str]:
    """The rotation: list queries with filters (half) and details of known ids (half)."""
    rnd = random.Random(seed)
    categories = sorted({r.category.value for r in rules})
    lists = [
        "/v1/incidents?limit=50",
        "/v1/incidents?status=open&limit=50",
        "/v1/incidents?status=open&status=pending&limit=20",
        "/v1/incidents?status=resolved&limit=50",
        "/v1/incidents?severity=critical&limit=100",
    ]
    for _ in range(15):
        ns = f"bench-{rnd.randrange(NAMESPACES):02d}"
        lists.append(f"/v1/incidents?category={rnd.choice(categories)}&limit=50")
        lists.append(f"/v1/incidents?namespace={ns}&limit=50")
        lists.append(f"/v1/incidents?namespace={ns}&workload=wl-{rnd.randrange(WORKLOADS):03d}&limit=20")
        lists.append(f"/v1/incidents?status=open&category={rnd.choice(categories)}&limit=20")
    details = [f"/v1/incidents/{i}" for i in rnd.sample(list(ids), min(len(ids), len(lists)))]
    out = []
    for a, b in zip(lists, details, strict=False):
        out += [a, b]
    rnd.shuffle(out)
    return out


# ------------------------------------------------------------------------------------------------- load


@dataclass
class Load:
    name: str
    seconds: float
    requests: int
    errors: int  # connect, read, write, timeout and non-2xx/3xx
    p50_ms: float
    p99_ms: float
    max_ms: float
    ingest_per_s: float = 0.0
    note: str = ""
    errors_by: dict[str, int] = field(default_factory=dict)  # what failed (the asyncio generator's windows)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


LUA = """
local urls = {%(urls)s}
local counter = 0
local i = 0
setup = function(thread)
  counter = counter + 1
  thread:set("offset", counter * 37)
end
init = function(args)
  i = offset or 0
end
request = function()
  i = i + 1
  return wrk.format("GET", urls[(i %% #urls) + 1])
end
%(delay)s
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %%d %%d %%d %%d %%d %%d %%d %%f %%f %%f\\n", summary.requests, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def wrk_script(path: Path, paths: Sequence[str], delay_ms: float | None) -> None:
    quoted = ", ".join(f'"{p}"' for p in paths)
    delay = f"delay = function() return {delay_ms:.1f} end" if delay_ms is not None else ""
    path.write_text(LUA % {"urls": quoted, "delay": delay})


def run_wrk(base: str, script: Path, seconds: float, connections: int, threads: int, cpu: int, name: str) -> Load:
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{int(seconds)}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        base,
    ]
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        preexec_fn=lambda: os.sched_setaffinity(0, {cpu} & e2e.cpus() or e2e.cpus()),
        check=False,
    )
    m = re.search(r"^RESULT (.*)$", proc.stdout, re.M)
    if m is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout[-500:]} {proc.stderr[-500:]}")
    f = m.group(1).split()
    requests, duration = int(f[0]), int(f[1]) / 1e6
    errors = sum(int(x) for x in f[2:7])
    return Load(name, duration, requests, errors, float(f[7]) / 1000, float(f[8]) / 1000, float(f[9]) / 1000)


class _ClosedBeforeAnswer(Exception):
    """The server closed the connection without answering the request."""


class _Connections:
    """Keep-alive HTTP/1.1 connections for GET requests, raw asyncio streams: the generator shares a core with the
    API under test, and an httpx client took 0.36 of that core in the open-loop window."""

    def __init__(self, base: str, most: int = 64) -> None:
        host, _, port = base.removeprefix("http://").partition(":")
        self.host, self.port = host, int(port or 80)
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.free = asyncio.Semaphore(most)

    async def get(self, path: str) -> int:
        async with self.free:
            if self.idle:
                # A keep-alive connection idle past the server's keep-alive timeout (uvicorn: 5 s) was closed by
                # it: as HTTP clients do for an idempotent request, send it again on a new connection.
                reader, writer = self.idle.pop()
                try:
                    return await self._exchange(reader, writer, path)
                except (ConnectionError, _ClosedBeforeAnswer):
                    pass
            reader, writer = await asyncio.open_connection(self.host, self.port)
            return await self._exchange(reader, writer, path)

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> int:
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
            first = await reader.readline()
            if not first:
                raise _ClosedBeforeAnswer
            status = int(first.split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
        except BaseException:
            writer.close()
            raise
        self.idle.append((reader, writer))
        return status

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()


async def _asyncio_load(base: str, paths: Sequence[str], seconds: float, rate: float | None, name: str) -> Load:
    """Open loop at ``rate`` (latency from the scheduled send time, so queueing counts), or 16 closed loops."""
    latencies: list[float] = []
    errors: Counter[str] = Counter()  # by status code or exception, and the path's kind
    connections = _Connections(base)

    async def one(path: str, scheduled: float) -> None:
        try:
            # No client timeout: an abandoned request is still served (the service does not notice), so
            # giving up early only adds work, and the open loop's queue would feed on itself.
            status = await asyncio.wait_for(connections.get(path), 120.0)
            if status >= 400:
                errors[f"{status} on {kind_of(path)}"] += 1
        except (OSError, ValueError, IndexError, TimeoutError, asyncio.IncompleteReadError, _ClosedBeforeAnswer) as exc:
            errors[f"{type(exc).__name__} on {kind_of(path)}"] += 1
        latencies.append(time.perf_counter() - scheduled)

    t0 = time.perf_counter()
    try:
        if rate is not None:
            tasks = []
            k = 0
            while (now := time.perf_counter()) - t0 < seconds:
                due = t0 + k / rate
                if due > now:
                    await asyncio.sleep(due - now)
                tasks.append(asyncio.create_task(one(paths[k % len(paths)], due)))
                k += 1
            await asyncio.gather(*tasks)
        else:

            async def loop(j: int) -> None:
                k = j
                while time.perf_counter() - t0 < seconds:
                    await one(paths[k % len(paths)], time.perf_counter())
                    k += 16

            await asyncio.gather(*(loop(j) for j in range(16)))
    finally:
        connections.close()
    took = time.perf_counter() - t0
    ms = [x * 1000 for x in latencies]
    load = Load(
        name, took, len(ms), errors.total(), e2e.percentile(ms, 50), e2e.percentile(ms, 99), max(ms, default=0.0)
    )
    load.errors_by = dict(errors)
    return load


def _settle(base: str, bound: float = 60.0) -> None:
    """Until /healthz answers within 50 ms: requests a window left queued (its client gone) are served first."""
    import httpx

    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        t0 = time.perf_counter()
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(base + "/healthz", timeout=bound)
        if time.perf_counter() - t0 < 0.05:
            return
        time.sleep(0.5)


# ------------------------------------------------------------------------------------------------ a backend


@dataclass
class BackendResult:
    backend: str
    incidents: int
    fill_s: float
    rows: list[Load] = field(default_factory=list)
    per_query: list[tuple[str, float, float]] = field(default_factory=list)  # (kind, median ms, max ms)
    idle_ingest: float = 0.0
    backlog_left: float = 0.0
    note: str = ""


def kind_of(path: str) -> str:
    if "?" not in path:
        return "detail /v1/incidents/{id}"
    params = sorted({kv.split("=")[0] for kv in path.split("?", 1)[1].split("&")} - {"limit"})
    return "list " + ("+".join(params) if params else "(no filter)")


def per_query(base: str, paths: Sequence[str], repeat: int = 5) -> list[tuple[str, float, float]]:
    """Sequential latency of each kind of request (while ingesting): which queries cost what."""
    import httpx

    by_kind: dict[str, list[float]] = {}
    with httpx.Client(base_url=base, timeout=10.0) as client:
        for _ in range(repeat):
            for path in paths:
                t0 = time.perf_counter()
                client.get(path)
                by_kind.setdefault(kind_of(path), []).append((time.perf_counter() - t0) * 1000)
    return sorted(((k, statistics.median(v), max(v)) for k, v in by_kind.items()), key=lambda x: -x[1])


def ingest_window(serve: e2e.Serve, seconds: float) -> float:
    a, t0 = serve.metric("analyzer_records_consumed_total"), time.perf_counter()
    time.sleep(seconds)
    b, t1 = serve.metric("analyzer_records_consumed_total"), time.perf_counter()
    return (b - a) / (t1 - t0)


def run_backend(
    backend: str,
    url: str,
    bootstrap: str,
    topic: str,
    backlog: int,
    intervals: Sequence[Interval],
    rules: Mapping[str, Rule],
    now: float,
    windows: Mapping[str, float],
    workdir: Path,
    use_wrk: bool,
    broker_pid: int,
    split: bool = False,
) -> BackendResult:
    """``split``: `serve --role ingest` on the measured CPU and `serve --role api` (what the requests go to) on
    the other one, as `serve --workers 1` runs them; else one `serve` (role all) for both."""
    print(f"  [{backend}] filling the store with {len(intervals):,} incidents ...", flush=True)
    fill = asyncio.run(fill_store(url, intervals, rules, now))
    result = BackendResult(backend, len(intervals), fill)
    paths = urls([iv.id for iv in intervals], list(rules.values()))
    role = {"ANALYZER_ROLE": "ingest"} if split else None
    serve = e2e.Serve(bootstrap, topic, url, workdir / f"{backend}-serve.log", e2e.MEASURE_CPU, role)
    front = serve
    if split:
        front = e2e.Serve(
            bootstrap, topic, url, workdir / f"{backend}-api.log", e2e.OTHER_CPU, {"ANALYZER_ROLE": "api"}
        )
    try:
        front.wait_ready()
        serve.wait_ready()
        deadline = time.monotonic() + 60
        while not serve.metric("analyzer_records_consumed_total") > 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the service consumes nothing\n{serve.tail()}")
            time.sleep(0.2)
        base = f"http://127.0.0.1:{front.port}"
        watched = {"ingest" if split else "serve": serve.proc.pid, "broker": broker_pid, "load (this)": os.getpid()}
        if split:
            watched["api"] = front.proc.pid
        time.sleep(windows["warmup"])
        result.idle_ingest = ingest_window(serve, windows["idle"])
        print(f"  [{backend}] idle ingest {e2e.fmt_rate(result.idle_ingest)} records/s", flush=True)
        # The open loop starts cold (the idle window let every shared read expire): its first seconds are a row
        # of their own, then the same loop goes on, measured, against the target.
        phases: list[tuple[str, float, float | None, bool]] = [
            (f"open loop, first {windows['cold']:.0f}s from idle", windows["cold"], TARGET_RATE, False),
            (OPEN_LOOP, windows["paced"], TARGET_RATE, False),
        ]
        if use_wrk:
            phases += [
                (f"wrk paced ~{TARGET_RATE:.0f} req/s", windows["paced"], TARGET_RATE, True),
                ("wrk max (no delay)", windows["max"], None, True),
            ]
        else:
            phases.append(("asyncio max (16 loops)", windows["max"], None, False))
        for name, seconds, rate, with_wrk in phases:
            _settle(base)  # what the previous window left queued is not this window's
            if serve.proc.poll() is not None:
                raise RuntimeError(f"the service exited with {serve.proc.returncode}\n{serve.tail()}")
            before, t0 = serve.metric("analyzer_records_consumed_total"), time.perf_counter()
            cpu_before = {name: e2e.cpu_seconds(pid) for name, pid in watched.items()}
            busy_before = e2e.machine_busy()
            if with_wrk:
                script = workdir / f"{backend}-{'paced' if rate else 'max'}.lua"
                connections = 20 if rate else 16
                # Each connection waits delay() after a response: period = delay + latency, so aim a little high.
                delay = connections * 1000.0 / rate - 3.0 if rate else None
                wrk_script(script, paths, delay)
                load = run_wrk(base, script, seconds, connections, 2, e2e.OTHER_CPU, name)
            else:
                load = asyncio.run(_asyncio_load(base, paths, seconds, rate, name))
            after, t1 = serve.metric("analyzer_records_consumed_total"), time.perf_counter()
            load.ingest_per_s = (after - before) / (t1 - t0)
            # Where the CPU went in the window (a core is 1.0): what a latency figure alone cannot say.
            shares = {name: (e2e.cpu_seconds(pid) - cpu_before[name]) / (t1 - t0) for name, pid in watched.items()}
            shares["machine"] = (e2e.machine_busy() - busy_before) / (t1 - t0)
            load.note = "CPU cores busy: " + ", ".join(f"{name} {share:.2f}" for name, share in shares.items())
            if load.errors_by:
                load.note += "; errors: " + ", ".join(f"{n} x {what}" for what, n in sorted(load.errors_by.items()))
            result.rows.append(load)
            print(
                f"  [{backend}] {name}: {load.rate:.0f} req/s p99 {load.p99_ms:.1f} ms, ingest "
                f"{e2e.fmt_rate(load.ingest_per_s)}/s",
                flush=True,
            )
        after_idle = ingest_window(serve, windows["idle"])
        result.rows.append(Load("idle again (no load)", windows["idle"], 0, 0, 0.0, 0.0, 0.0, after_idle))
        consumed = serve.metric("analyzer_records_consumed_total")
        result.backlog_left = backlog - consumed
        result.per_query = per_query(base, paths, repeat=2)
    finally:
        codes = [serve.stop(), *([front.stop()] if front is not serve else [])]
        if any(code not in (0, None) for code in codes):
            result.note = f"service exit codes {codes}"
    return result


def print_backend(r: BackendResult) -> list[str]:
    missed = []
    print()
    ran_out = " (RAN OUT: the ingest rates are too low)" if r.backlog_left <= 0 else ""
    print(
        f"[{r.backend}] {r.incidents:,} incidents filled in {r.fill_s:.1f}s; "
        f"idle ingest {e2e.fmt_rate(r.idle_ingest)} records/s; "
        f"backlog left at the end {r.backlog_left:,.0f} records{ran_out}"
    )
    head = (
        f"  {'load':<30} {'req/s':>7} {'requests':>9} {'errors':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'ingest/s':>9} {'vs idle':>8}"
    )
    print(head)
    print("  " + "-" * (len(head) - 2))
    for x in r.rows:
        vs = x.ingest_per_s / r.idle_ingest if r.idle_ingest else math.nan
        if x.requests:
            print(
                f"  {x.name:<30} {x.rate:>7.0f} {x.requests:>9,} {x.errors:>7} {x.p50_ms:>8.1f} {x.p99_ms:>8.1f} "
                f"{x.max_ms:>8.0f} {e2e.fmt_rate(x.ingest_per_s):>9} {vs:>7.2f}x"
            )
        else:
            dashes = " ".join(f"{'-':>{w}}" for w in (7, 9, 7, 8, 8, 8))
            print(f"  {x.name:<30} {dashes} {e2e.fmt_rate(x.ingest_per_s):>9} {vs:>7.2f}x")
    for x in r.rows:
        if x.note:
            print(f"    {x.name}: {x.note}")
    print(
        "  sequential latency per kind of request (2 rounds of the rotation, after the windows; "
        "ingesting while the backlog lasts): median / max ms"
    )
    for kind, med, worst in r.per_query:
        print(f"    {kind:<44} {med:>7.1f} {worst:>8.1f}")
    paced = next(x for x in r.rows if x.name == OPEN_LOOP)
    checks = [
        (
            paced.p99_ms <= TARGET_P99_MS,
            f"p99 <= {TARGET_P99_MS:.0f} ms at {TARGET_RATE:.0f} req/s (open loop): {paced.p99_ms:.1f} ms "
            f"({paced.rate:.0f} req/s completed)",
        ),
        (all(x.errors == 0 for x in r.rows), f"no errors: {sum(x.errors for x in r.rows)}"),
        (
            paced.ingest_per_s >= TARGET_INGEST * r.idle_ingest,
            f"ingest at {TARGET_RATE:.0f} req/s within 20% of idle: {paced.ingest_per_s / r.idle_ingest:.2f}x",
        ),
    ]
    for good, text in checks:
        print(f"  {'PASS' if good else 'MISS'}  [{r.backend}] {text}")
        if not good:
            missed.append(f"[{r.backend}] {text}")
    return missed


# ------------------------------------------------------------------------------------------------------ main


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--incidents", type=int, default=100_000)
    p.add_argument("--backlog", type=int, default=20_000_000, help="records queued for the consumer")
    p.add_argument("--quick", action="store_true", help="short windows, smaller backlog")
    p.add_argument("--backends", default="sqlite,postgresql")
    p.add_argument("--no-wrk", action="store_true", help="use the asyncio generator even if wrk is installed")
    p.add_argument("--keep", action="store_true", help="keep the work dir")
    p.add_argument(
        "--cause-share",
        type=float,
        default=CAUSE_SHARE,
        help="share of the synthetic incidents from rules that declare causes (every rule dealt alike: ~0.1)",
    )
    p.add_argument(
        "--modes",
        default="split",
        help="comma list: split (`--role ingest` on the measured CPU, `--role api` on the other, as `serve "
        "--workers 1` runs them: the deployment the targets are for), one (a single `serve`, role all: the API and "
        "the consumer share one core); each backend is measured in each mode, in this run",
    )
    args = p.parse_args(argv)
    windows = {"warmup": 3.0, "idle": 8.0, "cold": 3.0, "paced": 15.0, "max": 10.0}
    if args.quick:
        windows = {"warmup": 2.0, "idle": 4.0, "cold": 2.0, "paced": 8.0, "max": 5.0}
        args.backlog = min(args.backlog, 12_000_000)  # ingest (~290k/s) drains ~10M before the windows end
    use_wrk = shutil.which("wrk") is not None and not args.no_wrk
    from analyzer.logging import configure

    configure("warning", "console")

    print(
        f"api_bench: {time.strftime('%Y-%m-%d %H:%M:%S')}  python {platform.python_version()}  "
        f"{os.cpu_count()} CPUs  load avg {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    generator = "wrk (Debian, plain) and an asyncio open loop" if use_wrk else "asyncio (raw HTTP/1.1)"
    print(
        f"load generator: {generator}; `serve` pinned to CPU {e2e.MEASURE_CPU}, "
        f"broker and load generator to CPU {e2e.OTHER_CPU}"
    )
    catalogue = load_catalogue(default_patterns_dir())
    rules = catalogue.by_id()
    # The store's week of incidents ends where the backlog's event times do: the service's stream time is the
    # backlog's (March 2025), and incidents "last seen" a year after it would all read as open and unsettled.
    now = max(t for _, t, _ in e2e.corpus_mod.iter_lines(BACKLOG_POOL, seed=BACKLOG_SEED))
    intervals = synthetic_intervals(args.incidents, list(rules.values()), now, args.cause_share)
    causing = sum(1 for i in intervals if rules[i.rule_id].causes is not None)
    print(f"store: {len(intervals):,} synthetic incidents, {causing:,} of them of rules that declare causes")
    workdir = Path(tempfile.mkdtemp(prefix="api-bench-"))
    broker = LocalBroker(log_path=workdir / "broker.log").start()
    assert broker.process is not None
    e2e.pin_process(broker.process.pid, {e2e.OTHER_CPU})
    # This process (producer, asyncio generator, metric reads) stays off the service's CPU too.
    e2e.pin_process(os.getpid(), {e2e.OTHER_CPU})
    missed: list[str] = []
    try:
        topic = f"api-backlog-{uuid.uuid4().hex[:8]}"
        asyncio.run(ensure_topics(broker.bootstrap, [topic], partitions=4))
        pool = e2e.make_records(BACKLOG_POOL, seed=BACKLOG_SEED)
        reps = max(1, args.backlog // len(pool.values))
        backlog = e2e.Records(pool.keys * reps, pool.values * reps, pool.problems * reps)
        took, ends = e2e.produce(broker.bootstrap, topic, backlog)
        total = sum(ends.values())
        del backlog
        print(
            f"backlog: {total:,} Fluent Bit records ({pool.mean_bytes:.0f} B mean, a 100k-record corpus repeated) "
            f"produced in {took:.1f}s; each backend's service consumes it from the start with its own group"
        )
        print(
            f"windows: warm-up {windows['warmup']:.0f}s, idle {windows['idle']:.0f}s, open loop from idle "
            f"{windows['cold']:.0f}s, paced {windows['paced']:.0f}s, "
            f"max {windows['max']:.0f}s, idle {windows['idle']:.0f}s (paced windows: one open-loop, one wrk)"
        )
        for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
            ctx: contextlib.AbstractContextManager[str]
            for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
                if backend == "sqlite":
                    ctx = contextlib.nullcontext(f"sqlite:///{workdir / f'api-{mode}.db'}")
                else:
                    ctx = pg_schema(PG_DSN)
                with ctx as url:
                    result = run_backend(
                        f"{backend}, {mode}",
                        url,
                        broker.bootstrap,
                        topic,
                        total,
                        intervals,
                        rules,
                        now,
                        windows,
                        workdir,
                        use_wrk,
                        broker.process.pid,
                        split=mode == "split",
                    )
                missed += print_backend(result)
    finally:
        broker.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(f"load avg at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("targets missed: " + ("; ".join(missed) if missed else "none"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
