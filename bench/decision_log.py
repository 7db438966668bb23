"""CPU the decision log costs the service per decision: append + ship a 1,000-row batch to a real redis-server.

    python -m bench.decision_log --rows 1000 --rounds 200

Runs in-process, as the service does: `DecisionLog.append` (what /allocate calls) and shipping rounds
(`DecisionLog._ship`, the background task's pipelined write through the async redis-py client) on one event
loop, against a redis-server started on a free port; `--per-round` batches are appended before each round, as
requests arriving while a round is in flight are coalesced into the next one. Reports this process's CPU time
(all threads; redis-server's own CPU is not counted) per batch and per decision for:
- the shipper as it runs: one stream entry per batch (format 2), or per round and campaign when a round
  holds several batches (format 3);
- format 1, one stream entry per decision (the layout before, rebuilt here as it was for the comparison);
- the packing alone (`DecisionBatch.entry`), on the loop and through `asyncio.to_thread`, to decide whether
  packing off the event loop pays.
Writes the "decision-log" section of docs/benchmarks.md unless --no-write; includes the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import redis

from bench.report import write_section
from bench.servers import redis_server
from service.decisions.record import DecisionBatch, new_batch_token
from service.decisions.shipper import DecisionLog, stream_key


def make_batch(n: int, d: int, rng: np.random.Generator) -> DecisionBatch:
    explore = rng.random(n) < 0.05
    return DecisionBatch(
        token=new_batch_token(),
        time=time.time(),
        campaign="bench",
        individuals=[f"user-{i}" for i in range(n)],
        model_version="m1",
        lam=0.42,
        lambda_version=3,
        treatment=rng.integers(0, 4, n),
        propensity=np.where(explore, 0.0125, 0.9625),
        explore=explore,
        features=rng.normal(size=(n, d)).astype(np.float32),
    )


def format_one_entries(batch: DecisionBatch) -> list[dict[str, Any]]:
    """Format 1 as the shipper built it before: one dict per decision."""
    features = np.ascontiguousarray(batch.features, dtype="<f4")
    common = {
        "time": repr(batch.time),
        "campaign": batch.campaign,
        "model_version": batch.model_version,
        "lambda": repr(float(batch.lam)),
        "lambda_version": str(batch.lambda_version),
    }
    return [
        {
            "id": decision_id,
            "individual": str(individual),
            "treatment": str(treatment),
            "propensity": repr(propensity),
            "explore": "1" if explored else "0",
            "features": features[i].tobytes(),
            **common,
        }
        for i, (decision_id, individual, treatment, propensity, explored) in enumerate(
            zip(
                batch.decision_ids,
                batch.individuals,
                batch.treatment.tolist(),
                batch.propensity.tolist(),
                batch.explore.tolist(),
                strict=True,
            )
        )
    ]


class FormatOneLog(DecisionLog):
    """The shipper before format 2: every decision its own XADD in the pipeline."""

    async def _ship(self, batches: list[DecisionBatch]) -> None:
        assert self._client is not None
        async with self._client.pipeline(transaction=False) as pipe:
            for batch in batches:
                key = stream_key(self.prefix, batch.campaign)
                for entry in format_one_entries(batch):
                    pipe.xadd(key, entry, maxlen=self.maxlen, approximate=True)
            await pipe.execute()


def _log(cls: type[DecisionLog], url: str, prefix: str, d: int) -> DecisionLog:
    return cls(url, prefix, 5.0, 10**7, 10**6, 10**7, 60.0, "m1", [f"f{i}" for i in range(d)])


async def cpu_per_round(rounds: int, step: Callable[[], Awaitable[None]]) -> float:
    """Median CPU seconds of one `step` (process time: every thread of this process)."""
    samples = []
    for _ in range(rounds):
        started = time.process_time()
        await step()
        samples.append(time.process_time() - started)
    return statistics.median(samples)


async def measure(url: str, n: int, d: int, rounds: int, per_round: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    batches = [make_batch(n, d, rng) for _ in range(8)]
    results: dict[str, float] = {}
    kinds: list[tuple[str, type[DecisionLog]]] = [
        ("shipper: one entry per batch (format 2) or per round (format 3)", DecisionLog),
        ("format 1: one entry per decision", FormatOneLog),
    ]
    for name, cls in kinds:
        log = _log(cls, url, f"bench-{cls.__name__}", d)

        async def ship(log: DecisionLog = log) -> None:
            for _ in range(per_round):
                log.append(batches[int(rng.integers(len(batches)))])
            await log._ship(log.buffer.take(log.ship_rows))

        await ship()  # connect and warm up
        results[name] = await cpu_per_round(rounds, ship) / per_round
        await log.stop(drain_seconds=0.0)
    batch = batches[0]

    async def pack_inline() -> None:
        batch.entry()

    async def pack_in_thread() -> None:
        await asyncio.to_thread(batch.entry)

    results["packing only (entry), on the loop"] = await cpu_per_round(rounds * 5, pack_inline)
    results["packing only (entry), via asyncio.to_thread"] = await cpu_per_round(rounds * 5, pack_in_thread)
    return results


def table(results: dict[str, float], n: int, d: int, rounds: int, per_round: int) -> str:
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    lines = [
        f"{n:,}-row batches, {d} float32 features, {per_round} batch(es) per shipping round, median of {rounds} "
        f"rounds (packing: {5 * rounds} calls); "
        f"load average (1/5/15 min) {load}.",
        "",
        "| what | CPU per batch | CPU per decision | decisions/s per core |",
        "|---|---:|---:|---:|",
    ]
    for name, seconds in results.items():
        per = seconds / n
        rate = f"{1 / per:,.0f}" if per > 0 else "–"
        lines.append(f"| {name} | {1e3 * seconds:.3f} ms | {1e6 * per:.2f} µs | {rate} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.decision_log", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000, help="decisions per batch (one /allocate request)")
    parser.add_argument("--features", type=int, default=13, help="encoded features per decision")
    parser.add_argument("--rounds", type=int, default=200, help="batches shipped per format")
    parser.add_argument(
        "--per-round", type=int, default=1, help="batches appended before each shipping round (it coalesces them)"
    )
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    with redis_server() as url:
        if url is None:
            print("redis-server not found on PATH", file=sys.stderr)
            return 2
        results = asyncio.run(measure(url, args.rows, args.features, args.rounds, args.per_round))
        redis.Redis.from_url(url).flushall()
    text = table(results, args.rows, args.features, args.rounds, args.per_round)
    print(text)
    if not args.no_write:
        command = "python -m bench.decision_log " + " ".join(argv if argv is not None else sys.argv[1:])
        write_section("decision-log", command.strip(), text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
