"""The lane for errors no rule knows: error/critical/fatal lines of the mesh's own components, as templates.

A line qualifies when its level is error or fatal (Envoy's ``critical`` is normalised to fatal), it comes
from a mesh component (known by container name, else by an unmistakable line shape), and no catalogue
expression matched it. Its template is the message with the log prefix (time, level, scope) stripped and the
variable tokens masked (times, addresses, ids, numbers, durations, quoted strings, paths, generated names,
key=value values), and the template id is a short hash of (component, template).

Why no clustering: Drain and its relatives merge a line into the most similar cluster seen so far, so the
template a line lands in depends on which lines came before it. Incidents must not depend on batch size,
partitioning or arrival order (DESIGN.md), so here the template is a pure function of the line: the same
line gives the same template id in every replica, every replay and every restart, and the API can re-derive
a template from a stored evidence line. The price is that two messages differing in an unmasked word stay
two templates. Only the bound on live templates (``TemplateRegistry``) depends on order: past it, lines go
to one overflow template per component, and are counted.

Pure: no I/O; the caller checks the catalogue and feeds qualifying records in.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import orjson

from analyzer.incidents import MAX_EVIDENCE_CHARS
from analyzer.types import (
    COMPONENT_CONTAINERS,
    Category,
    Component,
    Evidence,
    IncidentKey,
    LogRecord,
    Occurrence,
    Rule,
    Scope,
    Severity,
)

PREFIX = "unclassified-"
DEFAULT_MAX_TEMPLATES = 500
RESOLVE_AFTER = 900.0  # the catalogue's default resolve_after
MAX_MESSAGE = 1000  # characters of a message that are templated (bounds the cost and the memory)
MAX_TEMPLATE = 400
MAX_TITLE = 160
OVERFLOW = "overflow"
_TEXT_CACHE = 4096
LEVELS = frozenset({"error", "fatal"})

# The mesh components a template belongs to (the second part of its rule id).
ISTIOD, PILOT_AGENT, ENVOY, ISTIO_INIT, ISTIO_CNI, ZTUNNEL = (
    "istiod",
    "pilot-agent",
    "envoy",
    "istio-init",
    "istio-cni",
    "ztunnel",
)
COMPONENTS = (ISTIOD, PILOT_AGENT, ENVOY, ISTIO_INIT, ISTIO_CNI, ZTUNNEL)

_PROXY = "istio-proxy"  # pilot-agent and Envoy share it; ztunnel's DaemonSet names its container so too
_CONTAINERS: Mapping[str, str] = MappingProxyType(
    {
        **dict.fromkeys(COMPONENT_CONTAINERS[Component.ISTIOD], ISTIOD),
        **dict.fromkeys(COMPONENT_CONTAINERS[Component.ISTIO_PROXY], _PROXY),
        **dict.fromkeys(COMPONENT_CONTAINERS[Component.ISTIO_INIT], ISTIO_INIT),
        **dict.fromkeys(COMPONENT_CONTAINERS[Component.ISTIO_CNI], ISTIO_CNI),
        "ztunnel": ZTUNNEL,
    }
)

# Scopes that name their component when a line carries no container metadata (istio/istio 1.30
# log.RegisterScope call sites). Scopes registered by more than one binary (ca, dns, security, spiffe,
# monitoring, ...) are left out: such a line is not claimed without metadata.
_SCOPES: Mapping[str, str] = MappingProxyType(
    {
        **dict.fromkeys(
            (
                "ads", "adsc", "delta", "fullpush", "model", "authn", "authorization", "pkica", "pkira",
                "serverca", "secretcontroller", "rootcertrotator", "kube", "gateway", "gatewaycommon",
                "serviceentry", "validation", "validationController", "validationServer", "wle", "status",
                "krt", "controllers", "klog", "ip-autoallocate", "untaint", "trustBundle", "tag-watcher",
                "grpcgen", "file", "analysis", "processing",
            ),
            ISTIOD,
        ),
        **dict.fromkeys(
            ("xdsproxy", "sds", "cache", "citadelclient", "healthcheck", "probes", "wasm", "gcecred"), PILOT_AGENT
        ),
        **dict.fromkeys(("cni", "cni-agent", "cni-plugin", "install-cni", "repair"), ISTIO_CNI),
        "access": ZTUNNEL,  # ztunnel's connection log target; no Istio Go scope has this name
    }
)  # fmt: skip

_RULE_COMPONENT: Mapping[str, str] = MappingProxyType(
    {
        ISTIOD: "istiod",
        PILOT_AGENT: "istio-proxy",
        ENVOY: "istio-proxy",
        ISTIO_INIT: "istio-init",
        ISTIO_CNI: "istio-cni",
        ZTUNNEL: "ztunnel",
    }
)


def rule_component(component: str) -> Component:
    """The catalogue's Component for a lane component (``any`` where the enum has none, e.g. ztunnel)."""
    try:
        return Component(_RULE_COMPONENT.get(component, "any"))
    except ValueError:
        return Component.ANY


# -- the line's prefix ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Parsed:
    shape: str  # istio (zap text: Istio, Envoy via Istio, ztunnel), json, envoy (native), klog, other
    scope: str | None
    message: str
    envoy: bool  # an Envoy application-log line (any of its three formats)


_TS = r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(?:[.,]\d{1,9})?(?:[Zz]|[+-]\d\d:?\d\d)?"
_ISTIO_HEAD = re.compile(rf"^({_TS})(\t| +)([A-Za-z]{{3,8}})(?:\t| +|$)")
_ENVOY_SCOPE = re.compile(r"^envoy ([a-z][a-z0-9_.-]{0,63})(?: [^\t ]+:\d+)?(?:\t| {2,}|$)")
_SRC_BRACKET = re.compile(r"^\[[^\]\t ]{1,300}:\d+\] ?")
_CALLER = re.compile(r"^[\w./@-]{1,300}\.go:\d+(?:\t|$)")
_LEGACY_ENVOY = re.compile(
    r"^(?:\[Envoy \(Epoch \d+\)\] )?\[\d{4}-\d\d-\d\d[ T][\d:.]+\]\[\d+\]\[(\w+)\]\[([\w.-]{1,64})\] ?"
)
_KLOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [\w./@-]+:\d+\] ")
_RUNTIME_TS = re.compile(rf"^{_TS} (?=\d{{4}}-|\[|[IWEF]\d{{4}} )")  # kubectl logs --timestamps
_SCOPE_FIELD = re.compile(r"^[A-Za-z_][\w.-]*(?:::[\w.-]+)*(?::[\w-]+(?:\{[^\t}]*\})?)*$")
_JSON_META = frozenset(
    {"level", "time", "ts", "timestamp", "severity", "scope", "logger", "msg", "message", "caller", "stack", "thread"}
)
_ERROR_KEYS = frozenset({"error", "err", "reason", "cause", "msg", "message", "details"})


def _json_message(obj: dict[str, object]) -> tuple[str | None, str]:
    msg = obj.get("msg")
    if not isinstance(msg, str):
        msg = obj.get("message")
    parts = [msg if isinstance(msg, str) else ""]
    for key, value in obj.items():
        if key in _JSON_META:
            continue
        text = value if isinstance(value, str) else orjson.dumps(value).decode()
        parts.append(f"{key}={mask(text)}" if key in _ERROR_KEYS else f"{key}=<*>")
    scope = obj.get("scope")
    if not isinstance(scope, str):
        scope = obj.get("logger")
    return (scope if isinstance(scope, str) and scope else None), " ".join(parts)


def parse(line: str) -> Parsed:
    """Strip the log prefix (time, level, scope, source location) and say what shape the line has."""
    line = _RUNTIME_TS.sub("", line, count=1)
    if line.startswith("{") and line.rstrip().endswith("}"):
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            scope, message = _json_message(obj)
            envoy = scope is not None and scope.startswith("envoy ")
            return Parsed("json", scope, message, envoy)
    m = _ISTIO_HEAD.match(line)
    if m is not None:
        rest = line[m.end() :]
        e = _ENVOY_SCOPE.match(rest)
        if e is not None:
            rest = _SRC_BRACKET.sub("", rest[e.end() :], count=1)
            return Parsed("istio", f"envoy {e[1]}", rest, True)
        scope = None
        tab = rest.find("\t")
        if m[2] == "\t" and tab > 0 and _SCOPE_FIELD.match(rest[:tab]):
            scope, rest = rest[:tab], rest[tab + 1 :]
        elif m[2] != "\t":
            word = rest.split(" ", 1)
            if word[0] in _SCOPES or "::" in word[0]:
                scope, rest = word[0], word[1] if len(word) > 1 else ""
        rest = _CALLER.sub("", rest, count=1)
        return Parsed("istio", scope, rest, False)
    m = _LEGACY_ENVOY.match(line)
    if m is not None:
        return Parsed("envoy", f"envoy {m[2]}", _SRC_BRACKET.sub("", line[m.end() :], count=1), True)
    m = _KLOG.match(line)
    if m is not None:
        return Parsed("klog", None, line[m.end() :], False)
    return Parsed("other", None, line, False)


def component_of(record: LogRecord, parsed: Parsed) -> str | None:
    """The mesh component that printed the line, or None when it is not (or not surely) one of ours."""
    container = record.container
    scope = parsed.scope or record.scope
    if container is not None:
        component = _CONTAINERS.get(container)
        if component != _PROXY:
            return component
        if parsed.envoy:
            return ENVOY
        pod = record.pod or ""
        if record.labels.get("app") == "ztunnel" or pod.startswith("ztunnel-") or _rust_target(scope):
            return ZTUNNEL
        return PILOT_AGENT
    # No container metadata: only shapes no application prints claim a line.
    if parsed.envoy:
        return ENVOY
    if parsed.shape not in ("istio", "json") or scope is None:
        return None
    if _rust_target(scope):
        return ZTUNNEL
    return _SCOPES.get(scope)


def _rust_target(scope: str | None) -> bool:
    return scope is not None and ("::" in scope or scope.startswith("ztunnel"))


# -- masking --------------------------------------------------------------------------------------------------

_SAFE = "bcdfghjklmnpqrstvwxz2456789"  # Kubernetes' generated-name alphabet (see incidents.py)
_URL = re.compile(r"\b[a-z][a-z0-9+.-]{1,15}://[^\s\"'<>]+?(?=[,;:.)\]]*(?:\s|$)|[\"'])")
# One pass for what can hide the rest: key=value pairs (a quoted or bare value) and quoted strings.
_FIRST = re.compile(
    r"(?<![\w.-])([A-Za-z_][\w.-]{0,63})=(\"(?:[^\"\\]|\\.)*\"|[^\s,;\"]+)"
    r"|\"(?:[^\"\\]|\\.)*\""
    r"|(?<![\w'])'[^'\n]*'(?![\w'])"
)
_STEPS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p), r)
    for p, r in (
        (rf"{_TS}(?: [+-]\d{{4}}(?: [A-Z]{{3,5}})?)?", "<TIME>"),
        (r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b", "<UUID>"),
        (r"\[[0-9a-fA-F:.]*:[0-9a-fA-F:.]*\](?::\d{1,5})?", "<IP>"),
        (r"(?<![\w:.])(?=[0-9a-fA-F:.]*\d)(?:[0-9a-fA-F]{0,4}:){2,7}[0-9a-fA-F.]{0,15}(?![\w:])", "<IP>"),
        (r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?:/\d{1,2})?(?::\d{1,5})?(?![\d.])", "<IP>"),
        (r"(?<![\w/.-])[\w.@/-]{0,300}\.(?:go|cc|h|cpp|rs|py|java):\d+", "<SRC>"),
        (r"(?<![\w/.:-])/[\w.@%+~-]+(?:/[\w.@%+~-]*)*", "<PATH>"),
        # namespace/name; two plain words (and/or, adding/updating) are prose, not names
        (
            r"(?<![\w/.-])(?=[a-z0-9.-]*/?[a-z0-9.-]*[0-9.-])[a-z0-9][a-z0-9.-]{1,252}/[a-z0-9][a-z0-9.-]{1,252}",
            "<NAME>",
        ),
        (rf"\b[a-z0-9][a-z0-9.-]{{0,240}}-[{_SAFE}0-9]{{6,10}}-[{_SAFE}]{{5}}\b", "<NAME>"),
        (rf"\b[a-z0-9][a-z0-9.-]{{0,240}}-[{_SAFE}]{{5}}\b", "<NAME>"),
        (r"\b[a-z0-9-]{1,63}(?:\.[a-z0-9-]{1,63}){2,}\b", "<HOST>"),
        (r"\b0x[0-9a-fA-F]+\b", "<HEX>"),
        (r"\b(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{8,}\b", "<HEX>"),
        (r"\bv\d+(?:\.\d+){1,3}(?:[-+][\w.]+)?\b", "<VER>"),
        (r"(?<![\w.])\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h)(?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))*(?![\w.])", "<DUR>"),
        (r"(?<=\[)[CS]\d+(?=\])", "<ID>"),
        (r"(?<![A-Za-z0-9.])[-+]?\d+(?:[.,]\d+)*(?![A-Za-z0-9])", "<NUM>"),
    )
)
# A step runs only when the text has what every match of it needs (a digit, a slash): most steps are skipped
# on most messages, and the result is the same.
_NEEDS = tuple(
    "/" if r == "<PATH>" or p.pattern.startswith("(?<![\\w/.-])(?=") else ("" if r in ("<NAME>", "<HOST>") else "0")
    for p, r in _STEPS
)
_DIGIT = re.compile(r"\d")
_RUNS = re.compile(r"(<(?:[A-Z]+|\*)>)(?:[ ,;]+\1)+")  # a list of one kind of variable: any length, one mask
_SPACE = re.compile(r"\s+")
_MASK = re.compile(r"\"<\*>\"|'<\*>'|<(?:[A-Z]+|\*)>(?:\.\.\.)?")


def _first(m: re.Match[str]) -> str:
    key, value = m[1], m[2]
    if key is None:
        return '"<*>"' if m[0][0] == '"' else "'<*>'"
    if key.lower() not in _ERROR_KEYS:
        return f"{key}=<*>"
    # An error's text is the message itself (ztunnel: error="..."): keep it, masked.
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return f'{key}="{mask(value[1:-1])}"'
    return f"{key}={mask(value)}"


def mask(text: str) -> str:
    """Variable tokens replaced by ``<KIND>`` placeholders; whitespace collapsed. Deterministic."""
    text = _FIRST.sub(_first, _URL.sub("<URL>", text[:MAX_MESSAGE]))
    digit, slash = _DIGIT.search(text) is not None, "/" in text
    for (pattern, replacement), need in zip(_STEPS, _NEEDS, strict=True):
        if (need == "0" and not digit) or (need == "/" and not slash):
            continue
        text = pattern.sub(replacement, text)
    return _SPACE.sub(" ", _RUNS.sub(r"\1...", text)).strip()


def template_of(parsed: Parsed) -> str:
    template = mask(parsed.message)
    if len(template) > MAX_TEMPLATE:
        template = template[: MAX_TEMPLATE - 1] + "\u2026"
    return template or "(empty message)"


def template_id(component: str, template: str) -> str:
    """Ten hex digits of sha256 over (component, template): stable across processes and versions."""
    return hashlib.sha256(f"{component}\x1f{template}".encode()).hexdigest()[:10]


def rule_id_for(component: str, tid: str) -> str:
    return f"{PREFIX}{component}-{tid}"


def split_rule_id(rule_id: str) -> tuple[str, str] | None:
    """(component, template id or "overflow") of an unclassified rule id; None for any other id."""
    if not rule_id.startswith(PREFIX):
        return None
    rest = rule_id[len(PREFIX) :]
    component, _, tid = rest.rpartition("-")
    if component not in COMPONENTS or not tid:
        return None
    return component, tid


def is_unclassified(rule_id: str) -> bool:
    return split_rule_id(rule_id) is not None


# -- the lane -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Template:
    rule_id: str
    component: str
    text: str  # the masked message


@dataclass(frozen=True, slots=True)
class Classified:
    """What one qualifying line became."""

    template: Template
    occurrence: Occurrence
    overflow: bool


def qualify(record: LogRecord) -> tuple[str, Parsed] | None:
    """(component, parsed line) when the record is an error of a mesh component; the caller has already
    checked that no catalogue expression matched it."""
    if record.level not in LEVELS:
        return None
    parsed = parse(record.text)
    component = component_of(record, parsed)
    return None if component is None else (component, parsed)


def template_for_line(component: str, line: str) -> Template:
    """The template of an evidence line of a known component (the API and `rules draft` re-derive it)."""
    text = template_of(parse(line))
    return Template(rule_id_for(component, template_id(component, text)), component, text)


def occurrence_key(record: LogRecord, component: str, default_cluster: str) -> IncidentKey:
    return IncidentKey(record.cluster or default_cluster, record.namespace or "-", component)


def title_for(template: Template) -> str:
    if template.rule_id.endswith(f"-{OVERFLOW}"):
        return f"Unclassified {template.component} errors beyond the template limit"
    title = f"Unclassified {template.component} error: {template.text}"
    return title if len(title) <= MAX_TITLE else title[: MAX_TITLE - 1] + "\u2026"


def title_from_id(rule_id: str) -> str:
    """A title when only the id is at hand (a list page after a restart, before the template is known)."""
    parts = split_rule_id(rule_id)
    if parts is None:
        return rule_id
    component, tid = parts
    if tid == OVERFLOW:
        return f"Unclassified {component} errors beyond the template limit"
    return f"Unclassified {component} error (template {tid})"


def synthetic_rule(template: Template) -> Rule:
    """The Rule an unclassified incident is stored and shown with: info, no transient window, never alerted."""
    rid = template.rule_id
    draft = f"mesh-analyzer rules draft {rid}"
    en = (
        f"No rule in the catalogue recognises this {template.component} error; it is shown so that unknown "
        f"problems are not lost. Template: `{template.text}`. Read the evidence lines: if it is a real problem, "
        f"promote it to a rule: `{draft} FILE` (the log file) or `{draft} --server URL` prints a rule "
        "skeleton; fill in category, severity and remediation, add it to patterns/, then run "
        "`mesh-analyzer rules check && mesh-analyzer rules test` and reload. If it is noise, silence it."
    )
    pt = (
        f"Nenhuma regra do catálogo reconhece este erro de {template.component}; ele aparece para que problemas "
        f"desconhecidos não se percam. Modelo: `{template.text}`. Leia as linhas de evidência: se for um problema "
        f"real, promova-o a regra: `{draft} ARQUIVO` (o arquivo de log) ou `{draft} --server URL` imprime o "
        "esqueleto de uma regra; preencha categoria, severidade e remediação, adicione-a a patterns/, rode "
        "`mesh-analyzer rules check && mesh-analyzer rules test` e recarregue. Se for ruído, silencie-o."
    )
    if rid.endswith(f"-{OVERFLOW}"):
        en = (
            f"More distinct unclassified {template.component} error templates arrived than the analyzer keeps "
            "(ANALYZER_UNCLASSIFIED_MAX_TEMPLATES); these lines were folded here and counted in "
            "analyzer_unclassified_overflow_lines_total. Look at the evidence, write rules for the frequent "
            "ones, or raise the limit."
        )
        pt = (
            f"Chegaram mais modelos distintos de erros não classificados de {template.component} do que o "
            "analisador guarda (ANALYZER_UNCLASSIFIED_MAX_TEMPLATES); estas linhas foram agrupadas aqui e "
            "contadas em analyzer_unclassified_overflow_lines_total. Veja a evidência, escreva regras para os "
            "frequentes ou aumente o limite."
        )
    return Rule(
        id=rid,
        title=title_for(template),
        category=Category.UNCLASSIFIED,
        component=rule_component(template.component),
        severity=Severity.INFO,
        expressions=(),
        scope=Scope(),
        transient=None,
        resolve_after=RESOLVE_AFTER,
        remediation=MappingProxyType({"en": en, "pt-BR": pt}),
        references=(),
        examples_match=(),
        examples_no_match=(),
        source="<unclassified>",
    )


def overflow_template(component: str) -> Template:
    return Template(rule_id_for(component, OVERFLOW), component, "(templates beyond the limit)")


class TemplateRegistry:
    """The templates this process knows, at most ``max_templates`` of them, with their synthetic rules.

    A new template beyond the limit first makes room by forgetting templates whose incidents have settled
    (quiet for resolve_after at the last stream time seen); when none has, its lines go to the component's
    overflow template and are counted in ``overflowed``.
    """

    def __init__(self, max_templates: int = DEFAULT_MAX_TEMPLATES) -> None:
        self.max_templates = max_templates
        self.rules: dict[str, Rule] = {}  # rule id -> synthetic rule (templates and overflow)
        self._last_seen: dict[str, float] = {}  # template rule id -> latest event time
        self._stream_time: float | None = None
        self.overflowed: Counter[str] = Counter()  # component -> lines sent to the overflow template

    def __len__(self) -> int:
        return len(self._last_seen)

    def note_stream_time(self, stream_time: float) -> None:
        self._stream_time = stream_time

    def admit(self, template: Template, when: float) -> tuple[Template, Rule, bool]:
        """The template to use (itself, or its component's overflow), its rule, and whether it overflowed."""
        rid = template.rule_id
        if rid in self._last_seen:
            if when > self._last_seen[rid]:
                self._last_seen[rid] = when
            return template, self.rules[rid], False
        if len(self._last_seen) >= self.max_templates and not self._make_room():
            self.overflowed[template.component] += 1
            spill = overflow_template(template.component)
            rule = self.rules.get(spill.rule_id)
            if rule is None:
                rule = self.rules[spill.rule_id] = synthetic_rule(spill)
            return spill, rule, True
        self._last_seen[rid] = when
        rule = self.rules[rid] = synthetic_rule(template)
        return template, rule, False

    def restore(self, template: Template, last_seen: float) -> None:
        """Know a template again after a restart (read back from stored evidence); never evicts."""
        if template.rule_id in self.rules or len(self._last_seen) >= self.max_templates:
            return
        self._last_seen[template.rule_id] = last_seen
        self.rules[template.rule_id] = synthetic_rule(template)

    def _make_room(self) -> bool:
        if self._stream_time is None:
            return False
        settled = [rid for rid, seen in self._last_seen.items() if self._stream_time - seen >= RESOLVE_AFTER]
        if not settled:
            return False
        settled.sort(key=lambda rid: self._last_seen[rid])
        for rid in settled[: max(1, len(settled) // 2)]:
            del self._last_seen[rid]
            del self.rules[rid]
        return True


class Lane:
    """Qualifying records -> occurrences of unclassified templates (through a bounded registry)."""

    def __init__(self, registry: TemplateRegistry, default_cluster: str) -> None:
        self.registry = registry
        self.default_cluster = default_cluster
        # message -> template: a retry loop prints the same message again and again (its time is the prefix)
        self._texts: dict[str, str] = {}

    def __call__(self, record: LogRecord, when: float) -> Classified | None:
        found = qualify(record)
        if found is None:
            return None
        component, parsed = found
        text = self._texts.get(parsed.message)
        if text is None:
            if len(self._texts) >= _TEXT_CACHE:
                self._texts.clear()
            text = self._texts[parsed.message] = template_of(parsed)
        template = Template(rule_id_for(component, template_id(component, text)), component, text)
        template, _rule, overflow = self.registry.admit(template, when)
        evidence = Evidence(when, _evidence_text(record.text), record.pod, record.container)
        key = occurrence_key(record, component, self.default_cluster)
        return Classified(template, Occurrence(template.rule_id, key, when, evidence), overflow)


def _evidence_text(text: str) -> str:
    text = text.rstrip("\r\n")
    return text if len(text) <= MAX_EVIDENCE_CHARS else text[: MAX_EVIDENCE_CHARS - 1] + "\u2026"


def template_from_evidence(rule_id: str, lines: Iterable[str]) -> Template | None:
    """The template of a stored unclassified incident, re-derived from its evidence lines (pure)."""
    parts = split_rule_id(rule_id)
    if parts is None:
        return None
    component, tid = parts
    if tid == OVERFLOW:
        return overflow_template(component)
    first: Template | None = None
    for line in lines:
        template = template_for_line(component, line)
        if template.rule_id == rule_id:
            return template
        first = first or template
    # The masker changed since the line was stored: keep the stored id, show today's template of it.
    return None if first is None else Template(rule_id, component, first.text)


def rule_from_evidence(rule_id: str, lines: Iterable[str]) -> Rule | None:
    template = template_from_evidence(rule_id, lines)
    return None if template is None else synthetic_rule(template)


class _Overlay(Mapping[str, Rule]):
    """Read-only view: the catalogue's rules, then the synthetic ones (no copy of either)."""

    def __init__(self, base: Mapping[str, Rule], extra: Mapping[str, Rule]) -> None:
        self._base, self._extra = base, extra

    def __getitem__(self, key: str) -> Rule:
        try:
            return self._base[key]
        except KeyError:
            return self._extra[key]

    def __iter__(self) -> Iterator[str]:
        yield from self._base
        yield from (k for k in list(self._extra) if k not in self._base)

    def __len__(self) -> int:
        return len(self._base) + sum(1 for k in list(self._extra) if k not in self._base)


def with_rules(base: Mapping[str, Rule], extra: Mapping[str, Rule] | None) -> Mapping[str, Rule]:
    """``base`` plus the synthetic rules in ``extra`` (the store and the API need a rule for every id)."""
    return base if not extra else _Overlay(base, extra)


# -- offline (`scan`, `rules draft`) --------------------------------------------------------------------------


# -- `rules draft`: a rule skeleton from a template ------------------------------------------------------------

_GAPS = {"NUM": 40, "DUR": 40, "ID": 40, "IP": 60, "TIME": 60, "UUID": 40, "HEX": 100, "VER": 60}
_META = set("\\.^$|?*+()[]{}")
_MAX_EXPRESSION = 400
_TITLES = {
    ISTIOD: "istiod",
    PILOT_AGENT: "pilot-agent",
    ENVOY: "Envoy",
    ISTIO_INIT: "istio-init",
    ISTIO_CNI: "istio-cni",
    ZTUNNEL: "ztunnel",
}


def _escape(literal: str, json_line: bool, blank: str = " ") -> str:
    if json_line:
        literal = orjson.dumps(literal).decode()[1:-1]  # how the text appears inside the JSON log line
    out = []
    for word in re.split(r"( +)", literal):
        if word.startswith(" "):
            out.append(blank)  # the template collapsed whitespace; a TAB of the line needs "[ \\t]"
        else:
            out.append("".join("\\" + ch if ch in _META else ch for ch in word))
    return "".join(out)


def _draft_text(line: str) -> tuple[str, bool]:
    """The masked message a rule is drafted from, and whether the line is JSON (msg only, not extra keys)."""
    parsed = parse(line)
    if parsed.shape == "json":
        try:
            obj = orjson.loads(_RUNTIME_TS.sub("", line, count=1))
        except orjson.JSONDecodeError:
            obj = None
        msg = obj.get("msg", obj.get("message")) if isinstance(obj, dict) else None
        if isinstance(msg, str):
            return mask(msg), True
    return template_of(parsed), False


def draft_expression(line: str, scale: int = 1, blank: str = " ") -> str:
    """An expression from the line's template: literal parts escaped, variables as bounded gaps."""
    text, json_line = _draft_text(line)
    parts: list[str] = []
    size = 0
    pos = 0
    gap = ""
    for m in _MASK.finditer(text):
        literal = text[pos : m.start()]
        if not parts:  # lead with a word, not with punctuation left over from a variable
            literal = literal.lstrip(" :,;.)]}>") if re.search(r"[A-Za-z0-9]{3}", literal) else ""
        if literal:
            piece = _escape(literal, json_line, blank)
            if parts and size + len(gap) + len(piece) > _MAX_EXPRESSION:
                break
            parts.append(gap + piece if parts else piece)
            size += len(gap) + len(piece)
        kind = m[0].strip("\"'<>.").rstrip(">")
        n = _GAPS.get(kind, 200) * scale * (4 if m[0].endswith("...") else 1)
        gap = f".{{0,{n}}}"
        pos = m.end()
    tail = text[pos:].rstrip()
    if tail and size < _MAX_EXPRESSION:
        parts.append((gap if parts else "") + _escape(tail, json_line, blank))
    return "".join(parts)


def _longest_literal(line: str) -> str:
    text, json_line = _draft_text(line)
    pieces = [p for p in _MASK.split(text) if p.strip()]
    best = max(pieces, key=len, default=text).strip()
    return _escape(best, json_line)


def draft_expressions(lines: Iterable[str]) -> list[str]:
    """One expression per distinct shape of the example lines, each checked to match its line."""
    out: list[str] = []
    for line in lines:
        if any(re.search(e, line) for e in out):
            continue
        candidates = (
            draft_expression(line),
            draft_expression(line, blank="[ \\t]"),
            draft_expression(line, 10, "[ \\t]"),
            _longest_literal(line),
        )
        for candidate in candidates:
            try:
                if candidate and re.search(candidate, line):
                    out.append(candidate)
                    break
            except re.error:
                continue
    return out


def _yaml_str(value: str) -> str:
    if value.isprintable():
        return "'" + value.replace("'", "''") + "'"
    return orjson.dumps(value).decode()  # a JSON string is a YAML double-quoted scalar (tabs as \t)


def _slug(text: str) -> str:
    words = re.findall(r"[a-z0-9]+", _MASK.sub(" ", text).lower())
    slug = "-".join(words[:6])
    return slug[:60].strip("-")


def draft_rule(template: Template, lines: list[str], count: int | None = None) -> str:
    """A YAML rule skeleton that `rules check` accepts once the category is filled in."""
    component = rule_component(template.component)
    slug = _slug(template.text) or template.rule_id.rsplit("-", 1)[-1]
    rule_id = f"{template.component}-{slug}"
    title = f"{_TITLES.get(template.component, template.component)} error: {template.text}"
    if len(title) > 120:
        title = title[:119] + "\u2026"
    categories = ", ".join(c.value for c in Category if c is not Category.UNCLASSIFIED)
    seen = f", seen {count} times" if count else ""
    examples = list(dict.fromkeys(lines))[:5]
    out = [
        f"# Drafted by `mesh-analyzer rules draft {template.rule_id}`{seen}, from the template:",
        f"#   {template.text}",
        "# Fill in `category`, then check the title, severity, expression (widen it to the problem class: read",
        "# the call site in the source), remediation and references, and add near misses to examples.no_match:",
        "#   mesh-analyzer rules check && mesh-analyzer rules test",
        "rules:",
        f"  - id: {rule_id}",
        f"    title: {_yaml_str(title)}",
        f"    category: FILL-IN  # one of: {categories}",
        f"    component: {component.value}",
        "    severity: medium",
        "    match:",
        *(f"      - {_yaml_str(e)}" for e in draft_expressions(examples)),
        "    remediation:",
        "      en: >-",
        "        TODO: what this error means, what to check (kubectl / istioctl commands) and the fix.",
        "      pt-BR: >-",
        "        TODO: o que este erro significa, o que verificar (comandos kubectl / istioctl) e a correção.",
        "    references:",
        "      - TODO the log call site at a tag, e.g. https://github.com/istio/istio/blob/1.30.3/<path>",
        "    examples:",
        "      match:",
        *(f"        - {_yaml_str(line)}" for line in examples),
        "      no_match: []",
    ]
    return "\n".join(out) + "\n"
