"""ASGI middleware that protects a replica from what clients send, before any handler runs (DESIGN.md §4).

- Admin routes check the bearer token before a byte of the body is read (FastAPI reads a declared body
  before it runs dependencies, so the route's own `AdminDep` alone would come too late).
- Every body is counted as it arrives: over the route's limit → 413, at once for a declared Content-Length
  and as soon as a chunked body passes it; bytes held by all requests together are capped (503 past it), so
  no mix of clients can take memory without bound.
- A body must arrive within `body_timeout_seconds` (408), so a trickle upload cannot hold a replica.
- While the replica drains before shutdown, every response says `Connection: close`, so clients on
  kept-alive connections move to another replica instead of finding the connection closed under them.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.config import Settings
from service.deps import admin_problem

BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LARGE_BODY_PATHS = frozenset({"/allocate"})  # batch bodies; everything else gets the small limit


class BodyRejected(HTTPException):
    """A body the guard refuses while the app is reading it (an HTTPException, so FastAPI passes it through)."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(status_code, detail, headers={"connection": "close"})


@dataclass
class HeldBytes:
    """Bytes of request bodies held by this process right now, against a cap (event-loop only: no lock)."""

    cap: int
    held: int = 0

    def take(self, n: int) -> bool:
        if self.held + n > self.cap:
            return False
        self.held += n
        return True

    def give_back(self, n: int) -> None:
        self.held -= n


@dataclass
class DrainState:
    """Set when the process was asked to stop: readiness fails and responses close their connections."""

    draining: bool = False


class Guard:
    """The middleware: admin before body, body limits, body-read timeout, `Connection: close` while draining."""

    def __init__(self, app: ASGIApp, settings: Settings, drain: DrainState) -> None:
        self.app = app
        self.settings = settings
        self.drain = drain
        self.held = HeldBytes(settings.max_held_body_bytes)
        self.admin_operations: list[tuple[str, re.Pattern[str]]] | None = None  # found on the first request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.drain.draining:
            send = _closing(send)
        if scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        problem = self._admin_problem(scope)
        if problem is not None:
            # The body is left unread: the connection cannot be reused.
            await _respond(
                send, problem.status_code, str(problem.detail), {**(problem.headers or {}), "connection": "close"}
            )
            return
        limit = (
            self.settings.max_body_bytes if scope["path"] in LARGE_BODY_PATHS else self.settings.max_small_body_bytes
        )
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _respond(send, 413, f"body: larger than {limit} bytes", {"connection": "close"})
            return
        deadline = asyncio.get_running_loop().time() + self.settings.body_timeout_seconds
        body = _CountedBody(receive, limit, self.held, deadline)
        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, body.receive, send_tracked)
        except BodyRejected as rejected:  # raised outside a handler that maps it (the app normally does)
            if not started:
                await _respond(send, rejected.status_code, str(rejected.detail), rejected.headers)
        finally:
            body.release()

    def _admin_problem(self, scope: Scope) -> HTTPException | None:
        """The 401/403 an admin route would answer, or None (not an admin route, or the token is right)."""
        if self.admin_operations is None:
            self.admin_operations = admin_operations(scope["app"].openapi())
        method, path = scope["method"], scope["path"]
        for admin_method, pattern in self.admin_operations:
            if method == admin_method and pattern.fullmatch(path):
                return admin_problem(self.settings, _header(scope, b"authorization"))
        return None


class _CountedBody:
    """`receive` for one request: counts the body against its limit and the process cap, under a deadline."""

    def __init__(self, receive: Receive, limit: int, held: HeldBytes, deadline: float) -> None:
        self._receive = receive
        self._limit = limit
        self._held = held
        self._deadline = deadline
        self._taken = 0
        self._complete = False

    async def receive(self) -> Message:
        if self._complete:  # after the body: only a disconnect can come, no deadline applies
            return await self._receive()
        try:
            async with asyncio.timeout_at(self._deadline):
                message = await self._receive()
        except TimeoutError:
            raise BodyRejected(408, "body: not received in time (ALLOCATOR_BODY_TIMEOUT_SECONDS)") from None
        if message["type"] != "http.request":
            return message
        chunk = len(message.get("body", b""))
        if self._taken + chunk > self._limit:
            raise BodyRejected(413, f"body: larger than {self._limit} bytes")
        if not self._held.take(chunk):
            raise BodyRejected(503, "body: the replica holds too many request bodies right now; retry shortly")
        self._taken += chunk
        self._complete = not message.get("more_body", False)
        return message

    def release(self) -> None:
        self._held.give_back(self._taken)
        self._taken = 0


def admin_operations(openapi: dict[str, Any]) -> list[tuple[str, re.Pattern[str]]]:
    """(method, path pattern) of every operation that needs the admin token: those OpenAPI marks `security`.

    Read from the published document, so a new admin route is guarded without being listed anywhere.
    """
    operations = []
    for path, methods in openapi.get("paths", {}).items():
        pattern = path_pattern(path)
        for method, operation in methods.items():
            if operation.get("security"):
                operations.append((method.upper(), pattern))
    return operations


def path_pattern(template: str) -> re.Pattern[str]:
    """A regex for an OpenAPI path template (`/campaigns/{campaign}` matches `/campaigns/spring`), to fullmatch."""
    return re.compile(re.sub(r"\\\{[^/]*?\\\}", "[^/]+", re.escape(template)))


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _content_length(scope: Scope) -> int | None:
    value = _header(scope, b"content-length")
    return int(value) if value is not None and value.isdigit() else None


def _closing(send: Send) -> Send:
    async def send_closing(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
            message["headers"] = [*headers, (b"connection", b"close")]
        await send(message)

    return send_closing


async def _respond(send: Send, status: int, detail: str, headers: Mapping[str, str] | None) -> None:
    body = orjson.dumps({"detail": detail})
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
