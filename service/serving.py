"""One serving process: the app under uvicorn, draining on SIGTERM (`python -m service` runs one or several).

Every worker process of `service.supervisor` runs `serve_process` too, on the socket its supervisor bound, so
each drains and shuts down like a single-process replica.
"""

from __future__ import annotations

import logging
import signal
import socket
import time
from types import FrameType

import uvicorn

from service.config import Settings
from service.guards import DrainState
from service.main import create_app

log = logging.getLogger("service")


def serve_process(settings: Settings, host: str, port: int, sockets: list[socket.socket] | None = None) -> None:
    """Build the app and serve it until SIGTERM (drained) or SIGINT; on `sockets` when given (a worker)."""
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        access_log=False,  # the app logs one structured line per request itself
        limit_concurrency=settings.max_concurrent_requests,  # 503 past it, instead of queueing without bound
        timeout_graceful_shutdown=settings.shutdown_timeout_seconds,
    )
    DrainingServer(config, app.state.drain, settings.drain_seconds).run(sockets=sockets)


class DrainingServer(uvicorn.Server):
    """uvicorn, but SIGTERM first drains: for `drain_seconds` the replica keeps serving while /readyz fails
    (so Kubernetes takes it out of the Service) and every response closes its connection (so clients on
    kept-alive connections reconnect elsewhere); then the usual graceful shutdown. SIGINT, or a second
    signal, stops at once."""

    def __init__(self, config: uvicorn.Config, drain: DrainState, drain_seconds: float) -> None:
        super().__init__(config)
        self.drain = drain
        self.drain_seconds = drain_seconds
        self.drain_until: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and self.drain_seconds > 0 and self.drain_until is None:
            self.drain.draining = True
            self.drain_until = time.monotonic() + self.drain_seconds
            log.info("SIGTERM: draining for %.1f s before shutting down", self.drain_seconds)
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self.drain_until is not None and time.monotonic() >= self.drain_until:
            return True
        return await super().on_tick(counter)
