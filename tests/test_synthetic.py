"""The synthetic coupon benchmark: known potential outcomes, a decision that matters, and confounded OBS."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from service.decision import sweep
from training.config import DatasetConfig
from training.data import encoding_from_feature_names, load_logs, logs_from_frame
from training.dataset import Logs
from training.synthetic import SyntheticSpec, dataset_config, generate, write_benchmark


def _logs(spec: SyntheticSpec, n: int, randomised: bool, seed: int = 0) -> Logs:
    return logs_from_frame(generate(spec, n, randomised, np.random.default_rng(seed)), dataset_config(spec))


def _oracle(logs: Logs) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    assert logs.true_revenue is not None and logs.true_cost is not None
    return logs.true_revenue.astype(np.float64), logs.true_cost.astype(np.float64)


def test_columns_oracle_and_noise_free_factuals() -> None:
    spec = SyntheticSpec(n_features=10, noise=0.0)
    frame = generate(spec, 500, randomised=True, rng=np.random.default_rng(3))
    names = spec.treatment_names
    assert names == ("no_coupon", "coupon_5", "coupon_10", "coupon_15", "coupon_20")
    assert {"noise_1", "noise_2", "city_tier", "coupon", "revenue", "cost"} <= set(frame.columns)
    assert {f"true_revenue_{n}" for n in names} | {f"true_cost_{n}" for n in names} <= set(frame.columns)
    logs = logs_from_frame(frame, dataset_config(spec))
    R, C = _oracle(logs)
    rows = np.arange(logs.n_rows)
    # noise = 0: the factual outcome is exactly the potential outcome of the logged arm
    np.testing.assert_allclose(logs.revenue, R[rows, logs.treatment], rtol=1e-6)
    np.testing.assert_allclose(logs.cost, C[rows, logs.treatment], rtol=1e-6)
    assert np.all(C[:, 0] == 0)
    assert np.all(np.diff(C, axis=1) > 0), "a bigger coupon must cost more in expectation"
    assert logs.n_features == 9 + 3  # 7 numeric + 2 noise + 3 one-hot city tiers


def test_noise_is_mean_one() -> None:
    logs = _logs(SyntheticSpec(noise=1.0), 20_000, randomised=True)
    R, C = _oracle(logs)
    rows = np.arange(logs.n_rows)
    assert logs.revenue.mean() == pytest.approx(R[rows, logs.treatment].mean(), rel=0.03)
    assert logs.cost.mean() == pytest.approx(C[rows, logs.treatment].mean(), rel=0.03)
    assert np.corrcoef(logs.revenue, R[rows, logs.treatment])[0, 1] < 0.9  # the noise is real


def test_decision_matters_optimum_far_above_random() -> None:
    logs = _logs(SyntheticSpec(), 20_000, randomised=True)
    R, C = _oracle(logs)
    base = R[:, 0].sum()
    budget_sweep = sweep(R, C)
    # Uniform random arms spend the mean cost; the optimum with that budget gains much more revenue.
    random_gain = R.mean(axis=1).sum() - base
    optimum = budget_sweep.solve(C.mean(axis=1).sum(), with_assignment=False)
    assert (optimum.revenue - base) > 1.4 * random_gain
    # At a tight budget (0.5 per capita) targeting is worth far more than coupons to random people.
    tight = budget_sweep.solve_per_capita(0.5, with_assignment=False)
    random_tight = 0.5 / C[:, 1:].mean() * (R[:, 1:].mean() - R[:, 0].mean()) * logs.n_rows
    assert (tight.revenue - base) > 2.5 * random_tight
    # Incremental ROI of coupon_10 varies a lot across people, and some respond negatively.
    roi = (R[:, 2] - R[:, 0]) / C[:, 2]
    low, high = np.quantile(roi, [0.1, 0.9])
    assert high - low > 1.0
    assert 0.03 < float(np.mean(R[:, 2] < R[:, 0])) < 0.3


def _arm_effects(logs: Logs, adjust: bool) -> NDArray[np.float64]:
    """(K−1,) estimated mean revenue effect of each coupon: raw arm means, or per-arm linear regression."""
    X = np.hstack([logs.features, np.ones((logs.n_rows, 1))])
    means = []
    for j in range(logs.n_treatments):
        rows = logs.treatment == j
        if adjust:
            coef, *_ = np.linalg.lstsq(X[rows], logs.revenue[rows].astype(np.float64), rcond=None)
            means.append(float((X @ coef).mean()))
        else:
            means.append(float(logs.revenue[rows].mean()))
    return np.array(means[1:]) - means[0]


def _true_effects(logs: Logs) -> NDArray[np.float64]:
    """(K−1,) true average effect of each coupon on revenue over the rows of `logs`."""
    R, _ = _oracle(logs)
    return (R[:, 1:] - R[:, :1]).mean(axis=0)


def test_obs_is_confounded_beyond_the_features() -> None:
    spec = SyntheticSpec(noise=0.0)
    rct = _logs(spec, 40_000, randomised=True, seed=1)
    obs = _logs(spec, 40_000, randomised=False, seed=2)
    # The logging policy departs from uniform.
    assert obs.propensity().max() - obs.propensity().min() > 0.05
    # RCT: naive and regression-adjusted estimates are close to the truth.
    assert np.abs(_arm_effects(rct, adjust=False) - _true_effects(rct)).max() < 0.45
    assert np.abs(_arm_effects(rct, adjust=True) - _true_effects(rct)).max() < 0.35
    # OBS: naive estimates are badly off, and adjusting for every feature still overstates the biggest
    # coupon's effect, because the hidden u drives both the coupon choice and the uplift.
    assert np.abs(_arm_effects(obs, adjust=False) - _true_effects(obs)).max() > 0.6
    assert (_arm_effects(obs, adjust=True) - _true_effects(obs))[-1] > 0.6


def test_without_selection_obs_is_unbiased() -> None:
    obs = _logs(SyntheticSpec(noise=0.0, selection_strength=0.0), 40_000, randomised=False, seed=2)
    assert np.abs(_arm_effects(obs, adjust=True) - _true_effects(obs)).max() < 0.35


def test_write_benchmark_is_deterministic_and_loadable(tmp_path: Path) -> None:
    spec = SyntheticSpec(n_features=9)

    def write(name: str, seed: int) -> dict[str, Path]:
        out = tmp_path / name
        return write_benchmark(out, spec, rct_rows=600, obs_rows=1_500, val_rows=500, test_rows=700, seed=seed)

    first, second, other = write("a", 7), write("b", 7), write("c", 8)
    assert set(first) == {"rct_train", "rct_val", "rct_test", "obs", "config"}
    for name in first:
        assert first[name].read_bytes() == second[name].read_bytes(), name
    assert first["obs"].read_bytes() != other["obs"].read_bytes()

    config = DatasetConfig.load(first["config"])
    assert config == dataset_config(spec)
    train = load_logs(first["rct_train"], config)
    encoding = encoding_from_feature_names(train.feature_names, config)
    for name, rows in (("rct_val", 500), ("rct_test", 700), ("obs", 1_500)):
        logs = load_logs(first[name], config, encoding)
        assert logs.n_rows == rows and logs.has_oracle
        assert logs.feature_names == train.feature_names
    assert not train.binary_revenue and not train.binary_cost


def test_csv_benchmark_matches_parquet(tmp_path: Path) -> None:
    def write(name: str, fmt: str) -> dict[str, Path]:
        return write_benchmark(tmp_path / name, rct_rows=300, obs_rows=800, val_rows=300, test_rows=300, fmt=fmt)

    parquet, csv = write("p", "parquet"), write("c", "csv.gz")
    config = DatasetConfig.load(csv["config"])
    a, b = load_logs(parquet["obs"], config), load_logs(csv["obs"], config)
    np.testing.assert_array_equal(a.treatment, b.treatment)
    np.testing.assert_allclose(a.features, b.features)
    np.testing.assert_allclose(a.revenue, b.revenue, rtol=1e-6)


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="n_features"):
        SyntheticSpec(n_features=5)
    with pytest.raises(ValueError, match="n_treatments"):
        SyntheticSpec(n_treatments=1)
    with pytest.raises(ValueError, match="fmt"):
        write_benchmark("/nonexistent-never-created", fmt="xlsx")
    assert SyntheticSpec(n_treatments=3).treatment_names == ("no_coupon", "coupon_5", "coupon_10")
