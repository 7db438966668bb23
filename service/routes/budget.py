"""POST /budget (admin) and GET /budget: λ* per campaign."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from service.allocation import lambda_out, set_budget
from service.deps import AdminDep, MetricsDep, SolverDep, StoreDep, TableDep
from service.payload import CAMPAIGN_PATTERN
from service.schemas import BudgetOut, BudgetRequest, LambdaOut

router = APIRouter(tags=["budget"])


@router.post(
    "/budget",
    response_model=BudgetOut,
    responses={
        401: {"description": "No bearer token"},
        403: {"description": "Wrong admin token"},
        422: {"description": "Invalid budget, or below the cheapest policy's cost"},
        503: {"description": "The λ* store (Redis) is unreachable"},
    },
)
async def solve_budget(
    body: BudgetRequest,
    request: Request,
    _admin: AdminDep,
    solver: SolverDep,
    store: StoreDep,
    table: TableDep,
    metrics: MetricsDep,
) -> BudgetOut:
    """Solve λ* for a new budget on the reference population and publish it to every replica."""
    out = await set_budget(body, solver, store, table)
    metrics.budget_solve.observe(out.solve_ms / 1e3)
    request.scope["log"].update(campaign=body.campaign, lambda_version=out.version, lam=out.lambda_)
    return out


@router.get("/budget", response_model=LambdaOut)
async def read_budget(
    table: TableDep,
    solver: SolverDep,
    campaign: Annotated[str, Query(pattern=CAMPAIGN_PATTERN.pattern)] = "default",
) -> LambdaOut:
    """The λ* this replica serves for a campaign, with its version and source."""
    return lambda_out(campaign, table.current(campaign), solver.model_version)
