"""DFCL losses: hand-computed values, finite-difference and brute-force gradient checks, a toy training run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from service.decision import choose
from training.batch import FactualBatch
from training.losses import (
    LOSSES,
    combined_loss,
    factual_loss,
    ifd_gradients,
    ifd_loss,
    max_entropy_loss,
    policy_learning_loss,
    prediction_loss,
)
from training.network import NetworkConfig, OutcomeNet


def make_batch(
    treatment: list[int],
    revenue: list[float],
    cost: list[float],
    propensity: list[float],
    dtype: torch.dtype = torch.float64,
    **flags: bool,
) -> FactualBatch:
    n = len(treatment)
    return FactualBatch(
        features=torch.zeros(n, 1, dtype=dtype),
        treatment=torch.tensor(treatment, dtype=torch.int64),
        revenue=torch.tensor(revenue, dtype=dtype),
        cost=torch.tensor(cost, dtype=dtype),
        propensity=torch.tensor(propensity, dtype=dtype),
        **flags,
    )


# The tiny example of every hand computation: 3 rows, K = 2, p = (0.4, 0.6).
# Predicted revenue r̂ = [[1, 2], [0.5, 0.5], [3, 1]], predicted cost ĉ = [[0.5, 1], [0.2, 0.6], [1, 0.5]].
TINY_OUTPUTS = [[1.0, 2.0, 0.5, 1.0], [0.5, 0.5, 0.2, 0.6], [3.0, 1.0, 1.0, 0.5]]


def tiny_batch() -> FactualBatch:
    """Logged t = (0, 0, 1), r = (1, 2, 0), c = (1, 1, 0.5), p = (0.4, 0.6)."""
    return make_batch([0, 0, 1], [1.0, 2.0, 0.0], [1.0, 1.0, 0.5], [0.4, 0.6])


def tiny_outputs(requires_grad: bool = False) -> torch.Tensor:
    return torch.tensor(TINY_OUTPUTS, dtype=torch.float64, requires_grad=requires_grad)


def test_prediction_and_factual_loss_hand_example() -> None:
    batch = tiny_batch()
    # Factual cells: row 0 (t=0) r̂ 1, ĉ 0.5; row 1 (t=0) r̂ 0.5, ĉ 0.2; row 2 (t=1) r̂ 1, ĉ 0.5.
    row_loss = [(1 - 1) ** 2 + (1 - 0.5) ** 2, (2 - 0.5) ** 2 + (1 - 0.2) ** 2, (0 - 1) ** 2 + (0.5 - 0.5) ** 2]
    assert row_loss == pytest.approx([0.25, 2.89, 1.0])
    ipw = [1 / 0.4, 1 / 0.4, 1 / 0.6]
    expected_pred = sum(w * loss for w, loss in zip(ipw, row_loss, strict=True)) / (3 * 2)  # (1/(B K)) Σ ℓ/p
    assert float(prediction_loss(tiny_outputs(), batch)) == pytest.approx(expected_pred, rel=1e-12)
    assert expected_pred == pytest.approx(1.5861111, rel=1e-6)
    assert float(factual_loss(tiny_outputs(), batch)) == pytest.approx(sum(row_loss) / 3, rel=1e-12)


def test_prediction_loss_binary_revenue_uses_bce() -> None:
    # Revenue is a 0/1 label (sigmoid head: the outputs are probabilities), cost stays squared error.
    outputs = torch.tensor([[0.8, 0.3, 0.6, 0.5], [0.2, 0.9, 0.4, 0.1]], dtype=torch.float64)
    batch = make_batch([0, 1], [1.0, 0.0], [0.5, 1.0], [0.5, 0.5], binary_revenue=True)
    row_loss = [-math.log(0.8) + (0.5 - 0.6) ** 2, -math.log(1 - 0.9) + (1.0 - 0.1) ** 2]
    assert float(factual_loss(outputs, batch)) == pytest.approx(sum(row_loss) / 2, rel=1e-12)
    assert float(prediction_loss(outputs, batch)) == pytest.approx(sum(2 * v for v in row_loss) / (2 * 2), rel=1e-12)
    # A saturated head gives a large but finite loss.
    saturated = torch.tensor([[0.0, 0.3, 0.6, 0.5], [0.2, 1.0, 0.4, 0.1]], dtype=torch.float64)
    assert math.isfinite(float(factual_loss(saturated, batch)))


def test_policy_learning_loss_hand_example() -> None:
    batch = tiny_batch()
    # λ = 0.5: s = r̂ − 0.5ĉ = [[0.75, 1.5], [0.4, 0.2], [2.5, 0.75]]; π_{i,t_i} for t = (0, 0, 1):
    pi = [1 / (1 + math.exp(1.5 - 0.75)), 1 / (1 + math.exp(0.2 - 0.4)), 1 / (1 + math.exp(2.5 - 0.75))]
    reward = [1 - 0.5 * 1, 2 - 0.5 * 1, 0 - 0.5 * 0.5]  # r_i − λc_i
    ipw = [1 / 0.4, 1 / 0.4, 1 / 0.6]
    expected = -sum(w * u * p for w, u, p in zip(ipw, reward, pi, strict=True)) / 3
    loss = policy_learning_loss(tiny_outputs(), batch, lams=(0.5,))
    assert float(loss) == pytest.approx(expected, rel=1e-12)
    # Several λ add up.
    both = policy_learning_loss(tiny_outputs(), batch, lams=(0.5, 0.1))
    assert float(both) == pytest.approx(expected + float(policy_learning_loss(tiny_outputs(), batch, lams=(0.1,))))


def test_max_entropy_with_unit_temperature_is_policy_learning() -> None:
    generator = torch.Generator().manual_seed(3)
    outputs = torch.randn(50, 6, generator=generator, dtype=torch.float64)
    batch = random_batch(50, 3, generator)
    lams = (0.1, 0.5, 1.0)
    assert torch.equal(max_entropy_loss(outputs, batch, lams=lams, tau=1.0), policy_learning_loss(outputs, batch, lams))
    # τ divides the scores: MER at τ equals PL on outputs / τ.
    hot = max_entropy_loss(outputs, batch, lams=lams, tau=3.0)
    assert float(hot) == pytest.approx(float(policy_learning_loss(outputs / 3.0, batch, lams)), rel=1e-12)
    assert float(hot) != pytest.approx(float(policy_learning_loss(outputs, batch, lams)))


def test_ifd_hand_example_and_loss_gradient() -> None:
    batch = tiny_batch()
    # λ = 0.5, B = 3, ε = 0, HT weights w = (1/(3·0.4), 1/(3·0.4), 1/(3·0.6)), u = (0.5, 1.5, −0.25).
    # s = [[0.75, 1.5], [0.4, 0.2], [2.5, 0.75]] → ĵ = (1, 0, 0).
    # Row 0 mismatched (t=0): δ = 0.75, ΔV = +w0·u0 = 0.5/1.2; r̂ steps (+δ, −δ), ĉ steps (−δ/λ, +δ/λ).
    # Row 1 matched (t=0, j2=1): δ = 0.2, ΔV = −w1·u1 = −1.5/1.2; r̂ steps (−δ, +δ), ĉ steps (+δ/λ, −δ/λ).
    # Row 2 mismatched (t=1, ĵ=0): δ = 1.75, ΔV = +w2·u2 = −0.25/1.8; r̂ steps on (t=1, ĵ=0) = (+δ, −δ).
    dv = [0.5 / 1.2, -1.5 / 1.2, -0.25 / 1.8]
    expected_r = [[dv[0] / 0.75, -dv[0] / 0.75], [dv[1] / -0.2, dv[1] / 0.2], [-dv[2] / 1.75, dv[2] / 1.75]]
    expected_c = [[dv[0] / -1.5, dv[0] / 1.5], [dv[1] / 0.4, dv[1] / -0.4], [dv[2] / 3.5, dv[2] / -3.5]]
    outputs = tiny_outputs(requires_grad=True)
    g_r, g_c = ifd_gradients(outputs[:, :2], outputs[:, 2:], batch, 0.5, clip="none", eps=0.0)
    torch.testing.assert_close(g_r, torch.tensor(expected_r, dtype=torch.float64))
    torch.testing.assert_close(g_c, torch.tensor(expected_c, dtype=torch.float64))
    assert g_r[1, 0] == pytest.approx(6.25) and g_c[1, 0] == pytest.approx(-3.125)

    # Loss gradient with respect to the predictions is −g: descent follows the estimated ∂V.
    loss = ifd_loss(outputs, batch, lams=(0.5,), clip="none", eps=0.0)
    loss.backward()
    assert outputs.grad is not None
    torch.testing.assert_close(outputs.grad, -torch.cat([g_r, g_c], dim=1))
    carried = (g_r * outputs[:, :2]).sum() + (g_c * outputs[:, 2:]).sum()
    assert float(loss.detach()) == pytest.approx(-float(carried.detach()))


def test_ifd_truncation_fix_and_max() -> None:
    batch = tiny_batch()
    outputs = tiny_outputs()
    dv = [0.5 / 1.2, -1.5 / 1.2, -0.25 / 1.8]
    # 'fix', h = 0.5: r̂ steps |δ| = (0.75, 0.2, 1.75) keep row 1 only, ĉ steps |δ/λ| = (1.5, 0.4, 3.5) row 1 only;
    # kept cells are divided by ±h.
    g_r, g_c = ifd_gradients(outputs[:, :2], outputs[:, 2:], batch, 0.5, h=0.5, clip="fix", eps=0.0)
    expected_r = torch.tensor([[0, 0], [dv[1] / -0.5, dv[1] / 0.5], [0, 0]], dtype=torch.float64)
    expected_c = torch.tensor([[0, 0], [dv[1] / 0.5, dv[1] / -0.5], [0, 0]], dtype=torch.float64)
    torch.testing.assert_close(g_r, expected_r)
    torch.testing.assert_close(g_c, expected_c)
    # 'max': every denominator is ±(largest |step|): 1.75 for r̂, 3.5 for ĉ.
    g_r, g_c = ifd_gradients(outputs[:, :2], outputs[:, 2:], batch, 0.5, clip="max", eps=0.0)
    expected_r = torch.tensor([[dv[0], -dv[0]], [-dv[1], dv[1]], [-dv[2], dv[2]]], dtype=torch.float64) / 1.75
    torch.testing.assert_close(g_r, expected_r)
    torch.testing.assert_close(g_c, -expected_r * 1.75 / 3.5)
    # λ = 0: costs cannot move the choice.
    _, g_c0 = ifd_gradients(outputs[:, :2], outputs[:, 2:], batch, 0.0, clip="none")
    assert torch.count_nonzero(g_c0) == 0


def random_batch(n: int, k: int, generator: torch.Generator) -> FactualBatch:
    propensity = torch.rand(k, generator=generator, dtype=torch.float64) + 0.5
    propensity = propensity / propensity.sum()
    return FactualBatch(
        features=torch.zeros(n, 1, dtype=torch.float64),
        treatment=torch.multinomial(propensity, n, replacement=True, generator=generator),
        revenue=torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 0.5,
        cost=torch.rand(n, generator=generator, dtype=torch.float64),
        propensity=propensity,
    )


def eom_value(R: np.ndarray, C: np.ndarray, batch: FactualBatch, lam: float, estimator: str) -> float:
    """Brute-force V(λ) of argmax_j (R − λC) on the batch: HT (1/B)Σ_matched u/p, or Hájek."""
    t = batch.treatment.numpy()
    matched = choose(R, C, lam) == t
    ipw = 1 / batch.propensity.numpy()[t]
    reward = batch.revenue.numpy() - lam * batch.cost.numpy()
    if estimator == "ht":
        return float((matched * ipw * reward).sum() / len(t))
    return float((matched * ipw * reward).sum() / max((matched * ipw).sum(), 1e-300))


@pytest.mark.parametrize("estimator", ["ht", "hajek"])
def test_ifd_gradient_matches_brute_force_reevaluation(estimator: str) -> None:
    """g · step = V(perturbed) − V for every cell whose perturbation flips the choice the way IFD assumes."""
    generator = torch.Generator().manual_seed(7)
    n, k, lam = 40, 3, 0.7
    batch = random_batch(n, k, generator)
    R = torch.rand(n, k, generator=generator, dtype=torch.float64) * 2
    C = torch.rand(n, k, generator=generator, dtype=torch.float64)
    g_r, g_c = ifd_gradients(R, C, batch, lam, clip="none", estimator=estimator)
    R_np, C_np = R.numpy(), C.numpy()
    t = batch.treatment.numpy()
    chosen = choose(R_np, C_np, lam)
    base = eom_value(R_np, C_np, batch, lam, estimator)
    score = R_np - lam * C_np
    checked = 0
    for i in range(n):
        nonzero = np.flatnonzero(g_r[i].numpy())
        assert t[i] in nonzero and len(nonzero) == 2  # exactly the logged arm and its partner
        for j in nonzero:
            for head, g in (("r", g_r), ("c", g_c)):
                # The smallest flipping step: the score gap between t_i and its partner, plus ε.
                partner = int(nonzero[nonzero != t[i]][0])
                delta = abs(score[i, t[i]] - score[i, partner]) + 1e-6
                up = (j == t[i]) != (chosen[i] == t[i])  # raise s_ij when t must win through j, else lower
                step_score = delta if up else -delta
                Rp, Cp = R_np.copy(), C_np.copy()
                if head == "r":
                    Rp[i, j] += step_score
                    step = step_score
                else:
                    Cp[i, j] -= step_score / lam
                    step = -step_score / lam
                flipped = (choose(Rp, Cp, lam)[i] == t[i]) != (chosen[i] == t[i])
                if j == t[i]:
                    assert flipped  # moving the logged arm's own score always flips in or out of t_i
                if flipped:
                    dv = eom_value(Rp, Cp, batch, lam, estimator) - base
                    assert float(g[i, j]) == pytest.approx(dv / step, rel=1e-6, abs=1e-12)
                    assert dv != 0
                    checked += 1
    assert checked >= 3 * n


def test_ifd_fix_equals_one_sided_finite_difference_with_step_h() -> None:
    """Two arms, 'fix' truncation: g_ij = [V(+h in the flipping direction) − V]/(±h), and 0 when h does not flip."""
    generator = torch.Generator().manual_seed(11)
    n, lam, h = 30, 0.5, 0.4
    batch = random_batch(n, 2, generator)
    R = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    C = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    g_r, _ = ifd_gradients(R, C, batch, lam, h=h, clip="fix")
    R_np, C_np = R.numpy(), C.numpy()
    t = batch.treatment.numpy()
    chosen = choose(R_np, C_np, lam)
    base = eom_value(R_np, C_np, batch, lam, "ht")
    kept = 0
    for i in range(n):
        for j in range(2):
            sign = 1.0 if (j == t[i]) != (chosen[i] == t[i]) else -1.0
            Rp = R_np.copy()
            Rp[i, j] += sign * h
            expected = (eom_value(Rp, C_np, batch, lam, "ht") - base) / (sign * h)
            assert float(g_r[i, j]) == pytest.approx(expected, rel=1e-9, abs=1e-12)
            kept += expected != 0
    assert 0 < kept < 2 * n  # some cells within h of a flip, some not


def test_gradcheck_prediction_and_policy_losses() -> None:
    generator = torch.Generator().manual_seed(5)
    batch = random_batch(12, 3, generator)
    outputs = torch.randn(12, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    for loss in (
        lambda o: prediction_loss(o, batch),
        lambda o: factual_loss(o, batch),
        lambda o: policy_learning_loss(o, batch, lams=(0.1, 0.5)),
        lambda o: max_entropy_loss(o, batch, lams=(0.2, 1.0), tau=0.7),
    ):
        assert torch.autograd.gradcheck(loss, (outputs,))
    binary = FactualBatch(
        features=batch.features,
        treatment=batch.treatment,
        revenue=(batch.revenue > 0.5).double(),
        cost=(batch.cost > 0.5).double(),
        propensity=batch.propensity,
        binary_revenue=True,
        binary_cost=True,
    )
    probabilities = (torch.rand(12, 6, generator=generator, dtype=torch.float64) * 0.9 + 0.05).requires_grad_()
    assert torch.autograd.gradcheck(lambda o: prediction_loss(o, binary), (probabilities,))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradients_reach_network_parameters(name: str) -> None:
    torch.manual_seed(0)
    model = OutcomeNet(NetworkConfig(n_features=3, n_treatments=2, hidden=(8,)))
    generator = torch.Generator().manual_seed(1)
    n = 64
    batch = FactualBatch(
        features=torch.randn(n, 3, generator=generator),
        treatment=torch.randint(0, 2, (n,), generator=generator),
        revenue=torch.rand(n, generator=generator),
        cost=torch.rand(n, generator=generator),
        propensity=torch.tensor([0.3, 0.7]),
    )
    extra = {"h": 100.0} if name == "dfcl-ifd" else {}
    loss = combined_loss(model(batch.features), batch, LOSSES[name], alpha=0.0, lams=(0.1, 0.5), **extra)
    loss.backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, param_name
        assert torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, param_name


def test_combined_loss_adds_weighted_prediction_loss() -> None:
    batch = tiny_batch()
    outputs = tiny_outputs()
    combined = combined_loss(outputs, batch, LOSSES["dfcl-mer"], alpha=2.0, lams=(0.5,), tau=3.0)
    expected = 2.0 * prediction_loss(outputs, batch) + max_entropy_loss(outputs, batch, lams=(0.5,), tau=3.0)
    assert float(combined) == pytest.approx(float(expected), rel=1e-12)
    assert set(LOSSES) == {"dfcl-pl", "dfcl-mer", "dfcl-ifd"}


def test_invalid_arguments_name_the_parameter() -> None:
    batch = tiny_batch()
    outputs = tiny_outputs()
    with pytest.raises(ValueError, match="outputs has shape"):
        prediction_loss(outputs[:, :3], batch)
    with pytest.raises(ValueError, match="lams"):
        policy_learning_loss(outputs, batch, lams=())
    with pytest.raises(ValueError, match="lams"):
        ifd_loss(outputs, batch, lams=(-0.1,))
    with pytest.raises(ValueError, match="tau"):
        max_entropy_loss(outputs, batch, tau=0.0)
    with pytest.raises(ValueError, match="clip"):
        ifd_loss(outputs, batch, clip="soft")
    with pytest.raises(ValueError, match="estimator"):
        ifd_loss(outputs, batch, estimator="dr")
    with pytest.raises(ValueError, match="alpha"):
        combined_loss(outputs, batch, LOSSES["dfcl-pl"], alpha=-1.0)
    one_arm = make_batch([0, 0], [1.0, 2.0], [0.1, 0.2], [1.0])
    with pytest.raises(ValueError, match="at least 2 treatments"):
        ifd_loss(torch.ones(2, 2, dtype=torch.float64), one_arm)


def toy_surfaces(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) true revenue and cost: uplift grows with x1 (concave in the arm), cost per arm grows with x0."""
    arm = np.arange(3)[None, :]
    revenue = 1 + 0.5 * x[:, :1] + 0.8 / (1 + np.exp(-2 * x[:, 1:2])) * np.sqrt(arm)
    cost = 0.2 + arm * (0.3 + 0.2 * np.tanh(x[:, :1]))
    return revenue, cost


def test_policy_learning_training_increases_eom_value() -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    n, lam = 2000, 0.8
    x = rng.normal(size=(n, 2)).astype(np.float32)
    revenue, cost = toy_surfaces(x)
    t = rng.integers(0, 3, n)
    rows = np.arange(n)
    batch = FactualBatch(
        features=torch.as_tensor(x),
        treatment=torch.as_tensor(t),
        revenue=torch.as_tensor(revenue[rows, t] + rng.normal(0, 0.3, n), dtype=torch.float32),
        cost=torch.as_tensor(cost[rows, t] + rng.normal(0, 0.05, n), dtype=torch.float32),
        propensity=torch.full((3,), 1 / 3),
    )
    x_test = rng.normal(size=(4000, 2)).astype(np.float32)
    revenue_test, cost_test = toy_surfaces(x_test)

    def true_value(model: OutcomeNet) -> float:
        """V(λ) of the model's decisions on held-out rows, with the true surfaces."""
        with torch.no_grad():
            out = model(torch.as_tensor(x_test)).double().numpy()
        j = choose(out[:, :3], out[:, 3:], lam)
        test_rows = np.arange(len(x_test))
        return float((revenue_test[test_rows, j] - lam * cost_test[test_rows, j]).mean())

    torch.manual_seed(0)
    model = OutcomeNet(NetworkConfig(n_features=2, n_treatments=3, hidden=(16, 16)))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = true_value(model)
    for _ in range(300):
        optimiser.zero_grad()
        policy_learning_loss(model(batch.features), batch, lams=(lam,)).backward()
        optimiser.step()
    after = true_value(model)
    best_single_arm = float((revenue_test - lam * cost_test).mean(axis=0).max())
    oracle = float((revenue_test - lam * cost_test).max(axis=1).mean())
    assert after > before + 0.05
    assert best_single_arm < after <= oracle
