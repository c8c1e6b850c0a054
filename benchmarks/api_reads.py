"""What the API's reads cost, this checkout against an older revision, nothing ingesting.

`api_bench.py` measures the API while `serve` consumes flat out; this isolates the read path: one store of
synthetic incidents (api_bench's: a week, 20 namespaces x 500 workloads, a realistic share of cause incidents)
served by `mesh-analyzer serve --role api` of each revision in turn (the older one from `git archive`, run with
its own analyzer/ first on the path), each turn: api_bench's rotation of list and detail requests one after the
other (the second round: after the first has warmed what is shared), then eight clients without pause.

    .venv/bin/python benchmarks/api_reads.py 4ebb169                 # SQLite, 3 turns each
    .venv/bin/python benchmarks/api_reads.py 4ebb169 --cause-share 0.1
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import api_bench  # a sibling script, not a package
from versus import REPO, _checkout

from analyzer.broker import free_port
from analyzer.catalogue import default_patterns_dir, load_catalogue

CLIENTS = 8
LOAD_SECONDS = 5.0


def _serve(root: Path | None, db: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = dict(
        os.environ,
        ANALYZER_STORE_URL=f"sqlite:///{db}",
        ANALYZER_HTTP_HOST="127.0.0.1",
        ANALYZER_HTTP_PORT=str(port),
        ANALYZER_KAFKA_BOOTSTRAP="127.0.0.1:1",  # the api role never connects
        ANALYZER_LOG_LEVEL="warning",
    )
    if root is not None:
        env["PYTHONPATH"] = str(root)
        env["ANALYZER_PATTERNS_DIR"] = str(root / "patterns")
    # Run from the work dir: the checkout's own analyzer/ must not shadow the older one.
    cmd = [sys.executable, "-m", "analyzer", "serve", "--role", "api"]
    proc = subprocess.Popen(cmd, env=env, cwd=log.parent, stderr=log.open("wb"))
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"serve did not start:\n{log.read_text()[-2000:]}")


def _turn(root: Path | None, db: Path, paths: list[str], log: Path) -> tuple[float, dict[str, float], float]:
    """(seconds for the warm rotation, median ms per kind of request, requests/s of the clients)."""
    proc, base = _serve(root, db, log)
    try:
        kinds: dict[str, list[float]] = defaultdict(list)
        with httpx.Client(base_url=base, timeout=60) as client:
            for warm in (False, True):
                t0 = time.perf_counter()
                for path in paths:
                    a = time.perf_counter()
                    response = client.get(path)
                    if response.status_code != 200:
                        raise SystemExit(f"{path}: {response.status_code} {response.text[:200]}")
                    if warm:
                        kinds[api_bench.kind_of(path)].append((time.perf_counter() - a) * 1000)
                rotation = time.perf_counter() - t0
        return rotation, {k: statistics.median(v) for k, v in kinds.items()}, asyncio.run(_clients(base, paths))
    finally:
        proc.terminate()
        proc.wait(30)


async def _clients(base: str, paths: list[str]) -> float:
    done = 0
    end = time.perf_counter() + LOAD_SECONDS
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:

        async def loop(j: int) -> None:
            nonlocal done
            i = j
            while time.perf_counter() < end:
                (await client.get(paths[i % len(paths)])).raise_for_status()
                done += 1
                i += CLIENTS

        await asyncio.gather(*(loop(j) for j in range(CLIENTS)))
    return done / LOAD_SECONDS


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("rev", help="the older revision (anything git understands)")
    p.add_argument("--incidents", type=int, default=100_000)
    p.add_argument("--cause-share", type=float, default=api_bench.CAUSE_SHARE)
    p.add_argument("--rounds", type=int, default=3, help="turns each side takes (medians reported)")
    args = p.parse_args(argv)
    rules = load_catalogue(default_patterns_dir()).by_id()
    now = time.time()
    intervals = api_bench.synthetic_intervals(args.incidents, list(rules.values()), now, args.cause_share)
    causing = sum(1 for i in intervals if rules[i.rule_id].causes is not None)
    with tempfile.TemporaryDirectory(prefix="api-reads-") as tmp:
        work = Path(tmp)
        (work / "old").mkdir()
        old_root = _checkout(args.rev, work / "old")
        # The older revision fills its own store (its schema), this checkout its own; the same incidents.
        fill = (
            # analyzer imported before api_bench (which puts this checkout first on the path): its modules
            # then come from the package already imported, the revision's
            "import asyncio, sys, time; sys.path[:0] = [sys.argv[1], sys.argv[2]]; import analyzer; import api_bench; "
            "from pathlib import Path; from analyzer.catalogue import load_catalogue; "
            "rules = load_catalogue(Path(sys.argv[1]) / 'patterns').by_id(); "
            "ivs = api_bench.synthetic_intervals(int(sys.argv[4]), list(rules.values()), float(sys.argv[5]), "
            "float(sys.argv[6])); asyncio.run(api_bench.fill_store('sqlite:///' + sys.argv[3], ivs, rules, "
            "float(sys.argv[5])))"
        )
        dbs = {"old": work / "old.db", "new": work / "new.db"}
        for side, root in (("old", old_root), ("new", REPO)):
            subprocess.run(
                [
                    sys.executable,
                    "-c",
                    fill,
                    str(root),
                    str(Path(__file__).parent),
                    str(dbs[side]),
                    str(args.incidents),
                    str(now),
                    str(args.cause_share),
                ],
                check=True,
                cwd=work,
            )
        ids = [row[0] for row in sqlite3.connect(dbs["new"]).execute("SELECT id FROM incidents LIMIT 20000")]
        paths = api_bench.urls(ids, list(rules.values()))
        turns: dict[str, list[tuple[float, dict[str, float], float]]] = {"old": [], "new": []}
        for _ in range(args.rounds):
            turns["old"].append(_turn(old_root, dbs["old"], paths, work / "old.log"))
            turns["new"].append(_turn(None, dbs["new"], paths, work / "new.log"))
        shutil.rmtree(old_root, ignore_errors=True)
    print(
        f"api_reads: {args.rev} vs this checkout; {args.incidents:,} incidents ({causing:,} of cause rules), SQLite, "
        f"`serve --role api`, nothing ingesting; median of {args.rounds} turns each, taken in turns"
    )
    print(f"  {'':<40} {args.rev:>12} {'this checkout':>14} {'ratio':>7}")

    rot_old, rot_new = (statistics.median(t[0] for t in turns[side]) for side in ("old", "new"))
    print(
        f"  {f'rotation of {len(paths)} requests, s':<40} {rot_old:>12.2f} {rot_new:>14.2f} {rot_old / rot_new:>6.2f}x"
    )
    for kind in sorted(turns["new"][0][1], key=lambda k: -turns["old"][0][1].get(k, 0.0)):
        old_ms = statistics.median(t[1].get(kind, float("nan")) for t in turns["old"])
        new_ms = statistics.median(t[1][kind] for t in turns["new"])
        print(f"  {'  ' + kind + ', median ms':<40} {old_ms:>12.1f} {new_ms:>14.1f} {old_ms / new_ms:>6.2f}x")
    rps_old, rps_new = (statistics.median(t[2] for t in turns[side]) for side in ("old", "new"))
    label = f"{CLIENTS} clients without pause, requests/s"
    print(f"  {label:<40} {rps_old:>12.0f} {rps_new:>14.0f} {rps_new / rps_old:>6.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
