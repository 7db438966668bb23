"""How accurate Bi-DFCL's implicit hypergradient is, and what accuracy costs: into docs/bidfcl-analysis.md.

    python -m bench.hypergradient_accuracy --suite synthetic-strong --seed 0

Accuracy is measured where the truth is known: a tiny version of the real problem (`bench.tiny_bilevel`: the
real lower and upper losses on small tanh `OutcomeNet`s, float64), whose exact hypergradient dL_up(θ*(φ))/dφ
comes from central finite differences of φ with θ*(φ) solved to stationarity (Levenberg–Marquardt). Each
setting of the shipped algorithm (damping δ, CG tolerance and iterations, k Adam steps on θ′ from the current θ
instead of θ*) is scored by its relative error and cosine against it. Cost is measured at full size: seconds per
upper step of a Bi-DFCL-PPL run on the suite's data after a 3-epoch warm start (the same 20 OBS/RCT batch pairs
for every setting, one process, interleaved). `--validation-seeds` instead trains Bi-DFCL-PPL under the old and
the chosen setting and reports the validation score each keeps (validation rows only).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

import training.bidfcl as bidfcl
from bench.report import write_section
from bench.tiny_bilevel import CANDIDATE, SHIPPED, Float64, Setting, TinyBilevel, cosine, relative_error
from training.batch import full_batch
from training.benchmark import prepare_suite

DOC = Path(__file__).resolve().parent.parent / "docs" / "bidfcl-analysis.md"


GRID: tuple[Setting, ...] = (
    SHIPPED,
    Setting(0.1, 1e-3, 50, 50),
    Setting(0.01, 1e-3, 50, 5),
    Setting(0.01, 1e-6, 50, 5),
    Setting(0.01, 1e-6, 50, 50),
    Setting(1e-3, 1e-6, 50, 5),
    Setting(1e-3, 1e-6, 50, 50),
    Setting(1e-3, 1e-6, 200, 50),
    Setting(0.01, 1e-6, 20, 20),
    Setting(0.0, 1e-10, 500, None),
)


def accuracy(settings: Sequence[Setting], seeds: Sequence[int]) -> dict[Setting, list[tuple[float, float]]]:
    """(relative error, cosine) against the finite-difference hypergradient, per setting and tiny problem."""
    out: dict[Setting, list[tuple[float, float]]] = {s: [] for s in settings}
    with Float64():
        for seed in seeds:
            problem = TinyBilevel(seed)
            exact = problem.finite_difference()
            for setting in settings:
                estimate = problem.hypergradient(setting)
                out[setting].append((relative_error(estimate, exact), cosine(estimate, exact)))
    return out


def cost(suite: str, seed: int, work: Path, settings: Sequence[Setting], pairs: int = 20) -> dict[Setting, Any]:
    """Seconds per full-size upper step, mean CG iterations and negative-curvature stops, per setting."""
    splits = prepare_suite(suite, seed, work)
    base = bidfcl.BiDFCLConfig(seed=seed)
    teacher = bidfcl.fit_teacher(splits.rct_train, splits.rct_val, base)
    net = bidfcl._nets(splits.obs, splits.rct_train, base)
    torch.manual_seed(seed)
    target, bridge = bidfcl.initial_networks(net)
    bilevel = bidfcl._Bilevel(target, bridge, base, bidfcl.upper_budgets(splits.rct_train, base))
    table, rct = bidfcl.LowerBatch.table(full_batch(splits.obs), teacher), full_batch(splits.rct_train)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(3):  # warm start, gates at 0.5
        order = torch.randperm(splits.obs.n_rows, generator=generator)
        for start in range(0, splits.obs.n_rows, base.obs_batch_size):
            bilevel.lower_step(table.rows(order[start : start + base.obs_batch_size]), True)
    batches = [
        (
            table.rows(torch.randperm(splits.obs.n_rows, generator=generator)[: base.obs_batch_size]),
            bidfcl._take(rct, torch.randperm(rct.size, generator=generator)[: base.rct_batch_size]),
        )
        for _ in range(pairs)
    ]
    bridge_state = {k: v.clone() for k, v in bridge.state_dict().items()}
    times: dict[Setting, list[float]] = {s: [] for s in settings}
    iterations: dict[Setting, list[int]] = {s: [] for s in settings}
    negative: dict[Setting, int] = {s: 0 for s in settings}
    for batch, rct_batch in batches:
        for setting in settings:  # interleaved, so machine load hits every setting alike
            bilevel.config = replace(base, damping=setting.damping, cg_tol=setting.cg_tol, n_cg=setting.n_cg,
                                     k_steps=setting.k_steps if setting.k_steps is not None else 200)  # fmt: skip
            bilevel.bridge_opt.state.clear()
            started = time.perf_counter()
            _, cg = bilevel.upper_step(batch, rct_batch)
            times[setting].append(time.perf_counter() - started)
            bridge.load_state_dict(bridge_state)  # every setting sees the same state
            if cg is not None:
                iterations[setting].append(cg.iterations)
                negative[setting] += int(cg.negative_curvature)
    return {s: (float(np.median(times[s])), float(np.mean(iterations[s])), negative[s]) for s in settings}


def table(suite: str, seed: int, work: Path, tiny_seeds: Sequence[int], say: Any) -> str:
    say("accuracy on tiny problems")
    scores = accuracy(GRID, tiny_seeds)
    say(f"cost on {suite} seed {seed}")
    costs = cost(suite, seed, work, GRID)
    shipped_time = costs[SHIPPED][0]
    lines = [
        "| setting | relative error (mean, max) | cosine (min) | s per upper step | × shipped | CG iterations "
        "| negative-curvature stops / 20 |",
        "|---|---|---|---|---|---|---|",
    ]
    for setting in GRID:
        errors = [e for e, _ in scores[setting]]
        cosines = [c for _, c in scores[setting]]
        seconds, iters, negative = costs[setting]
        lines.append(
            f"| {setting.label()} | {np.mean(errors):.3f}, {np.max(errors):.3f} | {np.min(cosines):.3f} | "
            f"{seconds * 1e3:.1f} ms | {seconds / shipped_time:.1f} | {iters:.1f} | {negative} |"
        )
    return "\n".join(lines)


def validation_choice(suite: str, seeds: Sequence[int], work: Path, settings: Sequence[Setting], say: Any) -> str:
    """Bi-DFCL-PPL trained under each setting: the validation score (DR area on RCT validation rows) it keeps.

    Only validation rows are used; this is how the defaults were chosen among the settings of the accuracy table.
    """
    lines = ["| setting | seed | kept validation DR area | kept epoch | train s |", "|---|---|---|---|---|"]
    for seed in seeds:
        splits = prepare_suite(suite, seed, work)
        for setting in settings:
            say(f"validation: {suite} seed {seed}, {setting.label()}")
            config = bidfcl.BiDFCLConfig(
                seed=seed, damping=setting.damping, cg_tol=setting.cg_tol, n_cg=setting.n_cg,
                k_steps=setting.k_steps if setting.k_steps is not None else 200,
            )  # fmt: skip
            started = time.perf_counter()
            _, history = bidfcl.fit_bidfcl(splits.obs, splits.rct_train, splits.rct_val, config, progress=False)
            took = time.perf_counter() - started
            best = int(history["best_epoch"])
            lines.append(f"| {setting.label()} | {seed} | {history['val_score'][best]:.4f} | {best} | {took:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hypergradient_accuracy", description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="synthetic-strong", choices=["synthetic", "synthetic-strong"])
    parser.add_argument("--seed", type=int, default=0, help="seed of the full-size timing run")
    parser.add_argument("--tiny-seeds", default="0,1,2,3", help="comma-separated seeds of the tiny problems")
    parser.add_argument("--work", type=Path, default=Path("runs/benchmark"), help="benchmark data directory")
    parser.add_argument("--no-write", action="store_true", help=f"print only; leave {DOC.name} alone")
    parser.add_argument(
        "--validation-seeds", default="", help="also train Bi-DFCL-PPL under SHIPPED and CANDIDATE on these seeds"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    say = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    if args.validation_seeds:
        seeds = [int(s) for s in args.validation_seeds.split(",")]
        choice = validation_choice(args.suite, seeds, args.work, (SHIPPED, CANDIDATE), say)
        print(choice)
        if not args.no_write:
            command = f"python -m bench.hypergradient_accuracy --suite {args.suite}"
            command += f" --validation-seeds {args.validation_seeds}"
            write_section(f"hypergradient-validation-{args.suite}", command, choice, DOC)
        return
    tiny = [int(s) for s in args.tiny_seeds.split(",")]
    result = table(args.suite, args.seed, args.work, tiny, say)
    print(result)
    if not args.no_write:
        command = f"python -m bench.hypergradient_accuracy --suite {args.suite} --seed {args.seed}"
        write_section(f"hypergradient-accuracy-{args.suite}", command, result, DOC)


if __name__ == "__main__":
    main()
