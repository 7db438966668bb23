"""PUT (admin) and GET /campaigns/{campaign}/exploration: the campaign's exploration share ε."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request

from service.deps import AdminDep, DecisionsDep
from service.payload import CAMPAIGN_PATTERN
from service.schemas import ExplorationIn, ExplorationOut

router = APIRouter(tags=["exploration"])

CampaignPath = Annotated[str, Path(pattern=CAMPAIGN_PATTERN.pattern, description="campaign name")]


@router.put(
    "/campaigns/{campaign}/exploration",
    response_model=ExplorationOut,
    responses={
        401: {"description": "No bearer token"},
        403: {"description": "Wrong admin token"},
        422: {"description": "epsilon missing or outside [0, 1]"},
        503: {"description": "Redis is unreachable"},
    },
)
async def set_exploration(
    campaign: CampaignPath, body: ExplorationIn, request: Request, _admin: AdminDep, decisions: DecisionsDep
) -> ExplorationOut:
    """Set the share ε of the campaign's decisions drawn uniformly among the allowed treatments (0 = none).

    Stored for every replica (they pick it up within ALLOCATOR_REFRESH_SECONDS); this replica applies it at once.
    """
    record = await decisions.store.put(campaign, body.epsilon)
    decisions.epsilon.set(campaign, body.epsilon)
    request.scope["log"].update(campaign=campaign, epsilon=body.epsilon)
    return ExplorationOut(campaign=campaign, epsilon=body.epsilon, updated_at=record["updated_at"])


@router.get("/campaigns/{campaign}/exploration", response_model=ExplorationOut)
async def read_exploration(campaign: CampaignPath, decisions: DecisionsDep) -> ExplorationOut:
    """The ε this replica serves for the campaign."""
    return ExplorationOut(campaign=campaign, epsilon=decisions.epsilon.get(campaign), updated_at=None)
