"""`python -m service.sink`: write the decision-log streams to Parquet (see `service.decisions.sink`).

Needs the `sink` extra (pyarrow). Redis URL and key prefix come from the service's settings
(`ALLOCATOR_REDIS_URL`, `ALLOCATOR_REDIS_PREFIX`) unless given as options.
"""

from __future__ import annotations

import argparse
import logging
import socket
import time
from collections.abc import Sequence
from pathlib import Path

from service.config import Settings
from service.decisions.sink import Sink, SinkConfig

HEARTBEAT_MAX_AGE_SECONDS = 60.0


def heartbeat_is_fresh(path: Path) -> int:
    """0 when `path` was touched within HEARTBEAT_MAX_AGE_SECONDS, else 1 (a probe's exit code)."""
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        return 1
    return 0 if age < HEARTBEAT_MAX_AGE_SECONDS else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.sink", description=__doc__)
    parser.add_argument("--out", type=Path, help="directory for campaign=<c>/hour=<h>/*.parquet")
    parser.add_argument("--redis-url", help="default: ALLOCATOR_REDIS_URL")
    parser.add_argument("--prefix", help="Redis key prefix (default: ALLOCATOR_REDIS_PREFIX)")
    parser.add_argument("--group", default="sink", help="consumer group (default: sink)")
    parser.add_argument("--consumer", default=socket.gethostname(), help="consumer name (default: the host name)")
    parser.add_argument(
        "--batch", type=int, default=100, help="stream entries (one /allocate request each) per stream per round"
    )
    parser.add_argument("--block-ms", type=int, default=1_000, help="pause when every stream is drained")
    parser.add_argument("--claim-idle-ms", type=int, default=60_000, help="take over entries pending this long")
    parser.add_argument("--once", action="store_true", help="drain what is there, then exit")
    parser.add_argument("--heartbeat", type=Path, help="file touched after every pass (for liveness probes)")
    parser.add_argument(
        "--check-heartbeat", type=Path, metavar="FILE", help="probe: exit 0 if FILE was touched in the last 60 s"
    )
    args = parser.parse_args(argv)
    if args.check_heartbeat is not None:
        return heartbeat_is_fresh(args.check_heartbeat)
    if args.out is None:
        parser.error("--out is required")
    settings = Settings()
    logging.basicConfig(level=settings.log_level_number, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    url = args.redis_url or settings.redis_url
    if url is None:
        parser.error("give --redis-url or set ALLOCATOR_REDIS_URL")
    if args.batch < 1 or args.block_ms < 0 or args.claim_idle_ms < 0:
        parser.error("--batch must be >= 1, --block-ms and --claim-idle-ms >= 0")
    config = SinkConfig(
        redis_url=url,
        prefix=args.prefix or settings.redis_prefix,
        out=args.out,
        group=args.group,
        consumer=args.consumer,
        batch=args.batch,
        block_ms=args.block_ms,
        claim_idle_ms=args.claim_idle_ms,
        heartbeat=args.heartbeat,
    )
    sink = Sink(config)
    if args.once:
        while sink.drain_once():
            pass
        return 0
    sink.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
