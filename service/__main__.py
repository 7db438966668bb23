"""`python -m service --host H --port P`: run the allocation service with uvicorn (one process), draining on SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
import time
from types import FrameType

import uvicorn
from pydantic import ValidationError

from service.config import Settings
from service.guards import DrainState
from service.main import create_app

log = logging.getLogger("service")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m service", description="Run the allocation service.")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    args = parser.parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as error:  # a bad ALLOCATOR_* variable: name it, no traceback
        problems = "; ".join(
            f"ALLOCATOR_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in error.errors()
        )
        parser.exit(2, f"python -m service: invalid settings: {problems}\n")
    logging.basicConfig(level=settings.log_level_number, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=settings.log_level.lower(),
        access_log=False,  # the app logs one structured line per request itself
        limit_concurrency=settings.max_concurrent_requests,  # 503 past it, instead of queueing without bound
        timeout_graceful_shutdown=settings.shutdown_timeout_seconds,
    )
    DrainingServer(config, app.state.drain, settings.drain_seconds).run()


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


if __name__ == "__main__":
    main()
