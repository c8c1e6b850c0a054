from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from analyzer.decode import parse_time


def iso(s: str) -> float:
    """Oracle: the standard library's reading of an ISO timestamp with at most 6 fractional digits."""
    dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


@pytest.mark.parametrize(
    "text",
    [
        "2020-06-29T23:37:27.335928Z",  # Istio formatDate
        "2026-06-04T07:03:51Z",  # no fraction
        "2020-11-25T21:26:18.409Z",  # Envoy START_TIME, milliseconds
        "2021-06-19T15:28:18.485439+07:00",  # CRI-O local offset
        "2021-06-19T15:28:18.485439-03:30",
        "2019-07-19 16:14:31.920",  # legacy Envoy, UTC
        "2024-02-29T23:59:59.5Z",  # leap day
    ],
)
def test_matches_the_standard_library(text: str) -> None:
    assert parse_time(text) == pytest.approx(iso(text), abs=1e-6)
    assert parse_time(text.encode()) == pytest.approx(iso(text), abs=1e-6)


def test_nanoseconds_and_offsets() -> None:
    # 2021-06-19T15:28:18+07:00 is 08:28:18Z; the 9 fractional digits must not be truncated to zero.
    base = calendar.timegm((2021, 6, 19, 8, 28, 18))
    assert parse_time("2021-06-19T15:28:18.485439385+07:00") == pytest.approx(base + 0.485439385, abs=1e-6)
    assert parse_time("2021-06-19T08:28:18.485439385Z") == pytest.approx(base + 0.485439385, abs=1e-6)
    assert parse_time("2021-06-19T08:28:18.4Z") == pytest.approx(base + 0.4, abs=1e-6)
    assert parse_time("2021-06-19T10:28:18+0200") == base


def test_epoch_numbers() -> None:
    assert parse_time(1747747726.566696) == 1747747726.566696
    assert parse_time(1747747726) == 1747747726.0
    assert parse_time("1747747726.5") == 1747747726.5


@pytest.mark.parametrize(
    "value",
    [
        "1970-01-01T00:00:00Z",  # a zeroed clock
        "0001-01-01T00:00:00Z",  # Go's zero time
        "1999-12-31T23:59:59.999999Z",
        "2100-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
        0,
        0.0,
        -1,
        1e12,  # milliseconds are not seconds
        float("nan"),
        float("inf"),
        True,
    ],
)
def test_absurd_values_are_none(value: str | float) -> None:
    assert parse_time(value) is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage",
        "2020-13-01T00:00:00Z",
        "2021-02-29T00:00:00Z",  # not a leap year
        "2020-06-31T00:00:00Z",
        "2020-06-29T24:00:00Z",
        "2020-06-29T23:60:00Z",
        "2020-06-29T23:37:61.000000Z",
        "2020-06-29T23:37:2x.335928Z",
        "2020-06-29T23:37:27.33592xZ",
        "2020-06-29T23:37:27.Z",
        "2020-06-29T23:37:27.1234567890Z",  # ten fractional digits
        "2020-06-29T23:37:27+25:00",
        "2020-06-29X23:37:27Z",
        "2020-06-29T23:37:27.335928Zjunk",
        "\uff12\uff10\uff12\uff10-06-29T23:37:27Z",  # fullwidth (non-ASCII) digits
    ],
)
def test_unparseable_is_none(text: str) -> None:
    assert parse_time(text) is None
    assert parse_time(text.encode()) is None


@given(
    moment=st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2098, 12, 31)),
    nanos=st.integers(0, 999_999_999),
    digits=st.integers(0, 9),
    offset_minutes=st.integers(-14 * 60, 14 * 60),
    zulu=st.booleans(),
)
def test_rfc3339_round_trip(moment: datetime, nanos: int, digits: int, offset_minutes: int, zulu: bool) -> None:
    moment = moment.replace(microsecond=0)
    frac = str(nanos).rjust(9, "0")[:digits]
    if zulu:
        offset_minutes = 0
        zone = "Z"
    else:
        sign = "-" if offset_minutes < 0 else "+"
        zone = f"{sign}{abs(offset_minutes) // 60:02d}:{abs(offset_minutes) % 60:02d}"
    text = moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if digits else "") + zone
    utc = moment - timedelta(minutes=offset_minutes)
    expected = calendar.timegm(utc.timetuple()) + (int(frac) / 10**digits if digits else 0.0)
    assert parse_time(text) == pytest.approx(expected, abs=2e-6)
