"""`python -m training logs` and `python -m training shadow`: from the sink's files to training tables and back."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from service.decisions.record import DecisionBatch, new_batch_token
from service.decisions.sink import entries_table, write_durably
from training.config import DatasetConfig
from training.data import fit_encoding, load_logs, write_table
from training.logs import build_training_tables, read_decisions
from training.shadow import decide, shadow_evaluate
from training.synthetic import SyntheticSpec, dataset_config, generate

SPEC = SyntheticSpec(n_treatments=3, seed=3)
ROOT = Path(__file__).resolve().parents[1]


def _log(
    out: Path, frame: pd.DataFrame, config: DatasetConfig, when: float, explore_share: float, seed: int
) -> list[str]:
    """Write `frame`'s individuals as one logged batch, as the sink would (its own functions), at time `when`."""
    rng = np.random.default_rng(seed)
    encoding = fit_encoding(frame, config)
    features = encoding.transform(frame)
    n = len(frame)
    explore = rng.random(n) < explore_share
    treatment = np.where(explore, rng.integers(0, 3, n), 2 * (frame["discount_affinity"] > 0.3))
    batch = DecisionBatch(
        token=new_batch_token(),
        time=when,
        campaign="spring",
        individuals=[f"u{seed}-{i}" for i in range(n)],
        model_version="m1",
        lam=0.5,
        lambda_version=1,
        treatment=treatment.astype(np.int64),
        propensity=np.where(explore, 0.1 / 3, 0.9 + 0.1 / 3),
        explore=explore,
        features=features,
    )
    entry = {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in batch.entry().items()}
    table = entries_table([(f"{seed}-0".encode(), entry)])
    write_durably(table, out / "campaign=spring" / f"hour={seed}" / f"{seed}.parquet")
    schema = out / "_schema"
    schema.mkdir(parents=True, exist_ok=True)
    (schema / "m1.json").write_text(__import__("json").dumps(list(encoding.feature_names)))
    return batch.decision_ids


def _outcomes(frame: pd.DataFrame, decisions: Path, ids: list[str]) -> pd.DataFrame:
    logged, _ = read_decisions(decisions)
    treatment = logged.set_index("decision_id").loc[ids, "treatment"].to_numpy()
    names = SPEC.treatment_names
    rows = np.arange(len(frame))
    revenue = frame[[f"true_revenue_{n}" for n in names]].to_numpy()[rows, treatment]
    cost = frame[[f"true_cost_{n}" for n in names]].to_numpy()[rows, treatment]
    return pd.DataFrame({"decision_id": ids, "revenue": revenue, "cost": cost})


@pytest.fixture()
def logged(tmp_path: Path) -> tuple[Path, Path, Path, list[str], pd.DataFrame]:
    config = dataset_config(SPEC)
    frame = generate(SPEC, 6_000, randomised=True, rng=np.random.default_rng(0))
    decisions = tmp_path / "decisions"
    now = time.time()
    early = _log(decisions, frame.iloc[:3_000].reset_index(drop=True), config, now - 3 * 86_400, 0.3, seed=1)
    late = _log(decisions, frame.iloc[3_000:].reset_index(drop=True), config, now, 0.3, seed=2)
    # The sink is at least once: the same file delivered twice must not double anything.
    first = next(decisions.rglob("1.parquet"))
    (first.parent / "1-again.parquet").write_bytes(first.read_bytes())
    outcomes = pd.concat(
        [
            _outcomes(frame.iloc[:3_000].reset_index(drop=True), decisions, early),
            _outcomes(frame.iloc[3_000:].reset_index(drop=True), decisions, late),
        ]
    )
    path = write_table(outcomes, tmp_path / "outcomes.csv")
    config_path = tmp_path / "config.toml"
    config.dump(config_path)
    return decisions, path, config_path, early + late, frame


def test_logs_become_the_tables_train_reads(
    logged: tuple[Path, Path, Path, list[str], pd.DataFrame], tmp_path: Path
) -> None:
    decisions, outcomes, config_path, ids, frame = logged
    out = tmp_path / "tables"
    summary = build_training_tables(decisions, outcomes, DatasetConfig.load(config_path), out, holdout_hours=24)
    rows = summary["rows"]
    assert summary["joined"] == len(ids) == 6_000
    assert sum(rows.values()) == 6_000
    assert rows["rct_shadow"] > 0 and rows["rct_train"] > 0 and rows["rct_val"] > 0
    config = DatasetConfig.load(out / "config.toml")
    train = load_logs(out / "rct_train.parquet", config)
    shadow = pd.read_parquet(out / "rct_shadow.parquet")
    assert (
        shadow["log_explore"].all()
        and (pd.to_datetime(shadow["log_time"]) > pd.Timestamp.now(tz="UTC") - pd.Timedelta(days=1)).all()
    )
    obs = pd.read_parquet(out / "obs.parquet")
    assert not obs["log_explore"].any() and len(obs) + rows["rct_train"] + rows["rct_val"] + rows["rct_shadow"] == 6_000
    # Raw columns come back as they were before encoding (categorical included).
    merged = pd.read_parquet(out / "rct_train.parquet").merge(
        pd.DataFrame({"log_decision_id": ids, "row": np.arange(6_000)}), on="log_decision_id"
    )
    original = frame.iloc[merged["row"].to_numpy()].reset_index(drop=True)
    assert (merged["city_tier"].to_numpy() == original["city_tier"].to_numpy()).all()
    assert np.allclose(merged["avg_basket"], original["avg_basket"], rtol=1e-6)
    assert train.n_rows == rows["rct_train"]


def test_logs_cli_names_duplicated_and_unmatched_ids(
    logged: tuple[Path, Path, Path, list[str], pd.DataFrame], tmp_path: Path
) -> None:
    decisions, outcomes, config_path, ids, _ = logged
    table = pd.read_csv(outcomes)

    def run(frame: pd.DataFrame) -> subprocess.CompletedProcess[str]:
        path = tmp_path / "bad.csv"
        frame.to_csv(path, index=False)
        command = [
            sys.executable,
            "-m",
            "training",
            "logs",
            "--decisions",
            str(decisions),
            "--outcomes",
            str(path),
            "--config",
            str(config_path),
            "--out",
            str(tmp_path / "out"),
        ]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)

    duplicated = run(pd.concat([table, table.iloc[[10]]]))
    assert duplicated.returncode == 2 and "duplicated decision id" in duplicated.stderr and ids[10] in duplicated.stderr
    unknown = table.copy()
    unknown.loc[5, "decision_id"] = "no-such-decision"
    result = run(unknown)
    assert result.returncode == 2 and "'no-such-decision' at data row 6" in result.stderr
    result = run(table.iloc[1:])
    assert (
        result.returncode == 2 and "1 logged decision(s) have no outcome" in result.stderr and ids[0] in result.stderr
    )
    ok = run(table)
    assert ok.returncode == 0, ok.stderr


def test_promotion_rule() -> None:
    assert decide(0.02, 0.001, 1.0, 0.01)[0]
    assert decide(0.02, -0.005, 1.0, 0.01)[0]  # a possible small loss within the margin
    assert not decide(0.02, -0.05, 1.0, 0.01)[0]  # could be clearly worse
    assert not decide(-0.001, -0.01, 1.0, 0.05)[0]  # not better


def test_shadow_prefers_the_true_model_over_noise() -> None:
    frame = generate(SPEC, 20_000, randomised=True, rng=np.random.default_rng(5))
    config = dataset_config(SPEC)
    from training.data import logs_from_frame

    logs = logs_from_frame(frame, config)
    assert logs.true_revenue is not None and logs.true_cost is not None
    truth = (logs.true_revenue.astype(np.float64), logs.true_cost.astype(np.float64))
    rng = np.random.default_rng(0)
    noise = (rng.uniform(size=truth[0].shape), truth[1])  # revenue predictions that carry no information
    for estimator in ("ipw", "dr"):
        better = shadow_evaluate(truth, noise, logs, n_boot=100, estimator=estimator)
        worse = shadow_evaluate(noise, truth, logs, n_boot=100, estimator=estimator)
        assert better.gain > 0 and worse.gain < 0, estimator
        assert not worse.promote, estimator
        assert worse.candidate_interval[0] <= worse.candidate_area <= worse.candidate_interval[1]
        assert worse.gain_interval[0] <= worse.gain <= worse.gain_interval[1]
    assert better.estimator == "dr" and shadow_evaluate(truth, noise, logs, n_boot=100).promote  # IPW


def test_shadow_cli_compares_served_artifacts(tmp_path: Path) -> None:
    """`python -m training shadow` on two ONNX artifacts (the live model as it serves) and an exploration slice."""
    from tests.service.artifacts import TREATMENTS, write_artifact

    write_artifact(tmp_path / "live", seed=0)
    write_artifact(tmp_path / "candidate", seed=1)
    rng = np.random.default_rng(0)
    n = 3_000
    arm = rng.integers(0, 3, n)
    frame = pd.DataFrame(
        {
            "recency": rng.normal(size=n),
            "history": rng.normal(size=n),
            "region": rng.choice(["north", "south"], n),
            "arm": np.asarray(TREATMENTS, dtype=object)[arm],
            "revenue": rng.gamma(2.0, 1.0 + 0.5 * arm),
            "cost": 0.5 * arm * rng.random(n),
        }
    )
    write_table(frame, tmp_path / "slice.parquet")
    config = DatasetConfig(
        features=("recency", "history"),
        categorical=("region",),
        treatment="arm",
        treatments=tuple(TREATMENTS),
        revenue="revenue",
        cost="cost",
    )
    config.dump(tmp_path / "config.toml")
    command = [
        sys.executable,
        "-m",
        "training",
        "shadow",
        *("--candidate", str(tmp_path / "candidate"), "--live", str(tmp_path / "live")),
        *("--slice", str(tmp_path / "slice.parquet"), "--config", str(tmp_path / "config.toml")),
        *("--bootstrap", "50", "--out", str(tmp_path / "shadow.json")),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    result = __import__("json").loads((tmp_path / "shadow.json").read_text())
    assert result["rows"] == n and result["estimator"] == "ipw"
    low, high = result["gain_interval"]
    assert low <= result["gain"] <= high
    assert ("PROMOTE" if result["promote"] else "KEEP LIVE") in done.stdout
    assert command[6] == "--live"
    missing = subprocess.run(
        [*command[:7], str(tmp_path / "nowhere"), *command[8:]], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert missing.returncode == 2 and "nowhere" in missing.stderr, missing.stderr
