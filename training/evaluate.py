"""Decision quality of predicted outcomes on held-out RCT rows: EOM cost curves, AUCC, bootstrap (METHOD.md §7).

Predictions R̂, Ĉ (N, K) define a policy path through the serving solver `service.decision.sweep`: every row
starts on its cheapest hull vertex and each hull edge, taken in order of descending slope (incremental ROI),
moves one row one vertex up. The policy argmax_j (r̂ − λĉ) at any λ is a prefix of that path. EOM (DFCL §5.4,
Bi-DFCL Alg. 6) estimates a policy's per-capita revenue r̄ and cost c̄ from the RCT rows whose logged treatment
matches it, r̄ = (1/N) Σ_i r_i 1[t_i = ĵ_i] / p_{t_i}; one edge changes one row's decision, so r̄ and c̄ along the
whole path are cumulative sums, and a budget is met exactly where the papers bisect on IPW cost.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from service.decision import sweep
from training.dataset import Logs

log = logging.getLogger(__name__)

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

# Bootstrap resamples evaluated together: a (chunk, N) weight matrix and (chunk, edges) cumulative sums.
_BOOT_CHUNK = 16


@dataclass(frozen=True)
class PolicyPath:
    """The policies argmax_j (r̂ − λĉ) for every λ ≥ 0, as a start assignment plus edges by slope descending."""

    start: IntArray  # (N,) each row's treatment before any edge: its cheapest hull vertex
    edge_row: IntArray  # (E,) row each edge moves
    edge_from: IntArray  # (E,) treatment the row leaves
    edge_to: IntArray  # (E,) treatment it moves to
    edge_slope: FloatArray  # (E,) incremental ROI Δr̂/Δĉ > 0, descending

    @property
    def policies(self) -> IntArray:
        """(P,) prefix lengths m that are argmax policies: 0, E, and every m between two different slopes.

        Among edges of equal slope the served rule (ties to the cheaper treatment, `decision.choose`) takes none,
        so a budget is only ever cut at a change of slope, as `BudgetSweep.solve` does.
        """
        n = self.edge_slope.size
        inner = np.flatnonzero(self.edge_slope[1:] != self.edge_slope[:-1]) + 1
        return np.unique(np.concatenate([[0], inner, [n]])).astype(np.int64)

    def lam(self, prefix: IntArray) -> FloatArray:
        """λ of the policy after `prefix` edges: the slope of the first edge not taken (0 when all are)."""
        padded = np.append(self.edge_slope, 0.0)
        return np.asarray(padded[prefix], dtype=np.float64)

    def assignment(self, prefix: int) -> IntArray:
        """(N,) treatment per row after the first `prefix` edges."""
        chosen = self.start.copy()
        chosen[self.edge_row[:prefix]] = self.edge_to[:prefix]  # a row's edges come in its hull order
        return chosen


def policy_path(revenue: NDArray[np.floating], cost: NDArray[np.floating]) -> PolicyPath:
    """The λ path of predictions R̂, Ĉ (N, K), read off the shared solver's hulls (`service.decision.sweep`)."""
    edges = sweep(revenue, cost).edges  # start vertices and hull edges, each row's edges in hull (cost) order
    start = edges.start.astype(np.int64)
    row, step = edges.row.astype(np.int64), edges.step.astype(np.int64)  # (E,) each
    # Treatment after an edge = start + the steps of the row's edges so far: a cumulative sum within each row.
    by_row = np.argsort(row, kind="stable")  # groups a row's edges, keeping their hull order
    climbed = np.cumsum(step[by_row])
    first = np.flatnonzero(np.r_[True, row[by_row][1:] != row[by_row][:-1]])  # (rows with edges,) group starts
    sizes = np.diff(np.r_[first, row.size])
    before = np.repeat(climbed[first] - step[by_row][first], sizes)  # steps of earlier rows in the cumsum
    edge_to = np.empty_like(row)
    edge_to[by_row] = start[row[by_row]] + climbed - before
    # Along a row slopes strictly decrease, so a stable descending sort keeps each row's edges in hull order.
    order = np.argsort(-edges.slope, kind="stable")
    return PolicyPath(
        start=start,
        edge_row=row[order],
        edge_from=(edge_to - step)[order],
        edge_to=edge_to[order],
        edge_slope=np.asarray(edges.slope, dtype=np.float64)[order],
    )


@dataclass(frozen=True)
class CostCurve:
    """Per-capita revenue and cost of the policy at each budget (all arrays (L,), one entry per budget level)."""

    budgets: FloatArray  # per-capita budgets b
    lam: FloatArray  # λ of the policy chosen on IPW cost
    revenue_ipw: FloatArray  # HT EOM r̄ = (1/N) Σ r_i 1[t_i = ĵ_i] / p_{t_i}
    cost_ipw: FloatArray  # HT EOM c̄ of that policy (≤ b unless even the cheapest policy exceeds b)
    revenue_hajek: FloatArray  # self-normalised: Σ_matched r_i / p_{t_i} / Σ_matched 1 / p_{t_i}
    cost_hajek: FloatArray
    oracle_revenue: FloatArray | None = None  # true per-capita revenue of the policy chosen on true cost
    oracle_cost: FloatArray | None = None
    oracle_lam: FloatArray | None = None

    @property
    def has_oracle(self) -> bool:
        return self.oracle_revenue is not None

    def to_dict(self) -> dict[str, list[float] | None]:
        return {f.name: None if (v := getattr(self, f.name)) is None else [float(x) for x in v] for f in fields(self)}


def _check_inputs(revenue: NDArray[np.floating], cost: NDArray[np.floating], test: Logs) -> None:
    shape = (test.n_rows, test.n_treatments)
    for name, value in (("revenue", revenue), ("cost", cost)):
        if np.shape(value) != shape:
            raise ValueError(f"{name} predictions have shape {np.shape(value)}, expected {shape} for {test.source}")
    _arm_counts(test)


def _arm_counts(test: Logs) -> IntArray:
    """(K,) rows per treatment; every arm needs rows for IPW (p_j > 0) and for its mean cost."""
    counts = test.arm_counts()
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        raise ValueError(f"treatment {test.treatment_names[empty[0]]!r} has no rows in {test.source}")
    return counts


def _check_budgets(budgets: NDArray[np.floating]) -> FloatArray:
    grid = np.asarray(budgets, dtype=np.float64)
    if grid.ndim != 1 or grid.size == 0 or not np.isfinite(grid).all():
        raise ValueError(f"budgets must be a non-empty 1-D array of finite per-capita budgets, got {budgets!r}")
    return grid


def budget_grid(test: Logs, levels: int = 10) -> FloatArray:
    """(levels,) per-capita budgets from the cheapest to the dearest arm's mean cost (DESIGN.md §6).

    Data-based, so identical for every method on one test set: b_lo = min_j, b_hi = max_j of the arm's mean
    factual cost (true mean cost of everyone on arm j on oracle sets); b_k = b_lo + (b_hi − b_lo)·k/levels,
    k = 1..levels (k = 0 is the trivial all-cheapest policy).
    """
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    if test.true_cost is not None:
        arm_cost = np.asarray(test.true_cost, dtype=np.float64).mean(axis=0)  # (K,)
    else:
        arm_cost = np.bincount(test.treatment, weights=test.cost, minlength=test.n_treatments) / _arm_counts(test)
    lo, hi = float(arm_cost.min()), float(arm_cost.max())
    return lo + (hi - lo) * np.arange(1, levels + 1) / levels


@dataclass(frozen=True)
class _Matches:
    """Where the logged treatment agrees with the policy along a path: the only rows EOM sees."""

    start: NDArray[np.bool_]  # (N,) t_i = start_i
    hit_edge: IntArray  # (H,) edges that change whether their row matches, in path order
    hit_row: IntArray  # (H,)
    hit_sign: FloatArray  # (H,) +1: the row starts matching (moves onto t_i), −1: stops


def _matches(path: PolicyPath, treatment: IntArray) -> _Matches:
    logged = treatment[path.edge_row]  # (E,)
    sign = (logged == path.edge_to).astype(np.float64) - (logged == path.edge_from)
    hit = np.flatnonzero(sign)
    return _Matches(treatment == path.start, hit, path.edge_row[hit], sign[hit])


def _cumulative(first: FloatArray, steps: FloatArray, at: IntArray) -> FloatArray:
    """first (B,) plus the cumulative sum of the first at[p] steps (B, S) → (B, P)."""
    cum = np.empty((steps.shape[0], steps.shape[1] + 1))
    cum[:, 0] = 0.0
    np.cumsum(steps, axis=1, out=cum[:, 1:])
    return first[:, None] + cum[:, at]


def _matched_totals(matches: _Matches, q: FloatArray, outcomes: list[FloatArray], at: IntArray) -> FloatArray:
    """Σ_i q_i·y_i·1[t_i = policy_i] per outcome y (N,) after at[p] matching changes: q (B, N) → (B, V, P)."""
    q_hit = q[:, matches.hit_row] * matches.hit_sign  # (B, H) one gather shared by every outcome
    totals = np.empty((q.shape[0], len(outcomes), at.size))
    for v, outcome in enumerate(outcomes):
        first = (q * (outcome * matches.start)).sum(axis=1)
        totals[:, v] = _cumulative(first, q_hit * outcome[matches.hit_row], at)
    return totals


def _true_totals(path: PolicyPath, outcome: FloatArray, scale: FloatArray, prefixes: IntArray) -> FloatArray:
    """Σ_i scale[b, i]·Y[i, policy_i] after each prefix: outcome Y (N, K), scale (B, N) → (B, P)."""
    first = (scale * outcome[np.arange(outcome.shape[0]), path.start]).sum(axis=1)
    change = outcome[path.edge_row, path.edge_to] - outcome[path.edge_row, path.edge_from]  # (E,)
    return _cumulative(first, scale[:, path.edge_row] * change, prefixes)


def affordable_policy(cost: FloatArray, budgets: FloatArray) -> IntArray:
    """The IPW λ* rule: (B, L) index of the last policy before the first whose cost (B, P) exceeds each budget.

    `cost` lists the policies from the cheapest (largest λ) to the dearest (λ = 0). An estimated cost need not be
    monotone along that path; the walk stops before the first overspend rather than jumping to a dearer policy
    whose noisy estimate happens to fit again, and keeps the cheapest policy (index 0) when even it overspends.
    Used by evaluation (`eom_curve`, the bootstrap), validation (`doubly_robust_area`) and Bi-DFCL's upper loss
    (`training.upper_losses.ipw_lambdas`), so the policy the upper level optimises is the one that is scored.
    """
    ceiling = np.maximum.accumulate(cost, axis=-1)  # non-decreasing, so "first to exceed" is a binary search
    fits = np.stack([np.searchsorted(row, budgets, side="right") for row in ceiling])
    return np.maximum(fits - 1, 0).astype(np.int64)


def _ipw(
    matches: _Matches, test: Logs, weights: FloatArray, budgets: FloatArray, at: IntArray, hajek: bool
) -> tuple[IntArray, list[FloatArray]]:
    """Policy chosen on IPW cost (B, L) and [r̄, c̄(, Hájek r̄, c̄)] (B, L) each, rows weighted (B, N).

    The candidate policies are the ones after at[p] matching changes (`_matches`), in path order.
    """
    counts = np.stack([np.bincount(test.treatment, w, test.n_treatments) for w in weights])  # (B, K) arm sizes
    # w_i / (N p_{t_i}) = w_i / N_{t_i}; an arm absent from a resample has only zero-weight rows.
    q = weights / np.maximum(counts, 1.0)[:, test.treatment]  # (B, N)
    outcomes = [np.asarray(test.revenue, np.float64), np.asarray(test.cost, np.float64)]
    totals = _matched_totals(matches, q, [*outcomes, np.ones(test.n_rows)] if hajek else outcomes, at)
    chosen = affordable_policy(totals[:, 1], budgets)
    picked = np.take_along_axis(totals, chosen[:, None, :], axis=2)  # (B, V, L)
    out = [picked[:, 0], picked[:, 1]]
    if hajek:
        mass = picked[:, 2]
        safe = np.where(mass > 0, mass, 1.0)
        out += [np.where(mass > 0, picked[:, 0] / safe, 0.0), np.where(mass > 0, picked[:, 1] / safe, 0.0)]
    return chosen, out


def _oracle(
    path: PolicyPath, test: Logs, weights: FloatArray, budgets: FloatArray, prefixes: IntArray
) -> tuple[IntArray, FloatArray, FloatArray]:
    """Policy chosen on true cost (B, L) and its true per-capita revenue and cost (B, L)."""
    assert test.true_revenue is not None and test.true_cost is not None
    scale = weights / weights.sum(axis=1, keepdims=True)  # (B, N) per-capita weights
    revenue = _true_totals(path, np.asarray(test.true_revenue, np.float64), scale, prefixes)
    cost = _true_totals(path, np.asarray(test.true_cost, np.float64), scale, prefixes)
    chosen = affordable_policy(cost, budgets)
    return chosen, np.take_along_axis(revenue, chosen, 1), np.take_along_axis(cost, chosen, 1)


def eom_along_path(path: PolicyPath, test: Logs) -> tuple[FloatArray, FloatArray]:
    """IPW r̄ and c̄ (E+1,) each after every prefix m = 0..E of the path, one incremental update per edge."""
    matches = _matches(path, test.treatment)
    at = np.searchsorted(matches.hit_edge, np.arange(path.edge_row.size + 1))
    q = (1.0 / _arm_counts(test))[test.treatment][None, :]  # (1, N) 1 / (N p_{t_i})
    outcomes = [np.asarray(test.revenue, np.float64), np.asarray(test.cost, np.float64)]
    totals = _matched_totals(matches, q, outcomes, at)[0]  # (2, E+1)
    return totals[0], totals[1]


def eom_curve(
    revenue: NDArray[np.floating], cost: NDArray[np.floating], test: Logs, budgets: NDArray[np.floating]
) -> CostCurve:
    """EOM cost curve of predictions R̂, Ĉ (N, K) on RCT rows `test` at per-capita `budgets` (METHOD.md §7).

    For budget b the policy is the longest path prefix (cut at a change of slope) ending before the first policy
    whose IPW c̄ exceeds b; on oracle sets the same walk with the true outcomes, budget on true cost, gives the
    true value. If even the cheapest policy exceeds b, the cheapest policy is reported.
    """
    _check_inputs(revenue, cost, test)
    grid = _check_budgets(budgets)
    path = policy_path(revenue, cost)
    prefixes = path.policies
    weights = np.ones((1, test.n_rows))
    matches = _matches(path, test.treatment)
    at = np.searchsorted(matches.hit_edge, prefixes)  # matching changes among the first m edges, per policy
    chosen, (rev, cst, rev_h, cst_h) = _ipw(matches, test, weights, grid, at, hajek=True)
    oracle: dict[str, Any] = {}
    if test.has_oracle:
        o_chosen, o_rev, o_cost = _oracle(path, test, weights, grid, prefixes)
        oracle = {"oracle_revenue": o_rev[0], "oracle_cost": o_cost[0], "oracle_lam": path.lam(prefixes[o_chosen[0]])}
    return CostCurve(grid, path.lam(prefixes[chosen[0]]), rev[0], cst[0], rev_h[0], cst_h[0], **oracle)


def doubly_robust_area(
    revenue: NDArray[np.floating],
    cost: NDArray[np.floating],
    val: Logs,
    budgets: NDArray[np.floating],
    baseline: tuple[NDArray[np.floating], NDArray[np.floating]],
) -> float:
    """Doubly robust (AIPW) cost-curve area of predictions R̂, Ĉ (N, K) on RCT rows `val`, for model selection.

    EOM sees only the rows whose logged arm matches the policy, so on a 10k-row validation set its area moves by
    more between two epochs than the epochs differ in true value. AIPW adds an outcome model μ (`baseline`: its
    revenue and cost predictions (N, K) on `val`, fitted on other rows) and uses the logged rows only to correct
    it: r̄ = (1/N) Σ_i [μ^r_{i,ĵ_i} + 1[t_i = ĵ_i] (r_i − μ^r_{i,t_i}) / p_{t_i}], c̄ likewise. Unbiased for any
    μ (the propensities are the RCT's, estimated by N_t/N as in EOM), lower variance the better μ predicts; μ ≡ 0
    gives the IPW area. The policy at budget b is cut on this c̄, as `eom_curve` cuts on IPW cost.
    """
    _check_inputs(revenue, cost, val)
    grid = _check_budgets(budgets)
    base_revenue, base_cost = (np.asarray(b, dtype=np.float64) for b in baseline)
    _check_inputs(base_revenue, base_cost, val)
    path = policy_path(revenue, cost)
    prefixes = path.policies
    per_capita = np.full((1, val.n_rows), 1.0 / val.n_rows)
    model_revenue = _true_totals(path, base_revenue, per_capita, prefixes)[0]  # (P,) (1/N) Σ μ^r_{i,ĵ_i}
    model_cost = _true_totals(path, base_cost, per_capita, prefixes)[0]
    rows = np.arange(val.n_rows)
    residuals = [
        np.asarray(val.revenue, np.float64) - base_revenue[rows, val.treatment],  # (N,) r_i − μ^r_{i,t_i}
        np.asarray(val.cost, np.float64) - base_cost[rows, val.treatment],
    ]
    matches = _matches(path, val.treatment)
    q = (1.0 / _arm_counts(val))[val.treatment][None, :]  # (1, N) 1 / (N p_{t_i})
    correction = _matched_totals(matches, q, residuals, np.searchsorted(matches.hit_edge, prefixes))[0]  # (2, P)
    dr_revenue, dr_cost = model_revenue + correction[0], model_cost + correction[1]
    chosen = affordable_policy(dr_cost[None, :], grid)[0]  # (L,)
    return float(np.mean(dr_revenue[chosen]))


def random_curve(test: Logs, budgets: NDArray[np.floating], draws: int = 20, seed: int = 0) -> CostCurve:
    """Random allocation baseline: R̂ ~ U(0, 1) per cell, Ĉ = each arm's mean factual cost; mean over draws.

    Every field (λ included) is the average over `draws` curves evaluated exactly like a model's.
    """
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    arm_cost = np.bincount(test.treatment, weights=test.cost, minlength=test.n_treatments) / _arm_counts(test)
    cost = np.broadcast_to(arm_cost, (test.n_rows, test.n_treatments))
    rng = np.random.default_rng(seed)
    curves = [eom_curve(rng.uniform(size=cost.shape), cost, test, budgets) for _ in range(draws)]
    mean: dict[str, Any] = {}
    for f in fields(CostCurve):
        values = [getattr(curve, f.name) for curve in curves]
        mean[f.name] = None if values[0] is None else np.mean(values, axis=0)
    return CostCurve(**mean)


def oracle_optimum_curve(test: Logs, budgets: NDArray[np.floating]) -> CostCurve:
    """Upper bound on synthetic data: the policy from the true R, C, evaluated like any model's."""
    if test.true_revenue is None or test.true_cost is None:
        raise ValueError(f"{test.source} has no true outcomes (true_revenue/true_cost); the optimum needs them")
    return eom_curve(test.true_revenue, test.true_cost, test, budgets)


def curve_area(curve: CostCurve, kind: str = "ipw") -> float:
    """Normalised area under the cost curve: the mean per-capita revenue over the budget grid.

    On the evenly spaced grid this is the area under r̄(b) divided by its width (rectangle rule), the papers'
    mean EOM over budget levels. kind: "ipw" (HT EOM), "hajek" (self-normalised) or "oracle" (true value).
    """
    values = {"ipw": curve.revenue_ipw, "hajek": curve.revenue_hajek, "oracle": curve.oracle_revenue}
    if kind not in values:
        raise ValueError(f"kind must be one of {sorted(values)}, got {kind!r}")
    chosen = values[kind]
    if chosen is None:
        raise ValueError("kind 'oracle' needs a curve evaluated on a test set with true outcomes")
    return float(np.mean(chosen))


def aucc(revenue: NDArray[np.floating], cost: NDArray[np.floating], test: Logs, q: int = 200) -> float:
    """Area under the uplift cost curve for binary treatment (METHOD.md §7, DFCL code `get_uplift_model_aucc`).

    Rows sorted by (r̂_1 − r̂_0)/(ĉ_1 − ĉ_0) (|denominator| < 1e-6 → +1e-6) descending; the incremental cost and
    revenue of the top rows are Σ_{T=1} y/N_T − Σ_{T=0} y/N_C. A point is recorded the first time the cost passes
    j·Δc_tot/q (j = 1..q−1, at most one per row), then the end point; AUCC = Σ points / ((q+1)·Δr_tot).
    """
    _check_inputs(revenue, cost, test)
    if test.n_treatments != 2:
        raise ValueError(f"aucc needs exactly 2 treatments, {test.source} has {test.n_treatments}")
    if q < 1:
        raise ValueError(f"q must be >= 1, got {q}")
    r_hat, c_hat = np.asarray(revenue, np.float64), np.asarray(cost, np.float64)
    gap = c_hat[:, 1] - c_hat[:, 0]
    score = (r_hat[:, 1] - r_hat[:, 0]) / np.where(np.abs(gap) < 1e-6, 1e-6, gap)  # (N,) predicted ROI
    order = np.argsort(-score, kind="stable")
    treated = test.treatment[order] == 1
    n_treated, n_control = int(treated.sum()), int((~treated).sum())
    per_row = np.where(treated, 1.0 / n_treated, -1.0 / n_control)  # (N,) signed weight of each row's outcome
    inc_cost = np.cumsum(per_row * test.cost[order])  # (N,) after the top i+1 rows
    inc_revenue = np.cumsum(per_row * test.revenue[order])
    if inc_revenue[-1] == 0:
        raise ValueError(f"treated and control mean revenue are equal in {test.source}; AUCC is undefined")
    step = inc_cost[-1] / q
    points, start = [0.0], 0
    for j in range(1, q):
        passed = np.flatnonzero(inc_cost[start : test.n_rows - 1] >= step * j)  # the last row is the end point
        if passed.size == 0:
            break
        start += int(passed[0])
        points.append(float(inc_revenue[start]))
        start += 1
    points.append(float(inc_revenue[-1]))
    return float(np.sum(points) / ((q + 1) * inc_revenue[-1]))


def bootstrap_areas(
    predictions: Mapping[str, tuple[NDArray[Any], NDArray[Any]]],
    test: Logs,
    budgets: NDArray[np.floating],
    n_boot: int = 200,
    seed: int = 0,
    kind: str = "ipw",
) -> dict[str, FloatArray]:
    """(n_boot,) cost-curve areas per method on paired resamples of the test rows (the same for every method).

    A resample only re-weights rows (w_i = times row i was drawn; N_j and the IPW weights are re-estimated from
    it), so each method's policy path is built once and every resample is a weighted cumulative sum along it.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if kind not in ("ipw", "oracle"):
        raise ValueError(f"kind must be 'ipw' or 'oracle', got {kind!r}")
    if kind == "oracle" and not test.has_oracle:
        raise ValueError(f"kind 'oracle' needs true outcomes, {test.source} has none")
    grid = _check_budgets(budgets)
    paths: dict[str, PolicyPath] = {}
    for name, (revenue, cost) in predictions.items():
        _check_inputs(revenue, cost, test)
        paths[name] = policy_path(revenue, cost)
    matches = {name: _matches(path, test.treatment) for name, path in paths.items()}
    # Policies between two matching changes have the same EOM, so one per change suffices for r̄ at a budget.
    at = {name: np.unique(np.searchsorted(matches[name].hit_edge, path.policies)) for name, path in paths.items()}
    policies = {name: path.policies for name, path in paths.items()}
    areas = {name: np.empty(n_boot) for name in predictions}
    rng = np.random.default_rng(seed)
    n = test.n_rows
    for lo in range(0, n_boot, _BOOT_CHUNK):
        size = min(_BOOT_CHUNK, n_boot - lo)
        draws = rng.integers(0, n, size=(size, n)) + n * np.arange(size)[:, None]
        weights = np.bincount(draws.ravel(), minlength=size * n).reshape(size, n).astype(np.float64)  # (B, N)
        for name, path in paths.items():
            if kind == "ipw":
                revenue_at = _ipw(matches[name], test, weights, grid, at[name], hajek=False)[1][0]
            else:
                revenue_at = _oracle(path, test, weights, grid, policies[name])[1]
            areas[name][lo : lo + size] = revenue_at.mean(axis=1)
    log.info("bootstrap: %d resamples of %d rows for %d methods", n_boot, n, len(paths))
    return areas


class Improvement(NamedTuple):
    """Improvement % of a method over a reference, (area/area_ref − 1)·100, with a 95% percentile interval."""

    mean: float  # mean over resamples
    low: float  # 2.5th percentile
    high: float  # 97.5th percentile


def improvement(samples: Mapping[str, FloatArray], method: str, reference: str) -> Improvement:
    """Paired bootstrap improvement % of `method` over `reference` (METHOD.md §7) and its 95% interval."""
    for name in (method, reference):
        if name not in samples:
            raise ValueError(f"method {name!r} has no bootstrap samples; have {', '.join(samples)}")
    ref = samples[reference]
    if np.any(ref == 0):
        raise ValueError(f"reference {reference!r} has a zero cost-curve area in a resample; ratios are undefined")
    ratio = (samples[method] / ref - 1.0) * 100.0  # (n_boot,)
    low, high = np.percentile(ratio, [2.5, 97.5])
    return Improvement(float(ratio.mean()), float(low), float(high))
