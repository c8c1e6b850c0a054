"""/readyz answers within a second from cached state: never behind a batch write, 503 while writes fail."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time

import pytest

from analyzer import service as service_module
from analyzer.errors import StoreError
from analyzer.store.sqlite import SqliteStore
from tests.api.support import Harness, interval

LIMIT = 1.0  # what a kubelet probe may wait, and more than any answer below may take


async def timed_readyz(api: Harness) -> tuple[float, int, dict[str, object]]:
    started = time.monotonic()
    response = await api.client.get("/readyz")
    return time.monotonic() - started, response.status_code, response.json()


async def test_readyz_does_not_wait_behind_a_batch_write(api: Harness) -> None:
    store = api.store
    assert isinstance(store, SqliteStore)
    await api.commit(interval("proxy-not-ready", first_seen=1.0))
    released = threading.Event()

    def long_write(conn: sqlite3.Connection) -> None:  # a batch transaction that holds the writer for seconds
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE incidents SET count = count + 1")
        released.wait(10)
        conn.execute("COMMIT")

    writing = asyncio.create_task(store._run(long_write))  # type: ignore[attr-defined]
    try:
        await asyncio.sleep(0.2)
        assert not writing.done()
        for _ in range(3):
            elapsed, _status, body = await timed_readyz(api)
            assert elapsed < LIMIT
            assert (body["store"], body["store_writes"]) == (True, True)
    finally:
        released.set()
        await writing


async def test_readyz_answers_in_time_when_the_store_hangs_and_503_while_writes_fail(api: Harness) -> None:
    store = api.store
    assert isinstance(store, SqliteStore)
    # A fresh probe is answered from cache, without touching the store.
    assert await api.service.probe_store()
    # Every read (the probe's included) now hangs: the readers' thread locks are taken.
    reader_locks: list[threading.Lock] = [r.thread_lock for r in store._readers.items]  # type: ignore[attr-defined]
    for lock in reader_locks:
        lock.acquire()
    try:
        elapsed, _status, body = await timed_readyz(api)
        assert elapsed < LIMIT and body["store"] is True  # cached
        # Once the cached probe is stale, /readyz probes itself, bounded: still within a second, store false.
        api.service._probe = (time.monotonic() - service_module.READY_FRESH - 1, True)  # type: ignore[attr-defined]
        elapsed, status, body = await timed_readyz(api)
        assert elapsed < LIMIT and status == 503 and body["store"] is False
    finally:
        for lock in reader_locks:
            lock.release()
    # Reads answer again; a failing write still keeps it at 503 (from the store's cached write state).
    await store._run(lambda c: c.execute("PRAGMA query_only = ON"))  # type: ignore[attr-defined]
    with pytest.raises(StoreError, match="readonly"):
        await api.commit(interval("proxy-not-ready", first_seen=2.0))
    await api.service.probe_store()
    elapsed, status, body = await timed_readyz(api)
    assert elapsed < LIMIT and status == 503
    assert (body["store"], body["store_writes"]) == (True, False)
    await store._run(lambda c: c.execute("PRAGMA query_only = OFF"))  # type: ignore[attr-defined]
