"""Turn one RCT table into a Bi-DFCL "hybrid" benchmark: confounded OBS + scarce RCT train + RCT val/test.

Criteo Hybrid (METHOD.md §2, §8.14; Bi-DFCL App. B.1.1), for any RCT file with a DatasetConfig:
1. seeded shuffle; the first 5% of rows fit a simple two-stage model (per-arm ridge regressions of revenue
   and cost on the encoded features, numpy only);
2. that model acts as a past targeting policy on the next 50%: rows in the top q = 0.5 by predicted
   incremental ROI get their predicted best non-control arm, the others control;
3. rows of that 50% whose logged (random) arm equals the policy's arm become OBS; the rest are dropped. The
   OBS arm mix then follows the policy, and its outcomes are what the policy would have logged;
4. the remaining 45% become RCT train (5% of all), validation (10%) and test (30%).
Every output keeps the input's columns, so the input's DatasetConfig loads all of them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from training.config import DatasetConfig
from training.data import logs_from_frame, read_table, write_table
from training.dataset import Logs

log = logging.getLogger(__name__)

SPLITS = ("obs", "rct_train", "rct_val", "rct_test")


@dataclass(frozen=True)
class HybridFractions:
    """Shares of the input's rows, in shuffle order; they may sum to less than 1 (the tail is unused)."""

    policy_train: float = 0.05  # fits the logging policy's model, then discarded
    policy_apply: float = 0.50  # logged arm == policy arm → OBS, else dropped
    rct_train: float = 0.05
    rct_val: float = 0.10
    rct_test: float = 0.30

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"fractions.{f.name} must be in (0, 1], got {value}")
        total = sum(getattr(self, f.name) for f in fields(self))
        if total > 1.0 + 1e-9:
            raise ValueError(f"fractions sum to {total:.6f} > 1")


@dataclass(frozen=True)
class RidgeOutcomeModel:
    """Two-stage model: per arm, ridge regressions of revenue and cost on standardised features.

    With 0/1 labels this is a linear probability model: crude, but the policy only has to be a plausible,
    biased targeting rule, not a good one.
    """

    mean: NDArray[np.float64]  # (D,) feature standardisation
    std: NDArray[np.float64]  # (D,)
    revenue_coef: NDArray[np.float64]  # (K, D + 1), last column the intercept
    cost_coef: NDArray[np.float64]  # (K, D + 1)

    def predict(self, features: NDArray[np.floating]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """(N, K) predicted revenue and cost of every arm."""
        X = _design(features, self.mean, self.std)  # (N, D + 1)
        return X @ self.revenue_coef.T, X @ self.cost_coef.T


def _design(features: NDArray[np.floating], mean: NDArray[np.float64], std: NDArray[np.float64]) -> NDArray[np.float64]:
    X = (np.asarray(features, dtype=np.float64) - mean) / std
    return np.hstack([X, np.ones((X.shape[0], 1))])


def fit_ridge_model(logs: Logs, alpha: float = 1.0) -> RidgeOutcomeModel:
    """Fit revenue and cost per arm on the factual rows of `logs` (closed form, intercept not penalised)."""
    mean = logs.features.mean(axis=0).astype(np.float64)
    std = logs.features.std(axis=0).astype(np.float64)
    std[std == 0] = 1.0  # constant columns (e.g. an absent category) stay at 0 after centring
    D = logs.n_features
    penalty = alpha * np.eye(D + 1)
    penalty[D, D] = 0.0
    coefs = np.zeros((2, logs.n_treatments, D + 1))
    for j in range(logs.n_treatments):
        rows = logs.treatment == j
        if not rows.any():
            raise ValueError(f"{logs.source}: treatment {logs.treatment_names[j]!r} has no rows to fit the policy on")
        X = _design(logs.features[rows], mean, std)  # (N_j, D + 1)
        gram = X.T @ X + penalty
        for k, target in enumerate((logs.revenue[rows], logs.cost[rows])):
            coefs[k, j] = np.linalg.solve(gram, X.T @ target.astype(np.float64))
    return RidgeOutcomeModel(mean=mean, std=std, revenue_coef=coefs[0], cost_coef=coefs[1])


def roi_policy(
    revenue: NDArray[np.float64], cost: NDArray[np.float64], top_share: float
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """(N,) policy arm and (N,) predicted incremental ROI: the top `top_share` get their best coupon, others 0.

    Incremental ROI of arm j ≥ 1: (r̂_j − r̂_0) / (ĉ_j − ĉ_0), the extra cost floored at a tiny positive value so
    an arm predicted to add revenue at no extra cost ranks first rather than dividing by zero.
    """
    extra_revenue = revenue[:, 1:] - revenue[:, :1]  # (N, K−1)
    floor = 1e-6 * (np.abs(cost).max() + 1e-12)
    extra_cost = np.maximum(cost[:, 1:] - cost[:, :1], floor)  # (N, K−1)
    roi = extra_revenue / extra_cost
    best = roi.argmax(axis=1)  # (N,) best non-control arm − 1
    score = roi[np.arange(len(roi)), best]
    n_treated = round(top_share * len(score))
    treated = np.zeros(len(score), dtype=bool)
    treated[np.argsort(-score, kind="stable")[:n_treated]] = True
    return np.where(treated, best + 1, 0).astype(np.int64), score


def _incremental_roi(revenue: NDArray[np.float64], cost: NDArray[np.float64]) -> float | None:
    """(value_policy − value_control) ratio from (2,) per-capita [control, policy] revenue and cost."""
    extra_cost = float(cost[1] - cost[0])
    return float(revenue[1] - revenue[0]) / extra_cost if extra_cost > 0 else None


def policy_report(logs: Logs, policy: NDArray[np.int64]) -> dict[str, Any]:
    """Incremental ROI of the logging policy vs random targeting on RCT rows `logs` (IPW; oracle when known).

    IPW value of a policy π: (1/N) Σ_i y_i 1[t_i = π_i] / p_{t_i} with p_j the arm shares (METHOD.md §7).
    Random targeting (any treated share, uniformly random coupons) has the incremental ROI of the average
    coupon: (mean_j≥1 V(j) − V(0)) / (mean_j≥1 C(j) − C(0)).
    """
    p = logs.propensity()  # (K,)
    weight = (logs.treatment == policy) / p[logs.treatment]  # (N,)
    arm_revenue = np.array([logs.revenue[logs.treatment == j].mean() for j in range(logs.n_treatments)])
    arm_cost = np.array([logs.cost[logs.treatment == j].mean() for j in range(logs.n_treatments)])
    policy_value = (float(np.mean(weight * logs.revenue)), float(np.mean(weight * logs.cost)))
    report: dict[str, Any] = {
        "policy_ipw_revenue_per_capita": policy_value[0],
        "policy_ipw_cost_per_capita": policy_value[1],
        "policy_incremental_roi": _incremental_roi(
            np.array([arm_revenue[0], policy_value[0]]), np.array([arm_cost[0], policy_value[1]])
        ),
        "random_incremental_roi": _incremental_roi(
            np.array([arm_revenue[0], arm_revenue[1:].mean()]), np.array([arm_cost[0], arm_cost[1:].mean()])
        ),
    }
    if logs.true_revenue is not None and logs.true_cost is not None:
        rows = np.arange(logs.n_rows)
        R, C = logs.true_revenue.astype(np.float64), logs.true_cost.astype(np.float64)
        report["true_policy_incremental_roi"] = _incremental_roi(
            np.array([R[:, 0].mean(), R[rows, policy].mean()]), np.array([C[:, 0].mean(), C[rows, policy].mean()])
        )
        report["true_random_incremental_roi"] = _incremental_roi(
            np.array([R[:, 0].mean(), R[:, 1:].mean()]), np.array([C[:, 0].mean(), C[:, 1:].mean()])
        )
    for prefix in ("", "true_"):
        policy_roi = report.get(f"{prefix}policy_incremental_roi")
        random_roi = report.get(f"{prefix}random_incremental_roi")
        if f"{prefix}random_incremental_roi" in report:
            lift = policy_roi / random_roi - 1.0 if policy_roi is not None and random_roi else None
            report[f"{prefix}roi_lift_vs_random"] = lift
    return report


def _arm_counts(logs: Logs) -> dict[str, int]:
    return {name: int(n) for name, n in zip(logs.treatment_names, logs.arm_counts(), strict=True)}


def split_warnings(arm_counts: dict[str, dict[str, int]], min_rows: int, report: dict[str, Any]) -> list[str]:
    """Why the splits may not train: an arm with no rows or fewer than `min_rows` (what `train` refuses), and a
    logging policy no better than random targeting (OBS logs that teach the wrong targeting)."""
    problems = []
    for split, counts in arm_counts.items():
        for arm, count in counts.items():
            if count == 0:
                problems.append(f"{split}: treatment {arm!r} has 0 rows (training on this split will fail)")
            elif count < min_rows:
                problems.append(
                    f"{split}: treatment {arm!r} has {count} row(s), fewer than min_rows_per_arm = {min_rows} "
                    "(training on this split will fail)"
                )
    for prefix, what in (("", "IPW"), ("true_", "true")):
        lift = report.get(f"{prefix}roi_lift_vs_random")
        if lift is not None and lift < 0:
            problems.append(
                f"logging policy: its {what} incremental ROI is {-100 * lift:.0f}% below random targeting's "
                "(OBS rows are logged by a policy worse than random)"
            )
    return problems


def build_hybrid(
    input_path: str | Path,
    config: DatasetConfig,
    out_dir: str | Path,
    seed: int = 0,
    fractions: HybridFractions | None = None,
    top_share: float = 0.5,
    ridge_alpha: float = 1.0,
    fmt: str = "parquet",
    strict: bool = False,
) -> dict[str, Path]:
    """Write obs, rct_train, rct_val, rct_test (`fmt`: parquet, csv or csv.gz) and summary.json into `out_dir`.

    Returns {"obs", "rct_train", "rct_val", "rct_test", "summary"} → path. Deterministic for a seed. Thin or empty
    arms in a split and a logging policy worse than random are logged as warnings and listed in the summary's
    "warnings"; with `strict` they raise ValueError (naming each) before any file is written.
    """
    fractions = HybridFractions() if fractions is None else fractions
    if not 0.0 < top_share <= 1.0:
        raise ValueError(f"top_share must be in (0, 1], got {top_share}")
    if fmt not in ("parquet", "csv", "csv.gz"):
        raise ValueError(f"fmt must be 'parquet', 'csv' or 'csv.gz', got {fmt!r}")
    source = str(input_path)
    frame = read_table(input_path, text_columns=[*config.categorical, *config.boolean_columns, config.treatment])
    logs = logs_from_frame(frame, config, source=source)  # validates every row of the input

    order = np.random.default_rng(seed).permutation(logs.n_rows)  # (N,) shuffled row indices
    shares = [getattr(fractions, f.name) for f in fields(fractions)]
    bounds = np.round(np.cumsum([0.0, *shares]) * logs.n_rows).astype(np.int64)
    parts = {f.name: order[bounds[k] : bounds[k + 1]] for k, f in enumerate(fields(fractions))}
    for name, rows in parts.items():
        if len(rows) == 0:
            raise ValueError(f"fractions.{name} = {getattr(fractions, name)} gives no rows of {logs.n_rows}")

    model = fit_ridge_model(logs.subset(parts["policy_train"]), alpha=ridge_alpha)
    apply_rows = parts["policy_apply"]
    applied = logs.subset(apply_rows)
    policy, _ = roi_policy(*model.predict(applied.features), top_share=top_share)  # (N_apply,)
    matched = applied.treatment == policy
    split_rows = {
        "obs": apply_rows[matched],
        "rct_train": parts["rct_train"],
        "rct_val": parts["rct_val"],
        "rct_test": parts["rct_test"],
    }

    arm_counts = {name: _arm_counts(logs.subset(split_rows[name])) for name in SPLITS}
    report = policy_report(applied, policy)
    problems = split_warnings(arm_counts, config.min_rows_per_arm, report)
    if strict and problems:
        raise ValueError(f"{source}: the hybrid split with seed {seed} is unusable: " + "; ".join(problems))
    for problem in problems:
        log.warning("%s (seed %d): %s", source, seed, problem)

    out = Path(out_dir)
    paths: dict[str, Path] = {}
    for name in SPLITS:
        rows = split_rows[name]
        paths[name] = write_table(frame.iloc[rows].reset_index(drop=True), out / f"{name}.{fmt}")
    summary = {
        "input": source,
        "seed": seed,
        "fractions": asdict(fractions),
        "top_share": top_share,
        "input_rows": logs.n_rows,
        "rows": {name: len(split_rows[name]) for name in SPLITS}
        | {"policy_train": len(parts["policy_train"]), "policy_apply": len(apply_rows)},
        "arm_counts": arm_counts,
        "policy_arm_counts": {name: int((policy == j).sum()) for j, name in enumerate(logs.treatment_names)},
        "obs_match_rate": float(matched.mean()),
        "logging_policy": report,
        "warnings": problems,
    }
    paths["summary"] = out / "summary.json"
    paths["summary"].write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return paths
