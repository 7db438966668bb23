"""Synthetic coupon benchmark with known potential outcomes (DESIGN.md §6), so true decision value is computable.

World: an e-commerce platform sends one of K coupons (treatment 0 = no coupon, then face values 5, 10, 15, …)
for a two-week window. Per individual i and coupon j with face value v_j:
- expected orders λ_ij = λ0(x) + Δ(x, u)·(1 − exp(−b(x)·v_j)): diminishing returns in the face value, with a
  heterogeneous ceiling Δ that is small or negative for some people ("sure things", coupon-averse members);
- potential revenue r_ij = avg_basket(x)·λ_ij (expected GMV);
- potential cost c_ij = v_j·κ(x)·(1 − exp(−λ_ij)) = face value × redemption probability (someone who orders
  redeems with probability κ), so coupons to people who would order anyway cost money without uplift.
Factual outcomes are the potential ones plus mean-one multiplicative noise (CV = `noise`).

Confounding (what Bi-DFCL must cope with): a hidden variable u (not among the features) raises the uplift
ceiling Δ, and the logging policy of the OBS set gives larger coupons to people with higher u (and higher
discount affinity / longer since the last order): P(t = j) = softmax_j(selection_strength·h_i·v_j/v_max).
A model fitted on OBS sees large coupons followed by large uplift and cannot tell from x alone that it is
u at work. RCT rows get uniform random arms.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from training.config import DatasetConfig
from training.data import write_table

TREATMENT_COLUMN = "coupon"
CITY_TIERS = ("tier_1", "tier_2", "tier_3")
NUMERIC_FEATURES = (
    "tenure_months",  # months since sign-up
    "orders_90d",  # orders in the last 90 days
    "avg_basket",  # average order value (currency units)
    "days_since_order",  # recency of the last order
    "app_sessions_30d",  # app sessions in the last 30 days
    "discount_affinity",  # share of past orders that used a discount, 0..1
    "is_member",  # paid membership, 0/1
)
CORE_FEATURES = (*NUMERIC_FEATURES, "city_tier")  # city_tier is categorical


@dataclass(frozen=True)
class SyntheticSpec:
    """The synthetic world. Features beyond the 8 core ones are irrelevant `noise_<k>` columns."""

    n_features: int = 8  # raw feature columns: the 8 core features, then noise_1, noise_2, …
    n_treatments: int = 5  # K: no_coupon, coupon_5, coupon_10, … (face value 5·j)
    noise: float = 1.0  # coefficient of variation of the mean-one noise on factual revenue and cost
    selection_strength: float = 1.5  # 0 → the OBS logging policy is uniform; larger → more confounded
    hidden_uplift: float = 1.2  # weight of the hidden u in the uplift ceiling (0 → no hidden confounder)
    seed: int = 0  # default seed of `generate` / `write_benchmark`

    def __post_init__(self) -> None:
        if self.n_features < len(CORE_FEATURES):
            raise ValueError(f"n_features must be >= {len(CORE_FEATURES)} (the core features), got {self.n_features}")
        if self.n_treatments < 2:
            raise ValueError(f"n_treatments must be >= 2, got {self.n_treatments}")
        if self.noise < 0 or self.selection_strength < 0 or self.hidden_uplift < 0:
            raise ValueError(
                f"noise, selection_strength and hidden_uplift must be >= 0, got "
                f"{self.noise}, {self.selection_strength}, {self.hidden_uplift}"
            )

    @property
    def treatment_names(self) -> tuple[str, ...]:
        return ("no_coupon", *(f"coupon_{v}" for v in self.face_values[1:]))

    @property
    def face_values(self) -> tuple[int, ...]:
        return tuple(5 * j for j in range(self.n_treatments))

    @property
    def feature_columns(self) -> tuple[str, ...]:
        return (*CORE_FEATURES, *(f"noise_{k}" for k in range(1, self.n_features - len(CORE_FEATURES) + 1)))


def dataset_config(spec: SyntheticSpec) -> DatasetConfig:
    """The DatasetConfig of every table `generate` / `write_benchmark` produce for `spec`."""
    return DatasetConfig(
        features=tuple(c for c in spec.feature_columns if c != "city_tier"),
        categorical=("city_tier",),
        treatment=TREATMENT_COLUMN,
        treatments=spec.treatment_names,
        revenue="revenue",
        cost="cost",
        binary_revenue=False,
        binary_cost=False,
        true_revenue_prefix="true_revenue_",
        true_cost_prefix="true_cost_",
    )


def _standardise(x: NDArray[np.float64]) -> NDArray[np.float64]:
    return (x - x.mean()) / (x.std() + 1e-12)


def _sigmoid(x: NDArray[np.float64]) -> NDArray[np.float64]:
    return 1.0 / (1.0 + np.exp(-x))


def _features(n: int, spec: SyntheticSpec, rng: np.random.Generator) -> pd.DataFrame:
    """Observed covariates. A latent engagement e links orders and app sessions (it only acts through them)."""
    tenure = np.clip(np.ceil(rng.gamma(2.0, 12.0, n)), 1, 120)
    is_member = (rng.random(n) < _sigmoid(-1.2 + 0.03 * tenure)).astype(np.int64)
    engagement = rng.normal(size=n)
    orders = rng.poisson(np.exp(0.2 + 0.6 * engagement + 0.4 * is_member + 0.004 * tenure))
    sessions = rng.poisson(np.exp(1.2 + 0.6 * engagement + 0.3 * is_member))
    days = np.round(rng.exponential(60.0 / (1.0 + orders)) + 90.0 * (orders == 0))
    tier = rng.choice(len(CITY_TIERS), size=n, p=[0.3, 0.45, 0.25])
    basket = np.round(np.exp(rng.normal(3.2 + 0.15 * (tier == 0) - 0.1 * (tier == 2), 0.4)), 2)
    affinity = np.round(rng.beta(2.0, 5.0, n), 3)
    frame = pd.DataFrame(
        {
            "tenure_months": tenure.astype(np.int64),
            "orders_90d": orders.astype(np.int64),
            "avg_basket": basket,
            "days_since_order": np.minimum(days, 365).astype(np.int64),
            "app_sessions_30d": sessions.astype(np.int64),
            "discount_affinity": affinity,
            "is_member": is_member,
            "city_tier": np.asarray(CITY_TIERS, dtype=object)[tier],
        }
    )
    for k in range(1, spec.n_features - len(CORE_FEATURES) + 1):
        frame[f"noise_{k}"] = np.round(rng.normal(size=n), 3)
    return frame


def potential_outcomes(
    x: pd.DataFrame, u: NDArray[np.float64], spec: SyntheticSpec
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(N, K) true revenue r_ij and cost c_ij of every coupon for covariates `x` and hidden `u` (N,)."""
    orders = x["orders_90d"].to_numpy(np.float64)
    sessions = x["app_sessions_30d"].to_numpy(np.float64)
    days = x["days_since_order"].to_numpy(np.float64)
    member = x["is_member"].to_numpy(np.float64)
    affinity = x["discount_affinity"].to_numpy(np.float64)
    basket = x["avg_basket"].to_numpy(np.float64)
    tier3 = (x["city_tier"].to_numpy() == "tier_3").astype(np.float64)
    # (N,) expected orders in the window without a coupon
    lam0 = np.exp(-1.6 + 0.45 * np.log1p(orders) + 0.25 * np.log1p(sessions) - 0.006 * days + 0.3 * member)
    # Uplift ceiling: price-sensitive (affinity, lapsing, tier-3) and hidden-u people respond; members less.
    # Fixed coefficients (not standardised per sample) so every table of a benchmark shares one world.
    score = 4.0 * (affinity - 0.29) + 0.012 * (days - 40.0) - 0.9 * member + 0.4 * tier3 + spec.hidden_uplift * u - 0.3
    ceiling = (0.08 + 0.45 * lam0) * (1.5 * _sigmoid(score) - 0.15)  # (N,) in orders, < 0 for some
    rate = 0.06 * (0.5 + 2.0 * affinity)  # (N,) how fast the response saturates with the face value
    value = np.asarray(spec.face_values, dtype=np.float64)  # (K,)
    lam = np.maximum(lam0[:, None] + ceiling[:, None] * (1.0 - np.exp(-rate[:, None] * value[None, :])), 0.0)
    revenue = basket[:, None] * lam  # (N, K)
    redeem = (0.55 + 0.4 * affinity)[:, None] * (1.0 - np.exp(-lam))  # (N, K) P(order and use the coupon)
    cost = value[None, :] * redeem  # (N, K); 0 for no_coupon
    return revenue, cost


def logging_propensity(x: pd.DataFrame, u: NDArray[np.float64], spec: SyntheticSpec) -> NDArray[np.float64]:
    """(N, K) P(t = j) of the OBS logging policy: bigger coupons for high u, discount affinity and recency gap."""
    affinity = x["discount_affinity"].to_numpy(np.float64)
    days = x["days_since_order"].to_numpy(np.float64)
    targeting = 0.8 * (affinity - 0.29) / 0.16 + 0.4 * (days - 40.0) / 50.0 + 1.0 * u  # (N,)
    value = np.asarray(spec.face_values, dtype=np.float64)
    logits = spec.selection_strength * targeting[:, None] * (value / value.max())[None, :]  # (N, K)
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=1, keepdims=True)


def _mean_one_noise(shape: tuple[int, ...], cv: float, rng: np.random.Generator) -> NDArray[np.float64]:
    if cv == 0:
        return np.ones(shape)
    return rng.gamma(1.0 / cv**2, cv**2, size=shape)  # mean 1, coefficient of variation cv


def generate(
    spec: SyntheticSpec, n_rows: int, randomised: bool, rng: np.random.Generator | None = None
) -> pd.DataFrame:
    """One table: features, `coupon` (treatment name), factual `revenue`/`cost`, oracle `true_*_<name>` columns.

    randomised=True → uniform random arms (RCT); False → the confounded logging policy (OBS).
    """
    if n_rows < 1:
        raise ValueError(f"n_rows must be >= 1, got {n_rows}")
    rng = np.random.default_rng(spec.seed) if rng is None else rng
    frame = _features(n_rows, spec, rng)
    u = rng.normal(size=n_rows)  # hidden confounder: never written to the table
    true_revenue, true_cost = potential_outcomes(frame, u, spec)  # (N, K) each
    K = spec.n_treatments
    if randomised:
        treatment = rng.integers(0, K, size=n_rows)
    else:
        propensity = logging_propensity(frame, u, spec)  # (N, K)
        treatment = (rng.random(n_rows)[:, None] > propensity.cumsum(axis=1)).sum(axis=1)
        treatment = np.minimum(treatment, K - 1)  # guards the cumsum's rounding at 1.0
    rows = np.arange(n_rows)
    names = spec.treatment_names
    frame[TREATMENT_COLUMN] = np.asarray(names, dtype=object)[treatment]
    frame["revenue"] = true_revenue[rows, treatment] * _mean_one_noise((n_rows,), spec.noise, rng)
    frame["cost"] = true_cost[rows, treatment] * _mean_one_noise((n_rows,), spec.noise, rng)
    for j, name in enumerate(names):
        frame[f"true_revenue_{name}"] = true_revenue[:, j]
    for j, name in enumerate(names):
        frame[f"true_cost_{name}"] = true_cost[:, j]
    return frame


def write_benchmark(
    out_dir: str | Path,
    spec: SyntheticSpec | None = None,
    rct_rows: int = 10_000,
    obs_rows: int = 200_000,
    val_rows: int = 10_000,
    test_rows: int = 50_000,
    seed: int | None = None,
    fmt: str = "parquet",
) -> dict[str, Path]:
    """Write rct_train, rct_val, rct_test (RCT), obs (confounded) and config.toml into `out_dir`.

    Returns {"rct_train", "rct_val", "rct_test", "obs", "config"} → path. Each table gets its own child of
    SeedSequence(seed) (default: spec.seed), so a seed always gives the same bytes, and changing one table's
    size does not change the others.
    """
    spec = SyntheticSpec() if spec is None else spec
    if fmt not in ("parquet", "csv", "csv.gz"):
        raise ValueError(f"fmt must be 'parquet', 'csv' or 'csv.gz', got {fmt!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    children = np.random.SeedSequence(spec.seed if seed is None else seed).spawn(4)
    plan = [
        ("rct_train", rct_rows, True),
        ("rct_val", val_rows, True),
        ("rct_test", test_rows, True),
        ("obs", obs_rows, False),
    ]
    paths: dict[str, Path] = {}
    for (name, rows, randomised), child in zip(plan, children, strict=True):
        frame = generate(spec, rows, randomised, np.random.default_rng(child))
        paths[name] = write_table(frame, out / f"{name}.{fmt}")
    paths["config"] = out / "config.toml"
    dataset_config(spec).dump(
        paths["config"],
        comment=(
            f"Synthetic coupon benchmark (training/synthetic.py): {spec}\n"
            "Oracle columns true_revenue_<arm> / true_cost_<arm> hold the potential outcomes of every arm."
        ),
    )
    return paths
