"""FastAPI app factory. What it serves is injected as small protocols; no module-level app."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from analyzer import __version__
from analyzer.api import health, incidents, rules, silences
from analyzer.api.auth import READ_RESPONSES, require_read_token
from analyzer.api.context import ApiContext, Catalogues, Running
from analyzer.api.limits import BodyLimit, UrlText
from analyzer.api.schemas import Problem
from analyzer.config import Settings
from analyzer.metrics import Metrics
from analyzer.store import Store

DESCRIPTION = (
    "Incidents recognised in Istio control- and data-plane logs. Reads are open; write endpoints need "
    "`Authorization: Bearer <ANALYZER_API_TOKEN>` and are disabled when no token is configured."
)
_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


def create_app(
    settings: Settings,
    store: Store,
    catalogues: Catalogues,
    running: Running,
    *,
    registry: CollectorRegistry,
    metrics: Metrics,
    wall: Callable[[], float] = time.time,
) -> FastAPI:
    """The HTTP API over a store, a catalogue and the ingest's state. ``wall``: silence expiry, ack times."""
    app = FastAPI(title="mesh-log-analyzer", version=__version__, description=DESCRIPTION)
    token, read_token = _secret(settings.api_token), _secret(settings.api_read_token)
    ctx = ApiContext(settings, store, catalogues, running, registry, metrics, wall, token, read_token)
    app.state.api = ctx

    app.include_router(health.build_router(ctx))
    # Reads under /v1 need ANALYZER_API_READ_TOKEN when it is set; probes and /metrics stay open.
    read_guard = [Depends(require_read_token)]
    for router in (incidents.build_router(ctx), silences.build_router(ctx), rules.build_router(ctx)):
        app.include_router(router, dependencies=read_guard, responses=READ_RESPONSES)
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]

    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(UrlText)
    if settings.cors_origins:  # off unless configured
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Accept-Language", "Last-Event-ID"],
        )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _document(
                get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _secret(value: SecretStr | None) -> bytes | None:
    return value.get_secret_value().encode() if value is not None and value.get_secret_value() else None


_PLACES = {"query": "query parameter", "path": "path parameter", "header": "header", "body": "request body"}


def _describe(error: dict[str, Any]) -> str:
    """One validation error as "query parameter 'status[0]': Input should be ..."."""
    loc = [str(part) for part in error.get("loc", ())]
    if loc and loc[0] in _PLACES:
        name = "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in loc[1:]).removeprefix(".")
        place = f"{_PLACES[loc[0]]} {name!r}" if name else _PLACES[loc[0]]
    else:
        place = ".".join(loc) or "request"
    return f"{place}: {error.get('msg', 'invalid')}"


def _json_safe(value: Any) -> Any:
    """What a client sent, echoed back without what JSON cannot carry (NaN, infinities, lone surrogates)."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_json_safe(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return _json_safe(str(value))  # e.g. the exception object pydantic puts in ``ctx``


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 body plus a one-line ``message`` naming each bad parameter."""
    errors = [_json_safe(dict(error)) for error in exc.errors()]
    message = "invalid request: " + "; ".join(_describe(e) for e in errors)
    return JSONResponse({"detail": jsonable_encoder(errors), "message": message}, status_code=422)


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _PROBLEM_REF}}}


def _document(schema: dict[str, Any]) -> dict[str, Any]:
    """Responses routes can give that FastAPI does not list: 400/413 on bodies, 503 when the store is down."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.setdefault("Problem", Problem.model_json_schema())
    validation = components.get("HTTPValidationError")
    if validation is not None:
        validation["properties"]["message"] = {"title": "Message", "type": "string"}
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            for parameter in operation.get("parameters", ()):
                _no_nul(parameter.get("schema", {}))
            responses = operation.setdefault("responses", {})
            if "requestBody" in operation:
                responses.setdefault("400", _problem("request body is not JSON"))
                responses.setdefault("413", _problem("request body too large"))
            if path == "/v1/incidents/stream":  # store trouble arrives as `error` events
                _document_events(responses)
            elif path.startswith(("/v1/incidents", "/v1/silences")):
                responses.setdefault("503", _problem("incident store unavailable"))
    return schema


# What UrlText refuses, said in the schema: a path or query string value holds no NUL.
NO_NUL = r"^[^\x00]*$"


def _no_nul(schema: dict[str, Any]) -> None:
    if schema.get("type") == "string" and "pattern" not in schema:
        schema["pattern"] = NO_NUL
    for option in schema.get("anyOf", ()):
        _no_nul(option)
    if "items" in schema:
        _no_nul(schema["items"])


def _document_events(responses: dict[str, Any]) -> None:
    """Say what an event's ``data`` holds (OpenAPI 3.2 style itemSchema, as FastAPI writes it)."""
    content = responses.get("200", {}).get("content", {}).get("text/event-stream", {})
    data = content.get("itemSchema", {}).get("properties", {}).get("data")
    if isinstance(data, dict):
        data["contentMediaType"] = "application/json"
        data["contentSchema"] = {"$ref": "#/components/schemas/IncidentItem"}
