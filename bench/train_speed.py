"""Training cost per epoch of every method on the synthetic benchmark, as ratios to two-stage learning (TSM).

    python -m bench.train_speed --rows 1000000 --rounds 3 --seed 0

What is timed is one real training epoch of the same functions `python -m training train` runs, on `--rows`
rows, one thread (`TrainConfig.threads`, as in every benchmark run):
- tsm: one epoch of the factual loss (`fit_single_level`, epochs=1);
- dfcl-pl / dfcl-mer / dfcl-ifd: one epoch of the decision phase, after a one-epoch warm start (that warm
  epoch is not counted);
- bidfcl-ppl / bidfcl-pifd: one bilevel epoch over `--rows` OBS rows (lower step on every OBS batch, an upper
  step with n_cg = 50 and k = 5 every fifth), after a one-epoch warm start, with a given teacher (its fit is
  TSM's cost and is not an epoch of Bi-DFCL), RCT rows for the upper level drawn from `--rct-rows`.
Epoch times come from each trainer's own per-epoch clock (validation scoring excluded). Methods are run in
interleaved rounds and the median per method is reported, so machine noise hits all of them alike. Targets
(issues 3 and 4): DFCL-PL and MER ≤ 1.5× TSM, IFD ≤ 3×, Bi-DFCL ≤ 4×; the Bi-DFCL paper reports 6.3–7.0×.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

from bench.report import write_section
from training.bidfcl import BiDFCLConfig, fit_bidfcl
from training.data import logs_from_frame
from training.dataset import Logs
from training.network import OutcomeNet
from training.synthetic import SyntheticSpec, dataset_config, generate
from training.train import TrainConfig, fit_single_level

TARGETS = {"tsm": 1.0, "dfcl-pl": 1.5, "dfcl-mer": 1.5, "dfcl-ifd": 3.0, "bidfcl-ppl": 4.0, "bidfcl-pifd": 4.0}
METHODS = tuple(TARGETS)


def synthetic(n_rows: int, randomised: bool, seed: int) -> Logs:
    spec = SyntheticSpec(seed=seed)
    frame = generate(spec, n_rows, randomised, np.random.default_rng(seed))
    return logs_from_frame(frame, dataset_config(spec), source="rct" if randomised else "obs")


def epoch_seconds(method: str, rct: Logs, obs: Logs, upper_rct: Logs, val: Logs, teacher: OutcomeNet) -> float:
    """Seconds of one measured training epoch of `method` (see the module docstring)."""
    if method == "tsm":
        _, history = fit_single_level(rct, val, TrainConfig(method="tsm", epochs=1), progress=False)
        return history.seconds[0]
    if method.startswith("dfcl-"):
        config = TrainConfig(method=method, epochs=1, warm_start_epochs=1)
        _, history = fit_single_level(rct, val, config, progress=False)
        return history.seconds[-1]  # the decision epoch
    upper = method.removeprefix("bidfcl-")
    bilevel = BiDFCLConfig(epochs=2, warm_start_epochs=1, upper_loss=upper)
    _, bilevel_history = fit_bidfcl(obs, upper_rct, val, bilevel, teacher=teacher, progress=False)
    return float(bilevel_history["seconds"][-1])  # the bilevel epoch


def measure(
    methods: tuple[str, ...], rounds: int, run: Callable[[str], float], say: Callable[[str], None]
) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {m: [] for m in methods}
    for r in range(rounds):
        for method in methods:
            started = time.perf_counter()
            times[method].append(run(method))
            took = time.perf_counter() - started
            say(f"round {r + 1}/{rounds} {method}: epoch {times[method][-1]:.2f} s (run {took:.0f} s)")
    return times


def table(times: dict[str, list[float]], rows: int) -> str:
    reference = statistics.median(times["tsm"])
    lines = [
        "| method | s / epoch (median) | rows / s | vs TSM | target | met |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for method, values in times.items():
        seconds = statistics.median(values)
        ratio = seconds / reference
        target = TARGETS[method]
        met = "–" if method == "tsm" else ("yes" if ratio <= target else "no")
        lines.append(f"| {method} | {seconds:.2f} | {rows / seconds:,.0f} | {ratio:.2f}× | ≤ {target:g}× | {met} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.train_speed", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows", type=int, default=1_000_000, help="rows per epoch (RCT for TSM/DFCL, OBS for Bi-DFCL)"
    )
    parser.add_argument("--rct-rows", type=int, default=50_000, help="RCT rows Bi-DFCL's upper level draws from")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated, tsm first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    methods = tuple(args.methods.split(","))
    unknown = [m for m in methods if m not in TARGETS]
    if unknown or methods[0] != "tsm":
        parser.error(f"--methods must start with tsm and use only {', '.join(METHODS)}; got {args.methods}")
    torch.set_num_threads(1)
    say = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    say(f"generating {args.rows:,} RCT and {args.rows:,} OBS rows")
    rct, obs, val = (
        synthetic(args.rows, True, args.seed),
        synthetic(args.rows, False, args.seed + 1),
        synthetic(5_000, True, args.seed + 2),
    )
    upper_rct = rct.subset(np.arange(min(args.rct_rows, rct.n_rows)))
    teacher, _ = fit_single_level(upper_rct, val, TrainConfig(method="tsm", epochs=2), progress=False)
    times = measure(methods, args.rounds, lambda m: epoch_seconds(m, rct, obs, upper_rct, val, teacher), say)
    body = (
        f"One training epoch on {args.rows:,} synthetic rows (K = 5, D = 10, batch 256, one thread), median of "
        f"{args.rounds} interleaved rounds. DFCL: a decision-phase epoch; Bi-DFCL: a bilevel epoch over the OBS "
        f"rows (upper step every 5 batches, k = 5 assumed steps, n_cg = 50, RCT batch 1024 from "
        f"{args.rct_rows:,} RCT rows), teacher given.\n\n{table(times, args.rows)}"
    )
    print(body)
    if not args.no_write:
        command = "python -m bench.train_speed " + " ".join(argv if argv is not None else sys.argv[1:])
        write_section("train_speed", command.strip(), body)


if __name__ == "__main__":
    main()
