"""/v1/silences: mute incidents by rule and key matchers until an expiry. Silenced incidents still count."""

from __future__ import annotations

import dataclasses

import structlog
from fastapi import APIRouter, status
from fastapi.exceptions import RequestValidationError

from analyzer.api.auth import AUTH_RESPONSES, Caller
from analyzer.api.context import ApiContext
from analyzer.api.params import (
    MAX_EPOCH,
    MAX_SILENCE_SECONDS,
    check_epoch,
    parse_silence_duration,
    parse_time,
)
from analyzer.api.schemas import SilenceList, SilenceOut, SilenceRequest
from analyzer.api.views import silence_out
from analyzer.store import Silence

log = structlog.get_logger("analyzer.api")


def _expiry(body: SilenceRequest, now: float) -> float:
    """Absolute expiry in epoch seconds; RequestValidationError (422) when it is unusable."""
    field, value = ("duration", body.duration) if body.duration is not None else ("expires_at", body.expires_at)
    try:
        if body.duration is not None:
            expires_at = now + parse_silence_duration(body.duration)
        elif isinstance(body.expires_at, str):
            expires_at = parse_time(body.expires_at)
        else:
            expires_at = check_epoch(float(body.expires_at or 0))
        if expires_at <= now:
            raise ValueError("the silence would already be expired")
        if expires_at - now > MAX_SILENCE_SECONDS:  # one limit however the expiry is written
            raise ValueError("the silence would last longer than the maximum of 366d")
    except ValueError as exc:
        error = {"type": "value_error", "loc": ("body", field), "msg": str(exc), "input": value}
        raise RequestValidationError([error]) from None
    return min(expires_at, MAX_EPOCH)


def build_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter(prefix="/v1/silences", tags=["silences"])
    store = ctx.store

    @router.post("", status_code=status.HTTP_201_CREATED, response_model=SilenceOut, responses=AUTH_RESPONSES)
    async def add_silence(body: SilenceRequest, caller: Caller) -> SilenceOut:
        """Mute matching incidents (every given matcher must match). Needs the API token."""
        now = ctx.wall()
        silence = Silence(
            id="",
            rule=body.rule,
            cluster=body.cluster,
            namespace=body.namespace,
            workload=body.workload,
            expires_at=_expiry(body, now),
            created_by=body.by or caller,
            comment=body.comment,
        )
        silence_id = await ctx.store_call(store.add_silence(silence))
        log.info("silence added", silence=silence_id, rule=body.rule, namespace=body.namespace, by=silence.created_by)
        return silence_out(dataclasses.replace(silence, id=silence_id))

    @router.get("", response_model=SilenceList)
    async def list_silences() -> SilenceList:
        """Unexpired silences, soonest expiry first."""
        silences = await ctx.store_call(store.list_silences(ctx.wall()))
        return SilenceList(items=[silence_out(s) for s in silences])

    return router
