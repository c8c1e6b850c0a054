"""This checkout against an older revision, code and catalogue together: what a user upgrading would see.

`match_bench.py --baseline REV` times two catalogues with today's code; this times the older revision as it
was (its analyzer/ and patterns/) against this checkout, on the same corpus (today's benchmarks/corpus.py),
each in its own process, taking turns so the machine's load drifts hit both alike.

    .venv/bin/python benchmarks/versus.py e0e318b            # 100k lines, 5 rounds
    .venv/bin/python benchmarks/versus.py e0e318b --lines 300000 --rounds 7
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent

# Run inside each checkout: the Pipeline over Fluent Bit records and the Matcher over plain lines, best of 3.
_TIMER = r"""
import gc, json, sys, tempfile, time
from pathlib import Path
root, bench, lines = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
sys.path[:0] = [str(root), bench]
import corpus
from analyzer.catalogue import load_catalogue
from analyzer.correlation import SIGNALS
from analyzer.match import Matcher, compile_catalogue
from analyzer.pipeline import Pipeline
catalogue = load_catalogue(root / "patterns")
with tempfile.TemporaryDirectory() as cache:
    service = compile_catalogue(catalogue, SIGNALS, cache_dir=Path(cache))
    rules_only = compile_catalogue(catalogue, cache_dir=Path(cache))
c = corpus.generate(lines)
def pipeline():
    pipe = Pipeline(catalogue, service, default_cluster="bench")
    for a in range(0, len(c.records), 5000):
        pipe(c.records[a : a + 5000], c.timestamps[a : a + 5000])
matcher = Matcher(rules_only)
def plain():
    matcher(c.lines)
out = {"rules": len(catalogue.rules), "expressions": sum(len(r.expressions) for r in catalogue.rules),
       "records": len(c.records), "line_mb": (sum(map(len, c.lines)) + len(c.lines)) / 1e6}
for name, fn in (("pipeline", pipeline), ("matcher", plain)):
    times = []
    for _ in range(3):
        gc.collect()
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    out[name] = min(times)
print(json.dumps(out))
"""


def _checkout(rev: str, into: Path) -> Path:
    """analyzer/ and patterns/ as they were at ``rev`` (git archive: no worktree left behind)."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "analyzer", "patterns"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def _run(root: Path, lines: int) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", _TIMER, str(root), str(BENCH), str(lines)], capture_output=True, text=True
    )
    if done.returncode:
        raise SystemExit(f"timing {root} failed:\n{done.stderr}")
    result: dict[str, float] = json.loads(done.stdout.splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("rev", help="the older revision (anything git understands)")
    p.add_argument("--lines", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=5, help="turns each side takes (the median is reported)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="versus-") as tmp:
        old_root = _checkout(args.rev, Path(tmp))
        runs: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
        for _ in range(args.rounds):
            runs["old"].append(_run(old_root, args.lines))
            runs["new"].append(_run(REPO, args.lines))
    old, new = runs["old"][0], runs["new"][0]
    print(f"{args.rev} vs this checkout: {args.lines:,} lines, median of {args.rounds} turns each (CPU seconds)")
    print(f"  {'':<34} {args.rev:>14} {'this checkout':>14} {'ratio':>7}")
    sizes = [f"{r['rules']:.0f} / {r['expressions']:.0f}" for r in (old, new)]
    print(f"  {'rules / expressions':<34} {sizes[0]:>14} {sizes[1]:>14}")
    for key, label, unit in (
        ("pipeline", "Fluent Bit records/s (Pipeline)", "rec"),
        ("matcher", "plain lines MB/s (Matcher)", "mb"),
    ):
        t_old = statistics.median(r[key] for r in runs["old"])
        t_new = statistics.median(r[key] for r in runs["new"])
        size = old["records"] if unit == "rec" else old["line_mb"]
        fmt = (lambda x: f"{x / 1000:,.0f}k") if unit == "rec" else (lambda x: f"{x:,.0f}")
        print(f"  {label:<34} {fmt(size / t_old):>14} {fmt(size / t_new):>14} {t_old / t_new:>6.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
