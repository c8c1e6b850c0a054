"""`serve --workers N` ingest throughput: the same backlog consumed with 1, 2, ... ingest workers, in one run.

One broker (the bundled Tansu), one seeded backlog (the e2e benchmark's ~550 B Fluent Bit records, lz4, keyed
by pod, ~1% problem lines) on one topic of ``--partitions`` partitions, produced once. Then, for each worker
count, a real ``mesh-analyzer serve --workers N`` (a supervisor, N ingest processes in one consumer group, one
API process) consumes the whole backlog into a fresh store under a new consumer group; nothing is pinned, the
processes share the machine's cores with the broker as they would in production.

Rate: steady state, records stored after the group is complete (every worker has logged an assignment and
the store shows progress) over the time from then to the last offset stored; start-up, group join and the
rebalance as the workers join are shown apart. CPU split: CPU seconds each process
(ingest workers, API process, supervisor, broker) used in that window, from /proc/<pid>/stat.

    .venv/bin/python benchmarks/workers_bench.py --quick                 # 300k records
    .venv/bin/python benchmarks/workers_bench.py --workers 1,2          # 1M records
    .venv/bin/python benchmarks/workers_bench.py --store postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import corpus as corpus_mod  # noqa: E402
from e2e_bench import cpu_seconds, machine_busy, make_records, produce  # noqa: E402

from analyzer.broker import LocalBroker, ensure_topics, free_port  # noqa: E402
from analyzer.store import open_store  # noqa: E402
from tests.conftest import pg_schema  # noqa: E402  (the tests' fresh-schema helper, one copy)

SERVE = Path(sys.executable).parent / "mesh-analyzer"
TARGET_RATIO = 1.4  # issue 9 part 5: 2 workers >= 1.4x one worker on a 2-core machine


@dataclass
class Run:
    workers: int
    records: int  # stored after the window started (the group complete, progress in the store)
    seconds: float  # from the window's start to the last offset stored
    startup: float  # from the supervisor's start to the window's start
    cpu: dict[str, float] = field(default_factory=dict)  # process -> CPU seconds in the steady window
    restarts: int = 0
    stages: dict[str, dict[str, float]] = field(default_factory=dict)  # worker -> stage -> seconds (whole run)

    @property
    def per_s(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0


@contextlib.contextmanager
def fresh_store(base: str | None, workdir: Path, name: str) -> Iterator[str]:
    """A new SQLite file, or a new schema in the PostgreSQL database ``base`` (dropped afterwards)."""
    if base is None:
        yield f"sqlite:///{workdir / f'{name}.db'}"
        return
    with pg_schema(base) as url:
        yield url


class Offsets:
    """The store's offsets for a group, read through the analyzer's own store protocol."""

    def __init__(self, url: str) -> None:
        self._runner = asyncio.Runner()
        self._store = open_store(url)
        self._runner.run(self._store.open())

    def read(self, group: str, topic: str) -> dict[int, int]:
        return self._runner.run(self._store.load_offsets(group, topic))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._runner.run(self._store.close())
        self._runner.close()


def events(log_path: Path) -> list[dict[str, object]]:
    out = []
    for line in log_path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict):
                out.append(event)
    return out


def stage_seconds(port: int) -> dict[str, float]:
    """A worker's analyzer_batch_duration_seconds_sum by stage (its own /metrics port)."""
    import httpx

    out: dict[str, float] = {}
    with contextlib.suppress(httpx.HTTPError):
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith("analyzer_batch_duration_seconds_sum{"):
                stage = line.split('stage="', 1)[1].split('"', 1)[0]
                out[stage] = float(line.rsplit(" ", 1)[1])
    return out


def all_assigned(log_path: Path, workers: int) -> bool:
    """Every ingest worker has been assigned partitions: the group is complete, the window may start."""
    assigned = {e.get("process") for e in events(log_path) if e["event"] == "partitions assigned" and e["partitions"]}
    return len(assigned) >= workers


def free_port_block(n: int) -> int:
    """A port p with p .. p + n - 1 all free now: the supervisor gives the API p and worker i p + 1 + i."""
    for _ in range(100):
        base = free_port()
        if base + n > 65535:
            continue
        with contextlib.ExitStack() as stack:
            try:
                for port in range(base, base + n):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return base
    raise RuntimeError(f"no {n} consecutive free ports")


def one_run(
    workers: int,
    bootstrap: str,
    topic: str,
    ends: dict[int, int],
    store_url: str,
    log_path: Path,
    bound: float,
    others: dict[str, int],
) -> Run:
    """``others``: further processes whose CPU the split shows (the broker)."""
    group = f"bench-w{workers}-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "ANALYZER_KAFKA_BOOTSTRAP": bootstrap,
        "ANALYZER_KAFKA_TOPICS": topic,
        "ANALYZER_KAFKA_GROUP": group,
        "ANALYZER_STORE_URL": store_url,
        "ANALYZER_HTTP_HOST": "127.0.0.1",
        "ANALYZER_HTTP_PORT": str(free_port_block(workers + 1)),
        "ANALYZER_LOG_FORMAT": "json",
        "ANALYZER_LOG_LEVEL": os.environ.get("WORKERS_BENCH_LOG_LEVEL", "info"),  # debug: every batch logged
        "ANALYZER_RETENTION": "0",
    }
    total = sum(ends.values())
    t_start = time.perf_counter()
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            [str(SERVE), "serve", "--workers", str(workers)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    offsets: Offsets | None = None
    try:
        deadline = time.monotonic() + bound
        first: tuple[float, int, dict[str, float], float] | None = None
        pids: dict[str, int] = {}
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"serve --workers {workers} exited with {proc.returncode}; see {log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"serve --workers {workers} did not consume the backlog in {bound}s")
            if offsets is None:
                with contextlib.suppress(Exception):  # the store's tables exist once a child has opened it
                    offsets = Offsets(store_url)
                time.sleep(0.1)
                continue
            stored = sum(offsets.read(group, topic).values())
            now = time.perf_counter()
            if first is None and stored > 0 and all_assigned(log_path, workers):
                pids = {
                    str(e["worker"]): int(str(e["pid"])) for e in events(log_path) if e["event"] == "worker started"
                }
                pids.update(supervisor=proc.pid, **others)
                first = (now, stored, {name: cpu_seconds(pid) for name, pid in pids.items()}, machine_busy())
            if stored >= total:
                break
            time.sleep(0.05)
        assert first is not None
        t_first, n_first, cpu_first, busy_first = first
        cpu = {name: cpu_seconds(pid) - cpu_first[name] for name, pid in pids.items()}
        # What else ran meanwhile (other processes on a shared machine): the busy time that is not ours.
        cpu["others"] = max(0.0, machine_busy() - busy_first - sum(cpu.values()))
        started = [e for e in events(log_path) if e["event"] == "worker started"]
        restarts = sum(1 for e in events(log_path) if e["event"] == "worker died; restarting")
        ports = {str(e["worker"]): int(str(e["port"])) for e in started if str(e["worker"]).startswith("ingest")}
        stages = {name: stage_seconds(port) for name, port in sorted(ports.items())}
        return Run(workers, total - n_first, now - t_first, t_first - t_start, cpu, restarts, stages)
    finally:
        if offsets is not None:
            offsets.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--quick", action="store_true", help="300k records")
    p.add_argument("--workers", default="1,2", help="comma list of worker counts, run in this order")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--seed", type=int, default=corpus_mod.DEFAULT_SEED)
    p.add_argument("--store", default=None, help="a PostgreSQL URL (a fresh schema per run); default: SQLite")
    p.add_argument("--timeout", type=float, default=600.0, help="bound for each run, seconds")
    p.add_argument("--keep", action="store_true", help="keep the work dir (stores, logs)")
    args = p.parse_args(argv)
    n = 300_000 if args.quick else args.records
    counts = [int(w) for w in args.workers.split(",") if w.strip()]

    workdir = Path(tempfile.mkdtemp(prefix="workers-bench-"))
    print(f"# workers_bench: {platform.node()} {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"# {n:,} records, {args.partitions} partitions, store {'PostgreSQL' if args.store else 'SQLite'}")
    broker = LocalBroker(log_path=workdir / "broker.log").start()
    runs: list[Run] = []
    try:
        topic = f"workers-{uuid.uuid4().hex[:8]}"
        asyncio.run(ensure_topics(broker.bootstrap, [topic], partitions=args.partitions))
        records = make_records(n, seed=args.seed)
        seconds, ends = produce(broker.bootstrap, topic, records)
        print(f"# produced {n:,} records ({records.mean_bytes:.0f} B each) in {seconds:.1f}s; ends {ends}")
        del records
        assert broker.process is not None
        for w in counts:
            with fresh_store(args.store, workdir, f"w{w}-{uuid.uuid4().hex[:6]}") as url:
                log_path = workdir / f"serve-w{w}.log"
                run = one_run(
                    w, broker.bootstrap, topic, ends, url, log_path, args.timeout, {"broker": broker.process.pid}
                )
            runs.append(run)
            split = ", ".join(f"{name} {sec:.1f}s" for name, sec in sorted(run.cpu.items()))
            print(
                f"workers={w}: {run.per_s:,.0f} records/s steady ({run.records:,} records in {run.seconds:.1f}s; "
                f"start-up and group join {run.startup:.1f}s; restarts {run.restarts})",
                flush=True,
            )
            print(f"  CPU seconds in the window: {split}", flush=True)
            for name, stages in run.stages.items():
                shown = ", ".join(f"{stage} {sec:.1f}s" for stage, sec in stages.items())
                print(f"  {name} batch stages (whole run): {shown}", flush=True)
    finally:
        broker.stop()
        if not args.keep:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"# kept {workdir}")
    rates: dict[int, list[float]] = {}
    for run in runs:
        rates.setdefault(run.workers, []).append(run.per_s)
    if len(rates) >= 2:
        # The median of each count's runs (--workers 1,2,1,2 alternates them against drift in machine load).
        first, *others = rates
        base = statistics.median(rates[first])
        for w in others:
            ratio = statistics.median(rates[w]) / base if base else 0.0
            verdict = "meets" if ratio >= TARGET_RATIO else "below"
            print(
                f"ratio workers={w} / workers={first} (medians of {len(rates[w])} and {len(rates[first])} runs): "
                f"{ratio:.2f}x ({verdict} the {TARGET_RATIO}x target for 2 vs 1)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
