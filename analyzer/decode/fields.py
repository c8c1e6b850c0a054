"""Time, level and scope of one Istio / Envoy / klog line, read with cheap byte tests first."""

from __future__ import annotations

import re
from dataclasses import dataclass

import orjson

from analyzer.decode.timeparse import istio_time, parse_time


@dataclass(frozen=True, slots=True)
class LineFields:
    time: float | None = None  # epoch seconds, None when the line carries no (usable) timestamp
    level: str | None = None  # debug, info, warn, error, fatal
    scope: str | None = None  # Istio scope, "envoy <logger>" for Envoy app logs, "access" for access logs


# The decoders use plain tuples (time, level, scope): building a frozen dataclass costs more than parsing.
Fields = tuple[float | None, str | None, str | None]
NONE: Fields = (None, None, None)

_LEVEL_NAMES = {
    "trace": "debug",
    "debug": "debug",
    "info": "info",
    "notice": "info",
    "warn": "warn",
    "warning": "warn",
    "error": "error",
    "err": "error",
    "fatal": "fatal",
    "critical": "fatal",
    "crit": "fatal",
    "panic": "fatal",
    "dpanic": "fatal",
    "alert": "fatal",
    "emerg": "fatal",
}
_STR_LEVELS = {
    variant: norm for name, norm in _LEVEL_NAMES.items() for variant in (name, name.upper(), name.capitalize())
}
_LEVELS = {k.encode(): v for k, v in _STR_LEVELS.items()}
_KLOG_LEVELS = {73: "info", 87: "warn", 69: "error", 70: "fatal"}  # I W E F

# Scope names are identifiers (ads, klog, cni-agent, citadelclient, ...); anything else is message text.
_SCOPE_CHARS = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_."
_scopes: dict[bytes, str | None] = {}  # the set of scope fields in a fleet is small: decide each once
_SCOPES_MAX = 4096

# A line's own time counts only with a zone: a zone-less one (Java, Python loggers) is some local time.
_TS = re.compile(rb"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(?:[.,]\d{1,9})?(?:[Zz]|[+-]\d\d:?\d\d)(?=[\t ]|$)")
# After the timestamp, when the fields are not split by single tabs (tabs pasted as spaces, or mixed):
# a level word, then a scope only if tab- or double-space-terminated (a one-space gap is message text),
# or "envoy <logger>", which Envoy's own format spells with one space.
_HEAD = re.compile(
    rb"[\t ]{1,32}([A-Za-z]{3,8})(?=[\t ]|$)"
    rb"(?:[\t ]{1,32}(?:(envoy [a-z][a-z0-9_.-]{0,63})(?=[\t ]|$)|([a-z][A-Za-z0-9_.-]{0,63})(?=\t|  )))?"
)
_WORD = re.compile(rb"[A-Za-z]{3,8}(?=[\t ]|$)")
# [2019-07-19 16:14:31.920][36][warning][config] ...: time (UTC), thread, level, logger
_LEGACY_ENVOY = re.compile(
    rb"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d{1,9})?)\]\[\d{1,12}\]\[(\w{1,10})\]\[([\w.-]{1,64})\]"
)
_FLUENT_BIT = re.compile(rb"\[(\d{4})/(\d\d)/(\d\d) (\d\d:\d\d:\d\d)\] \[ ?(\w{1,10})\]")
# "pod container " (stern) or "container " in front of a timestamped line.
_NAME_PREFIX = re.compile(rb"(?:[a-z0-9][a-z0-9._-]{0,252}[\t ]{1,16}){1,2}(?=\d{4}-\d\d-\d\d[Tt])")


def level_word(line: bytes, pos: int) -> bool:
    """Whether a level name (any case) followed by a blank or the end starts at ``pos``."""
    m = _WORD.match(line, pos)
    return m is not None and m[0].lower() in _LEVELS


def normalise_level(value: object) -> str | None:
    """Istio, Envoy (spdlog), zap and klog level names to debug/info/warn/error/fatal; None if unknown."""
    if not isinstance(value, str):
        return None
    level = _STR_LEVELS.get(value)
    if level is None:
        level = _LEVEL_NAMES.get(value.strip().lower())
    return level


def _scope(field: bytes) -> str | None:
    try:
        return _scopes[field]
    except KeyError:
        pass
    scope = None
    if field[:6] == b"envoy ":
        # Envoy's text format puts "envoy <logger> <file>:<line>" in one field; keep "envoy <logger>" as its
        # JSON format and Istio's older text format do.
        name = field.split(b" ", 2)[1]
        if name and not name.translate(None, _SCOPE_CHARS):
            scope = "envoy " + name.decode("ascii")
    elif not field or len(field) > 64 or not 97 <= field[0] <= 122:
        return None  # message text: not worth remembering
    elif not field.translate(None, _SCOPE_CHARS):
        scope = field.decode("ascii")
    if len(_scopes) >= _SCOPES_MAX:
        _scopes.clear()
    _scopes[field] = scope
    return scope


def _timestamped(line: bytes, start: int, nested: bool) -> Fields:
    """A line with an RFC3339 time at ``start``: Istio/zap text, Envoy app text, controller-runtime."""
    end = start + 27
    n = len(line)
    if n > end and line[end - 1] == 90 and line[start + 19] == 46 and line[start + 10] == 84:
        t = istio_time(line[start:end])
    else:
        m = _TS.match(line, start)
        if m is None:
            return NONE
        end = m.end()
        t = parse_time(m.group())
    if end >= n:
        return (t, None, None)
    if line[end] == 9:
        # zap's console encoder: single tabs. The fast path for the overwhelmingly common shape.
        i = line.find(b"\t", end + 1, end + 10)
        if i > 0:
            level = _LEVELS.get(line[end + 1 : i])
            if level is not None:
                j = line.find(b"\t", i + 1, i + 200)
                return (t, level, _scope(line[i + 1 : j]) if j > 0 else None)
    m = _HEAD.match(line, end)
    if m is not None:
        level = _LEVELS.get(m[1]) or _STR_LEVELS.get(m[1].decode("ascii").lower())
        if level is not None:
            scope_field = m[2] or m[3]
            return (t, level, _scope(scope_field) if scope_field else None)
    if not nested and line[end] == 32 and end + 1 < n and (48 <= line[end + 1] <= 57 or line[end + 1] == 91):
        # `kubectl logs --timestamps`: the runtime's time, one space, then the line as written.
        inner = _line_fields(line, end + 1, True)
        return inner if inner[0] is not None or t is None else (t, inner[1], inner[2])
    return (t, None, None)


def _bracketed(line: bytes, start: int, nested: bool) -> Fields:
    """Lines opening with ``[``: Envoy access log, legacy Envoy, Fluent Bit's own log, kubectl --prefix."""
    if line.startswith(b"[Envoy (Epoch ", start):
        close = line.find(b"] ", start, start + 40)
        if close < 0:
            return NONE
        start = close + 2
    second = line[start + 1 : start + 2]
    if second.isdigit():
        if line[start + 11 : start + 12] == b"T":
            close = line.find(b"]", start, start + 40)
            if close > 0 and line[close + 1 : close + 3] == b' "':
                return (parse_time(line[start + 1 : close]), None, "access")
            return NONE
        m = _LEGACY_ENVOY.match(line, start)
        if m is not None:
            return (parse_time(m[1]), _LEVELS.get(m[2]), _scope(b"envoy " + m[3]))
        m = _FLUENT_BIT.match(line, start)
        if m is not None:
            return (parse_time(b"%s-%s-%sT%sZ" % (m[1], m[2], m[3], m[4])), _LEVELS.get(m[5]), None)
        return NONE
    if second == b"p" and not nested and line.startswith(b"[pod/", start):
        close = line.find(b"] ", start, start + 600)
        if close > 0:
            return _line_fields(line, close + 2, True)
    return NONE


def object_fields(obj: dict[str, object]) -> Fields:
    """Fields of a JSON log line already parsed: Istio --log_as_json, Envoy JSON app or access log."""
    start = obj.get("start_time")
    if start is not None and ("response_code" in obj or "response_flags" in obj):
        return (parse_time(start) if isinstance(start, str | int | float) else None, None, "access")
    level = obj.get("level")
    if level is None:
        level = obj.get("severity")
    ts = obj.get("time")
    if ts is None:
        ts = obj.get("timestamp")
        if ts is None:
            ts = obj.get("ts")
    scope = obj.get("scope")
    if scope is None:
        scope = obj.get("logger")
    return (
        parse_time(ts) if isinstance(ts, str | int | float) else None,
        normalise_level(level),
        scope if isinstance(scope, str) and scope else None,
    )


def _json_line(line: bytes) -> Fields:
    if line[-1] != 125:  # "}"
        return NONE
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return NONE
    return object_fields(obj) if isinstance(obj, dict) else NONE


def _line_fields(line: bytes, start: int, nested: bool) -> Fields:
    if len(line) <= start:
        return NONE
    c = line[start]
    if 48 <= c <= 57:
        return _timestamped(line, start, nested)
    if c == 91:  # "["
        return _bracketed(line, start, nested)
    if c == 123:  # "{"
        return _json_line(line[start:] if start else line)
    if c in _KLOG_LEVELS:
        # klog's header "Lmmdd hh:mm:ss.uuuuuu threadid file:line] msg" has no year: no usable time.
        if line[start + 5 : start + 6] == b" " and line[start + 1 : start + 5].isdigit():
            return (None, _KLOG_LEVELS[c], None)
        return NONE
    if 97 <= c <= 122 and not nested:
        m = _NAME_PREFIX.match(line, start)
        if m is not None:
            return _timestamped(line, m.end(), True)
    return NONE


def line_fields(line: bytes) -> Fields:
    """parse_line_fields as a plain (time, level, scope) tuple, for the decoders' hot path."""
    if not line:
        return NONE
    c = line[0]
    if 48 <= c <= 57:
        return _timestamped(line, 0, False)
    return _line_fields(line, 0, False)


def parse_line_fields(line: bytes) -> LineFields:
    """Event time, level and scope of one decoded log line; what the line does not carry is None."""
    t, level, scope = line_fields(line)
    return LineFields(t, level, scope)
