"""The benchmark runner on a tiny synthetic suite: tables, reports, cached predictions and intervals."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from training import benchmark
from training.benchmark import Splits, cached_predictions, hierarchical_interval, run_benchmark
from training.config import DatasetConfig
from training.data import encoding_from_feature_names, load_logs
from training.report import significant
from training.synthetic import SyntheticSpec, generate, write_benchmark


def tiny_splits(work: Path, seed: int) -> Splits:
    paths = write_benchmark(
        work / f"data{seed}", SyntheticSpec(seed=seed), rct_rows=600, obs_rows=900, val_rows=400, test_rows=500,
        seed=seed,
    )  # fmt: skip
    config = DatasetConfig.load(paths["config"])
    first = load_logs(paths["rct_train"], config)
    encoding = encoding_from_feature_names(first.feature_names, config)
    tables = {name: load_logs(paths[name], config, encoding) for name in ("rct_val", "rct_test", "obs")}
    return Splits(first, tables["rct_val"], tables["rct_test"], tables["obs"], describe={"rct_train": 600})


@pytest.fixture
def tiny_suite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(benchmark, "prepare_suite", lambda suite, seed, work: tiny_splits(tmp_path, seed))
    return tmp_path


def test_run_writes_table_report_and_reuses_cached_predictions(tiny_suite: Path) -> None:
    out, work = tiny_suite / "out", tiny_suite / "work"
    result = run_benchmark("synthetic", ["tsm", "tsm-obs"], [0, 1], out, work, n_boot=20, progress=False)
    table = (out / "synthetic" / "summary.md").read_text()
    for row in ("| tsm |", "| tsm-obs |", "| random |", "| oracle-optimum |"):
        assert row in table
    assert "oracle gap closed" in table and "| 1.00 ± 0.00 |" in table  # the optimum closes all of it
    runs = json.loads((out / "synthetic" / "runs.json").read_text())
    assert [run["seed"] for run in runs] == [0, 1]
    assert all(run["best_epoch"]["tsm"] >= 0 for run in runs)  # the epoch validation kept, per run
    assert (out / "synthetic" / "cost_curves.png").stat().st_size > 0
    mean, lo, hi = result["intervals"]["oracle"]["tsm"]
    assert mean == 0.0 and lo == 0.0 and hi == 0.0  # the reference against itself
    # Every optimum beats random allocation on the true outcomes.
    assert all(run["areas"]["oracle-optimum"]["oracle"] > run["areas"]["random"]["oracle"] for run in runs)
    cached = sorted(p.name for p in (work / "synthetic" / "seed1" / "predictions").iterdir())
    assert cached == ["tsm-obs.npz", "tsm.npz"]
    # A second run reads the cache (same numbers, no training), a fresh one retrains to the same numbers.
    again = run_benchmark("synthetic", ["tsm", "tsm-obs"], [0, 1], out, work, n_boot=20, progress=False)
    assert again["table"] == result["table"]
    fresh = run_benchmark("synthetic", ["tsm", "tsm-obs"], [0, 1], out, work, n_boot=20, progress=False, fresh=True)
    assert [r["areas"] for r in fresh["runs"]] == [r["areas"] for r in result["runs"]]
    assert [r["best_epoch"] for r in fresh["runs"]] == [r["best_epoch"] for r in again["runs"]]


def test_cache_is_ignored_when_the_run_changes(tiny_suite: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    splits = tiny_splits(tiny_suite, 0)
    cache = tiny_suite / "cache"
    revenue = cached_predictions("tsm", splits, 0, cache, fresh=False, progress=False).revenue
    calls: list[str] = []
    original = benchmark._train_run

    def counting(name: str, *args: object) -> object:
        calls.append(name)
        return original(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(benchmark, "_train_run", counting)
    same = cached_predictions("tsm", splits, 0, cache, fresh=False, progress=False).revenue
    assert calls == [] and np.array_equal(same, revenue)
    cached_predictions("tsm", splits, 1, cache, fresh=False, progress=False)  # another seed: another fingerprint
    assert calls == ["tsm"]


def test_hierarchical_interval_covers_a_constant_improvement() -> None:
    per_seed = [{"a": np.full(50, 1.0), "b": np.full(50, 1.1)} for _ in range(3)]
    mean, lo, hi = hierarchical_interval(per_seed, "b", "a")
    assert mean == pytest.approx(10.0) and lo == pytest.approx(10.0) and hi == pytest.approx(10.0)
    noisy = [{"a": np.ones(200), "b": 1.0 + np.random.default_rng(s).normal(0.02, 0.01, 200)} for s in range(4)]
    mean, lo, hi = hierarchical_interval(noisy, "b", "a")
    assert lo < mean < hi and lo > 0


def test_areas_are_printed_with_five_significant_digits() -> None:
    assert significant(14.0003, 5) == "14.000"
    assert significant(0.00951049, 5) == "0.0095105"
    assert significant(123456.7, 5) == "123457"


def test_strong_suite_logs_coupons_more_selectively_by_uplift() -> None:
    """The synthetic-strong world exists because its OBS log is more confounded: who got the largest coupon
    differs more, in true uplift of that coupon, from who got none."""
    selection = {}
    for suite, spec in benchmark.SYNTHETIC_WORLDS.items():
        frame = generate(replace(spec, seed=3), 40_000, randomised=False)
        top, none = spec.treatment_names[-1], spec.treatment_names[0]
        uplift = frame[f"true_revenue_{top}"] - frame[f"true_revenue_{none}"]
        selection[suite] = uplift[frame.coupon == top].mean() - uplift[frame.coupon == none].mean()
    assert selection["synthetic-strong"] > selection["synthetic"] + 1.0 > 1.0


def test_unknown_suite_is_named_with_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown suite 'nope'; choose from synthetic, synthetic-strong, hillstrom"):
        benchmark.prepare_suite("nope", 0, tmp_path)


def test_bidfcl_is_compared_with_the_strongest_single_level_baseline() -> None:
    means = {"tsm": 1.0, "tsm-obs": 1.2, "bidfcl-ppl": 1.3, "tsm-rich": 9.0}
    per_seed = [{"areas": {name: {"oracle": area} for name, area in means.items()}}] * 2
    methods = ["tsm", "tsm-obs", "bidfcl-ppl", "tsm-rich"]
    best = benchmark.strongest_baseline(methods, per_seed, "oracle")
    assert best == "tsm-obs"  # tsm-rich trains on a large RCT set: a reference, not a baseline
    samples = [{"tsm": np.full(40, 1.0), "tsm-obs": np.full(40, 1.2), "bidfcl-ppl": np.full(40, 1.5)}] * 2
    table = benchmark.versus_baseline_table(methods, best, samples, "oracle")
    assert table.splitlines()[2] == "| bidfcl-ppl | +25.00 [+25.00, +25.00] |"
    assert len(table.splitlines()) == 3  # only Bi-DFCL runs are compared


def test_a_change_to_the_training_code_retrains_instead_of_reusing_the_cache(
    tiny_suite: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache fingerprint includes the training source: editing a training module invalidates old predictions."""
    splits = tiny_splits(tiny_suite, 0)
    code = tiny_suite / "training" / "fake_module.py"
    code.parent.mkdir()
    code.write_text("X = 1\n")
    monkeypatch.setattr(benchmark, "SOURCE_FILES", (*benchmark.SOURCE_FILES, code))
    benchmark.training_source_hash.cache_clear()
    before = benchmark.run_fingerprint("tsm", splits, 0)
    assert benchmark.run_fingerprint("tsm", splits, 0) == before
    code.write_text("X = 2\n")
    benchmark.training_source_hash.cache_clear()
    assert benchmark.run_fingerprint("tsm", splits, 0) != before
    benchmark.training_source_hash.cache_clear()
    # Every training module is covered.
    names = {path.name for path in benchmark.SOURCE_FILES}
    assert {"train.py", "bidfcl.py", "upper_losses.py", "decision.py", "hull.py"} <= names


def test_learned_bridge_is_compared_with_the_fixed_gate() -> None:
    rng = np.random.default_rng(0)
    per_seed = []
    for _ in range(3):
        fixed = 14.0 + rng.normal(0.0, 0.1, 50)
        per_seed.append({"bidfcl-ppl": fixed * 1.02, "bidfcl-ppl-fixed": fixed})
    table = benchmark.bridge_table(per_seed, "oracle")
    assert "| method | oracle vs bidfcl-ppl-fixed % [95% CI] |" in table
    assert "| bidfcl-ppl | +2.00 [+2.00, +2.00] |" in table
