"""Request and response models: every body the API sends or accepts is one of these (and so in /openapi.json)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from analyzer.types import Category, Component, Severity, Status

MAX_TEXT = 2000  # comments, free text
MAX_NAME = 253  # Kubernetes object names are at most 253 characters


def _storable(value: str) -> str:
    """Text every store and every JSON encoder can hold: no NUL, no lone surrogate."""
    if "\x00" in value:
        raise ValueError("must not contain NUL (U+0000)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (a lone surrogate is not)") from None
    return value


Text = Annotated[str, AfterValidator(_storable)]


class Problem(BaseModel):
    """An error: ``detail`` says what went wrong and, where it helps, what to do."""

    detail: str


class IncidentKeyOut(BaseModel):
    cluster: str
    namespace: str
    workload: str
    pods: list[str] = Field(description="pods seen in the evidence (bounded)")


class AffectedOut(BaseModel):
    """What a root's symptoms cover."""

    incidents: int = Field(description="symptom incidents grouped under this root")
    workloads: int = Field(description="distinct namespace/workload pairs among them")
    pods: int = Field(description="distinct pods among them (at least: an incident keeps a bounded pod list)")


class IncidentItem(BaseModel):
    id: str
    rule: str
    title: str = Field(description="the rule's title in the running catalogue; the rule id if it is gone")
    category: Category
    severity: Severity
    status: Status = Field(
        description="derived at the service's stream time; a root cause is open while any of its symptoms is"
    )
    key: IncidentKeyOut
    first_seen: datetime
    last_seen: datetime
    count: int
    acked: bool
    acked_by: str | None = None
    acked_at: datetime | None = None
    ack_comment: str | None = Field(default=None, description="the comment given with the ack")
    silenced: bool = Field(description="an unexpired silence matches; silenced incidents are still counted")
    caused_by: str | None = Field(
        default=None,
        description="the root cause's incident id when this incident is a symptom of another (derived at read "
        "time from the catalogue's causes), else null",
    )
    affected: AffectedOut | None = Field(
        default=None, description="on a root cause: what its symptoms cover; null on any other incident"
    )


class IncidentPageOut(BaseModel):
    items: list[IncidentItem]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next (older) page; null on the last")


class EvidenceOut(BaseModel):
    time: datetime
    pod: str | None
    container: str | None
    line: str


class IncidentDetail(IncidentItem):
    evidence: list[EvidenceOut] = Field(description="the first and the last few matching lines, oldest first")
    language: str = Field(description="the language of ``remediation`` (en or pt-BR)")
    remediation: str | None = Field(description="null when the rule is no longer in the running catalogue")
    references: list[str]
    commands: list[str] = Field(description="kubectl / istioctl commands to look further, shell-quoted")
    transient_seconds: float | None
    resolve_after_seconds: float
    symptoms: list[IncidentItem] = Field(
        default_factory=list,
        description="on a root cause: the incidents it explains, earliest first (at most 1000; `affected` counts "
        "them all)",
    )


class AckRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    by: Text | None = Field(default=None, min_length=1, max_length=MAX_NAME)
    comment: Text | None = Field(default=None, max_length=MAX_TEXT)


def _given(name: str) -> dict[str, Any]:
    return {"required": [name], "properties": {name: {"not": {"type": "null"}}}}


def _silence_schema_rules(schema: dict[str, Any]) -> None:
    """The cross-field rules of a silence, in its JSON schema too: a matcher, and one kind of expiry."""
    schema["allOf"] = [
        {"anyOf": [_given(name) for name in ("rule", "cluster", "namespace", "workload")]},
        {"oneOf": [_given("expires_at"), _given("duration")]},
    ]


class SilenceRequest(BaseModel):
    """Mute incidents matching every given matcher (at least one) until ``expires_at`` or for ``duration``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_silence_schema_rules)

    rule: Text | None = Field(default=None, min_length=1, max_length=MAX_NAME)
    cluster: Text | None = Field(default=None, min_length=1, max_length=MAX_NAME)
    namespace: Text | None = Field(default=None, min_length=1, max_length=MAX_NAME)
    workload: Text | None = Field(default=None, min_length=1, max_length=MAX_NAME)
    expires_at: float | Text | None = Field(
        default=None, description="RFC 3339 time or epoch seconds; give this or duration"
    )
    duration: str | None = Field(
        default=None, pattern=r"^\d+(\.\d+)?(ms|s|m|h|d)$", description="e.g. 30m, 2h, 7d; give this or expires_at"
    )
    by: Text | None = Field(default=None, min_length=1, max_length=MAX_NAME)
    comment: Text = Field(default="", max_length=MAX_TEXT)

    @model_validator(mode="after")
    def _complete(self) -> SilenceRequest:
        if not any((self.rule, self.cluster, self.namespace, self.workload)):
            raise ValueError("give at least one matcher: rule, cluster, namespace or workload")
        if (self.expires_at is None) == (self.duration is None):
            raise ValueError("give exactly one of expires_at and duration")
        return self


class SilenceOut(BaseModel):
    id: str
    rule: str | None
    cluster: str | None
    namespace: str | None
    workload: str | None
    expires_at: datetime
    created_by: str
    comment: str


class SilenceList(BaseModel):
    items: list[SilenceOut]


class ExpressionOut(BaseModel):
    pattern: str
    caseless: bool


class ScopeOut(BaseModel):
    containers: list[str]
    namespaces: list[str]


class ExamplesOut(BaseModel):
    match: list[str]
    no_match: list[str]


class RuleSummary(BaseModel):
    id: str
    title: str
    category: Category
    component: Component
    severity: Severity
    transient_seconds: float | None = Field(description="window after which a recurring problem escalates")
    resolve_after_seconds: float
    source: str = Field(description="the catalogue file it came from")


class CausesOut(BaseModel):
    categories: list[Category]
    rules: list[str]
    scope: str = Field(description="mesh (the cluster), namespace or workload")
    slack_seconds: float


class RuleDetail(RuleSummary):
    expressions: list[ExpressionOut]
    exclude: list[ExpressionOut] = Field(description="checked on a line after a match: benign look-alikes")
    scope: ScopeOut
    remediation: dict[str, str] = Field(description="language tag -> text")
    references: list[str]
    examples: ExamplesOut
    causes: CausesOut | None = Field(
        default=None, description="what this rule's incidents explain: their symptoms are grouped under them"
    )


class RuleList(BaseModel):
    digest: str = Field(description="sha256 of the running catalogue")
    loaded_at: datetime
    items: list[RuleSummary]


class CatalogueProblem(BaseModel):
    file: str | None
    rule: str | None
    reason: str
    message: str = Field(description="the problem as the loader reported it")


class ReloadRefused(BaseModel):
    detail: str
    errors: list[CatalogueProblem]
    running_digest: str


class ReloadResult(BaseModel):
    status: str
    rules: int
    digest: str
    changed: bool


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: str
    consuming: bool | None = None
    store: bool | None = None
