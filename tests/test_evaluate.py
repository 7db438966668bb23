"""Decision-quality evaluation: EOM by hand and by brute force, baselines, AUCC, bootstrap (training/evaluate.py)."""

from __future__ import annotations

import numpy as np
import pytest

from service.decision import choose
from training.dataset import Logs
from training.evaluate import aucc as aucc_metric
from training.evaluate import (
    bootstrap_areas,
    budget_grid,
    curve_area,
    doubly_robust_area,
    eom_along_path,
    eom_curve,
    improvement,
    oracle_optimum_curve,
    policy_path,
    random_curve,
)


def make_logs(
    treatment: np.ndarray,
    revenue: np.ndarray,
    cost: np.ndarray,
    n_treatments: int,
    true_revenue: np.ndarray | None = None,
    true_cost: np.ndarray | None = None,
) -> Logs:
    n = len(treatment)
    return Logs(
        features=np.zeros((n, 1), dtype=np.float32),
        treatment=np.asarray(treatment, dtype=np.int64),
        revenue=np.asarray(revenue, dtype=np.float32),
        cost=np.asarray(cost, dtype=np.float32),
        feature_names=("x",),
        treatment_names=tuple(f"arm{j}" for j in range(n_treatments)),
        true_revenue=None if true_revenue is None else true_revenue.astype(np.float32),
        true_cost=None if true_cost is None else true_cost.astype(np.float32),
        source="test",
    )


def oracle_set(n: int, k: int, seed: int, noise: float = 0.5) -> Logs:
    """RCT rows with known potential outcomes: coupon j costs j·v_i, lifts revenue by a concave, person-level gain."""
    rng = np.random.default_rng(seed)
    value = rng.uniform(0.5, 1.5, n)  # (N,) redemption-weighted face value per unit
    gain = rng.lognormal(0.0, 0.8, n)  # (N,) responsiveness
    arms = np.arange(k)
    true_cost = value[:, None] * arms[None, :]  # (N, K)
    true_revenue = 1.0 + gain[:, None] * np.sqrt(arms)[None, :]  # (N, K) diminishing returns
    treatment = rng.integers(0, k, n)
    rows = np.arange(n)
    revenue = true_revenue[rows, treatment] * rng.lognormal(-(noise**2) / 2, noise, n)
    cost = true_cost[rows, treatment]
    return make_logs(treatment, revenue, cost, k, true_revenue, true_cost)


def brute_force_eom(assignment: np.ndarray, logs: Logs) -> tuple[float, float, float]:
    """HT r̄, c̄ and Hájek r̄ of one assignment, straight from the formula (METHOD.md §7)."""
    p = logs.propensity()[logs.treatment]
    matched = logs.treatment == assignment
    n = logs.n_rows
    revenue = float(np.sum(logs.revenue.astype(float) * matched / p) / n)
    cost = float(np.sum(logs.cost.astype(float) * matched / p) / n)
    hajek = float(np.sum(logs.revenue.astype(float) * matched / p) / np.sum(matched / p))
    return revenue, cost, hajek


@pytest.fixture(scope="module")
def tiny() -> tuple[np.ndarray, np.ndarray, Logs]:
    """6 rows, 2 arms, p = 1/2; arm 1 predicted to cost 1, rows enter it in the order 3, 0, 4, 1, 5, 2."""
    logs = make_logs([0, 0, 0, 1, 1, 1], [1, 2, 3, 4, 5, 6], [0, 0, 0, 1, 2, 3], 2)
    uplift = np.array([0.5, 0.3, 0.1, 0.6, 0.4, 0.2])
    revenue = np.stack([np.zeros(6), uplift], axis=1)
    cost = np.tile([0.0, 1.0], (6, 1))
    return revenue, cost, logs


def test_tiny_table_by_hand(tiny: tuple[np.ndarray, np.ndarray, Logs]) -> None:
    revenue, cost, logs = tiny
    path = policy_path(revenue, cost)
    assert path.edge_row.tolist() == [3, 0, 4, 1, 5, 2]
    assert path.edge_from.tolist() == [0] * 6 and path.edge_to.tolist() == [1] * 6
    # r̄ = (1/6) Σ r_i 1[t_i = ĵ_i] / 0.5 = (1/3) Σ matched r_i: start with rows 0, 1, 2 matched.
    r_bar, c_bar = eom_along_path(path, logs)
    np.testing.assert_allclose(r_bar, [2, 10 / 3, 3, 14 / 3, 4, 6, 5])
    np.testing.assert_allclose(c_bar, [0, 1 / 3, 1 / 3, 1, 1, 2, 2])

    curve = eom_curve(revenue, cost, logs, np.array([0.1, 0.5, 1.0, 2.0]))
    # b = 0.5: the 3rd edge lifts c̄ to 1 > 0.5, so two edges; λ = that edge's slope 0.4.
    np.testing.assert_allclose(curve.revenue_ipw, [2, 3, 4, 5])
    np.testing.assert_allclose(curve.cost_ipw, [0, 1 / 3, 1, 2])
    np.testing.assert_allclose(curve.lam, [0.6, 0.4, 0.2, 0.0])
    np.testing.assert_allclose(curve.revenue_hajek, [2, 3, 4, 5])  # 3 of 6 rows always match here
    assert curve.oracle_revenue is None and not curve.has_oracle
    np.testing.assert_allclose(budget_grid(logs, levels=4), [0.5, 1.0, 1.5, 2.0])  # arm mean costs 0 and 2
    assert curve_area(curve) == pytest.approx(3.5)


def test_incremental_walk_equals_brute_force_at_every_prefix() -> None:
    rng = np.random.default_rng(1)
    n, k = 120, 4
    logs = make_logs(rng.choice(k, n, p=[0.4, 0.3, 0.2, 0.1]), rng.exponential(1.0, n), rng.exponential(1.0, n), k)
    # Concave-ish predictions (revenue ~ gain·√cost plus noise) with arms shuffled per row: varied start vertices,
    # several hull edges per row and a few dominated arms.
    cost = np.sort(rng.uniform(0, 2, size=(n, k)), axis=1)
    revenue = rng.lognormal(0, 0.5, (n, 1)) * np.sqrt(cost) + rng.normal(0, 0.05, (n, k))
    shuffle = np.argsort(rng.random((n, k)), axis=1)
    revenue, cost = np.take_along_axis(revenue, shuffle, 1), np.take_along_axis(cost, shuffle, 1)
    path = policy_path(revenue, cost)
    assert path.edge_row.size > n  # several edges per row on average: a real multi-step path
    r_bar, c_bar = eom_along_path(path, logs)
    for m in range(path.edge_row.size + 1):
        expected = brute_force_eom(path.assignment(m), logs)
        assert r_bar[m] == pytest.approx(expected[0], abs=1e-9)
        assert c_bar[m] == pytest.approx(expected[1], abs=1e-9)
    # Every policy on the path is the served rule argmax_j (r̂ − λĉ), ties to the cheaper.
    policies = path.policies
    for m, lam in zip(policies, path.lam(policies), strict=True):
        np.testing.assert_array_equal(path.assignment(int(m)), choose(revenue, cost, float(lam)))

    # Each budget takes the last policy before the first whose IPW c̄ exceeds it, found here by scanning.
    budgets = np.quantile(c_bar, [0.05, 0.3, 0.6, 0.9, 1.0])
    curve = eom_curve(revenue, cost, logs, budgets)
    for i, budget in enumerate(budgets):
        over = [m for m in policies if c_bar[m] > budget]
        chosen = max((m for m in policies if m < over[0]), default=0) if over else policies[-1]
        r, c, hajek = brute_force_eom(path.assignment(int(chosen)), logs)
        assert curve.revenue_ipw[i] == pytest.approx(r) and curve.cost_ipw[i] == pytest.approx(c)
        assert curve.revenue_hajek[i] == pytest.approx(hajek)
        assert curve.cost_ipw[i] <= budget + 1e-12 or chosen == 0


def test_ties_in_slope_are_taken_together() -> None:
    # Rows 0 and 1 have the same predicted ROI: the served rule takes both or neither, never one.
    logs = make_logs([0, 1, 0, 1], [1.0, 2.0, 1.0, 3.0], [0.0, 1.0, 0.0, 1.0], 2)
    revenue = np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 0.5], [0.0, 0.2]])
    cost = np.tile([0.0, 1.0], (4, 1))
    path = policy_path(revenue, cost)
    assert path.policies.tolist() == [0, 2, 3, 4]
    curve = eom_curve(revenue, cost, logs, np.array([0.4, 0.6]))
    # c̄ after rows 0, 1 is 1/2 (row 1 matches, p = 1/2): over 0.4, so nothing is taken there. Row 2 (cost 0
    # logged on control) keeps c̄ at 1/2 ≤ 0.6; row 3 would lift it to 1.
    np.testing.assert_allclose(curve.cost_ipw, [0.0, 0.5])
    np.testing.assert_allclose(curve.lam, [1.0, 0.2])


def test_perfect_knowledge_beats_random_at_every_budget() -> None:
    logs = oracle_set(6000, 3, seed=2)
    budgets = budget_grid(logs, levels=6)
    assert logs.true_cost is not None
    np.testing.assert_allclose(budgets[-1], logs.true_cost.mean(axis=0).max(), rtol=1e-6)  # all-dearest arm
    perfect = oracle_optimum_curve(logs, budgets)
    baseline = random_curve(logs, budgets, draws=5, seed=0)
    assert perfect.oracle_revenue is not None and baseline.oracle_revenue is not None
    assert np.all(perfect.oracle_revenue > baseline.oracle_revenue + 0.01)
    assert np.all(perfect.revenue_ipw > baseline.revenue_ipw)
    assert perfect.oracle_cost is not None and np.all(perfect.oracle_cost <= budgets + 1e-9)
    # A noisy model lies in between: above random, below the optimum (up to one row's revenue per capita).
    rng = np.random.default_rng(3)
    noisy = eom_curve(logs.true_revenue + rng.normal(0, 0.7, (6000, 3)), logs.true_cost, logs, budgets)
    assert curve_area(baseline, "oracle") < curve_area(noisy, "oracle") < curve_area(perfect, "oracle")
    assert np.all(noisy.oracle_revenue <= perfect.oracle_revenue + logs.true_revenue.max() / logs.n_rows)


def test_input_errors_name_the_parameter(tiny: tuple[np.ndarray, np.ndarray, Logs]) -> None:
    revenue, cost, logs = tiny
    with pytest.raises(ValueError, match="revenue predictions have shape"):
        eom_curve(revenue[:5], cost, logs, np.array([1.0]))
    with pytest.raises(ValueError, match="budgets"):
        eom_curve(revenue, cost, logs, np.array([np.nan]))
    with pytest.raises(ValueError, match="treatment 'arm1' has no rows"):
        eom_curve(revenue[:3], cost[:3], logs.subset(np.arange(3)), np.array([1.0]))
    with pytest.raises(ValueError, match="levels"):
        budget_grid(logs, levels=0)
    with pytest.raises(ValueError, match="true outcomes"):
        oracle_optimum_curve(logs, np.array([1.0]))
    with pytest.raises(ValueError, match="kind 'oracle'"):
        curve_area(eom_curve(revenue, cost, logs, np.array([1.0])), "oracle")


def aucc_loop(treated: np.ndarray, y_r: np.ndarray, y_c: np.ndarray, score: np.ndarray, q: int) -> float:
    """METHOD.md §7's AUCC written as the DFCL code's row-by-row loop, to check the vectorised version."""
    order = np.argsort(-score, kind="stable")
    treated, y_r, y_c = treated[order], y_r[order], y_c[order]
    n_t, n_c = treated.sum(), (~treated).sum()
    delta_r = y_r[treated].mean() - y_r[~treated].mean()
    delta_c = y_c[treated].mean() - y_c[~treated].mean()
    points, j, cost_t, cost_c, rev_t, rev_c = [0.0], 1, 0.0, 0.0, 0.0, 0.0
    for i in range(len(treated)):
        if treated[i]:
            cost_t, rev_t = cost_t + y_c[i], rev_t + y_r[i]
        else:
            cost_c, rev_c = cost_c + y_c[i], rev_c + y_r[i]
        if i == len(treated) - 1 or (j < q and cost_t / n_t - cost_c / n_c >= delta_c / q * j):
            points.append(rev_t / n_t - rev_c / n_c)
            j += 1
    return float(np.sum(points) / (delta_r * (q + 1)))


def binary_set(n: int, seed: int) -> tuple[Logs, np.ndarray, np.ndarray]:
    """Binary treatment with heterogeneous uplift in revenue and cost; returns logs and the true R, C (N, 2)."""
    rng = np.random.default_rng(seed)
    uplift = rng.beta(1, 4, n)  # (N,) revenue uplift
    extra_cost = rng.uniform(0.1, 0.3, n)  # (N,) cost uplift
    true_revenue = np.stack([np.full(n, 0.1), 0.1 + uplift], axis=1)
    true_cost = np.stack([np.zeros(n), extra_cost], axis=1)
    treatment = rng.integers(0, 2, n)
    rows = np.arange(n)
    revenue = rng.binomial(1, np.clip(true_revenue[rows, treatment], 0, 1)).astype(float)
    logs = make_logs(treatment, revenue, true_cost[rows, treatment], 2, true_revenue, true_cost)
    return logs, true_revenue, true_cost


def test_aucc_matches_the_reference_loop_and_ranks_perfect_above_random() -> None:
    logs, true_revenue, true_cost = binary_set(4000, seed=4)
    rng = np.random.default_rng(5)
    cost_hat = true_cost + rng.normal(0, 0.05, true_cost.shape)
    cost_hat[:50, 1] = cost_hat[:50, 0]  # zero denominators → 1e-6
    revenue_hat = true_revenue + rng.normal(0, 0.05, true_revenue.shape)
    gap = cost_hat[:, 1] - cost_hat[:, 0]
    score = (revenue_hat[:, 1] - revenue_hat[:, 0]) / np.where(np.abs(gap) < 1e-6, 1e-6, gap)
    for q in (20, 200):
        expected = aucc_loop(logs.treatment == 1, logs.revenue.astype(float), logs.cost.astype(float), score, q)
        assert aucc_metric(revenue_hat, cost_hat, logs, q=q) == pytest.approx(expected, rel=1e-9)

    perfect = aucc_metric(true_revenue, true_cost, logs)
    random = [aucc_metric(rng.uniform(size=(4000, 2)), true_cost, logs) for _ in range(10)]
    assert abs(np.mean(random) - 0.5) < 0.04
    assert perfect > 0.6 > max(random)


def test_bootstrap_is_paired_deterministic_and_covers_the_point_estimate() -> None:
    logs = oracle_set(3000, 3, seed=6)
    assert logs.true_revenue is not None and logs.true_cost is not None
    budgets = budget_grid(logs, levels=5)
    rng = np.random.default_rng(7)
    predictions = {
        "tsm": (logs.true_revenue + rng.normal(0, 1.0, (3000, 3)), logs.true_cost),
        "good": (logs.true_revenue + rng.normal(0, 0.2, (3000, 3)), logs.true_cost),
    }
    predictions["copy"] = predictions["tsm"]
    samples = bootstrap_areas(predictions, logs, budgets, n_boot=60, seed=11)
    assert set(samples) == {"tsm", "good", "copy"} and samples["tsm"].shape == (60,)
    again = bootstrap_areas(predictions, logs, budgets, n_boot=60, seed=11)
    for name in samples:
        np.testing.assert_array_equal(samples[name], again[name])
    assert not np.array_equal(samples["tsm"], bootstrap_areas(predictions, logs, budgets, n_boot=60, seed=12)["tsm"])

    same = improvement(samples, "copy", "tsm")  # paired: identical predictions differ by exactly zero
    assert same.mean == same.low == same.high == 0.0
    point = {name: curve_area(eom_curve(*pred, logs, budgets)) for name, pred in predictions.items()}
    gain = improvement(samples, "good", "tsm")
    point_gain = (point["good"] / point["tsm"] - 1) * 100
    assert gain.low < point_gain < gain.high
    assert gain.low < gain.mean < gain.high
    assert abs(samples["tsm"].mean() - point["tsm"]) < 3 * samples["tsm"].std()

    oracle = bootstrap_areas(predictions, logs, budgets, n_boot=20, seed=11, kind="oracle")
    assert improvement(oracle, "good", "tsm").low > 0  # true value: less noise is better on every resample
    with pytest.raises(ValueError, match="no bootstrap samples"):
        improvement(samples, "dfcl", "tsm")


def test_doubly_robust_area_with_a_zero_outcome_model_is_the_ipw_area() -> None:
    test = oracle_set(3000, 4, seed=5)
    revenue, cost = noisy_predictions(test, seed=1)
    budgets = budget_grid(test)
    zero = (np.zeros_like(revenue), np.zeros_like(cost))
    ipw = curve_area(eom_curve(revenue, cost, test, budgets), "ipw")
    assert doubly_robust_area(revenue, cost, test, budgets, zero) == pytest.approx(ipw, rel=1e-12)


def test_doubly_robust_area_with_the_true_outcomes_and_no_noise_is_the_true_value() -> None:
    test = oracle_set(3000, 4, seed=6, noise=0.0)
    revenue, cost = noisy_predictions(test, seed=2)
    budgets = budget_grid(test)
    truth = (np.asarray(test.true_revenue, np.float64), np.asarray(test.true_cost, np.float64))
    oracle = curve_area(eom_curve(revenue, cost, test, budgets), "oracle")
    assert doubly_robust_area(revenue, cost, test, budgets, truth) == pytest.approx(oracle, rel=1e-6)


def test_doubly_robust_area_tracks_the_true_value_closer_than_ipw() -> None:
    """Over fresh validation sets, an imperfect outcome model (the truth, shrunk and shifted) cuts the error."""
    errors: dict[str, list[float]] = {"ipw": [], "dr": []}
    for seed in range(12):
        test = oracle_set(2000, 4, seed=100 + seed, noise=0.3)
        revenue, cost = noisy_predictions(test, seed=seed)
        budgets = budget_grid(test)
        rough = (0.8 * np.asarray(test.true_revenue) + 0.3, np.asarray(test.true_cost) * 1.1)
        curve = eom_curve(revenue, cost, test, budgets)
        truth = curve_area(curve, "oracle")
        errors["ipw"].append(curve_area(curve, "ipw") - truth)
        errors["dr"].append(doubly_robust_area(revenue, cost, test, budgets, rough) - truth)
    rmse = {kind: float(np.sqrt(np.mean(np.square(e)))) for kind, e in errors.items()}
    assert rmse["dr"] < 0.7 * rmse["ipw"], rmse  # the rows differ more than their noise, as in coupon data


def test_doubly_robust_area_rejects_a_baseline_of_the_wrong_shape() -> None:
    test = oracle_set(200, 3, seed=7)
    revenue, cost = noisy_predictions(test, seed=0)
    with pytest.raises(ValueError, match="revenue predictions have shape"):
        doubly_robust_area(revenue, cost, test, budget_grid(test), (revenue[:, :2], cost))


def noisy_predictions(test: Logs, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The true outcomes plus noise: a reasonable but imperfect model."""
    rng = np.random.default_rng(seed)
    assert test.true_revenue is not None and test.true_cost is not None
    revenue = np.asarray(test.true_revenue, np.float64) + rng.normal(0.0, 0.3, test.true_revenue.shape)
    cost = np.asarray(test.true_cost, np.float64) * rng.uniform(0.9, 1.1, test.true_cost.shape)
    return revenue, cost
