"""PPL, PIFD and the IPW λ* bisection on tiny hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from service.decision import choose
from training.batch import FactualBatch, full_batch
from training.dataset import Logs
from training.evaluate import eom_curve
from training.losses import truncated_difference
from training.upper_losses import (
    ipw_cost_path,
    ipw_lambda,
    ipw_lambdas,
    ipw_policy_value,
    pifd_gradient,
    pifd_loss,
    ppl_loss,
)


def make_batch(treatment: list[int], revenue: list[float], cost: list[float], propensity: list[float]) -> FactualBatch:
    n = len(treatment)
    return FactualBatch(
        features=torch.zeros(n, 1),
        treatment=torch.tensor(treatment),
        revenue=torch.tensor(revenue),
        cost=torch.tensor(cost),
        propensity=torch.tensor(propensity),
    )


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_ppl_matches_hand_computation() -> None:
    batch = make_batch([0, 1], revenue=[2.0, 3.0], cost=[0.0, 0.0], propensity=[0.25, 0.75])
    revenue_hat = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    cost_hat = torch.tensor([[0.5, 1.0], [0.5, 1.0]])
    loss = ppl_loss(revenue_hat, cost_hat, batch, lam=1.0, tau=0.5)
    # Scores/τ: row 0 (0.5, −1)/0.5 = (1, −2) → z′_00 = σ(3); row 1 (−0.5, 0)/0.5 → z′_11 = σ(1).
    # IPW 1/p = 4 and 4/3: L = −(1/2)[σ(3)·2·4 + σ(1)·3·4/3].
    expected = -0.5 * (8 * sigmoid(3.0) + 4 * sigmoid(1.0))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert revenue_hat.grad is not None
    # Raising the logged arm's score lowers the loss; raising the other arm's raises it.
    assert revenue_hat.grad[0, 0] < 0 < revenue_hat.grad[0, 1]
    assert revenue_hat.grad[1, 1] < 0 < revenue_hat.grad[1, 0]


def pifd_example() -> tuple[torch.Tensor, FactualBatch]:
    """Row 0 matched (ĵ = t = 0), row 1 mismatched (t = 2, ĵ = 1); λ = 0 so the scores are r̂."""
    scores = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.5]])
    batch = make_batch([0, 2], revenue=[2.0, 1.0], cost=[0.0, 0.0], propensity=[0.5, 0.25, 0.25])
    return scores, batch


def pifd(scores: torch.Tensor, batch: FactualBatch, **kw: object) -> torch.Tensor:
    return pifd_gradient(scores, torch.zeros_like(scores), batch, 0.0, **kw)  # type: ignore[arg-type]


def test_pifd_gradient_matches_algorithm_3_by_hand() -> None:
    scores, batch = pifd_example()
    # q = r/(N p_t) = (2/(2·0.5), 1/(2·0.25)) = (2, 2).
    # Row 0: h_00 = max(1, 0) − 3 = −2 → G = −q/h = 1; h_01 = 3 − 1 = 2 → −1; h_02 = 3 → −2/3.
    # Row 1: h_12 = a_11 − a_12 = 0.5 → G = q/h = 4; h_11 = −0.5 → G = −4; G_10 = 0.
    expected = torch.tensor([[1.0, -1.0, -2.0 / 3.0], [0.0, -4.0, 4.0]])
    G = pifd(scores, batch, clip="none", eps=0.0)
    assert torch.allclose(G, expected)


def test_pifd_truncates_as_dfcl_ifd() -> None:
    """'fix': cells with |h| < h_max get ±q/h_max, the rest 0 (IFD's rule); 'max': ±q/max|h| over the batch."""
    scores, batch = pifd_example()
    # |h| = (2, 2, 3) on row 0 and 0.5 on row 1's two cells; q = 2 everywhere.
    fixed = pifd(scores, batch, h=1.0, clip="fix")
    assert torch.allclose(fixed, torch.tensor([[0.0, 0.0, 0.0], [0.0, -2.0, 2.0]]))
    fixed_wide = pifd(scores, batch, h=2.5, clip="fix")
    assert torch.allclose(fixed_wide, torch.tensor([[0.8, -0.8, 0.0], [0.0, -0.8, 0.8]]))
    widest = pifd(scores, batch, clip="max")
    assert torch.allclose(widest, torch.tensor([[2 / 3, -2 / 3, -2 / 3], [0.0, -2 / 3, 2 / 3]]), atol=1e-6)
    # The same function truncates DFCL-IFD's finite differences (one rule for both).
    change, step = torch.tensor([2.0, -2.0]), torch.tensor([0.5, 3.0])
    assert torch.equal(truncated_difference(change, step, 1.0, "fix"), torch.tensor([2.0, 0.0]))


def test_pifd_breaks_ties_towards_the_cheaper_arm_as_the_service() -> None:
    """A tie between the logged arm and a dearer one is the served choice of the logged (cheaper) arm: matched."""
    revenue_hat = torch.tensor([[1.0, 2.0]])  # scores at λ = 1: (1 − 0, 2 − 1) = (1, 1), a tie
    cost_hat = torch.tensor([[0.0, 1.0]])
    batch = make_batch([0], revenue=[1.0], cost=[0.0], propensity=[0.5, 0.5])
    assert choose(revenue_hat.double().numpy(), cost_hat.double().numpy(), 1.0)[0] == 0
    G = pifd_gradient(revenue_hat, cost_hat, batch, 1.0, clip="none")
    # Matched (ĵ = t = 0): the logged cell is pushed up (G > 0) and the rival down; argmax would call it
    # mismatched with ĵ = 1 and flip both signs' meaning (G_00 = +q/h, G_01 = −q/h on a *mismatched* row).
    q = 1.0 * 2.0 / 1
    assert G[0, 0] == pytest.approx(q / 1e-6, rel=1e-3) and G[0, 1] == pytest.approx(-q / 1e-6, rel=1e-3)
    # The rule ran: with argmax ĵ = 1 ≠ t, and a cheaper tie-break it must not be taken.
    ppl_revenue = revenue_hat.clone()
    ppl_revenue[0, 1] += 1e-3  # now arm 1 wins outright: mismatched, G_01 < 0 < G_00 with |h| = 1e-3
    G2 = pifd_gradient(ppl_revenue, cost_hat, batch, 1.0, clip="none")
    assert G2[0, 0] == pytest.approx(q / (1e-3 + 1e-6), rel=1e-3)


def test_pifd_loss_is_minus_g_dot_softmax() -> None:
    scores, batch = pifd_example()
    revenue_hat = scores.clone().requires_grad_()
    cost_hat = torch.ones(2, 3)
    loss = pifd_loss(revenue_hat, cost_hat, batch, lam=0.0, tau=2.0, clip="none")
    G = pifd(scores, batch, clip="none")
    z = torch.softmax(scores / 2.0, dim=1)
    assert loss.item() == pytest.approx(float((-G * z).sum()), rel=1e-6)
    loss.backward()
    assert revenue_hat.grad is not None
    # Mismatched row 1: the logged arm (2) is pushed up, the chosen one (1) down.
    assert revenue_hat.grad[1, 2] < 0 < revenue_hat.grad[1, 1]


def lambda_example() -> tuple[np.ndarray, np.ndarray, FactualBatch]:
    """Row i prefers arm 1 iff λ < i + 1; arm-1 rows 1 and 3 cost 1, so c̄(λ) = 0.5·1[λ<2] + 0.5·1[λ<4]."""
    revenue_hat = np.array([[0.0, 1.0], [0.0, 2.0], [0.0, 3.0], [0.0, 4.0]])
    cost_hat = np.array([[0.0, 1.0]] * 4)
    batch = make_batch([0, 1, 0, 1], revenue=[1.0, 2.0, 3.0, 4.0], cost=[0.0, 1.0, 0.0, 1.0], propensity=[0.5, 0.5])
    return revenue_hat, cost_hat, batch


@pytest.mark.parametrize(("budget", "expected"), [(1.0, 0.0), (0.5, 2.0), (0.6, 2.0), (0.3, 4.0), (-1.0, 4.0)])
def test_ipw_lambda_on_a_monotone_cost_path(budget: float, expected: float) -> None:
    revenue_hat, cost_hat, batch = lambda_example()
    lam = ipw_lambda(revenue_hat, cost_hat, batch, budget)
    assert lam == expected
    if budget >= 0:
        assert ipw_policy_value(revenue_hat, cost_hat, batch, lam)[1] <= budget


def test_ipw_cost_path_matches_choose_at_every_step() -> None:
    """The exact step function agrees with `service.decision.choose` inside and at the start of each step."""
    rng = np.random.default_rng(0)
    n, k = 300, 4
    revenue_hat = rng.normal(size=(n, k)) + np.arange(k)  # dearer arms earn more on average
    cost_hat = np.abs(rng.normal(size=(n, k))) + np.arange(k, dtype=np.float64)
    cost_hat[:5, 1] = cost_hat[:5, 2]  # some equal-cost rivals
    treatment = rng.integers(0, k, size=n)
    batch = make_batch(treatment.tolist(), rng.random(n).tolist(), rng.random(n).tolist(), [0.4, 0.3, 0.2, 0.1])
    breaks, cost = ipw_cost_path(revenue_hat, cost_hat, batch)
    assert breaks[0] == 0.0 and np.all(np.diff(breaks) > 0)
    ends = np.append(breaks[1:], breaks[-1] + 1.0)
    for lam, value in zip(np.concatenate([breaks, 0.5 * (breaks + ends)]), np.concatenate([cost, cost]), strict=True):
        assert ipw_policy_value(revenue_hat, cost_hat, batch, float(lam))[1] == pytest.approx(value, abs=1e-12)
    # λ* for several budgets at once: walking from the cheapest step (largest λ) down, the last one that fits.
    budgets = [float(np.quantile(cost, q)) for q in (0.2, 0.5, 0.9)]
    for budget, lam in zip(budgets, ipw_lambdas(revenue_hat, cost_hat, batch, budgets), strict=True):
        index = int(np.searchsorted(breaks, lam))
        assert breaks[index] == lam and np.all(cost[index:] <= budget)
        assert index == 0 or cost[index - 1] > budget


def test_upper_loss_lambda_picks_the_policy_evaluation_scores() -> None:
    """One IPW λ* rule: on random problems the upper loss's λ* realises the policy `eom_curve` reports.

    The old rule (smallest λ whose IPW cost fits) jumped past an overspending policy to a dearer one whose noisy
    cost estimate fit again; evaluation stops before the first overspend. They disagreed on ~20% of cases.
    """
    rng = np.random.default_rng(1)
    differs = 0
    for _ in range(60):
        n, k = 300, 4
        revenue_hat = rng.normal(size=(n, k)) + np.arange(k)
        cost_hat = np.abs(rng.normal(size=(n, k))) + np.arange(k, dtype=np.float64)
        treatment = rng.integers(0, k, size=n)
        treatment[:k] = np.arange(k)  # every arm logged
        logs = Logs(
            features=np.zeros((n, 1), np.float32), treatment=treatment.astype(np.int64),
            revenue=rng.exponential(size=n).astype(np.float32), cost=rng.exponential(size=n).astype(np.float32),
            feature_names=("x",), treatment_names=tuple(f"t{j}" for j in range(k)),
        )  # fmt: skip
        batch = full_batch(logs)
        budgets = np.sort(rng.uniform(0.05, 1.2, size=6))
        curve = eom_curve(revenue_hat, cost_hat, logs, budgets)
        breaks, path_cost = ipw_cost_path(revenue_hat, cost_hat, batch)
        for b, lam, revenue, cost in zip(
            budgets, ipw_lambdas(revenue_hat, cost_hat, batch, budgets), curve.revenue_ipw, curve.cost_ipw,
            strict=True,
        ):  # fmt: skip
            inside = lam * (1 + 1e-9) + 1e-12  # inside λ*'s step, off the tie at its start
            got = ipw_policy_value(revenue_hat, cost_hat, batch, inside)
            assert got == pytest.approx((revenue, cost), rel=1e-5, abs=1e-6)
            smallest_fitting = breaks[np.flatnonzero(path_cost <= b)[0]] if np.any(path_cost <= b) else breaks[-1]
            differs += smallest_fitting != lam
    assert differs > 0  # the problems do exercise a non-monotone cost path


def test_ipw_policy_value_horvitz_thompson() -> None:
    revenue_hat, cost_hat, batch = lambda_example()
    # λ = 2.5: rows 0, 1 take arm 0 and rows 2, 3 arm 1; matched are row 0 (t = 0) and row 3 (t = 1), IPW 2 each.
    revenue, cost = ipw_policy_value(revenue_hat, cost_hat, batch, 2.5)
    assert revenue == pytest.approx((1.0 * 2 + 4.0 * 2) / 4)
    assert cost == pytest.approx(1.0 * 2 / 4)


def test_losses_reject_bad_parameters() -> None:
    scores, batch = pifd_example()
    with pytest.raises(ValueError, match="tau"):
        ppl_loss(scores, torch.zeros(2, 3), batch, lam=0.0, tau=0.0)
    with pytest.raises(ValueError, match="clip"):
        pifd(scores, batch, clip="quantile")
    revenue_hat, cost_hat, lam_batch = lambda_example()
    with pytest.raises(ValueError, match="budget_per_capita"):
        ipw_lambda(revenue_hat, cost_hat, lam_batch, float("nan"))
