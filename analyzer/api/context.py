"""What the routes share: small protocols over the running service (its store, catalogue and ingest state),
the wall clock, and small caches over the running catalogue. The API imports no part of ``analyzer.service``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import structlog
from fastapi import HTTPException, status
from prometheus_client import CollectorRegistry

from analyzer.config import Settings
from analyzer.errors import StoreError
from analyzer.metrics import Metrics
from analyzer.store import Store
from analyzer.store.causes import RecentReads
from analyzer.types import Catalogue, Rule
from analyzer.unclassified import with_rules

T = TypeVar("T")

log = structlog.get_logger("analyzer.api")


class Catalogues(Protocol):
    """What the API needs of the running catalogue."""

    @property
    def catalogue(self) -> Catalogue: ...

    @property
    def loaded_at(self) -> float: ...

    def template_rules(self) -> Mapping[str, Rule] | None:
        """The synthetic rules of the unclassified templates known to this process (None: lane off)."""

    async def reload_async(self) -> list[str]:
        """Load and compile again; the problems (empty on success), the running catalogue kept on any."""


class Running(Protocol):
    """What the API needs of the ingest's state."""

    async def stream_time(self) -> float: ...

    async def ready(self) -> tuple[bool, dict[str, object]]: ...


@dataclass
class ApiContext:
    settings: Settings
    store: Store
    catalogues: Catalogues
    running: Running
    registry: CollectorRegistry  # what /metrics exposes
    metrics: Metrics
    wall: Callable[[], float]  # wall clock: silence expiry, ack times
    token: bytes | None  # the API token; None disables the write endpoints
    read_token: bytes | None = None  # when set, reads under /v1 need it (or the write token)
    active_streams: int = 0  # open /v1/incidents/stream responses
    recent: RecentReads = field(default_factory=RecentReads)  # the cause grouping's reads, shared for seconds
    _rules_of: tuple[Catalogue, Mapping[str, Rule]] | None = None
    _with_templates: tuple[Mapping[str, Rule], Mapping[str, Rule] | None, int, Mapping[str, Rule]] | None = None

    @property
    def catalogue(self) -> Catalogue:
        return self.catalogues.catalogue

    def rules(self) -> Mapping[str, Rule]:
        """Rule id -> rule of the running catalogue (rebuilt once after a reload)."""
        catalogue = self.catalogue
        cached = self._rules_of
        if cached is None or cached[0] is not catalogue:
            cached = (catalogue, catalogue.by_id())
            self._rules_of = cached
        # and the unclassified templates known here: the same mapping while no template comes or goes, so what
        # is derived from the rules per mapping (the cause grouping's rule sets) is derived once, not per request
        templates = self.catalogues.template_rules()
        known = self._with_templates
        size = len(templates) if templates else 0
        if known is None or known[0] is not cached[1] or known[1] is not templates or known[2] != size:
            known = (cached[1], templates, size, with_rules(cached[1], templates))
            self._with_templates = known
        return known[3]

    async def store_call(self, call: Awaitable[T]) -> T:
        """A store call bounded by the store timeout; failures become 503, never a 500."""
        try:
            return await asyncio.wait_for(call, self.settings.store_timeout)
        except (StoreError, TimeoutError) as exc:
            # The store's message may name hosts or paths: it goes to the log, not to the client.
            log.warning("store call failed", error=str(exc) or type(exc).__name__)
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE, "incident store unavailable; try again (details in the log)"
            ) from exc
