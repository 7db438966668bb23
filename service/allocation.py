"""Allocation and budget operations: the plain functions under the routers."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from service.artifact import Artifact
from service.campaigns.wallet import SliceWallet
from service.decision import BudgetError, choose
from service.decisions.exploration import Explored, explore, utc_day
from service.decisions.record import DecisionBatch, decision_ids, new_batch_token
from service.decisions.shipper import DecisionLog
from service.errors import RequestError
from service.lambdas import BudgetSolver, LambdaTable, Served
from service.payload import AllocateBatch, decode_allocate, encode_allocations
from service.schemas import BudgetOut, BudgetRequest, LambdaOut
from service.state import LambdaStore, WriteRequest

if TYPE_CHECKING:  # the runtime imports the routes' helpers' modules; only its type is needed here
    from service.runtime import Runtime


def allocate(
    batch: AllocateBatch,
    artifact: Artifact,
    served: Served,
    epsilon: float = 0.0,
    decisions: DecisionLog | None = None,
    now: float | None = None,
    wallet: SliceWallet | None = None,
) -> tuple[bytes, NDArray[np.int64]]:
    """The /allocate response body and the (N,) treatments given: argmax_j (r̂ − λ*·ĉ) per individual, except
    for the exploration share ε, then the campaign's ledger cap, and each decision appended to the decision log.

    With a campaign `wallet` (a campaign resource), treatments its budget slice cannot pay for become the
    cheapest allowed one, and the response says why (`campaign_status`, `capped`).
    Synchronous and thread-safe (it may run in a worker thread): the log append and the wallet take locks.
    """
    now = time.time() if now is None else now
    revenue, cost = artifact.predict(batch.features)  # (N, K) each
    _check_predictions(revenue, cost)
    policy = choose(revenue, cost, served.lam, batch.allowed)  # (N,)
    explored = exploration_override(batch, policy, artifact.manifest.n_treatments, epsilon, now)
    treatment = explored.treatment
    token = new_batch_token()
    ids = decision_ids(token, len(treatment))
    header: dict[str, object] = {
        "campaign": batch.campaign,
        "model_version": artifact.model_version,
        "lambda": served.lam,
        "lambda_version": served.version,
    }
    # The ledger cap comes after exploration, so exploration spend counts against the campaign's budget (a
    # capped row's logged propensity then describes the draw, not the cap).
    if wallet is not None:
        capped = wallet.cap(treatment, cost, batch.allowed, now)
        treatment = capped.treatment
        header.update(campaign_status=capped.status.value, capped=capped.capped)
    names = artifact.manifest.treatment_names
    body = encode_allocations(
        batch.ids, treatment, revenue, cost, names, header, decision_ids=ids, columnar=batch.columnar_response
    )
    if decisions is not None:
        decisions.append(
            DecisionBatch(
                token=token,
                time=now,
                campaign=batch.campaign,
                individuals=batch.ids,
                model_version=artifact.model_version,
                lam=served.lam,
                lambda_version=served.version,
                treatment=treatment,
                propensity=explored.propensity,
                explore=explored.explore,
                features=batch.features,
            )
        )
    return body, treatment


def _check_predictions(revenue: NDArray[np.float32], cost: NDArray[np.float32]) -> None:
    """422 for the first individual whose predictions are not finite: its (finite) features are so far outside
    what the model was trained on that its float32 arithmetic overflows. Never a 500 for what a client sent."""
    finite = np.isfinite(revenue).all(axis=1) & np.isfinite(cost).all(axis=1)  # (N,)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise RequestError(
            f"individuals[{row}].features",
            "values so far outside the model's training range that its predictions overflow",
        )


@dataclass(frozen=True)
class Allocated:
    """What one /allocate call decided: the response body and what the route records about it."""

    campaign: str
    content: bytes
    treatment: NDArray[np.int64]  # (N,) chosen arm per individual
    served: Served
    unseen_categories: int


def allocate_body(body: bytes, runtime: Runtime) -> Allocated:
    """Decode, score and answer one /allocate body; pure CPU work, safe to run in a worker thread."""
    artifact = runtime.artifact
    refusal: tuple[str, str, int] | None = None
    try:
        batch = decode_allocate(body, runtime.encoder, artifact.manifest.n_treatments, runtime.settings.max_batch)
        served = runtime.table.serving(batch.campaign)
        epsilon = runtime.decisions.epsilon.get(batch.campaign)
        wallet = runtime.campaigns.wallet(batch.campaign)
        content, treatment = allocate(
            batch, artifact, served, epsilon=epsilon, decisions=runtime.decisions, wallet=wallet
        )
    except RequestError as error:
        # Raised again outside this block: the original's traceback holds the frames with the decoded body
        # (up to ~25× its size), which would stay alive while the error travels to the event loop and the
        # next batch is decoded.
        refusal = (error.field, error.message, error.status)
    if refusal is not None:
        raise RequestError(*refusal)
    return Allocated(batch.campaign, content, treatment, served, batch.unseen_categories)


def exploration_override(
    batch: AllocateBatch, policy: NDArray[np.int64], n_treatments: int, epsilon: float, now: float
) -> Explored:
    """The ε share of the batch drawn uniformly among allowed treatments (deterministic per individual and day)."""
    return explore(policy, batch.allowed, n_treatments, epsilon, batch.campaign, batch.ids, utc_day(now))


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


async def set_budget(
    request: BudgetRequest, solver: BudgetSolver, store: LambdaStore, table: LambdaTable, request_id: str
) -> BudgetOut:
    """Solve λ* exactly for the budget, store it with the next version (announced), and serve it here at once.

    The answer describes the record this call stored (or, for a retried `request_id`, the one its first call
    stored), never whatever another concurrent call stored since.
    """
    started = time.perf_counter()
    field = "budget_per_capita" if request.budget_per_capita is not None else "total_budget"
    try:
        solution = solver.solve(request.per_capita)
    except BudgetError as error:
        raise RequestError(field, str(error)) from error
    solve_ms = 1e3 * (time.perf_counter() - started)
    record = solver.record(request.campaign, request.per_capita, solution)
    write = WriteRequest(request_id, fingerprint=f"{request.campaign}:{request.per_capita!r}")
    try:
        stored = await store.put(record, after_version=table.current(request.campaign).version, request=write)
    except ValueError as error:  # the request id was used before for another budget
        raise RequestError("idempotency-key", str(error), status=409) from error
    table.apply(stored)
    served = Served(stored.lam, stored.version, "store", stored)
    out = lambda_out(request.campaign, served, solver.model_version)
    return BudgetOut.model_validate(
        {
            **out.model_dump(by_alias=True),
            "solve_ms": solve_ms,
            "population_size": solver.population_size,
            "request_id": request_id,
        }
    )
