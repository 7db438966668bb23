"""The pacing law in closed loop against a simulated day (no service): it follows the budget without oscillating,
respects the cap, and lowers the cap when realized cost runs above predicted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from service.campaigns.ledger import LedgerState
from service.campaigns.pacing import pace, realized_cap, spend_per_capita
from service.campaigns.spec import CampaignSpec
from service.decision import BudgetSweep, sweep


@pytest.fixture(scope="module")
def reference() -> BudgetSweep:
    """A reference population: 4,000 individuals, K = 4, revenue concave in cost."""
    rng = np.random.default_rng(3)
    cost = np.cumsum(rng.uniform(0.2, 1.0, size=(4000, 4)), axis=1)
    cost[:, 0] = 0.0
    revenue = 2.0 * np.sqrt(cost) * rng.uniform(0.2, 1.5, size=(4000, 1))
    return sweep(revenue, cost)


def simulate(
    reference: BudgetSweep, demand_scale: list[float], ratio: float = 1.0, steps: int = 200
) -> tuple[list[float], list[float], float, float]:
    """A flight of `steps` equal-traffic steps whose spend per step is scale(t) × (reference spend at λ) × n.

    Realized cost = ratio × predicted, reported one step later. Returns (λ path, committed path, budget, realized).
    """
    start = datetime(2026, 1, 1, tzinfo=UTC)
    per_step = 100.0  # individuals per step
    budget = 0.6 * spend_per_capita(reference, reference.solve_per_capita(1e9, False).lam) * per_step * steps
    spec = CampaignSpec(
        total_budget=budget,
        start=start,
        end=start + timedelta(seconds=steps),
        pacing="even",
        expected_audience=int(per_step * steps),
    )
    lam = reference.solve_per_capita(budget / spec.expected_audience, False).lam
    memory: dict[str, float] = {"initial_lambda": lam}
    committed = realized = covered = demand = 0.0
    cap = budget
    lams, spent = [], []
    for k in range(steps):
        scale = float(np.interp(k / steps, np.linspace(0, 1, len(demand_scale)), demand_scale))
        step_demand = scale * spend_per_capita(reference, lam) * per_step  # what λ asks for
        step_spend = min(step_demand, max(cap - committed, 0.0))  # what the cap lets through
        realized += ratio * (committed - covered)  # last step's decisions are reported now
        covered = committed
        committed += step_spend
        demand += step_demand
        state = LedgerState(budget, cap, committed, 0.0, 0.0, realized, covered, demand)
        step = pace(spec, state, start.timestamp() + k + 1, lam, reference, memory)
        lam, memory, cap = step.lam, step.memory, step.cap
        lams.append(lam)
        spent.append(committed)
    return lams, spent, budget, realized + ratio * (committed - covered)


def test_follows_a_drifting_demand_without_oscillating(reference: BudgetSweep) -> None:
    lams, spent, budget, _ = simulate(reference, demand_scale=[0.8, 1.0, 1.3, 1.6])
    assert 0.97 * budget <= spent[-1] <= budget
    moves = np.sign(np.diff(np.log(lams)))
    moves = moves[moves != 0]
    assert np.count_nonzero(np.diff(moves)) <= 6  # λ rises with the drift; it does not flap up and down
    assert lams[-1] > lams[0]  # more demand at the end: a higher λ


def test_spends_when_demand_falls(reference: BudgetSweep) -> None:
    lams, spent, budget, _ = simulate(reference, demand_scale=[1.2, 0.9, 0.7])
    assert spent[-1] >= 0.97 * budget and lams[-1] < lams[0]


def test_realized_above_predicted_lowers_the_cap(reference: BudgetSweep) -> None:
    _, spent, budget, realized = simulate(reference, demand_scale=[1.0, 1.0], ratio=1.25)
    assert spent[-1] <= budget / 1.2  # committed stops early so realized lands at the budget
    assert 0.95 * budget <= realized <= budget


def test_realized_cap_never_above_the_budget() -> None:
    state = LedgerState(100.0, 100.0, 50.0, 0.0, 0.0, 20.0, 40.0)
    assert realized_cap(state, ratio=0.5) == 100.0
    assert realized_cap(state, ratio=2.0) < 100.0
