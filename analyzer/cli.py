"""Command line: `serve`, `scan`, `match`, `rules check|test|list|export`.

Heavy modules (hyperscan, numpy, the service stack) are imported inside the commands that need them, so
`--help` and small pipes start fast. Exit codes: 0 ok, 1 findings/failures, 2 usage or input errors.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from analyzer.client import Client
    from analyzer.match import CompiledCatalogue
    from analyzer.offline import Incident
    from analyzer.types import Catalogue

PROG = "mesh-analyzer"
FORMATS = ("auto", "plain", "cri", "docker", "fluentbit")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, not a usage dump: people run this in pipes and loops.
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _patterns_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--patterns",
        metavar="DIR",
        type=Path,
        default=None,
        help="signature directory (default: $ANALYZER_PATTERNS_DIR, else the bundled patterns/)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Known Istio / ASM problems in mesh logs, as incidents.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    serve = commands.add_parser("serve", help="consume Kafka, keep incidents, serve the HTTP API")
    serve.add_argument(
        "--role",
        choices=("all", "ingest", "api"),
        default=None,
        help="all: consume and serve the API (default: $ANALYZER_ROLE, else all); ingest: consume, serving only "
        "/healthz /readyz /metrics; api: serve the API from the store without consuming",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="N ingest processes in one consumer group plus an API process, under a supervisor "
        "(default: $ANALYZER_WORKERS, else 0: one process)",
    )

    scan = commands.add_parser("scan", help="incidents in log files (e.g. kubectl logs output)")
    scan.add_argument("files", nargs="*", default=["-"], metavar="FILE", help="files to read; - is stdin")
    scan.add_argument("--output", choices=("table", "json"), default="table")
    scan.add_argument("--format", choices=FORMATS, default="auto", help="record envelope (default: per record)")
    scan.add_argument("--cluster", default=None, help="cluster name for the incident key")
    scan.add_argument("--namespace", default=None, help="namespace to assume for records that carry none")
    scan.add_argument("--pod", default=None, help="pod to assume for records that carry none")
    scan.add_argument("--container", default=None, help="container to assume for records that carry none")
    scan.add_argument(
        "--now",
        action="store_true",
        help="derive status at the wall clock instead of at the last event time in the input",
    )
    scan.add_argument(
        "--no-unclassified",
        action="store_true",
        help="leave out the errors of mesh components that no rule knows (listed after the known problems)",
    )
    _patterns_arg(scan)

    match = commands.add_parser("match", help="one JSON object per input line that matches a rule")
    match.add_argument("file", nargs="?", default="-", metavar="FILE", help="file to read; - is stdin")
    match.add_argument("--format", choices=FORMATS, default="auto")
    _patterns_arg(match)

    rules = commands.add_parser("rules", help="check, test, list or export the signature catalogue")
    verbs = rules.add_subparsers(dest="verb", required=True, parser_class=_Parser)
    for name, text in (
        ("check", "compile and lint; exit 1 on any error"),
        ("test", "run every rule's examples; exit 1 on any failure"),
    ):
        _patterns_arg(verbs.add_parser(name, help=text))
    listing = verbs.add_parser("list", help="id, title, category, severity, component")
    listing.add_argument("--output", choices=("table", "json"), default="table")
    _patterns_arg(listing)
    export = verbs.add_parser("export", help="one expression per line, for grep -E / ripgrep")
    export.add_argument("--format", choices=("regex",), default="regex")
    _patterns_arg(export)
    draft = verbs.add_parser("draft", help="a rule skeleton (YAML) from an unclassified template, to promote it")
    draft.add_argument("template", metavar="TEMPLATE-ID", help="unclassified-<component>-<id> (or the id alone)")
    draft.add_argument("files", nargs="*", metavar="FILE", help="log files holding its lines (default: stdin)")
    draft.add_argument("--server", metavar="URL", help="read its evidence from a running analyzer's API instead")
    draft.add_argument("--format", choices=FORMATS, default="auto", help="record envelope (default: per record)")
    draft.add_argument("--container", default=None, help="container to assume for records that carry none")
    _patterns_arg(draft)
    _incidents_parser(commands)
    return parser


def _version() -> str:
    from analyzer import __version__

    return __version__


def _patterns_dir(arg: Path | None) -> Path:
    import os

    from analyzer.catalogue import default_patterns_dir

    if arg is not None:
        return arg
    env = os.environ.get("ANALYZER_PATTERNS_DIR")
    return Path(env) if env else default_patterns_dir()


def _load(arg: Path | None, *, signals: bool = False) -> tuple[Catalogue, CompiledCatalogue]:
    from analyzer.catalogue import load_catalogue
    from analyzer.correlation import SIGNALS
    from analyzer.match import compile_catalogue

    catalogue = load_catalogue(_patterns_dir(arg))
    # `scan` also needs the proxy-readiness signal lines, for the app-started-before-proxy gate
    return catalogue, compile_catalogue(catalogue, SIGNALS if signals else None)


# -- rules -------------------------------------------------------------------------------------------------


def _rules_check(args: argparse.Namespace, out: IO[str]) -> int:
    from analyzer.match import lint

    catalogue, compiled = _load(args.patterns)
    for warning in lint(catalogue):
        print(warning, file=sys.stderr)
    signals = sum(1 for owner in compiled.owners if owner.startswith("signal:"))
    print(
        f"ok: {len(catalogue.rules)} rules, {len(compiled.owners) - signals} expressions compiled; "
        f"literal prefilter of {len(compiled.literals)} literals, none common in ordinary traffic",
        file=out,
    )
    return 0


def _rules_test(args: argparse.Namespace, out: IO[str]) -> int:
    from analyzer.match import Matcher

    catalogue, compiled = _load(args.patterns)
    matcher = Matcher(compiled)
    passed = failed = 0
    for rule in catalogue.rules:
        cases = [(line, True) for line in rule.examples_match] + [(line, False) for line in rule.examples_no_match]
        for line, expected in cases:
            got = rule.id in matcher.one(line.encode())
            if got == expected:
                passed += 1
            else:
                failed += 1
                verb = "should match" if expected else "should not match"
                print(f"FAIL {rule.id} ({rule.source}): {verb}: {line!r}", file=out)
    print(f"{passed} passed, {failed} failed", file=out)
    return 1 if failed else 0


def _rules_list(args: argparse.Namespace, out: IO[str]) -> int:
    import json

    from analyzer.catalogue import load_catalogue

    catalogue = load_catalogue(_patterns_dir(args.patterns))
    rows = [
        {
            "id": r.id,
            "title": r.title,
            "category": r.category.value,
            "severity": r.severity.value,
            "component": r.component.value,
        }
        for r in catalogue.rules
    ]
    if args.output == "json":
        json.dump(rows, out, indent=2)
        out.write("\n")
        return 0
    headers = ("id", "category", "severity", "component", "title")
    widths = [max(len(h), *(len(row[h]) for row in rows)) for h in headers[:-1]]
    print("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=False)) + "  TITLE", file=out)
    for row in rows:
        cells = [row[h].ljust(w) for h, w in zip(headers, widths, strict=False)]
        print("  ".join(cells) + "  " + row["title"], file=out)
    return 0


def _rules_export(args: argparse.Namespace, out: IO[str]) -> int:
    from analyzer.catalogue import load_catalogue

    catalogue = load_catalogue(_patterns_dir(args.patterns))
    for rule in catalogue.rules:
        for e in rule.expressions:
            print(portable_regex(e.pattern, caseless=e.caseless), file=out)
    return 0


def _rules_draft(args: argparse.Namespace, out: IO[str]) -> int:
    from analyzer.errors import InputError
    from analyzer.unclassified import OVERFLOW, draft_rule, template_from_evidence

    wanted = args.template.strip()
    if args.server:
        rule_id, lines, count = _draft_from_server(args.server.rstrip("/"), wanted)
        where = args.server
    else:
        rule_id, lines, count = _draft_from_files(args, wanted)
        where = ", ".join(args.files or ["stdin"])
    if rule_id is None or not lines:
        raise InputError(f"no unclassified template {wanted!r} in {where} (see `{PROG} scan` for the ids)")
    template = template_from_evidence(rule_id, lines)
    if template is None or rule_id.endswith(f"-{OVERFLOW}"):
        raise InputError(f"{rule_id} collects templates beyond the limit; draft one of its lines' own templates")
    out.write(draft_rule(template, lines, count))
    return 0


def _wanted(rule_id: str, wanted: str) -> bool:
    return rule_id == wanted or rule_id.endswith(f"-{wanted}")


def _draft_from_files(args: argparse.Namespace, wanted: str) -> tuple[str | None, list[str], int]:
    """The template's evidence and line count, as `scan` finds them in the files (the service's lane)."""
    from analyzer.decode import Format
    from analyzer.lines import iter_blocks, open_input
    from analyzer.offline import Metadata, scan

    catalogue, compiled = _load(args.patterns, signals=True)
    blocks = (block for name in args.files or ["-"] for block in iter_blocks(open_input(name)))
    result = scan(catalogue, compiled, blocks, fmt=Format(args.format), metadata=Metadata(container=args.container))
    for incident in result.unclassified:
        if _wanted(incident.rule.id, wanted):
            rule_id = incident.rule.id
            found = [i.interval for i in result.unclassified if i.rule.id == rule_id]
            lines = list(dict.fromkeys(e.line for i in found for e in (*i.head, *i.tail)))
            return rule_id, lines[:5], sum(i.count for i in found)
    return None, [], 0


def _draft_from_server(base: str, wanted: str) -> tuple[str | None, list[str], int]:
    """Find the template's incidents through the API (GET only, no token needed) and read their evidence."""
    from urllib.parse import urlencode

    from analyzer.unclassified import PREFIX

    query: dict[str, str | int] = {"category": "unclassified", "limit": 500}
    if wanted.startswith(PREFIX):
        query["rule"] = wanted
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(20):
        page = _get_json(f"{base}/v1/incidents?{urlencode({**query, **({'cursor': cursor} if cursor else {})})}")
        items.extend(i for i in page.get("items", []) if _wanted(str(i.get("rule")), wanted))
        cursor = page.get("next_cursor")
        if items or not cursor:
            break
    if not items:
        return None, [], 0
    rule_id = str(items[0]["rule"])
    detail = _get_json(f"{base}/v1/incidents/{items[0]['id']}")
    lines = [str(e["line"]) for e in detail.get("evidence", [])]
    return rule_id, lines, sum(int(i.get("count", 0)) for i in items if i.get("rule") == rule_id)


def _get_json(url: str) -> Any:
    import json
    import urllib.error
    import urllib.request

    from analyzer.errors import InputError

    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise InputError(f"{url}: {exc}") from None


# grep -E and ripgrep match line by line: a newline inside a class can go. TAB is written as itself, since
# POSIX brackets and GNU grep -E know no escapes.
_CLASS_ESCAPES = {"n": "", "r": "", "t": "\t", "d": "0-9", "s": "[:space:]", "w": "[:alnum:]_"}
_ESCAPES = {"d": "[0-9]", "s": "[[:space:]]", "t": "\t"}


def portable_regex(pattern: str, *, caseless: bool = False) -> str:
    """A Hyperscan expression in the syntax GNU grep -E and ripgrep both accept.

    POSIX bracket expressions take no backslash escapes and ERE has no ``(?:``; a caseless expression spells
    out both cases, since ``grep -f`` has no per-pattern flags.
    """
    out: list[str] = []
    body: list[str] = []  # the current bracket expression's members
    i, in_class = 0, False
    while i < len(pattern):
        ch = pattern[i]
        nxt = pattern[i + 1] if i + 1 < len(pattern) else ""
        if in_class:
            if ch == "\\" and nxt:
                body.append(_CLASS_ESCAPES.get(nxt, nxt))
                i += 2
                continue
            if ch == "]":
                members = "".join(body[1:])
                if not members:  # "[^\n]" lost its only member: any character (a line has no newline)
                    out.append(".")
                else:
                    if caseless and "[:" not in members:
                        members += members.swapcase().replace("]", "")
                    if "[" in members and "[:" not in members and body[0] == "[":
                        # ripgrep reads "[" in a class as a nested class; "\[" outside one means "[" to both
                        rest = members.replace("[", "")
                        out.append("(\\[|[" + rest + "])" if rest else "\\[")
                    else:
                        out.append(body[0] + members + "]")
                in_class = False
            else:
                body.append(ch)
        elif ch == "\\" and nxt:
            out.append(_ESCAPES.get(nxt, ch + nxt))
            i += 2
            continue
        elif ch == "[":
            in_class = True
            body = ["[^" if nxt == "^" else "["]
            i += 2 if nxt == "^" else 1
            if i < len(pattern) and pattern[i] == "]":  # a leading "]" is a member
                body.append("]")
                i += 1
            continue
        elif pattern.startswith("(?:", i):
            out.append("(")
            i += 3
            continue
        elif caseless and ch.isalpha() and ch.isascii():
            out.append(f"[{ch.lower()}{ch.upper()}]")
        else:
            out.append(ch)
        i += 1
    return "".join(out)


# -- match / scan ------------------------------------------------------------------------------------------


def _match(args: argparse.Namespace, out: IO[str]) -> int:
    import orjson

    from analyzer.decode import Format
    from analyzer.lines import iter_blocks, open_input
    from analyzer.offline import match_lines

    catalogue, compiled = _load(args.patterns)
    stream = open_input(args.file)
    write = out.write
    for line_no, _, found in match_lines(catalogue, compiled, iter_blocks(stream), Format(args.format)):
        rules = [{"id": r.id, "category": r.category.value, "severity": r.severity.value} for r in found]
        write(orjson.dumps({"line_no": line_no, "rules": rules}).decode() + "\n")
    return 0


def _scan(args: argparse.Namespace, out: IO[str]) -> int:
    import time

    from analyzer.decode import Format
    from analyzer.lines import iter_blocks, open_input
    from analyzer.offline import Metadata, by_time, gate_notes, scan

    catalogue, compiled = _load(args.patterns, signals=True)
    streams = [open_input(name) for name in args.files]  # fail before any work if a file is missing
    result = scan(
        catalogue,
        compiled,
        by_time([iter_blocks(stream) for stream in streams]),
        fmt=Format(args.format),
        metadata=Metadata(args.cluster, args.namespace, args.pod, args.container),
        default_cluster=args.cluster or "-",
        stream_time=time.time() if args.now else None,
        unclassified=not args.no_unclassified,
    )
    if args.output == "json":
        _scan_json(result.incidents + result.unclassified, out)
    else:
        _scan_table(result.incidents, result.stats.lines, out)
        _scan_table_unclassified(result.unclassified, out)
    for note in gate_notes(result.stats.gate):
        print(f"{PROG}: note: {note}", file=sys.stderr)
    return 0


def _scan_table_unclassified(unknown: list[Incident], out: IO[str]) -> None:
    if not unknown:
        return
    templates = len({i.rule.id for i in unknown})
    lines = sum(i.interval.count for i in unknown)
    print(
        f"{templates} unclassified error template(s), {lines} lines: errors of mesh components that no rule "
        f"knows (promote one with `{PROG} rules draft <rule> FILE`)\n",
        file=out,
    )
    _scan_table(unknown, 0, out, summary=False)


def _iso(ts: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _incident_json(incident: Incident) -> dict[str, Any]:
    import dataclasses

    i, rule = incident.interval, incident.rule
    return {
        "id": incident.id,
        "rule": rule.id,
        "title": rule.title,
        "category": rule.category.value,
        "severity": rule.severity.value,
        "status": incident.status.value,
        "key": {"cluster": i.key.cluster, "namespace": i.key.namespace, "workload": i.key.workload, "pods": i.pods},
        "first_seen": _iso(i.first_seen),
        "last_seen": _iso(i.last_seen),
        "count": i.count,
        "evidence": [
            {"time": _iso(e.time), "pod": e.pod, "container": e.container, "line": e.line} for e in _evidence(incident)
        ],
        "remediation": rule.remediation.get("en", ""),
        "references": list(rule.references),
        **({"note": incident.note} if incident.note else {}),
        "caused_by": incident.caused_by,
        **({"affected": dataclasses.asdict(incident.affected)} if incident.affected else {}),
        **({"symptoms": [s.id for s in incident.symptoms]} if incident.symptoms else {}),
    }


def _evidence(incident: Incident) -> list[Any]:
    i = incident.interval
    seen, out = set(), []
    for e in (*i.head, *i.tail):
        ident = (e.time, e.line, e.pod, e.container)
        if ident not in seen:
            seen.add(ident)
            out.append(e)
    return out


def _scan_json(found: list[Incident], out: IO[str]) -> None:
    import json

    json.dump([_incident_json(i) for i in found], out, indent=2, ensure_ascii=False)
    out.write("\n")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _scan_table(
    found: list[Incident],
    lines: int,
    out: IO[str],
    *,
    summary: bool = True,
    extra: Callable[[Incident], Sequence[str]] | None = None,
) -> None:
    """The incident blocks of `scan` (and of `incidents`, whose ``extra`` adds each one's id and state)."""
    import shutil
    import textwrap

    width = max(60, min(shutil.get_terminal_size((120, 40)).columns, 160))
    if not found:
        print(f"no known problems in {lines} lines", file=out)
        return
    counts: dict[str, int] = {}
    for incident in found:
        counts[incident.status.value] = counts.get(incident.status.value, 0) + 1
    listed = {incident.id for incident in found}
    if summary:
        text = ", ".join(f"{n} {status}" for status, n in counts.items())
        grouped = sum(1 for incident in found if incident.caused_by in listed)
        roots = len({incident.caused_by for incident in found if incident.caused_by in listed})
        causes = f" ({grouped} symptoms shown under {roots} root cause{'s' if roots > 1 else ''})" if grouped else ""
        print(f"{len(found)} incidents in {lines} lines{causes}: {text}\n", file=out)
    from analyzer.offline import symptom_lines

    for incident in found:
        if incident.caused_by in listed:  # shown under its root cause
            continue
        i, rule = incident.interval, incident.rule
        print(
            f"{incident.status.value.upper():<10} {rule.severity.value:<8} {rule.id}  [{rule.category.value}]", file=out
        )
        print(f"  {rule.title}", file=out)
        for line in extra(incident) if extra is not None else ():
            print(f"  {line}", file=out)
        where = f"cluster={i.key.cluster} namespace={i.key.namespace} workload={i.key.workload}"
        if i.pods:
            where += f" pods={','.join(i.pods[:5])}" + (" …" if len(i.pods) > 5 else "")
        print(f"  where:    {where}", file=out)
        span = _duration(i.last_seen - i.first_seen)
        if i.last_seen <= 0:  # the input had no times (pasted `kubectl describe` rows): the epoch says nothing
            print(f"  when:     (no times in the input), {i.count} lines", file=out)
        else:
            print(f"  when:     {_iso(i.first_seen)} → {_iso(i.last_seen)} ({span}), {i.count} lines", file=out)
        if incident.note:
            note = textwrap.fill(incident.note, width=width, initial_indent="  note:     ", subsequent_indent=" " * 12)
            print(note, file=out)
        print("  evidence:", file=out)
        for e in _evidence(incident):
            line = e.line if len(e.line) <= width - 26 else e.line[: width - 27] + "…"
            print(f"    {_iso(e.time) if e.time > 0 else '(no time)':<20}  {line.replace(chr(9), ' ')}", file=out)
        fix = textwrap.fill(
            rule.remediation.get("en", ""), width=width, initial_indent="  fix:      ", subsequent_indent=" " * 12
        )
        print(fix, file=out)
        for line in symptom_lines(incident):
            print(line, file=out)
        print(file=out)


# -- incidents (a running service's, over its HTTP API) ------------------------------------------------------


def _incidents_parser(commands: Any) -> None:
    from analyzer.types import Category, Severity, Status

    incidents = commands.add_parser(
        "incidents", help="list, show, acknowledge or silence the incidents of a running service (its HTTP API)"
    )
    actions = incidents.add_subparsers(dest="action", required=True, parser_class=_Parser)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--server", metavar="URL", help="the service's URL (default: $ANALYZER_URL, else localhost:8080)"
        )
        p.add_argument("--output", choices=("table", "json"), default="table")

    listing = actions.add_parser("list", help="incidents, newest first; the same table as `scan`")
    common(listing)
    listing.add_argument("--status", action="append", choices=[s.value for s in Status], help="repeatable")
    listing.add_argument("--category", choices=[c.value for c in Category])
    listing.add_argument("--severity", choices=[s.value for s in Severity])
    for name in ("rule", "cluster", "namespace", "workload"):
        listing.add_argument(f"--{name}")
    listing.add_argument("--pod", help="incidents whose pods include it")
    listing.add_argument("--since", metavar="TIME", help="last seen at or after (RFC 3339 or epoch seconds)")
    listing.add_argument("--until", metavar="TIME", help="first seen at or before (RFC 3339 or epoch seconds)")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default 50; watched, with --watch)")
    listing.add_argument(
        "--view",
        choices=("all", "roots"),
        default="all",
        help="roots: one incident per cause (root causes with what they affect, and standalone incidents; the "
        "table shows a root's symptoms under it); all (default): every incident, each symptom with its root",
    )
    listing.add_argument("--lang", help="remediation language (en, pt-BR)")
    listing.add_argument(
        "--watch", action="store_true", help="follow the changes (the current incidents first), one line each"
    )

    show = actions.add_parser("show", help="one incident: evidence, remediation, commands to look further")
    common(show)
    show.add_argument("id", metavar="ID")
    show.add_argument("--lang", help="remediation language (en, pt-BR)")

    ack = actions.add_parser("ack", help="acknowledge an incident (needs $ANALYZER_API_TOKEN)")
    common(ack)
    ack.add_argument("id", metavar="ID")
    ack.add_argument("--comment", help="kept with the ack")
    ack.add_argument("--by", help="who acknowledges (default: $USER)")

    silence = actions.add_parser(
        "silence", help="silence an incident's rule and key, or any matchers, for a while (needs $ANALYZER_API_TOKEN)"
    )
    common(silence)
    silence.add_argument("id", metavar="ID", nargs="?", help="silence what this incident is: its rule and key")
    for name in ("rule", "cluster", "namespace", "workload"):
        silence.add_argument(f"--{name}", help="matcher (instead of ID)")
    until = silence.add_mutually_exclusive_group(required=True)
    until.add_argument("--duration", help="e.g. 30m, 2h, 7d")
    until.add_argument("--expires-at", metavar="TIME", help="RFC 3339 or epoch seconds")
    silence.add_argument("--comment", default="", help="why")
    silence.add_argument("--by", help="who silences (default: $USER)")


_MATCHERS = ("rule", "cluster", "namespace", "workload")


def _incidents(args: argparse.Namespace, out: IO[str]) -> int:
    from analyzer.client import UNREACHABLE, Client, ClientError, Tokens, server_url

    try:
        client = Client(server_url(args.server), Tokens.from_env())
        action = {"list": _incidents_list, "show": _incidents_show, "ack": _incidents_ack}.get(args.action)
        return (action or _incidents_silence)(client, args, out)
    except ClientError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (KeyError, TypeError, AttributeError) as exc:  # an answer without a field this CLI reads
        print(f"{PROG}: error: unexpected answer from the analyzer ({exc!r}): a version mismatch?", file=sys.stderr)
        return UNREACHABLE


def _list_params(args: argparse.Namespace) -> list[tuple[str, str]]:
    params = [("status", status) for status in args.status or ()]
    for name in ("category", "severity", *_MATCHERS, "pod", "since", "until"):
        value = getattr(args, name)
        if value is not None:
            params.append((name, value))
    return params


def _dump(value: object, out: IO[str]) -> None:
    import json

    json.dump(value, out, indent=2, ensure_ascii=False)
    out.write("\n")


def _incidents_list(client: Client, args: argparse.Namespace, out: IO[str]) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from analyzer.client import ClientError, as_incident, state_lines

    if args.limit < 1:
        raise ClientError("--limit must be at least 1")
    if args.watch:
        return _incidents_watch(client, args, out)
    items = client.incidents([*_list_params(args), ("view", args.view)], args.limit)
    if args.output == "json":
        _dump(items, out)
        return 0
    if not items:
        print(f"no incidents match at {client.base}", file=out)
        return 0
    # The table shows evidence and remediation, which only the detail has: a few requests at a time.
    with ThreadPoolExecutor(max_workers=min(8, len(items))) as pool:
        details = list(pool.map(lambda item: client.incident(item["id"], args.lang), items))
    counts: dict[str, int] = {}
    for item in items:
        counts[item["status"]] = counts.get(item["status"], 0) + 1
    more = " (the newest; --limit for more)" if len(items) == args.limit else ""
    text = ", ".join(f"{n} {status}" for status, n in counts.items())
    listed = {item["id"] for item in items}
    grouped = sum(1 for item in items if item.get("caused_by") in listed)
    if grouped:
        text += f"; {grouped} of them shown under their root cause"
    print(f"{len(items)} incidents{more}: {text}\n", file=out)
    state = {d["id"]: state_lines(d) for d in details}
    _scan_table([as_incident(d) for d in details], 0, out, summary=False, extra=lambda i: state[i.id])
    return 0


def _incidents_show(client: Client, args: argparse.Namespace, out: IO[str]) -> int:
    import io

    from analyzer.client import as_incident, item_line, state_lines

    detail = client.incident(args.id, args.lang)
    if args.output == "json":
        _dump(detail, out)
        return 0
    block = io.StringIO()
    # A root's symptoms are listed below with their ids (to show or ack them), not in the block.
    _scan_table([as_incident(detail, symptoms=False)], 0, block, summary=False, extra=lambda _: state_lines(detail))
    out.write(block.getvalue().rstrip("\n") + "\n")
    if detail.get("commands"):
        print("  look:", file=out)
        for command in detail["commands"]:
            print(f"    {command}", file=out)
    if detail.get("symptoms"):
        a = detail.get("affected") or {}
        print(
            f"  symptoms: {len(detail['symptoms'])} incident(s) caused by this, {a.get('workloads')} workload(s), "
            f"{a.get('pods')} pod(s) affected; earliest first:",
            file=out,
        )
        for symptom in detail["symptoms"]:
            print(f"    {item_line(symptom)}", file=out)
    return 0


def _who(given: str | None) -> str | None:
    import os

    return given or os.environ.get("USER") or os.environ.get("LOGNAME") or None


def _incidents_ack(client: Client, args: argparse.Namespace, out: IO[str]) -> int:
    item = client.ack(args.id, _who(args.by), args.comment)
    if args.output == "json":
        _dump(item, out)
        return 0
    key = item["key"]
    print(
        f"acknowledged {item['id']} ({item['rule']}, {key['cluster']}/{key['namespace']}/{key['workload']}) "
        f"by {item.get('acked_by')}",
        file=out,
    )
    return 0


def _incidents_silence(client: Client, args: argparse.Namespace, out: IO[str]) -> int:
    from analyzer.client import ClientError

    given = {name: getattr(args, name) for name in _MATCHERS if getattr(args, name) is not None}
    if args.id is not None:
        if given:
            raise ClientError("give an incident ID or matchers (--rule/--cluster/--namespace/--workload), not both")
        detail = client.incident(args.id)
        given = {"rule": detail["rule"], **{name: detail["key"][name] for name in _MATCHERS[1:]}}
    elif not given:
        raise ClientError("say what to silence: an incident ID, or --rule/--cluster/--namespace/--workload")
    body: dict[str, object] = {**given, "comment": args.comment}
    body.update({"duration": args.duration} if args.duration else {"expires_at": args.expires_at})
    if (by := _who(args.by)) is not None:
        body["by"] = by
    made = client.silence(body)
    if args.output == "json":
        _dump(made, out)
        return 0
    matchers = " ".join(f"{name}={made[name]}" for name in _MATCHERS if made.get(name) is not None)
    print(f"silenced {matchers} until {made['expires_at']} (silence {made['id']}, by {made['created_by']})", file=out)
    return 0


def _incidents_watch(client: Client, args: argparse.Namespace, out: IO[str]) -> int:
    import json

    from analyzer.client import Event, RootsOnly, event_line, watch

    roots = RootsOnly() if args.view == "roots" else None

    def on_event(event: Event) -> None:
        if roots is not None and not roots.admits(event):
            return
        if args.output == "json":
            try:
                data = json.loads(event.data)
            except ValueError:
                data = event.data
            line = json.dumps({"event": event.event, "id": event.id, "data": data}, ensure_ascii=False)
        else:
            line = event_line(event)
        print(line, file=out, flush=True)  # a pipe reader sees each event as it comes

    def note(text: str) -> None:
        print(f"{PROG}: {text}", file=sys.stderr, flush=True)

    watch(client, [*_list_params(args), ("limit", str(min(args.limit, 500)))], on_event, note)
    return 0


# -- entry -------------------------------------------------------------------------------------------------


def _serve(args: argparse.Namespace, _out: IO[str]) -> int:
    from analyzer.service import main as serve_main

    given = {"role": args.role, "workers": args.workers}
    return serve_main({name: value for name, value in given.items() if value is not None})


def main(argv: Sequence[str] | None = None) -> int:
    from analyzer.errors import AnalyzerError, CatalogueError

    args = build_parser().parse_args(argv)
    out = sys.stdout
    handlers = {
        "serve": _serve,
        "scan": _scan,
        "match": _match,
        "check": _rules_check,
        "test": _rules_test,
        "list": _rules_list,
        "export": _rules_export,
        "draft": _rules_draft,
        "incidents": _incidents,
    }
    handler = handlers[args.verb if args.command == "rules" else args.command]
    try:
        return handler(args, out)
    except CatalogueError as exc:
        for problem in exc.problems:
            print(f"{PROG}: error: {problem}", file=sys.stderr)
        return 1 if args.command == "rules" else 2
    except AnalyzerError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `mesh-analyzer match big.log | head`: the reader left; not an error worth a traceback.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        return 130
