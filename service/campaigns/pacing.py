"""The pacing control law: where λ goes next for a campaign, from its ledger and the time (pure functions).

Why this law. The revenue-optimal policy for a whole flight is one constant λ (the MCKP dual over every
individual of the flight); what the pacer does not know is that λ, because traffic differs from the reference
population and drifts. So it estimates, every step, the λ that spends the *rest* of the budget over the *rest*
of the expected traffic, and moves towards it slowly:

    need = (cap − committed) / (1 − F(now))          predicted cost still to spend per unit of traffic share
    seen = smoothed Δdemand / ΔF                      what the current λ asks for per unit of traffic share
    log λ ← log λ + gain · log(seen / need) / ε(λ)     clipped to ±max_step

F is the flight's expected traffic share (the campaign's `traffic_profile`, uniform by default). ε(λ) is the
spend elasticity |d log spend / d log λ| of the reference population at λ, so the step is a damped Newton step
on log λ in the units that matter (spend) whatever the model's scale; gain < 1 makes the approach monotone
when the true elasticity is within 2× of the reference one. Aiming at the remaining budget over the remaining
traffic, rather than chasing a cumulative target, spreads a past error over the rest of the flight: there is
no integral term to wind up, hence no overshoot and no oscillation from it. The hard cap is the ledger's; the
pacer only lowers it (`cap`) when realized cost runs above predicted, so the realized total lands at the
budget: cap = committed + (budget − projected realized) / (ratio · (1 + margin)), with ratio = realized ÷
predicted cost of the decisions reported so far (recent reports weighted more, since cost levels drift).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from service.campaigns.ledger import LedgerState
from service.campaigns.spec import CampaignSpec
from service.decision import BudgetSweep

GAIN = 0.5  # share of the Newton step taken per update
MAX_STEP = 0.25  # |Δ log λ| per update (λ moves at most ×1.28 per step)
RATE_MEMORY = 0.5  # weight of the past in the smoothed spend rate, per step
RATIO_MEMORY = 0.85  # weight of the past in the realized ÷ predicted ratio, per step
RATIO_MARGIN = 0.04  # aim realized at budget / (1 + margin): the ratio is a lagged estimate of a drifting level
MIN_COVERED_SHARE = 0.005  # realized reports covering less than this share of the budget: ratio 1
END_SHARE = 0.995  # past this share of the flight's traffic λ stays where it is (the cap finishes the job)


@dataclass(frozen=True)
class PaceStep:
    """One controller step: the new λ, the committed cap, the target now, and the memory for the next step."""

    lam: float
    cap: float
    target: float  # committed spend the mode wants by now
    pace_error: float  # (committed − target) ÷ budget
    ratio: float  # realized ÷ predicted cost estimate
    memory: dict[str, float]


def spend_per_capita(sweep: BudgetSweep, lam: float) -> float:
    """Predicted cost per reference individual of argmax_j (r − λc) (ties to the cheaper)."""
    applied = int(np.searchsorted(sweep.neg_slope, -lam, side="left"))
    return float(sweep.cum_cost[applied]) / sweep.n_rows


def revenue_per_capita(sweep: BudgetSweep, lam: float) -> float:
    applied = int(np.searchsorted(sweep.neg_slope, -lam, side="left"))
    return float(sweep.cum_revenue[applied]) / sweep.n_rows


def elasticity(sweep: BudgetSweep, lam: float, spread: float = 1.25) -> float:
    """|d log spend / d log λ| of the reference population around λ (central difference), in [0.2, 5]."""
    low, high = spend_per_capita(sweep, lam / spread), spend_per_capita(sweep, lam * spread)
    if low <= 0 or high <= 0:
        return 1.0
    return float(np.clip((math.log(low) - math.log(high)) / (2 * math.log(spread)), 0.2, 5.0))


def lambda_bounds(sweep: BudgetSweep, initial: float) -> tuple[float, float]:
    """λ between a small share of the initial λ* and the slope above which everyone gets the cheapest."""
    top = float(-sweep.neg_slope[0]) if sweep.neg_slope.size else initial
    return max(1e-3 * max(initial, 1e-6), 1e-9), max(top * 1.05, initial, 1e-6)


def realized_ratio(state: LedgerState, memory: dict[str, float]) -> tuple[float, dict[str, float]]:
    """realized ÷ predicted from decayed sums of the new reports since the last step (1 until enough is reported)."""
    d_realized = state.realized - memory.get("seen_realized", 0.0)
    d_covered = state.covered - memory.get("seen_covered", 0.0)
    sum_realized = RATIO_MEMORY * memory.get("sum_realized", 0.0) + d_realized
    sum_covered = RATIO_MEMORY * memory.get("sum_covered", 0.0) + d_covered
    updated = {
        "seen_realized": state.realized,
        "seen_covered": state.covered,
        "sum_realized": sum_realized,
        "sum_covered": sum_covered,
    }
    if state.covered < MIN_COVERED_SHARE * state.budget or sum_covered <= 0:
        return 1.0, updated
    return max(sum_realized / sum_covered, 1e-3), updated


def realized_cap(state: LedgerState, ratio: float) -> float:
    """The committed total at which realized cost is projected to land at the budget (never above it)."""
    projected = state.realized + max(state.committed - state.covered, 0.0) * ratio
    left = max(state.budget - projected, 0.0) / (ratio * (1.0 + RATIO_MARGIN))
    return min(state.budget, state.committed + left)


def pace(
    spec: CampaignSpec, state: LedgerState, now: float, lam: float, sweep: BudgetSweep, memory: dict[str, float]
) -> PaceStep:
    """The next λ and cap for a campaign (`memory` is what the previous step returned, {} at first)."""
    initial = memory.get("initial_lambda", lam)
    floor, ceiling = lambda_bounds(sweep, initial)
    ratio, ratio_memory = realized_ratio(state, memory)
    cap = realized_cap(state, ratio) if spec.pacing != "off" else state.budget
    share = spec.flight_share(now)
    target_share = spec.target_share(now)
    target = cap * target_share if target_share is not None else float("nan")
    # What the served λ asks for (chosen treatments, paid for or not): a stall in slices or a cap is supply,
    # not a sign that λ is too high, so it must not pull λ down.
    spent = state.demand
    d_spent = spent - memory.get("seen_spent", spent)
    d_share = share - memory.get("seen_share", share)
    rate_spent = RATE_MEMORY * memory.get("rate_spent", 0.0) + d_spent
    rate_share = RATE_MEMORY * memory.get("rate_share", 0.0) + d_share
    new_lam = lam
    if spec.pacing == "asap":
        new_lam = floor
    elif spec.pacing == "even" and share < END_SHARE and rate_share > 0:
        need = max(cap - state.committed, 0.0) / max(1.0 - share, 1e-6)
        seen = rate_spent / rate_share
        if need <= 0:
            step = MAX_STEP
        elif seen <= 0:
            step = -MAX_STEP
        else:
            step = GAIN * math.log(seen / need) / elasticity(sweep, lam)
        new_lam = float(
            np.clip(math.exp(math.log(max(lam, floor)) + np.clip(step, -MAX_STEP, MAX_STEP)), floor, ceiling)
        )
    memory_out = {
        **ratio_memory,
        "initial_lambda": initial,
        "seen_spent": spent,
        "seen_share": share,
        "rate_spent": rate_spent,
        "rate_share": rate_share,
        "lambda": new_lam,
    }
    pace_error = (state.committed - target) / state.budget if target_share is not None else 0.0
    return PaceStep(new_lam, cap, target, pace_error, ratio, memory_out)
