"""This replica's campaigns and the background task that keeps their slices filled (DESIGN.md §9).

Every `tick` the task reports each wallet's cumulative spend to the ledger, renews its lease and asks for a
slice worth about `slice_seconds` of its recent spend (at least `min_slice_share` of the budget), so Redis
traffic grows with campaigns × replicas / tick, not with requests. Specs are re-read every `refresh`
seconds (a new campaign, a pause, a new budget). On shutdown every slice is returned.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace

from pydantic import ValidationError

from service.campaigns.ledger import Ledger, LedgerState
from service.campaigns.spec import CampaignSpec, CampaignStatus, flight_status
from service.campaigns.wallet import SliceWallet
from service.errors import StoreUnavailableError
from service.state import LambdaStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SliceSettings:
    tick: float  # seconds between reports
    refresh: float  # seconds between spec re-reads
    lease_seconds: float  # a slice not renewed for this long is reclaimed
    slice_seconds: float  # a slice holds about this many seconds of recent spend
    min_slice_share: float  # ... and at least this share of the budget
    max_share: float  # one replica holds at most this share of what is left under the cap


class CampaignBook:
    """campaign → wallet for every managed campaign this replica knows, and the ledger's health."""

    def __init__(self, ledger: Ledger, replica: str, settings: SliceSettings) -> None:
        self.ledger = ledger
        self.replica = replica
        self.settings = settings
        self.wallets: dict[str, SliceWallet] = {}
        self.states: dict[str, LedgerState] = {}
        self.ledger_up = ledger.backend == "in-process"
        self.ledger_error: str | None = None
        self._refreshed_at = 0.0
        self._report_locks: dict[str, asyncio.Lock] = {}

    def wallet(self, campaign: str) -> SliceWallet | None:
        """The wallet of a managed campaign (None: a plain /budget campaign, not capped)."""
        return self.wallets.get(campaign)

    def learn(self, campaign: str, spec: CampaignSpec) -> SliceWallet:
        """Serve `spec` for `campaign` here (a new wallet, or the known one with the new spec)."""
        wallet = self.wallets.get(campaign)
        if wallet is None:
            wallet = self.wallets[campaign] = SliceWallet(campaign, spec, self.settings.lease_seconds)
        else:
            wallet.spec = spec
        return wallet

    def mark(self, up: bool, error: str | None = None) -> None:
        if up != self.ledger_up:
            (log.info if up else log.warning)("campaign ledger %s%s", "up" if up else "down: ", error or "")
        self.ledger_up = up
        self.ledger_error = error
        for wallet in self.wallets.values():
            wallet.ledger_up = up

    async def refresh_specs(self) -> None:
        """Learn new campaigns and spec changes from the ledger."""
        for campaign in await self.ledger.managed():
            await self.refresh_spec(campaign)
        self._refreshed_at = time.monotonic()

    async def refresh_spec(self, campaign: str) -> None:
        found = await self.ledger.read(campaign)
        if found is None:
            return
        try:
            spec = CampaignSpec.model_validate_json(found[0])
        except ValidationError:
            log.error("campaign %s: unreadable spec in the ledger; skipped", campaign, exc_info=True)
            return
        self.learn(campaign, spec)
        self.states[campaign] = found[1]

    def want(self, wallet: SliceWallet, now: float, budget: float) -> float:
        """The slice to ask for: about `slice_seconds` of recent demand, none while the campaign is inactive."""
        if flight_status(wallet.spec, time.time()) is not CampaignStatus.ACTIVE:
            return 0.0
        rate = wallet.demand_rate(now, window=max(4 * self.settings.slice_seconds, 2 * self.settings.tick))
        flight = wallet.spec.end.timestamp() - wallet.spec.start.timestamp()
        average = budget / flight  # the rate of an even spend over the flight: a floor before traffic shows its own
        return max(max(rate, 2 * average) * self.settings.slice_seconds, self.settings.min_slice_share * budget)

    async def report(self, campaign: str, wallet: SliceWallet, release: bool = False) -> None:
        """Report spend and resize the slice; one at a time per campaign (an older answer must not win)."""
        async with self._report_locks.setdefault(campaign, asyncio.Lock()):
            await self._report(campaign, wallet, release)

    async def _report(self, campaign: str, wallet: SliceWallet, release: bool) -> None:
        budget = self.states[campaign].budget if campaign in self.states else wallet.spec.total_budget
        want = 0.0 if release else self.want(wallet, time.monotonic(), budget)
        seq, spent_total, demand_total, sent_at = wallet.begin_report(want)
        s = self.settings
        grant = await self.ledger.report(
            campaign,
            self.replica,
            seq,
            spent_total,
            want,
            int(1e3 * s.lease_seconds),
            s.max_share,
            release,
            demand_total=demand_total,
        )
        if grant is None and not release:
            await self.restore(campaign, wallet)
            return
        if grant is None or release:
            wallet.release()
            return
        state = grant.state
        wallet.finish_report(grant.held, spent_total, sent_at, max(state.cap - state.committed - state.reserved, 0.0))
        self.states[campaign] = grant.state

    async def restore(self, campaign: str, wallet: SliceWallet) -> None:
        """The ledger lost the campaign (a Redis restart without persistence): recreate it from what this replica
        last saw, counting every slice then held as spent (conservative), and spend nothing until the next report."""
        wallet.rebase()
        last = self.states.get(campaign)
        if last is None:
            return
        snapshot = replace(last, committed=last.committed + last.reserved, reserved=0.0)
        if await self.ledger.restore(campaign, wallet.spec.model_dump_json(), snapshot):
            log.warning(
                "campaign %s: ledger lost by the store; restored with committed %.6g", campaign, snapshot.committed
            )

    async def tick(self) -> None:
        if time.monotonic() - self._refreshed_at >= self.settings.refresh:
            await self.refresh_specs()
        for campaign, wallet in list(self.wallets.items()):
            await self.report(campaign, wallet)

    async def return_all(self) -> None:
        """Return every slice (shutdown); a failure leaves the slice to be reclaimed when its lease expires."""
        for campaign, wallet in list(self.wallets.items()):
            try:
                await self.report(campaign, wallet, release=True)
            except StoreUnavailableError as error:
                log.warning("campaign %s: slice not returned (%s); it is reclaimed after its lease", campaign, error)


async def keep_slices(book: CampaignBook) -> None:
    """Run until cancelled: report spend and refill slices every tick; keep going through ledger outages."""
    while True:
        try:
            await book.tick()
            book.mark(True)
        except StoreUnavailableError as error:
            book.mark(False, str(error))
        await asyncio.sleep(book.settings.tick)


async def watch_new_campaigns(book: CampaignBook, store: LambdaStore) -> None:
    """Run until cancelled: learn a campaign as soon as its first λ record is announced.

    A new campaign's ledger is written before its λ record is published, so a replica learns the campaign
    (and caps it) within milliseconds of being able to serve it, instead of at its next spec refresh.
    """
    while True:
        try:
            async for campaign in store.announcements(timeout=book.settings.refresh):
                if campaign is not None and campaign not in book.wallets:
                    await book.refresh_spec(campaign)
        except StoreUnavailableError:
            await asyncio.sleep(book.settings.tick)
