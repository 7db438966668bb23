"""`python -m service --host H --port P`: run the allocation service with uvicorn (one process)."""

from __future__ import annotations

import argparse
import logging

import uvicorn
from pydantic import ValidationError

from service.config import Settings
from service.main import create_app


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
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_level=settings.log_level.lower(),
        access_log=False,  # the app logs one structured line per request itself
    )


if __name__ == "__main__":
    main()
