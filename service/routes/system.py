"""GET /model, /healthz, /readyz and /metrics."""

from __future__ import annotations

import os
import time
from typing import Any

from fastapi import APIRouter, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from service.deps import ArtifactDep, MetricsDep, StoreDep, TableDep

router = APIRouter(tags=["system"])


@router.get("/model")
async def read_model(artifact: ArtifactDep) -> dict[str, Any]:
    """The loaded model's manifest: feature names in order, treatments, method and metrics."""
    return artifact.manifest.model_dump(mode="json")


@router.get("/healthz")
async def read_health() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz", response_class=JSONResponse, responses={503: {"description": "λ* not known yet"}})
async def read_readiness(artifact: ArtifactDep, table: TableDep, store: StoreDep) -> JSONResponse:
    """Ready when the model is loaded and λ* is known; says where each campaign's λ* comes from."""
    campaigns = {"default": table.default, **table.campaigns()}
    body = {
        "ready": table.synced,
        "process_id": os.getpid(),  # which worker process answered (ALLOCATOR_WORKERS > 1 share one port)
        "model_version": artifact.model_version,
        "store": store.backend,
        "store_up": table.store_up,
        "store_error": table.store_error,
        "seconds_since_sync": None if table.synced_at is None else round(time.monotonic() - table.synced_at, 3),
        "serving_last_known_lambda": table.synced and not table.store_up,
        "lambda": {c: {"lambda": s.lam, "version": s.version, "source": s.source} for c, s in campaigns.items()},
    }
    code = status.HTTP_200_OK if table.synced else status.HTTP_503_SERVICE_UNAVAILABLE
    return JSONResponse(body, status_code=code)


@router.get("/metrics", response_class=Response)
async def read_metrics(metrics: MetricsDep, table: TableDep) -> Response:
    """Prometheus metrics: latency, allocations per treatment, λ* and version per campaign, store status."""
    return Response(metrics.render(table, time.monotonic()), media_type=CONTENT_TYPE_LATEST)
