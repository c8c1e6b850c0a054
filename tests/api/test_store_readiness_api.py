"""/readyz follows the store's writes, not only its reads: a store that cannot write is not ready."""

from __future__ import annotations

import pytest

from analyzer.errors import StoreError
from analyzer.store.sqlite import SqliteStore
from tests.api.support import Harness, interval


async def test_readyz_says_when_store_writes_fail_and_when_they_work_again(api: Harness) -> None:
    store = api.store
    assert isinstance(store, SqliteStore)
    await api.commit(interval("proxy-not-ready", first_seen=1.0))
    body = (await api.client.get("/readyz")).json()
    assert (body["store"], body["store_writes"]) == (True, True)
    assert "store_error" not in body

    await store._run(lambda c: c.execute("PRAGMA query_only = ON"))  # type: ignore[attr-defined]
    with pytest.raises(StoreError, match="readonly"):
        await api.commit(interval("proxy-not-ready", first_seen=2.0))
    response = await api.client.get("/readyz")
    body = response.json()
    assert response.status_code == 503
    assert (body["status"], body["store"], body["store_writes"]) == ("not ready", True, False)
    assert "readonly" in body["store_error"] and len(body["store_error"]) <= 300

    await store._run(lambda c: c.execute("PRAGMA query_only = OFF"))  # type: ignore[attr-defined]
    await api.commit(interval("proxy-not-ready", first_seen=2.0))
    body = (await api.client.get("/readyz")).json()
    assert (body["store"], body["store_writes"]) == (True, True)
    assert "store_error" not in body
