"""λ* solvers on synthetic populations: exact sweep, re-solve, bisection and the HiGHS LP relaxation.

    python -m bench.solver --sizes 1e4,1e5,1e6,1e7 --k 5 --seed 0

Per population size N (K treatments, revenue and cost uniform on [0, 1), float64) and one budget (halfway
between the cheapest and the revenue-maximising policy's cost) it times `sweep`, a re-solve for a new budget
on the swept population (median of many, without the assignment), `bisect_lambda` to 1e-9 relative and
scipy's HiGHS on the LP relaxation (only up to --lp-max-n rows: here it took 3 s at 1e4 rows, 10 s at 2e4 and
40 s at 4e4, growing ~N², and it does not stop at its time_limit), checks that λ* and the spend agree, prints a
table and writes it into the "solver" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse
from scipy.optimize import linprog

from bench.report import write_section
from service.decision import bisect_lambda, sweep

LP_TIME_LIMIT = 60.0  # seconds


@dataclass
class Row:
    n: int
    sweep_s: float
    sweep_first_s: float
    resolve_ms: float
    assignment_s: float
    bisect_s: float
    bisect_lam_rel: float
    bisect_spend_rel: float
    lp: str  # time, or why it was not run
    lp_ratio: str
    lp_check: str


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def lp_relaxation(revenue: np.ndarray, cost: np.ndarray, budget: float) -> tuple[float | None, float | None, float]:
    """(LP optimum, dual price of the budget, seconds) with HiGHS; (None, None, s) if it hit the time limit."""
    n, k = revenue.shape
    one_per_row = sparse.kron(sparse.eye(n, format="csr"), np.ones((1, k)), format="csr")  # Σ_j z_ij = 1
    result, seconds = timed(
        linprog,
        -revenue.ravel(),
        A_ub=sparse.csr_matrix(cost.ravel()[None, :]),
        b_ub=[budget],
        A_eq=one_per_row,
        b_eq=np.ones(n),
        bounds=(0, 1),
        method="highs",
        options={"time_limit": LP_TIME_LIMIT},
    )
    if result.status != 0:
        return None, None, seconds
    return -result.fun, -result.ineqlin.marginals[0], seconds


def measure(n: int, k: int, seed: int, lp_max_n: int, repeats: int) -> Row:
    rng = np.random.default_rng(seed)
    revenue, cost = rng.random((n, k)), rng.random((n, k))
    sweeps = []
    for _ in range(repeats):
        population, seconds = timed(sweep, revenue, cost)
        sweeps.append(seconds)
    budget = 0.5 * (population.min_spend + population.max_spend)
    exact = population.solve(budget, with_assignment=False)
    # Re-solves for budgets around the first one, as an operator moving the budget would.
    budgets = budget * (1 + np.linspace(-0.2, 0.2, 401))
    resolves = [timed(population.solve, b, with_assignment=False)[1] for b in budgets]
    _, assignment_s = timed(population.solve, budget)
    bisected, bisect_s = timed(bisect_lambda, revenue, cost, budget, rtol=1e-9)
    lp, lp_ratio, lp_check = f"skipped: N > {lp_max_n:,} (> 1 min)", "–", "–"
    if n <= lp_max_n:
        lp_value, lp_dual, lp_s = lp_relaxation(revenue, cost, budget)
        lp_ratio = f"{lp_s / statistics.median(sweeps):.0f}×"
        if lp_value is None or lp_dual is None:
            lp, lp_check = f"> {LP_TIME_LIMIT:.0f} s (time limit)", "–"
        else:
            gap_ok = 0 <= lp_value - exact.revenue <= revenue.max()
            lp = f"{lp_s:.2f} s"
            lp_check = f"dual/λ* − 1 = {lp_dual / exact.lam - 1:.1e}, LP − sweep ≤ max r: {'yes' if gap_ok else 'NO'}"
    return Row(
        n=n,
        sweep_s=statistics.median(sweeps),
        sweep_first_s=sweeps[0],
        resolve_ms=1e3 * statistics.median(resolves),
        assignment_s=assignment_s,
        bisect_s=bisect_s,
        bisect_lam_rel=abs(bisected.lam / exact.lam - 1),
        bisect_spend_rel=abs(bisected.spend / exact.spend - 1),
        lp=lp,
        lp_ratio=lp_ratio,
        lp_check=lp_check,
    )


def table(rows: list[Row], k: int, repeats: int) -> str:
    lines = [
        f"K = {k} treatments; revenue and cost uniform on [0, 1); budget halfway between the cheapest and the "
        f"revenue-maximising policy. Sweep: median of {repeats} (first call of the process in brackets: it pays "
        "for fresh memory). Re-solve: median of 401 budgets, λ*/spend/revenue without the assignment. "
        "Bisection: `bisect_lambda` to 1e-9 relative; it runs through `choose`, whose tie tolerance lets it stop "
        "up to ~1e-8 below λ* with the same policy.",
        "",
        "| N | sweep | re-solve | + assignment | bisection | bisection / sweep | λ, spend vs bisection "
        "| HiGHS LP | LP / sweep | LP check |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.n:,} | {r.sweep_s:.3f} s ({r.sweep_first_s:.3f}) | {r.resolve_ms:.3f} ms | {r.assignment_s:.3f} s "
            f"| {r.bisect_s:.2f} s | {r.bisect_s / r.sweep_s:.1f}× | {r.bisect_lam_rel:.1e}, {r.bisect_spend_rel:.1e} "
            f"| {r.lp} | {r.lp_ratio} | {r.lp_check} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="1e4,1e5,1e6,1e7", help="population sizes N, comma-separated")
    parser.add_argument("--k", type=int, default=5, help="treatments per individual")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="sweeps per size (the median is reported)")
    parser.add_argument("--lp-max-n", type=float, default=4e4, help="largest N given to HiGHS (~40 s at 4e4)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    rows = []
    for n in sizes:
        rows.append(measure(n, args.k, args.seed, int(args.lp_max_n), args.repeats))
        print(table(rows[-1:], args.k, args.repeats).splitlines()[-1], flush=True)
    markdown = table(rows, args.k, args.repeats)
    print(markdown)
    if not args.no_write:
        command = "python -m bench.solver " + " ".join(sys.argv[1:] if argv is None else argv)
        write_section("solver", command.strip(), markdown)


if __name__ == "__main__":
    main()
