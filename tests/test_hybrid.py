"""The hybrid builder: one RCT file → confounded OBS + RCT train/val/test (METHOD.md §2 Criteo Hybrid)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from training.config import DatasetConfig
from training.data import load_logs, logs_from_frame, read_table, write_table
from training.hybrid import SPLITS, HybridFractions, build_hybrid, fit_ridge_model, roi_policy
from training.synthetic import SyntheticSpec, dataset_config, generate

HILLSTROM = Path("/work/shared/data/hillstrom/hillstrom.csv.gz")
HILLSTROM_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "hillstrom.toml"
needs_hillstrom = pytest.mark.skipif(not HILLSTROM.exists(), reason=f"{HILLSTROM} not on this machine")

SPEC = SyntheticSpec(noise=0.5)
CONFIG = replace(dataset_config(SPEC), min_rows_per_arm=10)


@pytest.fixture(scope="module")
def synthetic_rct(tmp_path_factory: pytest.TempPathFactory) -> Path:
    frame = generate(SPEC, 6_000, randomised=True, rng=np.random.default_rng(0))
    return write_table(frame, tmp_path_factory.mktemp("rct") / "rct.csv")


def _summary(paths: dict[str, Path]) -> dict[str, Any]:
    return json.loads(paths["summary"].read_text())


def _shares(counts: dict[str, int]) -> np.ndarray:
    values = np.array(list(counts.values()), dtype=np.float64)
    return values / values.sum()


def test_synthetic_hybrid_counts_schema_and_skew(synthetic_rct: Path, tmp_path: Path) -> None:
    paths = build_hybrid(synthetic_rct, CONFIG, tmp_path, seed=1)
    summary = _summary(paths)
    rows = summary["rows"]
    # Row counts add up: every input row is in exactly one part (5/50/5/10/30 %).
    assert rows["policy_train"] == 300 and rows["policy_apply"] == 3_000
    assert (rows["rct_train"], rows["rct_val"], rows["rct_test"]) == (300, 600, 1_800)
    assert sum(rows[k] for k in ("policy_train", "policy_apply", "rct_train", "rct_val", "rct_test")) == 6_000
    assert rows["obs"] == round(summary["obs_match_rate"] * rows["policy_apply"])
    # The policy treats the top half; a random logged arm matches it about 1/K of the time.
    assert summary["policy_arm_counts"]["no_coupon"] == 1_500
    assert 0.15 < summary["obs_match_rate"] < 0.25

    header = list(read_table(synthetic_rct).columns)
    loaded = {}
    for name in SPLITS:
        assert list(read_table(paths[name]).columns) == header  # the input's schema, so CONFIG loads it
        loaded[name] = load_logs(paths[name], CONFIG)
        assert loaded[name].n_rows == rows[name]
        counts = loaded[name].arm_counts().tolist()
        assert summary["arm_counts"][name] == dict(zip(CONFIG.treatment_names, counts, strict=True))
    # OBS follows the policy (half control), the RCT splits stay uniform.
    obs_shares = _shares(summary["arm_counts"]["obs"])
    rct_shares = _shares(summary["arm_counts"]["rct_test"])
    assert obs_shares[0] > 0.4 and np.abs(rct_shares - 0.2).max() < 0.04
    assert 0.5 * np.abs(obs_shares - rct_shares).sum() > 0.2  # total variation distance
    # With the oracle we can tell: the logging policy targets better than random coupons.
    report = summary["logging_policy"]
    assert report["true_policy_incremental_roi"] > 1.3 * report["true_random_incremental_roi"]


def test_hybrid_rows_come_from_the_input(synthetic_rct: Path, tmp_path: Path) -> None:
    paths = build_hybrid(synthetic_rct, CONFIG, tmp_path, seed=1, fmt="csv")
    source = read_table(synthetic_rct).round(6)
    keys = set(map(tuple, source.to_numpy().tolist()))
    seen: set[tuple[Any, ...]] = set()
    for name in SPLITS:
        part = set(map(tuple, read_table(paths[name]).round(6).to_numpy().tolist()))
        assert part <= keys, name
        assert not part & seen, f"{name} shares rows with another split"
        seen |= part


def test_hybrid_is_deterministic(synthetic_rct: Path, tmp_path: Path) -> None:
    first = build_hybrid(synthetic_rct, CONFIG, tmp_path / "a", seed=3)
    second = build_hybrid(synthetic_rct, CONFIG, tmp_path / "b", seed=3)
    other = build_hybrid(synthetic_rct, CONFIG, tmp_path / "c", seed=4)
    for name in (*SPLITS, "summary"):
        assert first[name].read_bytes() == second[name].read_bytes(), name
    assert first["obs"].read_bytes() != other["obs"].read_bytes()


def test_custom_fractions_and_validation(synthetic_rct: Path, tmp_path: Path) -> None:
    fractions = HybridFractions(policy_train=0.1, policy_apply=0.3, rct_train=0.2, rct_val=0.1, rct_test=0.1)
    summary = _summary(build_hybrid(synthetic_rct, CONFIG, tmp_path, fractions=fractions, top_share=0.25))
    assert summary["rows"]["policy_apply"] == 1_800 and summary["rows"]["rct_train"] == 1_200
    assert summary["policy_arm_counts"]["no_coupon"] == 1_350  # 75 % of the policy rows stay on control
    with pytest.raises(ValueError, match="sum to"):
        HybridFractions(policy_apply=0.9)
    with pytest.raises(ValueError, match=r"fractions\.rct_val"):
        HybridFractions(rct_val=0.0)
    with pytest.raises(ValueError, match="top_share"):
        build_hybrid(synthetic_rct, CONFIG, tmp_path, top_share=0.0)


def test_roi_policy_ranks_by_incremental_roi() -> None:
    revenue = np.array([[1.0, 3.0, 4.0], [1.0, 1.5, 1.2], [2.0, 1.0, 1.5], [0.0, 2.0, 5.0]])
    cost = np.array([[0.0, 1.0, 4.0], [0.0, 1.0, 1.0], [0.0, 1.0, 2.0], [0.0, 1.0, 1.0]])
    policy, score = roi_policy(revenue, cost, top_share=0.5)
    np.testing.assert_allclose(score, [2.0, 0.5, -0.25, 5.0])  # best arm's (Δr / Δc) per row
    assert policy.tolist() == [1, 0, 0, 2]


def test_ridge_model_recovers_linear_outcomes() -> None:
    frame = generate(SPEC, 2_000, randomised=True, rng=np.random.default_rng(5))
    logs = logs_from_frame(frame, CONFIG)
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(logs.n_treatments, logs.n_features))
    exact = replace(
        logs,
        revenue=np.einsum("nd,nd->n", logs.features, weights[logs.treatment]).astype(np.float32),
    )
    model = fit_ridge_model(exact, alpha=1e-6)
    revenue, _ = model.predict(logs.features)
    np.testing.assert_allclose(revenue, logs.features @ weights.T, rtol=1e-3, atol=1e-2)


@needs_hillstrom
def test_hillstrom_hybrid(tmp_path: Path) -> None:
    config = DatasetConfig.load(HILLSTROM_CONFIG)
    paths = build_hybrid(HILLSTROM, config, tmp_path, seed=0)
    summary = _summary(paths)
    rows = summary["rows"]
    assert (rows["policy_train"], rows["policy_apply"]) == (3_200, 32_000)
    assert (rows["rct_train"], rows["rct_val"], rows["rct_test"]) == (3_200, 6_400, 19_200)
    assert 0.30 < summary["obs_match_rate"] < 0.37  # 3 random arms: about 1/3 of logged arms match
    obs = load_logs(paths["obs"], config)
    rct = load_logs(paths["rct_train"], config)
    assert obs.n_rows == rows["obs"] and rct.n_rows == 3_200
    assert obs.feature_names == rct.feature_names
    # OBS: about half control (the policy's untreated half), the RCT train split about a third per arm.
    assert obs.propensity()[0] > 0.45 and np.abs(rct.propensity() - 1 / 3).max() < 0.03
    assert list(read_table(paths["rct_test"]).columns) == list(read_table(HILLSTROM).columns)
    report = summary["logging_policy"]
    assert report["policy_incremental_roi"] is not None and report["random_incremental_roi"] > 0


def test_thin_arms_are_warned_about_and_refused_when_strict(
    synthetic_rct: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A policy that treats 2% of rows leaves OBS arms thin or empty: the CLI says so, --strict refuses."""
    from training import cli

    config_path = tmp_path / "config.toml"
    CONFIG.dump(config_path)
    argv = ["hybrid", "--input", str(synthetic_rct), "--config", str(config_path), "--top-share", "0.02",
            "--rct-test", "0.2", "--ridge-alpha", "3", "--format", "csv"]  # fmt: skip
    assert cli.main([*argv, "--out", str(tmp_path / "loose")]) == 0
    out, err = capsys.readouterr()
    summary = json.loads((tmp_path / "loose" / "summary.json").read_text())
    assert summary["top_share"] == 0.02 and summary["fractions"]["rct_test"] == 0.2
    assert summary["rows"]["rct_test"] == round(0.2 * 6_000)
    assert (tmp_path / "loose" / "obs.csv").exists()
    thin = [w for w in summary["warnings"] if w.startswith("obs: treatment")]
    assert thin and all(f"warning: {w}" in err for w in summary["warnings"])
    assert "logging policy: incremental ROI" in out and "lift" in out
    assert cli.main([*argv, "--out", str(tmp_path / "strict"), "--strict"]) == 2
    err = capsys.readouterr().err
    assert "unusable" in err and thin[0] in err and not (tmp_path / "strict").exists()
