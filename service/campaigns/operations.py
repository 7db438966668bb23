"""The plain functions under `/campaigns/{campaign}`: create or update, read the state, report realized cost."""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict, Field

from service.campaigns.leader import HISTORY_POINTS, Pacer
from service.campaigns.ledger import BudgetBelowSpendError, LedgerState
from service.campaigns.slices import CampaignBook
from service.campaigns.spec import MAX_AMOUNT, CampaignSpec, CampaignStatus, flight_status
from service.decision import BudgetError
from service.errors import RequestError
from service.lambdas import BudgetSolver, LambdaTable
from service.state import LambdaStore


class CampaignOut(BaseModel):
    """A campaign's spec and its ledger now, as one replica sees it."""

    model_config = ConfigDict(populate_by_name=True)

    campaign: str
    spec: CampaignSpec
    status: CampaignStatus = Field(description="active, scheduled, paused, ended or exhausted")
    budget: float
    cap: float = Field(
        description="committed spend allowed (≤ budget; lowered when realized cost runs above predicted)"
    )
    committed: float = Field(description="predicted cost of the treatments given, including presumed")
    reserved: float = Field(description="slices held by replicas, not yet spent")
    presumed: float = Field(description="reclaimed slices of replicas that stopped renewing, charged as spent")
    realized: float = Field(description="realized cost reported so far")
    covered: float = Field(description="predicted cost of the decisions the realized reports cover")
    remaining: float = Field(description="budget − committed")
    target: float | None = Field(description="committed spend the pacing mode wants by now (None: pacing off)")
    pace_error: float | None = Field(description="(committed − target) ÷ budget at the last pacing step")
    realized_ratio: float | None = Field(description="realized ÷ predicted cost estimate of the last pacing step")
    lambda_: float = Field(alias="lambda", description="λ this replica serves for the campaign")
    lambda_version: int
    pacing_leader: bool = Field(description="this replica runs the campaign's pacing")


class CampaignSummary(BaseModel):
    """One campaign of `GET /campaigns`: enough for a list; `GET /campaigns/{campaign}` has the rest."""

    campaign: str
    status: CampaignStatus
    budget: float
    committed: float


class PacePointOut(BaseModel):
    """The ledger at one pacing step."""

    model_config = ConfigDict(populate_by_name=True)

    at: float = Field(description="unix seconds")
    committed: float = Field(description="committed spend (predicted cost of the treatments given)")
    cap: float = Field(description="committed spend allowed at that step")
    target: float | None = Field(description="committed spend the pacing mode wanted by then (None: pacing off)")
    realized: float = Field(description="realized cost reported by then")
    lambda_: float = Field(alias="lambda", description="λ served after the step")


class CampaignHistoryOut(BaseModel):
    """A campaign's pacing history: one point per pacing step, thinned so a flight fits in `max_points`."""

    campaign: str
    budget: float
    start: float = Field(description="flight start, unix seconds")
    end: float = Field(description="flight end, unix seconds")
    interval_seconds: float = Field(description="seconds between points (the pacing period, or more)")
    max_points: int
    points: list[PacePointOut]


class RealizedReport(BaseModel):
    """Realized cost that came in (redemptions), and the predicted cost of the decisions it covers."""

    model_config = ConfigDict(extra="forbid", strict=True)  # numbers only: `true` is not a cost of 1

    realized_cost: float = Field(ge=0, le=MAX_AMOUNT, description="realized cost since the last report")
    predicted_cost: float = Field(ge=0, le=MAX_AMOUNT, description="predicted cost of those decisions")


async def put_campaign(
    campaign: str,
    spec: CampaignSpec,
    book: CampaignBook,
    solver: BudgetSolver,
    store: LambdaStore,
    table: LambdaTable,
) -> None:
    """Create or update a campaign; a new one (or pacing 'off') gets the reference λ* for budget ÷ audience."""
    # A budget above what the reference population can spend buys the revenue-maximising policy (λ* = 0).
    most = solver.sweep.max_spend / solver.population_size
    try:
        solution = solver.solve(min(spec.budget_per_capita, most))
    except BudgetError as error:
        raise RequestError("total_budget", f"÷ expected_audience: {error}") from error
    existing = await book.ledger.read(campaign)
    try:
        await book.ledger.upsert(campaign, spec.model_dump_json(), spec.total_budget)
    except BudgetBelowSpendError as error:
        raise RequestError("total_budget", str(error), status=409) from error
    if existing is None or spec.pacing == "off":
        record = solver.record(campaign, spec.budget_per_capita, solution)
        stored = await store.put(record, after_version=table.current(campaign).version)
        table.apply(stored)
        await book.ledger.save_pace_state(campaign, {"lambda": solution.lam, "initial_lambda": solution.lam})
    await book.report(campaign, book.learn(campaign, spec))  # a first slice here at once


def ledger_status(spec: CampaignSpec, state: LedgerState, now: float) -> CampaignStatus:
    """The flight's status, or 'exhausted' when an active flight has nothing left to commit."""
    status = flight_status(spec, now)
    if status is CampaignStatus.ACTIVE and state.remaining <= 0:
        return CampaignStatus.EXHAUSTED
    return status


async def read_campaign(campaign: str, book: CampaignBook, pacer: Pacer, table: LambdaTable) -> CampaignOut:
    """The campaign's state from the ledger (404 when it does not exist)."""
    found = await book.ledger.read(campaign)
    if found is None:
        raise RequestError("campaign", f"no campaign {campaign!r} (create it with PUT /campaigns/{campaign})", 404)
    spec = CampaignSpec.model_validate_json(found[0])
    state = found[1]
    book.learn(campaign, spec)
    now = time.time()
    status = ledger_status(spec, state, now)
    share = spec.target_share(now)
    step = pacer.last.get(campaign)
    served = table.current(campaign)
    return CampaignOut.model_validate(
        {
            "campaign": campaign,
            "spec": spec,
            "status": status,
            "budget": state.budget,
            "cap": state.cap,
            "committed": state.committed,
            "reserved": state.reserved,
            "presumed": state.presumed,
            "realized": state.realized,
            "covered": state.covered,
            "remaining": state.remaining,
            "target": None if share is None else state.cap * share,
            "pace_error": None if step is None else step.pace_error,
            "realized_ratio": None if step is None else step.ratio,
            "lambda": served.lam,
            "lambda_version": served.version,
            "pacing_leader": campaign in pacer.leading,
        }
    )


async def list_campaigns(book: CampaignBook) -> list[CampaignSummary]:
    """Every campaign in the ledger, by name."""
    now = time.time()
    out = []
    for campaign in await book.ledger.managed():
        found = await book.ledger.read(campaign)
        if found is None:  # removed between the two reads
            continue
        spec, state = CampaignSpec.model_validate_json(found[0]), found[1]
        status = ledger_status(spec, state, now)
        out.append(CampaignSummary(campaign=campaign, status=status, budget=state.budget, committed=state.committed))
    return out


async def read_history(campaign: str, book: CampaignBook, pacer: Pacer) -> CampaignHistoryOut:
    """The campaign's pacing history (404 when the campaign does not exist)."""
    found = await book.ledger.read(campaign)
    if found is None:
        raise RequestError("campaign", f"no campaign {campaign!r} (create it with PUT /campaigns/{campaign})", 404)
    spec = CampaignSpec.model_validate_json(found[0])
    start, end = spec.flight_seconds
    points = await book.ledger.pace_history(campaign)
    return CampaignHistoryOut(
        campaign=campaign,
        budget=found[1].budget,
        start=start,
        end=end,
        interval_seconds=pacer.history_interval(spec),
        max_points=HISTORY_POINTS,
        points=[
            PacePointOut.model_validate(
                {
                    "at": p.at,
                    "committed": p.committed,
                    "cap": p.cap,
                    "target": p.target,
                    "realized": p.realized,
                    "lambda": p.lam,
                }
            )
            for p in points
        ],
    )


async def report_realized(campaign: str, report: RealizedReport, book: CampaignBook) -> None:
    state = await book.ledger.realize(campaign, report.realized_cost, report.predicted_cost)
    if state is None:
        raise RequestError("campaign", f"no campaign {campaign!r}", 404)
