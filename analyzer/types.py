"""Types shared by the pure core (catalogue, decode, match, incidents) and the edges (store, ingest, API)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

_NO_LABELS: Mapping[str, str] = MappingProxyType({})


class Category(StrEnum):
    APISERVER_CONNECTIVITY = "apiserver-connectivity"
    RBAC_PERMISSIONS = "rbac-permissions"
    SIDECAR_INIT = "sidecar-init"
    CNI = "cni"
    PROXY_READINESS = "proxy-readiness"
    XDS_CONFIG = "xds-config"
    CERTIFICATES = "certificates"
    UPSTREAM_ERRORS = "upstream-errors"
    INJECTION = "injection"
    ACCESS_DENIED = "access-denied"
    PROXY_CRASH = "proxy-crash"
    # Errors of mesh components that no rule knows (analyzer/unclassified.py); never a catalogue rule's.
    UNCLASSIFIED = "unclassified"


class Severity(StrEnum):
    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"
    INFO = "info"


class Component(StrEnum):
    ISTIOD = "istiod"
    ISTIO_PROXY = "istio-proxy"
    ISTIO_INIT = "istio-init"
    ISTIO_CNI = "istio-cni"
    ZTUNNEL = "ztunnel"
    APP = "app"
    ANY = "any"


class Status(StrEnum):
    PENDING = "pending"  # younger than the transient window and still recurring
    SUPPRESSED = "suppressed"  # stopped within the window: a transient, counted but not alerted
    OPEN = "open"  # recurring past the window, or a rule with no window
    RESOLVED = "resolved"  # quiet for resolve_after


class CauseScope(StrEnum):
    """Where a cause's symptoms may be: anywhere in its cluster, its namespace, or its workload."""

    MESH = "mesh"
    NAMESPACE = "namespace"
    WORKLOAD = "workload"


@dataclass(frozen=True, slots=True)
class Causes:
    """What a rule's incidents explain (analyzer/causes.py): incidents of these categories or rules whose first
    occurrence falls inside the cause incident's interval (widened by ``slack``), in the same cluster and scope."""

    categories: tuple[Category, ...]
    rules: tuple[str, ...]
    scope: CauseScope
    slack: float  # seconds

    def targets(self, rule_id: str, category: str) -> bool:
        return rule_id in self.rules or any(c.value == category for c in self.categories)


@dataclass(frozen=True, slots=True)
class Expression:
    """One Hyperscan expression of a rule. Matching is always per line (HS_FLAG_MULTILINE)."""

    pattern: str
    caseless: bool = False


@dataclass(frozen=True, slots=True)
class Scope:
    """Where a rule applies. Each filter applies only where the record carries that metadata."""

    containers: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()

    def admits(self, container: str | None, namespace: str | None) -> bool:
        if self.containers and container is not None and container not in self.containers:
            return False
        return not (self.namespaces and namespace is not None and namespace not in self.namespaces)


# Container names each Istio component runs as; a rule of that component applies only to those containers
# (where the record names its container). "app" is every container that is none of these.
COMPONENT_CONTAINERS: Mapping[Component, frozenset[str]] = MappingProxyType(
    {
        Component.ISTIOD: frozenset({"discovery", "istiod"}),
        Component.ISTIO_PROXY: frozenset({"istio-proxy", "istio-ingressgateway", "istio-egressgateway"}),
        Component.ISTIO_INIT: frozenset({"istio-init", "istio-validation"}),
        Component.ISTIO_CNI: frozenset({"install-cni", "istio-cni", "istio-cni-node", "cni-agent"}),
        # The ztunnel DaemonSet's container is named istio-proxy (shared with sidecars and waypoints).
        Component.ZTUNNEL: frozenset({"istio-proxy", "ztunnel"}),
    }
)
ISTIO_CONTAINERS = frozenset().union(*COMPONENT_CONTAINERS.values())


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    title: str
    category: Category
    component: Component
    severity: Severity
    expressions: tuple[Expression, ...]
    scope: Scope
    transient: float | None  # seconds; None: escalate at once
    resolve_after: float  # seconds of quiet after which an incident resolves
    remediation: Mapping[str, str]  # language tag ("en", "pt-BR") -> text
    references: tuple[str, ...]
    examples_match: tuple[str, ...]
    examples_no_match: tuple[str, ...]
    source: str  # the file the rule came from, for error messages
    # Checked on a line after ``expressions`` matched it (Python ``re``): look-alikes Hyperscan cannot exclude.
    exclude: tuple[Expression, ...] = ()
    # What this rule's incidents cause (their symptoms are grouped under them at read time); None: nothing.
    causes: Causes | None = None

    def applies_to(self, container: str | None, namespace: str | None) -> bool:
        """Component and scope filters; each applies only where the record carries the metadata."""
        if container is not None and self.component is not Component.ANY:
            if self.component is Component.APP:
                if container in ISTIO_CONTAINERS:
                    return False
            elif container not in COMPONENT_CONTAINERS[self.component] and not self.scope.containers:
                return False
        return self.scope.admits(container, namespace)


@dataclass(frozen=True, slots=True)
class Catalogue:
    rules: tuple[Rule, ...]
    digest: str  # sha256 over the canonical content; keys the compiled-database cache

    def by_id(self) -> dict[str, Rule]:
        return {r.id: r for r in self.rules}


@dataclass(slots=True)
class LogRecord:
    """One decoded log record: the text rules match, plus whatever metadata the envelope carried."""

    line: bytes  # the decoded log text (UTF-8 where valid; raw bytes are kept as they are)
    time: float | None = None  # event time, epoch seconds: from the line, else the envelope
    cluster: str | None = None
    namespace: str | None = None
    pod: str | None = None
    container: str | None = None
    labels: Mapping[str, str] = field(default_factory=lambda: _NO_LABELS)
    stream: str | None = None
    level: str | None = None  # normalised: debug, info, warn, error, fatal
    scope: str | None = None  # Istio log scope (klog, ads, envoy config, ...)
    workload: str | None = None  # the owning workload where the record names it (a Kubernetes event's object)

    @property
    def text(self) -> str:
        return self.line.decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record that could not be decoded. Travels as data; counted by ``reason``."""

    reason: str  # invalid-json, invalid-utf8, not-an-object, missing-log, empty, too-large, ...
    detail: str = ""


@dataclass(frozen=True, slots=True)
class IncidentKey:
    cluster: str
    namespace: str
    workload: str


@dataclass(frozen=True, slots=True)
class Evidence:
    time: float
    line: str
    pod: str | None = None
    container: str | None = None


@dataclass(frozen=True, slots=True)
class Occurrence:
    rule_id: str
    key: IncidentKey
    time: float
    evidence: Evidence


@dataclass(frozen=True, slots=True)
class Interval:
    """Occurrences of one rule and key, folded: no two occurrences further apart than resolve_after."""

    rule_id: str
    key: IncidentKey
    first_seen: float
    last_seen: float
    count: int
    head: tuple[Evidence, ...]  # the earliest few lines, oldest first
    tail: tuple[Evidence, ...]  # the latest few lines, oldest first
    pods: tuple[str, ...] = ()  # sorted, bounded

    @property
    def id(self) -> str:
        """Stable for the same rule, key and first_seen (so replays give the same ids)."""
        k = self.key
        raw = f"{self.rule_id}\x1f{k.cluster}\x1f{k.namespace}\x1f{k.workload}\x1f{self.first_seen!r}"
        return hashlib.sha256(raw.encode()).hexdigest()[:20]


@dataclass(frozen=True, slots=True)
class OffsetUpdate:
    """Next offset to consume for a partition; ``previous`` is what the writer believes is stored."""

    topic: str
    partition: int
    previous: int | None
    next: int


@dataclass(frozen=True, slots=True)
class Changes:
    """What one batch changed: written in one store transaction together with its offsets.

    ``merges`` are the batch's new occurrences, folded within the batch only: the store merges each into what
    it already holds for the same rule and key (within resolve_after), in place, so consumers of different
    partitions build one incident together and an incident keeps its id (and its ack) as it grows.
    """

    merges: tuple[Interval, ...] = ()
    stream_time: float | None = None
