"""PUT (admin) and GET /campaigns/{campaign}/exploration: the campaign's exploration share ε."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request

from service.deps import AdminDep, DecisionsDep
from service.payload import CAMPAIGN_PATTERN
from service.schemas import ErrorOut, ExplorationIn, ExplorationOut, inline_schema, parse_body

router = APIRouter(tags=["exploration"])

CampaignPath = Annotated[str, Path(pattern=CAMPAIGN_PATTERN.pattern, description="campaign name")]

# Read by the handler after the admin check (a declared body would be read before any dependency runs).
EXPLORATION_BODY = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": inline_schema(ExplorationIn)}}}
}


@router.put(
    "/campaigns/{campaign}/exploration",
    response_model=ExplorationOut,
    openapi_extra=EXPLORATION_BODY,
    responses={
        401: {"model": ErrorOut, "description": "No bearer token"},
        403: {"model": ErrorOut, "description": "Wrong admin token"},
        413: {"model": ErrorOut, "description": "Body larger than the admin body limit"},
        422: {"model": ErrorOut, "description": "epsilon missing or outside [0, 1], or a bad campaign name"},
        503: {"model": ErrorOut, "description": "Redis is unreachable: ε was not changed"},
    },
)
async def set_exploration(
    campaign: CampaignPath, request: Request, _admin: AdminDep, decisions: DecisionsDep
) -> ExplorationOut:
    """Set the share ε of the campaign's decisions drawn uniformly among the allowed treatments (0 = none).

    Stored for every replica (they pick it up within ALLOCATOR_REFRESH_SECONDS); this replica applies it at once.
    """
    body = parse_body(ExplorationIn, await request.body())
    record = await decisions.store.put(campaign, body.epsilon)
    decisions.epsilon.set(campaign, body.epsilon)
    request.scope["log"].update(campaign=campaign, epsilon=body.epsilon)
    return ExplorationOut(campaign=campaign, epsilon=body.epsilon, updated_at=record["updated_at"])


@router.get(
    "/campaigns/{campaign}/exploration",
    response_model=ExplorationOut,
    responses={422: {"model": ErrorOut, "description": "A bad campaign name"}},
)
async def read_exploration(campaign: CampaignPath, decisions: DecisionsDep) -> ExplorationOut:
    """The ε this replica serves for the campaign."""
    return ExplorationOut(campaign=campaign, epsilon=decisions.epsilon.get(campaign), updated_at=None)
