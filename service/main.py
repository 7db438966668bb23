"""The FastAPI application: lifespan (load model, connect store), request logging, error mapping, routers."""

from __future__ import annotations

import gc
import itertools
import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import FastAPI, Request, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import openapi
from service.config import Settings
from service.errors import RequestError, StoreUnavailableError, WriteOutcomeUnknownError
from service.guards import DrainState, Guard, path_pattern
from service.routes import allocate, budget, campaigns, console, exploration, system
from service.runtime import start_runtime, stop_runtime
from service.schemas import problems

log = logging.getLogger("service.requests")

CONSOLE_ENDPOINTS = frozenset(
    {"/console", "/budget/curve", "/budget/whatif", "/budget/campaigns", "/allocations/counts"}
)
ENDPOINTS = frozenset({"/allocate", "/budget", "/model", "/healthz", "/readyz", "/metrics", *CONSOLE_ENDPOINTS})
# Probes, scrapes and what an open console polls every few seconds: debug level only.
QUIET_ENDPOINTS = frozenset({"/healthz", "/readyz", "/metrics", "/budget/campaigns", "/allocations/counts"})


class RequestLog:
    """ASGI middleware: request id, latency histogram, Server-Timing header, one structured log line.

    Handlers add fields (campaign, batch size, λ version) to `scope["log"]`.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # Request ids: a random per-process prefix and a counter, unique across replicas and restarts
        # without a call to the OS's random source per request.
        self._ids = map(f"{secrets.token_hex(8)}{{:08x}}".format, itertools.count())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        cpu_started = time.process_time()
        request_id = _header(scope, b"x-request-id") or next(self._ids)
        fields: dict[str, Any] = {}
        scope["log"] = fields
        status_code = 500

        async def send_with_headers(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
                elapsed_ms = 1e3 * (time.perf_counter() - started)
                # The process's CPU time meanwhile: on a busy machine wall time includes waiting for a core;
                # with one request in flight per process this is what the request itself cost (bench.serve).
                cpu_ms = 1e3 * (time.process_time() - cpu_started)
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"x-request-id", request_id.encode("latin-1")),
                    (b"server-timing", f"app;dur={elapsed_ms:.3f}, cpu;dur={cpu_ms:.3f}".encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            self._record(scope, request_id, status_code, time.perf_counter() - started, fields)

    @staticmethod
    def _record(scope: Scope, request_id: str, status_code: int, seconds: float, fields: dict[str, Any]) -> None:
        path = scope["path"]
        endpoint = path if path in ENDPOINTS else "other"
        runtime = getattr(scope["app"].state, "runtime", None) if "app" in scope else None
        if runtime is not None:
            runtime.metrics.observe_latency(endpoint, status_code, seconds)
        level = logging.DEBUG if endpoint in QUIET_ENDPOINTS else logging.INFO
        if not log.isEnabledFor(level):  # the line is not built for nobody (bench.serve logs at WARNING)
            return
        if runtime is not None:
            fields.setdefault("model_version", runtime.artifact.model_version)
        line = {
            "request_id": request_id,
            "method": scope["method"],
            "path": endpoint,
            "status": status_code,
            "latency_ms": round(1e3 * seconds, 3),
            **fields,
        }
        log.log(level, "%s", orjson.dumps(line).decode())


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            text = value.decode("latin-1")
            return text[:128] if text.isprintable() else None
    return None


def _request_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestError)  # registered for RequestError only
    return JSONResponse({"detail": error.detail}, status_code=error.status)


def _validation_error(_: Request, error: Exception) -> JSONResponse:
    """422 naming each bad field; the input is not echoed (it may hold values JSON cannot encode, like inf)."""
    assert isinstance(error, RequestValidationError)  # registered for RequestValidationError only
    detail = "; ".join(f"{field}: {message}" for field, message in problems(error.errors()))
    return JSONResponse({"detail": detail}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


# FastAPI's words when a JSON body cannot even be decoded as text (not UTF-8): its 400 is not in the contract.
UNPARSABLE_BODY = "There was an error parsing the body"


async def _http_error(request: Request, error: Exception) -> Any:
    """FastAPI's HTTPException answers as FastAPI gives them, except an undecodable body: 422 naming the body,
    like every other malformed body (a JSON syntax error is already a 422); and a 405's `Allow` lists every
    method of the path, not only those of the first route Starlette matched (`/budget` has GET and POST)."""
    assert isinstance(error, HTTPException)  # registered for HTTPException only
    if error.status_code == status.HTTP_400_BAD_REQUEST and error.detail == UNPARSABLE_BODY:
        detail = "body: invalid JSON (the bytes are not UTF-8 text)"
        return JSONResponse({"detail": detail}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)
    if error.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
        allowed = _allowed_methods(request.app, request.url.path)
        if allowed:
            return JSONResponse({"detail": error.detail}, status_code=error.status_code, headers={"Allow": allowed})
    return await http_exception_handler(request, error)


def _allowed_methods(app: FastAPI, path: str) -> str:
    """The methods the published API has for `path` (HEAD with GET, as Starlette serves it), an `Allow` value."""
    methods: set[str] = set()
    for template, operations in app.openapi().get("paths", {}).items():
        if path_pattern(template).fullmatch(path):
            methods |= {method.upper() for method in operations}
    if "GET" in methods:
        methods.add("HEAD")
    return ", ".join(sorted(methods))


def _store_unavailable(_: Request, error: Exception) -> JSONResponse:
    return JSONResponse({"detail": f"λ* store unavailable: {error}"}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE)


def _write_outcome_unknown(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, WriteOutcomeUnknownError)  # registered for WriteOutcomeUnknownError only
    deadline = datetime.fromtimestamp(error.deadline_ms / 1e3, UTC).isoformat(timespec="milliseconds")
    detail = (
        f"λ* store did not confirm the write ({error}): it either took effect before {deadline} or never will; "
        "retry with the same Idempotency-Key to learn which"
    )
    return JSONResponse({"detail": detail}, status_code=status.HTTP_504_GATEWAY_TIMEOUT)


class AllocatorApp(FastAPI):
    """FastAPI behind the service's own front: request log, then guards, then POST /allocate straight to its
    bare ASGI endpoint and everything else to FastAPI's middleware and router.

    FastAPI's layers (error and telemetry middleware, exception handlers, routing, the endpoint wrapper) took
    more CPU than a one-individual allocation itself; the hot path skips them, every other route keeps them.
    """

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hot_path = True  # False: /allocate through FastAPI's route too (the parity test compares both)
        self.state.drain = drain = DrainState()
        # Guard inside RequestLog, so its answers are logged.
        self.front: ASGIApp = RequestLog(Guard(self._dispatch, settings=settings, drain=drain))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = self
        await self.front(scope, receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.hot_path and scope["type"] == "http" and scope["path"] == "/allocate" and scope["method"] == "POST":
            await allocate.allocate_asgi(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service app; `settings` None reads them from ALLOCATOR_* environment variables."""
    settings = settings if settings is not None else Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        logging.getLogger("service").setLevel(settings.log_level_number)
        app.state.runtime = await start_runtime(settings)
        # What startup built (the model, the population, FastAPI's routes, every import) lives as long as the
        # process: out of the collector's way, a full collection takes ~3 ms instead of 50-60 ms, which every
        # request in flight waited for (measured under 64 connections; docs/benchmarks.md, serve).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await stop_runtime(app.state.runtime)
            gc.unfreeze()  # the process may go on (tests start many apps): let what this one held be collected

    app = AllocatorApp(
        settings,
        title="dfcl-allocator",
        summary="Budgeted coupon allocation: argmax_j (revenue − λ*·cost) with a decision-focused model",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.add_exception_handler(RequestError, _request_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(StoreUnavailableError, _store_unavailable)
    app.add_exception_handler(WriteOutcomeUnknownError, _write_outcome_unknown)
    app.include_router(allocate.router)
    app.include_router(budget.router)
    app.include_router(campaigns.router)
    app.include_router(exploration.router)
    app.include_router(system.router)
    app.include_router(console.router)
    openapi.install(app)
    return app
