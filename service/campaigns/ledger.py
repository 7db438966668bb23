"""The spend ledger's interface and its in-process implementation (one replica, no infrastructure).

Per campaign: `budget`; `cap` (≤ budget, lowered by the pacer when realized cost runs above predicted);
`committed` (predicted cost of treatments given, as reported by replicas, plus `presumed`); `reserved` (the
slices replicas hold); `presumed` (reclaimed slices of replicas that stopped renewing, charged as spent because
they may have been); `realized` and `covered` (realized cost reported so far, and the predicted cost of the
decisions it covers). Invariant, whatever the interleaving: committed + reserved ≤ budget.

A replica's `report` is the one operation of the hot loop: it adds what the replica spent since its last
report to `committed`, renews its lease, and sets its slice to min(want, share × (cap − committed)) as far as
the cap allows (slices shrink as the budget runs out). Expired leases are reclaimed first. The Redis
implementation (`service.campaigns.redis_ledger`) runs the same steps in Lua.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Protocol


class BudgetBelowSpendError(ValueError):
    """A new total budget below what is already committed and reserved."""


@dataclass(frozen=True)
class LedgerState:
    budget: float
    cap: float
    committed: float
    reserved: float
    presumed: float
    realized: float
    covered: float
    demand: float = 0.0  # predicted cost of the treatments chosen at the λ served, paid for or not (pacing)

    @property
    def remaining(self) -> float:
        return max(self.budget - self.committed, 0.0)


@dataclass(frozen=True)
class Grant:
    """A report's answer: the slice this replica now holds and the ledger after the report."""

    held: float
    state: LedgerState


@dataclass(frozen=True)
class PacePoint:
    """A campaign's ledger at one pacing step, as the console draws it over the flight."""

    at: float  # unix seconds
    committed: float
    cap: float
    target: float | None  # committed spend the pacing mode wants by now (None: pacing off)
    realized: float
    lam: float  # λ served after the step

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> PacePoint:
        return cls(**json.loads(raw))


class Ledger(Protocol):
    backend: str

    async def upsert(self, campaign: str, spec_json: str, budget: float) -> LedgerState:
        """Create or update a campaign (cap reset to the budget); BudgetBelowSpendError below committed+reserved."""
        ...

    async def read(self, campaign: str) -> tuple[str, LedgerState] | None:
        """(spec JSON, ledger), None when the campaign does not exist."""
        ...

    async def managed(self) -> list[str]: ...

    async def restore(self, campaign: str, spec_json: str, state: LedgerState) -> bool:
        """Recreate a campaign the store lost (a Redis restart) with `state`'s spend; False if it exists."""
        ...

    async def report(
        self,
        campaign: str,
        replica: str,
        seq: int,
        spent_total: float,
        want: float,
        lease_ms: int,
        share: float,
        release: bool,
        demand_total: float = 0.0,
    ) -> Grant | None:
        """`seq` increases with every report of a replica; an older one than the last applied changes nothing.
        Count new spend (`spent_total` is cumulative: a retry counts once), renew the lease, resize the
        slice towards `want` (release: return it); None when the campaign does not exist."""
        ...

    async def realize(self, campaign: str, realized: float, covered: float) -> LedgerState | None: ...

    async def set_cap(self, campaign: str, cap: float) -> None: ...

    async def acquire_leader(self, campaign: str, replica: str, lease_ms: int) -> bool:
        """Take or renew the pacing lease of `campaign`; False when another replica holds it."""
        ...

    async def pace_state(self, campaign: str) -> dict[str, float]: ...

    async def save_pace_state(self, campaign: str, state: dict[str, float]) -> None: ...

    async def record_pace(self, campaign: str, point: PacePoint, keep: int) -> None:
        """Append a point to the campaign's pacing history, keeping only the last `keep`."""
        ...

    async def pace_history(self, campaign: str) -> list[PacePoint]:
        """The campaign's pacing history, oldest first ([] when there is none)."""
        ...

    async def close(self) -> None: ...


@dataclass
class _Campaign:
    spec_json: str
    budget: float
    cap: float
    committed: float = 0.0
    reserved: float = 0.0
    presumed: float = 0.0
    realized: float = 0.0
    covered: float = 0.0
    slices: dict[str, float] = field(default_factory=dict)
    leases: dict[str, float] = field(default_factory=dict)  # replica → expiry (monotonic ms)
    charged: dict[str, float] = field(default_factory=dict)  # replica → reclaimed slice, charged as spent
    reported: dict[str, float] = field(default_factory=dict)  # replica → cumulative spend reported
    seqs: dict[str, int] = field(default_factory=dict)  # replica → last report sequence number applied
    reported_demand: dict[str, float] = field(default_factory=dict)  # replica → cumulative demand reported
    demand: float = 0.0
    pace: dict[str, float] = field(default_factory=dict)
    history: deque[PacePoint] = field(default_factory=deque)
    leader: tuple[str, float] | None = None

    def state(self) -> LedgerState:
        return LedgerState(
            self.budget, min(self.cap, self.budget), self.committed, self.reserved, self.presumed, self.realized,
            self.covered, self.demand,
        )  # fmt: skip


def resize_slice(held: float, want: float, cap: float, committed: float, reserved: float, share: float) -> float:
    """The new slice: down to `want` when the replica asks, else up towards min(want, share × what is left under
    the cap) within the headroom. Never shrunk otherwise: the replica may be spending it while the answer travels.
    """
    if want < held:
        return max(want, 0.0)
    headroom = cap - committed - reserved  # < 0 after the pacer lowered the cap: then no growth
    target = min(want, max(cap - committed, 0.0) * share)
    return held + max(min(target - held, headroom), 0.0) if target > held else held


class InProcessLedger:
    """The ledger in a dict, for the in-process store (one replica): the same steps as the Lua scripts."""

    backend = "in-process"

    def __init__(self) -> None:
        self._campaigns: dict[str, _Campaign] = {}

    @staticmethod
    def _now_ms() -> float:
        return 1e3 * time.monotonic()

    async def upsert(self, campaign: str, spec_json: str, budget: float) -> LedgerState:
        kept = self._campaigns.get(campaign)
        if kept is None:
            kept = self._campaigns[campaign] = _Campaign(spec_json, budget, budget)
            return kept.state()
        if budget < kept.committed + kept.reserved:
            raise BudgetBelowSpendError(
                f"{budget:.6g} is below committed {kept.committed:.6g} + reserved {kept.reserved:.6g}"
            )
        kept.spec_json, kept.budget, kept.cap = spec_json, budget, budget
        return kept.state()

    async def read(self, campaign: str) -> tuple[str, LedgerState] | None:
        kept = self._campaigns.get(campaign)
        return None if kept is None else (kept.spec_json, kept.state())

    async def managed(self) -> list[str]:
        return sorted(self._campaigns)

    async def restore(self, campaign: str, spec_json: str, state: LedgerState) -> bool:
        if campaign in self._campaigns:
            return False
        self._campaigns[campaign] = _Campaign(
            spec_json, state.budget, state.budget, committed=state.committed, realized=state.realized,
            covered=state.covered, demand=state.demand,
        )  # fmt: skip
        return True

    async def report(
        self,
        campaign: str,
        replica: str,
        seq: int,
        spent_total: float,
        want: float,
        lease_ms: int,
        share: float,
        release: bool,
        demand_total: float = 0.0,
    ) -> Grant | None:
        kept = self._campaigns.get(campaign)
        if kept is None:
            return None
        if seq <= kept.seqs.get(replica, 0):
            return Grant(kept.slices.get(replica, 0.0), kept.state())
        kept.seqs[replica] = seq
        seen = kept.reported.get(replica, 0.0)
        spent = max(spent_total - seen, 0.0)
        kept.reported[replica] = max(spent_total, seen)
        seen_demand = kept.reported_demand.get(replica, 0.0)
        kept.demand += max(demand_total - seen_demand, 0.0)
        kept.reported_demand[replica] = max(demand_total, seen_demand)
        now = self._now_ms()
        for dead in [r for r, expiry in kept.leases.items() if expiry <= now]:
            held = kept.slices.pop(dead, 0.0)
            del kept.leases[dead]
            kept.reserved -= held
            kept.committed += held
            kept.presumed += held
            kept.charged[dead] = kept.charged.get(dead, 0.0) + held
        kept_slice = kept.slices.get(replica)
        held = 0.0 if kept_slice is None else kept_slice
        if kept_slice is None:
            charged = kept.charged.pop(replica, 0.0)
            if charged > 0:  # a late report after its slice was reclaimed: refund what it did not spend
                kept.committed -= max(charged - spent, 0.0)
                kept.presumed -= charged
            else:
                kept.committed += spent
        else:
            held -= spent
            kept.reserved -= spent
            kept.committed += spent
        new_held = 0.0 if release else resize_slice(held, want, min(kept.cap, kept.budget), kept.committed,
                                                    kept.reserved, share)  # fmt: skip
        kept.reserved += new_held - held
        if release:
            kept.slices.pop(replica, None)
            kept.leases.pop(replica, None)
        else:
            kept.slices[replica] = new_held
            kept.leases[replica] = now + lease_ms
        return Grant(new_held, kept.state())

    async def realize(self, campaign: str, realized: float, covered: float) -> LedgerState | None:
        kept = self._campaigns.get(campaign)
        if kept is None:
            return None
        kept.realized += realized
        kept.covered += covered
        return kept.state()

    async def set_cap(self, campaign: str, cap: float) -> None:
        kept = self._campaigns.get(campaign)
        if kept is not None:
            kept.cap = min(cap, kept.budget)

    async def acquire_leader(self, campaign: str, replica: str, lease_ms: int) -> bool:
        kept = self._campaigns.get(campaign)
        if kept is None:
            return False
        now = self._now_ms()
        if kept.leader is not None and kept.leader[0] != replica and kept.leader[1] > now:
            return False
        kept.leader = (replica, now + lease_ms)
        return True

    async def pace_state(self, campaign: str) -> dict[str, float]:
        kept = self._campaigns.get(campaign)
        return {} if kept is None else dict(kept.pace)

    async def save_pace_state(self, campaign: str, state: dict[str, float]) -> None:
        kept = self._campaigns.get(campaign)
        if kept is not None:
            kept.pace = dict(state)

    async def record_pace(self, campaign: str, point: PacePoint, keep: int) -> None:
        kept = self._campaigns.get(campaign)
        if kept is not None:
            kept.history.append(point)
            while len(kept.history) > keep:
                kept.history.popleft()

    async def pace_history(self, campaign: str) -> list[PacePoint]:
        kept = self._campaigns.get(campaign)
        return [] if kept is None else list(kept.history)

    async def close(self) -> None:
        return None
