"""The λ* this replica serves per campaign, kept in memory so /allocate never waits on the store.

`BudgetSolver` sweeps the loaded model's predictions on the reference population once (the exact λ path
of `service.decision.sweep`); any budget after that is a binary search. `LambdaTable` turns stored records
into served λ*: a record solved for another model version is re-solved for its budget with this model
first (DESIGN.md §5), so a λ* never serves a model it was not solved for.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from service.artifact import Artifact
from service.decision import BudgetError, BudgetSweep, Solution, sweep
from service.errors import RequestError
from service.state import LambdaRecord

log = logging.getLogger(__name__)

DEFAULT_SOURCE = "manifest default"


class BudgetSolver:
    """λ* for any per-capita budget on the reference population, for one loaded model."""

    def __init__(self, artifact: Artifact) -> None:
        self.model_version = artifact.model_version
        revenue, cost = artifact.predict(artifact.population)  # (M, K) each
        started = time.perf_counter()
        self.sweep: BudgetSweep = sweep(revenue, cost)
        log.info(
            "swept %d reference rows in %.1f ms (per-capita spend %.4g to %.4g)",
            self.sweep.n_rows,
            1e3 * (time.perf_counter() - started),
            self.sweep.min_spend / self.sweep.n_rows,
            self.sweep.max_spend / self.sweep.n_rows,
        )

    @property
    def population_size(self) -> int:
        return self.sweep.n_rows

    @property
    def min_spend_per_capita(self) -> float:
        """What the cheapest policy (everyone on their cheapest treatment) spends per individual."""
        return self.sweep.min_spend / self.sweep.n_rows

    @property
    def max_spend_per_capita(self) -> float:
        """What the revenue-maximising policy (λ = 0) spends per individual: no budget can buy more."""
        return self.sweep.max_spend / self.sweep.n_rows

    @property
    def accepted_budgets(self) -> tuple[float, float]:
        """The per-capita budgets `solve` answers (as OpenAPI publishes them): the cheapest policy's spend to the
        λ = 0 policy's, plus the rounding slack `solve` allows above it."""
        floor = self.min_spend_per_capita
        return floor - 1e-12 * (abs(floor) + 1.0), self.max_spend_per_capita * (1 + 1e-9) + 1e-12

    def solve(self, budget_per_capita: float) -> Solution:
        """Exact λ*; BudgetError when the budget is not finite, below the cheapest policy's per-capita cost,
        or above what the revenue-maximising policy spends (checked per capita, so nothing overflows)."""
        if not math.isfinite(budget_per_capita):
            raise BudgetError(f"budget must be a finite number, got {budget_per_capita}")
        lowest, highest = self.accepted_budgets
        floor = self.min_spend_per_capita
        if budget_per_capita < lowest:
            raise BudgetError(
                f"budget {budget_per_capita:.6g} per capita is below what the cheapest policy spends, "
                f"{floor:.6g} per capita (every individual on their cheapest treatment); no allocation fits"
            )
        ceiling = self.max_spend_per_capita
        if budget_per_capita > highest:
            raise BudgetError(
                f"budget {budget_per_capita:.6g} per capita exceeds the most this population can spend, "
                f"{ceiling:.6g} per capita (every individual on their revenue-maximising treatment, λ* = 0); "
                f"any budget of at least {ceiling:.6g} buys that policy"
            )
        # Within the rounding slack of either end: the end itself (the sweep checks totals with its own slack).
        return self.sweep.solve_per_capita(min(max(budget_per_capita, floor), ceiling), with_assignment=False)

    def cheapest_lambda(self) -> float:
        """A λ at which argmax_j (r − λc) (ties to the cheaper) puts every row on its cheapest hull vertex."""
        return float(-self.sweep.neg_slope[0]) if self.sweep.neg_slope.size else 0.0

    def record(self, campaign: str, budget_per_capita: float, solution: Solution) -> LambdaRecord:
        return LambdaRecord(
            campaign=campaign,
            lam=solution.lam,
            budget_per_capita=budget_per_capita,
            model_version=self.model_version,
            solved_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
            spend_per_capita=solution.spend_per_capita,
            revenue_per_capita=solution.revenue_per_capita,
        )


@dataclass(frozen=True)
class Served:
    """What /allocate uses for a campaign: λ*, the record version, and where λ* came from."""

    lam: float
    version: int
    source: str
    record: LambdaRecord


class LambdaTable:
    """campaign → Served, the manifest default for campaigns without a record, and the store's health."""

    def __init__(
        self,
        solver: BudgetSolver,
        default_lambda: float,
        default_budget_per_capita: float,
        serve_unknown_campaigns: bool = False,
    ) -> None:
        self.solver = solver
        self.serve_unknown_campaigns = serve_unknown_campaigns
        try:  # what the manifest's default budget spends and earns with this model (normally λ* = default_lambda)
            solution = solver.solve(default_budget_per_capita)
            spend, revenue = solution.spend_per_capita, solution.revenue_per_capita
        except BudgetError:
            spend = revenue = float("nan")
        default = LambdaRecord(
            campaign="default",
            lam=default_lambda,
            budget_per_capita=default_budget_per_capita,
            model_version=solver.model_version,
            solved_at="",
            spend_per_capita=spend,
            revenue_per_capita=revenue,
        )
        self.default = Served(default_lambda, 0, DEFAULT_SOURCE, default)
        self._served: dict[str, Served] = {}
        self.store_up = False
        self.store_error: str | None = None
        self.synced_at: float | None = None  # monotonic time of the last full resync; None: never
        self.sync_restarts = 0  # times the sync task failed unexpectedly and was restarted
        self.sync_error: str | None = None  # the last such failure

    def current(self, campaign: str) -> Served:
        """The served λ* of `campaign`, or the manifest default when it has no record (version 0)."""
        return self._served.get(campaign, self.default)

    def serving(self, campaign: str) -> Served:
        """What a request for `campaign` is served; RequestError 404 when the campaign has no budget.

        A typo in a campaign name must not silently spend at the default λ: only the `default` campaign, or
        every campaign when the operator opted in (ALLOCATOR_SERVE_UNKNOWN_CAMPAIGNS), falls back to it.
        """
        served = self._served.get(campaign)
        if served is not None:
            return served
        if campaign == "default" or self.serve_unknown_campaigns:
            return self.default
        raise RequestError(
            "campaign",
            f"no budget set for campaign {campaign!r} (POST /budget sets one; "
            f"ALLOCATOR_SERVE_UNKNOWN_CAMPAIGNS=true serves such campaigns the default λ)",
            status=404,
        )

    def campaigns(self) -> dict[str, Served]:
        return dict(self._served)

    def known_records(self) -> list[LambdaRecord]:
        return [served.record for served in self._served.values()]

    def apply(self, record: LambdaRecord) -> bool:
        """Serve `record` if it is newer than what is served; returns whether it changed anything."""
        current = self._served.get(record.campaign)
        if current is not None and current.version >= record.version:
            return False
        self._served[record.campaign] = self._serve(record)
        return True

    def _serve(self, record: LambdaRecord) -> Served:
        if record.model_version == self.solver.model_version:
            return Served(record.lam, record.version, "store", record)
        # Solved on another model's predictions: re-solve the same budget with this model before serving it.
        try:
            # More than this model can spend buys its revenue-maximising policy (the old one may spend more).
            lam = self.solver.solve(min(record.budget_per_capita, self.solver.max_spend_per_capita)).lam
            source = f"store, re-solved for model {self.solver.model_version}"
        except BudgetError:
            lam = self.solver.cheapest_lambda()
            source = f"store, budget infeasible for model {self.solver.model_version}: cheapest policy"
            log.error("campaign %s: budget %.4g infeasible for this model", record.campaign, record.budget_per_capita)
        log.info(
            "campaign %s: record v%d was solved for model %s; serving λ*=%.6g for model %s",
            record.campaign,
            record.version,
            record.model_version,
            lam,
            self.solver.model_version,
        )
        return Served(lam, record.version, source, record)

    def mark_store(self, up: bool, error: str | None = None) -> None:
        if up and not self.store_up:
            log.info("λ* store up")
        elif not up and self.store_up:
            log.warning("λ* store down: %s", error)
        self.store_up = up
        self.store_error = error

    @property
    def synced(self) -> bool:
        return self.synced_at is not None
