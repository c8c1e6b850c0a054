"""The unclassified lane's cost on the Fluent Bit path: the same Pipeline with the lane off and on.

Same corpus, same process, runs alternated (off, on) and the medians compared; then the same with 1% of the
records replaced by istiod errors no rule knows (the lane's per-line cost: decode again, mask, hash).

    .venv/bin/python benchmarks/unclassified_bench.py [--records 200000] [--runs 7]
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import corpus as corpus_mod  # noqa: E402

from analyzer.catalogue import load_catalogue  # noqa: E402
from analyzer.correlation import SIGNALS  # noqa: E402
from analyzer.match import compile_catalogue  # noqa: E402
from analyzer.pipeline import Pipeline  # noqa: E402
from analyzer.unclassified import TemplateRegistry  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--records", type=int, default=200_000)
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--batch", type=int, default=5000)
    args = p.parse_args(argv)
    corp = corpus_mod.generate(args.records)
    values, stamps = corp.records, corp.timestamps
    catalogue = load_catalogue(REPO / "patterns")
    compiled = compile_catalogue(catalogue, SIGNALS)
    gc.collect()
    gc.freeze()

    def run(vals: Sequence[bytes], lane: bool) -> tuple[float, int]:
        pipe = Pipeline(catalogue, compiled, default_cluster="bench", unclassified=TemplateRegistry() if lane else None)
        t0 = time.perf_counter()
        lines = 0
        for a in range(0, len(vals), args.batch):
            lines += sum(pipe(vals[a : a + args.batch], stamps[a : a + args.batch]).unclassified.values())
        return time.perf_counter() - t0, lines

    def bench(vals: Sequence[bytes], label: str) -> None:
        off, on = [], []
        lines = 0
        for _ in range(args.runs):
            off.append(run(vals, False)[0])
            t, lines = run(vals, True)
            on.append(t)
        a, b = statistics.median(off), statistics.median(on)
        mb = sum(map(len, vals)) / 1e6
        print(
            f"{label:<40} off {len(vals) / a / 1e3:6.0f}k rec/s {mb / a:5.0f} MB/s | "
            f"on {len(vals) / b / 1e3:6.0f}k rec/s {mb / b:5.0f} MB/s | on/off time {b / a:.2f} | "
            f"unclassified lines {lines}"
        )

    bench(values, f"corpus, {len(values)} records")
    rng = random.Random(1)
    mixed = list(values)
    for i in range(0, len(mixed), 100):
        line = (
            f"2025-03-10T08:00:{i % 60:02d}.123456Z\terror\tads\twidget {rng.randrange(50)} reconcile failed "
            f"for shard {rng.randrange(9999)}"
        )
        k8s = {"pod_name": "istiod-5d8f7c9b6d-x2x4q", "namespace_name": "istio-system", "container_name": "discovery"}
        mixed[i] = orjson.dumps({"@timestamp": 1741593600.0, "log": line, "kubernetes": k8s})
    bench(mixed, "same, 1% unknown istiod errors")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
