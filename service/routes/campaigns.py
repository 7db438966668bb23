"""/campaigns/{campaign}: a budget over a flight with a shared hard cap and pacing (admin token for writes)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, status

from service.campaigns.operations import (
    CampaignHistoryOut,
    CampaignOut,
    CampaignSummary,
    RealizedReport,
    list_campaigns,
    put_campaign,
    read_campaign,
    read_history,
    report_realized,
)
from service.campaigns.spec import CampaignSpec
from service.deps import AdminDep, CampaignsDep, PacerDep, SolverDep, StoreDep, TableDep
from service.payload import CAMPAIGN_PATTERN

router = APIRouter(prefix="/campaigns", tags=["campaigns"])

CampaignName = Annotated[str, Path(pattern=CAMPAIGN_PATTERN.pattern, description="campaign name")]
ADMIN_ERRORS: dict[int | str, dict[str, str]] = {
    401: {"description": "No bearer token"},
    403: {"description": "Wrong admin token"},
    503: {"description": "The ledger (Redis) is unreachable"},
}


@router.get("", response_model=list[CampaignSummary], responses={503: ADMIN_ERRORS[503]})
async def read_campaigns(book: CampaignsDep) -> list[CampaignSummary]:
    """Every campaign in the ledger with its status, budget and committed spend."""
    return await list_campaigns(book)


@router.put(
    "/{campaign}",
    response_model=CampaignOut,
    responses={
        **ADMIN_ERRORS,
        409: {"description": "total_budget below what is already committed and reserved"},
        422: {"description": "Invalid spec, or budget ÷ audience below the cheapest policy's cost"},
    },
)
async def put_campaign_spec(
    campaign: CampaignName,
    body: CampaignSpec,
    request: Request,
    _admin: AdminDep,
    book: CampaignsDep,
    pacer: PacerDep,
    solver: SolverDep,
    store: StoreDep,
    table: TableDep,
) -> CampaignOut:
    """Create or update a campaign: total budget, flight, pacing mode, expected audience, paused."""
    await put_campaign(campaign, body, book, solver, store, table)
    request.scope["log"].update(campaign=campaign)
    return await read_campaign(campaign, book, pacer, table)


@router.get("/{campaign}", response_model=CampaignOut, responses={404: {"description": "No such campaign"}})
async def read_campaign_state(
    campaign: CampaignName, book: CampaignsDep, pacer: PacerDep, table: TableDep
) -> CampaignOut:
    """Budget, committed, realized and remaining spend, target now, and the λ in use with its version."""
    return await read_campaign(campaign, book, pacer, table)


@router.get(
    "/{campaign}/history",
    response_model=CampaignHistoryOut,
    responses={404: {"description": "No such campaign"}, 503: ADMIN_ERRORS[503]},
)
async def read_campaign_history(campaign: CampaignName, book: CampaignsDep, pacer: PacerDep) -> CampaignHistoryOut:
    """Committed spend, cap, target and λ at each pacing step of the flight so far (the console's charts)."""
    return await read_history(campaign, book, pacer)


@router.post(
    "/{campaign}/realized",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**ADMIN_ERRORS, 404: {"description": "No such campaign"}},
)
async def report_realized_cost(
    campaign: CampaignName, body: RealizedReport, _admin: AdminDep, book: CampaignsDep
) -> None:
    """Add realized cost (redemptions) and the predicted cost of the decisions it covers."""
    await report_realized(campaign, body, book)
