"""The what-if budget curve of the reference population: revenue, spend, λ and treatment mix per budget.

The solver's `BudgetSweep` already holds the policy's totals along the exact λ path (cumulative cost and
revenue after the first m hull edges, steepest first). What it does not keep is *who* each edge moves, which
the treatment mix needs. `MixPath` adds that once per loaded model: every edge's source and target treatment
in the sweep's order, plus the treatment counts at every `CHECKPOINT_EDGES`-th edge, so the mix after any m
edges is one checkpoint plus fewer than `CHECKPOINT_EDGES` edge moves (O(K + CHECKPOINT_EDGES), not O(N)).
Memory: 4 bytes per edge plus the checkpoints, instead of an (E, K) table.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from service.decision import BudgetSweep
from service.lambdas import BudgetSolver

log = logging.getLogger(__name__)

CHECKPOINT_EDGES = 1024  # edges between stored count vectors: per-point work vs memory (K int64 per checkpoint)
MAX_CURVE_POINTS = 1000  # a curve request is O(points); more than a screen can show is refused (422)
INLINE_POINTS = 100  # curves up to this many points (≲ 5 ms) are computed inline: cheaper than a thread hop

IntArray = NDArray[np.int64]
Int16Array = NDArray[np.int16]


@dataclass(frozen=True)
class MixPath:
    """Treatment counts of argmax_j (r − λc) on the reference population for every λ, from its sweep."""

    sweep: BudgetSweep
    source: Int16Array  # (E,) treatment each edge moves a row from, edges in the sweep's order (slope descending)
    target: Int16Array  # (E,) treatment it moves the row to
    checkpoints: IntArray  # (E // CHECKPOINT_EDGES + 1, K) counts after c·CHECKPOINT_EDGES edges

    @classmethod
    def build(cls, sweep: BudgetSweep, n_treatments: int) -> MixPath:
        edges = sweep.edges
        n_edges = edges.slope.size
        # Each row's edges are in cost order but interleaved with other rows' (`service.hull` stores them slot by
        # slot); grouped by row, the treatment after an edge is the row's start plus the steps of its edges so far.
        by_row = np.argsort(edges.row, kind="stable")
        row, step = edges.row[by_row], edges.step[by_row].astype(np.int64)
        steps = np.cumsum(step)
        first = np.ones(n_edges, dtype=bool)
        np.not_equal(row[1:], row[:-1], out=first[1:])
        before_row = (steps - step)[first]  # cumulative step before each row's first edge
        target = np.empty(n_edges, dtype=np.int64)
        target[by_row] = edges.start[row] + steps - before_row[np.cumsum(first) - 1]
        source = target - edges.step
        # Steepest first, as the sweep applies them. Ties may be ordered differently from the sweep's, which is
        # harmless: a count is only ever read after a whole run of equal slopes (`taken` cuts at a slope).
        order = np.argsort(-edges.slope, kind="stable")
        source_sorted = source[order].astype(np.int16)
        target_sorted = target[order].astype(np.int16)
        block = np.arange(n_edges) // CHECKPOINT_EDGES + 1  # checkpoint after whose block each edge counts
        n_checkpoints = n_edges // CHECKPOINT_EDGES + 1
        size = (n_checkpoints + 1) * n_treatments
        moves = np.bincount(block * n_treatments + target_sorted, minlength=size) - np.bincount(
            block * n_treatments + source_sorted, minlength=size
        )
        moves = moves.reshape(n_checkpoints + 1, n_treatments)[:n_checkpoints]
        moves[0] = np.bincount(edges.start, minlength=n_treatments)
        return cls(sweep, source_sorted, target_sorted, np.cumsum(moves, axis=0))

    @property
    def n_treatments(self) -> int:
        return int(self.checkpoints.shape[1])

    def taken(self, lam: float) -> int:
        """Edges the policy at `lam` has taken: those strictly steeper than λ (ties go to the cheaper arm)."""
        return int(np.searchsorted(self.sweep.neg_slope, -lam, side="left"))

    def counts(self, lam: float) -> IntArray:
        """(K,) individuals of the reference population on each treatment under argmax_j (r − λc)."""
        applied = self.taken(lam)
        checkpoint = applied // CHECKPOINT_EDGES
        since = slice(checkpoint * CHECKPOINT_EDGES, applied)
        k = self.n_treatments
        return (
            self.checkpoints[checkpoint]
            + np.bincount(self.target[since], minlength=k)
            - np.bincount(self.source[since], minlength=k)
        )

    def shares(self, lam: float) -> list[float]:
        return (self.counts(lam) / self.sweep.n_rows).tolist()


_paths: weakref.WeakKeyDictionary[BudgetSolver, MixPath] = weakref.WeakKeyDictionary()
_paths_lock = threading.Lock()


def has_mix_path(solver: BudgetSolver) -> bool:
    """Whether `mix_path(solver, …)` is already built (so a call costs a dictionary lookup)."""
    with _paths_lock:
        return solver in _paths


def mix_path(solver: BudgetSolver, n_treatments: int) -> MixPath:
    """The solver's `MixPath`, built on first use and kept as long as the solver (one per loaded model)."""
    with _paths_lock:
        path = _paths.get(solver)
        if path is None:
            started = time.perf_counter()
            path = _paths[solver] = MixPath.build(solver.sweep, n_treatments)
            log.info(
                "treatment mix path of %d edges built in %.1f ms",
                solver.sweep.neg_slope.size,
                1e3 * (time.perf_counter() - started),
            )
        return path


@dataclass(frozen=True)
class CurvePoint:
    """One budget of the what-if curve and what the exact policy for it does on the reference population."""

    budget_per_capita: float
    lam: float
    spend_per_capita: float
    revenue_per_capita: float
    mix: list[float]  # share of individuals on each treatment, manifest order


def point(solver: BudgetSolver, path: MixPath, budget_per_capita: float) -> CurvePoint:
    """The policy `POST /budget` would serve for this budget (BudgetError when no allocation fits it)."""
    solution = solver.solve(budget_per_capita)
    return CurvePoint(
        budget_per_capita=budget_per_capita,
        lam=solution.lam,
        spend_per_capita=solution.spend_per_capita,
        revenue_per_capita=solution.revenue_per_capita,
        mix=path.shares(solution.lam),
    )


def budget_range(solver: BudgetSolver) -> tuple[float, float]:
    """The per-capita budgets that change the policy: the cheapest policy's spend to the λ = 0 policy's."""
    return solver.min_spend_per_capita, solver.max_spend_per_capita


def curve(solver: BudgetSolver, path: MixPath, points: int) -> list[CurvePoint]:
    """`points` budgets evenly spaced over `budget_range`, each solved exactly (points ≥ 2)."""
    if points < 2:
        raise ValueError(f"points must be at least 2, got {points}")
    low, high = budget_range(solver)
    budgets = np.linspace(low, high, points)
    budgets[-1] = high  # exactly the ceiling: linspace may round above it
    return [point(solver, path, float(budget)) for budget in budgets]
