"""GET /model, /healthz, /readyz and /metrics."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from service.deps import ArtifactDep, DecisionsDep, MetricsDep, RuntimeDep, StoreDep, TableDep
from service.lambdas import LambdaTable

router = APIRouter(tags=["system"])


@router.get("/model")
async def read_model(artifact: ArtifactDep) -> dict[str, Any]:
    """The loaded model's manifest: feature names in order, treatments, method and metrics."""
    return artifact.manifest.model_dump(mode="json")


@router.get("/healthz")
async def read_health() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_class=JSONResponse,
    responses={503: {"description": "λ* not known yet, or draining before shutdown"}},
)
async def read_readiness(
    request: Request,
    runtime: RuntimeDep,
    artifact: ArtifactDep,
    table: TableDep,
    store: StoreDep,
    decisions: DecisionsDep,
) -> JSONResponse:
    """Ready when the model is loaded and λ* is known; says where each campaign's λ* comes from, and how the
    decision log is doing (a log that cannot ship does not make the replica unready: it counts its drops)."""
    campaigns = {"default": table.default, **table.campaigns()}
    draining = bool(request.app.state.drain.draining)
    body = {
        "ready": table.synced and not draining,
        "draining": draining,
        "process_id": os.getpid(),  # which worker process answered (ALLOCATOR_WORKERS > 1 share one port)
        "model_version": artifact.model_version,
        "store": store.backend,
        "store_up": table.store_up,
        "store_error": table.store_error,
        "seconds_since_sync": None if table.synced_at is None else round(time.monotonic() - table.synced_at, 3),
        "serving_last_known_lambda": table.synced and not table.store_up,
        "sync_task": sync_task_state(runtime.sync_task, table),
        "rejected_records": store.rejected_records,
        "lambda": {c: {"lambda": s.lam, "version": s.version, "source": s.source} for c, s in campaigns.items()},
        "decision_log": decisions.describe(),
    }
    code = status.HTTP_200_OK if body["ready"] else status.HTTP_503_SERVICE_UNAVAILABLE
    return JSONResponse(body, status_code=code)


def sync_task_state(task: asyncio.Task[None] | None, table: LambdaTable) -> dict[str, Any]:
    """Whether the λ* sync task is alive (None: the in-process store needs none), restarts and the last error."""
    return {
        "running": None if task is None else not task.done(),
        "restarts": table.sync_restarts,
        "last_error": table.sync_error,
    }


@router.get("/metrics", response_class=Response)
async def read_metrics(metrics: MetricsDep, table: TableDep, store: StoreDep, decisions: DecisionsDep) -> Response:
    """Prometheus metrics: latency, allocations per treatment, λ* and version per campaign, store status,
    decision log (shipped, dropped, buffered)."""
    metrics.observe_decision_log(decisions.describe())
    return Response(metrics.render(table, time.monotonic(), store.rejected_records), media_type=CONTENT_TYPE_LATEST)
