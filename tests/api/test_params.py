"""The pure helpers behind the API: time parsing and the look-further commands."""

from __future__ import annotations

import shlex
from datetime import datetime

import pytest

from analyzer.api.commands import look_further
from analyzer.api.params import parse_time
from analyzer.catalogue import load_catalogue
from analyzer.types import Evidence, IncidentKey
from tests.api.support import PATTERNS

RULES = load_catalogue(PATTERNS).by_id()


@pytest.mark.parametrize(
    "text",
    [
        "2024-05-01T12:00:00Z",
        "2024-05-01t12:00:00z",
        "2024-05-01 12:00:00Z",
        "2024-05-01T14:30:00+02:30",
        "2024-05-01T09:00:00-03:00",
        "2024-05-01T12:00:00.250Z",
        "2024-05-01T12:00:00.123456789Z",
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
    ],
)
def test_rfc3339_agrees_with_datetime(text: str) -> None:
    normalised = text.replace("t", "T").replace("z", "Z").replace(" ", "T")
    head, dot, rest = normalised.partition(".")
    if dot:  # datetime takes at most microseconds
        digits = rest.rstrip("Z")
        normalised = f"{head}.{digits[:6]:0<6}Z"
        extra = float("0.000000" + digits[6:]) if len(digits) > 6 else 0.0
    else:
        extra = 0.0
    expected = datetime.fromisoformat(normalised).timestamp() + extra
    assert parse_time(text) == pytest.approx(expected, abs=1e-6)


def test_leap_second_and_epoch_forms() -> None:
    assert parse_time("2016-12-31T23:59:60Z") == parse_time("2017-01-01T00:00:00Z")
    assert parse_time("1700000000") == 1_700_000_000.0
    assert parse_time(" 1700000000.5 ") == 1_700_000_000.5
    assert parse_time("1.7e9") == 1.7e9
    assert parse_time("-1") == -1.0


@pytest.mark.parametrize(
    "text",
    [
        "",
        "now",
        "2024-05-01",
        "2024-05-01T12:00:00",
        "2024-13-01T00:00:00Z",
        "2024-05-01T12:00:61Z",
        "2024-05-01T12:00:00+24:00",
        "inf",
        "nan",
        "1e20",
        "0000-01-01T00:00:00Z",
        "2024-05-01T12:00Z",
    ],
)
def test_bad_times_raise_value_error_with_the_value(text: str) -> None:
    with pytest.raises(ValueError, match=r"not|out of range|invalid"):
        parse_time(text)


def test_commands_without_namespace_or_rule_still_help_and_never_invent_names() -> None:
    key = IncidentKey("prod", "-", "-")
    commands = look_further(key, (), (), 1_700_000_000.0, None)
    assert all("-n -" not in c and "logs -" not in c for c in commands)
    rule = RULES["istiod-apiserver-unreachable"]
    commands = look_further(key, (), (), 1_700_000_000.0, rule)
    split = [shlex.split(c) for c in commands]
    assert split[0] == ["kubectl", "-n", "istio-system", "logs", "deploy/istiod", "--since-time=2023-11-14T22:12:20Z"]
    assert ["kubectl", "get", "--raw=/readyz?verbose"] in split


def test_commands_use_the_container_each_pod_logged_from() -> None:
    key = IncidentKey("prod", "shop", "web")
    evidence = (
        Evidence(1.0, "x", "web-abc12-zz9xq", "app"),
        Evidence(2.0, "y", "web-abc12-pp8kk", None),
    )
    rule = RULES["upstream-connect-error-body"]  # component any: no default container
    commands = look_further(key, ("web-abc12-pp8kk", "web-abc12-zz9xq"), evidence, 0.0, rule)
    logs = [shlex.split(c) for c in commands if " logs " in c]
    assert ["kubectl", "-n", "shop", "logs", "web-abc12-pp8kk", "--since-time=1969-12-31T23:59:00Z"] in logs
    assert [
        "kubectl",
        "-n",
        "shop",
        "logs",
        "web-abc12-zz9xq",
        "-c",
        "app",
        "--since-time=1969-12-31T23:59:00Z",
    ] in logs
