"""Write health shared by both backends: readiness follows writes, and a failure streak is logged once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

import structlog

from analyzer.errors import StaleOffsetError, StoreError
from analyzer.store.sql import bounded

log = structlog.get_logger("analyzer.store")


class WriteHealth:
    """The state of a store's writes: failing (with a bounded message) from the first failed write until the
    next one succeeds. Logs the start of a streak and its end, never each retry in between."""

    def __init__(self, store: str) -> None:
        self._store = store
        self.failure: str | None = None
        self._since = 0.0
        self._failures = 0

    def failed(self, message: str) -> str:
        """Note a failed write; returns the bounded message for the caller's exception."""
        text = bounded(message)
        if self.failure is None:
            self._since = time.monotonic()
            log.error("store writes failing; retrying until they succeed", store=self._store, error=text)
        self.failure = text
        self._failures += 1
        return text

    def succeeded(self) -> None:
        if self.failure is not None:
            log.info(
                "store writes recovered",
                store=self._store,
                failed_writes=self._failures,
                seconds=round(time.monotonic() - self._since, 1),
            )
        self.failure = None
        self._failures = 0

    async def watch(self, write: Awaitable[None]) -> None:
        """Await a batch write, noting its outcome; a StoreError leaves with the bounded message."""
        try:
            await write
        except StaleOffsetError:
            self.succeeded()  # the database answered: fencing is not a failure of the store
            raise
        except StoreError as e:
            raise StoreError(self.failed(str(e))) from e
        except asyncio.CancelledError:  # the caller's own bound ran out first: for readiness, a failed write
            self.failed("the write did not finish within the caller's time limit")
            raise
        self.succeeded()
