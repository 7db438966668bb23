"""The slice of a campaign's budget this replica holds, spent by /allocate without a Redis round trip.

`/allocate`'s CPU work may run in a worker thread, and reports run on the event loop, so every read and
write of the slice takes one `threading.Lock` (held for microseconds: a cumulative sum over the batch).

Safety argument (why the cap holds across replicas): the ledger's slice for this replica only shrinks when
the replica asks (`want`), and the wallet lowers its own authority to `want` before sending; a report whose
answer is lost leaves the wallet with at most what Redis still reserves for it. Spending stops when the
lease, counted from the moment the last answered report was *sent*, is about to expire, which is before
Redis (counting from when it processed that report) can reclaim the slice.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from service.campaigns.spec import CampaignSpec, CampaignStatus, flight_status

LEASE_MARGIN = 0.8  # spend for at most this share of the lease after the last answered report


@dataclass(frozen=True)
class Capped:
    """A batch after the cap: the treatments to give, and why some (or all) got the cheapest one."""

    treatment: NDArray[np.int64]  # (N,)
    status: CampaignStatus
    capped: int  # individuals moved to their cheapest allowed treatment by the budget


def cheapest_allowed(cost: NDArray[np.float32], allowed: NDArray[np.bool_] | None) -> NDArray[np.int64]:
    """(N,) the allowed treatment with the lowest predicted cost (ties to the lowest id)."""
    masked = cost if allowed is None else np.where(allowed, cost, np.inf)
    return np.argmin(masked, axis=1).astype(np.int64)


class SliceWallet:
    """One campaign's spending authority on this replica, with its spec and the ledger's last known state."""

    def __init__(self, campaign: str, spec: CampaignSpec, lease_seconds: float) -> None:
        self.campaign = campaign
        self.spec = spec
        self.lease_seconds = lease_seconds
        self._lock = threading.Lock()
        self._available = 0.0
        self._spent_total = 0.0  # cumulative predicted cost given out by this replica
        self._acked_total = 0.0  # ... of which the ledger has acknowledged this much
        self._baseline = 0.0  # spend before the ledger was last recreated (not reported again)
        self._seq = 0  # reports sent
        self._deadline = 0.0  # monotonic time after which the slice may no longer be spent
        self._demand_total = 0.0  # cumulative predicted cost of the treatments chosen, paid for or not
        self._acked_demand = 0.0
        self._demand_baseline = 0.0
        self._demand_times: list[tuple[float, float]] = []  # (monotonic, demand_total) for the demand rate
        self.ledger_up = False
        self._unreserved = 0.0
        self.uncharged = 0.0  # predicted cost of cheapest treatments given beyond the slice (not in the ledger)
        self._capped: dict[str, int] = {}  # reason → individuals moved to the cheapest treatment

    @property
    def spent_total(self) -> float:
        with self._lock:
            return self._spent_total

    @property
    def available(self) -> float:
        with self._lock:
            return self._available if time.monotonic() < self._deadline else 0.0

    def begin_report(self, want: float) -> tuple[int, float, float, float]:
        """(sequence number, cumulative spend and demand to report, send time); first lowers the authority to
        `want` (safe if no answer comes)."""
        with self._lock:
            self._available = min(self._available, want)
            self._seq += 1
            demand = self._demand_total - self._demand_baseline
            return self._seq, self._spent_total - self._baseline, demand, time.monotonic()

    def finish_report(self, held: float, reported_total: float, sent_at: float, unreserved: float) -> None:
        """Redis answered: it holds `held` for us as of `reported_total`; the lease runs from `sent_at`;
        `unreserved` is what the ledger had left under the cap for anyone after the answer."""
        with self._lock:
            self._unreserved = unreserved
            self._acked_total = reported_total + self._baseline
            self._acked_demand = self._demand_total  # at least what was reported; only a restore reads it
            self._available = held - (self._spent_total - self._acked_total)
            self._deadline = sent_at + LEASE_MARGIN * self.lease_seconds
            self.ledger_up = True

    def rebase(self) -> None:
        """The ledger was recreated from a snapshot that counts everything acknowledged so far: report only
        what came after (spend not yet acknowledged is reported again: counted twice, never missed)."""
        with self._lock:
            self._baseline = self._acked_total
            self._demand_baseline = self._acked_demand
            self._available = 0.0
            self._deadline = 0.0

    def release(self) -> None:
        """The slice was returned (or the campaign is gone): nothing more may be spent from it."""
        with self._lock:
            self._available = 0.0
            self._deadline = 0.0

    def capped_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._capped)

    def _count(self, reason: CampaignStatus, individuals: int) -> None:
        if individuals:
            with self._lock:
                self._capped[reason.value] = self._capped.get(reason.value, 0) + individuals

    def _pay_floor(self, floor_total: float, leased: bool) -> None:
        """Charge the cheapest treatments from the slice as far as it can pay (caller holds the lock)."""
        charge = min(floor_total, max(self._available, 0.0)) if leased else 0.0
        self._available -= charge
        self._spent_total += charge
        self.uncharged += floor_total - charge

    def demand_rate(self, now: float, window: float) -> float:
        """Predicted cost per second of the treatments chosen over the last `window` seconds (paid for or not:
        a slice sized by what was paid for could never grow past a batch it cannot pay)."""
        with self._lock:
            self._demand_times.append((now, self._demand_total))
            while len(self._demand_times) > 2 and self._demand_times[1][0] <= now - window:
                self._demand_times.pop(0)
            first_time, first_total = self._demand_times[0]
            return (self._demand_total - first_total) / max(now - first_time, 1e-3)

    def cap(
        self,
        treatment: NDArray[np.int64],
        cost: NDArray[np.float32],
        allowed: NDArray[np.bool_] | None,
        now: float,
    ) -> Capped:
        """Pay for the chosen treatments in request order while the slice lasts; the rest get the cheapest.

        treatment: (N,) chosen; cost: (N, K) predicted. The cheapest allowed treatment is what an individual
        gets at the least; its cost (about 0 for a no-coupon control) is charged while the slice can pay it, and
        beyond that given uncharged (counted in `uncharged`), so the ledger never goes past the budget.
        """
        status = flight_status(self.spec, now)
        rows = np.arange(len(treatment))
        if status is CampaignStatus.ACTIVE:
            # The usual case, kept lean: the whole batch fits in the slice (one sum, no per-row bookkeeping).
            chosen_cost = np.maximum(cost[rows, treatment], 0.0)  # (N,)
            total = float(chosen_cost.sum(dtype=np.float64))
            with self._lock:
                if time.monotonic() < self._deadline and total <= self._available:
                    self._available -= total
                    self._spent_total += total
                    self._demand_total += total
                    return Capped(treatment, status, 0)
        floor = cheapest_allowed(cost, allowed)  # (N,)
        if status is not CampaignStatus.ACTIVE:
            floor_total = float(np.maximum(cost[rows, floor].astype(np.float64), 0.0).sum())
            with self._lock:
                self._pay_floor(floor_total, time.monotonic() < self._deadline)
            moved = int((treatment != floor).sum())
            self._count(status, moved)
            return Capped(floor, status, moved)
        floor_cost = np.maximum(cost[rows, floor].astype(np.float64), 0.0)  # (N,)
        extra = np.maximum(cost[rows, treatment].astype(np.float64), 0.0) - floor_cost  # (N,) ≥ 0 by construction
        with self._lock:
            leased = time.monotonic() < self._deadline
            available = self._available if leased else 0.0
            room = available - float(floor_cost.sum())
            fits = np.cumsum(extra) <= room  # (N,) a prefix: the batch is paid in request order
            self._demand_total += float(floor_cost.sum() + extra.sum())
            self._pay_floor(float(floor_cost.sum()), leased)
            charge = float(extra[fits].sum())
            self._available -= charge
            self._spent_total += charge
        given = np.where(fits, treatment, floor)
        capped = int((given != treatment).sum())
        if not capped:
            return Capped(given, CampaignStatus.ACTIVE, 0)
        # No live slice: the ledger has not answered within the lease (down, or not asked yet).
        reason = CampaignStatus.BUDGET_UNAVAILABLE
        if leased:
            first_refused = float(extra[~fits][0])  # the ledger could still pay for it: the slice is just dry
            reason = CampaignStatus.SLICE_EMPTY if self._unreserved >= first_refused else CampaignStatus.EXHAUSTED
        self._count(reason, capped)
        return Capped(given, reason, capped)
