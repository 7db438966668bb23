"""Bi-DFCL training loop on tiny synthetic data: confounded OBS, uniform-arm RCT, known potential outcomes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from service.decision import choose
from training.batch import full_batch
from training.bidfcl import (
    BiDFCLConfig,
    LowerBatch,
    _Bilevel,
    fit_bidfcl,
    fit_teacher,
    lower_loss,
    lower_targets,
    upper_budgets,
)
from training.dataset import Logs
from training.evaluate import curve_area, eom_curve, oracle_optimum_curve, random_curve
from training.network import NetworkConfig, OutcomeNet, predict
from training.train import decision_score
from training.upper_losses import ipw_lambda


def synthetic_logs(n: int, seed: int, observational: bool) -> Logs:
    """3 arms; revenue uplift grows with x1, cost with the arm. OBS: a hidden u raises revenue and the arm."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    u = rng.normal(size=n)  # hidden confounder, not in the features
    base = 1.0 + 0.5 * x[:, 0] + 0.8 * u
    uplift = np.maximum(np.stack([np.zeros(n), 0.6 + 0.8 * x[:, 1], 1.0 + 1.2 * x[:, 1] - 0.5 * x[:, 2]], 1), 0.0)
    true_revenue = base[:, None] + uplift  # (N, 3)
    true_cost = np.stack([np.full(n, 0.1), 0.5 + 0.2 * np.abs(x[:, 3]), 1.0 + 0.3 * np.abs(x[:, 3])], 1)
    if observational:
        logits = np.stack([np.zeros(n), 1.5 * u, 3.0 * u], 1)
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        treatment = (p.cumsum(1) < rng.random(n)[:, None]).sum(1)
    else:
        treatment = rng.integers(0, 3, size=n)
    rows = np.arange(n)
    return Logs(
        features=x,
        treatment=treatment.astype(np.int64),
        revenue=(true_revenue[rows, treatment] + 0.3 * rng.normal(size=n)).astype(np.float32),
        cost=np.maximum(true_cost[rows, treatment] + 0.05 * rng.normal(size=n), 0.0).astype(np.float32),
        feature_names=("x0", "x1", "x2", "x3"),
        treatment_names=("control", "small", "large"),
        true_revenue=true_revenue.astype(np.float32),
        true_cost=true_cost.astype(np.float32),
        source="obs" if observational else "rct",
    )


@pytest.fixture(scope="module")
def data() -> tuple[Logs, Logs, Logs]:
    torch.set_num_threads(1)
    return synthetic_logs(3000, 1, True), synthetic_logs(1500, 2, False), synthetic_logs(1500, 3, False)


def small_config(**changes: object) -> BiDFCLConfig:
    base: dict[str, object] = dict(
        epochs=5, warm_start_epochs=1, obs_batch_size=128, rct_batch_size=512, teacher_epochs=8, patience=10,
        hidden=(32, 16), n_cg=20,
    )  # fmt: skip
    base.update(changes)
    return BiDFCLConfig(**base)  # type: ignore[arg-type]


def test_fit_lowers_upper_loss_and_returns_working_network(data: tuple[Logs, Logs, Logs]) -> None:
    obs, rct, val = data
    teacher = fit_teacher(rct, val, small_config(epochs=8))
    model, history = fit_bidfcl(obs, rct, val, small_config(epochs=8), teacher=teacher, progress=False)
    upper = history["upper_loss"]
    assert math.isnan(upper[0])  # warm start: no upper steps
    # The decision loss on fresh RCT batches goes down (per epoch it is noisy: compare the last three epochs).
    assert np.mean(upper[-3:]) < upper[1]
    assert history["bridge_updates"] == 7 * math.ceil(3000 / 128 / 5)
    assert all(it > 0 for it in history["cg_iterations"][1:])
    assert history["gate_mean"][0] == 0.5 and history["gate_mean"][-1] != 0.5  # the bridge moved
    assert len(history["seconds"]) == 8 and history["best_epoch"] >= 0
    # Working network: finite predictions, and better validation decisions than an untrained one.
    revenue, cost = predict(model, val.features)
    assert revenue.shape == (1500, 3) and np.isfinite(revenue).all() and (cost >= 0).all()
    budgets = np.array(history["val_budgets"])
    # The returned checkpoint is the best by the doubly robust score around the teacher.
    baseline = predict(teacher, val.features)
    assert decision_score(model, val, budgets, baseline) == pytest.approx(max(history["val_score"]))
    # On the true outcomes its cost curve closes most of the gap between random allocation and the optimum
    # (measured: random 1.48, this 1.72, optimum 1.96).
    trained = curve_area(eom_curve(revenue, cost, val, budgets), "oracle")
    random = curve_area(random_curve(val, budgets), "oracle")
    optimum = curve_area(oracle_optimum_curve(val, budgets), "oracle")
    assert (trained - random) > 0.3 * (optimum - random)
    # On the true outcomes, its policy at the middle budget beats treating everyone with control.
    lam = ipw_lambda(revenue, cost, full_batch(val), history["budgets"][1])
    chosen = choose(revenue, cost, lam)
    assert val.true_revenue is not None
    assert val.true_revenue[np.arange(1500), chosen].mean() > val.true_revenue[:, 0].mean()


def test_pifd_with_explicit_hypergradient_runs(data: tuple[Logs, Logs, Logs]) -> None:
    obs, rct, val = data
    config = small_config(epochs=3, upper_loss="pifd", hypergradient="explicit")
    model, history = fit_bidfcl(obs, rct, val, config, progress=False)
    assert all(np.isfinite(history["upper_loss"][1:]))
    assert history["cg_iterations"] == [0.0, 0.0, 0.0]  # no CG in the explicit form
    assert history["bridge_updates"] > 0
    assert np.isfinite(predict(model, val.features)[0]).all()


def test_fixed_gate_ablation_leaves_bridge_unused(data: tuple[Logs, Logs, Logs]) -> None:
    obs, rct, val = data
    _, history = fit_bidfcl(obs, rct, val, small_config(epochs=3, fixed_gate=0.5), progress=False)
    assert history["bridge_updates"] == 0
    assert history["gate_mean"] == [0.5, 0.5, 0.5]
    assert all(math.isnan(u) for u in history["upper_loss"])
    assert history["cg_iterations"] == [0.0, 0.0, 0.0]


def test_given_teacher_is_used_and_left_unchanged(data: tuple[Logs, Logs, Logs]) -> None:
    obs, rct, val = data
    torch.manual_seed(5)
    teacher = OutcomeNet(NetworkConfig(n_features=4, n_treatments=3, hidden=(8,)))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    fit_bidfcl(obs, rct, val, small_config(epochs=2, teacher_epochs=0), teacher=teacher, progress=False)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def test_lower_targets_use_observed_cells_and_reach_only_the_gates() -> None:
    data = full_batch(synthetic_logs(4, 0, False))
    teacher = OutcomeNet(NetworkConfig(n_features=4, n_treatments=3, hidden=(4,)))
    table = LowerBatch.table(data, teacher)
    batch = LowerBatch(table.features, table.observed, table.factual, torch.full((4, 6), 10.0))
    snapshot = torch.full((4, 6), -10.0, requires_grad=True)
    gates = torch.full((4, 6), 0.25, requires_grad=True)
    targets = lower_targets(batch, gates, snapshot)
    rows, t = torch.arange(4), data.treatment
    assert torch.equal(targets[rows, t], data.revenue) and torch.equal(targets[rows, 3 + t], data.cost)
    pseudo = ~table.factual
    assert int(pseudo.sum()) == 4 * 4
    assert torch.allclose(targets[pseudo], torch.tensor(0.25 * 10.0 - 0.75 * 10.0))
    lower_loss(torch.zeros(4, 6), targets).backward()
    assert gates.grad is not None and snapshot.grad is None  # the target term is detached (METHOD §8.1)
    assert torch.all(gates.grad[~pseudo] == 0) and torch.all(gates.grad[pseudo] != 0)
    # The teacher's own predictions fill the table.
    with torch.no_grad():
        assert torch.equal(table.teacher, teacher(data.features))


def test_default_budgets_span_control_to_max_arm_cost(data: tuple[Logs, Logs, Logs]) -> None:
    _, rct, _ = data
    budgets = upper_budgets(rct, BiDFCLConfig())
    arm_cost = [float(rct.cost[rct.treatment == j].mean()) for j in range(3)]
    assert len(budgets) == 3 and arm_cost[0] < budgets[0] < budgets[1] < budgets[2] < max(arm_cost)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"rct_batch_size": 100, "obs_batch_size": 64}, "rct_batch_size"),
        ({"upper_loss": "mse"}, "upper_loss"),
        ({"hypergradient": "neumann"}, "hypergradient"),
        ({"fixed_gate": 1.5}, "fixed_gate"),
        ({"k_period": 0}, "k_period"),
    ],
)
def test_config_rejects_bad_values(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        BiDFCLConfig(**changes)  # type: ignore[arg-type]


def test_binary_labels_train_sigmoid_outputs_with_mse(data: tuple[Logs, Logs, Logs]) -> None:
    """Criteo-style 0/1 revenue and cost (METHOD §8.13): the target's sigmoid heads stay in (0, 1)."""

    def binary(logs: Logs, seed: int) -> Logs:
        rng = np.random.default_rng(seed)
        assert logs.true_revenue is not None and logs.true_cost is not None
        rows = np.arange(logs.n_rows)
        p_revenue = 1 / (1 + np.exp(-(logs.true_revenue[rows, logs.treatment] - 2.0)))
        p_cost = np.clip(logs.true_cost[rows, logs.treatment] / 1.5, 0.0, 1.0)
        return Logs(
            features=logs.features,
            treatment=logs.treatment,
            revenue=(rng.random(logs.n_rows) < p_revenue).astype(np.float32),
            cost=(rng.random(logs.n_rows) < p_cost).astype(np.float32),
            feature_names=logs.feature_names,
            treatment_names=logs.treatment_names,
            binary_revenue=True,
            binary_cost=True,
        )

    obs, rct, val = (binary(logs, seed) for seed, logs in enumerate(data))
    model, history = fit_bidfcl(obs, rct, val, small_config(epochs=2, upper_loss="pifd"), progress=False)
    revenue, cost = predict(model, val.features)
    assert model.config.binary_revenue and model.config.binary_cost
    assert ((revenue > 0) & (revenue < 1)).all() and ((cost > 0) & (cost < 1)).all()
    assert np.isfinite(history["upper_loss"][1]) and history["lower_loss"][1] < history["lower_loss"][0]


def test_copy_of_the_target_steps_exactly_as_the_target(data: tuple[Logs, Logs, Logs]) -> None:
    """θ′ gets θ's weights and Adam moments in place at every upper step, so one step on each gives equal θ."""
    obs = data[0]
    net = NetworkConfig(n_features=4, n_treatments=3, hidden=(16,))
    bilevel = _Bilevel(OutcomeNet(net), OutcomeNet(net), small_config(), budgets=[0.5])
    table = LowerBatch.table(full_batch(obs), OutcomeNet(net).requires_grad_(False))
    generator = torch.Generator().manual_seed(0)
    for round_ in range(3):  # the second and third copies overwrite moments left by the first
        for _ in range(2):
            bilevel.lower_step(table.rows(torch.randperm(obs.n_rows, generator=generator)[:64]), warm=True)
        prime_opt = bilevel._copy_target()
        batch = table.rows(torch.randperm(obs.n_rows, generator=generator)[:64])
        gates = torch.full((64, 6), 0.5)
        for model, optimiser in ((bilevel.prime, prime_opt), (bilevel.target, bilevel.target_opt)):
            with torch.no_grad():
                targets = lower_targets(batch, gates, bilevel.target(batch.features))
            optimiser.zero_grad(set_to_none=True)
            lower_loss(model(batch.features), targets).backward()
            optimiser.step()
        for p, q in zip(bilevel.target.parameters(), bilevel.prime.parameters(), strict=True):
            assert torch.equal(p, q), f"round {round_}"
