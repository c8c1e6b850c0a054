"""Parsing of what clients send: times, durations, languages. Pure; errors are ValueError with a clear message."""

from __future__ import annotations

import calendar
import math
import re
from datetime import UTC, datetime

from analyzer.catalogue import LANGUAGES, parse_duration

DEFAULT_LANGUAGE = "en"
MAX_SILENCE_SECONDS = 366 * 86400.0

# datetime's range: epoch seconds outside it cannot be shown as RFC 3339.
MIN_EPOCH = -62135596800.0  # 0001-01-01T00:00:00Z
MAX_EPOCH = 253402300799.0  # 9999-12-31T23:59:59Z

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$",
)
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def parse_time(value: str) -> float:
    """RFC 3339 (``2024-05-01T12:00:00Z``, any offset) or epoch seconds -> epoch seconds."""
    text = value.strip()
    if _NUMBER.match(text):
        return check_epoch(float(text))
    m = _RFC3339.match(text)
    if m is None:
        raise ValueError(f"{value!r} is not a time: use RFC 3339 (2024-05-01T12:00:00Z) or epoch seconds")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    fraction, zone = m.group(7), m.group(8)
    try:
        datetime(year, month, day, hour, minute, min(second, 59))  # validates the calendar; 60 is a leap second
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a valid date and time: {exc}") from None
    if hour > 23 or minute > 59 or second > 60:
        raise ValueError(f"{value!r} is not a valid time of day")
    offset = 0
    if zone not in ("Z", "z"):
        sign = -1 if zone[0] == "-" else 1
        hours, minutes = int(zone[1:3]), int(zone[4:6])
        if hours > 23 or minutes > 59:
            raise ValueError(f"{value!r} has an invalid UTC offset")
        offset = sign * (hours * 3600 + minutes * 60)
    # timegm, unlike datetime arithmetic, cannot overflow at the ends of the calendar.
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)) - offset
    return float(seconds) + (float(fraction) if fraction else 0.0)


def check_epoch(seconds: float) -> float:
    if not math.isfinite(seconds) or not MIN_EPOCH <= seconds <= MAX_EPOCH:
        raise ValueError(f"{seconds!r} is out of range for a time (epoch seconds of years 1-9999)")
    return seconds


def clamp_epoch(seconds: float) -> float:
    return min(max(seconds, MIN_EPOCH), MAX_EPOCH)


def to_datetime(seconds: float) -> datetime:
    """Epoch seconds -> aware UTC datetime (serialised as RFC 3339 with Z)."""
    return datetime.fromtimestamp(clamp_epoch(seconds), UTC)


def parse_silence_duration(value: str) -> float:
    seconds = parse_duration(value)
    if seconds > MAX_SILENCE_SECONDS:
        raise ValueError(f"duration {value!r} is longer than the maximum of 366d")
    return seconds


def _supported(tag: str) -> str | None:
    """The catalogue language serving a requested tag: exact match first, then by primary language."""
    lowered = tag.lower()
    for lang in LANGUAGES:
        if lowered == lang.lower():
            return lang
    primary = lowered.split("-", 1)[0]
    for lang in LANGUAGES:
        if primary == lang.lower().split("-", 1)[0]:
            return lang
    return None


def negotiate_language(lang: str | None, accept_language: str | None) -> str:
    """``?lang=`` wins; else the best Accept-Language entry we can serve (q-values honoured); else English."""
    if lang:
        return _supported(lang.strip()) or DEFAULT_LANGUAGE
    if not accept_language:
        return DEFAULT_LANGUAGE
    best: tuple[float, int, str] | None = None
    for position, entry in enumerate(accept_language.split(",")):
        parts = [p.strip() for p in entry.split(";")]
        tag, q = parts[0], 1.0
        for param in parts[1:]:
            name, _, raw = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(raw.strip())
                except ValueError:
                    q = -1.0
        if not tag or not 0 < q <= 1 or not math.isfinite(q):
            continue  # q=0 means "not acceptable"; a malformed q is ignored
        served = DEFAULT_LANGUAGE if tag == "*" else _supported(tag)
        if served is None:
            continue
        candidate = (q, -position, served)  # highest q, then the earliest listed
        if best is None or candidate > best:
            best = candidate
    return best[2] if best else DEFAULT_LANGUAGE
