"""POST /allocate: the hot path (body decoded by `service.payload`, not by pydantic)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException, Request, Response, status

from service.allocation import Allocated, allocate_body
from service.deps import get_runtime
from service.schemas import AllocateResponse, ErrorOut, allocate_request_body

router = APIRouter(tags=["allocation"])

ALLOCATE_BODY = {"requestBody": allocate_request_body()}

# Bodies up to this size are scored on the event loop (≈ 1 ms at most); larger ones in a worker thread, so
# probes and small requests keep answering while a 10k-row batch is decoded and scored.
INLINE_BODY_BYTES = 32 * 2**10


@router.post(
    "/allocate",
    response_class=Response,
    openapi_extra=ALLOCATE_BODY,
    responses={
        200: {"model": AllocateResponse, "description": "One allocation per individual, in request order"},
        404: {"model": ErrorOut, "description": "The campaign has no budget (POST /budget sets one)"},
        408: {"model": ErrorOut, "description": "The body did not arrive within ALLOCATOR_BODY_TIMEOUT_SECONDS"},
        413: {"model": ErrorOut, "description": "More individuals than ALLOCATOR_MAX_BATCH, or a body too large"},
        422: {
            "model": ErrorOut,
            "description": "A field is missing, unknown, non-numeric, NaN/inf, or the batch is empty",
        },
        503: {"model": ErrorOut, "description": "λ* unknown: the store has not been reachable since startup"},
    },
)
async def allocate_individuals(request: Request) -> Response:
    """Assign each individual the treatment maximising predicted revenue − λ*·cost."""
    # The hot path reads the runtime itself instead of through Depends: FastAPI's dependency resolution was a
    # third of a single-individual request's app time with six dependencies, a sixth with one (profiled).
    runtime = await get_runtime(request)
    body = await request.body()  # size and arrival time bounded by `service.guards`
    if not runtime.table.synced:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "λ* unknown: the store has not answered since startup")
    if len(body) <= INLINE_BODY_BYTES:
        done: Allocated = allocate_body(body, runtime)
    else:
        done = await asyncio.get_running_loop().run_in_executor(runtime.batch_threads, allocate_body, body, runtime)
    metrics = runtime.metrics
    metrics.batch_size.observe(len(done.treatment))
    metrics.count_allocations(done.treatment)
    if done.unseen_categories:
        metrics.unseen_categories.inc(done.unseen_categories)
    request.scope["log"].update(
        campaign=done.campaign, batch_size=len(done.treatment), lambda_version=done.served.version, lam=done.served.lam
    )
    return Response(done.content, media_type="application/json")
