"""Fluent Bit records (tail + cri/docker parser + kubernetes filter + kafka output, json format)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import cast

from analyzer.decode.docker import MISSING_LOG, NOT_AN_OBJECT, log_line
from analyzer.decode.fields import line_fields, object_fields
from analyzer.decode.timeparse import parse_time
from analyzer.types import LogRecord, Rejected

_NO_LABELS: Mapping[str, str] = MappingProxyType({})


def record_from_mapping(obj: dict[str, object], *, max_line_bytes: int | None = None) -> LogRecord | Rejected:
    """The record of one Fluent Bit (or docker) JSON object already parsed.

    The text is ``log`` (cri multiline parser, docker), else ``message`` (classic cri parser), else ``msg``
    (``merge_log on`` merged an Istio JSON line into the record: its level/scope/time keys are then read
    from the record). Event time: the line's own timestamp, else ``@timestamp``, else ``time``.
    """
    if type(obj) is not dict:
        return NOT_AN_OBJECT
    text = obj.get("log")
    merged = False
    if type(text) is not str:
        text = obj.get("message")
        if type(text) is not str:
            text = obj.get("msg")
            if type(text) is not str:
                return MISSING_LOG
            merged = True
    line = log_line(text)
    if max_line_bytes is not None and len(line) > max_line_bytes:
        return Rejected("too-large", f"{len(line)} bytes > {max_line_bytes}")
    t, level, scope = object_fields(obj) if merged else line_fields(line)
    if t is None:
        ts = obj.get("@timestamp")
        if ts is not None and type(ts) is not bool and isinstance(ts, str | float | int):
            t = parse_time(ts)
        if t is None:
            ts = obj.get("time")
            if ts is not None and type(ts) is not bool and isinstance(ts, str | float | int):
                t = parse_time(ts)
    cluster = obj.get("cluster_name")
    namespace = pod = container = None
    labels = _NO_LABELS
    k = obj.get("kubernetes")
    if type(k) is dict:
        namespace = k.get("namespace_name")
        pod = k.get("pod_name")
        container = k.get("container_name")
        if cluster is None:
            cluster = k.get("cluster_name")
        found = k.get("labels")
        if type(found) is dict and found:
            for value in found.values():
                if type(value) is not str:
                    labels = {a: b for a, b in found.items() if type(a) is str and type(b) is str}
                    break
            else:
                labels = cast("Mapping[str, str]", found)
    stream = obj.get("stream")
    return LogRecord(
        line,
        t,
        cluster if type(cluster) is str else None,
        namespace if type(namespace) is str else None,
        pod if type(pod) is str else None,
        container if type(container) is str else None,
        labels,
        stream if type(stream) is str else None,
        level,
        scope,
    )
