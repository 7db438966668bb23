"""The pacing leader: one replica per campaign (a Redis lease) moves λ and publishes it as a λ record.

Every `pace_seconds` each replica tries to take or renew the campaign's lease (3 × pace_seconds); the holder
reads the ledger and its controller memory (`<prefix>:campaign:{<c>}:pace`, so a new leader continues where
the old one stopped), runs `service.campaigns.pacing.pace`, lowers the cap if realized cost asks for it, and
publishes a changed λ through `LambdaStore.put`, which every replica applies like a `/budget` answer.
Followers only read. The leader also appends the ledger to the campaign's pacing history (the console's spend
and λ charts): one point per step, thinned so that a whole flight fits in `HISTORY_POINTS`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from datetime import UTC, datetime

from service.campaigns.ledger import LedgerState, PacePoint
from service.campaigns.pacing import PaceStep, pace, revenue_per_capita, spend_per_capita
from service.campaigns.slices import CampaignBook
from service.campaigns.spec import CampaignSpec, CampaignStatus, flight_status
from service.errors import StoreUnavailableError, WriteOutcomeUnknownError
from service.lambdas import BudgetSolver, LambdaTable
from service.state import LambdaRecord, LambdaStore

log = logging.getLogger(__name__)

MIN_RELATIVE_CHANGE = 1e-3  # a λ closer than this to the served one is not republished
HISTORY_POINTS = 1440  # pacing history kept per campaign (a day at one point a minute)


class Pacer:
    """Runs the pacing steps of the campaigns this replica leads; remembers the last step of each."""

    def __init__(
        self, book: CampaignBook, solver: BudgetSolver, store: LambdaStore, table: LambdaTable, pace_seconds: float
    ) -> None:
        self.book = book
        self.solver = solver
        self.store = store
        self.table = table
        self.pace_seconds = pace_seconds
        self.last: dict[str, PaceStep] = {}
        self.leading: set[str] = set()

    def record(self, campaign: str, lam: float, budget_per_capita: float) -> LambdaRecord:
        sweep = self.solver.sweep
        return LambdaRecord(
            campaign=campaign,
            lam=lam,
            budget_per_capita=budget_per_capita,
            model_version=self.solver.model_version,
            solved_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
            spend_per_capita=spend_per_capita(sweep, lam),
            revenue_per_capita=revenue_per_capita(sweep, lam),
        )

    async def step(self, campaign: str) -> PaceStep | None:
        """One pacing step if this replica leads `campaign` (None otherwise or when there is nothing to do)."""
        ledger = self.book.ledger
        lease_ms = int(3e3 * self.pace_seconds)
        if not await ledger.acquire_leader(campaign, self.book.replica, lease_ms):
            self.leading.discard(campaign)
            return None
        self.leading.add(campaign)
        found = await ledger.read(campaign)
        wallet = self.book.wallet(campaign)
        if found is None or wallet is None:
            return None
        state: LedgerState = found[1]
        spec = wallet.spec
        now = time.time()
        if flight_status(spec, now) is not CampaignStatus.ACTIVE:
            return None
        memory = await ledger.pace_state(campaign)
        served = self.table.current(campaign)
        if spec.pacing == "off":  # λ stays the operator's; the history still shows spend against the cap
            point = PacePoint(now, state.committed, state.cap, None, state.realized, served.lam)
            await self._record(campaign, spec, point, memory, memory)
            return None
        lam = memory.get("lambda", served.lam)
        if "initial_lambda" not in memory:
            memory["initial_lambda"] = served.lam
        result = pace(spec, state, now, lam, self.solver.sweep, memory)
        if result.cap < state.budget:
            await ledger.set_cap(campaign, result.cap)
        if abs(result.lam - served.lam) > MIN_RELATIVE_CHANGE * max(served.lam, 1e-9):
            stored = await self.store.put(self.record(campaign, result.lam, spec.budget_per_capita), served.version)
            self.table.apply(stored)
        lam_now = self.table.current(campaign).lam
        target = result.target if math.isfinite(result.target) else None  # NaN: the mode sets no target
        point = PacePoint(now, state.committed, min(result.cap, state.cap), target, state.realized, lam_now)
        await self._record(campaign, spec, point, memory, dict(result.memory))
        self.last[campaign] = result
        return result

    def history_interval(self, spec: CampaignSpec) -> float:
        """Seconds between history points: every step, or fewer so the whole flight fits in HISTORY_POINTS."""
        start, end = spec.flight_seconds
        return max(self.pace_seconds, (end - start) / HISTORY_POINTS)

    async def _record(
        self, campaign: str, spec: CampaignSpec, point: PacePoint, memory: dict[str, float], out: dict[str, float]
    ) -> None:
        """Append `point` when the last one is older than the interval, then save the controller memory `out`.

        The time of the last point lives in that memory, so a new leader keeps the spacing.
        """
        last = memory.get("history_at", float("-inf"))
        # A step fires every pace_seconds give or take scheduling: allow a little early.
        if point.at - last >= 0.9 * self.history_interval(spec):
            await self.book.ledger.record_pace(campaign, point, HISTORY_POINTS)
            last = point.at
        if last > float("-inf"):
            out["history_at"] = last
        await self.book.ledger.save_pace_state(campaign, out)


async def keep_pacing(pacer: Pacer) -> None:
    """Run until cancelled: a pacing step for every known campaign each `pace_seconds`."""
    while True:
        for campaign in list(pacer.book.wallets):
            try:
                await pacer.step(campaign)
            except (StoreUnavailableError, WriteOutcomeUnknownError) as error:
                # An unknown write outcome is harmless here: the next step reads the served λ back and goes on.
                log.warning("campaign %s: pacing step skipped: %s", campaign, error)
        await asyncio.sleep(pacer.pace_seconds)
