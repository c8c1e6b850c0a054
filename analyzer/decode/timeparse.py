"""Timestamps of log lines and envelopes to epoch seconds, without datetime on the common path."""

from __future__ import annotations

import re

# Outside this range a timestamp is taken for garbage (a zeroed clock, a counter, a typo) and ignored.
MIN_EPOCH = 946684800.0  # 2000-01-01T00:00:00Z
MAX_EPOCH = 4102444800.0  # 2100-01-01T00:00:00Z

_MINUTE = re.compile(r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d)", re.ASCII)
_DAYS_IN_MONTH = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_SCALE = (1, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000, 100_000_000, 1_000_000_000)
_INVALID = -1
_BAD_OFFSET = 1 << 30
# Lines of one stream share a few minutes, so the calendar arithmetic is done once per minute.
# Keys are the 16-character "YYYY-MM-DDTHH:MM" prefix, as str or as bytes (both are cached).
_minute_cache: dict[str | bytes, int] = {}
_MINUTE_CACHE_MAX = 8192


def _minute_seconds(prefix: str) -> int:
    """Epoch seconds of a ``YYYY-MM-DDTHH:MM`` prefix (UTC), or _INVALID."""
    m = _MINUTE.fullmatch(prefix)
    if m is None:
        return _INVALID
    y, mo, d, h, mi = int(m[1]), int(m[2]), int(m[3]), int(m[4]), int(m[5])
    if not (1 <= mo <= 12 and 1 <= d <= _DAYS_IN_MONTH[mo]) or h > 23 or mi > 59:
        return _INVALID
    if mo == 2 and d == 29 and not (y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)):
        return _INVALID
    # days_from_civil (H. Hinnant): proleptic Gregorian date to days since 1970-01-01.
    y -= mo <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (mo + (-3 if mo > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return (era * 146097 + doe - 719468) * 86400 + h * 3600 + mi * 60


def _minute(prefix: str | bytes) -> int:
    base = _minute_cache.get(prefix)
    if base is None:
        base = _minute_seconds(prefix if isinstance(prefix, str) else prefix.decode("latin-1"))
        if len(_minute_cache) >= _MINUTE_CACHE_MAX:
            _minute_cache.clear()
        _minute_cache[prefix] = base
    return base


def istio_time(ts: str | bytes) -> float | None:
    """``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (Istio's formatDate, Envoy's ``%Y-%m-%dT%T.%fZ``); the caller has
    checked the length and the ``T``, ``.`` and ``Z`` positions."""
    prefix = ts[:16]
    base = _minute_cache.get(prefix)
    if base is None:
        base = _minute(prefix)
    sec = ts[17:26]  # "SS.ffffff": one float() reads seconds and fraction
    if base < 0 or not (sec[:2].isdigit() and sec[3:].isdigit()):
        return None
    seconds = float(sec)
    t = base + seconds
    return t if MIN_EPOCH <= t < MAX_EPOCH and seconds < 61.0 else None


def _offset(hh: str, mm: str, sign: str) -> int:
    if not (hh.isdigit() and mm.isdigit()) or int(hh) > 23 or int(mm) > 59:
        return _BAD_OFFSET
    seconds = int(hh) * 3600 + int(mm) * 60
    return -seconds if sign == "-" else seconds


def _clock(s: str) -> float | None:
    """``YYYY-MM-DD[T ]HH:MM:SS[.f{1,9}][Z|±HH:MM|±HHMM]`` (an ASCII str) to epoch seconds."""
    n = len(s)
    if n < 19 or s[16] != ":":
        return None
    if n == 27 and s[26] == "Z" and s[19] == "." and s[10] == "T":
        return istio_time(s)
    base = _minute(s[:16])
    if base < 0:
        return None
    ss = s[17:19]
    if not ss.isdigit() or ss > "60":
        return None
    offset = 0
    last = s[-1]
    if last == "Z" or last == "z":
        end = n - 1
    elif n >= 25 and s[-3] == ":" and s[-6] in "+-":
        end = n - 6
        offset = _offset(s[-5:-3], s[-2:], s[-6])
    elif n >= 24 and s[-5] in "+-" and s[-4:].isdigit():
        end = n - 5
        offset = _offset(s[-4:-2], s[-2:], s[-5])
    else:
        end = n
    if offset == _BAD_OFFSET:
        return None
    frac = 0.0
    if end > 19:
        digits = s[20:end]
        k = len(digits)
        if s[19] not in ".," or not 1 <= k <= 9 or not digits.isdigit():
            return None
        frac = int(digits) / _SCALE[k]
    t = base + int(ss) - offset + frac
    return t if MIN_EPOCH <= t < MAX_EPOCH else None


def parse_time(value: str | bytes | float | int) -> float | None:
    """Epoch seconds from an RFC3339 / legacy Envoy timestamp or an epoch number; None if unusable.

    Accepts ``Z`` or a numeric offset (none means UTC), 0-9 fractional digits, ``T`` or a space between
    date and time, and epoch seconds as a number or a numeric string. Values before 2000 or from 2100 on
    are treated as garbage (None), never as an error.
    """
    if isinstance(value, str):
        s = value
    elif isinstance(value, bytes):
        if len(value) == 27 and value[26] == 90 and value[19] == 46 and value[10] == 84:
            return istio_time(value)
        s = value.decode("latin-1")
    elif isinstance(value, bool):
        return None
    elif isinstance(value, int | float):
        t = float(value)
        return t if MIN_EPOCH <= t < MAX_EPOCH else None
    else:
        return None
    if not s.isascii():
        return None
    if len(s) >= 19 and s[4] == "-":
        return _clock(s if s[-1] > " " else s.rstrip())
    try:
        t = float(s)
    except ValueError:
        return None
    return t if MIN_EPOCH <= t < MAX_EPOCH else None
