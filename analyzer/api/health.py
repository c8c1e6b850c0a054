"""/healthz (process up), /readyz (consuming, store reachable and writable), /metrics (Prometheus text format)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from analyzer.api.context import ApiContext
from analyzer.api.schemas import Health, Readiness


def build_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        """The process is up."""
        return Health(status="ok")

    @router.get(
        "/readyz",
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "not consuming, store unreachable or its writes failing"}},
    )
    async def readyz() -> JSONResponse:
        """Consuming from Kafka, the store is reachable, and its last write succeeded. From cached state (a
        background store probe, the consumer's and the store's flags): answers within a second, never behind a
        batch write."""
        ok, detail = await ctx.running.ready()
        body: dict[str, Any] = {"status": "ready" if ok else "not ready", **detail}
        return JSONResponse(body, status_code=200 if ok else 503)

    @router.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "metrics"}},
    )
    async def metrics() -> Response:
        """Prometheus metrics of the injected registry."""
        return Response(generate_latest(ctx.registry), media_type=CONTENT_TYPE_LATEST)

    return router
