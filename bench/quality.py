"""Decision quality of every method on every suite, into docs/benchmarks.md (and docs/results/<suite>/).

`python -m bench.quality [--seeds 5]` runs `python -m training benchmark` for the two synthetic suites and the
Hillstrom suite and writes each summary table into its own section of docs/benchmarks.md with the command that
made it. Runs already trained under `--work` with the same configuration are reused (see `training.benchmark`),
so a rerun after `python -m training benchmark` only re-evaluates; from a clean clone it trains everything
(about two hours on two cores).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.report import write_section
from training.benchmark import SUITES, default_methods, run_benchmark

NOTES = {
    "synthetic": (
        "10k RCT / 200k confounded OBS / 10k RCT validation / 50k test rows with every potential outcome; K = 5. "
        "Areas: mean per-capita revenue over the 10-level budget grid, by IPW on test rows and on the true "
        "outcomes (oracle). Intervals resample seeds and test rows together. Gap closed: share of the way from "
        "random allocation (0) to the true optimum (1). Train seconds depend on what else ran on the machine."
    ),
    "synthetic-strong": (
        "The same world and sizes as `synthetic`, but the OBS rows were logged by a sharply targeted campaign "
        "(selection strength 3, hidden-confounder weight 2.5 in the uplift): the regime where OBS-only training "
        "decides worse than the 10k RCT rows alone. Same columns as the synthetic table."
    ),
    "hillstrom": (
        "Hillstrom e-mail RCT split into OBS + RCT train/val/test by `python -m training hybrid` per seed; "
        "revenue = conversion, cost = visit. No ground truth: IPW areas only."
    ),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..S-1 per suite (default 5)")
    parser.add_argument("--suites", default=",".join(SUITES), help="comma-separated suites")
    parser.add_argument("--work", type=Path, default=Path("runs/benchmark"), help="data and cached predictions")
    parser.add_argument("--out", type=Path, default=Path("docs/results"), help="tables, JSON and plots")
    args = parser.parse_args(argv)
    for suite in args.suites.split(","):
        result = run_benchmark(
            suite, default_methods(suite), list(range(args.seeds)), args.out, args.work, progress=False, say=print
        )
        command = f"python -m bench.quality --suites {suite} --seeds {args.seeds}"
        body = f"**{suite}** ({args.seeds} seeds). {NOTES[suite]}\n\n{result['table']}"
        write_section(f"quality-{suite}", command, body)


if __name__ == "__main__":
    main()
