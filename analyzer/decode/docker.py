"""Docker ``json-file`` records: ``{"log": "<line>\\n", "stream": "stdout|stderr", "time": "<RFC3339Nano>"}``."""

from __future__ import annotations

from analyzer.decode.fields import line_fields
from analyzer.decode.timeparse import parse_time
from analyzer.types import LogRecord, Rejected

MISSING_LOG = Rejected("missing-log", "no string log/message/msg")
NOT_AN_OBJECT = Rejected("not-an-object", "")


def log_line(text: str) -> bytes:
    """The record's log string as the bytes rules match: UTF-8, one trailing "\\n" or "\\r\\n" removed."""
    try:
        line = text.encode()
    except UnicodeEncodeError:  # lone surrogates cannot come from JSON, but a caller's str may carry them
        line = text.encode("utf-8", "surrogatepass")
    if line[-1:] == b"\n":
        return line[:-2] if line[-2:] == b"\r\n" else line[:-1]
    return line


def record_from_docker(obj: dict[str, object]) -> LogRecord | Rejected:
    """A docker json-file object. Lines over 16 KiB arrive as several objects (only the last ends in
    "\\n"); each object is one record."""
    text = obj.get("log")
    if type(text) is not str:
        return MISSING_LOG
    line = log_line(text)
    t, level, scope = line_fields(line)
    if t is None:
        ts = obj.get("time")
        if type(ts) is str:
            t = parse_time(ts)
    stream = obj.get("stream")
    return LogRecord(line, t, stream=stream if type(stream) is str else None, level=level, scope=scope)
