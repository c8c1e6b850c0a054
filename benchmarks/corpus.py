"""A seeded, realistic Istio log corpus: plain container lines and the Fluent Bit records that carry them.

The background is what a mesh prints in steady state: Envoy access logs from istio-proxy in Istio's TEXT
and JSON formats (reference §2.1/§2.2; mostly 200s, response flags mostly ``-``), istiod ``ads``/``klog``/
``model`` info lines, pilot-agent ``sds``/``cache``/``xdsproxy`` lines and Envoy application-log lines.
About 1% are problem lines: real lines from ``/work/shared/corpus/istio_real_lines.jsonl`` with their
timestamps, IPv4 addresses and request ids re-drawn, so no two copies are identical.

Each line is also wrapped as Fluent Bit's kafka output writes it (tail with the cri multiline parser,
kubernetes filter, ``format json``, ``timestamp_key @timestamp`` as a double): the ``log`` value is
JSON-encoded the way Fluent Bit does (``"``, ``\\``, control characters and non-ASCII escaped; TAB as
``\\t`` or, with ``tab_escape="u0009"``, as ``\\u0009``).

Importable (``generate``) and runnable: ``python benchmarks/corpus.py --lines 100000 --shape fluentbit -o out``.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

REAL_LINES = Path("/work/shared/corpus/istio_real_lines.jsonl")
DEFAULT_LINES = 1_000_000
DEFAULT_SEED = 20240611
# 2025-03-10T08:00:00Z: the corpus covers about an hour of one cluster's logs from there.
DEFAULT_START = 1741593600.0
ISTIO_VERSION = "1.22.3"

# Real lines that are problems, by the container that prints them. Categories left out are benign lines
# (pushes, readiness, startup flags) or not container output at all (kubectl events, issue titles,
# quoted fragments with doubled quotes, Fluent Bit's own stdout dump).
PROBLEM_CONTAINERS: dict[str, str] = {
    "istiod-klog-reflector": "discovery",  # slow "Reflector ListAndWatch" trace
    "istiod-klog-reflector-rbac": "discovery",
    "istiod-json-klog-reflector-rbac": "discovery",
    "klog-native-reflector": "discovery",
    "controller-runtime-reflector-rbac": "discovery",
    "istiod-klog-reflector-apiserver-refused": "discovery",
    "istiod-klog-watch-ended": "discovery",
    "klog-native-reflector-json-wrapped": "discovery",
    "istiod-xds-nack": "discovery",
    "istiod-ca-auth-failure": "discovery",
    "istiod-debug-auth": "discovery",
    "istiod-gateway-port-conflict": "discovery",
    "galley-validation-webhook": "discovery",
    "asm-doc-seed-apiserver": "discovery",
    "envoy-legacy-xds-stream": "istio-proxy",
    "envoy-legacy-lds-reject": "istio-proxy",
    "envoy-legacy-xds-stream-503": "istio-proxy",
    "envoy-xds-stream-closed": "istio-proxy",
    "envoy-xds-nack": "istio-proxy",
    "envoy-sds-stream-closed": "istio-proxy",
    "format-derived:envoy-app-log-text": "istio-proxy",
    "pilot-agent-xds-token": "istio-proxy",
    "pilot-agent-not-ready": "istio-proxy",
    "pilot-agent-not-ready-legacy": "istio-proxy",
    "pilot-agent-csr-failure": "istio-proxy",
    "pilot-agent-csr-failure-legacy": "istio-proxy",
    "pilot-agent-warm-cert": "istio-proxy",
    "mtls-cert-verify-failed": "istio-proxy",
    "envoy-access-text-NR": "istio-proxy",
    "envoy-access-text-NR-pre1.9": "istio-proxy",
    "envoy-access-text-UF": "istio-proxy",
    "envoy-access-text-UC (leading [START_TIME] cut in source)": "istio-proxy",
    "envoy-access-text-rbac-403 (tail cut in index excerpt)": "istio-proxy",
    "envoy-access-json-UH": "istio-proxy",
    "envoy-access-json-UAEX-pre1.5": "istio-proxy",
    "istio-init-failure": "istio-init",
    "istio-init-panic": "istio-init",
    "istio-validation-failure": "istio-validation",
    "istio-cni-ambient-error": "install-cni",
    "istio-cni-klog-reflector": "install-cni",
    "asm-doc-app-econnrefused": "app",
    "envoy-503-body": "app",
    "envoy-503-details-tls": "app",
}

# Share of the background (the problem lines come on top, at problem_rate).
MIX: tuple[tuple[str, float], ...] = (
    ("access-text", 0.66),
    ("access-json", 0.14),
    ("istiod", 0.07),
    ("pilot-agent", 0.07),
    ("envoy-app", 0.06),
)

_TS_ISO = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.(\d+))?(Z|[+-]\d\d:\d\d)")
_TS_ENVOY = re.compile(rb"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\]")
_TS_KLOG = re.compile(rb"\b([IWEF])\d{4} \d\d:\d\d:\d\d\.\d{6}\b")
_IPV4 = re.compile(rb"(?<![\w./@-])(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})(?![\w.])")
_UUID = re.compile(rb"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")


# --------------------------------------------------------------------------------------------------- time


class Clock:
    """Formats event times in the shapes Istio, Envoy and the container runtime write (cached per second)."""

    def __init__(self) -> None:
        self._sec = -1
        self._date = ""
        self._clock = ""

    def _split(self, t: float) -> int:
        sec = int(t)
        if sec != self._sec:
            tm = time.gmtime(sec)
            self._sec = sec
            self._date = f"{tm.tm_year:04d}-{tm.tm_mon:02d}-{tm.tm_mday:02d}"
            self._clock = f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d}"
        return int((t - sec) * 1_000_000_000)

    def iso(self, t: float, digits: int = 6) -> str:
        ns = self._split(t)
        if digits == 0:
            return f"{self._date}T{self._clock}Z"
        return f"{self._date}T{self._clock}.{ns:09d}"[: 20 + digits] + "Z"

    def envoy(self, t: float) -> str:
        ns = self._split(t)
        return f"{self._date} {self._clock}.{ns // 1_000_000:03d}"

    def klog(self, t: float) -> str:
        ns = self._split(t)
        return f"{self._date[5:7]}{self._date[8:10]} {self._clock}.{ns // 1000:06d}"


# ------------------------------------------------------------------------------------------------ cluster


@dataclass(frozen=True)
class Pod:
    name: str
    namespace: str
    app: str
    template_hash: str
    uid: str
    ip: str
    host: str
    containers: dict[str, tuple[str, str]]  # container -> (image, docker_id)
    istio: bool = True
    ports: tuple[int, ...] = (8080,)


@dataclass(frozen=True)
class Service:
    name: str
    namespace: str
    port: int
    ip: str
    grpc: bool

    @property
    def fqdn(self) -> str:
        return f"{self.name}.{self.namespace}.svc.cluster.local"


_APPS = {
    "bookinfo": [
        ("productpage", 9080, False),
        ("reviews", 9080, False),
        ("ratings", 9080, False),
        ("details", 9080, False),
    ],
    "shop": [
        ("frontend", 8080, False),
        ("cartservice", 7070, True),
        ("checkoutservice", 5050, True),
        ("currencyservice", 7000, True),
        ("paymentservice", 50051, True),
        ("productcatalog", 3550, True),
        ("recommendation", 8080, True),
        ("shipping", 50051, True),
        ("adservice", 9555, True),
        ("email", 8080, True),
    ],
    "payments": [
        ("ledger", 8080, False),
        ("gateway-api", 8443, False),
        ("fraud-scoring", 9000, True),
        ("settlement", 8080, False),
    ],
    "identity": [("auth", 8080, False), ("user-profile", 8080, False), ("session-store", 6379, False)],
    "search": [("indexer", 8080, False), ("query", 8080, False), ("suggest", 8080, True)],
    "orders": [
        ("order-api", 8080, False),
        ("order-worker", 8080, False),
        ("inventory", 8080, True),
        ("fulfilment", 8080, False),
    ],
    "platform": [("config-server", 8888, False), ("feature-flags", 8080, True), ("audit-log", 8080, False)],
    "media": [("thumbnailer", 8080, False), ("uploader", 8080, False), ("cdn-origin", 8080, False)],
}
_NODES = [f"gke-prod-eu-west1-pool-{p}-{h}" for p in ("a", "b", "c") for h in ("7c1d", "9f2e", "3b4a", "e5d6")]
_HTTP_PATHS = {
    "productpage": ["/productpage", "/static/bootstrap/css/bootstrap.min.css", "/login", "/logout", "/api/v1/products"],
    "reviews": ["/reviews/{n}", "/health"],
    "ratings": ["/ratings/{n}", "/health"],
    "details": ["/details/{n}", "/health"],
    "frontend": [
        "/",
        "/product/{id}",
        "/cart",
        "/cart/checkout",
        "/setCurrency",
        "/static/img/products/{id}.jpg",
        "/_healthz",
    ],
    "ledger": ["/v2/accounts/{id}/entries", "/v2/accounts/{id}/balance", "/v2/transfers"],
    "gateway-api": ["/api/v3/payments", "/api/v3/payments/{id}", "/api/v3/refunds", "/healthz"],
    "settlement": ["/settlements/{id}", "/batches?since={n}"],
    "auth": [
        "/oauth2/token",
        "/oauth2/authorize?client_id={id}&response_type=code",
        "/.well-known/jwks.json",
        "/userinfo",
    ],
    "user-profile": ["/users/{id}", "/users/{id}/preferences", "/users?email=user{n}%40example.com"],
    "session-store": ["/sessions/{id}"],
    "indexer": ["/index/documents", "/index/status"],
    "query": ["/search?q=item+{n}&page=2", "/search?q={id}", "/v1/facets"],
    "order-api": ["/orders", "/orders/{id}", "/orders/{id}/items", "/orders?customer={id}&limit=50"],
    "order-worker": ["/jobs/{id}", "/metrics"],
    "fulfilment": ["/shipments/{id}", "/shipments"],
    "config-server": ["/application/default", "/{id}/prod/main"],
    "audit-log": ["/events", "/events/{id}"],
    "thumbnailer": ["/thumb/{id}?w=320&h=240", "/thumb/{id}?w=64"],
    "uploader": ["/upload", "/upload/{id}/parts/{n}"],
    "cdn-origin": ["/assets/{id}.js", "/assets/{id}.css", "/images/{id}.webp"],
}
_GRPC_METHODS = {
    "cartservice": ["/hipstershop.CartService/GetCart", "/hipstershop.CartService/AddItem"],
    "checkoutservice": ["/hipstershop.CheckoutService/PlaceOrder"],
    "currencyservice": ["/hipstershop.CurrencyService/Convert", "/hipstershop.CurrencyService/GetSupportedCurrencies"],
    "paymentservice": ["/hipstershop.PaymentService/Charge"],
    "productcatalog": [
        "/hipstershop.ProductCatalogService/ListProducts",
        "/hipstershop.ProductCatalogService/GetProduct",
    ],
    "recommendation": ["/hipstershop.RecommendationService/ListRecommendations"],
    "shipping": ["/hipstershop.ShippingService/GetQuote", "/hipstershop.ShippingService/ShipOrder"],
    "adservice": ["/hipstershop.AdService/GetAds"],
    "email": ["/hipstershop.EmailService/SendOrderConfirmation"],
    "fraud-scoring": ["/fraud.v1.Scoring/Score"],
    "suggest": ["/search.v1.Suggest/Complete"],
    "inventory": ["/inventory.v2.Stock/Reserve", "/inventory.v2.Stock/Get"],
    "feature-flags": ["/flags.v1.Flags/Evaluate"],
}
_USER_AGENTS = [
    "Go-http-client/1.1",
    "Go-http-client/2.0",
    "grpc-go/1.64.0",
    "grpc-java-netty/1.62.2",
    "okhttp/4.12.0",
    "python-requests/2.31.0",
    "curl/8.5.0",
    "axios/1.6.8",
    "Apache-HttpClient/4.5.14 (Java/17.0.10)",
    "kube-probe/1.29",
    "envoy",
    "Prometheus/2.51.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4_1) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4.1 "
    "Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
]
_CODES = [
    (200, 0.905),
    (201, 0.02),
    (204, 0.02),
    (304, 0.012),
    (302, 0.008),
    (404, 0.02),
    (400, 0.006),
    (401, 0.005),
    (403, 0.002),
    (409, 0.001),
    (500, 0.0008),
    (502, 0.0002),
]
_JSON_KEYS = [
    "start_time",
    "route_name",
    "method",
    "path",
    "protocol",
    "response_code",
    "response_flags",
    "response_code_details",
    "connection_termination_details",
    "bytes_received",
    "bytes_sent",
    "duration",
    "upstream_service_time",
    "x_forwarded_for",
    "user_agent",
    "request_id",
    "authority",
    "upstream_host",
    "upstream_cluster",
    "upstream_local_address",
    "downstream_local_address",
    "downstream_remote_address",
    "requested_server_name",
    "upstream_transport_failure_reason",
]


def _hexs(rnd: random.Random, n: int) -> str:
    return f"{rnd.getrandbits(4 * n):0{n}x}"


def _alnum(rnd: random.Random, n: int) -> str:
    return "".join(rnd.choices("bcdfghjklmnpqrstvwxz2456789", k=n))


def _kb(rnd: random.Random, lo: int, hi: int) -> str:
    return f"{rnd.randrange(lo, hi)}.{rnd.randrange(10)}kB"


def _uuid(rnd: random.Random) -> str:
    return str(uuid.UUID(int=rnd.getrandbits(128), version=4))


class Cluster:
    """Pods, services and istiod replicas of one seeded cluster."""

    def __init__(self, rnd: random.Random) -> None:
        self.rnd = rnd
        self.services: list[Service] = []
        self.pods: list[Pod] = []
        self.pods_of: dict[str, list[Pod]] = {}
        for ns, apps in _APPS.items():
            for app, port, grpc in apps:
                svc = Service(app, ns, port, f"10.96.{rnd.randrange(256)}.{rnd.randrange(1, 255)}", grpc)
                self.services.append(svc)
                rs = _alnum(rnd, rnd.choice((9, 10)))
                version = f"v{rnd.randrange(1, 4)}.{rnd.randrange(30)}.{rnd.randrange(10)}"
                image = f"europe-docker.pkg.dev/prod-registry/{ns}/{app}:{version}"
                pods = [
                    self._pod(f"{app}-{rs}-{_alnum(rnd, 5)}", ns, app, rs, app, image, (port,))
                    for _ in range(rnd.choice((1, 2, 2, 3, 4)))
                ]
                self.pods.extend(pods)
                self.pods_of[app] = pods
        rs = _alnum(rnd, 10)
        self.istiod = [
            Pod(
                f"istiod-{rs}-{_alnum(rnd, 5)}",
                "istio-system",
                "istiod",
                rs,
                _uuid(rnd),
                self._ip(),
                rnd.choice(_NODES),
                {"discovery": (f"docker.io/istio/pilot:{ISTIO_VERSION}", _hexs(rnd, 64))},
                istio=False,
                ports=(15012,),
            )
            for _ in range(2)
        ]
        self.cni = [
            Pod(
                f"istio-cni-node-{_alnum(rnd, 5)}",
                "istio-system",
                "istio-cni-node",
                "",
                _uuid(rnd),
                host,
                host,
                {"install-cni": (f"docker.io/istio/install-cni:{ISTIO_VERSION}", _hexs(rnd, 64))},
                istio=False,
            )
            for host in _NODES
        ]

    def _ip(self) -> str:
        return f"10.{self.rnd.choice((4, 8, 12, 20))}.{self.rnd.randrange(256)}.{self.rnd.randrange(2, 255)}"

    def _pod(self, name: str, ns: str, app: str, rs: str, container: str, image: str, ports: tuple[int, ...]) -> Pod:
        rnd = self.rnd
        containers = {
            container: (image, _hexs(rnd, 64)),
            "istio-proxy": (f"docker.io/istio/proxyv2:{ISTIO_VERSION}", _hexs(rnd, 64)),
            "istio-init": (f"docker.io/istio/proxyv2:{ISTIO_VERSION}", _hexs(rnd, 64)),
        }
        return Pod(name, ns, app, rs, _uuid(rnd), self._ip(), rnd.choice(_NODES), containers, ports=ports)

    def mesh_pod(self) -> Pod:
        return self.rnd.choice(self.pods)


# ---------------------------------------------------------------------------------------------- generators


@dataclass(slots=True)
class Line:
    text: str
    pod: Pod
    container: str
    stream: str = "stdout"


class Generator:
    """Draws background lines of each kind, and varied copies of the real problem lines."""

    def __init__(self, rnd: random.Random, cluster: Cluster, real: Sequence[tuple[str, bytes]]) -> None:
        self.rnd = rnd
        self.cluster = cluster
        self.clock = Clock()
        self.real = list(real)
        self.json_order = list(_JSON_KEYS)
        rnd.shuffle(self.json_order)  # Envoy does not sort keys; one proxy build keeps one order
        self.code_pop = [c for c, _ in _CODES]
        self.code_w = [w for _, w in _CODES]
        self.kinds: dict[str, Callable[[float], Line]] = {
            "access-text": self.access_text,
            "access-json": self.access_json,
            "istiod": self.istiod,
            "pilot-agent": self.pilot_agent,
            "envoy-app": self.envoy_app,
        }

    # -- access logs ---------------------------------------------------------------------------------

    def _request(self, t: float) -> dict[str, object]:
        """One request as Envoy's formatter sees it (None = missing, printed '-' or null)."""
        rnd = self.rnd
        pod = self.cluster.mesh_pod()
        svc = rnd.choice(self.cluster.services)
        inbound = rnd.random() < 0.5
        tcp = not svc.grpc and rnd.random() < 0.015
        dst_pod = rnd.choice(self.cluster.pods_of[svc.name])
        if svc.grpc:
            method, path, proto = (
                "POST",
                rnd.choice(_GRPC_METHODS.get(svc.name, ["/grpc.health.v1.Health/Check"])),
                "HTTP/2",
            )
        else:
            method = rnd.choices(("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"), (80, 12, 3, 2, 2, 1))[0]
            template = rnd.choice(_HTTP_PATHS.get(svc.name, ["/", "/healthz"]))
            path = template.replace("{n}", str(rnd.randrange(1, 5000))).replace(
                "{id}", _hexs(rnd, rnd.choice((8, 12, 24)))
            )
            proto = rnd.choices(("HTTP/1.1", "HTTP/2"), (7, 3))[0]
        code = rnd.choices(self.code_pop, self.code_w)[0]
        flags, details = "-", "via_upstream"
        dur = int(rnd.expovariate(1 / 18)) + 1
        if rnd.random() < 0.0015:  # client went away mid-request: benign, very common in real meshes
            code, flags, details = 0, "DC", "downstream_remote_disconnect"
        peer_port = rnd.randrange(32768, 61000)
        if inbound:
            port = dst_pod.ports[0]
            upstream_host = f"{dst_pod.ip}:{port}"
            upstream_cluster = f"inbound|{port}||"
            upstream_local = f"127.0.0.6:{rnd.randrange(32768, 61000)}"
            downstream_local = f"{dst_pod.ip}:{port}"
            downstream_remote = f"{pod.ip}:{peer_port}"
            sni = f"outbound_.{svc.port}_._.{svc.fqdn}"
            route = "default"
            xff = None
            pod, dst_pod = dst_pod, pod  # an inbound line is printed by the server's sidecar
        else:
            upstream_host = f"{dst_pod.ip}:{dst_pod.ports[0]}"
            upstream_cluster = f"outbound|{svc.port}||{svc.fqdn}"
            upstream_local = f"{pod.ip}:{rnd.randrange(32768, 61000)}"
            downstream_local = f"{svc.ip}:{svc.port}"
            downstream_remote = f"{pod.ip}:{peer_port}"
            sni = None
            route = "default" if rnd.random() < 0.8 else f"{svc.name}.{svc.namespace}.svc.cluster.local:{svc.port}"
            xff = (
                f"{rnd.randrange(1, 223)}.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(1, 255)}"
                if rnd.random() < 0.1
                else None
            )
        if tcp:
            return {
                "start_time": self.clock.iso(t, 3),
                "method": None,
                "path": None,
                "protocol": None,
                "response_code": 0,
                "response_flags": None,
                "response_code_details": None,
                "connection_termination_details": None,
                "upstream_transport_failure_reason": None,
                "bytes_received": rnd.randrange(100, 90000),
                "bytes_sent": rnd.randrange(100, 900000),
                "duration": rnd.randrange(1000, 600000),
                "upstream_service_time": None,
                "x_forwarded_for": None,
                "user_agent": None,
                "request_id": None,
                "authority": None,
                "upstream_host": upstream_host,
                "upstream_cluster": upstream_cluster,
                "upstream_local_address": upstream_local,
                "downstream_local_address": downstream_local,
                "downstream_remote_address": downstream_remote,
                "requested_server_name": sni,
                "route_name": None,
                "_pod": pod,
            }
        return {
            "start_time": self.clock.iso(t, 3),
            "method": method,
            "path": path,
            "protocol": proto,
            "response_code": code,
            "response_flags": None if flags == "-" else flags,
            "response_code_details": details,
            "connection_termination_details": None,
            "upstream_transport_failure_reason": None,
            "bytes_received": 0 if method in ("GET", "HEAD", "DELETE") else rnd.randrange(20, 4000),
            "bytes_sent": 0 if code in (204, 304, 0) else int(rnd.lognormvariate(7, 1.5)),
            "duration": dur,
            "upstream_service_time": None if code == 0 else str(max(1, dur - rnd.randrange(0, 3))),
            "x_forwarded_for": xff,
            "user_agent": rnd.choice(_USER_AGENTS),
            "request_id": _uuid(rnd),
            "authority": f"{svc.name}.{svc.namespace}.svc.cluster.local:{svc.port}"
            if rnd.random() < 0.5
            else f"{svc.name}:{svc.port}",
            "upstream_host": upstream_host,
            "upstream_cluster": upstream_cluster,
            "upstream_local_address": upstream_local,
            "downstream_local_address": downstream_local,
            "downstream_remote_address": downstream_remote,
            "requested_server_name": sni,
            "route_name": route,
            "_pod": pod,
        }

    def access_text(self, t: float) -> Line:
        r = self._request(t)

        def d(key: str) -> object:
            v = r[key]
            return "-" if v is None else v

        text = (
            f'[{r["start_time"]}] "{d("method")} {d("path")} {d("protocol")}" '
            f"{r['response_code']} {d('response_flags')} {d('response_code_details')} "
            f'{d("connection_termination_details")} "{d("upstream_transport_failure_reason")}" '
            f"{r['bytes_received']} {r['bytes_sent']} {r['duration']} {d('upstream_service_time')} "
            f'"{d("x_forwarded_for")}" "{d("user_agent")}" "{d("request_id")}" "{d("authority")}" '
            f'"{d("upstream_host")}" {d("upstream_cluster")} {d("upstream_local_address")} '
            f"{d('downstream_local_address')} {d('downstream_remote_address')} {d('requested_server_name')} "
            f"{d('route_name')}"
        )
        pod = r["_pod"]
        assert isinstance(pod, Pod)
        return Line(text, pod, "istio-proxy")

    def access_json(self, t: float) -> Line:
        r = self._request(t)
        pod = r.pop("_pod")
        assert isinstance(pod, Pod)
        text = json.dumps({k: r[k] for k in self.json_order}, separators=(",", ":"), ensure_ascii=False)
        return Line(text, pod, "istio-proxy")

    # -- istiod ---------------------------------------------------------------------------------------

    def _node(self) -> str:
        pod = self.cluster.mesh_pod()
        return f"{pod.name}.{pod.namespace}"

    def istiod(self, t: float) -> Line:
        rnd = self.rnd
        ts = self.clock.iso(t)
        node = self._node()
        svc = rnd.choice(self.cluster.services)
        kind = rnd.random()
        if kind < 0.16:
            msg = f"ads\tCDS: PUSH for node:{node} resources:{rnd.randrange(20, 400)} size:{_kb(rnd, 10, 900)}"
        elif kind < 0.34:
            n = rnd.randrange(1, 60)
            msg = (
                f"ads\tEDS: PUSH request for node:{node} resources:{n} size:{_kb(rnd, 1, 90)} "
                f"empty:0 cached:{n - rnd.randrange(0, n + 1) if n else 0}/{n}"
            )
        elif kind < 0.46:
            msg = f"ads\tLDS: PUSH for node:{node} resources:{rnd.randrange(5, 80)} size:{_kb(rnd, 10, 400)}"
        elif kind < 0.58:
            msg = (
                f"ads\tRDS: PUSH for node:{node} resources:{rnd.randrange(1, 40)} size:{_kb(rnd, 1, 200)} "
                f"cached:0/{rnd.randrange(1, 40)}"
            )
        elif kind < 0.66:
            msg = (
                f"ads\tPush debounce stable[{rnd.randrange(100, 9000)}] {rnd.randrange(1, 9)} for config "
                f"ServiceEntry:{svc.namespace}/{svc.name} and {rnd.randrange(0, 4)}"
                f" more configs: 100.{rnd.randrange(1000):03}ms "
                f"since last change, {rnd.randrange(100, 900)}.{rnd.randrange(1000):03}ms since last "
                "push, full=true"
            )
        elif kind < 0.72:
            msg = (
                f"ads\tXDS: Pushing Services:{len(self.cluster.services) + rnd.randrange(0, 5)}"
                f" ConnectedEndpoints:{len(self.cluster.pods)} "
                f"Version:{self.clock.iso(t, 0)}/{rnd.randrange(1, 9000)}"
            )
        elif kind < 0.78:
            msg = f"ads\tADS: new connection for node:{node}-{rnd.randrange(1, 400)}"
        elif kind < 0.84:
            pod = self.cluster.mesh_pod()
            msg = (
                f'ads\tADS: "{pod.ip}:{rnd.randrange(32768, 61000)}"'
                f" {pod.name}.{pod.namespace}-{rnd.randrange(1, 400)} "
                "terminated"
            )
        elif kind < 0.89:
            msg = f"model\tIncremental push, service {svc.fqdn} at shard Kubernetes/Kubernetes has no endpoints"
        elif kind < 0.93:
            pod = self.cluster.mesh_pod()
            msg = (
                f"validation\tvalidated "
                f"{rnd.choice(('VirtualService', 'DestinationRule', 'Gateway', 'AuthorizationPolicy'))} "
                f"{pod.namespace}/{pod.app}"
            )
        elif kind < 0.97:
            res = rnd.choice(
                ("*v1.Service", "*v1.Pod", "*v1.EndpointSlice", "*v1beta1.VirtualService", "*v1.ConfigMap")
            )
            msg = f"klog\tcaches populated\ttype={res} reflector=k8s.io/client-go@v0.30.3/tools/cache/reflector.go:232"
        else:
            pod = self.cluster.mesh_pod()
            msg = (
                f"serverca\tgenerated new workload certificate for spiffe://cluster.local"
                f"/ns/{pod.namespace}/sa/{pod.app} "
                "ttl=24h0m0s"
            )
        pod = rnd.choice(self.cluster.istiod)
        if rnd.random() < 0.2:  # a part of the fleet runs with --log_as_json
            scope, _, text = msg.partition("\t")
            body = {"level": "info", "time": ts, "scope": scope, "msg": text.split("\t")[0]}
            return Line(json.dumps(body, separators=(",", ":")), pod, "discovery")
        return Line(f"{ts}\tinfo\t{msg}", pod, "discovery")

    # -- pilot-agent (istio-proxy container) ---------------------------------------------------------

    def pilot_agent(self, t: float) -> Line:
        rnd = self.rnd
        ts = self.clock.iso(t)
        pod = self.cluster.mesh_pod()
        kind = rnd.random()
        if kind < 0.25:
            msg = (
                f"cache\tgenerated new workload certificate\tresourceName=default"
                f" latency={rnd.randrange(20, 300)}.{rnd.randrange(1000):03}ms "
                f"ttl=23h59m59.{rnd.randrange(10**9):09d}s"
            )
        elif kind < 0.45:
            msg = (
                f"ads\tSDS: PUSH request for node:{pod.name}.{pod.namespace} resources:1"
                f" size:{rnd.choice(('1.1', '4.0'))}kB "
                f"resource:{rnd.choice(('default', 'ROOTCA'))}"
            )
        elif kind < 0.60:
            msg = "xdsproxy\tconnected to delta upstream XDS server: istiod.istio-system.svc:15012\tid=" + str(
                rnd.randrange(1, 40)
            )
        elif kind < 0.70:
            msg = f"ads\tADS: new connection for node:{rnd.randrange(1, 9)}"
        elif kind < 0.78:
            msg = f"ads\tSDS: new connection for node:{rnd.randrange(1, 9)}"
        elif kind < 0.86:
            msg = "cache\tRoot cert has changed, start rotating root cert"
        elif kind < 0.93:
            msg = f"xdsproxy\tEnvoy ADS stream established\tstream={rnd.randrange(1, 40)}"
        elif kind < 0.995:
            interval = rnd.choice((5, 10, 15))
            msg = f"healthcheck\tmonitoring app health\tapp={pod.app} port={pod.ports[0]} interval={interval}s"
        else:  # a pod (re)starting: readiness goes through once
            msg = "Envoy proxy is ready"
        if rnd.random() < 0.15:
            scope, _, text = msg.partition("\t")
            body = (
                {"level": "info", "time": ts, "scope": scope, "msg": text.split("\t")[0]}
                if text
                else {"level": "info", "time": ts, "msg": scope}
            )
            return Line(json.dumps(body, separators=(",", ":")), pod, "istio-proxy")
        return Line(f"{ts}\tinfo\t{msg}", pod, "istio-proxy")

    # -- Envoy application log (istio-proxy container, stderr) ----------------------------------------

    def envoy_app(self, t: float) -> Line:
        rnd = self.rnd
        ts = self.clock.iso(t)
        pod = self.cluster.mesh_pod()
        thread = rnd.randrange(14, 40)
        kind = rnd.random()
        if kind < 0.30:
            where, level = "envoy upstream external/envoy/source/common/upstream/cds_api_helper.cc:32", "info"
            msg = f"cds: add {rnd.randrange(20, 400)} cluster(s), remove {rnd.randrange(0, 4)} cluster(s)"
        elif kind < 0.55:
            where, level = "envoy upstream external/envoy/source/common/upstream/cds_api_helper.cc:71", "info"
            msg = (
                f"cds: added/updated {rnd.randrange(1, 6)} cluster(s), skipped {rnd.randrange(20, 400)} "
                "unmodified cluster(s)"
            )
        elif kind < 0.75:
            svc = rnd.choice(self.cluster.services)
            where, level = "envoy upstream external/envoy/source/common/listener_manager/lds_api.cc:99", "info"
            msg = f"lds: add/update listener '{svc.ip}_{svc.port}'"
        elif kind < 0.85:
            where, level = "envoy main external/envoy/source/server/server.cc:932", "warning"
            msg = (
                "there is no configured limit to the number of allowed active downstream connections. "
                "Configure a limit in `envoy.resource_monitors.downstream_connections` resource monitor."
            )
        elif kind < 0.95:
            where, level = "envoy config external/envoy/source/common/config/xds_resource.cc:67", "warning"
            msg = "Ignoring unwatched type URL type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
        else:
            where, level = "envoy misc external/envoy/source/common/protobuf/message_validator_impl.cc:21", "warning"
            msg = (
                "Deprecated field: type envoy.config.core.v3.HeaderValueOption Using deprecated option "
                "'envoy.config.core.v3.HeaderValueOption.append' from file base.proto."
            )
        return Line(f"{ts}\t{level}\t{where}\t{msg}\tthread={thread}", pod, "istio-proxy", "stderr")

    # -- real problem lines --------------------------------------------------------------------------

    def problem(self, t: float) -> Line:
        rnd = self.rnd
        category, raw = rnd.choice(self.real)
        clock = self.clock

        def iso(m: re.Match[bytes]) -> bytes:
            digits = len(m.group(1)) if m.group(1) else 0
            return clock.iso(t, min(digits, 9)).encode()[:-1] + m.group(2)

        text = _TS_ISO.sub(iso, raw)
        text = _TS_ENVOY.sub(lambda m: f"[{clock.envoy(t)}]".encode(), text)
        text = _TS_KLOG.sub(lambda m: m.group(1) + clock.klog(t).encode(), text)
        text = _IPV4.sub(self._ip, text)
        text = _UUID.sub(lambda m: _uuid(rnd).encode(), text)
        container = PROBLEM_CONTAINERS[category]
        if container == "discovery":
            pod = rnd.choice(self.cluster.istiod)
        elif container == "install-cni":
            pod = rnd.choice(self.cluster.cni)
        else:
            pod = self.cluster.mesh_pod()
            if container == "app":
                container = pod.app
        stream = "stderr" if container in ("istio-init", "istio-validation") else "stdout"
        return Line(text.decode(), pod, container, stream)

    def _ip(self, m: re.Match[bytes]) -> bytes:
        first = m.group(1)
        if first in (b"127", b"0") or int(first) > 255:
            return m.group(0)
        return b"%s.%s.%d.%d" % (first, m.group(2), self.rnd.randrange(256), self.rnd.randrange(1, 255))


# ---------------------------------------------------------------------------------------------- Fluent Bit


def encode_string(text: str, tab_escape: str = "t") -> str:
    """A JSON string as Fluent Bit's encoder writes it: ``"``/``\\``/controls escaped, non-ASCII as \\uXXXX."""
    if tab_escape == "t" or "\t" not in text:
        return json.dumps(text, ensure_ascii=True)
    return '"' + "\\u0009".join(json.dumps(part, ensure_ascii=True)[1:-1] for part in text.split("\t")) + '"'


class RecordEncoder:
    """Wraps lines into Fluent Bit kafka-output records (kubernetes metadata cached per pod and container)."""

    def __init__(self, rnd: random.Random, tab_escape: str = "t") -> None:
        if tab_escape not in ("t", "u0009"):
            raise ValueError("tab_escape must be 't' or 'u0009'")
        self.rnd = rnd
        self.tab_escape = tab_escape
        self.clock = Clock()
        self._meta: dict[tuple[str, str], str] = {}

    def kubernetes(self, pod: Pod, container: str) -> str:
        key = (pod.name, container)
        cached = self._meta.get(key)
        if cached is not None:
            return cached
        image, docker_id = pod.containers.get(container) or pod.containers.setdefault(
            container, (f"europe-docker.pkg.dev/prod-registry/{pod.namespace}/{container}:latest", _hexs(self.rnd, 64))
        )
        labels: dict[str, str] = {"app": pod.app}
        if pod.template_hash:
            labels["pod-template-hash"] = pod.template_hash
        if pod.istio:
            labels["security.istio.io/tlsMode"] = "istio"
            labels["service.istio.io/canonical-name"] = pod.app
        else:
            labels["istio.io/rev"] = "default"
        repo = image.rsplit(":", 1)[0]
        meta = {
            "pod_name": pod.name,
            "namespace_name": pod.namespace,
            "pod_id": pod.uid,
            "labels": labels,
            "host": pod.host,
            "container_name": container,
            "docker_id": docker_id,
            "container_hash": f"{repo}@sha256:{_hexs(self.rnd, 64)}",
            "container_image": image,
        }
        encoded = json.dumps(meta, separators=(",", ":"), ensure_ascii=True)
        self._meta[key] = encoded
        return encoded

    def __call__(self, line: Line, t: float) -> tuple[bytes, float]:
        """(record value, Kafka timestamp). ``t``: when the runtime read the line."""
        flushed = t + self.rnd.uniform(0.05, 1.0)  # Fluent Bit's flush interval
        value = (
            f'{{"@timestamp":{flushed:.6f},"time":"{self.clock.iso(t, 9)}","stream":"{line.stream}","_p":"F",'
            f'"log":{encode_string(line.text, self.tab_escape)}'
            f',"kubernetes":{self.kubernetes(line.pod, line.container)}}}'
        )
        return value.encode("ascii"), flushed + self.rnd.uniform(0.001, 0.05)


# ----------------------------------------------------------------------------------------------- corpus


@dataclass
class Corpus:
    lines: list[bytes]  # decoded container lines (UTF-8, no trailing newline)
    records: list[bytes]  # Fluent Bit kafka-output values, records[i] carries lines[i]; empty if not asked for
    timestamps: list[float]  # Kafka record timestamps (s), parallel to records
    problems: list[int]  # indices of the injected real problem lines
    kinds: Counter[str] = field(default_factory=Counter)

    def add(self, line: Line, t: float, kind: str, enc: RecordEncoder | None) -> None:
        """One more line (and, given an encoder, the Fluent Bit record that carries it)."""
        if kind == "problem":
            self.problems.append(len(self.lines))
        self.lines.append(line.text.encode())
        self.kinds[kind] += 1
        if enc is not None:
            value, ts = enc(line, t)
            self.records.append(value)
            self.timestamps.append(ts)

    @property
    def line_bytes(self) -> int:
        """Size of the lines as a newline-terminated file."""
        return sum(map(len, self.lines)) + len(self.lines)

    @property
    def record_bytes(self) -> int:
        return sum(map(len, self.records))


def real_problem_lines(path: Path = REAL_LINES) -> list[tuple[str, bytes]]:
    """(category, line) of the real lines that are problems and real container output."""
    out = []
    with path.open(encoding="utf-8") as fh:
        for raw in fh:
            item = json.loads(raw)
            if item["category"] in PROBLEM_CONTAINERS:
                out.append((item["category"], item["line"].encode()))
    if not out:
        raise ValueError(f"no problem lines in {path}")
    return out


def iter_lines(
    n: int,
    *,
    seed: int = DEFAULT_SEED,
    problem_rate: float = 0.01,
    start: float = DEFAULT_START,
    real_lines: Path = REAL_LINES,
) -> Iterator[tuple[Line, float, str]]:
    """(line, time, kind) for n lines, in time order (about 280 lines a second)."""
    rnd = random.Random(seed)
    gen = Generator(rnd, Cluster(rnd), real_problem_lines(real_lines))
    names = [k for k, _ in MIX]
    weights = [w for _, w in MIX]
    draws = rnd.choices(names, weights, k=n)
    t = start
    for i in range(n):
        t += rnd.expovariate(280.0)
        kind = "problem" if rnd.random() < problem_rate else draws[i]
        line = gen.problem(t) if kind == "problem" else gen.kinds[kind](t)
        yield line, t, kind


def generate(
    n: int = DEFAULT_LINES,
    *,
    seed: int = DEFAULT_SEED,
    problem_rate: float = 0.01,
    records: bool = True,
    tab_escape: str = "t",
    real_lines: Path = REAL_LINES,
) -> Corpus:
    """The seeded corpus: n lines and (if ``records``) the n Fluent Bit records that carry them."""
    enc = RecordEncoder(random.Random(seed + 1), tab_escape)
    corpus = Corpus([], [], [], [])
    for line, t, kind in iter_lines(n, seed=seed, problem_rate=problem_rate, real_lines=real_lines):
        corpus.add(line, t, kind, enc if records else None)
    return corpus


# ------------------------------------------------------------------------------------------ adversarial mixes

# Mixes built to break a literal prefilter (issue 9, part 2). Each is seeded, has about 1% real problem lines
# like the corpus above, and keeps every other line benign except where a mix's own traffic carries Envoy
# response flags in realistic proportions (those lines are problems a rule may rightly match).
MIXES: dict[str, str] = {
    "methods": "access logs (75% TEXT, 20% JSON) with every HTTP method, PUT/POST-heavy (PUT 30%, POST 30%)",
    "codes-flags": "access logs, TEXT and JSON, every status code and response flag in normal proportions "
    "(~96% 1xx-3xx/`-`, app 4xx/5xx via_upstream, ~1.3% Envoy flags NR UF UH URX DC UC UT UO RL UAEX DPE UPE ...)",
    "control-plane": "istiod, pilot-agent, ztunnel and istio-cni info/warn lines dense in error, failed, warn, denied, "
    "not ready, refused, timeout (benign: startup NOT ready, error=none, failed=0, *_error fields)",
    "json-full": "JSON access logs with every field filled (no nulls): x-forwarded-for chains, long user agents, "
    "SNI, route, upstream_transport_failure_reason/connection_termination_details (set on failures)",
    "long-lines": "the corpus mix with 5% very long lines (4-64 KB): JSON app logs with joined stack traces, "
    "JSON payload dumps, istiod mesh-config dumps",
}
MIX_DEFAULT_LINES = 200_000
_GRPC_PATHS = {p for paths in _GRPC_METHODS.values() for p in paths} | {"/grpc.health.v1.Health/Check"}

_ALL_METHODS = (
    ("GET", 15),
    ("POST", 30),
    ("PUT", 30),
    ("PATCH", 8),
    ("DELETE", 7),
    ("HEAD", 3),
    ("OPTIONS", 4),
    ("CONNECT", 1),
    ("TRACE", 1),
    ("PROPFIND", 0.5),
    ("MKCOL", 0.2),
    ("PURGE", 0.3),
)
# (code, flags, response_code_details, upstream_transport_failure_reason or None, weight)
_OUTCOMES: tuple[tuple[int, str, str, str | None, float], ...] = (
    (200, "-", "via_upstream", None, 86.0),
    (201, "-", "via_upstream", None, 3.0),
    (202, "-", "via_upstream", None, 0.5),
    (204, "-", "via_upstream", None, 2.0),
    (206, "-", "via_upstream", None, 0.3),
    (101, "-", "via_upstream", None, 0.1),
    (301, "-", "via_upstream", None, 0.3),
    (302, "-", "via_upstream", None, 0.8),
    (304, "-", "via_upstream", None, 1.2),
    (307, "-", "via_upstream", None, 0.2),
    (400, "-", "via_upstream", None, 0.6),
    (401, "-", "via_upstream", None, 0.5),
    (403, "-", "via_upstream", None, 0.3),
    (404, "-", "via_upstream", None, 2.0),
    (405, "-", "via_upstream", None, 0.1),
    (408, "-", "via_upstream", None, 0.05),
    (409, "-", "via_upstream", None, 0.1),
    (410, "-", "via_upstream", None, 0.02),
    (413, "-", "via_upstream", None, 0.02),
    (415, "-", "via_upstream", None, 0.02),
    (422, "-", "via_upstream", None, 0.2),
    (429, "-", "via_upstream", None, 0.2),
    (500, "-", "via_upstream", None, 0.3),
    (501, "-", "via_upstream", None, 0.02),
    (503, "-", "via_upstream", None, 0.05),
    # Envoy-generated answers, ~1.3% together
    (404, "NR", "route_not_found", None, 0.2),
    (503, "UF", "upstream_reset_before_response_started{connection_failure}", "delayed_connect_error:_111", 0.1),
    (503, "UF,URX", "upstream_reset_before_response_started{connection_failure}", "delayed_connect_error:_111", 0.05),
    (503, "UH", "no_healthy_upstream", None, 0.1),
    (503, "URX", "via_upstream", None, 0.05),
    (0, "DC", "downstream_remote_disconnect", None, 0.2),
    (503, "UC", "upstream_reset_before_response_started{connection_termination}", None, 0.08),
    (504, "UT", "response_timeout", None, 0.1),
    (503, "UO", "upstream_reset_before_response_started{overflow}", None, 0.03),
    (429, "RL", "request_rate_limited", None, 0.05),
    (403, "UAEX", "ext_authz_denied", None, 0.05),
    (400, "DPE", "http1.codec_error", None, 0.03),
    (502, "UPE", "upstream_reset_before_response_started{protocol_error}", None, 0.02),
    (403, "-", "rbac_access_denied_matched_policy[none]", None, 0.05),
    (
        503,
        "UF",
        "upstream_reset_before_response_started{connection_failure,TLS_error:_268435581:SSL_routines:"
        "OPENSSL_internal:CERTIFICATE_VERIFY_FAILED}",
        "TLS_error:_268435581:SSL_routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED",
        0.02,
    ),
)
_LONG_AGENTS = [
    "Mozilla/5.0 (Linux; Android 14; SM-S918B Build/UP1A.231005.007; wv) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Version/4.0 Chrome/124.0.6367.113 Mobile Safari/537.36 [FB_IAB/FB4A;FBAV/460.0.0.48.109;IABMV/1;]",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/21E236 "
    "Instagram 327.0.0.33.120 (iPhone15,3; iOS 17_4_1; en_US; en; scale=3.00; 1290x2796; 588612397) NW/3",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 "
    "Edg/124.0.0.0 OPR/109.0.0.0 (Error-Reporter/2.1; Timeout-Aware; +https://example.com/bot-info)",
    "okhttp/4.12.0 MyShopApp/8.31.2 (Android 13; Pixel 7 Pro; build 83102; channel=beta; failover=enabled; "
    "retry-policy=exponential; denied-permissions=none)",
    "aws-sdk-java/2.25.40 Linux/5.15.0-1057-aws OpenJDK_64-Bit_Server_VM/17.0.10+7-LTS Java/17.0.10 vendor/Eclipse_"
    "Adoptium io/sync http/Apache cfg/retry-mode/legacy cfg/auth-source#imds",
]
_TRANSPORT_FAILURES = (
    "delayed_connect_error:_111",
    "delayed_connect_error:_Connection_refused",
    "TLS_error:_268436502:SSL_routines:OPENSSL_internal:SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    "TLS_error:_268435703:SSL_routines:OPENSSL_internal:WRONG_VERSION_NUMBER",
    "remote_connection_failure",
)


class MixGenerator(Generator):
    """The corpus generator with the access-log outcome, method and fields of one adversarial mix."""

    def __init__(self, rnd: random.Random, cluster: Cluster, real: Sequence[tuple[str, bytes]], mix: str) -> None:
        super().__init__(rnd, cluster, real)
        self.mix = mix
        self.method_pop = [m for m, _ in _ALL_METHODS]
        self.method_w = [w for _, w in _ALL_METHODS]
        self.outcome_w = [o[-1] for o in _OUTCOMES]
        self._frames: list[str] = []
        # ztunnel: a DaemonSet in istio-system, one pod per node (ambient mode)
        self.ztunnels = [
            Pod(
                f"ztunnel-{_alnum(rnd, 5)}",
                "istio-system",
                "ztunnel",
                "",
                _uuid(rnd),
                host,
                host,
                {"istio-proxy": (f"docker.io/istio/ztunnel:{ISTIO_VERSION}", _hexs(rnd, 64))},
                istio=False,
            )
            for host in _NODES
        ]
        self.kinds.update(
            {
                "cni": self.cni_agent,
                "ztunnel": self.ztunnel,
                "control-plane": self.control_plane,
                "long": self.long_line,
            }
        )

    def _request(self, t: float) -> dict[str, object]:
        r = super()._request(t)
        rnd = self.rnd
        if r["method"] is None:  # TCP
            return r
        if self.mix == "methods" and r["path"] not in _GRPC_PATHS:  # gRPC stays POST
            r["method"] = rnd.choices(self.method_pop, self.method_w)[0]
        if self.mix in ("codes-flags", "json-full"):
            code, flags, details, reason, _ = rnd.choices(_OUTCOMES, self.outcome_w)[0]
            r["response_code"] = code
            r["response_flags"] = None if flags == "-" else flags
            r["response_code_details"] = details
            r["upstream_transport_failure_reason"] = reason
            if flags in ("UC", "DC"):
                r["connection_termination_details"] = None
            if code == 0:
                r["upstream_service_time"] = None
        if self.mix == "json-full":
            hops = [
                f"{rnd.randrange(1, 223)}.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(1, 255)}"
                for _ in range(rnd.randrange(2, 6))
            ]
            r["x_forwarded_for"] = ", ".join(hops)
            r["user_agent"] = rnd.choice(_LONG_AGENTS)
            if r["requested_server_name"] is None:
                r["requested_server_name"] = f"{r['authority']}".split(":")[0]
            if r["upstream_service_time"] is None:
                r["upstream_service_time"] = str(r["duration"])
            r["route_name"] = r["route_name"] or "default"
            # Failure fields are strings even when nothing failed: a custom format prints "-" (never null).
            for key in ("response_flags", "connection_termination_details", "upstream_transport_failure_reason"):
                if r[key] is None:
                    r[key] = "-"
        return r

    # -- control plane: benign lines dense in alarming words ----------------------------------------------

    def control_plane(self, t: float) -> Line:
        """istiod or pilot-agent info/warn lines that read like trouble and are not."""
        rnd = self.rnd
        ts = self.clock.iso(t)
        pod = self.cluster.mesh_pod()
        istiod = rnd.random() < 0.5
        n = rnd.randrange(0, 40)
        if istiod:
            p = rnd.choice(self.cluster.istiod)
            svc = rnd.choice(self.cluster.services)
            choices = (
                (
                    "info",
                    f'ads\tADS: "{pod.ip}:{rnd.randrange(32768, 61000)}" {pod.name}.{pod.namespace}-'
                    f"{rnd.randrange(1, 400)} terminated",
                ),
                (
                    "info",
                    "authorization\tProcessed authorization policy for "
                    f"{pod.name}.{pod.namespace} with details:     * found 1 DENY actions, 0 ALLOW actions, "
                    "0 AUDIT actions     * built 1 HTTP filters for DENY action     * added 1 HTTP filters to "
                    "filter chain 0",
                ),
                ("info", f"validation\tvalidated AuthorizationPolicy {svc.namespace}/deny-all (action=DENY, rules=0)"),
                (
                    "info",
                    f"validation\tvalidated EnvoyFilter {svc.namespace}/{svc.name}-timeout-retry"
                    " (connect_timeout=5s retry_on=connect-failure,refused-stream,unavailable)",
                ),
                ("info", f"leader election\tLeader election cycle {rnd.randrange(1, 9)} lost. Trying again"),
                ("warn", "kube\tskipping CRD gateway.networking.k8s.io/v1/GRPCRoute as it is not present"),
                (
                    "info",
                    f"ads\tEDS: PUSH request for node:{pod.name}.{pod.namespace} resources:{n} "
                    f"size:{_kb(rnd, 1, 90)} empty:0 cached:{n}/{n} filtered:0 errors=0 failed=0",
                ),
                (
                    "info",
                    f"model\tservice {svc.fqdn} updated: error_budget_policy=default "
                    "timeout=30s outlierDetection.consecutive5xxErrors=5",
                ),
                (
                    "info",
                    f"status\tstatus reconciliation: 0 failed, 0 denied, {rnd.randrange(1, 200)} written, error=none",
                ),
                ("warn", "klog\tv1 ComponentStatus is deprecated in v1.19+"),
                ("info", 'FLAG: --keepaliveMaxServerConnectionAge="30m0s"'),
                ("info", f'FLAG: --log_output_level="default:info,ads:warn,validation:error" retry_timeout={n}s'),
                ("info", "validationServer\tvalidation webhook ready, failurePolicy=Fail, timeoutSeconds=10"),
                (
                    "info",
                    f"spiffe\tAdded {rnd.randrange(1, 3)} certs to trust domain cluster.local in peer cert "
                    "verifier (0 denied, 0 errors)",
                ),
            )
            level, msg = rnd.choice(choices)
            return Line(f"{ts}\t{level}\t{msg}", p, "discovery")
        steady = (
            ("info", f"healthcheck\tprobe result\tapp={pod.app} failed=0 success={n} error=none timeout=1s"),
            (
                "warn",
                f"healthcheck\tslow probe\tapp={pod.app} latency={rnd.randrange(800, 990)}ms timeout=1s "
                "failureThreshold=3 failed=0",
            ),
            ("info", f"dns\tlookup stats\tqueries={n * 13} nxdomain={n} refused=0 servfail=0 timeout=0"),
            (
                "info",
                f"cache\tGenerated new workload certificate\tlatency={rnd.randrange(20, 300)}ms ttl=23h59m59s "
                "error_count=0",
            ),
            ("info", f"xdsproxy\tstream stats\tupstream_errors=0 downstream_errors=0 nacks=0 refused=0 timeout={n}s"),
            (
                "warn",
                f"ads\tSDS: PUSH request for node:{pod.name}.{pod.namespace} resources:1 size:4.0kB "
                "resource:default (denied=0 failed=0 not_ready=0)",
            ),
        )
        if rnd.random() < 0.85:  # steady state; the rest: a pod starting or stopping
            level, msg = rnd.choice(steady)
            return self._agent_line(ts, level, msg, pod)
        choices = (
            (
                "warn",
                "Envoy proxy is NOT ready: config not received from XDS server (is Istiod running?): cds updates: 0 "
                "successful, 0 rejected; lds updates: 0 successful, 0 rejected",
            ),
            (
                "warn",
                'Envoy proxy is NOT ready: failed to get readiness stats: Get "http://127.0.0.1:15000/stats?usedonly'
                '&filter=^(server\\.state|listener_manager\\.workers_started)": dial tcp 127.0.0.1:15000: connect: '
                "connection refused",
            ),
            ("info", "Envoy proxy is ready"),
            ("info", f"Readiness succeeded in {rnd.randrange(300, 4000) / 1000:.3f}s"),
            ("info", "Workload SDS socket not found. Starting Istio SDS Server"),
            (
                "info",
                "sds\tSDS server for workload certificates started, listening on "
                '"var/run/secrets/workload-spiffe-uds/socket"',
            ),
            (
                "info",
                'xdsproxy\tInitializing with upstream address "istiod.istio-system.svc:15012" and cluster "Kubernetes"',
            ),
            ("info", "Agent draining Proxy for termination"),
            ("info", "Graceful termination period is 5s, starting..."),
            ("info", "Graceful termination period complete, terminating remaining proxies."),
            ("warn", "Aborting proxy"),
            ("info", "Envoy exited normally"),
            ("info", "Status server has successfully terminated"),
            ("info", 'FLAG: --proxyComponentLogLevel="misc:error"'),
            ("info", f'FLAG: --drainDuration="45s" --parentShutdownDuration="1m0s" --connectTimeout="{n}s"'),
            (
                "info",
                "Proxy role\tips=[" + pod.ip + f"] type=sidecar id={pod.name}.{pod.namespace} "
                f"domain={pod.namespace}.svc.cluster.local",
            ),
            ("info", "Pilot SAN: [istiod.istio-system.svc]"),
        )
        level, msg = rnd.choice(choices)
        return self._agent_line(ts, level, msg, pod)

    def _agent_line(self, ts: str, level: str, msg: str, pod: Pod) -> Line:
        if self.rnd.random() < 0.15:  # --log_as_json
            scope, _, text = msg.partition("\t")
            body = (
                {"level": level, "time": ts, "scope": scope, "msg": text}
                if text
                else {"level": level, "time": ts, "msg": scope}
            )
            return Line(json.dumps(body, separators=(",", ":")), pod, "istio-proxy")
        return Line(f"{ts}\t{level}\t{msg}", pod, "istio-proxy")

    def cni_agent(self, t: float) -> Line:
        """istio-cni node agent info lines (ambient enrolment), from the istio-cni-node pods."""
        rnd = self.rnd
        pod = self.cluster.mesh_pod()
        msg = rnd.choice(
            (
                f"ambient\tadding pod to the mesh\tpod={pod.namespace}/{pod.name} error=none",
                f"ambient\tpod event\tpod={pod.namespace}/{pod.name} event=update retry=0",
                f"ambient\tin-pod redirection configured\tpod={pod.namespace}/{pod.name} failed=0",
                "repair\tstarting repair controller (failed pods: 0, timeout=30s)",
            )
        )
        return Line(f"{self.clock.iso(t)}\tinfo\t{msg}", rnd.choice(self.cluster.cni), "install-cni")

    def ztunnel(self, t: float) -> Line:
        """ztunnel access and xds lines (ambient), with error-ish field names but no error."""
        rnd = self.rnd
        ts = self.clock.iso(t)
        src, dst = self.cluster.mesh_pod(), self.cluster.mesh_pod()
        node = rnd.choice(self.ztunnels)
        kind = rnd.random()
        if kind < 0.55:
            msg = (
                f"info\taccess\tconnection complete\tsrc.addr={src.ip}:{rnd.randrange(32768, 61000)} "
                f'src.workload="{src.name}" src.namespace="{src.namespace}" '
                f'src.identity="spiffe://cluster.local/ns/{src.namespace}/sa/{src.app}" '
                f"dst.addr={dst.ip}:15008 dst.hbone_addr={dst.ip}:{dst.ports[0]} "
                f'dst.service="{dst.app}.{dst.namespace}.svc.cluster.local" dst.workload="{dst.name}" '
                f'dst.namespace="{dst.namespace}" '
                f'dst.identity="spiffe://cluster.local/ns/{dst.namespace}/sa/{dst.app}" '
                f'direction="{rnd.choice(("inbound", "outbound"))}" bytes_sent={rnd.randrange(60, 90000)} '
                f'bytes_recv={rnd.randrange(60, 90000)} duration="{rnd.randrange(1, 900)}ms"'
            )
        elif kind < 0.75:
            msg = (
                "info\txds::client:xds{id=" + str(rnd.randrange(1, 9)) + "}\treceived response\t"
                f'type_url="type.googleapis.com/istio.workload.{rnd.choice(("Address", "Authorization"))}" '
                f"size={rnd.randrange(1, 40)} removes={rnd.randrange(0, 3)} errors=0 nack=false"
            )
        elif kind < 0.85:
            msg = (
                f'info\tinpod::statemanager\tpod WorkloadUid("{src.uid}") received netns, starting proxy\t'
                f"failed_attempts=0 retry_timeout=5s"
            )
        elif kind < 0.93:
            msg = (
                'info\tproxy::inbound\tlistener established\taddress=[::]:15008 component="inbound" '
                "transparent=true denied_connections=0 policy_errors=0"
            )
        else:
            msg = "warn\thickory_proto::xfer::dns_exchange\tfailed to associate send_message response to the sender"
        return Line(f"{ts}\t{msg}", node, "istio-proxy")

    # -- very long lines -----------------------------------------------------------------------------------

    def long_line(self, t: float) -> Line:
        """4-64 KB: a JSON app log with a joined stack trace, a JSON payload dump or an istiod config dump."""
        rnd = self.rnd
        target = int(4096 * 16 ** rnd.random())  # log-uniform 4-64 KB
        ts = self.clock.iso(t)
        pod = self.cluster.mesh_pod()
        kind = rnd.random()
        if kind < 0.45:
            if not self._frames:  # a pool of frames: drawing every character anew is slow
                pkgs = ("com.example.orders", "org.springframework.web", "io.grpc.internal", "org.hibernate.engine")
                self._frames = [
                    f"\tat {rnd.choice(pkgs)}.{_alnum(rnd, 8).title()}.{_alnum(rnd, 6)}"
                    f"({_alnum(rnd, 7).title()}.java:{rnd.randrange(20, 900)})"
                    for _ in range(500)
                ]
            frames = []
            size = 0
            while size < target:
                f = rnd.choice(self._frames)
                frames.append(f)
                size += len(f) + 2
                if rnd.random() < 0.01:
                    frames.append(
                        "Caused by: java.util.concurrent.TimeoutException: timeout waiting for lock "
                        f"order-{rnd.randrange(10**6)} after 30000ms (failed attempts: 3)"
                    )
            body = {
                "@timestamp": ts,
                "level": "WARN",
                "logger_name": "com.example.orders.OrderService",
                "thread_name": f"http-nio-8080-exec-{rnd.randrange(1, 200)}",
                "message": "Request processing failed; retrying with backoff (error budget ok)",
                "stack_trace": "java.lang.IllegalStateException: order validation failed\n" + "\n".join(frames),
            }
            return Line(json.dumps(body, separators=(",", ":")), pod, pod.app)
        if kind < 0.8:
            items = []
            size = 0
            while size < target:
                item = {
                    "sku": _hexs(rnd, 12),
                    "name": f"item {_alnum(rnd, 10)}",
                    "qty": rnd.randrange(1, 9),
                    "price": rnd.randrange(100, 99999) / 100,
                    "errors": [],
                    "failed": False,
                    "status": rnd.choice(("ok", "backordered", "denied_by_policy_check=false")),
                }
                items.append(item)
                size += 130
            body = {"level": "info", "ts": ts, "msg": "checkout payload", "cart": {"id": _uuid(rnd), "items": items}}
            return Line(json.dumps(body, separators=(",", ":")), pod, pod.app)
        services = []
        size = 0
        while size < target:
            svc = rnd.choice(self.cluster.services)
            s = (
                f'{{"host":"{svc.fqdn}","port":{svc.port},"connectTimeout":"10s","outlierDetection":'
                '{"consecutive5xxErrors":5,"consecutiveGatewayErrors":0,"interval":"10s"},"retries":'
                '{"attempts":2,"retryOn":"connect-failure,refused-stream,unavailable,cancelled","perTryTimeout":"2s"}}'
            )
            services.append(s)
            size += len(s) + 1
        p = rnd.choice(self.cluster.istiod)
        return Line(
            f'{ts}\tinfo\tmesh configuration updated to: {{"defaultServiceConfigs":[{",".join(services)}]}}',
            p,
            "discovery",
        )


# Background kinds of each mix (the problem lines come on top, at problem_rate).
_MIX_KINDS: dict[str, tuple[tuple[str, float], ...]] = {
    "methods": (("access-text", 0.75), ("access-json", 0.20), ("istiod", 0.02), ("pilot-agent", 0.03)),
    "codes-flags": (("access-text", 0.60), ("access-json", 0.40)),
    "control-plane": (
        ("control-plane", 0.60),
        ("ztunnel", 0.20),
        ("cni", 0.05),
        ("istiod", 0.08),
        ("pilot-agent", 0.07),
    ),
    "json-full": (("access-json", 1.0),),
    "long-lines": (*MIX, ("long", 0.05)),
}


def generate_mix(
    name: str,
    n: int = MIX_DEFAULT_LINES,
    *,
    seed: int = DEFAULT_SEED,
    problem_rate: float = 0.01,
    records: bool = True,
    tab_escape: str = "t",
    real_lines: Path = REAL_LINES,
) -> Corpus:
    """An adversarial mix (``MIXES``): n lines and (if ``records``) their Fluent Bit records, seeded."""
    if name not in _MIX_KINDS:
        raise ValueError(f"unknown mix {name!r}; known: {', '.join(MIXES)}")
    rnd = random.Random(f"{seed}:{name}")
    gen = MixGenerator(rnd, Cluster(rnd), real_problem_lines(real_lines), name)
    enc = RecordEncoder(random.Random(f"{seed}:{name}:records"), tab_escape)
    kinds = _MIX_KINDS[name]
    draws = rnd.choices([k for k, _ in kinds], [w for _, w in kinds], k=n)
    corpus = Corpus([], [], [], [])
    t = DEFAULT_START
    for i in range(n):
        t += rnd.expovariate(280.0)
        kind = "problem" if rnd.random() < problem_rate else draws[i]
        line = gen.problem(t) if kind == "problem" else gen.kinds[kind](t)
        corpus.add(line, t, kind, enc if records else None)
    return corpus


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--lines", type=int, default=DEFAULT_LINES)
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--problem-rate", type=float, default=0.01)
    p.add_argument("--shape", choices=("plain", "fluentbit"), default="plain")
    p.add_argument("--mix", choices=tuple(MIXES), help="an adversarial mix instead of the corpus")
    p.add_argument("--tab-escape", choices=("t", "u0009"), default="t")
    p.add_argument("-o", "--output", type=Path, help="file to write (default stdout)")
    args = p.parse_args(argv)
    make = partial(generate_mix, args.mix) if args.mix else generate
    corpus = make(
        args.lines,
        seed=args.seed,
        problem_rate=args.problem_rate,
        records=args.shape == "fluentbit",
        tab_escape=args.tab_escape,
    )
    items = corpus.records if args.shape == "fluentbit" else corpus.lines
    out = args.output.open("wb") if args.output else sys.stdout.buffer
    try:
        for item in items:
            out.write(item + b"\n")
    finally:
        if args.output:
            out.close()
    print(
        f"{len(items)} {args.shape} lines, {sum(map(len, items)) + len(items)} bytes, kinds {dict(corpus.kinds)}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
