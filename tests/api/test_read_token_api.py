"""ANALYZER_API_READ_TOKEN: reads under /v1 need it when set; probes and metrics stay open. Secrets stay secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from analyzer.config import Settings
from tests.api.support import TOKEN, auth, make_settings, running

READ_TOKEN = "r3ad-only"
READS = ["/v1/incidents", "/v1/silences", "/v1/rules", "/v1/rules/proxy-not-ready"]


@pytest.mark.parametrize("path", READS)
async def test_reads_need_the_read_token_when_it_is_set(tmp_path: Path, path: str) -> None:
    async with running(make_settings(tmp_path, api_read_token=READ_TOKEN)) as api:
        missing = await api.client.get(path)
        assert missing.status_code == 401 and "ANALYZER_API_READ_TOKEN" in missing.json()["detail"]
        assert (await api.client.get(path, headers=auth("wrong"))).status_code == 403
        assert (await api.client.get(path, headers=auth(READ_TOKEN))).status_code == 200
        assert (await api.client.get(path, headers=auth(TOKEN))).status_code == 200  # the write token reads too


async def test_probes_and_metrics_stay_open_and_the_read_token_cannot_write(tmp_path: Path) -> None:
    async with running(make_settings(tmp_path, api_read_token=READ_TOKEN)) as api:
        for path in ("/healthz", "/metrics"):
            assert (await api.client.get(path)).status_code == 200, path
        body = {"rule": "proxy-not-ready", "duration": "1h"}
        assert (await api.client.post("/v1/silences", json=body, headers=auth(READ_TOKEN))).status_code == 403
        assert (await api.client.post("/v1/silences", json=body, headers=auth(TOKEN))).status_code == 201


async def test_reads_are_open_without_a_read_token(tmp_path: Path) -> None:
    async with running(make_settings(tmp_path)) as api:
        assert (await api.client.get("/v1/incidents")).status_code == 200


def test_settings_never_show_their_secrets() -> None:
    settings = Settings(
        store_url="postgresql://analyzer:pg-s3cret@db/analyzer",  # type: ignore[arg-type]
        api_token="tok-s3cret",  # type: ignore[arg-type]
        api_read_token="read-s3cret",  # type: ignore[arg-type]
        kafka_sasl_password="sasl-s3cret",  # type: ignore[arg-type]
    )
    shown = repr(settings) + str(settings.model_dump())
    assert "s3cret" not in shown
    assert settings.store_url.get_secret_value().endswith("@db/analyzer")
