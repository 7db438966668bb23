"""`python -m training logs`: the service's decision log + an outcomes table → the tables `train` reads.

Decisions are the sink's Parquet files (`service.decisions.sink`: `campaign=<c>/hour=<h>/*.parquet` and the
`_schema/<model version>.json` feature names); a decision delivered twice (the sink is at-least-once) is kept
once, by decision id. The outcomes table (CSV or Parquet, as a warehouse would export it) has a `decision_id`
column and the config's revenue and cost columns. Every decision must have exactly one outcome and every
outcome a decision, or the command fails naming the ids.

Output (`--out`), in the config's own column layout (raw numeric and categorical columns, treatment values):
- `rct_train.parquet`, `rct_val.parquet`: exploration rows (uniform among allowed arms: an RCT), split by a
  hash of the decision id (`--val-share`), older than the held-out slice;
- `rct_shadow.parquet`: exploration rows of the last `--holdout-hours` (the latest exploration slice, kept
  out of training so the shadow evaluation of a candidate trained on the rest is unbiased);
- `obs.parquet`: every exploitation row (what the deployed policy chose: observational logs);
- `config.toml`: the config without oracle columns (logged outcomes have none), `summary.json`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from training.config import DatasetConfig
from training.data import numeric_column, read_table, write_table

log = logging.getLogger(__name__)

ID_COLUMN = "decision_id"
UNSEEN_CATEGORY = "__unseen__"  # a categorical value the model did not know (encoded as all zeros)
LOG_COLUMNS = ("decision_id", "time", "model_version", "propensity", "explore")  # kept for traceability


def read_decisions(directory: Path) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Every logged decision under `directory` (duplicates removed by decision id) and feature names by model."""
    directory = Path(directory)
    files = sorted(p for p in directory.rglob("*.parquet") if not p.name.startswith("."))
    if not files:
        raise ValueError(f"{directory}: no decision files (campaign=<c>/hour=<h>/*.parquet) found")
    frame = pd.concat([pq.ParquetFile(path).read().to_pandas() for path in files], ignore_index=True)
    before = len(frame)
    frame = frame.drop_duplicates(ID_COLUMN, keep="first").reset_index(drop=True)
    if len(frame) < before:
        log.info("%s: %d duplicate deliveries dropped", directory, before - len(frame))
    schemas = {path.stem: json.loads(path.read_text()) for path in (directory / "_schema").glob("*.json")}
    return frame, schemas


def _first_ids(ids: pd.Series, limit: int = 5) -> str:
    return ", ".join(repr(str(v)) for v in ids.head(limit))


def read_outcomes(path: Path, config: DatasetConfig) -> pd.DataFrame:
    """decision_id, revenue, cost (config names) of each outcome row; ValueError on a duplicated id."""
    frame = read_table(path, columns=[ID_COLUMN, config.revenue, config.cost], text_columns=[ID_COLUMN])
    source = str(path)
    ids = frame[ID_COLUMN].astype(str)
    duplicated = ids.duplicated(keep=False)
    if duplicated.any():
        rows = np.flatnonzero(duplicated.to_numpy()) + 1
        raise ValueError(
            f"{source}: column {ID_COLUMN!r} has {int(ids[duplicated].nunique())} duplicated decision id(s), "
            f"first {str(ids[duplicated].iloc[0])!r} at data rows {rows[:5].tolist()}"
        )
    return pd.DataFrame(
        {
            ID_COLUMN: ids,
            config.revenue: numeric_column(frame, config.revenue, source),
            config.cost: numeric_column(frame, config.cost, source),
        }
    )


def join_outcomes(
    decisions: pd.DataFrame, outcomes: pd.DataFrame, source: str, drop_unmatched_decisions: bool = False
) -> pd.DataFrame:
    """Decisions with their outcome; ValueError naming ids for outcomes without a decision (and vice versa)."""
    logged = set(decisions[ID_COLUMN])
    unknown = outcomes.loc[~outcomes[ID_COLUMN].isin(logged), ID_COLUMN]
    if len(unknown):
        row = int(unknown.index[0]) + 1
        raise ValueError(
            f"{source}: {len(unknown)} outcome(s) name decision ids not in the decision log, first "
            f"{str(unknown.iloc[0])!r} at data row {row} (others: {_first_ids(unknown.iloc[1:])})"
        )
    joined = decisions.merge(outcomes, on=ID_COLUMN, how="left", validate="one_to_one", indicator=True)
    missing = joined["_merge"] == "left_only"
    if missing.any():
        if not drop_unmatched_decisions:
            raise ValueError(
                f"{source}: {int(missing.sum())} logged decision(s) have no outcome, e.g. "
                f"{_first_ids(joined.loc[missing, ID_COLUMN])} (pass --drop-unmatched-decisions to leave them out)"
            )
        log.warning("%s: %d decisions without an outcome left out", source, int(missing.sum()))
        joined = joined.loc[~missing]
    return joined.drop(columns="_merge").reset_index(drop=True)


def feature_names(decisions: pd.DataFrame, schemas: dict[str, list[str]], directory: Path) -> list[str]:
    """The one encoded feature layout of every logged model version (the tables need a single layout)."""
    layouts: dict[tuple[str, ...], list[str]] = {}
    for version in sorted(set(decisions["model_version"])):
        if version not in schemas:
            raise ValueError(f"{directory}: no _schema/{version}.json for model version {version}")
        layouts.setdefault(tuple(schemas[version]), []).append(version)
    if len(layouts) > 1:
        raise ValueError(f"{directory}: model versions log different feature layouts: {list(layouts.values())}")
    return list(next(iter(layouts)))


def raw_columns(features: np.ndarray, names: list[str], config: DatasetConfig) -> pd.DataFrame:
    """Encoded vectors (N, D) back to the config's raw columns: numeric as they are, one-hot → category."""
    index = {name: k for k, name in enumerate(names)}
    out: dict[str, Any] = {}
    for column in config.features:
        if column not in index:
            raise ValueError(f"logged features have no column {column!r} named in the config; they have {names}")
        out[column] = features[:, index[column]].astype(np.float64)
    explained = set(config.features)
    for column in config.categorical:
        prefix = f"{column}="
        block = [name for name in names if name.startswith(prefix)]
        explained.update(block)
        values = np.full(features.shape[0], UNSEEN_CATEGORY, dtype=object)
        if block:
            one_hot = features[:, [index[name] for name in block]]  # (N, C)
            hit = one_hot.max(axis=1) > 0.5
            categories = np.asarray([name[len(prefix) :] for name in block], dtype=object)
            values[hit] = categories[one_hot[hit].argmax(axis=1)]
        out[column] = values
    unexplained = [name for name in names if name not in explained]
    if unexplained:
        raise ValueError(f"logged features {unexplained[:5]} are neither config features nor categorical one-hots")
    return pd.DataFrame(out)


def _share(ids: pd.Series) -> np.ndarray:
    """(N,) a stable number in [0, 1) per decision id (the validation split does not depend on file order)."""
    digests = [hashlib.blake2b(str(i).encode(), digest_size=8).digest() for i in ids]
    return np.asarray([int.from_bytes(d, "little") / 2.0**64 for d in digests])


def build_training_tables(
    decisions_dir: Path,
    outcomes_path: Path,
    config: DatasetConfig,
    out: Path,
    val_share: float = 0.2,
    holdout_hours: float = 24.0,
    drop_unmatched_decisions: bool = False,
) -> dict[str, Any]:
    """Write rct_train / rct_val / rct_shadow / obs tables and config.toml into `out`; returns the summary."""
    if not 0.0 <= val_share < 1.0:
        raise ValueError(f"--val-share must be in [0, 1), got {val_share}")
    if holdout_hours < 0:
        raise ValueError(f"--holdout-hours must be >= 0, got {holdout_hours}")
    decisions, schemas = read_decisions(decisions_dir)
    outcomes = read_outcomes(outcomes_path, config)
    joined = join_outcomes(decisions, outcomes, str(outcomes_path), drop_unmatched_decisions)
    names = feature_names(joined, schemas, decisions_dir)
    features = np.stack(list(joined["features"])).astype(np.float32) if len(joined) else np.zeros((0, 0))
    if features.shape[1] != len(names):
        raise ValueError(f"{decisions_dir}: logged vectors have {features.shape[1]} values for {len(names)} names")
    treatment = joined["treatment"].to_numpy(np.int64)
    if (treatment >= config.n_treatments).any() or (treatment < 0).any():
        raise ValueError(f"{decisions_dir}: treatment ids outside 0..{config.n_treatments - 1} of {config.treatment}")
    table = raw_columns(features, names, config)
    table[config.treatment] = np.asarray(config.treatments, dtype=object)[treatment]
    table[config.revenue] = joined[config.revenue].to_numpy(np.float64)
    table[config.cost] = joined[config.cost].to_numpy(np.float64)
    for column in LOG_COLUMNS:
        table[f"log_{column}"] = joined[column].to_numpy()
    explore = joined["explore"].to_numpy(bool)
    times = pd.to_datetime(joined["time"], utc=True)
    latest = (times >= times.max() - pd.Timedelta(hours=holdout_hours)).to_numpy() if holdout_hours > 0 else False
    shadow = explore & latest
    val = explore & ~shadow & (_share(joined[ID_COLUMN]) < val_share)
    train = explore & ~shadow & ~val
    out.mkdir(parents=True, exist_ok=True)
    parts = {"rct_train": train, "rct_val": val, "rct_shadow": shadow, "obs": ~explore}
    paths = {
        name: write_table(table.loc[mask].reset_index(drop=True), out / f"{name}.parquet")
        for name, mask in parts.items()
    }
    logged = replace(config, true_revenue_prefix=None, true_cost_prefix=None)
    logged.dump(
        out / "config.toml", comment=f"Built by `python -m training logs` from {decisions_dir} + {outcomes_path}"
    )
    summary = {
        "decisions": len(decisions),
        "joined": len(joined),
        "model_versions": sorted(set(joined["model_version"])),
        "rows": {name: int(mask.sum()) for name, mask in parts.items()},
        "first_decision": str(times.min()) if len(joined) else None,
        "last_decision": str(times.max()) if len(joined) else None,
        "paths": {name: str(path) for name, path in paths.items()} | {"config": str(out / "config.toml")},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
