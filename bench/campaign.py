"""Campaign simulator: a drifting day of traffic against two replicas and Redis, paced vs fixed λ vs hindsight.

    python -m bench.campaign [--day-seconds 90] [--individuals 36000] [--no-write]

Starts its own redis-server and two `python -m service` replicas (models/default) on loopback, then plays
the same day (`bench.campaign_world`: time-of-day arrivals, drifting customer mix and redemption level) three
times: pacing `even` from the reference λ*; pacing `off` (the fixed reference λ*; the ledger's cap still
holds); `even` again with one replica killed (SIGKILL) at 40% of the day and a new one started at 55%. The
hindsight-best fixed λ is computed offline on the same arrivals with the same model. Then the /allocate
server time with and without a paced campaign. Writes docs/campaigns.md and docs/campaigns-*.png.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.campaign_doc import render
from bench.campaign_latency import measure_latency
from bench.campaign_plots import plot_lambda, plot_spend
from bench.campaign_run import DayPlan, DayTrace, Replica, play_day, redis_server, start_replica, wait_ready
from bench.campaign_world import Day, DayConfig, hindsight_lambda, make_day, outcome, predictions
from bench.report import machine_line
from service.artifact import load_artifact
from service.decision import choose
from service.lambdas import BudgetSolver

KILL_AT, RESTART_AT = 0.4, 0.55  # shares of the day: one replica killed (SIGKILL), a new one started
DOCS = Path(__file__).resolve().parent.parent / "docs"
REPLICA_SETTINGS = {
    "workers": "1",  # one process per replica, so killing a replica kills the holder of its slices
    "pace_seconds": "1.0",
    "campaign_tick_seconds": "0.1",
    "campaign_refresh_seconds": "0.5",
    "slice_lease_seconds": "2.0",
    "slice_seconds": "0.3",
}


@dataclass(frozen=True)
class RunSummary:
    name: str
    committed: float  # ledger, end of day
    given: float  # predicted cost of the treatments clients received
    true_spend: float
    max_true_overspend: float  # largest (cumulative true spend − budget) at any moment, ≥ 0
    max_committed_overspend: float  # largest (ledger committed − budget) sampled, ≥ 0
    true_revenue: float
    incremental_revenue: float
    unserved: int
    statuses: dict[str, int]
    failed_requests: int


def summarize(name: str, day: Day, trace: DayTrace, budget: float) -> RunSummary:
    served = trace.treatment >= 0
    treatment = np.where(served, trace.treatment, 0)  # an unserved arrival counts as no coupon
    rows = np.arange(len(treatment))
    true_cost = day.true_cost[rows, treatment]
    order = np.argsort(np.where(served, trace.sent_fraction, np.inf), kind="stable")
    cumulative_true = np.cumsum(true_cost[order])
    revenue = float(day.true_revenue[rows, treatment].sum())
    committed = [s["committed"] for s in trace.ledger]
    return RunSummary(
        name=name,
        committed=committed[-1] if committed else float("nan"),
        given=float(trace.predicted_cost[served].sum()),
        true_spend=float(true_cost.sum()),
        max_true_overspend=max(float(cumulative_true.max()) - budget, 0.0),
        max_committed_overspend=max(max(committed, default=0.0) - budget, 0.0),
        true_revenue=revenue,
        incremental_revenue=revenue - float(day.true_revenue[:, 0].sum()),
        unserved=int((~served).sum()),
        statuses=dict(trace.statuses),
        failed_requests=trace.failed_requests,
    )


async def run_days(
    day: Day, budget: float, model_dir: Path, day_seconds: float
) -> tuple[dict[str, DayTrace], dict[str, Any]]:
    """The three runs and the latency rows, over one redis-server and two replicas."""
    traces: dict[str, DayTrace] = {}
    with redis_server() as redis_url:
        prefix = f"bench-{uuid.uuid4().hex[:8]}"

        def spawn() -> Replica:
            return start_replica(model_dir, redis_url, prefix, REPLICA_SETTINGS)

        replicas = [spawn(), spawn()]
        try:
            async with httpx.AsyncClient() as client:
                await asyncio.gather(*(wait_ready(client, r) for r in replicas))
            for name, pacing, kill in (("paced", "even", False), ("fixed", "off", False), ("paced_kill", "even", True)):
                plan = DayPlan(
                    campaign=f"day-{name}",
                    pacing=pacing,
                    budget=budget,
                    day_seconds=day_seconds,
                    kill_at=KILL_AT if kill else None,
                    restart_at=RESTART_AT if kill else None,
                )
                print(f"playing the day: {name} ({day_seconds:.0f} s)", flush=True)
                live = list(replicas)
                traces[name] = await play_day(day, plan, live, spawn)
                replicas = live
            latency = await measure_latency(replicas[0].url, day)
        finally:
            for replica in replicas:
                replica.stop()
    return traces, latency


def load_line() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.campaign", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=Path("models/default"))
    parser.add_argument("--day-seconds", type=float, default=90.0, help="wall seconds of the compressed day")
    parser.add_argument("--individuals", type=int, default=36_000, help="arrivals over the day")
    parser.add_argument("--no-write", action="store_true", help="print only, leave docs/ alone")
    args = parser.parse_args(argv)
    started = time.monotonic()
    artifact = load_artifact(args.model_dir, threads=1)
    config = DayConfig(individuals=args.individuals)
    day = make_day(config, artifact.manifest.features)
    revenue, cost = predictions(day, artifact)
    per_capita = artifact.manifest.default_budget_per_capita
    budget = per_capita * args.individuals
    reference_lambda = BudgetSolver(artifact).solve(per_capita).lam
    hindsight, best = hindsight_lambda(day, revenue, cost, budget)
    fixed_offline = outcome(day, choose(revenue, cost, reference_lambda), cost)
    load_before = load_line()
    traces, latency = asyncio.run(run_days(day, budget, args.model_dir, args.day_seconds))
    load_after = load_line()
    summaries = {name: summarize(name, day, trace, budget) for name, trace in traces.items()}
    text = render(
        config=config,
        budget=budget,
        reference_lambda=reference_lambda,
        hindsight=(hindsight, best),
        fixed_offline=fixed_offline,
        summaries=summaries,
        latency=latency,
        command=" ".join(["python -m bench.campaign", *(sys.argv[1:] if argv is None else argv)]),
        machine=machine_line(),
        load=(load_before, load_after),
        seconds=time.monotonic() - started,
        day_seconds=args.day_seconds,
    )
    print(text)
    if not args.no_write:
        DOCS.mkdir(exist_ok=True)
        plot_spend(DOCS / "campaigns-spend.png", day, traces, budget, events={"paced_kill": [KILL_AT, RESTART_AT]})
        plot_lambda(DOCS / "campaigns-lambda.png", traces, reference_lambda, hindsight)
        (DOCS / "campaigns.md").write_text(text)


if __name__ == "__main__":
    main()
