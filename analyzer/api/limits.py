"""Request body size limit, as plain ASGI middleware (so it also covers chunked bodies)."""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

import orjson
from fastapi import HTTPException, status
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def _too_large(limit: int) -> str:
    return f"request body larger than {limit} bytes"


class BodyLimit:
    """413 for a request whose declared or streamed body exceeds ``max_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    break
                if declared > self.max_bytes:
                    await self._reject(send)
                    return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Raised inside the route's body read: FastAPI re-raises HTTPExceptions from there.
                    raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, _too_large(self.max_bytes))
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except HTTPException as exc:
            if started or exc.status_code != status.HTTP_413_CONTENT_TOO_LARGE:
                raise
            await self._reject(send)

    async def _reject(self, send: Send) -> None:
        body = orjson.dumps({"detail": _too_large(self.max_bytes)})
        await send(
            {
                "type": "http.response.start",
                "status": status.HTTP_413_CONTENT_TOO_LARGE,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


class UrlText:
    """422 for a path or query string that is not text a store can hold (NUL, invalid UTF-8 once decoded).

    Checked once here, so no route, filter, cursor or id ever reaches the store with it (PostgreSQL refuses
    NUL in text; that must read as a bad request, not as a store failure).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw_path = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
            for where, raw in (("path", raw_path), ("query string", scope.get("query_string", b""))):
                problem = _url_problem(unquote_to_bytes(raw.replace(b"+", b" ")))
                if problem:
                    await _unprocessable(send, f"invalid request: {where}: {problem}")
                    return
        await self.app(scope, receive, send)


def _url_problem(decoded: bytes) -> str | None:
    if b"\x00" in decoded:
        return "must not contain NUL (%00)"
    try:
        decoded.decode("utf-8")
    except UnicodeDecodeError:
        return "must be UTF-8 text once percent-decoded"
    return None


async def _unprocessable(send: Send, message: str) -> None:
    body = orjson.dumps({"detail": [], "message": message})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 422, "headers": headers})
    await send({"type": "http.response.body", "body": body})
