"""'App started before proxy': signal expressions and the per-pod readiness gate."""

from __future__ import annotations

import re

import hyperscan
import pytest

from analyzer.catalogue import load_catalogue
from analyzer.correlation import (
    GATED_RULE,
    GATED_RULES,
    PROXY_DRAINING,
    PROXY_NOT_READY,
    PROXY_READY,
    PROXY_STARTING,
    SIGNALS,
    ProxyReadiness,
)
from analyzer.match import Matcher, compile_catalogue
from analyzer.types import LogRecord, Rule
from tests.conftest import PATTERNS

T0 = 1_700_000_000.0

# Real pilot-agent lines (istio/istio issues, docs and the shared corpus), and lines written from the call sites at
# 1.30.3 (pilot/cmd/pilot-agent/status/server.go, metrics/metrics.go, app/wait.go, pkg/envoy/agent.go, pkg/cmd)
# and older tags (1.6-1.9 epoch lines), with the signals each must raise.
SIGNAL_LINES: list[tuple[str, set[str]]] = [
    # corpus pilot-agent-ready, istio/istio#14205
    ("2019-09-28T15:47:21.548349Z\tinfo\tEnvoy proxy is ready", {PROXY_READY}),
    # corpus pilot-agent-ready, istio/istio#41793
    ("2022-11-04T15:00:25.084600Z     info    Readiness succeeded in 1h4m56.259455577s", {PROXY_READY}),
    (
        '{"level":"info","time":"2025-04-16T18:06:19.101010Z","msg":"Readiness succeeded in 1.236789012s"}',
        {PROXY_READY},
    ),
    # `pilot-agent wait` (app/wait.go)
    ("2025-04-16T18:06:19.200000Z\tinfo\tEnvoy is ready!", {PROXY_READY}),
    # corpus pilot-agent-not-ready, istio/istio#13939
    (
        "2019-05-10T04:50:36.780795Z\tinfo\tEnvoy proxy is NOT ready: config not received from Pilot (is Pilot "
        "running?): cds updates: 1 successful, 0 rejected; lds updates: 0 successful, 0 rejected",
        {PROXY_NOT_READY},
    ),
    # corpus pilot-agent-not-ready-legacy, istio/istio#9504
    (
        "2019-03-01T01:06:51.801715Z\tinfo\tEnvoy proxy is NOT ready: cds updates: 0 successful, 0 rejected; "
        "lds updates: 0 successful, 0 rejected",
        {PROXY_NOT_READY},
    ),
    # 1.30 (warn level; ready/probe.go messages)
    (
        "2025-04-16T18:06:18.301010Z\twarn\tEnvoy proxy is NOT ready: config not received from XDS server (is Istiod "
        "running?): cds updates: 0 successful, 0 rejected; lds updates: 0 successful, 0 rejected",
        {PROXY_NOT_READY},
    ),
    (
        "2025-04-16T18:06:18.401010Z\twarn\tEnvoy proxy is NOT ready: server is not live, current state is: "
        "PRE_INITIALIZING",
        {PROXY_NOT_READY},
    ),
    (
        '{"level":"warn","time":"2025-04-16T18:06:18.5Z",'
        '"msg":"Envoy proxy is NOT ready: workers have not yet started"}',
        {PROXY_NOT_READY},
    ),
    # corpus pilot-agent-startup-flags, istio/istio#29109 (kubectl --timestamps prefix): one line per flag, no
    # signal of its own (the "Version" line that follows it in the same function dates the start)
    ('2020-11-22T19:32:17.857583542Z 2020-11-22T19:32:17.857430Z\tinfo\tFLAG: --concurrency="2"', set()),
    # corpus istiod-json-startup (log_as_json)
    ('{"level":"info","time":"2023-05-10T17:43:55.356647Z","msg":"FLAG: --log_as_json=\\"true\\""}', set()),
    # corpus pilot-agent-startup, istio/istio#33813
    (
        "2021-07-11T20:50:49.662161Z     info    xdsproxy        Initializing with upstream address "
        '"istiod.istio-system.svc:15012" and cluster "Kubernetes"',
        {PROXY_STARTING},
    ),
    # istio-proxy start-up, Istio 1.25 and an ASM build
    (
        "2025-04-16T18:06:17.864394Z\tinfo\tVersion 1.25.2-0d83506c28834f5f12553ee11d76a18e7ea75f20-Clean",
        {PROXY_STARTING},
    ),
    (
        "2024-02-01T09:00:00.000000Z\tinfo\tVersion 1.20.3-asm.8-6c8a5e2b0f4d3c2b1a09f8e7d6c5b4a3f2e1d0c9-Clean",
        {PROXY_STARTING},
    ),
    ("2025-04-16T18:06:17.869755Z\tinfo\tOpening status port 15020", {PROXY_STARTING}),
    ("2025-04-16T18:06:17.877227Z\tinfo\tStarting proxy agent", {PROXY_STARTING}),
    (
        "2025-04-16T18:06:17.877316Z\tinfo\tEnvoy command: [-c etc/istio/proxy/envoy-rev.json --drain-time-s 45]",
        {PROXY_STARTING},
    ),
    (
        "2025-04-16T18:06:17.800000Z\tinfo\tWaiting for Envoy proxy to be ready (timeout: 60 seconds)...",
        {PROXY_STARTING},
    ),
    # Istio 1.6-1.9 agent
    ("2020-06-01T10:00:00.000000Z\tinfo\tEpoch 0 starting", {PROXY_STARTING}),
    ("2020-06-01T10:00:00.000000Z\tinfo\tReceived new config, creating new Envoy epoch 0", {PROXY_STARTING}),
    # istio-proxy termination: SIGTERM, native sidecars' /drain, /quitquitquit, the probe after cancellation
    ("2025-01-06T15:53:11.767874Z     info    Agent draining Proxy for termination", {PROXY_DRAINING}),
    ("2025-01-06T15:53:11.769427Z     info    Graceful termination period is 30s, starting...", {PROXY_DRAINING}),
    ("2025-01-06T15:53:11.700000Z\tinfo\thandling /drain, starting drain", {PROXY_DRAINING}),
    ("2025-01-06T15:53:11.700001Z\tinfo\tAgent draining proxy", {PROXY_DRAINING}),
    (
        "2025-01-06T15:53:11.700002Z\tinfo\tAgent draining proxy for 5s, then waiting for active connections to "
        "terminate...",
        {PROXY_DRAINING},
    ),
    ("2025-01-06T15:53:11.700003Z\tinfo\thandling /quitquitquit, notifying pilot-agent to exit", {PROXY_DRAINING}),
    (
        "2025-01-06T15:53:12.000000Z\twarn\tEnvoy proxy is NOT ready: server is terminated: received signal: "
        "terminated",
        {PROXY_NOT_READY, PROXY_DRAINING},
    ),
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
    # an app's own version line, a hot restart of the old agent, an xDS reconnect: none is a (re)start
    "2024-05-01 12:00:00.000  INFO 1 --- [main] c.e.Application : Version 2.1.0 starting",
    "2020-06-01T12:00:00.000000Z\tinfo\tEpoch 1 starting",
    "2025-04-16T18:36:17.000000Z\tinfo\txdsproxy\tconnected to upstream XDS server: istiod.istio-system.svc:15012",
    "2025-04-16T18:06:17.900000Z\tinfo\tAgent has successfully terminated",
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


@pytest.mark.parametrize(("line", "signals"), SIGNAL_LINES)
def test_signal_lines_raise_exactly_their_signals(line: str, signals: set[str]) -> None:
    assert re_signals(line) == signals
    assert hyperscan_signals(line) == signals


def test_every_signal_has_a_line() -> None:
    assert set().union(*(signals for _, signals in SIGNAL_LINES)) == set(SIGNALS)


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
    assert len(gate) == 1 and gate.settled == 1
    # forgotten, but remembered as ready: hours later its refusals are some other problem, not a start
    assert not admitted(gate, T0 + 5000)
    assert gate.settled == 0 and len(gate) == 2  # restored (web-0 was never forgotten)
    assert gate.evict(T0 + 5000 + 901) == 2  # web-0 (never ready: not remembered) and the re-learned pod
    assert len(gate) == 0 and gate.settled == 1
    # a pod never seen ready is forgotten whole: the line rule alone decides again
    assert admitted(gate, T0 + 9000, pod="web-0")
    # the remembered pod restarting its proxy counts again
    signal(gate, PROXY_STARTING, T0 + 9000)
    assert admitted(gate, T0 + 9010)


def test_settled_pods_are_bounded() -> None:
    gate = ProxyReadiness(startup_window=60, state_ttl=900, max_settled=2)
    for n in range(3):
        signal(gate, PROXY_READY, T0 + n, pod=f"p-{n}")
    assert gate.evict(T0 + 2000) == 3
    assert gate.settled == 2
    assert admitted(gate, T0 + 3000, pod="p-0")  # the oldest was dropped: unknown again
    assert not admitted(gate, T0 + 3000, pod="p-2")


def test_a_draining_pod_is_not_remembered() -> None:
    gate = ProxyReadiness(startup_window=60, state_ttl=900)
    signal(gate, PROXY_READY, T0)
    signal(gate, PROXY_DRAINING, T0 + 100)
    assert gate.evict(T0 + 2000) == 1
    assert gate.settled == 0


def test_the_terminated_probe_line_alone_closes_the_gate() -> None:
    # "Envoy proxy is NOT ready: server is terminated" raises not-ready and draining at once: draining wins.
    gate = ProxyReadiness(startup_window=60)
    signal(gate, PROXY_STARTING, T0)
    signal(gate, PROXY_READY, T0 + 5)
    signal(gate, PROXY_NOT_READY, T0 + 1000)
    signal(gate, PROXY_DRAINING, T0 + 1000)
    assert not admitted(gate, T0 + 1001)


def test_knows_only_pods_with_proxy_signals() -> None:
    gate = ProxyReadiness(startup_window=60)
    assert not gate.knows(app(T0))
    assert admitted(gate, T0)  # an app line dates the pod, but says nothing about its proxy
    assert not gate.knows(app(T0))
    gate.observe_signal(PROXY_STARTING, app(T0 + 1), T0 + 1)  # nor does an app line that looks like a signal
    assert not gate.knows(app(T0))
    signal(gate, PROXY_NOT_READY, T0 + 2)
    assert gate.knows(app(T0))
    assert not gate.knows(LogRecord(b"x", time=T0))  # no pod metadata
    assert not gate.knows(app(T0, pod="other-0"))


# --- the expressions of the gated rules, as the service runs them ---------------------------------------


Service = tuple[Matcher, dict[str, Rule]]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Service:
    catalogue = load_catalogue(PATTERNS)
    compiled = compile_catalogue(catalogue, SIGNALS, cache_dir=tmp_path_factory.mktemp("hs"))
    return Matcher(compiled), catalogue.by_id()


def applying(service: Service, line: str, container: str | None = "app") -> set[str]:
    """Rule ids (and signals) the service keeps for ``line`` from ``container``: match, exclude, component."""
    matcher, rules = service
    return {
        owner for owner in matcher.one(line.encode()) if owner in SIGNALS or rules[owner].applies_to(container, "shop")
    }


# Connection-refused lines in the forms applications print (written from each client's error format, with
# realistic values; none is copied from the rule's own examples), one or more per runtime.
APP_REFUSED = [
    # Go: "Failed to ...: dial tcp", net/http with any prefix, logrus/zap fields, grpc-go, dial tcp4
    "2024/05/01 12:00:00 main.go:57: Failed to connect to payments: dial tcp 10.96.14.7:8080: connect: "
    "connection refused",
    'time="2024-05-01T12:00:00Z" level=fatal msg="unable to start" error="Get \\"http://inventory.shop.svc.cluster.local'
    ':8080/healthz\\": dial tcp 10.96.3.9:8080: connect: connection refused"',
    'checkout: Post "http://cart:8080/v1/carts": dial tcp 10.96.2.2:8080: connect: connection refused',
    '{"severity":"ERROR","message":"rpc error: code = Unavailable desc = connection error: desc = \\"transport: '
    'Error while dialing: dial tcp 10.96.40.12:50051: connect: connection refused\\""}',
    "redis: dial tcp4 10.96.0.42:6379: connect: connection refused",
    # JVM
    "2024-05-01 12:00:00.123 ERROR 1 --- [main] o.s.boot.SpringApplication : Application run failed "
    "java.net.ConnectException: Connection refused",
    "Caused by: io.netty.channel.AbstractChannel$AnnotatedConnectException: finishConnect(..) failed: Connection "
    "refused: orders/10.96.8.3:8080",
    "java.net.ConnectException: Failed to connect to inventory/10.96.3.9:8080",
    "Connection refused: payments/10.96.14.7:8443",
    # Node.js
    "MongoServerSelectionError: connect ECONNREFUSED 10.96.9.9:27017",
    '{"level":50,"msg":"request failed","err":{"type":"FetchError","message":"request to http://cart:8080/ failed, '
    'reason: connect ECONNREFUSED 10.96.2.2:8080","code":"ECONNREFUSED"}}',
    # Python
    "urllib3.exceptions.NewConnectionError: <urllib3.connection.HTTPConnection object at 0x7f3a>: Failed to "
    "establish a new connection: [Errno 111] Connection refused",
    'sqlalchemy.exc.OperationalError: (psycopg2.OperationalError) connection to server at "orders-db" (10.96.20.5), '
    "port 5432 failed: Connection refused",
    "ConnectionRefusedError: [Errno 111] Connect call failed ('10.96.20.5', 5432)",
    # .NET
    "fail: Shop.Api.CatalogClient[0] System.Net.Http.HttpRequestException: Connection refused (inventory:8080)",
    "System.Net.Sockets.SocketException (111): Connection refused",
    # gRPC clients
    "io.grpc.StatusRuntimeException: UNAVAILABLE: Connection refused: reviews/10.96.112.4:9080",
    "Error: 14 UNAVAILABLE: No connection established",
    '<_InactiveRpcError of RPC that terminated with: status = StatusCode.UNAVAILABLE details = "failed to connect to '
    "all addresses; last error: UNKNOWN: ipv4:10.96.40.12:50051: Failed to connect to remote host: Connection "
    'refused">',
    # curl, Ruby, Rust
    "curl: (7) Failed to connect to 10.96.5.5 port 80 after 1 ms: Connection refused",
    "Errno::ECONNREFUSED (Connection refused - connect(2) for 10.96.1.2:6379)",
    'Error: reqwest::Error { kind: Request, source: hyper::Error(Connect, ConnectError("tcp connect error", Os { '
    'code: 111, kind: ConnectionRefused, message: "Connection refused" })) }',
    "thread 'main' panicked at src/main.rs:12:5: Connection refused (os error 111)",
]

# Near misses: never this problem, whatever the proxy's state (the line, or its container, says so).
NOT_APP_REFUSED: list[tuple[str, str | None]] = [
    # Istio's own lines, with no metadata (a pasted file) and with their container
    (
        "2024-05-01T12:00:00.123456Z\twarn\tsds\tfailed to warm certificate: rpc error: code = Unavailable desc = "
        'connection error: desc = "transport: Error while dialing: dial tcp 10.96.5.5:15012: connect: connection '
        'refused"',
        None,
    ),
    (
        '2024-05-01T12:00:00.123456Z\terror\tklog\tfailed to list *v1.Service: Get "https://10.96.0.1:443/api/v1/'
        'services": dial tcp 10.96.0.1:443: connect: connection refused',
        "discovery",
    ),
    ("Error: connect ECONNREFUSED 10.96.5.5:15012", "istio-proxy"),
    # Envoy's own lines (legacy and Istio format) and its JSON application log
    (
        "[2024-05-01 12:00:00.123][21][warning][config] [./source/common/config/grpc_stream.h:191] "
        "StreamAggregatedResources gRPC config stream to xds-grpc closed: 14, connection refused",
        None,
    ),
    (
        '{"time":"2024-05-01T12:00:00.123456Z","level":"warning","scope":"envoy upstream","msg":"connection refused '
        'by 10.96.5.5:80","caller":"external/envoy/source/common/upstream/upstream_impl.cc:123","thread":"21"}',
        None,
    ),
    # ztunnel
    (
        '2024-05-01T12:00:00.123456Z\twarn\taccess\tconnection complete\tsrc.addr=10.244.1.8:41234 error="connection '
        'failed: Connection refused (os error 111)"',
        None,
    ),
    # the app relays a running sidecar's answer: the destination refused
    (
        "Error: 14 UNAVAILABLE: upstream connect error or disconnect/reset before headers. reset reason: remote "
        "connection failure, transport failure reason: delayed connect error: Connection refused",
        "app",
    ),
    # loopback, unix socket, UDP, DNS (the DNS rule's)
    ("redis.exceptions.ConnectionError: Error 111 connecting to localhost:6379. Connection refused.", "app"),
    ("dial tcp [::1]:5432: connect: connection refused", "app"),
    ('psycopg2.OperationalError: connection to server at "127.0.0.1", port 5432 failed: Connection refused', "app"),
    ("dial unix /var/run/dapr.sock: connect: connection refused", "app"),
    ("statsd: write udp 10.1.0.8:41234->10.0.0.12:8125: write: connection refused", "app"),
    (
        "lookup orders-db on 10.96.0.10:53: read udp 10.1.0.8:51077->10.96.0.10:53: read: connection refused",
        "app",
    ),
    # a Kubernetes event about the app container (canonical event text) and a `kubectl describe` row
    (
        "Warning\tUnhealthy\tPod/shop-5c8b7d9f4-x2x9k/spec.containers{shop}\tStartup probe failed: dial tcp "
        "10.1.0.8:8080: connect: connection refused",
        "shop",
    ),
    (
        '  Warning  Failed     12s   kubelet  Failed to pull image "registry.local:5000/shop:1": rpc error: dial tcp '
        "10.0.0.5:5000: connect: connection refused",
        None,
    ),
]


@pytest.mark.parametrize("line", APP_REFUSED)
def test_app_refused_forms_raise_the_gated_rule(service: Service, line: str) -> None:
    kept = applying(service, line)
    assert GATED_RULE in kept
    assert "app-dns-refused-before-proxy" not in kept
    assert not kept & set(SIGNALS)


@pytest.mark.parametrize(("line", "container"), NOT_APP_REFUSED)
def test_refused_lines_that_are_not_the_app_starting_early(service: Service, line: str, container: str | None) -> None:
    assert GATED_RULE not in applying(service, line, container)


def test_dns_refusals_are_the_dns_rule_only(service: Service) -> None:
    for line in (
        "lookup orders-db on 10.96.0.10:53: read udp 10.1.0.8:51077->10.96.0.10:53: read: connection refused",
        "Error: queryAaaa ECONNREFUSED orders-db.shop.svc.cluster.local",
    ):
        assert applying(service, line) & GATED_RULES == {"app-dns-refused-before-proxy"}
