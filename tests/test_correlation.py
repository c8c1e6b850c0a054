"""'App started before proxy': signal expressions and the per-pod readiness gate."""

from __future__ import annotations

import re

import hyperscan
import pytest

from analyzer.correlation import (
    PROXY_DRAINING,
    PROXY_NOT_READY,
    PROXY_READY,
    PROXY_STARTING,
    SIGNALS,
    ProxyReadiness,
)
from analyzer.types import LogRecord

T0 = 1_700_000_000.0

# Real pilot-agent lines (istio/istio issues, docs and the shared corpus) and the signal each must raise.
SIGNAL_LINES = [
    # corpus pilot-agent-ready, istio/istio#14205
    ("2019-09-28T15:47:21.548349Z\tinfo\tEnvoy proxy is ready", PROXY_READY),
    # corpus pilot-agent-ready, istio/istio#41793
    ("2022-11-04T15:00:25.084600Z     info    Readiness succeeded in 1h4m56.259455577s", PROXY_READY),
    # corpus pilot-agent-not-ready, istio/istio#13939
    (
        "2019-05-10T04:50:36.780795Z\tinfo\tEnvoy proxy is NOT ready: config not received from Pilot (is Pilot "
        "running?): cds updates: 1 successful, 0 rejected; lds updates: 0 successful, 0 rejected",
        PROXY_NOT_READY,
    ),
    # corpus pilot-agent-not-ready-legacy, istio/istio#9504
    (
        "2019-03-01T01:06:51.801715Z\tinfo\tEnvoy proxy is NOT ready: cds updates: 0 successful, 0 rejected; "
        "lds updates: 0 successful, 0 rejected",
        PROXY_NOT_READY,
    ),
    # corpus pilot-agent-startup-flags, istio/istio#29109 (kubectl --timestamps prefix)
    ('2020-11-22T19:32:17.857583542Z 2020-11-22T19:32:17.857430Z\tinfo\tFLAG: --concurrency="2"', PROXY_STARTING),
    # corpus istiod-json-startup (log_as_json)
    ('{"level":"info","time":"2023-05-10T17:43:55.356647Z","msg":"FLAG: --log_as_json=\\"true\\""}', PROXY_STARTING),
    # corpus pilot-agent-startup, istio/istio#33813
    (
        "2021-07-11T20:50:49.662161Z     info    xdsproxy        Initializing with upstream address "
        '"istiod.istio-system.svc:15012" and cluster "Kubernetes"',
        PROXY_STARTING,
    ),
    # istio-proxy start-up, Istio 1.25
    (
        "2025-04-16T18:06:17.864394Z\tinfo\tVersion 1.25.2-0d83506c28834f5f12553ee11d76a18e7ea75f20-Clean",
        PROXY_STARTING,
    ),
    ("2025-04-16T18:06:17.869755Z\tinfo\tOpening status port 15020", PROXY_STARTING),
    ("2025-04-16T18:06:17.877227Z\tinfo\tStarting proxy agent", PROXY_STARTING),
    (
        "2025-04-16T18:06:17.877316Z\tinfo\tEnvoy command: [-c etc/istio/proxy/envoy-rev.json --drain-time-s 45]",
        PROXY_STARTING,
    ),
    # istio-proxy termination
    ("2025-01-06T15:53:11.767874Z     info    Agent draining Proxy for termination", PROXY_DRAINING),
    ("2025-01-06T15:53:11.769427Z     info    Graceful termination period is 30s, starting...", PROXY_DRAINING),
]

NO_SIGNAL_LINES = [
    # app and proxy lines that must not move readiness
    "Error: failed to create connection to feature-store redis, err=dial tcp   192.168.9.16:19209: connect: "
    "connection refused",
    '[2021-03-26T00:01:25.979Z] "GET /.env HTTP/1.1" 404 NR route_not_found - "-" 0 0 0 - "100.117.94.128" '
    '"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Version/14.0 Safari/537.36"',
    "2020-11-30T07:45:55.382650Z     info    sds     node:router~172.18.40.10~istio-ingressgateway-76d59b8f49-qsvp6"
    ".istio-system~istio-system.svc.cluster.local-1 resource:ROOTCA new connection",
    "2019-12-16T22:21:40.052199Z\twarn\tvalidation\tistio-system/istio-galley endpoint not ready: no subsets",
]


def hyperscan_signals(line: str) -> set[str]:
    ids = list(SIGNALS)
    db = hyperscan.Database()
    db.compile(
        expressions=[SIGNALS[i].pattern.encode() for i in ids],
        ids=list(range(len(ids))),
        flags=[hyperscan.HS_FLAG_MULTILINE] * len(ids),
    )
    found: set[str] = set()

    def on_match(expr_id: int, start: int, end: int, flags: int, context: object) -> None:
        found.add(ids[expr_id])

    db.scan(line.encode(), match_event_handler=on_match)
    return found


def re_signals(line: str) -> set[str]:
    return {sid for sid, e in SIGNALS.items() if re.search(e.pattern, line, re.MULTILINE)}


@pytest.mark.parametrize(("line", "signal"), SIGNAL_LINES)
def test_signal_lines_raise_exactly_their_signal(line: str, signal: str) -> None:
    assert re_signals(line) == {signal}
    assert hyperscan_signals(line) == {signal}


@pytest.mark.parametrize("line", NO_SIGNAL_LINES)
def test_other_lines_raise_no_signal(line: str) -> None:
    assert re_signals(line) == set()
    assert hyperscan_signals(line) == set()


def test_signal_ids_are_internal() -> None:
    assert all(sid.startswith("signal:") for sid in SIGNALS)


# --- the readiness gate ------------------------------------------------------------------------------


POD = "reviews-v3-56997446d9-bp6m5"


def proxy(t: float, pod: str = POD, namespace: str = "bookinfo") -> LogRecord:
    return LogRecord(b"pilot-agent line", time=t, namespace=namespace, pod=pod, container="istio-proxy")


def app(t: float, pod: str = POD, namespace: str = "bookinfo") -> LogRecord:
    return LogRecord(b"connect: connection refused", time=t, namespace=namespace, pod=pod, container="reviews")


def admitted(gate: ProxyReadiness, t: float, **kw: str) -> bool:
    return gate.admits(app(t, **kw), t)


def signal(gate: ProxyReadiness, signal_id: str, t: float, **kw: str) -> None:
    gate.observe_signal(signal_id, proxy(t, **kw), t)


def test_lines_in_the_start_window_count_even_with_a_ready_proxy() -> None:
    gate = ProxyReadiness(startup_window=60)
    signal(gate, PROXY_STARTING, T0)
    signal(gate, PROXY_READY, T0 + 2)
    assert admitted(gate, T0 + 1)
    assert admitted(gate, T0 + 60)
    assert not admitted(gate, T0 + 61)


def test_ready_long_after_start_does_not_count() -> None:
    gate = ProxyReadiness(startup_window=60)
    signal(gate, PROXY_STARTING, T0)
    signal(gate, PROXY_READY, T0 + 5)
    assert not admitted(gate, T0 + 600)


def test_not_ready_counts_until_ready_again() -> None:
    gate = ProxyReadiness(startup_window=60)
    signal(gate, PROXY_STARTING, T0)
    signal(gate, PROXY_NOT_READY, T0 + 100)  # never became ready yet
    assert admitted(gate, T0 + 120)
    signal(gate, PROXY_READY, T0 + 130)
    assert not admitted(gate, T0 + 140)
    signal(gate, PROXY_NOT_READY, T0 + 500)  # lost its config later on
    assert admitted(gate, T0 + 510)
    signal(gate, PROXY_READY, T0 + 520)
    assert not admitted(gate, T0 + 530)


def test_a_line_before_the_proxy_became_ready_counts() -> None:
    # The ready signal arrived in an earlier batch but happened after the app line.
    gate = ProxyReadiness(startup_window=60)
    signal(gate, PROXY_STARTING, T0)
    signal(gate, PROXY_READY, T0 + 300)
    assert admitted(gate, T0 + 200)
    assert not admitted(gate, T0 + 301)


def test_proxy_restart_reopens_the_gate() -> None:
    gate = ProxyReadiness(startup_window=60)
    signal(gate, PROXY_STARTING, T0)
    signal(gate, PROXY_READY, T0 + 5)
    signal(gate, PROXY_STARTING, T0 + 1000)  # istio-proxy container restarted
    assert admitted(gate, T0 + 1010)
    signal(gate, PROXY_READY, T0 + 1020)
    assert not admitted(gate, T0 + 1030)


def test_termination_is_not_start_up() -> None:
    gate = ProxyReadiness(startup_window=60)
    signal(gate, PROXY_STARTING, T0)
    signal(gate, PROXY_READY, T0 + 5)
    signal(gate, PROXY_DRAINING, T0 + 1000)
    signal(gate, PROXY_NOT_READY, T0 + 1020)  # "NOT ready: server is terminated"
    assert not admitted(gate, T0 + 1025)


def test_a_recreated_pod_of_the_same_name_starts_again() -> None:
    # StatefulSet pods come back under the same name after termination.
    gate = ProxyReadiness(startup_window=60)
    signal(gate, PROXY_STARTING, T0, pod="web-0")
    signal(gate, PROXY_READY, T0 + 5, pod="web-0")
    signal(gate, PROXY_DRAINING, T0 + 1000, pod="web-0")
    signal(gate, PROXY_STARTING, T0 + 2000, pod="web-0")
    assert admitted(gate, T0 + 2010, pod="web-0")
    signal(gate, PROXY_READY, T0 + 2020, pod="web-0")
    assert not admitted(gate, T0 + 2030, pod="web-0")


def test_no_pod_metadata_is_the_line_rule_alone() -> None:
    gate = ProxyReadiness()
    signal(gate, PROXY_READY, T0)
    assert gate.admits(LogRecord(b"connect: connection refused", time=T0 + 9999), T0 + 9999)
    assert len(gate) == 1  # the bare record kept no state


def test_unknown_readiness_counts() -> None:
    gate = ProxyReadiness(startup_window=60)
    assert admitted(gate, T0)  # first line of the pod: its start
    assert admitted(gate, T0 + 300)  # nothing says the proxy was ever ready
    signal(gate, PROXY_READY, T0 + 310)
    assert not admitted(gate, T0 + 320)


def test_app_lines_date_the_pod_but_only_the_proxy_reports_readiness() -> None:
    gate = ProxyReadiness(startup_window=60)
    gate.observe_signal(PROXY_STARTING, app(T0), T0)  # an app printing "Version 2.1.0" dates the pod only
    gate.observe_signal(PROXY_READY, app(T0 + 5), T0 + 5)  # not the proxy's own line
    assert admitted(gate, T0 + 30)
    assert admitted(gate, T0 + 600)
    # no container metadata: trusted as the proxy's line
    gate.observe_signal(PROXY_READY, LogRecord(b"Envoy proxy is ready", pod=POD, namespace="bookinfo"), T0 + 610)
    assert not admitted(gate, T0 + 620)


def test_pods_are_independent() -> None:
    gate = ProxyReadiness(startup_window=60)
    signal(gate, PROXY_STARTING, T0)
    signal(gate, PROXY_READY, T0 + 5)
    assert not admitted(gate, T0 + 600)
    assert admitted(gate, T0 + 600, pod="reviews-v3-56997446d9-zzzzz")  # another pod, just started
    assert admitted(gate, T0 + 600, namespace="other")  # same pod name, other namespace


def test_evict_forgets_pods_not_seen_for_the_ttl() -> None:
    gate = ProxyReadiness(startup_window=60, state_ttl=900)
    signal(gate, PROXY_STARTING, T0)
    signal(gate, PROXY_READY, T0 + 5)
    signal(gate, PROXY_STARTING, T0 + 500, pod="web-0")
    assert gate.evict(T0 + 905) == 0
    assert gate.evict(T0 + 906) == 1
    assert len(gate) == 1
    # forgotten: its readiness is unknown again, so the line rule alone decides
    assert admitted(gate, T0 + 1000)
    assert gate.evict(T0 + 1401) == 1  # web-0 last seen at T0+500
    assert gate.evict(T0 + 1901) == 1  # the re-learned pod, last seen at T0+1000
    assert len(gate) == 0
