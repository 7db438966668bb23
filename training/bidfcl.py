"""Bi-DFCL: bilevel decision-focused causal learning from observational (OBS) and randomised (RCT) logs.

Algorithm 1 of Bi-DFCL (arXiv 2510.19517; METHOD.md §6, choices of §8). Three S-learners with (N, 2K) outputs:
a teacher fitted on RCT rows (factual MSE) and frozen; the target, trained on OBS rows and deployed; and a bridge
whose sigmoid outputs W ∈ (0,1)^{N×2K} mix teacher and target into pseudo-labels for the arms a row did not get.
The lower level fits the target to OBS labels and pseudo-labels; the upper level moves the bridge so that the
target, after a few lower steps, decides well on RCT rows (PPL or PIFD), with the implicit (CG) or explicit
hypergradient of `training.hypergradient`.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from tqdm import tqdm

from training.batch import FactualBatch, full_batch
from training.dataset import Logs
from training.evaluate import budget_grid
from training.hypergradient import CGResult, explicit_hypergradient, flatten, implicit_hypergradient
from training.losses import CLIPS
from training.network import NetworkConfig, OutcomeNet, predict, split_outcomes, standardisation
from training.train import VALIDATION_ESTIMATORS, TrainConfig, decision_score, fit_single_level
from training.upper_losses import ipw_lambdas, pifd_loss, ppl_loss

log = logging.getLogger(__name__)

UPPER_LOSSES = ("ppl", "pifd")
HYPERGRADIENTS = ("implicit", "explicit")


@dataclass
class BiDFCLConfig:
    """Hyperparameters of Bi-DFCL (saved with the weights). Paper values where it states them (§6 Settings)."""

    epochs: int = 30  # including the warm-start epochs
    warm_start_epochs: int = 5  # lower level only, gates fixed at 0.5 (METHOD.md §8.9)
    obs_batch_size: int = 256
    rct_batch_size: int = 1024  # fresh RCT rows per upper step, ≥ 4× the OBS batch (§8.6)
    lr_target: float = 1e-3
    lr_bridge: float = 1e-2
    k_period: int = 5  # an upper step every k_period OBS batches
    k_steps: int = 5  # lower steps on the copy θ′ before the upper loss (§8.8)
    n_cg: int = 50
    # CG and damping: chosen by `python -m bench.hypergradient_accuracy` (docs/bidfcl-analysis.md): δ = 0.01
    # halves the error of δ = 0.1 against finite differences at the same cost; at full size CG stops on
    # negative curvature (pᵀHp ≤ 0) within ~8 products, before any tolerance is met.
    cg_tol: float = 1e-6  # relative residual ‖r‖/‖b‖
    damping: float = 0.01  # δ in (H + δI)v = g
    upper_loss: str = "ppl"
    tau: float = 1.0
    hypergradient: str = "implicit"
    fixed_gate: float | None = None  # ablation: W ≡ fixed_gate, bridge never trained
    budgets_per_capita: tuple[float, ...] = ()  # empty → budget_fractions of the RCT arm-cost range (§8.5)
    budget_fractions: tuple[float, ...] = (0.25, 0.5, 0.75)
    pifd_h: float = 0.3  # PIFD truncation threshold, DFCL-IFD's rule and value (TrainConfig.ifd_h)
    pifd_clip: str = "fix"  # 'fix', 'max' or 'none', as DFCL-IFD (training.losses.truncated_difference)
    teacher_epochs: int = 60  # the TSM trainer's default; it stops early on validation
    teacher_lr: float = 1e-3
    seed: int = 0
    patience: int = 10  # epochs after the warm start without validation improvement
    validation: str = "dr"  # checkpoint score: doubly robust around the teacher, or the IPW EOM area
    hidden: tuple[int, ...] = (64, 32, 32)

    def __post_init__(self) -> None:
        if self.upper_loss not in UPPER_LOSSES:
            raise ValueError(f"upper_loss must be one of {UPPER_LOSSES}, got {self.upper_loss!r}")
        if self.hypergradient not in HYPERGRADIENTS:
            raise ValueError(f"hypergradient must be one of {HYPERGRADIENTS}, got {self.hypergradient!r}")
        for name in ("epochs", "obs_batch_size", "rct_batch_size", "k_period", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warm_start_epochs", "k_steps", "n_cg", "teacher_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.rct_batch_size < 4 * self.obs_batch_size:
            raise ValueError(
                f"rct_batch_size must be >= 4 × obs_batch_size = {4 * self.obs_batch_size}, got {self.rct_batch_size}"
            )
        if self.pifd_clip not in CLIPS:
            raise ValueError(f"pifd_clip must be one of {CLIPS}, got {self.pifd_clip!r}")
        for name in ("lr_target", "lr_bridge", "teacher_lr", "tau", "pifd_h"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not (self.budgets_per_capita or self.budget_fractions) or not all(
            0.0 <= f <= 1.0 for f in self.budget_fractions
        ):
            raise ValueError(f"budget_fractions must be non-empty values in [0, 1], got {self.budget_fractions}")
        if self.validation not in VALIDATION_ESTIMATORS:
            raise ValueError(f"validation must be one of {VALIDATION_ESTIMATORS}, got {self.validation!r}")
        if self.fixed_gate is not None and not 0.0 <= self.fixed_gate <= 1.0:
            raise ValueError(f"fixed_gate must be None or in [0, 1], got {self.fixed_gate}")


def upper_budgets(rct: Logs, config: BiDFCLConfig) -> list[float]:
    """Per-capita budgets for λ*: given, or fractions between all-control and all-max-arm cost (METHOD.md §8.5)."""
    if config.budgets_per_capita:
        return [float(b) for b in config.budgets_per_capita]
    counts = rct.arm_counts()
    if np.any(counts == 0):
        raise ValueError(
            f"rct_train ({rct.source}) has no rows for treatment(s) {np.flatnonzero(counts == 0).tolist()}"
        )
    arm_cost = np.bincount(rct.treatment, weights=rct.cost, minlength=rct.n_treatments) / counts  # (K,)
    low, high = float(arm_cost[0]), float(arm_cost.max())
    return [low + f * (high - low) for f in config.budget_fractions]


def factual_mask(treatment: torch.Tensor, n_treatments: int) -> torch.Tensor:
    """(B, 2K) bool: the logged arm's revenue and cost cells."""
    one_hot = torch.nn.functional.one_hot(treatment, n_treatments).bool()
    return torch.cat([one_hot, one_hot], dim=1)


@dataclass(frozen=True)
class LowerBatch:
    """An OBS mini-batch as the lower level uses it, sliced from tensors built once per fit."""

    features: torch.Tensor  # (B, D)
    observed: torch.Tensor  # (B, 2K) r_i in every revenue cell, c_i in every cost cell (only logged cells used)
    factual: torch.Tensor  # (B, 2K) bool, the logged arm's revenue and cost cells
    teacher: torch.Tensor  # (B, 2K) frozen teacher predictions r̂^ψ, ĉ^ψ

    @staticmethod
    def table(data: FactualBatch, teacher: OutcomeNet) -> LowerBatch:
        """The whole OBS table (slice it with `rows`)."""
        k = data.n_treatments
        with torch.no_grad():
            teacher_out = teacher(data.features)
        observed = torch.cat([data.revenue[:, None].expand(-1, k), data.cost[:, None].expand(-1, k)], dim=1)
        return LowerBatch(data.features, observed.contiguous(), factual_mask(data.treatment, k), teacher_out)

    def rows(self, index: torch.Tensor) -> LowerBatch:
        def take(t: torch.Tensor) -> torch.Tensor:
            return t.index_select(0, index)  # a plain gather, cheaper than t[index]'s advanced indexing

        return LowerBatch(take(self.features), take(self.observed), take(self.factual), take(self.teacher))


def lower_targets(batch: LowerBatch, gates: torch.Tensor, snapshot: torch.Tensor) -> torch.Tensor:
    """(B, 2K) labels of the lower level: observed r_i, c_i on the logged arm, pseudo-labels elsewhere (§6).

    r^cf = w·r̂^ψ + (1 − w)·r̂^θ (cost alike); the target term `snapshot` is detached (METHOD.md §8.1), so the
    bridge reaches the loss only through the gates.
    """
    pseudo = gates * batch.teacher + (1.0 - gates) * snapshot.detach()  # (B, 2K)
    return torch.where(batch.factual, batch.observed, pseudo)


def lower_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """L_low = (1/|b|) Σ_i Σ_cells (label − prediction)² over factual and pseudo-labelled cells (§6)."""
    return (targets - outputs).square().sum(dim=1).mean()


def _take(data: FactualBatch, rows: torch.Tensor) -> FactualBatch:
    return FactualBatch(
        data.features[rows], data.treatment[rows], data.revenue[rows], data.cost[rows], data.propensity,
        data.binary_revenue, data.binary_cost,
    )  # fmt: skip


def fit_teacher(rct_train: Logs, rct_val: Logs, config: BiDFCLConfig) -> OutcomeNet:
    """Teacher F_ψ: the two-stage S-learner on RCT (`training.train`, method "tsm"), returned frozen.

    METHOD.md §6 allows any uplift model fitted on RCT with factual MSE; using the TSM trainer with the same
    seed makes the teacher exactly the benchmark's TSM(RCT) model, so Bi-DFCL's gain over it is what OBS data
    and the bridge add.
    """
    if config.teacher_epochs < 1:
        raise ValueError("teacher_epochs must be >= 1 when no teacher is given")
    tsm = TrainConfig(
        method="tsm", epochs=config.teacher_epochs, lr=config.teacher_lr, seed=config.seed, hidden=config.hidden
    )
    teacher, _ = fit_single_level(rct_train, rct_val, tsm, progress=False)
    return teacher.eval().requires_grad_(False)


class _Bilevel:
    """One target, bridge and copy θ′ with their optimisers; `upper_step` is Alg. 1 step 1, `lower_step` step 2."""

    def __init__(self, target: OutcomeNet, bridge: OutcomeNet, config: BiDFCLConfig, budgets: list[float]) -> None:
        self.target, self.bridge, self.config, self.budgets = target, bridge, config, budgets
        self.prime = copy.deepcopy(target)  # θ′, overwritten from θ at every upper step
        self.target_opt = torch.optim.Adam(target.parameters(), lr=config.lr_target, foreach=True)
        self.prime_opt = torch.optim.Adam(self.prime.parameters(), lr=config.lr_target, foreach=True)
        self.bridge_opt = torch.optim.Adam(bridge.parameters(), lr=config.lr_bridge, foreach=True)
        # The modules whose forward is differentiated by the lower steps on θ and θ′: the networks themselves
        # in one process; DistributedDataParallel wrappers in a data-parallel run (training.scale.bilevel).
        self.fit_target: torch.nn.Module = target
        self.fit_prime_net: torch.nn.Module = self.prime

    def average(self, flat: torch.Tensor) -> torch.Tensor:
        """Mean over data-parallel ranks of a flat gradient-sized vector; the identity in one process."""
        return flat

    def lambdas(self, revenue: np.ndarray, cost: np.ndarray, rct: FactualBatch) -> list[float]:
        """λ* per budget on the RCT batch (a data-parallel run solves on the union of the ranks' batches)."""
        return ipw_lambdas(revenue, cost, rct, self.budgets)

    def gates(self, features: torch.Tensor, warm: bool) -> torch.Tensor:
        """(B, 2K) W = σ(G_φ(x)), or the constant gate during the warm start and in the fixed-gate ablation."""
        fixed = self.config.fixed_gate if self.config.fixed_gate is not None else (0.5 if warm else None)
        if fixed is not None:
            return torch.full((features.shape[0], 2 * self.target.config.n_treatments), fixed)
        return torch.sigmoid(self.bridge.logits(features))

    def lower_step(self, batch: LowerBatch, warm: bool) -> tuple[float, float, float]:
        """One Adam step on θ with pseudo-labels from the current φ; returns (L_low, factual part, mean gate)."""
        with torch.no_grad():
            gates = self.gates(batch.features, warm)
        outputs = self.fit_target(batch.features)  # (B, 2K); its detached copy is the step-start snapshot
        squared = (lower_targets(batch, gates, outputs) - outputs).square()  # (B, 2K)
        loss = squared.sum(dim=1).mean()  # = lower_loss, with the squares kept for the factual/pseudo split
        self.target_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.target_opt.step()
        factual = float((squared.detach() * batch.factual).sum()) / squared.shape[0]
        return float(loss.detach()), factual, float(gates.mean())

    def _copy_target(self) -> torch.optim.Adam:
        """θ′ ← θ, and θ′'s Adam moments ← θ's, so θ′ steps as θ would (copied in place: no new tensors)."""
        with torch.no_grad():
            for p, q in zip(self.target.parameters(), self.prime.parameters(), strict=True):
                q.copy_(p)
                state, prime_state = self.target_opt.state.get(p), self.prime_opt.state.get(q)
                if not state:  # θ has not stepped yet: neither may θ′'s moments
                    self.prime_opt.state.pop(q, None)
                elif prime_state:
                    for key, value in state.items():
                        prime_state[key].copy_(value)
                else:
                    self.prime_opt.state[q] = {key: value.clone() for key, value in state.items()}
        return self.prime_opt

    def fit_prime(self, batch: LowerBatch, targets: torch.Tensor) -> None:
        """θ′ ← θ, then k_steps Adam steps of L_low on `batch` with fixed `targets`: θ′*(φ) of Alg. 1 step 1(b)."""
        prime_opt = self._copy_target()
        for _ in range(self.config.k_steps):
            prime_opt.zero_grad(set_to_none=True)
            lower_loss(self.fit_prime_net(batch.features), targets).backward()
            prime_opt.step()

    def upper_loss(self, outputs: torch.Tensor, rct: FactualBatch) -> torch.Tensor:
        """Mean over the budgets of L_PPL or L_PIFD at the IPW λ* of this RCT batch (λ* constant)."""
        revenue, cost = split_outcomes(outputs, rct.n_treatments)
        R, C = revenue.detach().double().numpy(), cost.detach().double().numpy()
        total = outputs.new_zeros(())
        for lam in self.lambdas(R, C, rct):
            if self.config.upper_loss == "ppl":
                total = total + ppl_loss(revenue, cost, rct, lam, self.config.tau)
            else:
                cfg = self.config
                total = total + pifd_loss(revenue, cost, rct, lam, cfg.tau, cfg.pifd_h, cfg.pifd_clip)
        return total / len(self.budgets)

    def upper_step(self, batch: LowerBatch, rct: FactualBatch) -> tuple[float, CGResult | None]:
        """Alg. 1 step 1: k steps on θ′, upper loss on RCT at θ′*, hypergradient, one Adam step on φ."""
        cfg = self.config
        with torch.no_grad():
            snapshot = self.target(batch.features)  # θ at step start
        gates = self.gates(batch.features, warm=False)  # graph to φ
        targets = lower_targets(batch, gates, snapshot)
        self.fit_prime(batch, targets.detach())
        params = list(self.prime.parameters())
        upper = self.upper_loss(self.prime(rct.features), rct)
        upper_grad = self.average(flatten(torch.autograd.grad(upper, params)))  # (P_θ,) ∇_θ′ L_up(θ′*)
        low = lower_loss(self.prime(batch.features), targets)  # L_low(φ, θ′*), reaches φ through the gates
        bridge_params = list(self.bridge.parameters())
        if cfg.hypergradient == "implicit":
            hyper = implicit_hypergradient(
                low, params, bridge_params, upper_grad, max_iter=cfg.n_cg, tol=cfg.cg_tol, damping=cfg.damping,
                average=self.average,
            )  # fmt: skip
        else:
            hyper = explicit_hypergradient(
                low, params, bridge_params, upper_grad, step_size=cfg.lr_target, average=self.average
            )
        self.bridge_opt.zero_grad(set_to_none=True)
        for p, g in zip(bridge_params, hyper.grads, strict=True):
            p.grad = g.detach()
        self.bridge_opt.step()
        return float(upper.detach()), hyper.cg


def _nets(obs: Logs, rct_train: Logs, config: BiDFCLConfig) -> NetworkConfig:
    if obs.n_treatments != rct_train.n_treatments or obs.n_features != rct_train.n_features:
        raise ValueError(
            f"obs ({obs.source}) has {obs.n_features} features/{obs.n_treatments} treatments but rct_train "
            f"({rct_train.source}) has {rct_train.n_features}/{rct_train.n_treatments}"
        )
    mean, std = standardisation(np.concatenate([obs.features, rct_train.features]))
    return NetworkConfig(
        n_features=obs.n_features, n_treatments=obs.n_treatments, hidden=tuple(config.hidden),
        binary_revenue=obs.binary_revenue, binary_cost=obs.binary_cost, feature_mean=mean, feature_std=std,
    )  # fmt: skip


def initial_networks(net_config: NetworkConfig) -> tuple[OutcomeNet, OutcomeNet]:
    """Target and bridge at the start of Alg. 1 (from the current torch seed); the bridge's gates all start at 0.5."""
    target, bridge = OutcomeNet(net_config), OutcomeNet(net_config)
    last = cast(torch.nn.Linear, bridge.body[-1])  # OutcomeNet ends in its output layer
    torch.nn.init.zeros_(last.weight)  # W = σ(0) = 0.5 at the start: half teacher, half target
    torch.nn.init.zeros_(last.bias)
    return target, bridge


def fit_bidfcl(
    obs: Logs,
    rct_train: Logs,
    rct_val: Logs,
    config: BiDFCLConfig,
    teacher: OutcomeNet | None = None,
    progress: bool = True,
) -> tuple[OutcomeNet, dict[str, Any]]:
    """Algorithm 1 of Bi-DFCL; returns the best-on-validation target network and the per-epoch history."""
    net_config = _nets(obs, rct_train, config)
    budgets = upper_budgets(rct_train, config)
    val_budgets = budget_grid(rct_val)  # the grid the single-level trainers validate on
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        generator = torch.Generator().manual_seed(config.seed)
        if teacher is None:
            teacher = fit_teacher(rct_train, rct_val, config)
            torch.manual_seed(config.seed)  # the TSM trainer reseeds; start the target from the same state
        target, bridge = initial_networks(net_config)
    teacher = teacher.eval().requires_grad_(False)
    # The DR outcome model of checkpoint scores: the teacher, fitted on RCT training rows (validation only chose
    # its stopping epoch), so the score stays an honest estimate on the validation rows.
    baseline = predict(teacher, rct_val.features) if config.validation == "dr" else None
    table, rct = LowerBatch.table(full_batch(obs), teacher), full_batch(rct_train)  # teacher outputs computed once
    bilevel = _Bilevel(target, bridge, config, budgets)
    keys = ("lower_loss", "lower_factual", "upper_loss", "val_score", "gate_mean", "cg_iterations", "cg_residual",
            "cg_negative_curvature", "seconds")  # fmt: skip
    history: dict[str, Any] = {key: [] for key in keys}
    history.update(budgets=budgets, val_budgets=val_budgets.tolist(), best_epoch=-1, bridge_updates=0)
    best, best_state, stale = -math.inf, copy.deepcopy(target.state_dict()), 0
    bar = tqdm(range(config.epochs), desc=f"bi-dfcl-{config.upper_loss}", disable=not progress, unit="epoch")
    for epoch in bar:
        started = time.perf_counter()
        warm = epoch < config.warm_start_epochs
        bilevel_on = not warm and config.fixed_gate is None
        target.train()
        lows, factuals, gate_means, uppers, cgs = [], [], [], [], []
        order = torch.randperm(obs.n_rows, generator=generator)
        for index, start in enumerate(range(0, obs.n_rows, config.obs_batch_size)):
            rows = order[start : start + config.obs_batch_size]
            batch = table.rows(rows)
            if bilevel_on and index % config.k_period == 0:
                rct_rows = torch.randperm(rct.size, generator=generator)[: config.rct_batch_size]
                upper, cg = bilevel.upper_step(batch, _take(rct, rct_rows))
                uppers.append(upper)
                cgs += [cg] if cg is not None else []
                history["bridge_updates"] += 1
            low, factual, gate_mean = bilevel.lower_step(batch, warm)
            lows.append(low)
            factuals.append(factual)
            gate_means.append(gate_mean)
        score = decision_score(target, rct_val, val_budgets, baseline)
        history["lower_loss"].append(float(np.mean(lows)))
        history["lower_factual"].append(float(np.mean(factuals)))
        history["upper_loss"].append(float(np.mean(uppers)) if uppers else math.nan)
        history["gate_mean"].append(float(np.mean(gate_means)))
        history["cg_iterations"].append(float(np.mean([c.iterations for c in cgs])) if cgs else 0.0)
        history["cg_residual"].append(float(np.mean([c.relative_residual for c in cgs])) if cgs else math.nan)
        history["cg_negative_curvature"].append(sum(c.negative_curvature for c in cgs))
        history["val_score"].append(score)
        history["seconds"].append(time.perf_counter() - started)
        bar.set_postfix(
            low=f"{history['lower_loss'][-1]:.4g}", up=f"{history['upper_loss'][-1]:.4g}", val=f"{score:.4g}"
        )
        if score > best:
            best, best_state, stale = score, copy.deepcopy(target.state_dict()), 0
            history["best_epoch"] = epoch
        elif not warm:
            stale += 1
            if stale >= config.patience:
                log.info("early stop at epoch %d (best %d)", epoch, history["best_epoch"])
                break
    target.load_state_dict(best_state)
    return target.eval(), history
