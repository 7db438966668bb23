"""FastAPI dependencies: the runtime's parts and the admin check, as `Annotated` aliases for handlers."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.artifact import Artifact
from service.config import Settings
from service.decisions.shipper import DecisionLog
from service.features import FeatureEncoder
from service.lambdas import BudgetSolver, LambdaTable
from service.metrics import Metrics
from service.runtime import Runtime
from service.state import LambdaStore

# Every dependency is `async def`: FastAPI would run a plain `def` in its thread pool, a thread hop per request
# for what is only an attribute read.
bearer = HTTPBearer(auto_error=False, description="ALLOCATOR_ADMIN_TOKEN")


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_settings(runtime: RuntimeDep) -> Settings:
    return runtime.settings


async def get_artifact(runtime: RuntimeDep) -> Artifact:
    return runtime.artifact


async def get_encoder(runtime: RuntimeDep) -> FeatureEncoder:
    return runtime.encoder


async def get_solver(runtime: RuntimeDep) -> BudgetSolver:
    return runtime.solver


async def get_table(runtime: RuntimeDep) -> LambdaTable:
    return runtime.table


async def get_store(runtime: RuntimeDep) -> LambdaStore:
    return runtime.store


async def get_metrics(runtime: RuntimeDep) -> Metrics:
    return runtime.metrics


async def get_decisions(runtime: RuntimeDep) -> DecisionLog:
    return runtime.decisions


SettingsDep = Annotated[Settings, Depends(get_settings)]
ArtifactDep = Annotated[Artifact, Depends(get_artifact)]
EncoderDep = Annotated[FeatureEncoder, Depends(get_encoder)]
SolverDep = Annotated[BudgetSolver, Depends(get_solver)]
TableDep = Annotated[LambdaTable, Depends(get_table)]
StoreDep = Annotated[LambdaStore, Depends(get_store)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
DecisionsDep = Annotated[DecisionLog, Depends(get_decisions)]


def admin_problem(settings: Settings, authorization: str | None) -> HTTPException | None:
    """401 without a bearer token, 403 with a wrong one (compared in constant time) or when admin is disabled."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="Authorization: missing bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if settings.admin_token is None:
        return HTTPException(status.HTTP_403_FORBIDDEN, detail="Authorization: admin API disabled (no admin token set)")
    expected = settings.admin_token.get_secret_value().encode()
    if not hmac.compare_digest(token.strip().encode(errors="replace"), expected):
        return HTTPException(status.HTTP_403_FORBIDDEN, detail="Authorization: wrong admin token")
    return None


async def require_admin(
    settings: SettingsDep, _bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)], request: Request
) -> None:
    """The admin check (also run by `service.guards` before the body is read); `bearer` declares it in OpenAPI."""
    problem = admin_problem(settings, request.headers.get("authorization"))
    if problem is not None:
        raise problem


AdminDep = Annotated[None, Depends(require_admin)]
