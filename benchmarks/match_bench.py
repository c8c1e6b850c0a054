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
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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
from analyzer.match.levels import CombinedPrefilter  # noqa: E402
from analyzer.match.literal_db import literal_database  # noqa: E402
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


def with_excludes(
    compiled: CompiledCatalogue, lines: Sequence[bytes], found: Sequence[tuple[int, tuple[str, ...]]]
) -> list[tuple[int, tuple[str, ...]]]:
    """The reference designs' matches with each rule's ``exclude`` expressions applied, as the Matcher does."""
    ex = compiled.excludes
    kept = [(i, tuple(o for o in names if not any(rx.search(lines[i]) for rx in ex.get(o, ())))) for i, names in found]
    return [(i, names) for i, names in kept if names]


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
    if runs > 1:
        run_tool(argv)  # warm the page cache (a single run follows the file's write: already warm)
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

    runs = 1 if args.quick else args.runs
    rg_exprs = [rg_bracket_repair(x) for x in exported]
    files["rg"].write_text("".join(x + "\n" for x in rg_exprs))
    if rg_exprs != exported:
        notes.append("ripgrep got the export with '[' inside brackets escaped (the export does not parse in rg)")
    grep = shutil.which("grep") if not args.quick else None  # the slowest rows: full runs only
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
        t, c = _median_tool([grep, "-E", "-c", "-f", str(files["relaxed"]), str(data)], runs)
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
        notes.append("GNU grep: skipped (--quick) or not installed")
    rg = shutil.which("rg")
    if rg:
        base = [rg, "--no-config", "-j1", "-c"]
        for extra, name, what in (
            ([], "ripgrep -c -f (LC_ALL=C), exported expressions", "Unicode mode (default)"),
            (["--no-unicode"], "ripgrep --no-unicode -c -f, exported expressions", "byte semantics like Hyperscan's"),
        ):
            try:
                t, c = _median_tool([*base, *extra, "-f", str(files["rg"]), str(data)], runs)
            except subprocess.TimeoutExpired:
                notes.append(f"{name}: killed after {TOOL_TIMEOUT:.0f}s, row skipped")
                continue
            rows.append(Row(plain, name, t, len(lines), line_bytes, f"{c:,} lines (ours {n_match:,}); {what}"))
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
    p.add_argument(
        "--batch", type=int, default=5000, help="records per Pipeline call (the service: up to kafka_max_records)"
    )
    p.add_argument("--patterns", type=Path, default=REPO / "patterns")
    p.add_argument("--tab-escape", choices=("t", "u0009"), default="t")
    p.add_argument("--no-tools", action="store_true", help="skip grep and ripgrep")
    p.add_argument("--per-rule", type=int, help="rows of the per-rule cost table (0: skip; default 10, --quick 0)")
    p.add_argument(
        "--mixes",
        default="all",
        help="adversarial mixes to measure after the designs table: all, none, or a comma list of "
        f"corpus,{','.join(corpus_mod.MIXES)}",
    )
    p.add_argument(
        "--mix-lines", type=int, help=f"lines per mix (default {corpus_mod.MIX_DEFAULT_LINES:,}; --quick 50k)"
    )
    p.add_argument("--mixes-only", action="store_true", help="skip the designs table on today's corpus")
    p.add_argument("--cli-runs", type=int, help="whole-process runs per command (median; default 3, --quick 2)")
    p.add_argument(
        "--tool-limit",
        type=float,
        help="seconds before a tool or whole-process run is killed (default 300, --quick 20)",
    )
    p.add_argument("--literals", type=int, default=10, help="rows of the per-literal table on a mix that misses")
    p.add_argument(
        "--baseline",
        help="a patterns directory or a git revision: time our matcher and pipeline with that catalogue too, "
        "in the same run on the same corpus, and print the ratios (does a grown catalogue cost speed?)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.lines = 100_000
    if args.per_rule is None:
        args.per_rule = 0 if args.quick else 10
    if args.mix_lines is None:
        args.mix_lines = 50_000 if args.quick else corpus_mod.MIX_DEFAULT_LINES
    if args.tool_limit is None:
        args.tool_limit = 20.0 if args.quick else 300.0
    # one limit for every tool run of this process
    global TOOL_TIMEOUT
    TOOL_TIMEOUT = args.tool_limit
    if args.cli_runs is None:
        args.cli_runs = 2 if args.quick else 3
    if args.mixes == "none":
        args.mixes = ""
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]

    try:
        os.sched_setaffinity(0, {0})
        pinned = "pinned to CPU 0"
    except (AttributeError, OSError) as exc:
        pinned = f"NOT pinned ({exc})"

    with tempfile.TemporaryDirectory(prefix="match-bench-") as tmp:
        # Other people edit patterns/ while this runs: every measurement of the run uses one snapshot of it.
        source_patterns = args.patterns
        args.patterns = Path(tmp) / "patterns"
        shutil.copytree(source_patterns, args.patterns)
        catalogue = load_catalogue(args.patterns)
        cache = Path(tmp) / "cache"
        compiled = compile_catalogue(catalogue, cache_dir=cache)  # rules only: same set as `rules export`
        compiled_svc = compile_catalogue(catalogue, SIGNALS, cache_dir=cache)  # what the service builds
        expressions = [e for r in catalogue.rules for e in r.expressions]

        print(
            f"match_bench: {time.strftime('%Y-%m-%d %H:%M:%S')}  python {platform.python_version()}  "
            f"hyperscan {getattr(hyperscan, '__version__', '?')}  {os.cpu_count()} CPUs, {pinned}  "
            f"load avg {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
        )
        print(
            f"catalogue: {len(catalogue.rules)} rules, {len(expressions)} expressions "
            f"(+{len(SIGNALS)} internal signals in the service database); "
            f"prefilter: {len(compiled_svc.literals)} literals; patterns: a snapshot of {source_patterns}"
        )
        if not args.mixes_only:
            rc = corpus_section(args, catalogue, compiled, compiled_svc, expressions, Path(tmp), pinned)
            if rc:
                return rc
        if args.mixes:
            mixes_section(args, catalogue, compiled, compiled_svc, Path(tmp))
    return 0


def corpus_section(
    args: argparse.Namespace,
    catalogue: Catalogue,
    compiled: CompiledCatalogue,
    compiled_svc: CompiledCatalogue,
    expressions: Sequence[Expression],
    tmp: Path,
    pinned: str,
) -> int:
    """The designs table, the targets and the per-rule cost on today's corpus."""
    t0 = time.perf_counter()
    corp = corpus_mod.generate(args.lines, seed=args.seed, tab_escape=args.tab_escape)
    gen_s = time.perf_counter() - t0
    lines, values, stamps = corp.lines, corp.records, corp.timestamps
    line_bytes, record_bytes = corp.line_bytes, corp.record_bytes
    gc.collect()
    gc.freeze()  # the corpus is long-lived: keep it out of the collector's way, as a service's heap would be

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
    hs_sample = with_excludes(compiled, sample, hs_per_line(compiled.db, owners, sample))
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
    re_sample = with_excludes(compiled, sample, re_loop(re_patterns, sample))
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
    if ours_full != with_excludes(compiled, lines, hs_full):
        print(f"FAIL: Matcher != per-line hyperscan on the full corpus ({len(ours_full)} vs {len(hs_full)})")
        return 1

    tool_rows: list[Row] = []
    tool_notes: list[str] = []
    if not args.no_tools:
        tool_rows, tool_notes = tool_designs(args, lines, line_bytes, n_match, Path(tmp))
    rows.extend(tool_rows)

    buf = b"\n".join(lines)
    t, _ = _median_time(lambda: compiled.db.scan(buf), args.runs)
    rows.append(Row(plain, "engine floor: one db.scan() over the whole buffer, no callback", t, len(lines), line_bytes))
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
    pre_db = compiled_svc.windowed.db  # every expression has a literal: there always is one
    fbuf = b"\n".join(values)
    t, _ = _median_time(lambda: pre_db.scan(fbuf, match_event_handler=_noop), args.runs)
    pe = [0]
    pre_db.scan(fbuf, match_event_handler=_count, context=pe)
    rows.append(
        Row(
            fb,
            "engine floor: prefilter window DB, one scan over all records",
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


def _compilable(catalogue: Catalogue) -> tuple[Catalogue, int]:
    """An older catalogue minus the expressions today's prefilter check refuses (e.g. two-letter flags)."""
    from dataclasses import replace as _replace

    from analyzer.match.compiler import Entry, prefilter_literals

    entries = [Entry(r.id, e, r.source) for r in catalogue.rules for e in r.expressions]
    _, problems = prefilter_literals(entries)
    refused = {
        (p.rule_id, pattern)
        for p in problems
        for pattern in [e.expression.pattern for e in entries]
        if p.reason.startswith(repr(pattern))
    }
    rules = []
    for r in catalogue.rules:
        kept = tuple(e for e in r.expressions if (r.id, e.pattern) not in refused)
        if kept:
            rules.append(_replace(r, expressions=kept))
    return Catalogue(rules=tuple(rules), digest=catalogue.digest), len(refused)


def compare_catalogues(
    baseline_dir: Path,
    catalogue: Catalogue,
    lines: Sequence[bytes],
    values: Sequence[bytes],
    stamps: Sequence[float],
    args: argparse.Namespace,
) -> None:
    """Our matcher and pipeline with this catalogue and with the baseline, timed alternately in this run."""
    base, dropped = _compilable(load_catalogue(baseline_dir))
    if dropped:
        print(
            f"  note: {dropped} baseline expression(s) the current compiler refuses (no or a common literal) left out"
        )
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
    forms = compiled.prefilter_forms
    hits: dict[bytes, set[int]] = {}
    # The full forms (the prefilter database holds windows of the long ones), in ``forms`` order.
    db = literal_database(forms)
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


# ------------------------------------------------------------------------------------------ adversarial mixes

TARGET_CAND_FACTOR = 2.0  # prefilter candidates <= 2x the lines that really match ...
TARGET_CAND_SHARE = 0.005  # ... + 0.5% of all lines
TARGET_RECORD_BYTES = 1100  # the records/s target is stated at ~1.1 KB per record
NL = b"\n"


@dataclass
class Timed:
    """Wall and CPU seconds of each run of one measured thing (in-process or a child process)."""

    wall: list[float]
    cpu: list[float]
    timed_out: bool = False  # a child killed at the time limit: its figures are lower bounds of its time

    @property
    def w(self) -> float:
        return statistics.median(self.wall)

    @property
    def c(self) -> float:
        return statistics.median(self.cpu)

    @property
    def noise(self) -> float:
        """Spread of the wall times, (max - min) / median: how much this run's figures can be trusted."""
        return (max(self.wall) - min(self.wall)) / self.w if self.w else 0.0


def _alternate_timed(fns: Sequence[Callable[[], object]], runs: int) -> tuple[list[Timed], list[object]]:
    """Each function once per run, in turn (A B C A B C ...), so a load change on the shared machine hits all."""
    out = [Timed([], []) for _ in fns]
    results: list[object] = [None] * len(fns)
    for _ in range(runs):
        for i, fn in enumerate(fns):
            gc.collect()
            c0, w0 = time.process_time(), time.perf_counter()
            results[i] = fn()
            out[i].wall.append(time.perf_counter() - w0)
            out[i].cpu.append(time.process_time() - c0)
    return out, results


def _child_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _alternate_procs(
    argvs: Sequence[Sequence[str]], runs: int, limit: float, once: Sequence[bool] = ()
) -> tuple[list[Timed], list[bytes]]:
    """Whole processes (start-up included), each once per run in turn; CPU from the children's rusage.
    A process still running after ``limit`` seconds is killed and not run again (its time is a lower bound)."""
    out = [Timed([], []) for _ in argvs]
    stdout: list[bytes] = [b""] * len(argvs)
    for run in range(runs):
        for i, argv in enumerate(argvs):
            if out[i].timed_out or (run and i < len(once) and once[i]):
                continue
            c0, w0 = _child_cpu(), time.perf_counter()
            try:
                proc = subprocess.run(
                    argv, capture_output=True, env={**os.environ, "LC_ALL": "C"}, check=False, timeout=limit
                )
            except subprocess.TimeoutExpired:
                out[i].wall.append(time.perf_counter() - w0)
                out[i].cpu.append(_child_cpu() - c0)
                out[i].timed_out = True
                continue
            out[i].wall.append(time.perf_counter() - w0)
            out[i].cpu.append(_child_cpu() - c0)
            if proc.returncode not in (0, 1):
                raise RuntimeError(f"{' '.join(argv[:4])} ... failed ({proc.returncode}): {proc.stderr.decode()[:300]}")
            stdout[i] = proc.stdout
    return out, stdout


def rg_bracket_repair(expr: str) -> str:
    """``[`` inside a bracket expression is literal in POSIX but opens a nested class in ripgrep: escape it."""
    out, in_class, i = [], False, 0
    while i < len(expr):
        ch = expr[i]
        if in_class:
            if ch == "\\":
                out.append(expr[i : i + 2])
                i += 2
                continue
            if ch == "[" and expr[i + 1 : i + 2] != ":":
                out.append("\\[")
            elif ch == "[":  # a POSIX class such as [:space:]
                j = expr.index(":]", i) + 2
                out.append(expr[i:j])
                i = j
                continue
            else:
                out.append(ch)
                in_class = ch != "]"
            i += 1
            continue
        if ch == "\\":
            out.append(expr[i : i + 2])
            i += 2
            continue
        if ch == "[":
            in_class = True
            out.append(ch)
            if expr[i + 1 : i + 2] == "^":
                out.append("^")
                i += 1
            if expr[i + 1 : i + 2] == "]":  # a leading ] is a member
                out.append("]")
                i += 1
        else:
            out.append(ch)
        i += 1
    return "".join(out)


@dataclass
class MixResult:
    name: str
    lines: int
    line_bytes: int
    record_bytes: int
    matching: int  # lines the service database (rules + signals) matches
    matching_rules: int  # lines the rules alone match (what `rules export` holds)
    cand: int  # Fluent Bit records the prefilter flags (service database)
    cand_lane: int  # the same with the unclassified lane's level literals (the service's default)
    cand_plain: int  # raw plain lines the rules' prefilter flags (what `match --format plain` decodes)
    ours: Timed | None = None  # Matcher(lines), rules only
    pipe: Timed | None = None  # Pipeline(records)
    rg: Timed | None = None  # rg -c -f, whole process
    cli_plain: Timed | None = None
    cli_fb: Timed | None = None
    counts: str = ""
    literal_rows: list[str] = field(default_factory=list)

    @property
    def limit(self) -> float:
        return TARGET_CAND_FACTOR * self.matching + TARGET_CAND_SHARE * self.lines

    @property
    def limit_plain(self) -> float:
        return TARGET_CAND_FACTOR * self.matching_rules + TARGET_CAND_SHARE * self.lines

    @property
    def mean_record(self) -> float:
        return self.record_bytes / self.lines


def _pf(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def literal_table(compiled: CompiledCatalogue, raw: Sequence[bytes], matching: set[int], top: int) -> list[str]:
    """The prefilter literals that flag the most raw items, with how many of those really match and which
    rules chose the literal: the cause of a candidates miss."""
    from analyzer.match.literals import fragment_options

    hits = _prefilter_hits(compiled, raw)
    chosen = set(compiled.literals)
    owners: dict[bytes, set[str]] = {}
    for e in compiled.entries:
        for option in fragment_options(e.expression.pattern, e.expression.caseless):
            if all((f, e.expression.caseless) in chosen for f in option):
                for f in option:
                    owners.setdefault(f, set()).add(e.owner)
    rows = sorted(hits.items(), key=lambda kv: -len(kv[1] - matching))[:top]
    out = [f"    {'literal':<40} {'flags':>8} {'% all':>6} {'match':>7} {'wasted':>8}  chosen by (rules)"]
    for lit, idx in rows:
        names = sorted(owners.get(lit, set()))
        shown = ", ".join(names[:3]) + (f" +{len(names) - 3}" if len(names) > 3 else "")
        out.append(
            f"    {lit.decode(errors='replace')!r:<40} {len(idx):>8,} {100 * len(idx) / len(raw):>5.2f}% "
            f"{len(idx & matching):>7,} {len(idx - matching):>8,}  {shown}"
        )
    return out


def measure_mix(
    name: str,
    corp: corpus_mod.Corpus,
    args: argparse.Namespace,
    catalogue: Catalogue,
    compiled: CompiledCatalogue,
    compiled_svc: CompiledCatalogue,
    tools: dict[str, list[str]],
    tmp: Path,
) -> MixResult:
    lines, values, stamps = corp.lines, corp.records, corp.timestamps
    svc_found = Matcher(compiled_svc)(lines)
    matching = {i for i, _ in svc_found}
    rules_found = Matcher(compiled)(lines)
    cand = RecordPrefilter(compiled_svc)(values)
    missed = matching - set(cand.tolist())
    if missed:  # the contract: never print a speed for a prefilter that loses matches
        raise RuntimeError(f"{name}: the prefilter missed {len(missed)} matching records, e.g. {sorted(missed)[:3]}")
    res = MixResult(
        name,
        len(lines),
        corp.line_bytes,
        corp.record_bytes,
        len(matching),
        len(rules_found),
        len(cand),
        len(CombinedPrefilter(compiled_svc)(values)),
        len(RecordPrefilter(compiled)(lines)),
    )
    if res.cand > res.limit:
        res.literal_rows.append(f"  [{name}] Fluent Bit records: literals flagging the most non-matching records")
        res.literal_rows += literal_table(compiled_svc, values, matching, args.literals)
    if res.cand_plain > res.limit_plain:
        plain_match = {i for i, _ in rules_found}
        res.literal_rows.append(f"  [{name}] plain lines (`match --format plain`): literals flagging the most")
        res.literal_rows += literal_table(compiled, lines, plain_match, args.literals)

    matcher = Matcher(compiled)
    (res.ours, res.pipe), _ = _alternate_timed(
        [partial(matcher, lines), partial(pipeline_run, catalogue, compiled_svc, values, stamps, args.batch)],
        args.runs,
    )
    if tools:
        plain_file, records_file = tmp / f"{name}.txt", tmp / f"{name}.jsonl"
        plain_file.write_bytes(b"\n".join(lines) + b"\n")
        records_file.write_bytes(b"\n".join(values) + b"\n")
        argvs = [[*argv, str(records_file if key == "fluentbit" else plain_file)] for key, argv in tools.items()]
        once = [key == "rg" and args.quick for key in tools]  # --quick: ripgrep (slow here) runs once
        timed, outs = _alternate_procs(argvs, args.cli_runs, args.tool_limit, once)
        by = dict(zip(tools, timed, strict=True))
        res.rg, res.cli_plain, res.cli_fb = by.get("rg"), by.get("plain"), by.get("fluentbit")
        got = dict(zip(tools, outs, strict=True))
        shown = []
        if "rg" in got:
            shown.append(f"rg {int(got['rg'].strip() or 0):,}" if got["rg"] else "rg killed")
        for key in ("plain", "fluentbit"):
            if key in got:
                shown.append(f"{key} {got[key].count(NL):,}")
        res.counts = " / ".join(shown)
        plain_file.unlink()
        records_file.unlink()
    return res


def mixes_section(
    args: argparse.Namespace,
    catalogue: Catalogue,
    compiled: CompiledCatalogue,
    compiled_svc: CompiledCatalogue,
    tmp: Path,
) -> list[MixResult]:
    """Today's corpus and the adversarial mixes, each measured the same way in this run: prefilter
    candidates, in-process Matcher and Pipeline, whole-process `mesh-analyzer match` and ripgrep."""
    names = ["corpus", *corpus_mod.MIXES] if args.mixes == "all" else args.mixes.split(",")
    tools: dict[str, list[str]] = {}
    notes: list[str] = []
    if not args.no_tools:
        exported, source = exported_expressions(args.patterns)
        rg_exprs = tmp / "exported.txt"
        rg_exprs.write_text("".join(x + "\n" for x in exported))
        rg = shutil.which("rg")
        if rg:
            tools["rg"] = [rg, "--no-config", "-c", "-f", str(rg_exprs)]  # default mode, as a user runs it
            probe = subprocess.run([*tools["rg"], os.devnull], capture_output=True, check=False)
            if probe.returncode == 2:  # the export does not parse: measure a repaired copy, and say so
                repaired = [rg_bracket_repair(x) for x in exported]
                bad = [x for x, y in zip(exported, repaired, strict=True) if x != y]
                rg_exprs.write_text("".join(x + "\n" for x in repaired))
                notes.append(
                    f"`rules export --format regex` does not parse in ripgrep ({probe.stderr.decode().splitlines()[-1]}"
                    f"); {len(bad)} expression(s) with '[' inside a bracket were given to rg as '\\[': "
                    + "; ".join(repr(x) for x in bad[:3])
                )
        else:
            notes.append("ripgrep not installed: no ratios to it")
        cli = str(REPO / ".venv" / "bin" / "mesh-analyzer")
        tools["plain"] = [cli, "match", "--format", "plain", "--patterns", str(args.patterns)]
        tools["fluentbit"] = [cli, "match", "--format", "fluentbit", "--patterns", str(args.patterns)]
        warm = tmp / "warm.txt"  # compile the catalogue into the CLI's cache once, before any timing
        warm.write_bytes(b"warm-up\n")
        subprocess.run([*tools["plain"], str(warm)], capture_output=True, check=False)
        notes.append(f"rg expressions from {source}; rg in its default mode: `rg -c -f <(rules export)`")

    print()
    print(
        f"=== adversarial mixes: {len(names)} corpora of {args.mix_lines:,} lines each (seed {args.seed}); "
        f"in-process: median of {args.runs}, timed in turn; whole process: median of {args.cli_runs}, in turn"
    )
    for name in names:
        print(f"  {name:<14} {corpus_mod.MIXES.get(name, 'today`s corpus (the designs table above), same size')}")
    results: list[MixResult] = []
    for name in names:
        t0 = time.perf_counter()
        if name == "corpus":
            corp = corpus_mod.generate(args.mix_lines, seed=args.seed, tab_escape=args.tab_escape)
        else:
            corp = corpus_mod.generate_mix(name, args.mix_lines, seed=args.seed, tab_escape=args.tab_escape)
        gen_s = time.perf_counter() - t0
        res = measure_mix(name, corp, args, catalogue, compiled, compiled_svc, tools, tmp)
        results.append(res)
        timing = ""
        if res.ours is not None and res.pipe is not None:
            timing = f"; Matcher {res.ours.c:.2f}s, Pipeline {res.pipe.c:.2f}s CPU"
        for key, t in (("rg", res.rg), ("match plain", res.cli_plain), ("match fluentbit", res.cli_fb)):
            if t is not None:
                timing += f", {key} {'>' if t.timed_out else ''}{t.c:.1f}s"
        print(
            f"  measured {name}: {res.lines:,} lines, {res.line_bytes / 1e6:.0f} MB plain, "
            f"{res.record_bytes / 1e6:.0f} MB records (mean {res.mean_record:.0f} B), problem lines "
            f"{corp.kinds['problem']:,}; matching {res.matching:,}, candidates {res.cand:,}; generated in "
            f"{gen_s:.1f}s{timing}; load avg {os.getloadavg()[0]:.2f}"
        )
        del corp
    print_mixes(results, notes)
    return results


def print_mixes(results: Sequence[MixResult], notes: Sequence[str]) -> None:
    print()
    print(
        f"prefilter: candidates must be <= {TARGET_CAND_FACTOR:.0f}x the matching lines + "
        f"{100 * TARGET_CAND_SHARE:.1f}% of all lines. Records: the service database (rules + signals) over raw "
        "Fluent Bit records; +lane: with the unclassified lane's level literals (the service default); plain: the "
        "rules' prefilter over raw lines (`match --format plain`)."
    )
    head = (
        f"  {'mix':<14} {'lines':>9} {'matching':>9} {'records':>9} {'%':>6} {'limit':>8}      "
        f"{'+lane':>8} {'plain':>8} {'limit':>8}"
    )
    print(head)
    print("  " + "-" * (len(head) - 2))
    for r in results:
        print(
            f"  {r.name:<14} {r.lines:>9,} {r.matching:>9,} {r.cand:>9,} {100 * r.cand / r.lines:>5.2f}% "
            f"{r.limit:>8,.0f} {_pf(r.cand <= r.limit)} {r.cand_lane:>8,} {r.cand_plain:>8,} "
            f"{r.limit_plain:>8,.0f} {_pf(r.cand_plain <= r.limit_plain)}"
        )
    print()
    print(
        "in-process speed (CPU seconds of this process; wall in brackets; the machine is shared, so CPU is the "
        "steadier figure). Matcher: rules only, over plain lines, vs ripgrep (whole process) on the same file. "
        f"Pipeline: Fluent Bit records; target {TARGET_RECORDS // 1000}k records/s at ~{TARGET_RECORD_BYTES} B a "
        f"record, i.e. {TARGET_RECORDS * TARGET_RECORD_BYTES / 1e6:.0f} MB/s for larger records."
    )
    head = (
        f"  {'mix':<14} {'Matcher MB/s':>18} {'rg MB/s':>14} {'vs rg':>13}      {'Pipeline rec/s':>19} "
        f"{'MB/s':>6} {'B/rec':>6}       {'noise':>5}"
    )
    print(head)
    print("  " + "-" * (len(head) - 2))
    for r in results:
        mb, rmb = r.line_bytes / 1e6, r.record_bytes / 1e6
        assert r.ours is not None and r.pipe is not None
        ours = f"{mb / r.ours.c:>6.0f} [{mb / r.ours.w:>5.0f}]"
        if r.rg is not None:
            lt, gt = ("<", ">") if r.rg.timed_out else (" ", " ")  # rg was killed: its time is a lower bound
            rg = f"{lt}{mb / r.rg.c:>4.1f} [{mb / r.rg.w:>4.1f}]"
            ratio = f"{gt}{r.rg.c / r.ours.c:>4.1f}x [{r.rg.w / r.ours.w:>4.1f}x]"
            ok = _pf(r.rg.c / r.ours.c >= TARGET_VS_RG)
        else:
            rg, ratio, ok = f"{'-':>14}", f"{'-':>13}", "    "
        rate, rate_w = r.lines / r.pipe.c, r.lines / r.pipe.w
        # Records larger than ~1.1 KB: the same bytes per second, i.e. proportionally fewer records.
        target = TARGET_RECORDS / max(1.0, r.mean_record / TARGET_RECORD_BYTES)
        noise = max(r.ours.noise, r.pipe.noise)
        print(
            f"  {r.name:<14} {ours:>18} {rg:>14} {ratio:>13} {ok} {fmt_rate(rate):>9} [{fmt_rate(rate_w):>7}] "
            f"{rmb / r.pipe.c:>6.0f} {r.mean_record:>6.0f} {_pf(rate >= target)} {100 * noise:>4.0f}%"
            + (f"  (target at this size: {fmt_rate(target)} records/s)" if target < TARGET_RECORDS else "")
        )
    if any(r.cli_plain is not None for r in results):
        print()
        print(
            "whole process, start-up included (median seconds, CPU [wall]); ratio = ripgrep time / ours "
            f"(target >= {TARGET_VS_RG:.1f}x); fluentbit reads the records file of the same lines. "
            "counts: matching lines each printed."
        )
        head = (
            f"  {'mix':<14} {'rg -c -f':>14} {'match plain':>14} {'vs rg':>13}      {'match fluentbit':>15} "
            f"{'vs rg':>13}      {'rec/s':>7} {'noise':>5}  counts"
        )
        print(head)
        print("  " + "-" * (len(head) - 2))
        for r in results:
            if r.cli_plain is None or r.cli_fb is None:
                continue
            cells = []
            gt = ">" if r.rg is not None and r.rg.timed_out else " "
            for t in (r.cli_plain, r.cli_fb):
                if r.rg is not None:
                    cells.append(
                        f"{gt}{r.rg.c / t.c:>4.2f}x [{r.rg.w / t.w:>4.2f}x] {_pf(r.rg.c / t.c >= TARGET_VS_RG)}"
                    )
                else:
                    cells.append(f"{'-':>13}     ")
            rg = f"{gt}{r.rg.c:>5.1f} [{r.rg.w:>5.1f}]" if r.rg is not None else f"{'-':>14}"
            noise = max(t.noise for t in (r.rg, r.cli_plain, r.cli_fb) if t is not None)
            print(
                f"  {r.name:<14} {rg:>14} {r.cli_plain.c:>5.2f} [{r.cli_plain.w:>5.2f}] {cells[0]} "
                f"{r.cli_fb.c:>5.2f} [{r.cli_fb.w:>5.2f}]  {cells[1]} {fmt_rate(r.lines / r.cli_fb.c):>7} "
                f"{100 * noise:>4.0f}%  {r.counts}"
            )
    for note in notes:
        print(f"  note: {note}")
    rows = [row for r in results for row in r.literal_rows]
    if rows:
        print()
        print("where the candidates come from on the mixes that miss (wasted: flagged records that do not match):")
        for row in rows:
            print(row)


if __name__ == "__main__":
    sys.exit(main())
