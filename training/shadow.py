"""Shadow evaluation: a candidate model against the live one on the latest exploration slice (DESIGN.md §10).

The slice (`rct_shadow.parquet` from `python -m training logs`) holds exploration rows only: arms drawn
uniformly whatever the features, so it is an RCT, and each model's cost-curve area on it is estimated without
bias: by default with EOM (IPW, `training.evaluate`), or doubly robust (`--estimator dr`,
`training.evaluate.doubly_robust_area`) with the live model's predictions as the outcome model, valid because
the live model never saw the slice (it was trained before that day was served). DR only lowers the variance
when the live model predicts well; with a poor one it can raise it (measured on the synthetic world), so IPW
is the default. Both models are scored on the same rows and the same bootstrap resamples, so the interval of
their difference is paired: rows on which the two policies agree cancel out.

Promotion rule (`decide`): promote when the candidate's paired gain over the live model is positive and its
95% interval rules out a loss larger than `margin` (a share of the live area, default 1%). A noisy slice then
still lets a better candidate through, while a candidate that is probably worse, or could be clearly worse,
stays out; the live model is kept otherwise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from training.config import DatasetConfig
from training.data import CategoricalEncoding, load_logs
from training.dataset import Logs
from training.evaluate import bootstrap_areas, budget_grid, curve_area, doubly_robust_area, eom_curve

Scorer = tuple[NDArray[np.float64], NDArray[np.float64]]


@dataclass(frozen=True)
class ShadowResult:
    rows: int  # rows of the slice
    estimator: str  # "dr" or "ipw"
    budgets: list[float]
    candidate_area: float  # estimated cost-curve area (mean per-capita revenue over the budget grid)
    candidate_interval: tuple[float, float]  # 95% bootstrap interval
    live_area: float
    live_interval: tuple[float, float]
    gain: float  # candidate − live, paired
    gain_interval: tuple[float, float]
    gain_percent: float
    margin: float
    promote: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def predictions(model_path: Path, slice_path: Path, config: DatasetConfig | None) -> tuple[Scorer, Logs]:
    """(revenue, cost) (N, K) of a checkpoint (.pt) or a served artifact directory on the slice rows."""
    if model_path.is_dir():
        from service.artifact import load_artifact  # onnxruntime: the live model exactly as it serves

        artifact = load_artifact(model_path)
        manifest = artifact.manifest
        one_hot = {f"{c}={v}" for c, values in manifest.categorical.items() for v in values}
        encoding = CategoricalEncoding(
            numeric=tuple(f for f in manifest.features if f not in one_hot),
            categories={c: tuple(v) for c, v in manifest.categorical.items()},
        )
        if list(encoding.feature_names) != list(manifest.features):
            raise ValueError(f"{model_path}: manifest features are not numeric columns then one-hot blocks")
        if config is None:
            raise ValueError(f"{model_path} is an artifact directory; pass --config to read the slice")
        logs = load_logs(slice_path, config, encoding)
        revenue, cost = artifact.predict(logs.features)
        return (revenue.astype(np.float64), cost.astype(np.float64)), logs
    from training.commands import _load_model, _test_logs  # torch only when a checkpoint is given
    from training.network import predict

    model, extra, model_config = _load_model(model_path, None)
    logs = _test_logs(extra, config or model_config, slice_path, model_path)
    return predict(model, logs.features), logs


def _dr_bootstrap(
    models: dict[str, Scorer], baseline: Scorer, logs: Logs, grid: NDArray[np.float64], n_boot: int, seed: int
) -> dict[str, NDArray[np.float64]]:
    """(n_boot,) DR areas per model on the same row resamples (a resample missing an arm is drawn again)."""
    rng = np.random.default_rng(seed)
    samples = {name: np.empty(n_boot) for name in models}
    b = 0
    while b < n_boot:
        rows = rng.integers(0, logs.n_rows, logs.n_rows)
        resample = logs.subset(rows)
        if (resample.arm_counts() == 0).any():
            continue
        base = (baseline[0][rows], baseline[1][rows])
        for name, (revenue, cost) in models.items():
            samples[name][b] = doubly_robust_area(revenue[rows], cost[rows], resample, grid, baseline=base)
        b += 1
    return samples


def _interval(values: NDArray[np.float64]) -> tuple[float, float]:
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def decide(gain: float, gain_low: float, live_area: float, margin: float) -> tuple[bool, str]:
    """The promotion rule (module docstring)."""
    floor = -margin * abs(live_area)
    if gain <= 0:
        return False, f"estimated gain {gain:.5g} is not positive"
    if gain_low <= floor:
        return False, f"95% interval reaches a loss of {-gain_low:.5g}, more than the margin {-floor:.5g}"
    return True, f"gain {gain:.5g} > 0 and the 95% interval's low end {gain_low:.5g} is above {floor:.5g}"


def shadow_evaluate(
    candidate: Scorer,
    live: Scorer,
    slice_logs: Logs,
    budgets: NDArray[np.float64] | None = None,
    n_boot: int = 400,
    margin: float = 0.01,
    seed: int = 0,
    estimator: str = "ipw",
) -> ShadowResult:
    """Paired comparison of two models' predictions on the slice, and the promotion decision."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if estimator not in ("dr", "ipw"):
        raise ValueError(f"estimator must be 'dr' or 'ipw', got {estimator!r}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    grid = budget_grid(slice_logs) if budgets is None else np.asarray(budgets, dtype=np.float64)
    models = {"candidate": candidate, "live": live}
    if estimator == "ipw":
        areas = {name: curve_area(eom_curve(r, c, slice_logs, grid), "ipw") for name, (r, c) in models.items()}
        samples = bootstrap_areas(models, slice_logs, grid, n_boot=n_boot, seed=seed)
    else:
        areas = {name: doubly_robust_area(r, c, slice_logs, grid, baseline=live) for name, (r, c) in models.items()}
        samples = _dr_bootstrap(models, live, slice_logs, grid, n_boot, seed)
    gain_samples = samples["candidate"] - samples["live"]
    gain = areas["candidate"] - areas["live"]
    gain_interval = _interval(gain_samples)
    promote, reason = decide(gain, gain_interval[0], areas["live"], margin)
    return ShadowResult(
        rows=slice_logs.n_rows,
        estimator=estimator,
        budgets=[float(b) for b in grid],
        candidate_area=areas["candidate"],
        candidate_interval=_interval(samples["candidate"]),
        live_area=areas["live"],
        live_interval=_interval(samples["live"]),
        gain=gain,
        gain_interval=gain_interval,
        gain_percent=100.0 * gain / areas["live"] if areas["live"] else float("nan"),
        margin=margin,
        promote=promote,
        reason=reason,
    )
