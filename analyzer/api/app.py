"""FastAPI app factory. The service object is injected; no module-level app."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from analyzer import __version__

if TYPE_CHECKING:
    from analyzer.service import Service


def create_app(service: Service) -> FastAPI:
    app = FastAPI(title="mesh-log-analyzer", version=__version__)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"description": "not consuming or store unreachable"}})
    async def readyz() -> JSONResponse:
        """Consuming from Kafka and the store is reachable."""
        ok, detail = await service.ready()
        body: dict[str, Any] = {"status": "ready" if ok else "not ready", **detail}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["health"], response_class=Response)
    async def metrics() -> Response:
        return Response(generate_latest(service.registry), media_type=CONTENT_TYPE_LATEST)

    return app
