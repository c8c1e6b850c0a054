"""/v1/rules: the running catalogue, and its hot reload (refused whole when the new one has any problem)."""

from __future__ import annotations

import re

import structlog
from fastapi import APIRouter, HTTPException, status
from fastapi.responses import JSONResponse

from analyzer.api.auth import AUTH_RESPONSES, Caller
from analyzer.api.context import ApiContext
from analyzer.api.params import to_datetime
from analyzer.api.schemas import CatalogueProblem, Problem, ReloadRefused, ReloadResult, RuleDetail, RuleList
from analyzer.api.views import rule_detail, rule_summary
from analyzer.types import Category, Component, Severity

log = structlog.get_logger("analyzer.api")

# The loader's problem strings: "<file>: rule <id>: <reason>" or "<file>: <reason>" (errors.RuleProblem).
_WITH_RULE = re.compile(r"^(?P<file>.+?): rule (?P<rule>[^\s:]+): (?P<reason>.*)$", re.DOTALL)
_FILE_ONLY = re.compile(r"^(?P<file>[^:]+): (?P<reason>.*)$", re.DOTALL)


def parse_problem(message: str) -> CatalogueProblem:
    m = _WITH_RULE.match(message)
    if m:
        return CatalogueProblem(file=m["file"], rule=m["rule"], reason=m["reason"], message=message)
    m = _FILE_ONLY.match(message)
    if m:
        return CatalogueProblem(file=m["file"], rule=None, reason=m["reason"], message=message)
    return CatalogueProblem(file=None, rule=None, reason=message, message=message)


def build_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter(prefix="/v1/rules", tags=["rules"])
    holder = ctx.catalogues

    @router.get("", response_model=RuleList)
    async def list_rules(
        category: Category | None = None, component: Component | None = None, severity: Severity | None = None
    ) -> RuleList:
        """The rules of the running catalogue, by id."""
        catalogue = holder.catalogue
        rules = [
            r
            for r in catalogue.rules
            if (category is None or r.category is category)
            and (component is None or r.component is component)
            and (severity is None or r.severity is severity)
        ]
        return RuleList(
            digest=catalogue.digest, loaded_at=to_datetime(holder.loaded_at), items=[rule_summary(r) for r in rules]
        )

    @router.get("/{rule_id}", response_model=RuleDetail, responses={404: {"model": Problem}})
    async def get_rule(rule_id: str) -> RuleDetail:
        """Everything about one rule: expressions, windows, scope, remediation, references, examples."""
        rule = ctx.rules().get(rule_id)
        if rule is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no rule {rule_id!r} in the running catalogue")
        return rule_detail(rule)

    @router.post(
        "/reload",
        response_model=ReloadResult,
        responses={
            **AUTH_RESPONSES,
            422: {"model": ReloadRefused, "description": "the new catalogue has problems; the running one stays"},
        },
    )
    async def reload_rules(caller: Caller) -> ReloadResult | JSONResponse:
        """Load and compile the catalogue again (like SIGHUP). Needs the API token."""
        before = holder.catalogue.digest
        # Off the event loop and serialized with SIGHUP reloads: the API and the consumer keep going.
        problems = await holder.reload_async()
        catalogue = holder.catalogue
        if problems:
            refused = ReloadRefused(
                detail=f"catalogue refused ({len(problems)} problem(s)); the running catalogue stays",
                errors=[parse_problem(p) for p in problems],
                running_digest=catalogue.digest,
            )
            return JSONResponse(refused.model_dump(mode="json"), status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)
        log.info("catalogue reloaded through the API", by=caller, rules=len(catalogue.rules))
        return ReloadResult(
            status="reloaded", rules=len(catalogue.rules), digest=catalogue.digest, changed=catalogue.digest != before
        )

    return router
