"""The decision rule and the exact λ* solver against brute force, the LP relaxation (HiGHS) and bisection."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.optimize import linprog

from service import hull
from service.decision import (
    TIE_RTOL,
    BudgetError,
    bisect_lambda,
    choose,
    policy_totals,
    solve_lambda,
    sweep,
)


def assert_same_decisions(revenue: np.ndarray, cost: np.ndarray, lam: float, assignment: np.ndarray) -> None:
    """`assignment` equals `choose` at lam wherever the best score is not tied within TIE_RTOL."""
    chosen = choose(revenue, cost, lam)
    rows = np.arange(len(assignment))
    score = revenue - lam * cost
    scale = np.abs(revenue).max(axis=1) + lam * np.abs(cost).max(axis=1) + 1.0
    differ = assignment != chosen
    assert np.all(score[rows, assignment][differ] >= score[rows, chosen][differ] - TIE_RTOL * scale[differ])
    assert np.all(cost[rows, chosen][differ] <= cost[rows, assignment][differ])  # choose takes the cheaper


def random_population(seed: int, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, K) revenue and cost ≥ 0, treatment 0 cheapest on average (a control arm)."""
    rng = np.random.default_rng(seed)
    cost = rng.gamma(2.0, 1.0, (n, k)) * np.linspace(0.2, 1.0, k)
    revenue = cost * rng.uniform(0.3, 3.0, (n, k)) + rng.uniform(0.0, 1.0, (n, 1))
    return revenue, cost


def brute_force(revenue: np.ndarray, cost: np.ndarray, budget: float, allowed: np.ndarray | None = None) -> float:
    """Best total revenue over all K^N assignments that fit the budget (−inf if none fits)."""
    n, k = revenue.shape
    best = -np.inf
    rows = np.arange(n)
    for combo in itertools.product(range(k), repeat=n):
        chosen = np.array(combo)
        if allowed is not None and not allowed[rows, chosen].all():
            continue
        if cost[rows, chosen].sum() <= budget + 1e-12:
            best = max(best, revenue[rows, chosen].sum())
    return best


def lp_relaxation(revenue: np.ndarray, cost: np.ndarray, budget: float) -> tuple[float, float]:
    """(optimal value, dual price of the budget) of the LP relaxation of the multiple-choice knapsack."""
    n, k = revenue.shape
    one_per_row = np.kron(np.eye(n), np.ones((1, k)))  # (N, N·K): Σ_j z_ij = 1
    result = linprog(
        -revenue.ravel(),
        A_ub=cost.ravel()[None, :],
        b_ub=[budget],
        A_eq=one_per_row,
        b_eq=np.ones(n),
        bounds=(0, 1),
        method="highs",
    )
    assert result.status == 0, result.message
    return -result.fun, -result.ineqlin.marginals[0]


@pytest.mark.parametrize("seed", range(6))
def test_sweep_matches_brute_force_within_one_revenue(seed: int) -> None:
    revenue, cost = random_population(seed, n=6, k=3)
    population = sweep(revenue, cost)
    for budget in np.linspace(population.min_spend, population.max_spend * 1.1, 9):
        solution = population.solve(budget)
        assert solution.assignment is not None
        value, spend = policy_totals(revenue, cost, solution.assignment)
        assert spend <= budget * (1 + 1e-12)
        assert spend == pytest.approx(solution.spend) and value == pytest.approx(solution.revenue)
        optimum = brute_force(revenue, cost, budget)
        assert value <= optimum + 1e-9
        assert value >= optimum - revenue.max() - 1e-9  # DFCL: F(z_d) ≥ OPT − max r_ij


@pytest.mark.parametrize("seed", range(4))
def test_lp_relaxation_objective_and_dual_agree(seed: int) -> None:
    revenue, cost = random_population(100 + seed, n=40, k=4)
    population = sweep(revenue, cost)
    for budget in np.random.default_rng(seed).uniform(population.min_spend, population.max_spend, 5):
        solution = population.solve(budget, with_assignment=False)
        lp_value, lp_dual = lp_relaxation(revenue, cost, budget)
        assert solution.revenue <= lp_value + 1e-7
        assert lp_value - solution.revenue <= revenue.max(axis=1).max() + 1e-7
        assert lp_dual == pytest.approx(solution.lam, rel=1e-6)


def test_budget_below_cheapest_policy_raises() -> None:
    revenue, cost = random_population(1, n=20, k=3)
    population = sweep(revenue, cost)
    with pytest.raises(BudgetError, match="below the cheapest policy's cost"):
        population.solve(population.min_spend * 0.99)
    with pytest.raises(BudgetError, match="below the cheapest policy's cost"):
        bisect_lambda(revenue, cost, population.min_spend * 0.99)
    assert population.solve(population.min_spend).spend <= population.min_spend  # exactly the cheapest fits


def test_budget_that_does_not_bind_gives_zero_lambda() -> None:
    revenue, cost = random_population(2, n=50, k=4)
    population = sweep(revenue, cost)
    solution = population.solve(population.max_spend * 2)
    assert solution.lam == 0.0
    assert solution.spend == pytest.approx(population.max_spend)
    np.testing.assert_array_equal(solution.assignment, choose(revenue, cost, 0.0))
    assert bisect_lambda(revenue, cost, population.max_spend * 2).lam == 0.0


@pytest.mark.parametrize("seed", range(3))
def test_sweep_and_bisection_agree(seed: int) -> None:
    revenue, cost = random_population(200 + seed, n=3000, k=5)
    population = sweep(revenue, cost)
    for fraction in (0.1, 0.37, 0.8):
        budget = population.min_spend + fraction * (population.max_spend - population.min_spend)
        exact, bisected = population.solve(budget), bisect_lambda(revenue, cost, budget)
        # Bisection runs through `choose`, whose TIE_RTOL·(|r| + λ|c| + 1) tie window lets it stop a few 1e-9
        # to 1e-8 (relative) below λ*, inside the window where the breaking edge already counts as a tie.
        assert bisected.lam == pytest.approx(exact.lam, rel=1e-7)
        assert bisected.lam <= exact.lam * (1 + 1e-9)
        np.testing.assert_array_equal(bisected.assignment, exact.assignment)
        assert bisected.spend == pytest.approx(exact.spend, rel=1e-9)
        assert bisected.revenue == pytest.approx(exact.revenue, rel=1e-9)


def test_choose_breaks_ties_towards_the_cheaper_treatment() -> None:
    revenue = np.array([[1.0, 1.0, 0.5], [3.0, 5.0, 0.0], [2.0, 2.0, 2.0]])
    cost = np.array([[2.0, 1.0, 0.0], [1.0, 2.0, 9.0], [1.0, 1.0, 1.0]])
    # Row 0 at λ=0: arms 0 and 1 tie on revenue, arm 1 is cheaper. Row 1 at λ=2: 3−2·1 = 5−2·2, arm 0 cheaper.
    # Row 2: identical arms, the lowest index.
    np.testing.assert_array_equal(choose(revenue, cost, 0.0), [1, 1, 0])
    np.testing.assert_array_equal(choose(revenue, cost, 2.0), [2, 0, 0])


def test_allowed_mask_is_respected() -> None:
    revenue, cost = random_population(3, n=6, k=3)
    allowed = np.ones_like(revenue, dtype=bool)
    allowed[:, 2] = False
    allowed[0] = [False, True, False]
    population = sweep(revenue, cost, allowed)
    for budget in np.linspace(population.min_spend, population.max_spend, 6):
        solution = population.solve(budget)
        assert solution.assignment is not None
        assert allowed[np.arange(6), solution.assignment].all()
        np.testing.assert_array_equal(solution.assignment, choose(revenue, cost, solution.lam, allowed))
        value, _ = policy_totals(revenue, cost, solution.assignment)
        assert value >= brute_force(revenue, cost, budget, allowed) - revenue.max() - 1e-9
        assert bisect_lambda(revenue, cost, budget, allowed=allowed).lam == pytest.approx(solution.lam, rel=1e-7)


def test_blocks_of_rows_give_the_same_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    revenue, cost = random_population(4, n=101, k=5)
    whole = sweep(revenue, cost)
    monkeypatch.setattr(hull, "BLOCK_ROWS", 7)  # 14 full blocks and a shorter last one
    blocked = sweep(revenue, cost)
    for budget in np.linspace(whole.min_spend, whole.max_spend, 7):
        a, b = whole.solve(budget), blocked.solve(budget)
        assert (a.lam, a.spend, a.revenue) == pytest.approx((b.lam, b.spend, b.revenue), rel=1e-12)
        np.testing.assert_array_equal(a.assignment, b.assignment)


def test_ties_duplicates_and_integer_values() -> None:
    rng = np.random.default_rng(5)
    revenue = rng.integers(0, 4, (400, 5)).astype(float)
    cost = rng.integers(0, 4, (400, 5))  # integers: many equal slopes, equal costs and duplicate arms
    population = sweep(revenue, cost)
    for budget in np.linspace(population.min_spend, population.max_spend, 13):
        solution = population.solve(budget)
        np.testing.assert_array_equal(solution.assignment, choose(revenue, cost, solution.lam))
        assert solution.spend <= budget
        assert policy_totals(revenue, cost, solution.assignment) == pytest.approx((solution.revenue, solution.spend))


def test_near_equal_slopes_are_sorted_exactly() -> None:
    """Slopes a few ulps apart over a wide range: the packed sort key truncates them, the fix-up re-sorts."""
    rng = np.random.default_rng(6)
    n_edges = 4000
    d_rev, d_cost = np.exp(rng.uniform(-40, 40, n_edges)), rng.uniform(0.01, 1.0, n_edges)
    d_rev[: n_edges // 2] = d_rev[n_edges // 2 :] * (1 + 2.0**-50)
    d_cost[: n_edges // 2] = d_cost[n_edges // 2 :]
    edges = hull.Edges(
        np.zeros(1, np.int16), 0.0, 0.0, np.zeros(n_edges, np.int32), np.zeros(n_edges, np.int16), d_rev / d_cost
    )
    buffer = np.empty(n_edges + 1, dtype=np.complex128)
    buffer[:n_edges] = d_rev + 1j * d_cost
    neg_slope, cum_cost, _ = hull.slope_path(edges, buffer)
    np.testing.assert_array_equal(-neg_slope, np.sort(d_rev / d_cost)[::-1])
    order = np.argsort(-(d_rev / d_cost), kind="stable")
    np.testing.assert_allclose(cum_cost[1:], np.cumsum(d_cost[order]), rtol=1e-12)


def test_per_capita_and_one_shot_forms() -> None:
    revenue, cost = random_population(7, n=500, k=4)
    population = sweep(revenue.astype(np.float32), cost.astype(np.float32))  # model outputs are float32
    per_capita = (population.min_spend + population.max_spend) / (2 * population.n_rows)
    a = population.solve_per_capita(per_capita, with_assignment=False)
    b = solve_lambda(revenue.astype(np.float32), cost.astype(np.float32), budget_per_capita=per_capita)
    assert a.assignment is None and b.assignment is not None
    assert (a.lam, a.spend, a.revenue) == (b.lam, b.spend, b.revenue)
    assert b.spend_per_capita <= per_capita


@settings(max_examples=60, deadline=None)
@given(
    values=arrays(np.float64, st.tuples(st.integers(1, 8), st.integers(1, 4), st.just(2)), elements=st.floats(0, 10)),
    fractions=st.tuples(st.floats(0, 1.2), st.floats(0, 1.2)),
)
def test_lambda_falls_as_the_budget_rises(values: np.ndarray, fractions: tuple[float, float]) -> None:
    revenue, cost = values[..., 0], values[..., 1]
    population = sweep(revenue, cost)
    low, high = sorted(population.min_spend + f * (population.max_spend - population.min_spend) for f in fractions)
    tight, loose = population.solve(low), population.solve(high)
    assert loose.lam <= tight.lam
    for budget, solution in ((low, tight), (high, loose)):
        assert solution.spend <= budget
        # The sweep's assignment is `choose` at λ*, up to near-ties (within TIE_RTOL) that `choose` sends to the
        # cheaper arm and the exact hull may not: both are optimal for r − λ*c.
        assert solution.assignment is not None
        assert_same_decisions(revenue, cost, solution.lam, solution.assignment)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda r, c: sweep(np.where(r > 0.5, np.nan, r), c), "revenue"),
        (lambda r, c: sweep(r, np.where(c > 0.5, np.inf, c)), "cost"),
        (lambda r, c: sweep(r[:, 0], c), "revenue"),
        (lambda r, c: sweep(r, c[:, :2]), "cost"),
        (lambda r, c: sweep(r, c, allowed=np.ones((2, 2), dtype=bool)), "allowed"),
        (lambda r, c: sweep(r, c, allowed=np.zeros_like(r, dtype=bool)), "allowed"),
        (lambda r, c: choose(r, c, -1.0), "lam"),
        (lambda r, c: choose(r, c, float("nan")), "lam"),
        (lambda r, c: sweep(r, c).solve(float("nan")), "budget"),
        (lambda r, c: solve_lambda(r, c, 1.0, budget_per_capita=1.0), "budget"),
        (lambda r, c: bisect_lambda(np.full_like(r, np.nan), c, 1.0), "revenue"),
    ],
)
def test_bad_input_names_the_argument(call, name: str) -> None:  # type: ignore[no-untyped-def]
    revenue, cost = random_population(8, n=10, k=3)
    with pytest.raises(ValueError, match=name):
        call(revenue / revenue.max(), cost / cost.max())
