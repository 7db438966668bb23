"""Allocation and budget operations: the plain functions under the routers."""

from __future__ import annotations

import time

import numpy as np
from numpy.typing import NDArray

from service.artifact import Artifact
from service.campaigns.wallet import SliceWallet
from service.decision import BudgetError, choose
from service.errors import RequestError
from service.lambdas import BudgetSolver, LambdaTable, Served
from service.payload import AllocateBatch, encode_allocations
from service.schemas import BudgetOut, BudgetRequest, LambdaOut
from service.state import LambdaStore


def allocate(
    batch: AllocateBatch, artifact: Artifact, served: Served, wallet: SliceWallet | None = None
) -> tuple[bytes, NDArray[np.int64]]:
    """The /allocate response body and the (N,) treatments: argmax_j (r̂ − λ*·ĉ) per individual, then the cap.

    With a campaign `wallet` (a campaign resource), treatments its budget slice cannot pay for become the
    cheapest allowed one, and the response says why (`campaign_status`, `capped`). Thread-safe.
    """
    revenue, cost = artifact.predict(batch.features)  # (N, K) each
    treatment = choose(revenue, cost, served.lam, batch.allowed)  # (N,)
    header: dict[str, object] = {
        "campaign": batch.campaign,
        "model_version": artifact.model_version,
        "lambda": served.lam,
        "lambda_version": served.version,
    }
    if wallet is not None:
        capped = wallet.cap(treatment, cost, batch.allowed, time.time())
        treatment = capped.treatment
        header.update(campaign_status=capped.status.value, capped=capped.capped)
    body = encode_allocations(batch.ids, treatment, revenue, cost, artifact.manifest.treatment_names, header)
    return body, treatment


def _finite_or_none(value: float) -> float | None:
    return value if np.isfinite(value) else None


def lambda_out(campaign: str, served: Served, model_version: str) -> LambdaOut:
    record = served.record
    return LambdaOut.model_validate(
        {
            "campaign": campaign,
            "lambda": served.lam,
            "version": served.version,
            "source": served.source,
            "budget_per_capita": record.budget_per_capita,
            "expected_cost_per_capita": _finite_or_none(record.spend_per_capita),
            "expected_revenue_per_capita": _finite_or_none(record.revenue_per_capita),
            "model_version": model_version,
            "solved_at": record.solved_at or None,
        }
    )


async def set_budget(request: BudgetRequest, solver: BudgetSolver, store: LambdaStore, table: LambdaTable) -> BudgetOut:
    """Solve λ* exactly for the budget, store it with the next version (announced), and serve it here at once."""
    started = time.perf_counter()
    try:
        solution = solver.solve(request.per_capita)
    except BudgetError as error:
        field = "budget_per_capita" if request.budget_per_capita is not None else "total_budget"
        raise RequestError(field, str(error)) from error
    solve_ms = 1e3 * (time.perf_counter() - started)
    record = solver.record(request.campaign, request.per_capita, solution)
    stored = await store.put(record, after_version=table.current(request.campaign).version)
    table.apply(stored)
    served = table.current(request.campaign)
    out = lambda_out(request.campaign, served, solver.model_version)
    return BudgetOut.model_validate(
        {**out.model_dump(by_alias=True), "solve_ms": solve_ms, "population_size": solver.population_size}
    )
