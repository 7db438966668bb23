"""The plain functions behind the console's JSON endpoints (the routes in `service.routes.console` stay thin)."""

from __future__ import annotations

import os
import socket
import time

from service.artifact import Artifact
from service.console.curve import CurvePoint, MixPath, budget_range, curve, mix_path, point
from service.console.schemas import (
    AllocationCountsOut,
    BudgetCurveOut,
    CampaignPointOut,
    CurvePointOut,
    WhatIfOut,
)
from service.decision import BudgetError
from service.errors import RequestError
from service.lambdas import BudgetSolver, LambdaTable, Served
from service.metrics import Metrics

ALLOCATIONS_SAMPLE = "allocator_allocations_total"  # the counter `Metrics.allocations` exposes


def _point_out(point: CurvePoint, names: list[str]) -> CurvePointOut:
    return CurvePointOut.model_validate(
        {
            "budget_per_capita": point.budget_per_capita,
            "lambda": point.lam,
            "expected_spend_per_capita": point.spend_per_capita,
            "expected_revenue_per_capita": point.revenue_per_capita,
            "mix": dict(zip(names, point.mix, strict=True)),
        }
    )


def _served_or_none(table: LambdaTable, campaign: str) -> Served | None:
    """What /allocate serves the campaign, or None when it would answer 404 (no budget set)."""
    try:
        return table.serving(campaign)
    except RequestError:
        return None


def campaign_point(campaign: str, served: Served, path: MixPath, names: list[str]) -> CampaignPointOut:
    """The served λ* on the reference population: spend and revenue of the policy at that λ, not of the record.

    A record solved for another model, or the manifest's default λ, still shows what it does with this model.
    """
    sweep = path.sweep
    taken = path.taken(served.lam)
    return CampaignPointOut.model_validate(
        {
            "campaign": campaign,
            "version": served.version,
            "source": served.source,
            "budget_per_capita": served.record.budget_per_capita,
            "lambda": served.lam,
            "expected_spend_per_capita": float(sweep.cum_cost[taken]) / sweep.n_rows,
            "expected_revenue_per_capita": float(sweep.cum_revenue[taken]) / sweep.n_rows,
            "mix": dict(zip(names, path.shares(served.lam), strict=True)),
        }
    )


def budget_curve(
    campaign: str, points: int, solver: BudgetSolver, table: LambdaTable, artifact: Artifact
) -> BudgetCurveOut:
    started = time.perf_counter()
    names = artifact.manifest.treatment_names
    path = mix_path(solver, len(names))
    curve_points = [_point_out(p, names) for p in curve(solver, path, points)]
    served = _served_or_none(table, campaign)
    low, high = budget_range(solver)
    return BudgetCurveOut(
        campaign=campaign,
        model_version=solver.model_version,
        population_size=solver.population_size,
        treatments=names,
        min_budget_per_capita=low,
        max_budget_per_capita=high,
        current=None if served is None else campaign_point(campaign, served, path, names),
        points=curve_points,
        compute_ms=1e3 * (time.perf_counter() - started),
    )


def what_if(
    campaign: str, budget_per_capita: float, solver: BudgetSolver, table: LambdaTable, artifact: Artifact
) -> WhatIfOut:
    """The λ*, spend and mix a new budget would give (RequestError 422 naming `budget_per_capita` if none fits)."""
    names = artifact.manifest.treatment_names
    path = mix_path(solver, len(names))
    try:
        proposed = point(solver, path, budget_per_capita)
    except BudgetError as error:
        raise RequestError("budget_per_capita", str(error)) from error
    served = _served_or_none(table, campaign)
    return WhatIfOut(
        campaign=campaign,
        model_version=solver.model_version,
        current=None if served is None else campaign_point(campaign, served, path, names),
        proposed=_point_out(proposed, names),
    )


def allocation_counts(metrics: Metrics, model_version: str) -> AllocationCountsOut:
    counts = {}
    for name in metrics.treatment_names:
        value = metrics.registry.get_sample_value(ALLOCATIONS_SAMPLE, {"treatment": name})
        counts[name] = int(value or 0)
    return AllocationCountsOut(
        model_version=model_version,
        replica=f"{socket.gethostname()}/{os.getpid()}",
        counts=counts,
        total=sum(counts.values()),
    )
