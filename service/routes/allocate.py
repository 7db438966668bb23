"""POST /allocate: the hot path (body decoded by `service.payload`, not by pydantic).

Served by `allocate_asgi`, a bare ASGI endpoint that `service.main` routes to before FastAPI's middleware and
router: those layers cost more CPU than decoding, scoring and answering one individual (docs/benchmarks.md,
serve). The FastAPI route below declares the same operation for OpenAPI and answers through the same
`allocate_request`, so the published contract and the served one are one function.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from fastapi import APIRouter, HTTPException, Request, Response, status
from starlette.types import Receive, Scope, Send

from service.allocation import Allocated, allocate_body
from service.errors import RequestError
from service.schemas import AllocateColumnsResponse, AllocateResponse, ErrorOut, allocate_request_body

router = APIRouter(tags=["allocation"])

ALLOCATE_BODY = {"requestBody": allocate_request_body()}

# Bodies up to this size are scored on the event loop (≈ 1 ms at most); larger ones in a worker thread, so
# probes and small requests keep answering while a 10k-row batch is decoded and scored.
INLINE_BODY_BYTES = 32 * 2**10

NOT_SYNCED = "λ* unknown: the store has not answered since startup"
JSON_HEADERS = [(b"content-type", b"application/json")]


@router.post(
    "/allocate",
    response_class=Response,
    openapi_extra=ALLOCATE_BODY,
    responses={
        200: {
            "model": AllocateResponse | AllocateColumnsResponse,
            "description": "One allocation per individual, in request order (as columns when asked)",
        },
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
    content = await allocate_request(request.scope, await request.body())
    return Response(content, media_type="application/json")


async def allocate_asgi(scope: Scope, receive: Receive, send: Send) -> None:
    """The endpoint as a bare ASGI app: read the body, answer 200 or the error naming the field.

    Body limits, timeouts and the request log wrap it in `service.main` exactly as they wrap FastAPI.
    """
    body = await _read_body(receive)
    if body is None:
        return  # the client went away before sending its body: nobody to answer
    try:
        code, content = 200, await allocate_request(scope, body)
    except RequestError as error:
        code, content = error.status, orjson.dumps({"detail": error.detail})
    except HTTPException as error:
        code, content = error.status_code, orjson.dumps({"detail": error.detail})
    headers = [*JSON_HEADERS, (b"content-length", str(len(content)).encode())]
    await send({"type": "http.response.start", "status": code, "headers": headers})
    await send({"type": "http.response.body", "body": content})


async def allocate_request(scope: Scope, body: bytes) -> bytes:
    """The 200 answer to one /allocate body; RequestError or HTTPException say why there is none."""
    runtime = scope["app"].state.runtime
    if not runtime.table.synced:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, NOT_SYNCED)
    if len(body) <= INLINE_BODY_BYTES:
        done: Allocated = allocate_body(body, runtime)
    else:
        done = await asyncio.get_running_loop().run_in_executor(runtime.batch_threads, allocate_body, body, runtime)
    metrics = runtime.metrics
    metrics.batch_size.observe(len(done.treatment))
    metrics.count_allocations(done.treatment)
    if done.unseen_categories:
        metrics.unseen_categories.inc(done.unseen_categories)
    log: dict[str, Any] = scope["log"]
    log.update(
        campaign=done.campaign, batch_size=len(done.treatment), lambda_version=done.served.version, lam=done.served.lam
    )
    return done.content


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body (its size and arrival time bounded by `service.guards`), None on disconnect."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
