"""`python -m service --host H --port P`: run the allocation service with uvicorn, draining on SIGTERM.

`ALLOCATOR_WORKERS` processes (default: the CPUs the container may use; one without Redis) share the listening
socket (`service.supervisor`); each is a replica with its own model copy and λ* table, kept in step through
Redis. How many, and the onnxruntime threads of each, is `service.workers`' plan.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pydantic import ValidationError

from service.config import Settings
from service.workers import WorkerPlanError, plan_workers

log = logging.getLogger("service")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
WORKER_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"


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
    try:
        plan = plan_workers(settings)
    except WorkerPlanError as error:
        parser.exit(2, f"python -m service: {error}\n")
    fmt = LOG_FORMAT if plan.workers == 1 else WORKER_LOG_FORMAT
    logging.basicConfig(level=settings.log_level_number, format=fmt)
    if plan.note is not None:
        log.warning("%s", plan.note)
    log.info(
        "%d worker process(es), %d onnxruntime thread(s) each, %d CPU(s) allowed", plan.workers, plan.threads, plan.cpus
    )
    # Imported here: a supervisor of several workers never loads the app (the model stack) itself.
    if plan.workers == 1:
        from service.serving import serve_process

        serve_process(settings, args.host, args.port)
    else:
        from service.supervisor import supervise

        sys.exit(supervise(settings, plan.workers, args.host, args.port, fmt))


if __name__ == "__main__":
    main()
