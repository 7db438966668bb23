"""POST /budget (admin) and GET /budget: λ* per campaign."""

from __future__ import annotations

import re
import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request

from service.allocation import lambda_out, set_budget
from service.deps import AdminDep, MetricsDep, SolverDep, StoreDep, TableDep
from service.errors import RequestError
from service.payload import CAMPAIGN_PATTERN
from service.schemas import BudgetOut, BudgetRequest, ErrorOut, LambdaOut, budget_body_schema, parse_body

router = APIRouter(tags=["budget"])

IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")

# The body is read by the handler, after the admin check (FastAPI would read a declared body before any
# dependency runs), so it is declared here for OpenAPI only.
BUDGET_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": budget_body_schema()}}}}


@router.post(
    "/budget",
    response_model=BudgetOut,
    openapi_extra=BUDGET_BODY,
    responses={
        401: {"model": ErrorOut, "description": "No bearer token"},
        403: {"model": ErrorOut, "description": "Wrong admin token"},
        409: {"model": ErrorOut, "description": "Idempotency-Key already used for another budget"},
        413: {"model": ErrorOut, "description": "Body larger than the admin body limit"},
        422: {"model": ErrorOut, "description": "Invalid budget, below the cheapest policy's cost or above the most"},
        503: {"model": ErrorOut, "description": "The λ* store (Redis) is unreachable: the budget was not applied"},
        504: {"model": ErrorOut, "description": "The store did not confirm the write: outcome unknown, retry"},
    },
)
async def solve_budget(
    request: Request,
    _admin: AdminDep,
    solver: SolverDep,
    store: StoreDep,
    table: TableDep,
    metrics: MetricsDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            pattern=IDEMPOTENCY_KEY.pattern,
            description="retry a budget with the same key to get its first answer, never a second write",
        ),
    ] = None,
) -> BudgetOut:
    """Solve λ* for a new budget on the reference population and publish it to every replica."""
    if idempotency_key is not None and not IDEMPOTENCY_KEY.fullmatch(idempotency_key):
        raise RequestError("idempotency-key", "expected 1-128 characters from A-Z a-z 0-9 _ . : -")
    body = parse_body(BudgetRequest, await request.body())
    request_id = idempotency_key or uuid.uuid4().hex
    out = await set_budget(body, solver, store, table, request_id)
    metrics.budget_solve.observe(out.solve_ms / 1e3)
    request.scope["log"].update(campaign=body.campaign, lambda_version=out.version, lam=out.lambda_)
    return out


@router.get("/budget", response_model=LambdaOut, responses={404: {"model": ErrorOut, "description": "No budget set"}})
async def read_budget(
    table: TableDep,
    solver: SolverDep,
    campaign: Annotated[str, Query(pattern=CAMPAIGN_PATTERN.pattern)] = "default",
) -> LambdaOut:
    """The λ* this replica serves for a campaign, with its version and source."""
    return lambda_out(campaign, table.serving(campaign), solver.model_version)
