"""Single-level training (TSM, DFCL): how a decision-focused run scores and keeps its checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.data import logs_from_frame
from training.dataset import Logs
from training.evaluate import budget_grid
from training.synthetic import SyntheticSpec, dataset_config, generate
from training.train import TrainConfig, decision_score, fit_single_level


def coupon_logs(n: int, seed: int) -> Logs:
    spec = SyntheticSpec(seed=seed)
    return logs_from_frame(generate(spec, n, True, np.random.default_rng(seed)), dataset_config(spec), source="rct")


@pytest.fixture(scope="module")
def data() -> tuple[Logs, Logs]:
    torch.set_num_threads(1)
    return coupon_logs(3000, 0), coupon_logs(3000, 1)


def small(method: str, **changes: object) -> TrainConfig:
    base: dict[str, object] = dict(method=method, epochs=4, warm_start_epochs=3, hidden=(16,), patience=10)
    base.update(changes)
    return TrainConfig(**base)  # type: ignore[arg-type]


def test_dfcl_keeps_the_checkpoint_with_the_best_ipw_score_when_asked(data: tuple[Logs, Logs]) -> None:
    train, val = data
    model, history = fit_single_level(train, val, small("dfcl-pl", validation="ipw"), progress=False)
    decision_epochs = history.val_score[3:]  # after the 3 warm-start epochs (scored on the factual loss)
    assert len(decision_epochs) == 4
    kept = decision_score(model, val, budget_grid(val))
    # The best decision epoch, or the warm start itself when no decision epoch beat it.
    assert kept == pytest.approx(max(decision_epochs)) or kept > max(decision_epochs)


def test_dfcl_scores_the_decision_phase_doubly_robust_by_default(data: tuple[Logs, Logs]) -> None:
    train, val = data
    _, dr = fit_single_level(train, val, small("dfcl-pl"), progress=False)
    _, ipw = fit_single_level(train, val, small("dfcl-pl", validation="ipw"), progress=False)
    assert dr.train_loss == ipw.train_loss  # same training; only the checkpoint score differs
    assert dr.val_score[:3] == ipw.val_score[:3]  # warm start: both stop on the factual validation loss
    assert dr.val_score[3:] != ipw.val_score[3:]


def test_unknown_validation_estimator_is_named() -> None:
    with pytest.raises(ValueError, match="validation must be one of"):
        TrainConfig(method="dfcl-pl", validation="hajek")
