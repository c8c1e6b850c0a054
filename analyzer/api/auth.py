"""Bearer-token guard for the write endpoints. No token configured: writes are disabled, never open."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from analyzer.api.context import ApiContext
from analyzer.api.schemas import Problem

WRITES_DISABLED = "write endpoints are disabled: no API token is configured (set ANALYZER_API_TOKEN to enable them)"
CALLER = "api-token"  # who acted, when the request does not say

# For the OpenAPI document of every guarded operation.
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "no bearer token sent"},
    403: {"model": Problem, "description": "wrong token, or writes disabled (no token configured)"},
}

READ_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "no bearer token sent (only when ANALYZER_API_READ_TOKEN is set)"},
    403: {"model": Problem, "description": "wrong token (only when ANALYZER_API_READ_TOKEN is set)"},
}

_bearer = HTTPBearer(auto_error=False, description="ANALYZER_API_TOKEN", bearerFormat="opaque")


def _matches(credentials: HTTPAuthorizationCredentials, token: bytes | None) -> bool:
    # Bytes, not str: compare_digest rejects non-ASCII str, and a client may send anything.
    return token is not None and hmac.compare_digest(credentials.credentials.encode("utf-8", "surrogateescape"), token)


def _missing(variable: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        f"missing bearer token: send 'Authorization: Bearer <{variable}>'",
        headers={"WWW-Authenticate": "Bearer"},
    )


async def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str:
    """Admits a request carrying ``Authorization: Bearer <ANALYZER_API_TOKEN>``; returns a caller label."""
    ctx: ApiContext = request.app.state.api
    expected = ctx.token
    if expected is None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, WRITES_DISABLED)
    if credentials is None or not credentials.credentials:
        raise _missing("ANALYZER_API_TOKEN")
    if not _matches(credentials, expected):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "invalid bearer token")
    return CALLER


async def require_read_token(request: Request) -> None:
    """Reads are open unless ANALYZER_API_READ_TOKEN is set; then it (or the write token) is needed.

    Reads the header itself rather than through HTTPBearer: the OpenAPI document must not declare reads as
    secured, since in the default deployment they are open.
    """
    ctx: ApiContext = request.app.state.api
    if ctx.read_token is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _missing("ANALYZER_API_READ_TOKEN")
    credentials = HTTPAuthorizationCredentials(scheme="Bearer", credentials=token.strip())
    if not (_matches(credentials, ctx.read_token) or _matches(credentials, ctx.token)):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "invalid bearer token")


Caller = Annotated[str, Depends(require_token)]
