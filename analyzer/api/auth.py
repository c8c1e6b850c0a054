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

_bearer = HTTPBearer(auto_error=False, description="ANALYZER_API_TOKEN", bearerFormat="opaque")


async def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str:
    """Admits a request carrying ``Authorization: Bearer <ANALYZER_API_TOKEN>``; returns a caller label."""
    ctx: ApiContext = request.app.state.api
    expected = ctx.token
    if expected is None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, WRITES_DISABLED)
    if credentials is None or not credentials.credentials:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing bearer token: send 'Authorization: Bearer <ANALYZER_API_TOKEN>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    # Bytes, not str: compare_digest rejects non-ASCII str, and a client may send anything.
    if not hmac.compare_digest(credentials.credentials.encode("utf-8", "surrogateescape"), expected):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "invalid bearer token")
    return CALLER


Caller = Annotated[str, Depends(require_token)]
