"""Cost of the console's what-if curve: `GET /budget/curve` per point, against recomputing each point's mix.

    python -m bench.console --model models/default --synthetic 1e6 --repeats 30

For the shipped model's reference population (and a synthetic uniform population of --synthetic rows, K=5)
it times building the treatment-mix path once (`service.console.curve.MixPath`), computing curves of 2 to
1000 points from the cached sweep (median of --repeats), the same through HTTP on an in-process app (server
time from the Server-Timing header, so pydantic validation and JSON encoding are included), and, as the
reference, one point's mix from the full assignment (`BudgetSweep.solve(..., with_assignment=True)` + bincount,
O(N + E)). Writes the "console" section of docs/benchmarks.md with the load average next to the numbers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from bench.report import write_section
from service.artifact import load_artifact
from service.config import Settings
from service.console.curve import MixPath, curve
from service.decision import BudgetSweep, sweep
from service.lambdas import BudgetSolver
from service.main import create_app

POINTS = (2, 10, 60, 200, 1000)


def median_seconds(fn: Callable[[], object], repeats: int, clock: Callable[[], float] = time.perf_counter) -> float:
    times = []
    for _ in range(repeats):
        started = clock()
        fn()
        times.append(clock() - started)
    return statistics.median(times)


class SweptSolver(BudgetSolver):
    """A BudgetSolver on given predictions (the synthetic population has no ONNX model)."""

    def __init__(self, population: BudgetSweep) -> None:
        self.model_version = "synthetic"
        self.sweep = population


def population_rows(name: str, solver: BudgetSolver, k: int, repeats: int) -> list[str]:
    started = time.perf_counter()
    path = MixPath.build(solver.sweep, k)
    build_ms = 1e3 * (time.perf_counter() - started)
    edges = solver.sweep.neg_slope.size
    memory_mb = (path.source.nbytes + path.target.nbytes + path.checkpoints.nbytes) / 2**20
    middle = 0.5 * (solver.min_spend_per_capita + solver.max_spend_per_capita)
    full = median_seconds(
        lambda: np.bincount(solver.sweep.solve_per_capita(middle).assignment, minlength=k),  # type: ignore[arg-type]
        max(3, repeats // 5),
    )
    rows = []
    for points in POINTS:
        wall = median_seconds(lambda p=points: curve(solver, path, p), repeats)  # type: ignore[misc]
        # This thread's CPU time: on a shared machine a run longer than a scheduler slice waits for the CPU
        # (load average ≫ cores), which inflates wall time but not CPU time.
        cpu = median_seconds(lambda p=points: curve(solver, path, p), repeats, time.thread_time)  # type: ignore[misc]
        rows.append(
            f"| {name} | {solver.population_size:,} | {edges:,} | {build_ms:.1f} ms, {memory_mb:.2f} MB | {points} "
            f"| {1e3 * wall:.3f} | {1e6 * wall / points:.1f} | {1e6 * cpu / points:.1f} | {1e3 * full:.2f} |"
        )
    return rows


def http_rows(model_dir: Path, repeats: int) -> list[str]:
    app = create_app(Settings(model_dir=model_dir))
    rows = []
    with TestClient(app) as client:
        client.get("/budget/curve", params={"points": 2})  # builds the mix path once
        for points in POINTS:
            server_ms = []
            for _ in range(repeats):
                response = client.get("/budget/curve", params={"points": points})
                assert response.status_code == 200, response.text
                server_ms.append(float(response.headers["server-timing"].split("dur=")[1]))
            ms = statistics.median(server_ms)
            rows.append(f"| {points} | {ms:.3f} | {1e3 * ms / points:.1f} |")
        what_if = []
        for _ in range(repeats):
            response = client.get("/budget/whatif", params={"budget_per_capita": 1.5})
            what_if.append(float(response.headers["server-timing"].split("dur=")[1]))
        rows.append(f"| `GET /budget/whatif` (one point and the current one) | {statistics.median(what_if):.3f} | |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/default"))
    parser.add_argument("--synthetic", type=float, default=1e6, help="rows of a synthetic population (0: none)")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()

    load_before = os.getloadavg()
    artifact = load_artifact(args.model)
    k = artifact.manifest.n_treatments
    rows = population_rows(f"{args.model} ({artifact.model_version})", BudgetSolver(artifact), k, args.repeats)
    if args.synthetic:
        rng = np.random.default_rng(0)
        n = int(args.synthetic)
        synthetic = SweptSolver(sweep(rng.random((n, 5)), rng.random((n, 5))))
        rows += population_rows("synthetic uniform, K=5", synthetic, 5, args.repeats)
    http = http_rows(args.model, args.repeats)
    load_after = os.getloadavg()

    body = "\n".join(
        [
            "`GET /budget/curve` computes each point from the sweep the service already holds: an exact solve "
            "(two binary searches) and the treatment mix from the nearest stored count vector plus at most "
            "1,023 edge moves. The last column is what one point's mix would cost without that path (the full "
            "assignment, O(N + E)). Wall times of runs longer than a few ms are inflated when the load average "
            "exceeds the 2 cores (the run waits for a CPU); the CPU-time column is this thread's own time.",
            "",
            "| population | rows N | hull edges E | mix path build, memory | points | curve wall ms | wall µs / point "
            "| CPU µs / point | one mix from the assignment, ms |",
            "|---|---:|---:|---|---:|---:|---:|---:|---:|",
            *rows,
            "",
            f"Through HTTP on {args.model} (in-process app, server time from Server-Timing, median of "
            f"{args.repeats}; includes response validation and JSON encoding):",
            "",
            "| points | server wall ms | wall µs / point |",
            "|---:|---:|---:|",
            *http,
            "",
            f"Load average (1, 5, 15 min) before: {', '.join(f'{x:.2f}' for x in load_before)}; "
            f"after: {', '.join(f'{x:.2f}' for x in load_after)}.",
        ]
    )
    command = f"python -m bench.console --model {args.model} --synthetic {args.synthetic:g} --repeats {args.repeats}"
    print(body)
    write_section("console", command, body)


if __name__ == "__main__":
    main()
