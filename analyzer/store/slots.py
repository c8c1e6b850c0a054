"""Interchangeable connections that calls take one at a time: the stores' read connections."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class Slots(Generic[T]):
    """Each item serves one call at a time; a call takes any free one, or waits for the first freed.

    With one read connection, a slow read (the metrics' counts over every incident, a cold cause-grouping
    read: 100-200 ms under ingest) held up every page behind it, and a second's worth of requests queued.
    The most recently freed item is handed out first, so a quiet process keeps using the same one and
    connections made on first use (PostgreSQL) are only made when calls really overlap.
    """

    def __init__(self, items: Iterable[T]) -> None:
        self.items = tuple(items)
        if not self.items:
            raise ValueError("Slots needs at least one item")
        self._free: asyncio.LifoQueue[T] = asyncio.LifoQueue()
        for item in reversed(self.items):
            self._free.put_nowait(item)

    @contextlib.asynccontextmanager
    async def take(self) -> AsyncIterator[T]:
        item = await self._free.get()
        try:
            yield item
        finally:
            self._free.put_nowait(item)
