"""Offline analysis: `match` finds exactly what decoding every line finds; `scan` is the service's pipeline
and store (the proxy-readiness gate included), fed from files."""

from __future__ import annotations

import datetime as dt
import json
import random

import pytest

from analyzer.catalogue import load_catalogue
from analyzer.correlation import GATED_RULES, SIGNALS
from analyzer.decode import Decoder, Format
from analyzer.match import CompiledCatalogue, Matcher, compile_catalogue
from analyzer.offline import (
    NO_POD,
    NO_PROXY,
    NO_TIME,
    GateStats,
    Incident,
    Metadata,
    by_time,
    gate_notes,
    match_lines,
    named_source,
    scan,
)
from analyzer.pipeline import Pipeline
from analyzer.types import Catalogue, LogRecord, Status
from tests.conftest import PATTERNS, corpus_lines


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Catalogue, CompiledCatalogue]:
    catalogue = load_catalogue(PATTERNS)
    return catalogue, compile_catalogue(catalogue, cache_dir=tmp_path_factory.mktemp("hs"))


def reference(catalogue: Catalogue, db: CompiledCatalogue, block: list[bytes]) -> list[tuple[int, tuple[str, ...]]]:
    """Decode every line on its own, then match its decoded text: the contract `match` must keep."""
    matcher, rules, out = Matcher(db), catalogue.by_id(), []
    for n, raw in enumerate(block, 1):
        record = Decoder(Format.AUTO)(raw) if raw else None
        if not isinstance(record, LogRecord):
            continue
        ids = tuple(
            o
            for o in matcher.one(record.line)
            if (r := rules.get(o)) and r.applies_to(record.container, record.namespace)
        )
        if ids:
            out.append((n, ids))
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_match_equals_decoding_every_line(compiled: tuple[Catalogue, CompiledCatalogue], seed: int) -> None:
    catalogue, db = compiled
    rng = random.Random(seed)
    lines = [entry["line"].encode() for entry in corpus_lines()]
    block = []
    for line in rng.sample(lines, len(lines)):
        block.append(line)
        if rng.random() < 0.3:
            block.append(b"    at io.envoy.Continuation(line " + str(rng.randint(1, 99)).encode() + b")")
    blocks = [block[: len(block) // 2], block[len(block) // 2 :]]
    found = [(n, tuple(r.id for r in rules)) for n, _, rules in match_lines(catalogue, db, blocks)]
    assert found == reference(catalogue, db, block)
    assert len(found) > 30


def test_cri_partial_lines_are_joined_across_blocks(compiled: tuple[Catalogue, CompiledCatalogue]) -> None:
    catalogue, db = compiled
    line = istio_text(T0, "error", APISERVER_REFUSED)
    full = f"{stamp(T0)} stderr F {line}".encode()
    cut = line.index("connection") + 4  # inside the message: neither chunk matches on its own
    chunks = [f"{stamp(T0)} stderr P {line[:cut]}".encode(), f"{stamp(T0)} stderr F {line[cut:]}".encode()]
    assert not reference(catalogue, db, chunks[:1]) and not reference(catalogue, db, chunks[1:])
    whole = [(n, tuple(r.id for r in rules)) for n, _, rules in match_lines(catalogue, db, [[full]])]
    assert whole, "the joined line must match some rule"
    split = [
        (n, tuple(r.id for r in rules)) for n, _, rules in match_lines(catalogue, db, [[b"x"], chunks[:1], chunks[1:]])
    ]
    assert split == [(3, whole[0][1])]  # the line that completed the record
    result = scan(catalogue, db, [chunks[:1], chunks[1:]], unclassified=False)
    assert {i.rule.id for i in result.incidents} == set(whole[0][1])
    assert result.stats.lines == 2 and result.stats.records == 1


def test_status_is_derived_at_the_last_event_time(compiled: tuple[Catalogue, CompiledCatalogue]) -> None:
    catalogue, db = compiled
    lines = [istio_text(T0 + s, "error", APISERVER_REFUSED) for s in (0, 10)]
    lines += [istio_text(T0 + 3600 * h, "info", f"push {h}") for h in range(1, 4)]
    lines.append("a continuation line without a time")
    result = scan(catalogue, db, [[line.encode() for line in lines]], unclassified=False)
    assert result.stream_time == T0 + 3 * 3600
    settled = (Status.SUPPRESSED, Status.RESOLVED)  # quiet for hours at the input's end
    assert result.incidents and all(i.status in settled for i in result.incidents)
    early = scan(catalogue, db, [[line.encode() for line in lines[:2]]], unclassified=False)
    assert early.stream_time == T0 + 10
    assert early.incidents and all(i.status in (Status.PENDING, Status.OPEN) for i in early.incidents)


def test_input_without_times_is_judged_at_its_latest_occurrence(compiled: tuple[Catalogue, CompiledCatalogue]) -> None:
    """Pasted rows (`kubectl describe` events, a message copied without its time) are not all resolved."""
    catalogue, db = compiled
    lines = [entry["line"].encode() for entry in corpus_lines()]
    untimed = [
        raw
        for raw in lines
        if isinstance(r := Decoder(Format.AUTO)(raw), LogRecord) and r.time is None and reference(catalogue, db, [raw])
    ]
    assert len(untimed) > 3
    result = scan(catalogue, db, [untimed], unclassified=False)
    assert result.incidents and result.stats.last_time is None
    assert not any(i.status is Status.RESOLVED for i in result.incidents)


def test_scan_does_not_depend_on_batch_size(compiled: tuple[Catalogue, CompiledCatalogue]) -> None:
    catalogue, db = compiled
    rng = random.Random(5)
    lines = [entry["line"].encode() for entry in corpus_lines()]
    block = [rng.choice(lines) for _ in range(600)]

    def incidents(batch: int) -> list[tuple[str, str, float, float, int]]:
        found = scan(catalogue, db, [block], batch=batch)
        return sorted(
            (i.rule.id, i.interval.key.workload, i.interval.first_seen, i.interval.last_seen, i.interval.count)
            for i in found.incidents + found.unclassified
        )

    whole = incidents(5000)
    assert len(whole) > 10
    assert incidents(7) == whole


# --- the proxy-readiness gate in scan -----------------------------------------------------------------------

T0 = 1_714_550_400.0  # 2024-05-01T08:00:00Z
POD = "shop-5c8b7d9f4-x2x9k"
REFUSED_JAVA = "java.net.ConnectException: Connection refused"
REFUSED_GO = "dial tcp 10.96.2.2:8080: connect: connection refused"


def stamp(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def pilot_agent(t: float, msg: str, level: str = "info") -> str:
    return f"{stamp(t)}\t{level}\t{msg}"


APISERVER_REFUSED = (
    "k8s.io/client-go@v0.21.2/tools/cache/reflector.go:167: Failed to watch *v1.ConfigMap: failed to list "
    '*v1.ConfigMap: Get "https://10.96.0.1:443/api/v1/configmaps?limit=500": dial tcp 10.96.0.1:443: '
    "connect: connection refused"
)


def istio_text(t: float, level: str, msg: str) -> str:
    return f"{stamp(t)}\t{level}\tklog\t{msg}"


def kubectl_ts(t: float, line: str) -> str:
    """A line as `kubectl logs --timestamps` prints it (nanoseconds, one space)."""
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z ") + line


def time_of(line: str) -> float:
    return dt.datetime.strptime(line[:27], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC).timestamp()


def proxy_log(start: float, ready_after: float | None) -> list[str]:
    """istio-proxy's start-up: starting, NOT ready every 2 s, then ready (or never)."""
    lines = [
        pilot_agent(start, "Version 1.30.3-0d83506c28834f5f12553ee11d76a18e7ea75f20-Clean"),
        pilot_agent(start + 0.1, "Starting proxy agent"),
    ]
    end = start + (ready_after if ready_after is not None else 300)
    t = start + 2
    while t < end:
        lines.append(pilot_agent(t, "Envoy proxy is NOT ready: config not received from XDS server", level="warn"))
        t += 2
    if ready_after is not None:
        lines.append(pilot_agent(end, "Envoy proxy is ready"))
        lines.append(pilot_agent(end + 0.1, f"Readiness succeeded in {ready_after:.1f}s"))
    return lines


def gated_scan(
    compiled_signals: tuple[Catalogue, CompiledCatalogue], files: list[list[str]], **meta: str
) -> tuple[list[Incident], GateStats]:
    catalogue, db = compiled_signals
    blocks = [[[line.encode() for line in lines]] for lines in files]
    result = scan(catalogue, db, by_time(blocks), metadata=Metadata(**meta))
    return result.incidents, result.stats.gate


@pytest.fixture(scope="module")
def compiled_signals(tmp_path_factory: pytest.TempPathFactory) -> tuple[Catalogue, CompiledCatalogue]:
    catalogue = load_catalogue(PATTERNS)
    return catalogue, compile_catalogue(catalogue, SIGNALS, cache_dir=tmp_path_factory.mktemp("hs-signals"))


def gated(found: list[Incident]) -> list[Incident]:
    return [i for i in found if i.rule.id in GATED_RULES]


def test_app_refused_while_proxy_not_ready_is_an_incident(
    compiled_signals: tuple[Catalogue, CompiledCatalogue],
) -> None:
    # Proxy takes 90 s to get its config; the app's refusals at 70-80 s are past the start window but the
    # proxy still says NOT ready: they count. The app file comes first: order in the input does not matter.
    app = [kubectl_ts(T0 + s, REFUSED_JAVA) for s in (70, 75, 80)]
    found, gate = gated_scan(compiled_signals, [app, proxy_log(T0, ready_after=90)], namespace="shop", pod=POD)
    [incident] = gated(found)
    assert incident.rule.id == "app-started-before-proxy"
    assert incident.interval.count == 3 and incident.note is None
    assert incident.interval.key.workload == "shop"
    assert (gate.applied, gate.dropped, sum(gate.ungated.values())) == (3, 0, 0)


def test_refused_long_after_a_ready_proxy_is_not_this_problem(
    compiled_signals: tuple[Catalogue, CompiledCatalogue],
) -> None:
    app = [kubectl_ts(T0 + s, REFUSED_GO) for s in (600, 610, 620)]
    found, gate = gated_scan(compiled_signals, [proxy_log(T0, ready_after=4), app], namespace="shop", pod=POD)
    assert gated(found) == []
    assert (gate.applied, gate.dropped) == (0, 3)


def test_start_window_counts_and_later_lines_do_not(compiled_signals: tuple[Catalogue, CompiledCatalogue]) -> None:
    app = [kubectl_ts(T0 + s, REFUSED_GO) for s in (1, 3, 59, 61, 300)]
    found, gate = gated_scan(compiled_signals, [proxy_log(T0, ready_after=2), app], namespace="shop", pod=POD)
    [incident] = gated(found)
    assert incident.interval.count == 3
    assert incident.interval.last_seen == T0 + 59
    assert gate.dropped == 2


def test_draining_proxy_closes_the_gate(compiled_signals: tuple[Catalogue, CompiledCatalogue]) -> None:
    proxy = [
        *proxy_log(T0, ready_after=3),
        pilot_agent(T0 + 900, "Agent draining Proxy for termination"),
        pilot_agent(T0 + 901, "Envoy proxy is NOT ready: server is terminated: received signal: terminated", "warn"),
    ]
    app = [kubectl_ts(T0 + 902 + s, REFUSED_JAVA) for s in range(5)]
    found, gate = gated_scan(compiled_signals, [proxy, app], namespace="shop", pod=POD)
    assert gated(found) == [] and gate.dropped == 5


def test_app_log_alone_rests_on_the_line_rule_and_says_so(
    compiled_signals: tuple[Catalogue, CompiledCatalogue],
) -> None:
    app = [kubectl_ts(T0 + s, REFUSED_JAVA) for s in (600, 610)]
    # no pod metadata at all (a plain `kubectl logs -c app` file)
    found, gate = gated_scan(compiled_signals, [app])
    [incident] = gated(found)
    assert incident.interval.count == 2
    assert incident.ungated == ((NO_POD, 2),)
    assert incident.note is not None and "no pod metadata: 2" in incident.note
    notes = gate_notes(gate)
    assert "could not be applied to 2 matching lines" in notes[0]
    assert "--prefix --timestamps" in notes[-1] and "stern" in notes[-1] and "--pod POD" in notes[-1]
    # a pod named, but its istio-proxy lines are not in the input
    found, gate = gated_scan(compiled_signals, [app], namespace="shop", pod=POD)
    [incident] = gated(found)
    assert incident.ungated == ((NO_PROXY, 2),)
    assert gate.pods == {f"shop/{POD}"}
    assert any(POD in note for note in gate_notes(gate))


def test_lines_without_their_own_time_are_not_judged_by_a_neighbours_time(
    compiled_signals: tuple[Catalogue, CompiledCatalogue],
) -> None:
    # A Java app's log without --timestamps: its lines carry no zone-qualified time of their own.
    app = ["2024-05-01 08:10:00.123 ERROR 1 --- [main] c.e.Shop : " + REFUSED_JAVA]
    found, gate = gated_scan(compiled_signals, [proxy_log(T0, ready_after=3), app], namespace="shop", pod=POD)
    [incident] = gated(found)
    assert incident.ungated == ((NO_TIME, 1),)
    assert gate.ungated == {NO_TIME: 1}


def test_without_signals_compiled_every_gated_match_counts(compiled: tuple[Catalogue, CompiledCatalogue]) -> None:
    catalogue, db = compiled  # the `match` command's database: no readiness signals
    lines = [line.encode() for line in proxy_log(T0, ready_after=3)] + [kubectl_ts(T0 + 600, REFUSED_GO).encode()]
    [incident] = gated(scan(catalogue, db, [lines], metadata=Metadata(namespace="shop", pod=POD)).incidents)
    assert incident.ungated == ((NO_PROXY, 1),)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("[pod/shop-5c8b7d9f4-x2x9k/istio-proxy] 2024-05-01T08:00:00.000000Z\tinfo\tx", (None, POD, "istio-proxy")),
        (f"{POD} shop 2024-05-01T08:00:00.123456789Z java.net.ConnectException: x", (None, POD, "shop")),
        (f"prod {POD} shop 2024-05-01T10:00:00.123456789+02:00 x", ("prod", POD, "shop")),
        ("shop 2024-05-01T08:00:00Z one name only", None),
        ("Connection refused: payments/10.96.14.7:8443 2024-05-01T08:00:00Z", None),
        ('[2024-05-01T08:00:00.000Z] "GET / HTTP/1.1" 503', None),
    ],
)
def test_named_source(line: str, expected: tuple[str | None, str, str] | None) -> None:
    named = named_source(line.encode())
    assert (named[:3] if named else None) == expected


def test_kubectl_prefix_and_stern_streams_feed_the_gate(compiled_signals: tuple[Catalogue, CompiledCatalogue]) -> None:
    proxy = [f"[pod/{POD}/istio-proxy] {kubectl_ts(time_of(line), line)}" for line in proxy_log(T0, ready_after=90)]
    app = [
        f"[pod/{POD}/shop] {kubectl_ts(T0 + 80, REFUSED_JAVA)}",
        f"[pod/{POD}/shop] {kubectl_ts(T0 + 500, REFUSED_JAVA)}",
    ]
    found, gate = gated_scan(compiled_signals, [sorted(proxy + app)])
    [incident] = gated(found)
    assert incident.interval.count == 1 and incident.note is None
    assert incident.interval.pods == (POD,)
    assert (gate.applied, gate.dropped) == (1, 1)
    stern = [f"shop {POD} istio-proxy {kubectl_ts(time_of(line), line)}" for line in proxy_log(T0, ready_after=90)]
    stern += [
        f"shop {POD} shop {kubectl_ts(T0 + 80, REFUSED_GO)}",
        f"shop {POD} shop {kubectl_ts(T0 + 500, REFUSED_GO)}",
    ]
    found, gate = gated_scan(compiled_signals, [stern])
    [incident] = gated(found)
    assert incident.interval.key.namespace == "shop" and incident.interval.count == 1
    assert (gate.applied, gate.dropped) == (1, 1)


def test_scan_gates_exactly_as_the_pipeline(compiled_signals: tuple[Catalogue, CompiledCatalogue]) -> None:
    """Fluent Bit records of several pods, shuffled: scan and one pipeline batch keep the same occurrences."""
    catalogue, db = compiled_signals
    rng = random.Random(7)
    records: list[tuple[float, bytes]] = []

    def record(t: float, pod: str, container: str, line: str) -> None:
        k8s = {"namespace_name": "shop", "pod_name": pod, "container_name": container}
        records.append((t, json.dumps({"@timestamp": t, "log": line + "\n", "kubernetes": k8s}).encode()))

    for n in range(12):
        pod, start = f"shop-5c8b7d9f4-p{n:04d}", T0 + n * 400
        ready_after = rng.choice([2, 30, 90, None])
        for line in proxy_log(start, ready_after):
            record(time_of(line), pod, "istio-proxy", line)
        for _ in range(6):
            t = start + rng.choice([1, 20, 59, 61, 85, 200, 350])
            record(
                t,
                pod,
                "shop",
                kubectl_ts(t, rng.choice([REFUSED_GO, REFUSED_JAVA, "Error: connect ECONNREFUSED 10.96.2.2:80"])),
            )
        if rng.random() < 0.3:
            record(start + 380, pod, "istio-proxy", pilot_agent(start + 380, "Agent draining Proxy for termination"))
            record(start + 381, pod, "shop", kubectl_ts(start + 381, REFUSED_GO))
    rng.shuffle(records)

    pipeline = Pipeline(catalogue, db, default_cluster="-")
    result = pipeline([value for _, value in records], [t for t, _ in records])
    piped = sorted(
        (i.rule_id, i.key.workload, i.first_seen, i.last_seen, i.count)
        for i in result.intervals
        if i.rule_id in GATED_RULES
    )
    result = scan(catalogue, db, [[value for _, value in records]])
    scanned = sorted(
        (i.rule.id, i.interval.key.workload, i.interval.first_seen, i.interval.last_seen, i.interval.count)
        for i in gated(result.incidents)
    )
    assert piped == scanned
    assert result.stats.gate.applied > 0 and result.stats.gate.dropped > 0
    assert not result.stats.gate.ungated
