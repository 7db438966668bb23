"""The simulated day for `bench.campaign`: arrivals, drifting customers, true outcomes, and the offline baselines.

Individuals come from the synthetic world (`training.synthetic`), whose potential outcomes are known. A day is
`slots` equal time slots; slot k gets arrivals ∝ a time-of-day curve (night trough, lunch and evening peaks).
Drift: over the day the mix tilts towards coupon-sensitive customers (resampling a large pool with weights
exp(β(t)·z), z the standardised discount affinity, β rising linearly), and the redemption level rises: the
true cost of a coupon is the world's c_ij × κ(t), κ rising linearly, which the model cannot see (so realized
cost drifts above predicted cost during the day).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from service.artifact import Artifact
from service.decision import choose
from service.features import FeatureEncoder
from training.synthetic import SyntheticSpec, generate

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class DayConfig:
    individuals: int = 36_000  # arrivals over the day
    slots: int = 360  # time slots (one request per replica per slot)
    beta_start: float = -0.5  # drift of the coupon-sensitive share: resampling tilt at the start ...
    beta_end: float = 1.1  # ... and at the end of the day
    kappa_start: float = 1.0  # redemption level (true cost multiplier) at the start ...
    kappa_end: float = 1.25  # ... and at the end of the day
    pool: int = 200_000
    seed: int = 11


def time_of_day(points: int) -> FloatArray:
    """(points,) relative arrival rate over a day: a night trough, a lunch peak and a larger evening peak."""
    hours = (np.arange(points) + 0.5) * 24.0 / points
    curve = 0.15 + 0.6 * np.exp(-0.5 * ((hours - 12.5) / 1.8) ** 2) + 1.0 * np.exp(-0.5 * ((hours - 20.0) / 2.2) ** 2)
    curve += 0.25 * np.exp(-0.5 * ((hours - 8.5) / 1.5) ** 2)
    return curve / curve.sum()


@dataclass(frozen=True)
class Day:
    """Every arrival of the day, in order, with its slot, features and true (drifted) outcomes."""

    slot: NDArray[np.int64]  # (N,) arrival slot
    features: list[dict[str, float | str]]  # (N,) request features keyed by name
    true_revenue: FloatArray  # (N, K)
    true_cost: FloatArray  # (N, K) with the redemption level of the arrival's time
    slots: int

    @property
    def fraction(self) -> FloatArray:
        """(N,) time of day of each arrival, 0..1."""
        return (self.slot + 0.5) / self.slots


def make_day(config: DayConfig, feature_names: list[str]) -> Day:
    spec = SyntheticSpec(seed=config.seed)
    rng = np.random.default_rng(config.seed)
    pool = generate(spec, config.pool, randomised=True, rng=rng)
    names = spec.treatment_names
    revenue = pool[[f"true_revenue_{n}" for n in names]].to_numpy(np.float64)
    cost = pool[[f"true_cost_{n}" for n in names]].to_numpy(np.float64)
    affinity = pool["discount_affinity"].to_numpy(np.float64)
    z = (affinity - affinity.mean()) / affinity.std()
    counts = rng.multinomial(config.individuals, time_of_day(config.slots))  # (slots,)
    slot = np.repeat(np.arange(config.slots), counts)
    t = (slot + 0.5) / config.slots
    beta = config.beta_start + (config.beta_end - config.beta_start) * t  # (N,)
    kappa = config.kappa_start + (config.kappa_end - config.kappa_start) * t
    # Gumbel-free tilted draw: per arrival, pick from the pool with weights exp(beta·z) (bucketed by slot).
    chosen = np.empty(len(slot), dtype=np.int64)
    for k in np.unique(slot):
        rows = np.flatnonzero(slot == k)
        weights = np.exp(beta[rows[0]] * z)
        chosen[rows] = rng.choice(config.pool, size=len(rows), p=weights / weights.sum())
    frame: pd.DataFrame = pool.iloc[chosen]
    raw = [c for c in spec.feature_columns if c in frame.columns]
    records = frame[raw].to_dict(orient="records")
    features = [{str(k): (v if isinstance(v, str) else float(v)) for k, v in r.items()} for r in records]
    del feature_names  # the service encodes raw names (city_tier as a category) itself
    return Day(slot, features, revenue[chosen], cost[chosen] * kappa[:, None], config.slots)


@dataclass(frozen=True)
class Outcome:
    """What a policy's decisions truly spent and earned over the day."""

    committed: float  # predicted cost of the treatments given
    true_spend: float
    true_revenue: float
    incremental_revenue: float  # over giving everyone no coupon


def predictions(day: Day, artifact: Artifact) -> tuple[FloatArray, FloatArray]:
    """(N, K) predicted revenue and cost of the model for every arrival (as the service computes them)."""
    matrix, _ = FeatureEncoder(artifact.manifest).encode(day.features)
    revenue, cost = artifact.predict(matrix)
    return revenue.astype(np.float64), cost.astype(np.float64)


def outcome(day: Day, treatment: NDArray[np.int64], predicted_cost: FloatArray) -> Outcome:
    rows = np.arange(len(treatment))
    revenue = float(day.true_revenue[rows, treatment].sum())
    return Outcome(
        committed=float(predicted_cost[rows, treatment].sum()),
        true_spend=float(day.true_cost[rows, treatment].sum()),
        true_revenue=revenue,
        incremental_revenue=revenue - float(day.true_revenue[:, 0].sum()),
    )


def hindsight_lambda(day: Day, revenue: FloatArray, cost: FloatArray, budget: float) -> tuple[float, Outcome]:
    """The best fixed λ for the realized traffic with the model: the smallest λ (most revenue) whose decisions
    keep both true spend and committed (predicted) spend within the budget, by bisection on log λ."""

    def fits(lam: float) -> tuple[bool, Outcome]:
        result = outcome(day, choose(revenue, cost, lam), cost)
        return result.true_spend <= budget and result.committed <= budget, result

    low, high = 1e-4, 1.0
    while not fits(high)[0]:
        high *= 2.0
    for _ in range(40):
        middle = float(np.sqrt(low * high))
        low, high = (low, middle) if fits(middle)[0] else (middle, high)
    return high, fits(high)[1]
