"""What the routes share: the service, the wall clock, and small caches over the running catalogue."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import structlog
from fastapi import HTTPException, status

from analyzer.errors import StoreError
from analyzer.types import Catalogue, Rule
from analyzer.unclassified import with_rules

if TYPE_CHECKING:
    from analyzer.service import Service

T = TypeVar("T")

log = structlog.get_logger("analyzer.api")


@dataclass
class ApiContext:
    service: Service
    wall: Callable[[], float]  # wall clock: silence expiry, ack times
    token: bytes | None  # the API token; None disables the write endpoints
    read_token: bytes | None = None  # when set, reads under /v1 need it (or the write token)
    active_streams: int = 0  # open /v1/incidents/stream responses
    _rules_of: tuple[Catalogue, Mapping[str, Rule]] | None = None

    @property
    def catalogue(self) -> Catalogue:
        return self.service.holder.catalogue

    def rules(self) -> Mapping[str, Rule]:
        """Rule id -> rule of the running catalogue (rebuilt once after a reload)."""
        catalogue = self.catalogue
        cached = self._rules_of
        if cached is None or cached[0] is not catalogue:
            cached = (catalogue, catalogue.by_id())
            self._rules_of = cached
        templates = self.service.holder.pipeline.unclassified  # and the unclassified templates known here
        return with_rules(cached[1], templates.rules if templates is not None else None)

    async def store_call(self, call: Awaitable[T]) -> T:
        """A store call bounded by the store timeout; failures become 503, never a 500."""
        try:
            return await asyncio.wait_for(call, self.service.settings.store_timeout)
        except (StoreError, TimeoutError) as exc:
            # The store's message may name hosts or paths: it goes to the log, not to the client.
            log.warning("store call failed", error=str(exc) or type(exc).__name__)
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE, "incident store unavailable; try again (details in the log)"
            ) from exc
