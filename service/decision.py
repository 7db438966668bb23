"""The decision rule and the exact λ* solver, shared by training and serving (numpy only).

Problem (METHOD.md §1): a multiple-choice knapsack. Each individual i gets one treatment j; maximise
Σ r_ij subject to Σ c_ij ≤ B. Its Lagrangian dual picks, for a multiplier λ, the treatment
argmax_j (r_ij − λ c_ij) per individual, and λ* is the smallest λ ≥ 0 whose total cost fits the budget.

`choose` is the per-individual rule the service applies. `sweep` computes the exact λ* path once for a
population: per row it keeps the upper concave hull of (cost, revenue) and sorts all hull edges by slope
(incremental ROI); the cumulative cost of the edges in that order is the cost of the policy at every λ, so a
new budget is a binary search on it (`BudgetSweep.solve`). The hull and sorting engine is `service.hull`.
`bisect_lambda` is the papers' bisection, kept for comparison and tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from service.hull import Edges, population_edges, slope_path

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]

# Scores within this relative distance of the best count as a tie, broken towards the cheaper treatment.
# At λ = λ* the arms on the breaking hull edge tie exactly in real arithmetic; rounding must not let the
# dearer one win and overspend the budget.
TIE_RTOL = 1e-9


class BudgetError(ValueError):
    """The budget cannot be met by any allocation (it is below the cheapest policy's cost)."""


REAL_KINDS = frozenset("fiu")  # numpy dtype kinds of real numbers


def _as_array(name: str, values: NDArray[np.floating] | list[list[float]]) -> NDArray[np.floating]:
    """A 2-D (individuals, treatments) numeric array, not yet converted to float64 or checked for NaN."""
    matrix = np.asarray(values)
    if matrix.ndim != 2 or matrix.shape[1] == 0:
        raise ValueError(f"{name} must be a 2-D array (individuals, treatments), got shape {matrix.shape}")
    if matrix.dtype.kind not in REAL_KINDS:
        raise ValueError(f"{name} must hold real numbers, got dtype {matrix.dtype}")
    return matrix


def _check_finite(name: str, matrix: NDArray[np.floating]) -> None:
    if not np.isfinite(matrix).all():
        raise ValueError(f"{name} contains NaN or infinite values")


def _as_matrix(name: str, values: NDArray[np.floating] | list[list[float]]) -> FloatArray:
    matrix = np.ascontiguousarray(_as_array(name, values), dtype=np.float64)
    _check_finite(name, matrix)
    return matrix


def _check_allowed(allowed: BoolArray | None, shape: tuple[int, ...]) -> BoolArray | None:
    if allowed is None:
        return None
    mask = np.asarray(allowed, dtype=bool)
    if mask.shape != shape:
        raise ValueError(f"allowed has shape {mask.shape}, expected {shape}")
    empty = ~mask.any(axis=1)
    if empty.any():
        raise ValueError(f"allowed treatments of row {int(np.flatnonzero(empty)[0])} are empty")
    return mask


def _check_pair(
    revenue: NDArray[np.floating], cost: NDArray[np.floating], allowed: BoolArray | None
) -> tuple[FloatArray, FloatArray, BoolArray | None]:
    R = _as_matrix("revenue", revenue)
    C = _as_matrix("cost", cost)
    if R.shape != C.shape:
        raise ValueError(f"revenue has shape {R.shape} but cost has shape {C.shape}")
    return R, C, _check_allowed(allowed, R.shape)


# Rows per block in `choose`: its (K, rows) temporaries stay in cache instead of streaming (N, K) arrays.
_CHOOSE_BLOCK = 32768


def choose(
    revenue: NDArray[np.floating],
    cost: NDArray[np.floating],
    lam: float,
    allowed: BoolArray | None = None,
) -> IntArray:
    """Treatment per individual: argmax_j (revenue − lam·cost) over allowed treatments, ties to the cheaper.

    revenue, cost: (N, K) predictions; allowed: optional (N, K) mask. Returns (N,) treatment indices.
    """
    if not np.isfinite(lam) or lam < 0:
        raise ValueError(f"lam must be a finite number >= 0, got {lam}")
    R, C = _as_array("revenue", revenue), _as_array("cost", cost)
    if R.shape != C.shape:
        raise ValueError(f"revenue has shape {R.shape} but cost has shape {C.shape}")
    mask = _check_allowed(allowed, R.shape)
    _check_finite("revenue", R)
    _check_finite("cost", C)
    treatment = np.empty(R.shape[0], dtype=np.int64)
    for first in range(0, R.shape[0], _CHOOSE_BLOCK):
        rows = slice(first, first + _CHOOSE_BLOCK)
        r, c = R[rows].T.astype(np.float64), C[rows].T.astype(np.float64)  # (K, rows) each, copies
        score = r - lam * c  # (K, rows)
        if mask is not None:
            score[~mask[rows].T] = -np.inf
        best = score.max(axis=0)  # (rows,)
        scale = np.abs(r).max(axis=0) + lam * np.abs(c).max(axis=0) + 1.0
        tied = score >= best - TIE_RTOL * scale  # (K, rows) near-best treatments
        # Among the tied treatments take the cheapest; equal cost → the lowest index.
        treatment[rows] = np.argmin(np.where(tied, c, np.inf), axis=0)
    return treatment


@dataclass(frozen=True)
class Solution:
    """λ* for a budget and what the policy argmax_j (r − λ*c) spends and earns on the population."""

    lam: float
    spend: float  # total expected cost, ≤ budget
    revenue: float  # total expected revenue
    population_size: int
    assignment: IntArray | None  # (N,) treatment per individual, None when not requested

    @property
    def spend_per_capita(self) -> float:
        return self.spend / self.population_size

    @property
    def revenue_per_capita(self) -> float:
        return self.revenue / self.population_size


@dataclass(frozen=True)
class BudgetSweep:
    """All hull edges of a population sorted by slope: the λ path of the policy, ready for any budget.

    Applying the edges in order of slope, descending, walks the policy from the cheapest to the
    revenue-maximising one; `cum_cost[m]` / `cum_revenue[m]` are the totals after the first m edges.
    `edges` keeps every row's start vertex and its own edges for the assignment.
    """

    n_rows: int
    edges: Edges  # per-row start vertices and hull edges (row order)
    neg_slope: FloatArray  # (E,) −Δrevenue/Δcost of each edge, ascending (ready for searchsorted)
    cum_cost: FloatArray  # (E+1,) total cost after m edges; cum_cost[0] = cheapest policy's cost
    cum_revenue: FloatArray  # (E+1,)

    @property
    def min_spend(self) -> float:
        return float(self.cum_cost[0])

    @property
    def max_spend(self) -> float:
        """Cost of the revenue-maximising policy (every positive-ROI edge taken)."""
        return float(self.cum_cost[-1])

    def _applied(self, lam: float) -> int:
        """Number of leading edges with slope > lam (the ones argmax_j (r − lam·c) takes)."""
        return int(np.searchsorted(self.neg_slope, -lam, side="left"))

    def solve(self, budget: float, with_assignment: bool = True) -> Solution:
        """Exact λ* for a total budget: O(log E) without the assignment, O(N + E) with it."""
        if not np.isfinite(budget):
            raise ValueError(f"budget must be a finite number, got {budget}")
        if budget < self.min_spend - 1e-12 * (abs(self.min_spend) + 1.0):
            raise BudgetError(
                f"budget {budget:.6g} is below the cheapest policy's cost {self.min_spend:.6g} "
                f"(every individual on their cheapest treatment); no allocation fits"
            )
        # Edges that fit: the largest m with cum_cost[m] ≤ budget.
        fits = int(np.searchsorted(self.cum_cost, budget, side="right")) - 1
        n_edges = self.neg_slope.size
        lam = 0.0 if fits >= n_edges else float(-self.neg_slope[fits])
        # The policy argmax(r − λ*c) with ties to the cheaper takes only edges strictly steeper than λ*;
        # edges with the same slope as the breaking one are left out so the budget can never be exceeded.
        m = self._applied(lam) if fits < n_edges else n_edges
        return Solution(
            lam=lam,
            spend=float(self.cum_cost[m]),
            revenue=float(self.cum_revenue[m]),
            population_size=self.n_rows,
            assignment=self._assignment(lam) if with_assignment else None,
        )

    def solve_per_capita(self, budget_per_capita: float, with_assignment: bool = True) -> Solution:
        return self.solve(budget_per_capita * self.n_rows, with_assignment=with_assignment)

    def _assignment(self, lam: float) -> IntArray:
        """(N,) treatment per row under argmax_j (r − lam·c), ties to the cheaper: the row's edges steeper than lam."""
        taken = self.edges.slope > lam  # (E,) a prefix of every row's edges
        # Treatment steps telescope along a row's taken edges; float64 counts of small integers are exact.
        moved = np.bincount(self.edges.row[taken], weights=self.edges.step[taken], minlength=self.n_rows)
        return self.edges.start.astype(np.int64) + moved.astype(np.int64)


def sweep(
    revenue: NDArray[np.floating],
    cost: NDArray[np.floating],
    allowed: BoolArray | None = None,
) -> BudgetSweep:
    """Upper concave hull of every row and all hull edges sorted by slope (METHOD.md §1, exact sweep).

    O(N·K²) for the hulls (K is small; `service.hull` works in cache-sized blocks of rows) plus one sort of
    the E ≤ N·(K−1) edges.
    """
    R, C = _as_array("revenue", revenue), _as_array("cost", cost)
    if R.shape != C.shape:
        raise ValueError(f"revenue has shape {R.shape} but cost has shape {C.shape}")
    if R.shape[1] > np.iinfo(np.int16).max:  # treatment indices are stored as int16
        raise ValueError(f"cost has {R.shape[1]} treatments; at most {np.iinfo(np.int16).max} are supported")
    edges, delta = population_edges(R, C, _check_allowed(allowed, R.shape))
    # Any order among equal slopes is fine: a budget is only ever cut at a slope boundary (`solve`).
    neg_slope, cum_cost, cum_revenue = slope_path(edges, delta)
    return BudgetSweep(n_rows=R.shape[0], edges=edges, neg_slope=neg_slope, cum_cost=cum_cost, cum_revenue=cum_revenue)


def _total_budget(n: int, budget: float | None, budget_per_capita: float | None) -> float:
    if (budget is None) == (budget_per_capita is None):
        raise ValueError("give exactly one of budget (total) or budget_per_capita")
    if budget_per_capita is not None:
        return float(budget_per_capita) * n
    return float(budget)  # type: ignore[arg-type]


def solve_lambda(
    revenue: NDArray[np.floating],
    cost: NDArray[np.floating],
    budget: float | None = None,
    *,
    budget_per_capita: float | None = None,
    allowed: BoolArray | None = None,
) -> Solution:
    """Exact λ*, assignment, spend and revenue for a total or per-capita budget (one-off sweep)."""
    population = sweep(revenue, cost, allowed)
    return population.solve(_total_budget(population.n_rows, budget, budget_per_capita))


def policy_totals(
    revenue: NDArray[np.floating], cost: NDArray[np.floating], assignment: IntArray
) -> tuple[float, float]:
    """Total (revenue, cost) of an assignment under the given per-treatment values."""
    rows = np.arange(len(assignment))
    return float(np.asarray(revenue)[rows, assignment].sum()), float(np.asarray(cost)[rows, assignment].sum())


def bisect_lambda(
    revenue: NDArray[np.floating],
    cost: NDArray[np.floating],
    budget: float | None = None,
    *,
    budget_per_capita: float | None = None,
    allowed: BoolArray | None = None,
    rtol: float = 1e-9,
    max_iter: int = 200,
) -> Solution:
    """λ* by bisection on the non-increasing cost C(λ) (Bi-DFCL Alg. 2); slower than `sweep`, same answer."""
    R, C, allowed = _check_pair(revenue, cost, allowed)
    total = _total_budget(R.shape[0], budget, budget_per_capita)

    def spend_at(lam: float) -> tuple[float, IntArray]:
        chosen = choose(R, C, lam, allowed)
        return policy_totals(R, C, chosen)[1], chosen

    spend, chosen = spend_at(0.0)
    if spend <= total:
        rev, spend = policy_totals(R, C, chosen)
        return Solution(0.0, spend, rev, R.shape[0], chosen)
    hi = 1.0
    while spend_at(hi)[0] > total:
        hi *= 2.0
        if hi > 1e300:
            raise BudgetError(f"budget {total:.6g} is below the cheapest policy's cost; no allocation fits")
    lo = 0.0
    for _ in range(max_iter):
        if hi - lo <= rtol * hi:
            break
        mid = 0.5 * (lo + hi)
        if spend_at(mid)[0] <= total:
            hi = mid
        else:
            lo = mid
    spend, chosen = spend_at(hi)
    rev, spend = policy_totals(R, C, chosen)
    return Solution(hi, spend, rev, R.shape[0], chosen)
