"""`make model`: rebuild `models/default/` deterministically.

A Bi-DFCL (PPL) target network trained on the synthetic coupon benchmark (K = 5: no_coupon, coupon_5 … coupon_20)
with seed 0, exported with a reference population of 20,000 RCT test individuals. Same code and seed → same
weights, same validation metrics and the same ONNX bytes (the export time is pinned).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from training.benchmark import prepare_suite
from training.config import DatasetConfig
from training.data import encoding_from_feature_names
from training.evaluate import budget_grid, curve_area, eom_curve
from training.export import export_artifact
from training.methods import train_method
from training.network import predict

METHOD = "bidfcl-ppl"
SEED = 0
POPULATION_ROWS = 20_000
CREATED_AT = "2026-11-22T00:00:00+00:00"  # pinned so the artifact is byte-for-byte reproducible


def build_default_model(
    out: Path, work: Path, progress: bool = True, say: Callable[[str], None] = lambda message: None
) -> None:
    splits = prepare_suite("synthetic", SEED, work)
    say(f"training {METHOD} on {splits.obs.n_rows} OBS + {splits.rct_train.n_rows} RCT rows (seed {SEED})")
    model, info = train_method(
        METHOD,
        rct_train=splits.rct_train,
        rct_val=splits.rct_val,
        obs=splits.obs,
        overrides={"seed": SEED},
        progress=progress,
    )
    val = splits.rct_val
    revenue, cost = predict(model, val.features)
    budgets = budget_grid(val)
    curve = eom_curve(revenue, cost, val, budgets)
    metrics = {
        "data": "RCT validation, synthetic coupon benchmark (training/synthetic.py, seed 0)",
        "budgets_per_capita": [round(float(b), 6) for b in budgets],
        "eom_revenue_per_capita": [round(float(v), 6) for v in curve.revenue_ipw],
        "eom_cost_per_capita": [round(float(v), 6) for v in curve.cost_ipw],
        "cost_curve_area_ipw": round(curve_area(curve, "ipw"), 6),
    }
    rows = np.sort(np.random.default_rng(SEED).choice(splits.rct_test.n_rows, POPULATION_ROWS, replace=False))
    population = splits.rct_test.subset(rows)
    dataset = DatasetConfig.load(work / "synthetic" / f"seed{SEED}" / "config.toml")
    encoding = encoding_from_feature_names(population.feature_names, dataset)
    manifest = export_artifact(
        model,
        out,
        population=population.features,
        feature_names=list(population.feature_names),
        treatment_names=list(population.treatment_names),
        method=METHOD,
        hyperparameters=info["config"],
        categorical={column: list(values) for column, values in encoding.categories.items()},
        training_data=splits.describe,
        validation_metrics=metrics,
        created_at=CREATED_AT,
    )
    say(
        f"wrote {out} (model version {manifest.model_version}); validation cost-curve area "
        f"{metrics['cost_curve_area_ipw']:.4f}; default budget {manifest.default_budget_per_capita:.4g} "
        f"per capita → λ* {manifest.default_lambda:.4g}"
    )
