"""The lane for errors no rule knows: masking, templates, the pipeline, bounds, `scan`, `rules draft`, the API."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from analyzer import incidents, unclassified
from analyzer.catalogue import load_catalogue
from analyzer.errors import CatalogueError
from analyzer.match import compile_catalogue
from analyzer.metrics import Metrics
from analyzer.pipeline import Pipeline
from analyzer.types import Category, Changes, IncidentKey, Interval, LogRecord
from analyzer.unclassified import TemplateRegistry, parse, template_for_line, template_id, template_of

ROOT = Path(__file__).resolve().parents[1]
PATTERNS = ROOT / "patterns"
CLI = [sys.executable, "-m", "analyzer"]
CATALOGUE = load_catalogue(PATTERNS)
COMPILED = compile_catalogue(CATALOGUE)

# An error no rule can know (a made-up subsystem), in the shapes the mesh prints it.
UNKNOWN = "widget reconcile failed for shard {n}: quota exhausted after {m} attempts on {ip}"
KNOWN = (  # the seed's API-server case: the catalogue knows it
    "k8s.io/client-go@v0.25.2/tools/cache/reflector.go:169: Failed to watch *v1.Deployment: failed to list "
    '*v1.Deployment: Get "https://10.96.0.1:443/apis/apps/v1/deployments?limit=500": dial tcp 10.96.0.1:443: '
    "connect: connection refused"
)


def istio(level: str, scope: str, msg: str, second: int = 1) -> str:
    return f"2024-05-01T10:00:{second:02d}.123456Z\t{level}\t{scope}\t{msg}"


def unknown_msg(rng: random.Random) -> str:
    ip = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}:{rng.randrange(1, 65536)}"
    return UNKNOWN.format(n=rng.randrange(10_000), m=rng.randrange(1, 99), ip=ip)


def fluent_bit(line: str, container: str, *, pod: str = "istiod-5d8f7c9b6d-x2x4q", ns: str = "istio-system") -> bytes:
    return orjson.dumps(
        {
            "@timestamp": 1714557600.0,
            "log": line,
            "kubernetes": {"pod_name": pod, "namespace_name": ns, "container_name": container},
        }
    )


# -- masking and templates ------------------------------------------------------------------------------------


def test_variable_tokens_do_not_change_the_template() -> None:
    rng = random.Random(7)
    lines = [istio("error", "ads", unknown_msg(rng), second=s) for s in range(20)]
    ids = {template_for_line("istiod", line).rule_id for line in lines}
    assert len(ids) == 1
    (text,) = {template_for_line("istiod", line).text for line in lines}
    assert not any(ch.isdigit() for ch in text)  # numbers and the address are masked
    assert "widget reconcile failed" in text and "quota exhausted" in text


def test_a_different_message_or_component_is_a_different_template() -> None:
    line = istio("error", "ads", UNKNOWN.format(n=1, m=2, ip="10.0.0.1:80"))
    other = istio("error", "ads", UNKNOWN.format(n=1, m=2, ip="10.0.0.1:80").replace("quota", "budget"))
    assert template_for_line("istiod", line).rule_id != template_for_line("istiod", other).rule_id
    assert template_for_line("istiod", line).rule_id != template_for_line("pilot-agent", line).rule_id


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("2024-05-01T10:00:01.123456Z", "<TIME>"),
        ("fd00:10:96::a", "<IP>"),
        ("[fd00::5]:15008", "<IP>"),
        ("10.244.0.5:46528", "<IP>"),
        ("3f1c2a4e-8b8b-4a7a-9c1d-0a0b0c0d0e0f", "<UUID>"),
        ("0xdeadbeef", "<HEX>"),
        ("1.5s", "<DUR>"),
        ("250ms", "<DUR>"),
        ("/var/run/secrets/workload-spiffe-uds/socket", "<PATH>"),
        ("reviews-v1-545db77b95-xjj2b", "<NAME>"),
        ("istio-system/istiod-tls", "<NAME>"),
        ("12345", "<NUM>"),
    ],
)
def test_each_kind_of_variable_is_masked(value: str, kind: str) -> None:
    assert unclassified.mask(f"lookup of {value} failed") == f"lookup of {kind} failed"


def test_prefixes_of_every_shape_are_stripped() -> None:
    msg = "widget reconcile failed"
    shapes = {
        istio("error", "ads", msg): ("istio", "ads", False),
        f'{{"level":"error","time":"2024-05-01T10:00:01.123456Z","scope":"cni-agent","msg":"{msg}"}}': (
            "json",
            "cni-agent",
            False,
        ),
        f"2024-05-01T10:00:01.123456Z\tcritical\tenvoy main source/server/server.cc:98\t{msg}\tthread=1": (
            "istio",
            "envoy main",
            True,
        ),
        f"[2019-07-19 16:14:31.920][36][critical][main] [source/server/server.cc:98] {msg}": (
            "envoy",
            "envoy main",
            True,
        ),
        f"E0312 12:00:00.123456       1 reflector.go:138] {msg}": ("klog", None, False),
    }
    for line, (shape, scope, envoy) in shapes.items():
        parsed = parse(line)
        assert (parsed.shape, parsed.scope, parsed.envoy) == (shape, scope, envoy), line
        assert template_of(parsed).startswith(msg), line


def test_ztunnel_error_values_stay_in_the_template() -> None:
    line = istio(
        "error",
        "access",
        'connection complete\tsrc.addr=10.244.0.5:46528 dst.addr=10.244.0.9:15008 error="io error: Connection refused '
        '(os error 111)" duration="2ms"',
    )
    text = template_of(parse(line))
    assert "src.addr=<*>" in text and "Connection refused" in text and "111" not in text


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 10**9), min_size=3, max_size=3),
    st.sampled_from(["ads", "xdsproxy", "cni-agent"]),
)
def test_template_id_is_a_pure_function_of_the_line(numbers: list[int], scope: str) -> None:
    a, b, c = numbers
    msg = UNKNOWN.format(n=a, m=b, ip=f"10.{c % 256}.0.{a % 256}:{b % 65536}")
    line = istio("error", scope, msg)
    first = template_for_line("istiod", line)
    assert template_for_line("istiod", line) == first
    assert first.rule_id == unclassified.rule_id_for("istiod", template_id("istiod", first.text))
    assert first.text == template_of(parse(istio("error", scope, UNKNOWN.format(n=1, m=2, ip="10.0.0.1:1"))))


# -- qualification --------------------------------------------------------------------------------------------


def qualify(line: str, container: str | None, level: str = "error", pod: str | None = None) -> str | None:
    found = unclassified.qualify(LogRecord(line.encode(), container=container, level=level, pod=pod))
    return None if found is None else found[0]


def test_components_by_container_and_by_shape() -> None:
    line = istio("error", "ads", "x failed")
    assert qualify(line, "discovery") == "istiod"
    assert qualify(line, "istio-proxy") == "pilot-agent"
    assert qualify(line, "istio-proxy", pod="ztunnel-7xk2p") == "ztunnel"
    assert qualify(line, "istio-init") == "istio-init"
    assert qualify(line, "install-cni") == "istio-cni"
    assert qualify("[2019-07-19 16:14:31.920][36][error][config] x failed", "istio-proxy") == "envoy"
    # without container metadata, only shapes no application prints
    assert qualify(line, None) == "istiod"
    assert qualify(istio("error", "cni-agent", "x failed"), None) == "istio-cni"
    assert qualify(istio("error", "proxy::inbound", "x failed"), None) == "ztunnel"
    assert qualify("[2019-07-19 16:14:31.920][36][error][config] x failed", None) == "envoy"


def test_app_lines_and_non_errors_are_not_ours() -> None:
    line = istio("error", "ads", "x failed")
    assert qualify(line, "reviews") is None  # an application container
    assert qualify(istio("error", "myapp", "x failed"), None) is None  # unknown scope, no metadata
    assert qualify("2024-05-01T10:00:01.123Z\terror\tx failed", None) is None
    assert qualify("E0312 12:00:00.123456       1 reflector.go:138] x failed", None) is None
    assert qualify(line, "discovery", level="warn") is None
    assert qualify(line, "discovery", level="info") is None


def test_the_catalogue_refuses_the_unclassified_category(tmp_path: Path) -> None:
    text = (PATTERNS / "istiod.yaml").read_text(encoding="utf-8")
    first = text.index("category: ")
    end = text.index("\n", first)
    (tmp_path / "istiod.yaml").write_text(text[:first] + "category: unclassified" + text[end:], encoding="utf-8")
    with pytest.raises(CatalogueError) as info:
        load_catalogue(tmp_path)
    assert any("reserved" in str(p) for p in info.value.problems)


# -- the pipeline ---------------------------------------------------------------------------------------------


def pipeline(max_templates: int = 500) -> Pipeline:
    return Pipeline(CATALOGUE, COMPILED, default_cluster="c1", unclassified=TemplateRegistry(max_templates))


def test_pipeline_makes_unclassified_intervals_for_unknown_errors_only() -> None:
    rng = random.Random(1)
    values = [
        fluent_bit(istio("error", "ads", unknown_msg(rng), 1), "discovery"),
        fluent_bit(istio("error", "ads", unknown_msg(rng), 2), "discovery"),
        fluent_bit(istio("error", "klog", KNOWN, 3), "discovery"),  # a catalogue rule knows it
        fluent_bit(istio("info", "ads", unknown_msg(rng), 4), "discovery"),  # not an error
        fluent_bit(istio("error", "ads", unknown_msg(rng), 5), "reviews", pod="reviews-v1-545db77b95-xjj2b"),  # app
        fluent_bit(istio("error", "ads", "x: " + unknown_msg(rng), 6), "discovery").replace(b"\\t", b"\\u0009"),
    ]
    result = pipeline()(values, [1714557600.0] * len(values))
    mine = [i for i in result.intervals if unclassified.is_unclassified(i.rule_id)]
    assert sorted(i.count for i in mine) == [1, 2]
    assert result.unclassified == {"istiod": 3}
    assert {i.key.workload for i in mine} == {"istiod"} and {i.key.namespace for i in mine} == {"istio-system"}
    for interval in mine:
        rule = result.unclassified_rules[interval.rule_id]
        assert rule.category is Category.UNCLASSIFIED and rule.severity.value == "info" and rule.transient is None
    assert "istiod-apiserver-unreachable" in result.matches  # the known line went to its rule, not the lane
    assert not any(i.rule_id.startswith("unclassified-") for i in result.intervals if i.count == 0)


def test_the_lane_is_off_without_a_registry() -> None:
    values = [fluent_bit(istio("error", "ads", unknown_msg(random.Random(2))), "discovery")]
    result = Pipeline(CATALOGUE, COMPILED, default_cluster="c1")(values, [1714557600.0])
    assert not result.intervals and not result.unclassified


def vars_of(key: IncidentKey) -> tuple[str, str, str]:
    return (key.cluster, key.namespace, key.workload)


def _canonical(intervals: list[Interval]) -> list[tuple[object, ...]]:
    by_key: dict[tuple[str, object], list[Interval]] = {}
    for i in intervals:
        by_key.setdefault((i.rule_id, i.key), []).append(i)
    folded = [f for group in by_key.values() for f in incidents.fold(group, unclassified.RESOLVE_AFTER)]
    return sorted((f.rule_id, *vars_of(f.key), f.first_seen, f.last_seen, f.count) for f in folded)


@settings(max_examples=25, deadline=None)
@given(st.randoms(use_true_random=False), st.integers(1, 40))
def test_unclassified_incidents_do_not_depend_on_order_or_batch_size(rng: random.Random, batch: int) -> None:
    lines = []
    for n in range(60):
        msg = unknown_msg(rng) if n % 3 else f"cache {rng.choice(['evict', 'flush'])} of {rng.randrange(99)} failed"
        container = rng.choice(["discovery", "istio-proxy"])
        lines.append(fluent_bit(istio("error", "ads", msg, n % 60), container, ns=rng.choice(["a", "b"])))
    reference = pipeline()(lines, [0.0] * len(lines)).intervals
    shuffled = lines[:]
    rng.shuffle(shuffled)
    replayed: list[Interval] = []
    other = pipeline()
    for start in range(0, len(shuffled), batch):
        replayed.extend(other(shuffled[start : start + batch], [0.0] * len(shuffled[start : start + batch])).intervals)
    assert _canonical(replayed) == _canonical(reference)


def test_templates_are_bounded_and_overflow_is_counted() -> None:
    values = [fluent_bit(istio("error", "ads", f"subsystem {word} failed", n), "discovery") for n, word in
              enumerate(["alpha", "beta", "gamma", "delta", "alpha"])]  # fmt: skip
    pipe = pipeline(max_templates=2)
    result = pipe(values, [0.0] * len(values))
    assert len(pipe.unclassified or []) == 2
    assert result.unclassified_overflow == {"istiod": 2}  # gamma and delta
    spill = [i for i in result.intervals if i.rule_id == "unclassified-istiod-overflow"]
    assert [i.count for i in spill] == [2]
    assert "unclassified-istiod-overflow" in result.unclassified_rules
    # once the known templates have settled, a new one takes a place again
    assert pipe.unclassified is not None
    pipe.evict(1714557600.0 + 10_000)
    later = pipe([fluent_bit(istio("error", "ads", "subsystem epsilon failed", 1), "discovery")], [0.0])
    assert not later.unclassified_overflow and later.unclassified == {"istiod": 1}


def test_metrics_exist_at_zero_per_component() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    for component in unclassified.COMPONENTS:
        assert registry.get_sample_value("analyzer_unclassified_lines_total", {"component": component}) == 0
        assert registry.get_sample_value("analyzer_unclassified_overflow_lines_total", {"component": component}) == 0


# -- the command line ----------------------------------------------------------------------------------------


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, input=stdin, cwd=ROOT, check=False)


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    rng = random.Random(3)
    lines = [
        istio("info", "ads", "Push debounce stable 1 for config ServiceEntry", 0),
        istio("error", "ads", unknown_msg(rng), 1),
        istio("error", "ads", unknown_msg(rng), 2),
        istio("error", "klog", KNOWN, 3),
        istio("error", "myapp", "something of the app broke", 4),
    ]
    path = tmp_path / "istiod.log"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_scan_lists_unclassified_after_the_known_problems(log_file: Path) -> None:
    table = run("scan", str(log_file))
    assert table.returncode == 0, table.stderr
    known, unknown = table.stdout.index("istiod-apiserver-unreachable"), table.stdout.index("unclassified-istiod-")
    assert known < unknown
    assert "widget reconcile failed" in table.stdout and "something of the app" not in table.stdout
    items = orjson.loads(run("scan", "--output", "json", str(log_file)).stdout)
    assert [i["category"] for i in items] == ["apiserver-connectivity", "unclassified"]
    assert items[1]["count"] == 2 and items[1]["severity"] == "info"
    off = orjson.loads(run("scan", "--output", "json", "--no-unclassified", str(log_file)).stdout)
    assert [i["category"] for i in off] == ["apiserver-connectivity"]


def test_match_reports_catalogue_matches_only(log_file: Path) -> None:
    out = run("match", str(log_file))
    assert out.returncode == 0, out.stderr
    rows = [orjson.loads(line) for line in out.stdout.splitlines()]
    assert [r["line_no"] for r in rows] == [4]
    assert all(not r["id"].startswith("unclassified") for row in rows for r in row["rules"])


def test_rules_draft_gives_a_rule_that_check_and_test_accept(log_file: Path, tmp_path: Path) -> None:
    items = orjson.loads(run("scan", "--output", "json", str(log_file)).stdout)
    rule_id = next(i["rule"] for i in items if i["category"] == "unclassified")
    drafted = run("rules", "draft", rule_id.rsplit("-", 1)[1], str(log_file))
    assert drafted.returncode == 0, drafted.stderr
    assert "category: FILL-IN" in drafted.stdout
    patterns = tmp_path / "patterns"
    patterns.mkdir()
    target = patterns / "drafted.yaml"
    target.write_text(drafted.stdout, encoding="utf-8")
    assert run("rules", "check", "--patterns", str(patterns)).returncode == 1  # the category is still to fill in
    target.write_text(drafted.stdout.replace("category: FILL-IN", "category: xds-config"), encoding="utf-8")
    check = run("rules", "check", "--patterns", str(patterns))
    assert check.returncode == 0, check.stderr
    assert "warning" not in check.stderr
    tested = run("rules", "test", "--patterns", str(patterns))
    assert tested.returncode == 0 and "2 passed, 0 failed" in tested.stdout, tested.stdout
    # added to the catalogue, the promoted rule knows the lines: they leave the lane
    full = tmp_path / "full"
    shutil.copytree(PATTERNS, full)
    shutil.copy(target, full / "drafted.yaml")
    again = orjson.loads(run("scan", "--output", "json", "--patterns", str(full), str(log_file)).stdout)
    assert sorted(i["category"] for i in again) == ["apiserver-connectivity", "xds-config"]


def test_rules_draft_of_an_unknown_template_is_an_input_error(log_file: Path) -> None:
    out = run("rules", "draft", "unclassified-istiod-0000000000", str(log_file))
    assert out.returncode == 2 and "no unclassified template" in out.stderr


# -- the API --------------------------------------------------------------------------------------------------


async def test_the_api_lists_unclassified_incidents_with_titles_across_a_restart(tmp_path: Path) -> None:
    from analyzer.service import restore_templates
    from tests.api.support import STREAM_TIME, make_settings, running

    rng = random.Random(5)
    values = [fluent_bit(istio("error", "ads", unknown_msg(rng), s), "discovery") for s in range(3)]
    settings = make_settings(tmp_path)
    async with running(settings) as api:
        pipe = api.service.holder.pipeline
        assert pipe.unclassified is not None  # on by default
        result = pipe(values, [STREAM_TIME - 30] * len(values))
        (interval,) = [i for i in result.intervals if unclassified.is_unclassified(i.rule_id)]
        title = result.unclassified_rules[interval.rule_id].title
        await api.store.commit_batch(
            "mesh-analyzer",
            Changes(merges=(interval,), stream_time=STREAM_TIME),
            [],
            unclassified.with_rules(pipe.rules, result.unclassified_rules),  # what the ingest passes
        )
        page = (await api.client.get("/v1/incidents", params={"category": "unclassified"})).json()
        assert [(i["rule"], i["title"], i["severity"]) for i in page["items"]] == [(interval.rule_id, title, "info")]
        other = (await api.client.get("/v1/incidents", params={"category": "xds-config"})).json()
        assert other["items"] == []
        detail = (await api.client.get(f"/v1/incidents/{interval.id}")).json()
        assert "rules draft" in detail["remediation"] and detail["category"] == "unclassified"

    async with running(settings) as api:  # a restart: nothing in memory knows the template
        bare = (await api.client.get("/v1/incidents", params={"category": "unclassified"})).json()["items"][0]
        assert bare["title"] != interval.rule_id  # derived from the id at least
        detail = (await api.client.get(f"/v1/incidents/{interval.id}")).json()
        assert detail["title"] == title  # re-derived from the stored evidence
        registry = api.service.holder.pipeline.unclassified
        assert registry is not None
        assert await restore_templates(api.store, registry, STREAM_TIME, 5.0) == 1
        listed = (await api.client.get("/v1/incidents", params={"category": "unclassified"})).json()["items"][0]
        assert listed["title"] == title


async def test_rules_draft_reads_the_evidence_from_a_running_server(tmp_path: Path) -> None:
    import asyncio
    import socket

    import uvicorn

    from analyzer.service import api_for
    from tests.api.support import STREAM_TIME, build_service, make_settings

    service = await build_service(make_settings(tmp_path))
    rng = random.Random(9)
    values = [fluent_bit(istio("error", "xdsproxy", unknown_msg(rng), s), "istio-proxy") for s in range(3)]
    result = service.holder.pipeline(values, [STREAM_TIME] * len(values))
    changes = Changes(merges=tuple(result.intervals), stream_time=STREAM_TIME)
    rules = unclassified.with_rules(service.holder.pipeline.rules, result.unclassified_rules)  # as the ingest
    await service.store.commit_batch("mesh-analyzer", changes, [], rules)
    (rule_id,) = {i.rule_id for i in result.intervals}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(api_for(service), host="127.0.0.1", port=port, log_config=None, lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(200):  # uvicorn offers no start event to await
            if server.started:
                break
            await asyncio.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        drafted = await asyncio.to_thread(run, "rules", "draft", rule_id.rsplit("-", 1)[1], "--server", url)
        assert drafted.returncode == 0, drafted.stderr
        assert f"rules draft {rule_id}`, seen 3 times" in drafted.stdout
        assert "component: istio-proxy" in drafted.stdout and "quota exhausted" in drafted.stdout
        missing = await asyncio.to_thread(run, "rules", "draft", "unclassified-envoy-0000000000", "--server", url)
        assert missing.returncode == 2 and "no unclassified template" in missing.stderr
    finally:
        server.should_exit = True
        await task
        await service.store.close()
