"""Matching benchmark: one side-by-side table of designs measured in the same run on the same corpus.

Plain container lines: Python ``re``, hyperscan per line, our batch ``Matcher``, GNU grep / ripgrep and the
engine floor. Fluent Bit records: our ``Pipeline`` (literal prefilter over raw JSON, decode candidates,
exact rescan), the orjson parse-everything floor, the naive "orjson every record, then match" design and
the prefilter engine floor. Then the targets (PASS/MISS) and the per-rule engine cost.

    .venv/bin/python benchmarks/match_bench.py            # 1M lines, median of 3 runs
    .venv/bin/python benchmarks/match_bench.py --quick    # 100k lines smoke run
    .venv/bin/python benchmarks/match_bench.py --baseline e0e318b   # also: this catalogue vs an older one
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import hyperscan
import numpy as np
import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import corpus as corpus_mod  # noqa: E402

from analyzer.catalogue import load_catalogue  # noqa: E402
from analyzer.correlation import SIGNALS  # noqa: E402
from analyzer.decode import Decoder, Format  # noqa: E402
from analyzer.match import CompiledCatalogue, Matcher, RecordPrefilter, compile_catalogue  # noqa: E402
from analyzer.pipeline import Pipeline  # noqa: E402
from analyzer.types import Catalogue, Expression  # noqa: E402

RE_SAMPLE = 20  # the re loop runs on every 20th line and is scaled up
GREP_SAMPLE = 500  # GNU grep with counted repeats is slower still
TOOL_TIMEOUT = 600
TARGET_VS_RE = 25.0
TARGET_VS_RG = 1.0
TARGET_VS_FLOOR = 0.7
TARGET_RECORDS = 800_000


# ------------------------------------------------------------------------------------------------ helpers


def _noop(_id: int, _from: int, _to: int, _flags: int, _ctx: object) -> None:
    return None


def _count(_id: int, _from: int, _to: int, _flags: int, ctx: list[int]) -> None:
    ctx[0] += 1


def _append_id(expr_id: int, _from: int, _to: int, _flags: int, ctx: list[int]) -> None:
    ctx.append(expr_id)


def _median_time(fn: Callable[[], object], runs: int) -> tuple[float, object]:
    times = []
    result: object = None
    for _ in range(runs):
        gc.collect()
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def _compile(expressions: Sequence[Expression]) -> Any:
    db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    db.compile(
        expressions=[e.pattern.encode() for e in expressions],
        ids=list(range(len(expressions))),
        elements=len(expressions),
        flags=[hyperscan.HS_FLAG_MULTILINE | (hyperscan.HS_FLAG_CASELESS if e.caseless else 0) for e in expressions],
    )
    return db


def to_ere(pattern: str) -> str | None:
    """A Hyperscan/PCRE expression as POSIX ERE for ``grep -E`` (None if it needs more than this knows).

    grep matches per line, so ``[^\\n]`` is any character and ``\\n`` can be dropped from a bracket;
    ``(?:`` becomes a plain group; ``\\d``/``\\s`` become POSIX classes. In an ERE bracket ``\\`` is literal.
    """
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("[^\\n]", i):
            out.append(".")
            i += 5
        elif c == "[":
            j = i + 1
            body: list[str] = []
            if j < n and pattern[j] == "^":
                body.append("^")
                j += 1
            if j < n and pattern[j] == "]":
                body.append("]")
                j += 1
            while j < n and pattern[j] != "]":
                if pattern[j] == "\\":
                    esc = pattern[j + 1 : j + 2]
                    if esc == "n":
                        pass
                    elif esc in ("-",):
                        return None
                    elif esc in ("\\", "[", "."):
                        body.append(esc)
                    elif esc == "]":
                        body.insert(1 if body[:1] == ["^"] else 0, "]")
                    else:
                        return None
                    j += 2
                else:
                    body.append(pattern[j])
                    j += 1
            out.append("[" + "".join(body) + "]")
            i = j + 1
        elif pattern.startswith("(?:", i):
            out.append("(")
            i += 3
        elif pattern.startswith("(?", i):
            return None
        elif c == "\\":
            esc = pattern[i + 1 : i + 2]
            if esc == "d":
                out.append("[0-9]")
            elif esc == "s":
                out.append("[[:space:]]")
            elif esc == "n":
                return None
            else:
                out.append(c + esc)
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


@dataclass
class Row:
    section: str
    name: str
    seconds: float
    items: int
    nbytes: int
    note: str = ""
    scaled: bool = False

    @property
    def per_s(self) -> float:
        return self.items / self.seconds if self.seconds else float("inf")

    @property
    def mb_s(self) -> float:
        return self.nbytes / self.seconds / 1e6 if self.seconds else float("inf")


# ----------------------------------------------------------------------------------------------- designs


def re_loop(
    patterns: Sequence[tuple[str, re.Pattern[bytes]]], lines: Sequence[bytes]
) -> list[tuple[int, tuple[str, ...]]]:
    out = []
    for i, line in enumerate(lines):
        owners = tuple(dict.fromkeys(owner for owner, p in patterns if p.search(line)))
        if owners:
            out.append((i, owners))
    return out


def hs_per_line(db: Any, owners: Sequence[str], lines: Sequence[bytes]) -> list[tuple[int, tuple[str, ...]]]:
    out = []
    hits: list[int] = []
    scan = db.scan
    for i, line in enumerate(lines):
        scan(line, match_event_handler=_append_id, context=hits)
        if hits:
            out.append((i, tuple(dict.fromkeys(owners[h] for h in sorted(hits)))))
            hits.clear()
    return out


def pipeline_run(
    catalogue: Catalogue, compiled: CompiledCatalogue, values: Sequence[bytes], stamps: Sequence[float], batch: int
) -> tuple[int, Counter[str]]:
    pipe = Pipeline(catalogue, compiled, default_cluster="bench")
    candidates = 0
    matches: Counter[str] = Counter()
    for a in range(0, len(values), batch):
        result = pipe(values[a : a + batch], stamps[a : a + batch])
        candidates += result.candidates
        matches.update(result.matches)
    return candidates, matches


def orjson_all(values: Sequence[bytes]) -> int:
    loads = orjson.loads
    for v in values:
        loads(v)
    return len(values)


def naive(matcher: Matcher, values: Sequence[bytes], batch: int) -> int:
    loads = orjson.loads
    found = 0
    for a in range(0, len(values), batch):
        lines = [loads(v)["log"].encode() for v in values[a : a + batch]]
        found += len(matcher(lines))
    return found


def run_tool(argv: Sequence[str]) -> tuple[float, int]:
    t0 = time.perf_counter()
    proc = subprocess.run(
        argv, capture_output=True, env={**os.environ, "LC_ALL": "C"}, check=False, timeout=TOOL_TIMEOUT
    )
    elapsed = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): {proc.stderr.decode()[:500]}")
    return elapsed, int(proc.stdout.strip() or 0)


def exported_expressions(patterns_dir: Path) -> tuple[list[str], str]:
    """``mesh-analyzer rules export --format regex``; the catalogue itself if the command fails."""
    cli = REPO / ".venv" / "bin" / "mesh-analyzer"
    proc = subprocess.run(
        [str(cli), "rules", "export", "--format", "regex", "--patterns", str(patterns_dir)],
        capture_output=True,
        check=False,
    )
    if proc.returncode == 0 and proc.stdout.strip():
        return proc.stdout.decode().splitlines(), "rules export"
    from analyzer.cli import portable_regex  # the export's own rewrite

    cat = load_catalogue(patterns_dir)
    exprs = [portable_regex(e.pattern, caseless=e.caseless) for r in cat.rules for e in r.expressions]
    return exprs, f"`rules export` failed (rc {proc.returncode}); built from the catalogue"


def _median_tool(argv: Sequence[str], runs: int) -> tuple[float, int]:
    run_tool(argv)  # warm the page cache
    results = [run_tool(argv) for _ in range(runs)]
    return statistics.median(t for t, _ in results), results[0][1]


def tool_designs(
    args: argparse.Namespace, lines: Sequence[bytes], line_bytes: int, n_match: int, tmp: Path
) -> tuple[list[Row], list[str]]:
    """GNU grep and ripgrep with the exported expressions, ``-c`` on a file of the plain lines."""
    plain = "plain lines"
    rows: list[Row] = []
    notes: list[str] = []
    exported, source = exported_expressions(args.patterns)
    ere = [to_ere(x) for x in exported]
    changed = sum(1 for x, y in zip(exported, ere, strict=True) if y is not None and x != y)
    dropped = sum(y is None for y in ere)
    exact = [y for y in ere if y is not None]
    # GNU grep's DFA expands counted repeats: ".{0,1000}" costs it ~1000x; this variant shows grep's speed
    # without them (a superset: it can only match more lines).
    relaxed = [re.sub(r"\.\{0,[0-9]+\}", ".*", y) for y in exact]
    files = {}
    for name, exprs in (("ere", exact), ("relaxed", relaxed), ("rg", exported)):
        files[name] = tmp / f"{name}.txt"
        files[name].write_text("".join(x + "\n" for x in exprs))
    data = tmp / "lines.txt"
    with data.open("wb") as fh:
        fh.write(b"\n".join(lines) + b"\n")
    rewrite = f"; {changed} expr. rewritten to ERE" if changed else ""
    rewrite += f", {dropped} not expressible, dropped" if dropped else ""

    grep = shutil.which("grep")
    if grep:
        sample = lines[::GREP_SAMPLE]
        sample_file = tmp / "grep-sample.txt"
        sample_file.write_bytes(b"\n".join(sample) + b"\n")
        sample_bytes = sum(map(len, sample)) + len(sample)
        try:
            t, c = _median_tool([grep, "-E", "-c", "-f", str(files["ere"]), str(sample_file)], 1)
            rows.append(
                Row(
                    plain,
                    "GNU grep -E -c -f (LC_ALL=C), exported expressions",
                    t * GREP_SAMPLE,
                    len(sample) * GREP_SAMPLE,
                    sample_bytes * GREP_SAMPLE,
                    f"1/{GREP_SAMPLE} sample, scaled, 1 run; {c:,} of {len(sample):,} lines{rewrite}",
                )
            )
        except subprocess.TimeoutExpired:
            notes.append(f"GNU grep -E: over {TOOL_TIMEOUT}s on a 1/{GREP_SAMPLE} sample, row skipped")
        t, c = _median_tool([grep, "-E", "-c", "-f", str(files["relaxed"]), str(data)], args.runs)
        rows.append(
            Row(
                plain,
                "GNU grep -E, the same with .{0,N} relaxed to .* (superset)",
                t,
                len(lines),
                line_bytes,
                f"{c:,} lines (ours {n_match:,})",
            )
        )
    else:
        notes.append("GNU grep: not installed, rows skipped")
    rg = shutil.which("rg")
    if rg:
        base = [rg, "--no-config", "-j1", "-c"]
        t, c = _median_tool([*base, "-f", str(files["rg"]), str(data)], args.runs)
        rows.append(
            Row(
                plain,
                "ripgrep -c -f (LC_ALL=C), exported expressions",
                t,
                len(lines),
                line_bytes,
                f"{c:,} lines (ours {n_match:,}); Unicode mode (default)",
            )
        )
        t, c = _median_tool([*base, "--no-unicode", "-f", str(files["rg"]), str(data)], args.runs)
        rows.append(
            Row(
                plain,
                "ripgrep --no-unicode -c -f, exported expressions",
                t,
                len(lines),
                line_bytes,
                f"{c:,} lines; byte semantics like Hyperscan's",
            )
        )
    else:
        notes.append("ripgrep: not installed (apt-get install ripgrep), rows skipped")
    notes.append(
        f"grep/ripgrep expressions from {source}; tool times are wall times of one process each, "
        "including start-up and reading the file from the page cache"
    )
    data.unlink()
    return rows, notes


# ---------------------------------------------------------------------------------------------- the bench


def fmt_rate(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e3:
        return f"{x / 1e3:.0f}k"
    return f"{x:.0f}"


def print_table(rows: Sequence[Row], base: dict[str, Row]) -> None:
    head = f"{'design':<62} {'items/s':>9} {'MB/s':>8} {'vs ours':>8}  note"
    print(head)
    print("-" * len(head))
    section = None
    for r in rows:
        if r.section != section:
            section = r.section
            print(f"[{section}]")
        ref = base[r.section]
        ratio = r.mb_s / ref.mb_s
        print(f"  {r.name:<60} {fmt_rate(r.per_s):>9} {r.mb_s:>8.0f} {ratio:>7.2f}x  {r.note}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="matching benchmark (side-by-side table)")
    p.add_argument("--lines", type=int, default=corpus_mod.DEFAULT_LINES)
    p.add_argument("--runs", type=int, default=3, help="timed runs per design; the median is reported")
    p.add_argument("--quick", action="store_true", help="100k-line smoke run")
    p.add_argument("--seed", type=int, default=corpus_mod.DEFAULT_SEED)
    p.add_argument("--batch", type=int, default=5000, help="records per Pipeline call (kafka_max_records)")
    p.add_argument("--patterns", type=Path, default=REPO / "patterns")
    p.add_argument("--tab-escape", choices=("t", "u0009"), default="t")
    p.add_argument("--no-tools", action="store_true", help="skip grep and ripgrep")
    p.add_argument("--per-rule", type=int, default=10, help="rows of the per-rule cost table (0: skip)")
    p.add_argument(
        "--baseline",
        help="a patterns directory or a git revision: time our matcher and pipeline with that catalogue too, "
        "in the same run on the same corpus, and print the ratios (does a grown catalogue cost speed?)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.lines = 100_000
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]

    try:
        os.sched_setaffinity(0, {0})
        pinned = "pinned to CPU 0"
    except (AttributeError, OSError) as exc:
        pinned = f"NOT pinned ({exc})"

    catalogue = load_catalogue(args.patterns)
    with tempfile.TemporaryDirectory(prefix="match-bench-") as tmp:
        cache = Path(tmp) / "cache"
        compiled = compile_catalogue(catalogue, cache_dir=cache)  # rules only: same set as `rules export`
        compiled_svc = compile_catalogue(catalogue, SIGNALS, cache_dir=cache)  # what the service builds
        expressions = [e for r in catalogue.rules for e in r.expressions]

        t0 = time.perf_counter()
        corp = corpus_mod.generate(args.lines, seed=args.seed, tab_escape=args.tab_escape)
        gen_s = time.perf_counter() - t0
        lines, values, stamps = corp.lines, corp.records, corp.timestamps
        line_bytes, record_bytes = corp.line_bytes, corp.record_bytes
        gc.collect()
        gc.freeze()  # the corpus is long-lived: keep it out of the collector's way, as a service's heap would be

        print(
            f"match_bench: {time.strftime('%Y-%m-%d %H:%M:%S')}  python {platform.python_version()}  "
            f"hyperscan {getattr(hyperscan, '__version__', '?')}  {os.cpu_count()} CPUs, {pinned}  "
            f"load avg {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
        )
        print(
            f"catalogue: {len(catalogue.rules)} rules, {len(expressions)} expressions "
            f"(+{len(SIGNALS)} internal signals in the service database); "
            f"prefilter: {len(compiled_svc.literals)} literals"
        )
        print(
            f"corpus: {len(lines):,} lines, {line_bytes / 1e6:.0f} MB as a file (mean {line_bytes / len(lines):.0f} "
            "B); "
            f"{len(values):,} Fluent Bit records, {record_bytes / 1e6:.0f} MB (mean {record_bytes / len(values):.0f} "
            "B); "
            f"kinds {dict(corp.kinds)}; generated in {gen_s:.1f}s (seed {args.seed}, TAB as \\{args.tab_escape})"
        )

        matcher = Matcher(compiled)
        owners = compiled.owners

        # --- correctness before timing -------------------------------------------------------------
        sample = lines[::RE_SAMPLE]
        sample_bytes = sum(map(len, sample)) + len(sample)
        ours_sample = matcher(sample)
        hs_sample = hs_per_line(compiled.db, owners, sample)
        if ours_sample != hs_sample:
            a, b = dict(ours_sample), dict(hs_sample)
            diff = sorted(set(a.items()) ^ set(b.items()))[:5]
            print(f"FAIL: Matcher != per-line hyperscan on the sample: {len(a)} vs {len(b)} lines; e.g. {diff}")
            return 1
        re_patterns: list[tuple[str, re.Pattern[bytes]]] = []
        re_skipped = []
        for r in catalogue.rules:
            for e in r.expressions:
                try:
                    re_patterns.append((r.id, re.compile(e.pattern.encode(), re.IGNORECASE if e.caseless else 0)))
                except re.error:
                    re_skipped.append(e.pattern)
        re_sample = re_loop(re_patterns, sample)
        re_agree = "agrees" if re_sample == ours_sample else f"DIFFERS ({len(re_sample)} vs {len(ours_sample)} lines)"
        print(
            f"check: on a 1/{RE_SAMPLE} sample ({len(sample):,} lines) Matcher == per-line hyperscan "
            f"({len(ours_sample)} matching lines); Python re {re_agree}"
            + (f"; {len(re_skipped)} expressions re cannot compile" if re_skipped else "")
        )

        # Fluent Bit path, exactly: candidates cover every matching line; decoding gives back the line.
        pre = RecordPrefilter(compiled_svc)
        svc_matcher = Matcher(compiled_svc)
        cand = pre(values).tolist()
        full_svc = svc_matcher(lines)
        matching = {i for i, _ in full_svc}
        missing = matching - set(cand)
        bad_decode = 0
        for i in cand:
            rec = Decoder(Format.AUTO)(values[i])
            if rec is None or not hasattr(rec, "line") or rec.line != lines[i]:
                bad_decode += 1
        if missing or bad_decode:
            print(f"FAIL: prefilter missed {len(missing)} matching records; {bad_decode} candidates decode wrongly")
            return 1
        print(
            f"check: prefilter candidates {len(cand):,} ({100 * len(cand) / len(values):.2f}% of records) cover all "
            f"{len(matching):,} matching records ({100 * len(matching) / len(values):.2f}%); candidates "
            "decode to their lines"
        )

        rows: list[Row] = []
        plain, fb = "plain lines", "Fluent Bit records"

        # --- plain lines ---------------------------------------------------------------------------
        t, _ = _median_time(lambda: re_loop(re_patterns, sample), args.runs)
        rows.append(
            Row(
                plain,
                f"Python re, each of {len(re_patterns)} patterns per line",
                t * RE_SAMPLE,
                len(sample) * RE_SAMPLE,
                sample_bytes * RE_SAMPLE,
                f"1/{RE_SAMPLE} sample, scaled",
                scaled=True,
            )
        )
        t, hs_full = _median_time(lambda: hs_per_line(compiled.db, owners, lines), args.runs)
        rows.append(Row(plain, "hyperscan, one db.scan() per line", t, len(lines), line_bytes))
        t, ours_full = _median_time(lambda: matcher(lines), args.runs)
        ours = Row(plain, "OURS: Matcher(compiled)(lines)", t, len(lines), line_bytes)
        rows.append(ours)
        assert isinstance(ours_full, list) and isinstance(hs_full, list)
        n_match = len(ours_full)
        if ours_full != hs_full:
            print(f"FAIL: Matcher != per-line hyperscan on the full corpus ({len(ours_full)} vs {len(hs_full)})")
            return 1

        tool_rows: list[Row] = []
        tool_notes: list[str] = []
        if not args.no_tools:
            tool_rows, tool_notes = tool_designs(args, lines, line_bytes, n_match, Path(tmp))
        rows.extend(tool_rows)

        buf = b"\n".join(lines)
        t, _ = _median_time(lambda: compiled.db.scan(buf), args.runs)
        rows.append(
            Row(plain, "engine floor: one db.scan() over the whole buffer, no callback", t, len(lines), line_bytes)
        )
        events = [0]
        compiled.db.scan(buf, match_event_handler=_count, context=events)
        t, _ = _median_time(lambda: compiled.db.scan(buf, match_event_handler=_noop), args.runs)
        floor = Row(
            plain,
            "engine floor: the same, no-op Python callback",
            t,
            len(lines),
            line_bytes,
            f"{events[0]:,} match events",
        )
        rows.append(floor)
        buf = b""  # free it before the record rows

        # --- Fluent Bit records --------------------------------------------------------------------
        t, piped = _median_time(lambda: pipeline_run(catalogue, compiled_svc, values, stamps, args.batch), args.runs)
        assert isinstance(piped, tuple)
        ours_fb = Row(
            fb,
            f"OURS: Pipeline (prefilter raw JSON, decode candidates, rescan), batches of {args.batch}",
            t,
            len(values),
            record_bytes,
            f"{piped[0]:,} candidates, {sum(piped[1].values()):,} rule matches",
        )
        rows.append(ours_fb)
        t, _ = _median_time(lambda: pre(values), args.runs)
        rows.append(Row(fb, "  of which: RecordPrefilter(raw records) alone", t, len(values), record_bytes))
        t, _ = _median_time(lambda: orjson_all(values), args.runs)
        rows.append(Row(fb, "orjson.loads of every record (parse-everything floor)", t, len(values), record_bytes))
        t, n_naive = _median_time(lambda: naive(svc_matcher, values, args.batch), args.runs)
        rows.append(
            Row(
                fb,
                "naive: orjson every record, then Matcher on the decoded log",
                t,
                len(values),
                record_bytes,
                f"{n_naive:,} matching records",
            )
        )
        pre_db = compiled_svc.prefilter
        if pre_db is not None:  # always, since every expression must have a literal
            fbuf = b"\n".join(values)
            t, _ = _median_time(lambda: pre_db.scan(fbuf, match_event_handler=_noop), args.runs)
            pe = [0]
            pre_db.scan(fbuf, match_event_handler=_count, context=pe)
            rows.append(
                Row(
                    fb,
                    "engine floor: prefilter literal DB, one scan over all records",
                    t,
                    len(values),
                    record_bytes,
                    f"no-op callback, {pe[0]:,} events",
                )
            )
            fbuf = b""

        print()
        print(
            f"Median of {args.runs} run(s); {pinned}; 'vs ours' = MB/s relative to OURS of the same section. "
            "The machine is shared (2 cores): expect noise of 10-20%."
        )
        print_table(rows, {plain: ours, fb: ours_fb})
        for note in tool_notes:
            print(f"  note: {note}")

        # --- targets -------------------------------------------------------------------------------
        re_row = rows[0]
        rg_rows = [r for r in tool_rows if r.name.startswith("ripgrep")]
        rg_row = max(rg_rows, key=lambda r: r.mb_s) if rg_rows else None
        print()
        print("targets:")
        checks = [
            (f"ours >= {TARGET_VS_RE:.0f}x the Python re loop", ours.mb_s / re_row.mb_s, TARGET_VS_RE, "x"),
            (
                f"ours >= {TARGET_VS_RG:.1f}x ripgrep (its faster mode)",
                ours.mb_s / rg_row.mb_s if rg_row else None,
                TARGET_VS_RG,
                "x",
            ),
            (
                f"ours >= {TARGET_VS_FLOOR:.1f}x the engine floor (no-op callback)",
                ours.mb_s / floor.mb_s,
                TARGET_VS_FLOOR,
                "x",
            ),
            (
                f"Fluent Bit records >= {TARGET_RECORDS // 1000}k records/s on one core",
                ours_fb.per_s,
                float(TARGET_RECORDS),
                "rec/s",
            ),
        ]
        for text, value, target, unit in checks:
            if value is None:
                print(f"  SKIP  {text}: no measurement")
                continue
            shown = f"{value:.2f}x" if unit == "x" else f"{value / 1000:.0f}k records/s ({ours_fb.mb_s:.0f} MB/s)"
            print(f"  {'PASS' if value >= target else 'MISS'}  {text}: {shown}")
        mean = record_bytes / len(values)
        print(
            f"        (records here average {mean:.0f} B; at this size {TARGET_RECORDS // 1000}k records/s is "
            f"{TARGET_RECORDS * mean / 1e6:.0f} MB/s of raw records)"
        )

        # --- catalogue against a baseline -----------------------------------------------------------
        if args.baseline:
            baseline = _baseline_dir(args.baseline, Path(tmp))
            compare_catalogues(baseline, catalogue, lines, values, stamps, args)

        # --- per-rule cost -------------------------------------------------------------------------
        if args.per_rule:
            per_rule_table(catalogue, compiled_svc, lines, values, ours_full, args.per_rule, args.runs)
    return 0


def _baseline_dir(spec: str, tmp: Path) -> Path:
    """A patterns directory as given, or patterns/ as it was at a git revision."""
    if Path(spec).is_dir():
        return Path(spec)
    out = tmp / "baseline-patterns"
    out.mkdir()
    names = subprocess.run(
        ["git", "-C", str(REPO), "ls-tree", "--name-only", f"{spec}:patterns"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in names:
        blob = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{spec}:patterns/{name}"], capture_output=True, check=True
        )
        (out / name).write_bytes(blob.stdout)
    return out


def _alternating(fns: Sequence[Callable[[], object]], runs: int) -> list[tuple[float, object]]:
    """Median time of each function, timed in turn within each run (A B A B ...): load drifts hit all alike."""
    times: list[list[float]] = [[] for _ in fns]
    results: list[object] = [None] * len(fns)
    for _ in range(max(runs, 3)):
        for i, fn in enumerate(fns):
            gc.collect()
            t0 = time.perf_counter()
            results[i] = fn()
            times[i].append(time.perf_counter() - t0)
    return [(statistics.median(t), r) for t, r in zip(times, results, strict=True)]


def compare_catalogues(
    baseline_dir: Path,
    catalogue: Catalogue,
    lines: Sequence[bytes],
    values: Sequence[bytes],
    stamps: Sequence[float],
    args: argparse.Namespace,
) -> None:
    """Our matcher and pipeline with this catalogue and with the baseline, timed alternately in this run."""
    base = load_catalogue(baseline_dir)
    with tempfile.TemporaryDirectory(prefix="match-bench-base-") as cache:
        pairs = [
            (compile_catalogue(c, cache_dir=Path(cache)), compile_catalogue(c, SIGNALS, cache_dir=Path(cache)))
            for c in (base, catalogue)
        ]
    line_mb = (sum(map(len, lines)) + len(lines)) / 1e6
    plain = _alternating([partial(Matcher(rules_only), lines) for rules_only, _ in pairs], args.runs)
    piped = _alternating(
        [
            partial(pipeline_run, c, svc, values, stamps, args.batch)
            for c, (_, svc) in zip((base, catalogue), pairs, strict=True)
        ],
        args.runs,
    )
    (t_base, _), (t_new, _) = plain
    (f_base, r_base), (f_new, r_new) = piped
    assert isinstance(r_base, tuple) and isinstance(r_new, tuple)
    n_base = sum(len(r.expressions) for r in base.rules)
    n_new = sum(len(r.expressions) for r in catalogue.rules)
    print()
    print(f"catalogue vs baseline ({args.baseline}): same corpus, timed alternately, median of {max(args.runs, 3)}")
    print(f"  {'':<36} {'baseline':>14} {'this catalogue':>15} {'ratio':>7}")
    print(
        f"  {'rules / expressions':<36} {f'{len(base.rules)} / {n_base}':>14} {f'{len(catalogue.rules)} / {n_new}':>15}"
    )
    print(
        f"  {'plain lines, MB/s (Matcher)':<36} {line_mb / t_base:>14.0f} {line_mb / t_new:>15.0f} "
        f"{t_base / t_new:>6.2f}x"
    )
    print(
        f"  {'Fluent Bit, records/s (Pipeline)':<36} {fmt_rate(len(values) / f_base):>14} "
        f"{fmt_rate(len(values) / f_new):>15} {f_base / f_new:>6.2f}x"
    )
    print(f"  {'prefilter candidates (records)':<36} {r_base[0]:>14,} {r_new[0]:>15,}")
    print(f"  {'rule matches':<36} {sum(r_base[1].values()):>14,} {sum(r_new[1].values()):>15,}")


def _prefilter_hits(compiled: CompiledCatalogue, values: Sequence[bytes]) -> dict[bytes, set[int]]:
    """Literal -> indices of the raw records containing it (the candidates each literal causes)."""
    forms = compiled.prefilter_forms  # in the prefilter database's id order
    hits: dict[bytes, set[int]] = {}
    db = compiled.prefilter
    for a in range(0, len(values), 4096):
        chunk = values[a : a + 4096]
        starts = np.zeros(len(chunk), dtype=np.int64)
        np.cumsum(np.fromiter(map(len, chunk), dtype=np.int64, count=len(chunk))[:-1] + 1, out=starts[1:])
        events: list[int] = []
        db.scan(b"\n".join(chunk), match_event_handler=_id_end, context=events)
        if not events:
            continue
        ids, ends = events[0::2], np.asarray(events[1::2], dtype=np.int64)
        rows = (np.searchsorted(starts, ends - 1, side="right") - 1 + a).tolist()
        for lit_id, row in zip(ids, rows, strict=True):
            hits.setdefault(forms[lit_id][0].replace(b'\\"', b'"'), set()).add(row)
    return hits


def _id_end(expr_id: int, _from: int, to: int, _flags: int, ctx: list[int]) -> None:
    ctx.append(expr_id)
    ctx.append(to)


def per_rule_table(
    catalogue: Catalogue,
    compiled_svc: CompiledCatalogue,
    lines: Sequence[bytes],
    values: Sequence[bytes],
    found: Sequence[tuple[int, tuple[str, ...]]],
    top: int,
    runs: int,
) -> None:
    """Per-rule cost: engine time alone and in the combined database (leave-one-out), match events,
    and the Fluent Bit records each rule's prefilter literals make candidates (decoded for nothing)."""
    from analyzer.match.literals import fragment_options

    cap = 100_000_000  # per-rule scans run on a prefix of the corpus: 2x55 compiles and scans add up
    cut, size = 0, 0
    while cut < len(lines) and size < cap:
        size += len(lines[cut]) + 1
        cut += 1
    buf = b"\n".join(lines[:cut])
    matched_lines: Counter[str] = Counter(o for i, owners in found if i < cut for o in owners)
    every = [e for r in catalogue.rules for e in r.expressions]
    t_all, _ = _median_time(lambda: _compile(every).scan(buf, match_event_handler=_noop), 1)
    db_all = _compile(every)
    t_all, _ = _median_time(lambda: db_all.scan(buf, match_event_handler=_noop), runs)

    by_rule: dict[str, set[int]] = {}
    matched_records: dict[str, set[int]] = {}
    if compiled_svc.prefilter is not None:
        hits = _prefilter_hits(compiled_svc, values)
        for e in compiled_svc.entries:
            chosen = set(compiled_svc.literals)
            for option in fragment_options(e.expression.pattern, e.expression.caseless):
                for frag in option:
                    if (frag, e.expression.caseless) in chosen:
                        by_rule.setdefault(e.owner, set()).update(hits.get(frag, ()))
        for i, owners in Matcher(compiled_svc)(lines):
            for o in owners:
                matched_records.setdefault(o, set()).add(i)

    stats = []
    for rule in catalogue.rules:
        db = _compile(rule.expressions)
        events = [0]
        db.scan(buf, match_event_handler=_count, context=events)
        alone, _ = _median_time(partial(db.scan, buf, match_event_handler=_noop), runs)
        db_rest = _compile([e for r in catalogue.rules if r.id != rule.id for e in r.expressions])
        without, _ = _median_time(partial(db_rest.scan, buf, match_event_handler=_noop), runs)
        cands = by_rule.get(rule.id, set())
        stats.append((alone, t_all - without, rule.id, len(rule.expressions), events[0], cands))

    mb = len(buf) / 1e6
    print()
    print(
        f"per-rule cost: exact database over the first {cut:,} plain lines ({mb:.0f} MB; all {len(catalogue.rules)} "
        f"rules together {t_all * 1e3:.0f} ms = {mb / t_all / 1e3:.2f} GB/s). 'alone': a database of the rule's "
        "expressions only; 'marginal': all rules minus the time without this rule (noisy, can be < 0); "
        "events: match events alone; 'pre-cand': Fluent Bit records (whole corpus) its prefilter literals flag, "
        "of which 'useful' match the rule."
    )
    head = (
        f"  {'rule':<42} {'expr':>4} {'alone ms':>8} {'GB/s':>6} {'marg. ms':>8} {'events':>9} {'lines':>7} "
        f"{'ev/line':>7} {'pre-cand':>9} {'useful':>7}"
    )

    def row(item: tuple[float, float, str, int, int, set[int]]) -> str:
        alone, marginal, rid, n_expr, n_events, cands = item
        n_lines = matched_lines.get(rid, 0)
        per = f"{n_events / n_lines:.1f}" if n_lines else ("-" if not n_events else "inf")
        useful = len(cands & matched_records.get(rid, set()))
        return (
            f"  {rid:<42} {n_expr:>4} {alone * 1e3:>8.1f} {mb / alone / 1e3:>6.2f} {marginal * 1e3:>8.1f} "
            f"{n_events:>9,} {n_lines:>7,} {per:>7} {len(cands):>9,} {useful:>7,}"
        )

    print(f"top {top} by engine time alone:")
    print(head)
    for item in sorted(stats, key=lambda x: -x[0])[:top]:
        print(row(item))
    if by_rule:
        print(f"top {top} by prefilter candidates (records decoded because of the rule's literals):")
        print(head)
        for item in sorted(stats, key=lambda x: -len(x[5]))[:top]:
            print(row(item))


if __name__ == "__main__":
    sys.exit(main())
