"""Hostile input never gets a 5xx and never reaches a shell or a flag (issue 8, part 6)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from analyzer.service import _redact
from tests.api.support import STREAM_TIME, WALL, Harness, auth, interval, make_settings, running

EVIL_POD = "--server=https://evil.example:6443"
INCIDENT = interval("access-upstream-connect-failure", first_seen=STREAM_TIME - 100)
HOSTILE = interval(
    "proxy-envoy-crashed",
    namespace="shop",
    workload="checkout",
    first_seen=STREAM_TIME - 90,
    pods=(EVIL_POD, "checkout-7d9f8b6c5d-x2x4q", "$(reboot)"),
)


@pytest.fixture
async def seeded(api: Harness) -> Harness:
    await api.commit(INCIDENT, HOSTILE)
    return api


def raw_json(text: str) -> dict[str, object]:
    return {"content": text.encode(), "headers": {**auth(), "Content-Type": "application/json"}}


@pytest.mark.parametrize(
    "body",
    [
        '{"by": "\\ud800"}',
        '{"comment": "half a pair \\udc00"}',
        '{"by": "nul\\u0000byte"}',
    ],
)
async def test_unstorable_ack_text_is_422(seeded: Harness, body: str) -> None:
    response = await seeded.client.post(f"/v1/incidents/{INCIDENT.id}/ack", **raw_json(body))  # type: ignore[arg-type]
    assert response.status_code == 422, response.text
    assert "invalid request" in response.json()["message"]


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e400", '"9999-12-31T23:59:59Z"', "253402300799"])
async def test_silence_expiry_outside_the_limit_is_422(seeded: Harness, value: str) -> None:
    body = '{"rule": "proxy-not-ready", "expires_at": ' + value + "}"
    response = await seeded.client.post("/v1/silences", **raw_json(body))  # type: ignore[arg-type]
    assert response.status_code == 422, response.text
    assert "expires_at" in response.json()["message"]


async def test_silence_comment_with_a_lone_surrogate_is_422(seeded: Harness) -> None:
    body = '{"rule": "proxy-not-ready", "duration": "1h", "comment": "\\ud83d"}'
    response = await seeded.client.post("/v1/silences", **raw_json(body))  # type: ignore[arg-type]
    assert response.status_code == 422, response.text


async def test_a_silence_within_the_limit_is_taken_however_written(seeded: Harness) -> None:
    days = 365 * 86400
    for body in (
        {"rule": "proxy-not-ready", "duration": "365d"},
        {"rule": "proxy-not-ready", "expires_at": WALL + days},
    ):
        response = await seeded.client.post("/v1/silences", json=body, headers=auth())
        assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    "path",
    [
        "/v1/incidents/%00",
        "/v1/incidents?namespace=shop%00",
        "/v1/incidents?cursor=%00abc",
        "/v1/incidents?rule=%ff%fe",
        "/v1/rules/%00",
    ],
)
async def test_nul_or_non_utf8_in_the_url_is_422_not_a_store_failure(seeded: Harness, path: str) -> None:
    response = await seeded.client.get(path)
    assert response.status_code == 422, response.text
    assert response.json()["message"].startswith("invalid request:")


async def test_suggested_commands_never_carry_a_name_that_is_not_a_kubernetes_name(seeded: Harness) -> None:
    detail = (await seeded.client.get(f"/v1/incidents/{HOSTILE.id}")).json()
    assert set(detail["key"]["pods"]) == set(HOSTILE.pods)  # the data is shown as it is...
    commands = detail["commands"]
    assert any("checkout-7d9f8b6c5d-x2x4q" in c for c in commands)
    for command in commands:  # ...but never put on a command line
        words = shlex.split(command)
        assert not any(w.startswith("--server") or "reboot" in w for w in words), command


def copy_of_the_catalogue(tmp_path: Path) -> Path:
    patterns = tmp_path / "patterns"
    patterns.mkdir()
    for f in (Path(__file__).resolve().parents[2] / "patterns").glob("*.yaml"):
        (patterns / f.name).write_text(f.read_text())
    return patterns


async def test_a_deeply_nested_catalogue_is_refused_with_a_reason(tmp_path: Path) -> None:
    patterns = copy_of_the_catalogue(tmp_path)
    async with running(make_settings(tmp_path, patterns_dir=patterns)) as harness:
        (patterns / "nested.yaml").write_text("[" * 100_000 + "]" * 100_000)
        response = await harness.client.post("/v1/rules/reload", headers=auth())
        assert response.status_code == 422, response.text
        assert "nested" in response.text
        assert (await harness.client.get("/v1/rules")).json()["items"], "the running catalogue stays"


@pytest.mark.parametrize(
    ("dsn", "secret"),
    [
        ("postgresql://u:s3cret@db:5432/analyzer", "s3cret"),
        ("postgresql://db/analyzer?user=u&password=s3cret&sslmode=require", "s3cret"),
        ("postgresql://u:p%40ss@db/analyzer?password=s3cret", "p%40ss"),
    ],
)
def test_dsns_are_redacted(dsn: str, secret: str) -> None:
    redacted = _redact(dsn)
    assert secret not in redacted and "s3cret" not in redacted
    assert "db" in redacted
