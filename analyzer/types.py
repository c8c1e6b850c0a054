"""Types shared by the pure core (catalogue, decode, match, incidents) and the edges (store, ingest, API)."""

from __future__ import annotations

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
    APP = "app"
    ANY = "any"


class Status(StrEnum):
    PENDING = "pending"  # younger than the transient window and still recurring
    SUPPRESSED = "suppressed"  # stopped within the window: a transient, counted but not alerted
    OPEN = "open"  # recurring past the window, or a rule with no window
    RESOLVED = "resolved"  # quiet for resolve_after


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
