"""Upper concave hulls of every row's (cost, revenue) points and their edges sorted by slope (numpy only).

The engine behind `service.decision.sweep` (METHOD.md §1, exact sweep). Rows are processed in blocks with one
contiguous 1-D array per treatment, so each numpy call works on thousands of float64 values that stay in
cache, with no per-row Python loop and no (N, K) temporary. Every block reuses one set of buffers: on the
shared VMs a fresh 0.5 MB numpy temporary costs more in page faults than the arithmetic done on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
Int16Array = NDArray[np.int16]
Int32Array = NDArray[np.int32]
ComplexArray = NDArray[np.complex128]

# Rows per block: large enough to amortise numpy's per-call overhead, small enough for the (K, rows) buffers
# of one block to stay in cache (measured: 4096 rows ~40% slower, 65536 no faster).
BLOCK_ROWS = 16384


@dataclass(frozen=True)
class Edges:
    """Every row's start vertex and its hull edges, in row order (what the assignment at a given λ needs).

    Edge e moves row `row[e]` from one hull vertex to the next (dearer) one: treatment += `step[e]`, at
    incremental ROI `slope[e]` > 0. A row's edges have strictly decreasing slopes, so argmax_j (r − λc) has
    taken exactly its edges with slope > λ.
    """

    start: Int16Array  # (N,) treatment of each row's cheapest hull vertex
    start_cost: float  # Σ_i cost of the start vertex
    start_revenue: float  # Σ_i revenue of the start vertex
    row: Int32Array  # (E,)
    step: Int16Array  # (E,) change of treatment index along the edge
    slope: FloatArray  # (E,) Δrevenue / Δcost


class _Block:
    """Buffers for the hulls of one block of `n` rows and K treatments, arms in cost order once sorted."""

    def __init__(self, k: int, n: int) -> None:
        self.k, self.n = k, n
        self.cost, self.revenue = np.empty((k, n)), np.empty((k, n))  # (K, rows) input columns
        self.arm = np.repeat(np.arange(k, dtype=np.int16)[:, None], n, axis=1)  # (K, rows) treatment index
        self.column = np.arange(n, dtype=np.int32)  # (rows,)
        self.flag = np.empty((k, n), dtype=bool)  # (K, rows) scratch
        self.rank = np.empty((k, n), dtype=np.int16)
        self.position = np.empty((k, n), dtype=np.intp)
        self.sorted_cost, self.sorted_revenue = np.empty((k, n)), np.empty((k, n))
        self.sorted_arm = np.empty((k, n), dtype=np.int16)
        self.lo, self.hi = np.empty((k, n)), np.empty((k, n))  # (K, rows) each arm's interval of optimal λ
        self.slopes, self.gaps = np.empty((k - 1, n)), np.empty((k - 1, n))
        self.live = np.empty((k, n), dtype=bool)
        self.level = np.arange(1, k + 1, dtype=np.int16)[:, None]  # (K, 1) position + 1
        self.last = np.empty((k, n), dtype=np.int16)  # (K, rows) 1 + position of the last live vertex so far
        self.start = np.empty((k, n), dtype=bool)
        self.start_arm = np.empty(n, dtype=np.int16)
        self.arm_scratch = np.empty((k, n), dtype=np.int16)
        self.edge = np.empty((k - 1, n), dtype=bool)  # (K−1, rows) an edge leads into position slot + 1
        self.origin = np.empty((k - 1, n), dtype=np.intp)  # (K−1, rows) flat index of the edge's origin vertex
        self.origin_cost, self.origin_rev = np.empty((k - 1, n)), np.empty((k - 1, n))
        self.origin_arm = np.empty((k - 1, n), dtype=np.int16)
        self.step = np.empty((k - 1, n), dtype=np.int16)
        self.edge_slope = np.empty((k - 1, n))
        self.d_cost, self.d_rev = np.empty((k - 1, n)), np.empty((k - 1, n))
        self.edge_column = np.repeat(self.column[None, :], k - 1, axis=0)  # (K−1, rows) row within the block

    def load(self, name: str, values: NDArray[np.floating], rows: slice, into: FloatArray) -> None:
        """Copy a row block of (N, K) `values` into (K, rows) `into` as float64; NaN/inf → ValueError."""
        np.copyto(into, values[rows].T)
        np.isfinite(into, out=self.flag)
        if not self.flag.all():
            raise ValueError(f"{name} contains NaN or infinite values")

    def sort_by_cost(self) -> tuple[FloatArray, FloatArray, Int16Array]:
        """Arms of every row in cost order: (K, rows) costs, revenues and treatments, cheapest first.

        Each arm's position is its rank, counted from one comparison per pair of treatments, and the arms are
        then scattered there: about K²/2 cheap passes instead of a sorting network's swaps. Equal costs keep
        treatment order (a stable sort), so among exact duplicates the lowest treatment survives, as in `choose`.
        """
        k, n, cost = self.k, self.n, self.cost
        np.less_equal(cost[:-1], cost[1:], out=self.flag[:-1])
        if self.flag[:-1].all():  # common when costs grow with the treatment index
            return cost, self.revenue, self.arm
        self.rank[...] = self.arm
        for a in range(k):
            for b in range(a + 1, k):
                b_first = np.less(cost[b], cost[a], out=self.flag[0])  # strict: equal costs keep treatment order
                np.add(self.rank[a], b_first, out=self.rank[a])
                np.subtract(self.rank[b], b_first, out=self.rank[b])
        self.position[...] = self.rank
        self.position *= n  # in intp: rank · rows overflows int16
        self.position += self.column
        destination = self.position.ravel()  # (K·rows,) flat position of each arm after sorting
        self.sorted_cost.ravel()[destination] = cost.ravel()
        self.sorted_revenue.ravel()[destination] = self.revenue.ravel()
        self.sorted_arm.ravel()[destination] = self.arm.ravel()
        return self.sorted_cost, self.sorted_revenue, self.sorted_arm

    def hull(self, usable: BoolArray | None) -> tuple[FloatArray, FloatArray, Int16Array]:
        """Upper concave hulls of the loaded rows; fills `start`, `start_arm` and the (K−1, rows) edge slots.

        usable: optional (K, rows) mask. Arm j is a hull vertex reached at some λ ≥ 0 iff its interval
        [lo_j, hi_j] of optimal λ has positive length above 0, where lo_j = max slope to a dearer arm and
        hi_j = min slope from a cheaper one. Every live vertex after the cheapest is reached by an edge from the
        previous live one. Returns the (K, rows) costs, revenues and treatments in cost order.
        """
        k, n, lo, hi = self.k, self.n, self.lo, self.hi
        if usable is not None:
            np.logical_not(usable, out=self.flag)
            np.copyto(self.revenue, -np.inf, where=self.flag)  # never optimal: any allowed arm beats it
        cost, revenue, arm = self.sort_by_cost()
        hi.fill(np.inf)
        lo[k - 1] = -np.inf
        with np.errstate(all="ignore"):  # ±inf and NaN below are meant
            for a in range(k - 1):
                # Slopes a → b for all dearer positions b > a: (K−1−a, rows). Equal cost: ±inf kills the arm with
                # less revenue; an exact duplicate gives NaN, which np.minimum spreads into hi[b] (b dead) and
                # np.fmax ignores (a lives).
                slope, gap = self.slopes[: k - 1 - a], self.gaps[: k - 1 - a]
                np.subtract(revenue[a + 1 :], revenue[a], out=slope)
                np.subtract(cost[a + 1 :], cost[a], out=gap)
                np.divide(slope, gap, out=slope)
                np.fmax.reduce(slope, axis=0, out=lo[a], initial=-np.inf)
                np.minimum(hi[a + 1 :], slope, out=hi[a + 1 :])
        np.maximum(lo, 0.0, out=lo)
        live = np.greater(hi, lo, out=self.live)  # (K, rows) vertices on the λ ≥ 0 path; NaN compares False
        # Each live vertex after the first is reached by an edge from the previous live one.
        last = np.multiply(live, self.level, out=self.last)
        for p in range(1, k):
            np.maximum(last[p - 1], last[p], out=last[p])
        np.greater(last[:-1], 0, out=self.edge)
        np.logical_and(self.edge, live[1:], out=self.edge)
        self.start[0] = live[0]
        np.equal(last[:-1], 0, out=self.start[1:])
        np.logical_and(self.start[1:], live[1:], out=self.start[1:])  # (K, rows) one True per row
        np.multiply(arm, self.start, out=self.arm_scratch)
        np.sum(self.arm_scratch, axis=0, dtype=np.int16, out=self.start_arm)
        origin = self.origin
        np.maximum(last[:-1], 1, out=origin)  # garbage (position 0) where no edge
        origin -= 1
        origin *= n
        origin += self.column
        np.take(cost, origin, out=self.origin_cost)
        np.take(revenue, origin, out=self.origin_rev)
        np.take(arm, origin, out=self.origin_arm)
        np.subtract(arm[1:], self.origin_arm, out=self.step)
        with np.errstate(all="ignore"):  # slots without an edge hold garbage, masked later
            np.subtract(cost[1:], self.origin_cost, out=self.d_cost)
            np.subtract(revenue[1:], self.origin_rev, out=self.d_rev)
            np.divide(self.d_rev, self.d_cost, out=self.edge_slope)
        return cost, revenue, arm


def population_edges(
    R: NDArray[np.floating], C: NDArray[np.floating], allowed: BoolArray | None
) -> tuple[Edges, ComplexArray]:
    """Hull edges of every row of (N, K) revenue R and cost C (any real dtype, checked for NaN block by block).

    Also returns a complex buffer with room for at least E+1 values whose first E hold each edge's
    Δrevenue + i·Δcost.
    """
    n, k = R.shape
    capacity = n * (k - 1) + 1  # np.empty only reserves it; only the E edges found are ever touched
    start = np.empty(n, dtype=np.int16)
    row = np.empty(capacity, dtype=np.int32)
    step = np.empty(capacity, dtype=np.int16)
    slope = np.empty(capacity)
    delta = np.empty(capacity, dtype=np.complex128)
    n_edges, start_cost, start_rev = 0, 0.0, 0.0
    block = _Block(k, min(BLOCK_ROWS, n))
    for first in range(0, n, BLOCK_ROWS):
        rows = slice(first, min(first + BLOCK_ROWS, n))
        if rows.stop - first != block.n:  # the last, shorter block
            block = _Block(k, rows.stop - first)
        block.load("cost", C, rows, block.cost)
        block.load("revenue", R, rows, block.revenue)
        cost, revenue, _ = block.hull(None if allowed is None else allowed[rows].T)
        start[rows] = block.start_arm
        start_cost += float(np.sum(cost, where=block.start))
        start_rev += float(np.sum(revenue, where=block.start))
        found = np.flatnonzero(block.edge)  # slot-major, so a row's edges keep their cost order
        end = n_edges + found.size
        np.take(block.edge_column, found, out=row[n_edges:end])
        row[n_edges:end] += first
        np.take(block.step, found, out=step[n_edges:end])
        np.take(block.edge_slope, found, out=slope[n_edges:end])
        np.take(block.d_rev, found, out=delta.real[n_edges:end])
        np.take(block.d_cost, found, out=delta.imag[n_edges:end])
        n_edges = end
    return Edges(start, start_cost, start_rev, row[:n_edges], step[:n_edges], slope[:n_edges]), delta


def slope_path(edges: Edges, buffer: ComplexArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Edges in order of slope, descending: (E,) −slopes ascending and (E+1,) cumulative cost and revenue.

    buffer: from `population_edges` (Δrevenue + i·Δcost of the E edges); reused for the cumulative sums.
    A float argsort of E ~ 4e7 is slow, so the edge index is packed below the slope's bit pattern in one uint64
    (positive doubles order like their bits) and the keys are sorted by value. When index and slope range need
    more than 63 bits the slope is truncated; edges whose truncated keys collide are then re-sorted exactly.
    """
    n_edges = edges.slope.size
    bits = edges.slope.view(np.int64)
    top, bottom = (int(bits.max()), int(bits.min())) if n_edges else (0, 0)
    index_bits = max((n_edges - 1).bit_length(), 1)
    shift = max((top - bottom).bit_length() + index_bits - 63, 0)  # keys < 2**63
    key = np.empty(n_edges, dtype=np.uint64)  # ascending key = descending slope
    chunk = 1 << 20  # build the keys in slices so the temporaries stay small
    for lo in range(0, n_edges, chunk):
        part = slice(lo, min(lo + chunk, n_edges))
        key[part] = ((top - bits[part]) >> shift).view(np.uint64) << np.uint64(index_bits)
        key[part] |= np.arange(part.start, part.stop, dtype=np.uint64)
    key.sort()
    key &= np.uint64((1 << index_bits) - 1)
    ordered = buffer[:n_edges].take(key.view(np.int64))  # (E,) the one random gather
    slope = key.view(np.float64)  # the keys' memory now holds the sorted slopes
    # The same division as when the slope was made, so these are the edges' exact slopes.
    np.divide(ordered.real, ordered.imag, out=slope)
    if shift:
        _fix_collisions(slope, ordered, top, shift)
    totals = buffer.view(np.float64)  # room for 2(E+1) floats: the unsorted Δs are no longer needed
    cum_cost, cum_revenue = totals[: n_edges + 1], totals[n_edges + 1 : 2 * n_edges + 2]
    for total, start, change in (
        (cum_cost, edges.start_cost, ordered.imag),
        (cum_revenue, edges.start_revenue, ordered.real),
    ):
        total[0] = start
        np.cumsum(change, out=total[1:])
        total[1:] += start
    np.negative(slope, out=slope)
    return slope, cum_cost, cum_revenue


def _fix_collisions(slope: FloatArray, ordered: ComplexArray, top: int, shift: int) -> None:
    """Re-sort, exactly and in place, the runs of edges whose truncated slope keys collided."""
    rising = np.flatnonzero(slope[1:] > slope[:-1])  # out of order only inside a truncated-key group
    if not rising.size:
        return
    bits = slope.view(np.int64)
    groups = np.unique((top - bits[rising]) >> shift)  # truncated keys, non-decreasing along `slope`
    # Binary search for each group's run, evaluating the key only where probed (no (E,) temporary).
    first, last = np.zeros(groups.size, dtype=np.intp), np.zeros(groups.size, dtype=np.intp)
    for bound, beyond in ((first, np.less), (last, np.less_equal)):
        high = np.full(groups.size, slope.size, dtype=np.intp)
        while (bound < high).any():
            middle = (bound + high) // 2
            probe = np.minimum(middle, slope.size - 1)
            right = beyond((top - bits[probe]) >> shift, groups) & (bound < high)
            bound[:] = np.where(right, middle + 1, bound)
            high[:] = np.where(right | (bound >= high), high, middle)
    members = np.concatenate([np.arange(f, e) for f, e in zip(first, last, strict=True)])
    # Groups are contiguous and already in order, so one sort of all their members keeps them in place.
    fixed = members[np.argsort(-slope[members], kind="stable")]
    slope[members] = slope[fixed]
    ordered[members] = ordered[fixed]
