"""Streamed, data-parallel training of the single-level methods: tsm, tsm-obs and DFCL (METHOD.md §3, §5).

The same phases, losses and early stopping as `training.train.fit_single_level`, with the training table read
batch by batch from a `ShardStream` and the network wrapped in `DistributedDataParallel`: every optimiser step
averages the gradients of one equal-sized batch per rank, which is the gradient of the union of those batches
(every loss here is a row mean). Rank 0 scores checkpoints on the in-memory validation set and broadcasts the
score, so every rank takes the same early-stopping decision.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from training import losses
from training.batch import FactualBatch, full_batch
from training.dataset import Logs
from training.evaluate import budget_grid
from training.network import NetworkConfig, OutcomeNet, predict
from training.scale import ranks
from training.scale.resume import ResumeState
from training.scale.stream import EncodedRows, ShardStream
from training.train import (
    History,
    LossFn,
    TrainConfig,
    _decision_loss,
    decision_score,
    factual_score,
    lambdas_from_budgets,
    seed_everything,
)

log = logging.getLogger(__name__)


def factual_batch(rows: EncodedRows, propensity: torch.Tensor, binary: tuple[bool, bool]) -> FactualBatch:
    """A mini-batch of streamed rows; propensities are those of the whole table (from the statistics pass)."""
    return FactualBatch(
        features=torch.from_numpy(rows.features),
        treatment=torch.from_numpy(rows.treatment),
        revenue=torch.from_numpy(rows.revenue),
        cost=torch.from_numpy(rows.cost),
        propensity=propensity,
        binary_revenue=binary[0],
        binary_cost=binary[1],
    )


def wrap(model: torch.nn.Module) -> torch.nn.Module:
    """`model` under DistributedDataParallel when the run has several ranks (parameters broadcast from rank 0)."""
    if not ranks.current().distributed:
        return model
    # Buffers (the standardisation) are equal on every rank and never change: no need to broadcast per step.
    return DistributedDataParallel(model, forward_sync_buffers=False)


@dataclass
class StreamedData:
    """What a streamed single-level run trains and validates on."""

    stream: ShardStream
    propensity: torch.Tensor  # (K,) of the whole streamed table
    binary: tuple[bool, bool]  # binary revenue, binary cost
    sample: Logs | None  # a bounded sample of training rows (DFCL's λ from budgets), the same on every rank


def train_step(
    net: torch.nn.Module, optimiser: torch.optim.Optimizer, loss_fn: LossFn, batch: FactualBatch
) -> torch.Tensor:
    """One Adam step on one batch per rank (`net` under DDP averages the ranks' gradients); the local loss."""
    optimiser.zero_grad(set_to_none=True)
    loss = loss_fn(net(batch.features), batch)
    loss.backward()
    optimiser.step()
    return loss.detach()


def _phase(
    name: str,
    model: OutcomeNet,
    net: torch.nn.Module,
    data: StreamedData,
    loss_fn: LossFn,
    score_fn: Callable[[], float],
    epochs: int,
    lr: float,
    config: TrainConfig,
    history: History,
    resume: ResumeState,
    saved: dict[str, Any] | None,
    extra_state: dict[str, Any],
    first_epoch: int,
    progress: bool,
) -> None:
    """`training.train._run_phase` over streamed batches; resumes from `saved` when it is this phase's state."""
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=config.weight_decay)
    done = 0
    if saved is not None and saved["phase"] == name:
        model.load_state_dict(saved["model"])
        optimiser.load_state_dict(saved["optimiser"])
        best_score, best_state, stale, done = saved["best_score"], saved["best_state"], saved["stale"], saved["done"]
    else:
        best_score = float(ranks.broadcast_object(score_fn() if ranks.current().leader else None))
        best_state, stale = copy.deepcopy(model.state_dict()), 0
    me = ranks.current()
    bar = tqdm(range(done, epochs), desc=name, disable=not (progress and me.leader), unit="epoch")
    for epoch in bar:
        if stale >= config.patience:
            break
        started = time.perf_counter()
        model.train()
        total, rows = 0.0, 0
        for encoded in data.stream.epoch(first_epoch + epoch):
            batch = factual_batch(encoded, data.propensity, data.binary)
            loss = train_step(net, optimiser, loss_fn, batch)
            total += float(loss.detach()) * batch.size
            rows += batch.size
        summed = ranks.average(torch.tensor([total, float(rows)], dtype=torch.float64))
        history.train_loss.append(float(summed[0] / max(float(summed[1]), 1.0)))
        history.seconds.append(time.perf_counter() - started)
        score = float(ranks.broadcast_object(score_fn() if me.leader else None))
        history.val_score.append(score)
        bar.set_postfix(loss=f"{history.train_loss[-1]:.4g}", val=f"{score:.5g}")
        if score > best_score:
            best_score, best_state, stale = score, copy.deepcopy(model.state_dict()), 0
            history.best_epoch = len(history.val_score) - 1
        else:
            stale += 1
            if stale >= config.patience:
                log.info("%s: early stop after %d epochs", name, len(history.val_score))
        resume.save(
            {
                "phase": name, "done": epoch + 1, "model": model.state_dict(), "optimiser": optimiser.state_dict(),
                "best_score": best_score, "best_state": best_state, "stale": stale, "history": history.to_dict(),
                **extra_state,
            }
        )  # fmt: skip
    model.load_state_dict(best_state)


def fit_single_level_streamed(
    data: StreamedData,
    net_config: NetworkConfig,
    val: Logs,
    config: TrainConfig,
    resume: ResumeState,
    progress: bool = True,
) -> tuple[OutcomeNet, History]:
    """Train one network on the streamed table; the best-on-validation weights (on every rank) and the history."""
    seed_everything(config.seed, config.threads)
    model = OutcomeNet(net_config)
    ranks.broadcast_module(model)
    net = wrap(model)  # once: a second DDP wrapper of the same parameters would reduce their gradients twice
    saved = resume.load()
    history = History()
    if saved is not None:
        history = History(**saved["history"])
    decision_focused = config.method != "tsm"
    holdout = full_batch(val)

    def fit_score() -> float:
        return factual_score(model, holdout)

    fit_name = f"{config.method} fit" if decision_focused else config.method
    fit_epochs = config.warm_start_epochs if decision_focused else config.epochs
    in_fit = saved is None or saved["phase"] == fit_name
    if in_fit:
        fit_loss: LossFn = losses.prediction_loss if decision_focused else losses.factual_loss
        _phase(fit_name, model, net, data, fit_loss, fit_score, fit_epochs, config.lr, config, history, resume, saved,
               {}, 0, progress)  # fmt: skip
    if decision_focused:
        decide = f"{config.method} decide"
        budgets = budget_grid(val)
        if saved is not None and saved["phase"] == decide:
            history.lams = list(saved["history"]["lams"])
            baseline_t = saved["baseline"]
            baseline = None if baseline_t is None else (baseline_t[0].numpy(), baseline_t[1].numpy())
        else:
            if config.lams:
                history.lams = list(config.lams)
            elif data.sample is None:
                raise ValueError(f"{config.method} derives λ from a sample of training rows; none was read")
            else:
                history.lams = ranks.broadcast_object(lambdas_from_budgets(model, data.sample))
            baseline = predict(model, val.features) if config.validation == "dr" else None
        stored = None if baseline is None else [torch.from_numpy(np.asarray(b)) for b in baseline]

        def decision_val() -> float:
            return decision_score(model, val, budgets, baseline)

        _phase(decide, model, net, data, _decision_loss(config, history.lams), decision_val, config.epochs,
               config.decision_lr or config.lr, config, history, resume, saved if not in_fit else None,
               {"baseline": stored}, fit_epochs, progress)  # fmt: skip
    model.eval()
    return model, history
