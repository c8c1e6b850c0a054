"""The Decoder: one physical input record (a file line or a Kafka record value) to a LogRecord."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

import orjson

from analyzer.decode.cri import PartialLines, split_cri, split_timestamp_prefix
from analyzer.decode.docker import NOT_AN_OBJECT, record_from_docker
from analyzer.decode.events import event_object, looks_like_row, record_from_event, record_from_row
from analyzer.decode.fields import line_fields, object_fields
from analyzer.decode.fluentbit import record_from_mapping
from analyzer.decode.timeparse import parse_time
from analyzer.types import LogRecord, Rejected

EMPTY = Rejected("empty", "")


class Format(StrEnum):
    AUTO = "auto"  # per record: JSON envelope, CRI, `kubectl --timestamps`, else plain
    PLAIN = "plain"
    CRI = "cri"
    DOCKER = "docker"
    FLUENTBIT = "fluentbit"


# Decoder method per format (looked up once per Decoder; constructing one is cheap)
_METHODS = {
    Format.AUTO: "_auto",
    Format.PLAIN: "_plain_line",
    Format.CRI: "_cri_or_plain",
    Format.DOCKER: "_docker",
    Format.FLUENTBIT: "_fluentbit",
}


def _plain(raw: bytes, envelope_time: bytes | None = None, stream: str | None = None) -> LogRecord:
    line = raw[:-1] if raw[-1:] == b"\r" else raw
    t, level, scope = line_fields(line)
    if t is None and envelope_time is not None:
        t = parse_time(envelope_time)
    return LogRecord(line, t, stream=stream, level=level, scope=scope)


def _load(raw: bytes) -> dict[str, object] | Rejected:
    """An envelope that must be a JSON object (explicit docker / Fluent Bit input)."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            raw.decode()
        except UnicodeDecodeError as bad:
            return Rejected("invalid-utf8", f"byte {bad.start}")
        return Rejected("invalid-json", str(exc)[:200])
    if type(obj) is not dict:
        return Rejected(NOT_AN_OBJECT.reason, type(obj).__name__)
    return obj


class Decoder:
    """Decodes one record at a time; keeps CRI partial lines between calls (one Decoder per input stream).

    ``__call__`` returns the record, a Rejected, or None while a CRI partial line is being buffered;
    ``flush`` returns what is still buffered at the end of the input.
    """

    def __init__(self, fmt: Format | str = Format.AUTO, *, max_line_bytes: int = 1 << 20) -> None:
        self.format = fmt if type(fmt) is Format else Format(fmt)
        self.max_line_bytes = max_line_bytes
        self._partials = PartialLines(max_line_bytes)
        self._decode: Callable[[bytes], LogRecord | Rejected | None] = getattr(self, _METHODS[self.format])

    def __call__(self, raw: bytes) -> LogRecord | Rejected | None:
        n = len(raw)
        if n > self.max_line_bytes:
            return Rejected("too-large", f"{n} bytes > {self.max_line_bytes}")
        if not n or raw.isspace():
            return EMPTY
        return self._decode(raw)

    def flush(self) -> list[LogRecord]:
        """Partial CRI lines whose final chunk never came, one record per stream."""
        return [_plain(line, time, stream) for stream, line, time in self._partials.drain() if line]

    def _auto(self, raw: bytes) -> LogRecord | Rejected | None:
        c = raw[0]
        if c == 123:  # "{": an envelope if it carries a log/message string, else a JSON log line
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError:
                return _plain(raw)
            if type(obj) is not dict:
                return _plain(raw)
            if event_object(obj) is not None:  # before the envelopes: an Event has a "message" string too
                return record_from_event(obj, max_line_bytes=self.max_line_bytes)
            if type(obj.get("log")) is str:
                if len(obj) == 3 and "stream" in obj and "time" in obj:
                    return record_from_docker(obj)
                return record_from_mapping(obj)
            if type(obj.get("message")) is str:
                return record_from_mapping(obj)
            line = raw[:-1] if raw[-1] == 13 else raw
            t, level, scope = object_fields(obj)
            return LogRecord(line, t, level=level, scope=scope)
        if 48 <= c <= 57:
            cri = split_cri(raw)
            if cri is not None:
                return self._cri(*cri)
            prefixed = split_timestamp_prefix(raw)
            if prefixed is not None:
                return _plain(prefixed[1], prefixed[0])
        if looks_like_row(raw):  # a pasted `kubectl get events` / `kubectl describe` Events row
            row = record_from_row(raw)
            if row is not None:
                return row
        return _plain(raw)

    _plain_line = staticmethod(_plain)

    def _cri_or_plain(self, raw: bytes) -> LogRecord | Rejected | None:
        cri = split_cri(raw)
        return _plain(raw) if cri is None else self._cri(*cri)

    def _cri(self, time: bytes, stream: str, partial: bool, message: bytes) -> LogRecord | Rejected | None:
        if partial:
            self._partials.add(stream, message, time)
            return None
        if self._partials:
            joined = self._partials.finish(stream, message, time)
            if isinstance(joined, int):
                return Rejected("too-large", f"{joined} bytes in CRI partial chunks > {self.max_line_bytes}")
            message, time = joined
        return _plain(message, time, stream)

    def _docker(self, raw: bytes) -> LogRecord | Rejected:
        obj = _load(raw)
        return obj if isinstance(obj, Rejected) else record_from_docker(obj)

    def _fluentbit(self, raw: bytes) -> LogRecord | Rejected:
        obj = _load(raw)
        if isinstance(obj, Rejected):
            return obj
        if event_object(obj) is not None:  # the kubernetes_events input: the record is the Event object
            return record_from_event(obj, max_line_bytes=self.max_line_bytes)
        return record_from_mapping(obj)
