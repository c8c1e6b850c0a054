"""A deterministic sample of ordinary mesh traffic: what a prefilter literal must NOT be common in.

Healthy Envoy access logs (TEXT and JSON, every HTTP method, every everyday status code, flags ``-``),
istiod / pilot-agent / Envoy / ztunnel info lines and Kubernetes Normal events, each also wrapped the way
Fluent Bit ships it to Kafka (kubernetes metadata, Istio's pod annotations). A literal found in many of these
records would make the raw-record prefilter decode ordinary traffic for nothing: ``literal_rates`` measures
it, the literal choice prefers rare literals, and the catalogue check refuses a literal that is common.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Iterable, Sequence

import orjson

from analyzer.match.literal_db import literal_database
from analyzer.match.literals import variants

_METHODS = ("GET", "GET", "GET", "POST", "POST", "PUT", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
_CODES = (200, 200, 200, 200, 201, 202, 204, 301, 302, 304, 400, 401, 403, 404, 409, 422, 429)
_PATHS = (
    "/api/v1/users/{n}",
    "/api/v2/orders/{n}/items",
    "/healthz",
    "/productpage",
    "/reviews/{n}",
    "/cart/update?id={n}&qty=2",
    "/hipstershop.CartService/GetCart",
    "/grpc.health.v1.Health/Check",
    "/static/js/main.{n}.js",
    "/login?next=%2Faccount",
    "/v1/upload/PUT-objects/{n}",
    "/metrics",
)
_AGENTS = (
    "curl/8.5.0",
    "Go-http-client/1.1",
    "grpc-go/1.64.0",
    "okhttp/4.12.0",
    "python-requests/2.32.3",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
    "kube-probe/1.30",
    "Prometheus/2.53.0",
    "Envoy/HC",
)
_SERVICES = ("productpage", "reviews", "ratings", "details", "cartservice", "checkout", "frontend", "payments")
_NAMESPACES = ("shop", "bookinfo", "payments", "default")
_ISTIOD = (
    "ads\tPush debounce stable[{n}] 3 for config ServiceEntry/shop/ext-{n}: 100.2ms since last change, 100.3ms"
    " since last push, full=true",
    "ads\tXDS: Pushing Services:42 ConnectedEndpoints:{n} Version:2024-06-01T10:00:00Z/{n}",
    "ads\tADS: new connection for node:{svc}-7d9f8b6c5d-x2x4q.{ns}-{n}",
    'ads\tADS: "10.8.{n}.4:53512" {svc}-7d9f8b6c5d-x2x4q.{ns}-{n} terminated',
    "ads\tCDS: PUSH request for node:{svc}-7d9f8b6c5d-x2x4q.{ns} resources:212 size:183.4kB cached:208/212",
    "ads\tLDS: PUSH for node:{svc}-7d9f8b6c5d-x2x4q.{ns} resources:23 size:95.1kB",
    "ads\tEDS: PUSH INC for node:{svc}-7d9f8b6c5d-x2x4q.{ns} resources:40 size:7.8kB empty:0 cached:40/40",
    "model\tFull push, new service {ns}/{svc}.{ns}.svc.cluster.local",
    "klog\tlease lock successfully acquired: istio-system/istio-leader",
    "leader\tLeader election cycle {n} won. Starting: istio-leader",
    "delta\tdelta ADS: new delta connection for node:{svc}-{n}",
    "validationController\tNot ready to switch validation to fail-closed: dummy invalid config not rejected",
    "default\tStarting validation controller",
)
_AGENT = (
    "sds\tSDS: PUSH resource=default",
    "sds\tSDS: PUSH resource=ROOTCA",
    "cache\tgenerated new workload certificate\tlatency=120.3ms ttl=23h59m59.1s",
    "cache\tRoot cert has changed, start rotating root cert",
    "xdsproxy\tconnected to upstream XDS server: istiod.istio-system.svc:15012\tid={n}",
    "xdsproxy\tconnected to delta upstream XDS server: istiod.istio-system.svc:15012\tid={n}",
    "healthcheck\tsuccessful readiness probe",
    "Envoy proxy is ready",
    "Readiness succeeded in 1.{n}s",
    "Status server has successfully terminated",
    "Agent draining Proxy for termination",
    "Graceful termination period is 5s, starting...",
    'FLAG: --concurrency="2"',
    "Workload SDS socket not found. Starting Istio SDS Server",
    "CA Endpoint istiod.istio-system.svc:15012, provider Citadel",
    "Opening status port 15020",
    "Proxy role\tips=[10.8.{n}.4] type=sidecar id={svc}-7d9f8b6c5d-x2x4q.{ns} domain={ns}.svc.cluster.local",
)
_ENVOY = (
    "[2024-06-01 10:00:{s:02d}.{ms:03d}][{n}][info][upstream] cds: add 12 cluster(s), remove 2 cluster(s)",
    "[2024-06-01 10:00:{s:02d}.{ms:03d}][{n}][info][upstream] lds: add/update listener '0.0.0.0_8080'",
    "[2024-06-01 10:00:{s:02d}.{ms:03d}][{n}][info][main] all clusters initialized. initializing init manager",
    "[2024-06-01 10:00:{s:02d}.{ms:03d}][{n}][info][config] all dependencies initialized. starting workers",
    "2024-06-01T10:00:{s:02d}.{ms:03d}000Z\tinfo\tenvoy upstream external/envoy/source/common/upstream/"
    "cds_api_helper.cc:32\tcds: add 3 cluster(s), remove 0 cluster(s)\tthread=14",
)
_ZTUNNEL = (
    'access\tconnection complete\tsrc.addr=10.8.{n}.4:51234 src.workload="{svc}-7d9f8b6c5d-x2x4q" '
    'src.namespace="{ns}" dst.addr=10.8.2.{n}:15008 dst.hbone_addr=10.8.2.{n}:8080 dst.service="{svc}.{ns}'
    '.svc.cluster.local" direction="outbound" bytes_sent={n}12 bytes_recv=4521 duration="{n}ms"',
    "xds::client\tconnected to XDS server",
    'proxy::inbound\tlistener established\taddress=[::]:15008 component="inbound"',
)
_EVENTS = (
    ("Scheduled", "Pod", "Successfully assigned {ns}/{svc}-7d9f8b6c5d-x2x4q to gke-pool-a-7c1d"),
    ("Pulled", "Pod", 'Container image "docker.io/istio/proxyv2:1.22.3" already present on machine'),
    ("Created", "Pod", "Created container istio-proxy"),
    ("Started", "Pod", "Started container istio-init"),
    ("SuccessfulCreate", "ReplicaSet", "Created pod: {svc}-7d9f8b6c5d-x2x4q"),
    ("ScalingReplicaSet", "Deployment", "Scaled up replica set {svc}-7d9f8b6c5d to 3"),
    ("Killing", "Pod", "Stopping container istio-proxy"),
)
_ANNOTATIONS = {
    "sidecar.istio.io/status": '{"initContainers":["istio-init"],"containers":["istio-proxy"],"volumes":'
    '["workload-socket","credential-socket","workload-certs","istio-envoy","istio-data","istio-podinfo",'
    '"istio-token","istiod-ca-cert"],"imagePullSecrets":null,"revision":"default"}',
    "kubectl.kubernetes.io/default-container": "app",
    "prometheus.io/path": "/stats/prometheus",
    "prometheus.io/port": "15020",
    "prometheus.io/scrape": "true",
}
SAMPLE_LINES = 1000
SAMPLE_VERSION = "2"  # bump when the sample changes: cached literal choices depend on it


# The pods of the control plane and the node agents (DaemonSets: the pod name is all the prefix a node gets):
# their metadata is in every record they write, so a rule literal naming them is no prefilter.
_MESH_PODS = {
    "discovery": ("istiod-5c7f9b8d4-{x}", "istio-system", "istiod", "discovery"),
    "install-cni": ("istio-cni-node-{x}", "istio-system", "istio-cni-node", "install-cni"),
    "ztunnel": ("ztunnel-{x}", "istio-system", "ztunnel", "istio-proxy"),  # its container is istio-proxy
}
_CNI = (
    "cni-agent\tIstio CNI configuration and binaries validated/reinstalled",
    "cni-agent\tcni plugin ready: /host/etc/cni/net.d/10-calico.conflist",
    "repair\tRepair controller started: watching pods on node gke-pool-a-7c1d",
    "ambient\tpod {ns}/{svc}-7d9f8b6c5d-x2x4q enrolled in the mesh",
    "controllers\tstarting\tcontroller=ambient",
)


def _envelope(rnd: random.Random, line: str, container: str, svc: str, ns: str, n: int) -> bytes:
    suffix = f"{rnd.choice('bcdfghjk')}{rnd.randrange(10000):04d}"
    pod = f"{svc}-7d9f8b6c5d-{suffix}"
    if container in _MESH_PODS:
        name, ns, svc, container = _MESH_PODS[container]
        pod = name.format(x=suffix)
    return orjson.dumps(
        {
            "@timestamp": 1717236000.0 + n,
            "log": line,
            "stream": "stdout",
            "kubernetes": {
                "pod_name": pod,
                "namespace_name": ns,
                "pod_id": f"5c874f24-6836-446b-97e2-{n:012d}",
                "labels": {
                    "app": svc,
                    "version": "v1",
                    "pod-template-hash": "7d9f8b6c5d",
                    "security.istio.io/tlsMode": "istio",
                    "service.istio.io/canonical-name": svc,
                    "service.istio.io/canonical-revision": "v1",
                },
                "annotations": _ANNOTATIONS,
                "host": "gke-prod-pool-a-7c1d",
                "container_name": container,
                "docker_id": f"{n:064x}",
                "container_image": "docker.io/istio/proxyv2:1.22.3",
            },
        }
    )


def _access_text(rnd: random.Random, n: int, svc: str, ns: str) -> str:
    method, code = rnd.choice(_METHODS), rnd.choice(_CODES)
    path = rnd.choice(_PATHS).format(n=n)
    return (
        f'[2024-06-01T10:00:{n % 60:02d}.{n % 1000:03d}Z] "{method} {path} HTTP/1.1" {code} - via_upstream - "-" '
        f'{rnd.randrange(2000)} {rnd.randrange(90000)} {rnd.randrange(300)} {rnd.randrange(300)} "10.8.3.{n % 250}" '
        f'"{rnd.choice(_AGENTS)}" "5c874f24-6836-446b-97e2-{n:012x}" "{svc}.{ns}.svc.cluster.local:8080" '
        f'"10.8.2.{n % 250}:8080" outbound|8080||{svc}.{ns}.svc.cluster.local 10.8.1.{n % 250}:{40000 + n % 9999} '
        f"10.96.{n % 250}.7:8080 10.8.1.{n % 250}:{30000 + n % 9999} - default"
    )


def _access_json(rnd: random.Random, n: int, svc: str, ns: str) -> str:
    method, code = rnd.choice(_METHODS), rnd.choice(_CODES)
    return orjson.dumps(
        {
            "start_time": f"2024-06-01T10:00:{n % 60:02d}.{n % 1000:03d}Z",
            "method": method,
            "path": rnd.choice(_PATHS).format(n=n),
            "protocol": "HTTP/2" if n % 3 else "HTTP/1.1",
            "response_code": code,
            "response_flags": "-",
            "response_code_details": "via_upstream",
            "connection_termination_details": None,
            "upstream_transport_failure_reason": None,
            "bytes_received": rnd.randrange(3000),
            "bytes_sent": rnd.randrange(90000),
            "duration": rnd.randrange(400),
            "upstream_service_time": str(rnd.randrange(400)),
            "x_forwarded_for": f"203.0.113.{n % 250}",
            "user_agent": rnd.choice(_AGENTS),
            "request_id": f"5c874f24-6836-446b-97e2-{n:012x}",
            "authority": f"{svc}.{ns}.svc.cluster.local:8080",
            "upstream_host": f"10.8.2.{n % 250}:8080",
            "upstream_cluster": f"outbound|8080||{svc}.{ns}.svc.cluster.local",
            "upstream_local_address": f"10.8.1.{n % 250}:{40000 + n % 9999}",
            "downstream_local_address": f"10.96.{n % 250}.7:8080",
            "downstream_remote_address": f"10.8.1.{n % 250}:{30000 + n % 9999}",
            "requested_server_name": f"outbound_.8080_._.{svc}.{ns}.svc.cluster.local",
            "route_name": "default",
        }
    ).decode()


@functools.cache
def ordinary_records() -> tuple[bytes, ...]:
    """Fluent Bit records of ordinary traffic (about 60% access logs), the same on every call."""
    rnd = random.Random(20240601)
    out = []
    for n in range(SAMPLE_LINES):
        svc, ns = rnd.choice(_SERVICES), rnd.choice(_NAMESPACES)
        stamp = f"2024-06-01T10:{n // 60 % 60:02d}:{n % 60:02d}.{n % 1000:03d}000Z"
        kind = n % 10
        fill = {"n": n, "svc": svc, "ns": ns, "s": n % 60, "ms": n % 1000}
        if kind < 4:
            line, container = _access_text(rnd, n, svc, ns), "istio-proxy"
        elif kind < 6:
            line, container = _access_json(rnd, n, svc, ns), "istio-proxy"
        elif kind == 6:
            line, container = f"{stamp}\tinfo\t{rnd.choice(_ISTIOD).format(**fill)}", "discovery"
        elif kind == 7:
            line, container = f"{stamp}\tinfo\t{rnd.choice(_AGENT).format(**fill)}", "istio-proxy"
        elif kind == 8:
            line, container = rnd.choice(_ENVOY).format(**fill), "istio-proxy"
        elif n % 20 == 9:
            line, container = f"{stamp}\tinfo\t{rnd.choice(_ZTUNNEL).format(**fill)}", "ztunnel"
        elif n % 40 == 19:
            line, container = f"{stamp}\tinfo\t{rnd.choice(_CNI).format(**fill)}", "install-cni"
        else:
            reason, kind_name, message = rnd.choice(_EVENTS)
            line, container = f"Normal\t{reason}\t{kind_name}/{svc}\t{message.format(**fill)}", "kubernetes-event"
        out.append(_envelope(rnd, line, container, svc, ns, n))
    return tuple(out)


def literal_rates(literals: Iterable[tuple[bytes, bool]]) -> dict[tuple[bytes, bool], float]:
    """Share of ordinary records containing each (literal, caseless): the records it would make candidates."""
    wanted = sorted(set(literals))
    if not wanted:
        return {}
    # Every form a literal takes in a raw record (see ``variants``), under the literal's id.
    forms = [(i, form, caseless) for i, (lit, caseless) in enumerate(wanted) for form in variants(lit)]
    return dict(zip(wanted, record_shares(forms, len(wanted)), strict=True))


def record_shares(forms: Sequence[tuple[int, bytes, bool]], count: int) -> list[float]:
    """Share of ordinary records holding any form (id, bytes as written, caseless) of each of ``count`` ids."""
    db = literal_database([(form, c) for _, form, c in forms], [i for i, _, _ in forms], single_match=True)
    hits = [0] * count
    seen: set[int] = set()

    def on_match(literal_id: int, _from: int, _to: int, _flags: int, _ctx: object) -> None:
        seen.add(literal_id)

    records = ordinary_records()
    for record in records:
        db.scan(record, match_event_handler=on_match)
        for literal_id in seen:
            hits[literal_id] += 1
        seen.clear()
    return [n / len(records) for n in hits]
