"""Single-level training: TSM-SL (two-stage, factual loss) and DFCL (α·L_pred + decision loss) on one table.

One loop for every method that learns from one data set (METHOD.md §3, §5): a seeded, deterministic pass over
shuffled mini-batches with Adam, progress on the terminal, and early stopping on validation. TSM stops on the
validation factual loss (it is a prediction model); DFCL stops on validation decision quality (the IPW EOM
cost-curve area), because that is what it optimises. Bi-DFCL has its own loop in `training/bidfcl.py`.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from service.decision import sweep
from training import losses
from training.batch import FactualBatch, batches, full_batch
from training.dataset import Logs
from training.evaluate import budget_grid, curve_area, doubly_robust_area, eom_curve
from training.network import NetworkConfig, OutcomeNet, predict, standardisation

log = logging.getLogger(__name__)

SINGLE_LEVEL_METHODS = ("tsm", "dfcl-pl", "dfcl-mer", "dfcl-ifd")
VALIDATION_ESTIMATORS = ("dr", "ipw")  # how decision-focused methods score a checkpoint on RCT validation rows

LossFn = Callable[[torch.Tensor, FactualBatch], torch.Tensor]  # (B, 2K) outputs, batch → scalar


@dataclass
class TrainConfig:
    """Hyperparameters of single-level training (saved with the weights)."""

    method: str = "tsm"
    epochs: int = 60  # TSM: training epochs; DFCL: epochs of the decision phase
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-5
    patience: int = 6  # epochs without validation improvement before stopping
    seed: int = 0
    hidden: tuple[int, ...] = (64, 32, 32)
    threads: int = 1  # fixed so runs are bit-for-bit reproducible across machines
    # DFCL (METHOD.md §5.6): L = alpha·L_pred + L_dec.
    alpha: float = 1.0
    # Multipliers of the decision loss. Empty → derived from the data: λ* of the warm-started model at
    # 25/50/75% of the training budget range, so λ matches the scale of revenue and cost.
    lams: tuple[float, ...] = ()
    tau: float = 1.0  # softmax temperature: PL is tau = 1; dfcl-mer sets its own (methods.MER_TAU)
    ifd_h: float = 0.3  # IFD truncation threshold
    warm_start_epochs: int = 60  # DFCL: max epochs of prediction loss before the decision loss is switched on
    decision_lr: float | None = 3e-4  # DFCL: learning rate once the decision loss is on (None → lr)
    validation: str = "dr"  # DFCL: checkpoint score, doubly robust (the warm start as outcome model) or IPW EOM
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in SINGLE_LEVEL_METHODS:
            raise ValueError(f"method must be one of {', '.join(SINGLE_LEVEL_METHODS)}, got {self.method!r}")
        for name in ("epochs", "batch_size", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.validation not in VALIDATION_ESTIMATORS:
            raise ValueError(f"validation must be one of {VALIDATION_ESTIMATORS}, got {self.validation!r}")


@dataclass
class History:
    """What happened during training, per epoch (kept in the checkpoint and printed by the CLI)."""

    train_loss: list[float] = field(default_factory=list)
    val_score: list[float] = field(default_factory=list)  # higher is better
    seconds: list[float] = field(default_factory=list)
    best_epoch: int = -1
    lams: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def seed_everything(seed: int, threads: int) -> torch.Generator:
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    return torch.Generator().manual_seed(seed)


def build_network(train: Logs, hidden: tuple[int, ...]) -> OutcomeNet:
    """An S-learner sized for `train`, with standardisation fitted on its features."""
    mean, std = standardisation(train.features)
    config = NetworkConfig(
        n_features=train.n_features,
        n_treatments=train.n_treatments,
        hidden=tuple(hidden),
        binary_revenue=train.binary_revenue,
        binary_cost=train.binary_cost,
        feature_mean=mean,
        feature_std=std,
    )
    return OutcomeNet(config)


def factual_score(model: OutcomeNet, data: FactualBatch) -> float:
    """Validation score of a prediction model: minus the factual loss (higher is better)."""
    model.eval()
    with torch.no_grad():
        return -float(losses.factual_loss(model(data.features), data))


Baseline = tuple[np.ndarray, np.ndarray]  # (N, K) revenue and cost of an outcome model on the validation rows


def decision_score(model: OutcomeNet, val: Logs, budgets: np.ndarray, baseline: Baseline | None = None) -> float:
    """Validation score of a decision model on RCT validation rows: the cost-curve area (mean over `budgets`).

    With a `baseline` outcome model (fitted on other rows) the doubly robust area, else the IPW EOM area. Both
    are unbiased; DR varies far less between checkpoints of equal true value (`evaluate.doubly_robust_area`),
    so early stopping on it picks by decision quality rather than by which validation rows a policy matches.
    """
    revenue, cost = predict(model, val.features)
    if baseline is not None:
        return doubly_robust_area(revenue, cost, val, budgets, baseline)
    return curve_area(eom_curve(revenue, cost, val, budgets), kind="ipw")


def lambdas_from_budgets(
    model: OutcomeNet, train: Logs, fractions: tuple[float, ...] = (0.25, 0.5, 0.75)
) -> list[float]:
    """λ* of the model's own predictions at budgets spread over its spend range (budgets ↔ multipliers, §5.2)."""
    revenue, cost = predict(model, train.features)
    population = sweep(revenue, cost)
    lams = []
    for fraction in fractions:
        budget = population.min_spend + fraction * (population.max_spend - population.min_spend)
        lams.append(population.solve(budget, with_assignment=False).lam)
    return sorted({round(lam, 6) for lam in lams if lam > 0}) or [0.1]


def _decision_loss(config: TrainConfig, lams: list[float]) -> LossFn:
    decision = losses.LOSSES[config.method]
    kwargs: dict[str, Any] = {"lams": tuple(lams)}
    if config.method == "dfcl-mer":
        kwargs["tau"] = config.tau
    if config.method == "dfcl-ifd":
        kwargs["h"] = config.ifd_h

    def loss(outputs: torch.Tensor, batch: FactualBatch) -> torch.Tensor:
        return losses.combined_loss(outputs, batch, decision, config.alpha, **kwargs)

    return loss


def _run_phase(
    model: OutcomeNet,
    data: FactualBatch,
    loss_fn: LossFn,
    score_fn: Callable[[], float],
    epochs: int,
    lr: float,
    config: TrainConfig,
    generator: torch.Generator,
    history: History,
    desc: str,
    progress: bool,
) -> None:
    """Adam on `loss_fn` for up to `epochs`, keeping the weights with the best `score_fn` (higher is better).

    The starting weights count as a candidate, so a phase never returns a model worse on validation than
    the one it started from.
    """
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=config.weight_decay)
    best_score, best_state, stale = score_fn(), copy.deepcopy(model.state_dict()), 0
    bar = tqdm(range(epochs), desc=desc, disable=not progress, unit="epoch")
    for _ in bar:
        started = time.perf_counter()
        model.train()
        total, rows = 0.0, 0
        for batch in batches(data, config.batch_size, generator):
            optimiser.zero_grad(set_to_none=True)
            loss = loss_fn(model(batch.features), batch)
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * batch.size
            rows += batch.size
        history.train_loss.append(total / max(rows, 1))
        history.seconds.append(time.perf_counter() - started)
        score = score_fn()
        history.val_score.append(score)
        bar.set_postfix(loss=f"{history.train_loss[-1]:.4g}", val=f"{score:.5g}")
        if score > best_score:
            best_score, best_state, stale = score, copy.deepcopy(model.state_dict()), 0
            history.best_epoch = len(history.val_score) - 1
        else:
            stale += 1
            if stale >= config.patience:
                log.info("%s: early stop after %d epochs", desc, len(history.val_score))
                break
    model.load_state_dict(best_state)


def fit_single_level(
    train: Logs, val: Logs | None, config: TrainConfig, progress: bool = True
) -> tuple[OutcomeNet, History]:
    """Train one network on `train`; return the best-on-validation weights and the history.

    TSM: one phase on the factual loss, stopped on the validation factual loss. DFCL (METHOD.md §5.6): a warm
    start on the prediction loss (stopped the same way), then α·L_pred + L_dec at `decision_lr`, stopped on
    the validation cost-curve area (`decision_score`, doubly robust around the warm start by default).
    """
    generator = seed_everything(config.seed, config.threads)
    model = build_network(train, config.hidden)
    data = full_batch(train)
    history = History()
    decision_focused = config.method != "tsm"
    holdout = full_batch(val) if val is not None else data  # no validation → stop on the training loss

    def fit_score() -> float:
        return factual_score(model, holdout)

    fit_loss: LossFn = losses.prediction_loss if decision_focused else losses.factual_loss
    fit_epochs = config.warm_start_epochs if decision_focused else config.epochs
    _run_phase(
        model,
        data,
        fit_loss,
        fit_score,
        fit_epochs,
        config.lr,
        config,
        generator,
        history,
        f"{config.method} fit" if decision_focused else config.method,
        progress,
    )
    if decision_focused:
        if val is None:
            raise ValueError(f"{config.method} needs RCT validation logs to stop on decision quality")
        budgets = budget_grid(val)
        history.lams = list(config.lams) or lambdas_from_budgets(model, train)
        # The warm-started model, fitted on the training rows only, is the DR outcome model: frozen here.
        baseline = predict(model, val.features) if config.validation == "dr" else None

        def decision_val() -> float:
            return decision_score(model, val, budgets, baseline)

        _run_phase(
            model,
            data,
            _decision_loss(config, history.lams),
            decision_val,
            config.epochs,
            config.decision_lr or config.lr,
            config,
            generator,
            history,
            f"{config.method} decide",
            progress,
        )
    model.eval()
    return model, history
