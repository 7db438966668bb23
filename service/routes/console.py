"""The operator console: the page (`GET /console`) and the read-only JSON it draws (budget curve, what-if,
campaigns, allocation counts). Budgets are still set through `POST /budget`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from starlette.concurrency import run_in_threadpool

from service.allocation import lambda_out
from service.console.curve import INLINE_POINTS, MAX_CURVE_POINTS, has_mix_path
from service.console.page import ASSETS, HEADERS, asset
from service.console.schemas import AllocationCountsOut, BudgetCurveOut, WhatIfOut
from service.console.views import allocation_counts, budget_curve, what_if
from service.deps import ArtifactDep, MetricsDep, SolverDep, TableDep
from service.errors import RequestError
from service.payload import CAMPAIGN_PATTERN
from service.schemas import ErrorOut, LambdaOut

router = APIRouter()

# Small curves and what-ifs are computed inline (tens of µs per point); a long curve (~50 ms at 1000 points) or
# the first request's mix-path build (~1 s for a million reference rows) goes to the thread pool, so it never
# stalls /allocate on the event loop. What they read is immutable (the sweep) or guarded (`mix_path`).

CampaignQuery = Annotated[str, Query(pattern=CAMPAIGN_PATTERN.pattern, description="campaign name")]
INVALID: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorOut, "description": "A query parameter is invalid; the detail names it"}
}


def _asset_response(name: str) -> Response:
    return Response(asset(name), media_type=ASSETS[name], headers=HEADERS)


@router.get("/console", tags=["console"], response_class=Response, responses={200: {"content": {"text/html": {}}}})
async def read_console() -> Response:
    """The operator console: model, campaigns' λ*, the what-if budget curve, setting a budget."""
    return _asset_response("index.html")


@router.get("/console/{name}", include_in_schema=False)
async def read_console_asset(name: str) -> Response:
    """The page's scripts and stylesheet: only the files `ASSETS` lists (anything else is a 404)."""
    if name == "index.html" or name not in ASSETS:
        raise RequestError("path", f"no console file {name[:64]!r}", status=404)
    return _asset_response(name)


@router.get("/budget/curve", tags=["budget"], response_model=BudgetCurveOut, responses=INVALID)
async def read_budget_curve(
    solver: SolverDep,
    table: TableDep,
    artifact: ArtifactDep,
    campaign: CampaignQuery = "default",
    points: Annotated[int, Query(ge=2, le=MAX_CURVE_POINTS, description="budgets on the curve")] = 50,
) -> BudgetCurveOut:
    """Expected revenue, spend, λ* and treatment mix per individual for evenly spaced budgets (what-if).

    Computed on the loaded model's reference population from the cached exact λ sweep; `current` marks the
    campaign's served λ*. Nothing is stored.
    """
    if points <= INLINE_POINTS and has_mix_path(solver):
        return budget_curve(campaign, points, solver, table, artifact)
    return await run_in_threadpool(budget_curve, campaign, points, solver, table, artifact)


@router.get("/budget/whatif", tags=["budget"], response_model=WhatIfOut, responses=INVALID)
async def read_budget_what_if(
    solver: SolverDep,
    table: TableDep,
    artifact: ArtifactDep,
    budget_per_capita: Annotated[float, Query(gt=0, allow_inf_nan=False, description="budget per individual")],
    campaign: CampaignQuery = "default",
) -> WhatIfOut:
    """The λ*, spend, revenue and mix `POST /budget` would give this budget, next to the current ones."""
    if has_mix_path(solver):
        return what_if(campaign, budget_per_capita, solver, table, artifact)
    return await run_in_threadpool(what_if, campaign, budget_per_capita, solver, table, artifact)


@router.get("/budget/campaigns", tags=["budget"], response_model=list[LambdaOut])
async def read_budget_campaigns(table: TableDep, solver: SolverDep) -> list[LambdaOut]:
    """Every campaign this replica serves a λ* for ('default' first), as `GET /budget` describes one."""
    served = {"default": table.default, **table.campaigns()}
    return [lambda_out(campaign, s, solver.model_version) for campaign, s in served.items()]


@router.get("/allocations/counts", tags=["allocation"], response_model=AllocationCountsOut)
async def read_allocation_counts(metrics: MetricsDep, artifact: ArtifactDep) -> AllocationCountsOut:
    """Individuals this replica allocated per treatment since it started (differences give the recent mix)."""
    return allocation_counts(metrics, artifact.model_version)
