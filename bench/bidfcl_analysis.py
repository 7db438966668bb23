"""Why Bi-DFCL's learned bridge adds little on the synthetic suites: two diagnostics, into docs/bidfcl-analysis.md.

    python -m bench.bidfcl_analysis --suite synthetic-strong --seeds 0,1

- selection: one Bi-DFCL-PPL run per configuration (learned bridge; bridge fixed at w = 0.5) records, after
  every epoch, the validation score under three estimators (IPW EOM, Hájek, doubly robust around the teacher)
  and the true value of the same policy on the validation rows (the synthetic data carry every potential
  outcome). Reported: how well each estimator follows the true value across epochs (Pearson r), the true value
  of the epoch each would keep, and the true value at the end of the warm start, at best and at the last epoch.
- hypergradient: after a 3-epoch warm start, for 8 OBS batches, whether a small bridge step along −g lowers the
  upper loss L_up(θ′*(φ)) recomputed through the same k lower steps (and +g raises it), and the cosine between
  hypergradients of the same OBS batch from independent RCT batches.

The true validation value is used only to describe the estimators, never to choose anything. Runs are on the
benchmark's data under `--work` (written by `python -m training benchmark` or here).
"""

from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

import training.bidfcl as bidfcl
from bench.report import write_section
from training.batch import FactualBatch, full_batch
from training.benchmark import Splits, prepare_suite
from training.evaluate import curve_area, doubly_robust_area, eom_curve
from training.hypergradient import flatten, unflatten
from training.network import OutcomeNet, predict

DOC = Path(__file__).resolve().parent.parent / "docs" / "bidfcl-analysis.md"
CONFIGS = {"learned bridge": {}, "fixed w = 0.5": {"fixed_gate": 0.5}}


def selection_run(splits: Splits, seed: int, overrides: dict[str, Any]) -> dict[str, Any]:
    """Per-epoch validation scores by IPW, Hájek and DR, and the true validation value, of one Bi-DFCL run."""
    config = replace(bidfcl.BiDFCLConfig(seed=seed, patience=1_000), **overrides)  # every epoch runs
    teacher = bidfcl.fit_teacher(splits.rct_train, splits.rct_val, config)
    baseline = predict(teacher, splits.rct_val.features)
    epochs: list[dict[str, float]] = []

    def record(model: OutcomeNet, val: Any, budgets: Any, _baseline: Any = None) -> float:
        revenue, cost = predict(model, val.features)
        curve = eom_curve(revenue, cost, val, budgets)
        epochs.append(
            {
                "ipw": curve_area(curve, "ipw"),
                "hajek": curve_area(curve, "hajek"),
                "dr": doubly_robust_area(revenue, cost, val, budgets, baseline),
                "true": curve_area(curve, "oracle"),
            }
        )
        return epochs[-1]["dr"]

    original = bidfcl.decision_score
    bidfcl.decision_score = record  # type: ignore[assignment]
    try:
        _, history = bidfcl.fit_bidfcl(splits.obs, splits.rct_train, splits.rct_val, config, teacher, progress=False)
    finally:
        bidfcl.decision_score = original
    true = np.array([e["true"] for e in epochs])
    out: dict[str, Any] = {
        "warm_end": float(true[config.warm_start_epochs - 1]),
        "best": float(true.max()),
        "last": float(true[-1]),
        "gate_last": float(history["gate_mean"][-1]),
    }
    for kind in ("ipw", "hajek", "dr"):
        score = np.array([e[kind] for e in epochs])
        out[kind] = (float(np.corrcoef(score, true)[0, 1]), float(true[score.argmax()]))
    return out


def selection_table(suite: str, seeds: list[int], work: Path, say: Any) -> str:
    lines = [
        "| run | seed | r(IPW) | r(Hájek) | r(DR) | true value kept by IPW / Hájek / DR | true value: warm-start end / "
        "best / last epoch | mean gate, last epoch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for seed in seeds:
        splits = prepare_suite(suite, seed, work)
        for name, overrides in CONFIGS.items():
            say(f"selection: {suite} seed {seed}, {name}")
            r = selection_run(splits, seed, overrides)
            lines.append(
                f"| {name} | {seed} | {r['ipw'][0]:.2f} | {r['hajek'][0]:.2f} | {r['dr'][0]:.2f} | "
                f"{r['ipw'][1]:.3f} / {r['hajek'][1]:.3f} / {r['dr'][1]:.3f} | "
                f"{r['warm_end']:.3f} / {r['best']:.3f} / {r['last']:.3f} | {r['gate_last']:.2f} |"
            )
    return "\n".join(lines)


class _Probe:
    """A Bi-DFCL state after a warm start, with the upper loss as a deterministic function of the bridge."""

    def __init__(self, splits: Splits, seed: int) -> None:
        self.config = bidfcl.BiDFCLConfig(seed=seed)
        teacher = bidfcl.fit_teacher(splits.rct_train, splits.rct_val, self.config)
        net = bidfcl._nets(splits.obs, splits.rct_train, self.config)
        torch.manual_seed(seed)
        target, self.bridge = bidfcl.initial_networks(net)
        budgets = bidfcl.upper_budgets(splits.rct_train, self.config)
        self.bilevel = bidfcl._Bilevel(target, self.bridge, self.config, budgets)
        self.table = bidfcl.LowerBatch.table(full_batch(splits.obs), teacher)
        self.rct = full_batch(splits.rct_train)
        self.n_obs = splits.obs.n_rows
        self.generator = torch.Generator().manual_seed(seed)
        for _ in range(3):  # warm start: gates fixed at 0.5
            order = torch.randperm(self.n_obs, generator=self.generator)
            for start in range(0, self.n_obs, self.config.obs_batch_size):
                self.bilevel.lower_step(self.table.rows(order[start : start + self.config.obs_batch_size]), True)

    def batches(self) -> tuple[bidfcl.LowerBatch, FactualBatch]:
        obs_rows = torch.randperm(self.n_obs, generator=self.generator)[: self.config.obs_batch_size]
        rct_rows = torch.randperm(self.rct.size, generator=self.generator)[: self.config.rct_batch_size]
        return self.table.rows(obs_rows), bidfcl._take(self.rct, rct_rows)

    def upper_after_k_steps(self, batch: bidfcl.LowerBatch, rct: FactualBatch) -> float:
        """L_up(θ′*(φ)): θ′ from the same θ, k lower steps with the current gates, upper loss on `rct`."""
        bl = self.bilevel
        with torch.no_grad():
            targets = bidfcl.lower_targets(batch, bl.gates(batch.features, warm=False), bl.target(batch.features))
        bl.fit_prime(batch, targets)
        with torch.no_grad():
            return float(bl.upper_loss(bl.prime(rct.features), rct))

    def hypergradient(self, batch: bidfcl.LowerBatch, rct: FactualBatch) -> torch.Tensor:
        """The flat bridge gradient an upper step computes, without stepping the bridge."""
        bridge_state = copy.deepcopy(self.bridge.state_dict())
        optimiser_state = copy.deepcopy(self.bilevel.bridge_opt.state_dict())
        self.bilevel.upper_step(batch, rct)
        grad = flatten([p.grad.clone() for p in self.bridge.parameters()])  # type: ignore[union-attr]
        self.bridge.load_state_dict(bridge_state)
        self.bilevel.bridge_opt.load_state_dict(optimiser_state)
        return grad

    def shifted(self, direction: torch.Tensor, batch: bidfcl.LowerBatch, rct: FactualBatch) -> float:
        params = list(self.bridge.parameters())
        saved = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, step in zip(params, unflatten(direction, params), strict=True):
                p.add_(step)
        try:
            return self.upper_after_k_steps(batch, rct)
        finally:
            with torch.no_grad():
                for p, value in zip(params, saved, strict=True):
                    p.copy_(value)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-30))


def hypergradient_table(suite: str, seed: int, work: Path, say: Any, step: float = 0.1) -> str:
    say(f"hypergradient: {suite} seed {seed}")
    probe = _Probe(prepare_suite(suite, seed, work), seed)
    lines = [
        f"| OBS batch | L_up | Δ L_up, step {step} along −g | along +g | cosines of g from 4 independent RCT batches |",
        "|---|---|---|---|---|",
    ]
    for index in range(8):
        batch, rct = probe.batches()
        base = probe.upper_after_k_steps(batch, rct)
        g = probe.hypergradient(batch, rct)
        unit = step * g / g.norm().clamp_min(1e-30)
        down, up = probe.shifted(-unit, batch, rct) - base, probe.shifted(unit, batch, rct) - base
        others = [probe.hypergradient(batch, probe.batches()[1]) for _ in range(4)]
        cosines = [_cosine(others[i], others[j]) for i in range(4) for j in range(i + 1, 4)]
        lines.append(f"| {index} | {base:.3f} | {down:+.2e} | {up:+.2e} | {' '.join(f'{c:+.2f}' for c in cosines)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bidfcl_analysis", description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="synthetic-strong", choices=["synthetic", "synthetic-strong"])
    parser.add_argument("--seeds", default="0,1", help="comma-separated seeds of the selection diagnostic")
    parser.add_argument("--work", type=Path, default=Path("runs/benchmark"), help="benchmark data directory")
    parser.add_argument("--no-write", action="store_true", help=f"print only; leave {DOC.name} alone")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    torch.set_num_threads(1)
    say = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    command = f"python -m bench.bidfcl_analysis --suite {args.suite} --seeds {args.seeds}"
    selection = selection_table(args.suite, seeds, args.work, say)
    gradient = hypergradient_table(args.suite, seeds[0], args.work, say)
    print(selection, gradient, sep="\n\n")
    if not args.no_write:
        write_section(f"selection-{args.suite}", command, selection, DOC)
        write_section(f"hypergradient-{args.suite}", command, gradient, DOC)


if __name__ == "__main__":
    main()
