"""Kubernetes events as log records: API objects (core/v1, events.k8s.io/v1) and pasted kubectl rows.

Shapes decoded:

- a core/v1 Event object (``kubectl get events -o json`` items, a watch event's ``object``, and Fluent Bit's
  ``kubernetes_events`` input, whose record body is the Event itself, plus ``@timestamp`` from the kafka
  output);
- an events.k8s.io/v1 Event (``regarding``, ``note``, ``deprecatedLastTimestamp``, ``series``);
- a row of ``kubectl get events`` (with or without ``-A``, ``-o wide``; also the column order of kubectl
  1.10-1.13: LAST SEEN, FIRST SEEN, COUNT, NAME, KIND, SUBOBJECT, TYPE, REASON, SOURCE, MESSAGE) or of the
  Events section of ``kubectl describe`` (kubectl 1.14+: TYPE, REASON, AGE, FROM, MESSAGE; ages may read
  ``<invalid>`` when the node's clock is ahead, and kubelets before 1.20 give ``kubelet, <node>`` as FROM).

A bare event message (no TYPE/REASON columns) is not decoded: nothing tells it from a log line, and the rules
match the message text anyway. The older ``kubectl describe`` layout (FirstSeen LastSeen Count From
SubObjectPath Type Reason Message) names no object, only a fieldPath, so it is left as text too: rules that
need the container find ``spec.containers{...}`` in it verbatim.

The text rules match is the canonical form ``TYPE<TAB>REASON<TAB>OBJECT<TAB>MESSAGE``:

- TYPE and REASON as the event gives them (``Warning``, ``FailedCreate``); empty when absent;
- OBJECT is ``kind/name`` as the source spells it (``ReplicaSet/foo-7d9f8b6c5d`` from the API,
  ``replicaset/foo-7d9f8b6c5d`` from a ``kubectl get events`` row), followed by ``/fieldPath`` when the
  event names a part of the object (``Pod/foo-7d9f8b6c5d-x2x4k/spec.containers{istio-proxy}``); empty for a
  ``kubectl describe`` row, which names no object;
- MESSAGE is the message (``note``), surrounding white space trimmed, line breaks turned into TABs so the
  event stays one line.

Every character of the form that is not copied from the event is a TAB or ``/``: characters a literal
prefilter over the raw JSON record never includes in a literal, so each literal a rule needs still occurs
verbatim in the raw record (the raw-record prefilter stays exact). Rules should match REASON and MESSAGE and
not rely on the case of the kind.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from analyzer.decode.timeparse import parse_time
from analyzer.incidents import workload_of
from analyzer.types import LogRecord, Rejected

_LEVELS = {"Warning": "warn", "Normal": "info"}
# A container of the pod the event is about: fieldPath "spec.containers{istio-proxy}" (also init/ephemeral).
_FIELD_CONTAINER = re.compile(r"spec\.(?:initContainers|containers|ephemeralContainers)\{([^}]+)\}")
# Pod-template hashes are made of apimachinery's SafeEncodeString alphabet (older ones are decimal).
_SAFE = "bcdfghjklmnpqrstvwxz2456789"
_RS_HASH = re.compile(rf"^(?P<base>.+)-(?:[{_SAFE}0-9]{{6,10}})$")
_CRONJOB_JOB = re.compile(r"^(?P<base>.+)-[0-9]{8,10}$")  # a CronJob's Job: scheduled time in minutes
# Names the message gives where the row names no object (kubectl describe).
_MESSAGE_POD = re.compile(r'pods? "(?P<name>[a-z0-9][-a-z0-9.]*)"')
_MESSAGE_IN_POD = re.compile(r" in pod (?P<name>[a-z0-9][-a-z0-9.]*)_(?P<ns>[a-z0-9][-a-z0-9]*)\(")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def event_object(obj: Mapping[str, object]) -> Mapping[str, object] | None:
    """The event a parsed JSON object holds (itself, or a watch event's ``object``), else None.

    An event is an object with ``reason`` and ``involvedObject`` (core/v1) or a ``regarding`` object
    (events.k8s.io; an English word, so a JSON log line with a string "regarding" stays a log line).
    """
    if "reason" in obj and ("involvedObject" in obj or type(obj.get("regarding")) is dict):
        return obj
    inner = obj.get("object")  # a watch event: {"type": "ADDED", "object": {...}}
    if type(inner) is dict and "type" in obj and "reason" in inner:
        return inner if "involvedObject" in inner or type(inner.get("regarding")) is dict else None
    return None


def owner_workload(kind: str | None, name: str | None) -> str | None:
    """The workload an involved object belongs to: a pod's or ReplicaSet's owner, a CronJob's Job's CronJob."""
    if not name:
        return None
    if kind is None:
        return name
    lowered = kind.lower()
    if lowered == "pod":
        return workload_of(name, {})
    if lowered == "replicaset":
        m = _RS_HASH.match(name)
        return m.group("base") if m else name
    if lowered == "job":
        m = _CRONJOB_JOB.match(name)
        return m.group("base") if m else name
    return name


def _str(value: object) -> str | None:
    return value if type(value) is str and value else None


def _time(value: object) -> float | None:
    return parse_time(value) if type(value) is str and value else None


def _event_time(event: Mapping[str, object], envelope: Mapping[str, object]) -> float | None:
    """The latest time the event was observed; else when it was first seen or created; else the envelope's."""
    series = event.get("series")
    latest = [
        t
        for t in (
            _time(event.get("lastTimestamp")),
            _time(event.get("deprecatedLastTimestamp")),
            _time(series.get("lastObservedTime")) if type(series) is dict else None,
            _time(event.get("eventTime")),
        )
        if t is not None
    ]
    if latest:
        return max(latest)
    metadata = event.get("metadata")
    for t in (
        _time(event.get("firstTimestamp")),
        _time(event.get("deprecatedFirstTimestamp")),
        _time(metadata.get("creationTimestamp")) if type(metadata) is dict else None,
    ):
        if t is not None:
            return t
    for key in ("@timestamp", "time"):
        ts = envelope.get(key)
        if ts is not None and type(ts) is not bool and isinstance(ts, str | float | int):
            t = parse_time(ts)
            if t is not None:
                return t
    return None


def _canonical(kind_type: str, reason: str, obj: str, message: str) -> bytes:
    message = _LINE_BREAK.sub("\t", message.strip())
    text = f"{kind_type}\t{reason}\t{obj}\t{message}"
    try:
        return text.encode()
    except UnicodeEncodeError:  # lone surrogates cannot come from JSON, but a caller's str may carry them
        return text.encode("utf-8", "surrogatepass")


def _from_message(message: str) -> tuple[str | None, str | None, str | None]:
    """(pod, namespace, workload) named by a message, for rows that name no object."""
    m = _MESSAGE_IN_POD.search(message)
    if m:
        return m.group("name"), m.group("ns"), workload_of(m.group("name"), {})
    m = _MESSAGE_POD.search(message)
    if m:
        name = m.group("name").rstrip("-")  # a controller's generateName ("foo-7d9f8b6c5d-")
        if m.group("name").endswith("-"):
            return None, None, owner_workload("ReplicaSet", name)
        return None, None, workload_of(name, {})
    return None, None, None


def record_from_event(obj: Mapping[str, object], *, max_line_bytes: int | None = None) -> LogRecord | Rejected:
    """The record of an event object (``obj`` as parsed; it may be a watch event or carry Fluent Bit keys)."""
    event = event_object(obj)
    if event is None:
        return Rejected("invalid-event", "no reason with involvedObject/regarding")
    reason = event.get("reason")
    if type(reason) is not str or not reason.strip():
        return Rejected("invalid-event", "reason is not a non-empty string")
    involved = event.get("involvedObject", event.get("regarding"))
    if type(involved) is not dict:
        return Rejected("invalid-event", "involvedObject/regarding is not an object")
    message = event.get("message") if "message" in event else event.get("note")
    if message is None:
        message = ""
    if type(message) is not str:
        return Rejected("invalid-event", "message/note is not a string")
    event_type = event.get("type")
    if event_type is None:
        event_type = ""
    if type(event_type) is not str:
        return Rejected("invalid-event", "type is not a string")

    kind, name, field_path = _str(involved.get("kind")), _str(involved.get("name")), _str(involved.get("fieldPath"))
    parts = [p for p in (kind, name) if p]
    if parts and field_path:
        parts.append(field_path)
    line = _canonical(event_type, reason, "/".join(parts), message)
    if max_line_bytes is not None and len(line) > max_line_bytes:
        return Rejected("too-large", f"{len(line)} bytes > {max_line_bytes}")

    metadata = event.get("metadata")
    namespace = _str(involved.get("namespace"))
    if namespace is None and type(metadata) is dict:
        namespace = _str(metadata.get("namespace"))
    container = None
    if field_path:
        m = _FIELD_CONTAINER.search(field_path)
        container = m.group(1) if m else None
    pod = name if kind == "Pod" else None
    workload = owner_workload(kind, name)
    if workload is None:
        pod_hint, ns_hint, workload = _from_message(message)
        pod, namespace = pod or pod_hint, namespace or ns_hint
    cluster = obj.get("cluster_name")
    return LogRecord(
        line,
        _event_time(event, obj),
        cluster if type(cluster) is str else None,
        namespace,
        pod,
        container,
        level=_LEVELS.get(event_type),
        workload=workload,
    )


# ---- pasted kubectl rows -------------------------------------------------------------------------------

# kubectl prints durations as 45s, 3m29s, 5h, 2d3h, 4y; a count as "2m (x4 over 5m)".
_AGE = r"(?:[0-9]{1,5}[smhdy]){1,3}|<unknown>|<invalid>"
_SEEN = rf"(?:{_AGE})(?: \(x[0-9]+ over (?:{_AGE})\))?"
_GAP = r"[ \t]{2,}"  # kubectl's tabwriter pads columns with at least two spaces (describe) or three (get)
_TYPE = r"(?P<type>Normal|Warning)"
_REASON = r"(?P<reason>[A-Z][A-Za-z0-9]{2,80})"
_OBJECT = r"(?P<object>[a-z][a-z0-9.]{0,80}/[a-z0-9][-a-z0-9.:]{0,252})"
_NAMESPACE = r"[a-z0-9][-a-z0-9]{0,62}"

# kubectl get events [-A] [-o wide]: [NAMESPACE] LAST SEEN TYPE REASON OBJECT [SUBOBJECT SOURCE] MESSAGE [...]
_GET_ROW = re.compile(
    rf"^(?:(?P<ns>{_NAMESPACE}){_GAP})?(?P<seen>{_SEEN}){_GAP}{_TYPE}{_GAP}{_REASON}{_GAP}{_OBJECT}{_GAP}(?P<rest>\S.*)$"
)
# The -o wide tail: FIRST SEEN, COUNT, NAME (the event's name: "<object name>.<hex>").
_WIDE_TAIL = re.compile(rf"{_GAP}(?:{_AGE}){_GAP}[0-9]+{_GAP}[a-z0-9][-a-z0-9.:]*\.[0-9a-f]{{8,20}}$")
_SOURCE = r"(?P<source>[A-Za-z][-A-Za-z0-9./_:]{0,80}(?:, [-A-Za-z0-9.]{1,253})?)"  # "kubelet, node-1"
_WIDE_MIDDLE = re.compile(
    rf"^(?:(?P<sub>spec\.[A-Za-z.]+(?:\{{[^}}]+\}})?){_GAP})?(?:{_SOURCE}{_GAP})?(?P<message>\S.*)$"
)
# kubectl 1.10-1.13 get events: [NAMESPACE] LAST SEEN FIRST SEEN COUNT NAME KIND [SUBOBJECT] TYPE REASON [SOURCE]
# MESSAGE, NAME being the event's ("<object name>.<hex>").
_OLD_GET_ROW = re.compile(
    rf"^(?:(?P<ns>{_NAMESPACE}){_GAP})?(?:{_AGE}){_GAP}(?:{_AGE}){_GAP}[0-9]{{1,9}}{_GAP}"
    rf"(?P<name>[a-z0-9][-a-z0-9.:]{{0,252}})\.[0-9a-f]{{8,20}}{_GAP}(?P<kind>[A-Z][A-Za-z]{{1,62}}){_GAP}"
    rf"(?:(?P<sub>spec\.[A-Za-z.]+(?:\{{[^}}]+\}})?){_GAP})?{_TYPE}{_GAP}{_REASON}{_GAP}"
    rf"(?:{_SOURCE}{_GAP})?(?P<message>\S.*)$"
)
# kubectl describe ... Events: "  Warning  FailedCreate  2m (x4 over 5m)  replicaset-controller  Error ...".
# A pre-1.20 "kubelet, <node>" FROM is also taken before a single space: pastes (and redacted node names such as
# "ip-<node>") often lose the padding, and a node name holds no space, so the message still starts unambiguously.
_NODE_SOURCE = r"[a-z][-a-z0-9]{0,40}, [-A-Za-z0-9.<>_]{1,253}"
_DESCRIBE_ROW = re.compile(
    rf"^[ \t]*{_TYPE}{_GAP}{_REASON}{_GAP}(?P<seen>{_SEEN}){_GAP}(?:{_SOURCE}{_GAP}|{_NODE_SOURCE} )"
    rf"(?P<message>\S.*)$"
)


def looks_like_row(line: bytes) -> bool:
    """Cheap gate before the row expressions: the type column is always there."""
    return b"Warning" in line or b"Normal" in line


def record_from_row(line: bytes) -> LogRecord | None:
    """The record of a pasted ``kubectl get events`` / ``kubectl describe`` Events row, else None."""
    try:
        text = line.decode().rstrip("\r\n")
    except UnicodeDecodeError:
        return None
    m = _GET_ROW.match(text)
    if m is not None:
        rest, obj = m.group("rest"), m.group("object")
        tail = _WIDE_TAIL.search(rest)
        if tail is not None:  # -o wide: [SUBOBJECT] [SOURCE] MESSAGE FIRST-SEEN COUNT NAME
            wide = _WIDE_MIDDLE.match(rest[: tail.start()])
            if wide is not None:
                rest = wide.group("message")
                if wide.group("sub"):
                    obj = f"{obj}/{wide.group('sub')}"
        kind, _, name_path = obj.partition("/")
        name, _, field_path = name_path.partition("/")
        container = None
        if field_path:
            fm = _FIELD_CONTAINER.search(field_path)
            container = fm.group(1) if fm else None
        event_type, reason = m.group("type"), m.group("reason")
        workload = owner_workload(kind, name)
        return LogRecord(
            _canonical(event_type, reason, obj, rest),
            None,
            namespace=m.group("ns"),
            pod=name if kind == "pod" else None,
            container=container,
            level=_LEVELS.get(event_type),
            workload=workload,
        )
    m = _OLD_GET_ROW.match(text)
    if m is not None:
        kind, name, sub = m.group("kind"), m.group("name"), m.group("sub")
        fm = _FIELD_CONTAINER.search(sub) if sub else None
        event_type = m.group("type")
        return LogRecord(
            _canonical(
                event_type, m.group("reason"), f"{kind}/{name}" + (f"/{sub}" if sub else ""), m.group("message")
            ),
            None,
            namespace=m.group("ns"),
            pod=name if kind == "Pod" else None,
            container=fm.group(1) if fm else None,
            level=_LEVELS.get(event_type),
            workload=owner_workload(kind, name),
        )
    m = _DESCRIBE_ROW.match(text)
    if m is None:
        return None
    event_type, reason, message = m.group("type"), m.group("reason"), m.group("message")
    pod, namespace, workload = _from_message(message)
    return LogRecord(
        _canonical(event_type, reason, "", message),
        None,
        namespace=namespace,
        pod=pod,
        level=_LEVELS.get(event_type),
        workload=workload,
    )
