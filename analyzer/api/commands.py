"""The kubectl / istioctl commands to look further at an incident, built from its key, pods and rule."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import timedelta
from shlex import quote

from analyzer.api.params import to_datetime
from analyzer.types import COMPONENT_CONTAINERS, Category, Component, Evidence, IncidentKey, Rule

MAX_PODS = 3  # commands for the first few pods; the evidence lists the rest
LOOKBACK = timedelta(minutes=1)  # start the logs a little before the first occurrence
ISTIO_NAMESPACE = "istio-system"
UNKNOWN = frozenset({"", "-", "(overflow)"})  # placeholders incidents use when metadata is missing

# The container a component runs as, when the evidence does not name one.
DEFAULT_CONTAINER = {
    Component.ISTIOD: "discovery",
    Component.ISTIO_PROXY: "istio-proxy",
    Component.ISTIO_INIT: "istio-init",
}
_MESH_CATEGORIES = frozenset({Category.XDS_CONFIG, Category.PROXY_READINESS, Category.CERTIFICATES})


# Kubernetes names (DNS-1123): anything else came from a log record and is never put on a command line,
# quoted or not (a quoted "--server=..." is still a flag to kubectl).
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _known(value: str | None, name: re.Pattern[str] = _SUBDOMAIN) -> str | None:
    return None if value is None or value in UNKNOWN or not name.match(value) else value


def _since_time(first_seen: float) -> str:
    return (to_datetime(first_seen) - LOOKBACK).strftime("%Y-%m-%dT%H:%M:%SZ")


def _containers(evidence: Sequence[Evidence]) -> dict[str, str]:
    """Pod -> the container its latest evidence line came from."""
    out: dict[str, str] = {}
    for e in sorted(evidence, key=lambda e: e.time):
        if e.pod and e.container:
            out[e.pod] = e.container
    return out


_INFERRED = (Component.ISTIOD, Component.ISTIO_PROXY, Component.ISTIO_INIT, Component.ISTIO_CNI)


def _component(rule: Rule | None, containers: Iterable[str], workload: str | None) -> Component | None:
    """The rule's component; for a rule of any component, the one its evidence came from."""
    if rule is not None and rule.component is not Component.ANY:
        return rule.component
    seen = set(containers)
    for component in _INFERRED:
        if seen & COMPONENT_CONTAINERS[component]:
            return component
    return Component.ISTIOD if workload is not None and workload.startswith("istiod") else None


def look_further(
    key: IncidentKey,
    pods: Sequence[str],
    evidence: Sequence[Evidence],
    first_seen: float,
    rule: Rule | None,
) -> list[str]:
    """Commands an operator can paste: every value from the logs is shell-quoted."""
    since = f"--since-time={_since_time(first_seen)}"
    namespace = _known(key.namespace, _LABEL)
    workload = _known(key.workload)
    category = rule.category if rule else None
    containers = _containers(evidence)
    component = _component(rule, containers.values(), workload)
    commands: list[str] = []

    if component is Component.ISTIOD:
        ns = quote(namespace or ISTIO_NAMESPACE)
        commands.append(f"kubectl -n {ns} logs {quote('deploy/' + (workload or 'istiod'))} {since}")
    if namespace is not None:
        ns = quote(namespace)
        for pod in [p for p in pods if _known(p)][:MAX_PODS]:
            container = _known(containers.get(pod), _LABEL) or (DEFAULT_CONTAINER.get(component) if component else None)
            c = f" -c {quote(container)}" if container else ""
            commands.append(f"kubectl -n {ns} logs {quote(pod)}{c} {since}")
            if category is Category.PROXY_CRASH:
                commands.append(f"kubectl -n {ns} logs {quote(pod)}{c} --previous")
            commands.append(f"kubectl -n {ns} describe pod {quote(pod)}")
            if component is Component.ISTIO_PROXY:
                commands.append(f"istioctl proxy-config cluster {quote(pod)} -n {ns}")
        if not pods and workload is not None and component is not Component.ISTIOD:
            commands.append(f"kubectl -n {ns} get pods -o wide | grep -- {quote(workload)}")
        commands.append(f"kubectl -n {ns} get events --field-selector type=Warning --sort-by=.lastTimestamp")
    if component is Component.ISTIO_PROXY or category in _MESH_CATEGORIES:
        commands.append("istioctl proxy-status")
        if component is not Component.ISTIOD:
            commands.append(f"kubectl -n {ISTIO_NAMESPACE} logs deploy/istiod {since}")
    if category is Category.APISERVER_CONNECTIVITY:
        commands.append("kubectl get --raw='/readyz?verbose'")
    if category in (Category.CNI, Category.SIDECAR_INIT):
        commands.append("kubectl get pods -A -l k8s-app=istio-cni-node -o wide")
    if category is Category.INJECTION or category is Category.XDS_CONFIG:
        commands.append(f"istioctl analyze -n {quote(namespace)}" if namespace else "istioctl analyze -A")
    return list(dict.fromkeys(commands))
