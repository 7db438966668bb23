"""Read logged tables (CSV, CSV.gz, Parquet) into validated `Logs`, and write tables back.

Every problem in an input file raises ValueError naming the file, the column and the first bad data row
(1-based, the header not counted), so a broken export is fixed at the source instead of surfacing as a NaN
loss later. Categorical columns are one-hot encoded with a `CategoricalEncoding` learned from the training
file and applied unchanged to every other file (and, through its JSON form in the model manifest, by the
service to named inputs).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from numpy.typing import NDArray

from training.config import DatasetConfig
from training.dataset import Logs

log = logging.getLogger(__name__)

TABLE_SUFFIXES = (".parquet", ".csv", ".csv.gz")


def table_suffix(path: str | Path) -> str:
    """The table format of `path` from its name: '.parquet', '.csv' or '.csv.gz'."""
    name = Path(path).name.lower()
    for suffix in (".csv.gz", ".parquet", ".csv"):
        if name.endswith(suffix):
            return suffix
    raise ValueError(f"{path}: unsupported table format; expected a name ending in one of {list(TABLE_SUFFIXES)}")


def read_table(
    path: str | Path, columns: Sequence[str] | None = None, text_columns: Sequence[str] = ()
) -> pd.DataFrame:
    """Read a table (all columns, or `columns` after checking they exist); `text_columns` are kept as strings.

    Only empty CSV cells count as missing: a category literally called "NA" or "None" stays a category.
    """
    path = Path(path)
    suffix = table_suffix(path)
    if not path.exists():
        raise ValueError(f"data file {path} does not exist")
    header = list(pq.read_schema(path).names) if suffix == ".parquet" else list(pd.read_csv(path, nrows=0).columns)
    if columns is not None:
        missing = [c for c in columns if c not in header]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; the file has {header}")
    if suffix == ".parquet":
        return pd.read_parquet(path, columns=list(columns) if columns is not None else None)
    return pd.read_csv(
        path,
        usecols=list(columns) if columns is not None else None,
        dtype={c: str for c in text_columns if c in header},
        keep_default_na=False,
        na_values=[""],
    )


def write_table(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write `frame` without its index, format by suffix; the same frame always gives the same bytes."""
    path = Path(path)
    suffix = table_suffix(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".parquet":
        frame.to_parquet(path, index=False)
    elif suffix == ".csv":
        frame.to_csv(path, index=False, lineterminator="\n")
    else:
        # mtime 0: gzip otherwise stamps the current time into the header and the bytes differ per run.
        frame.to_csv(path, index=False, lineterminator="\n", compression={"method": "gzip", "mtime": 0})
    return path


# --- column validation -------------------------------------------------------------------------------


def _first(mask: NDArray[np.bool_]) -> int:
    return int(np.flatnonzero(mask)[0])


def _missing_mask(values: pd.Series) -> NDArray[np.bool_]:
    missing = values.isna().to_numpy(dtype=bool)
    if values.dtype == object or pd.api.types.is_string_dtype(values.dtype):
        missing = missing | values.astype(str).str.strip().eq("").to_numpy(dtype=bool)
    return missing


def _check_present(values: pd.Series, column: str, source: str) -> None:
    missing = _missing_mask(values)
    if missing.any():
        raise ValueError(f"{source}: column {column!r} is empty or NaN at data row {_first(missing) + 1}")


def numeric_column(frame: pd.DataFrame, column: str, source: str) -> NDArray[np.float64]:
    """(N,) finite float64 values of `column`, or ValueError naming file, column and first bad row."""
    values = frame[column]
    _check_present(values, column, source)
    numbers = pd.to_numeric(values, errors="coerce")
    array = numbers.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(array)
    if bad.any():
        row = _first(bad)
        value = values.iloc[row]
        raise ValueError(f"{source}: column {column!r} has non-numeric value {str(value)!r} at data row {row + 1}")
    return array


def text_column(frame: pd.DataFrame, column: str, source: str) -> NDArray[np.object_]:
    """(N,) values of a categorical column as strings, or ValueError at the first empty cell."""
    values = frame[column]
    _check_present(values, column, source)
    return values.astype(str).to_numpy(dtype=object)


def treatment_index(frame: pd.DataFrame, config: DatasetConfig, source: str) -> NDArray[np.int64]:
    """(N,) index into config.treatments of each row's logged treatment (0 = control)."""
    column = config.treatment
    values = frame[column]
    _check_present(values, column, source)
    index = np.full(len(values), -1, dtype=np.int64)
    if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype):
        # Numeric column (e.g. exp_group 0..7): compare as numbers, so 1 and 1.0 are the same arm.
        numbers = values.to_numpy(dtype=np.float64)
        for j, value in enumerate(config.treatments):
            try:
                index[numbers == float(value)] = j
            except ValueError:
                continue  # a non-numeric config value matches no row of a numeric column
    else:
        text = values.astype(str).to_numpy(dtype=object)
        for j, value in enumerate(config.treatments):
            index[text == value] = j
    unknown = index < 0
    if unknown.any():
        row = _first(unknown)
        raise ValueError(
            f"{source}: column {column!r} has unknown treatment {str(values.iloc[row])!r} at data row {row + 1}; "
            f"expected one of {list(config.treatments)}"
        )
    return index


# --- categorical encoding ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CategoricalEncoding:
    """How raw columns become the model's input vector: numeric columns as they are, then one-hot blocks.

    Feature order: `numeric` in order, then for each categorical column its categories in order, named
    `column=category`. A category not seen when the encoding was fitted encodes as all zeros (like a
    baseline level), so new values in production do not break scoring. JSON form (`to_dict`):
    {"numeric": [...], "categorical": {"zip_code": ["Rural", "Surburban", "Urban"], ...}}.
    """

    numeric: tuple[str, ...]
    categories: Mapping[str, tuple[str, ...]]  # column → ordered categories (insertion order = encoded order)
    boolean: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # column → (value for 0, value for 1)

    @property
    def feature_names(self) -> tuple[str, ...]:
        one_hot = [f"{column}={category}" for column, cats in self.categories.items() for category in cats]
        return (*self.numeric, *self.boolean, *one_hot)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "numeric": list(self.numeric), "categorical": {c: list(v) for c, v in self.categories.items()}
        }  # fmt: skip
        if self.boolean:
            data["boolean"] = {c: list(v) for c, v in self.boolean.items()}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CategoricalEncoding:
        if not {"numeric", "categorical"} <= set(data) <= {"numeric", "categorical", "boolean"}:
            raise ValueError(
                f"encoding must have keys 'numeric' and 'categorical' (and optionally 'boolean'), got {sorted(data)}"
            )
        categorical = data["categorical"]
        if not isinstance(categorical, Mapping):
            raise ValueError(f"encoding 'categorical' must map column → list of categories, got {categorical!r}")
        boolean = data.get("boolean", {})
        if not isinstance(boolean, Mapping) or not all(len(v) == 2 for v in boolean.values()):
            raise ValueError(f"encoding 'boolean' must map column → [value for 0, value for 1], got {boolean!r}")
        return cls(
            numeric=tuple(str(c) for c in data["numeric"]),
            categories={str(c): tuple(str(v) for v in cats) for c, cats in categorical.items()},
            boolean={str(c): (str(v[0]), str(v[1])) for c, v in boolean.items()},
        )

    def transform(self, frame: pd.DataFrame, source: str = "<frame>") -> NDArray[np.float32]:
        """(N, D) float32 encoded features of `frame` (validated: numeric, finite, no empty categories)."""
        n = len(frame)
        out = np.zeros((n, len(self.feature_names)), dtype=np.float32)
        for k, column in enumerate(self.numeric):
            out[:, k] = numeric_column(frame, column, source)
        offset = len(self.numeric)
        for column, (false_value, true_value) in self.boolean.items():
            text = text_column(frame, column, source)
            is_true, is_false = text == true_value, text == false_value
            other = ~(is_true | is_false)
            if other.any():
                row = _first(other)
                raise ValueError(
                    f"{source}: boolean column {column!r} has value {text[row]!r} at data row {row + 1}; "
                    f"expected {false_value!r} (0) or {true_value!r} (1)"
                )
            out[:, offset] = is_true
            offset += 1
        for column, cats in self.categories.items():
            text = text_column(frame, column, source)
            # (N,) position of each row's category in `cats`, -1 for a category unseen when fitting
            codes = pd.Index(list(cats), dtype=object).get_indexer(pd.Index(text, dtype=object)).astype(np.int64)
            known = codes >= 0
            out[np.flatnonzero(known), offset + codes[known]] = 1.0
            if not known.all():
                unseen = sorted(set(text[~known].tolist()))
                log.warning(
                    "%s: column %r has %d row(s) with categories unseen in training, encoded as all zeros: %s",
                    source,
                    column,
                    int((~known).sum()),
                    unseen[:10],
                )
            offset += len(cats)
        return out


def fit_encoding(frame: pd.DataFrame, config: DatasetConfig, source: str = "<frame>") -> CategoricalEncoding:
    """Learn the categories of each categorical column from `frame` (sorted, so the order is reproducible)."""
    categories = {}
    for column in config.categorical:
        if column not in frame.columns:
            raise ValueError(f"{source}: missing column {column!r}")
        categories[column] = tuple(sorted(set(text_column(frame, column, source).tolist())))
    return CategoricalEncoding(numeric=tuple(config.features), categories=categories, boolean=_boolean(config))


def _boolean(config: DatasetConfig) -> dict[str, tuple[str, str]]:
    return {column: (false_value, true_value) for column, false_value, true_value in config.boolean}


def encoding_from_feature_names(feature_names: Sequence[str], config: DatasetConfig) -> CategoricalEncoding:
    """Recover the encoding of a `Logs` from its feature names (numeric names, then `column=category`)."""
    numeric = tuple(config.features)
    if tuple(feature_names[: len(numeric)]) != numeric:
        raise ValueError(f"feature_names do not start with the config's numeric features {list(numeric)}")
    boolean = _boolean(config)
    if tuple(feature_names[len(numeric) : len(numeric) + len(boolean)]) != tuple(boolean):
        raise ValueError(f"feature_names do not continue with the config's boolean columns {list(boolean)}")
    categories: dict[str, tuple[str, ...]] = {}
    rest = list(feature_names[len(numeric) + len(boolean) :])
    for column in config.categorical:
        prefix = f"{column}="
        cats = []
        while rest and rest[0].startswith(prefix):
            cats.append(rest.pop(0)[len(prefix) :])
        categories[column] = tuple(cats)
    if rest:
        raise ValueError(f"feature_names has names no categorical column explains: {rest[:5]}")
    return CategoricalEncoding(numeric=numeric, categories=categories, boolean=boolean)


# --- Logs ----------------------------------------------------------------------------------------------


def _is_binary(values: NDArray[np.float64]) -> bool:
    return bool(np.isin(values, (0.0, 1.0)).all())


def logs_from_frame(
    frame: pd.DataFrame, config: DatasetConfig, encoding: CategoricalEncoding | None = None, source: str = "<frame>"
) -> Logs:
    """Validate and encode an in-memory table (the columns `config` names) into `Logs`."""
    missing = [c for c in config.columns() if c not in frame.columns]
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing}")
    if encoding is None:
        encoding = fit_encoding(frame, config, source)
    elif (
        tuple(encoding.numeric) != tuple(config.features)
        or tuple(encoding.categories) != config.categorical
        or dict(encoding.boolean) != _boolean(config)
    ):
        raise ValueError(
            f"{source}: the encoding's columns do not match the config's features, boolean and categorical"
        )
    features = encoding.transform(frame, source)  # (N, D)
    treatment = treatment_index(frame, config, source)  # (N,)
    revenue = numeric_column(frame, config.revenue, source)
    cost = numeric_column(frame, config.cost, source)
    if (cost < 0).any():
        row = _first(cost < 0)
        raise ValueError(f"{source}: column {config.cost!r} has negative cost {float(cost[row])} at data row {row + 1}")
    counts = np.bincount(treatment, minlength=config.n_treatments)
    for j, count in enumerate(counts):
        if count < config.min_rows_per_arm:
            raise ValueError(
                f"{source}: column {config.treatment!r}: treatment {config.treatments[j]!r} has {count} row(s), "
                f"fewer than min_rows_per_arm = {config.min_rows_per_arm}"
            )
    true_revenue = true_cost = None
    if config.has_oracle:
        revenue_cols, cost_cols = config.oracle_columns()
        # (N, K) potential outcomes, one column per treatment in config order
        true_revenue = np.stack([numeric_column(frame, c, source) for c in revenue_cols], axis=1).astype(np.float32)
        true_cost = np.stack([numeric_column(frame, c, source) for c in cost_cols], axis=1).astype(np.float32)
    return Logs(
        features=features,
        treatment=treatment,
        revenue=revenue.astype(np.float32),
        cost=cost.astype(np.float32),
        feature_names=encoding.feature_names,
        treatment_names=tuple(config.treatment_names),
        true_revenue=true_revenue,
        true_cost=true_cost,
        source=source,
        binary_revenue=_is_binary(revenue) if config.binary_revenue is None else config.binary_revenue,
        binary_cost=_is_binary(cost) if config.binary_cost is None else config.binary_cost,
    )


def load_logs(path: str | Path, config: DatasetConfig, encoding: CategoricalEncoding | None = None) -> Logs:
    """Read and validate one table. Pass the training file's encoding for every other file.

    With `encoding=None` the categories are learned from this file (do that for the training file, then
    take `encoding_from_feature_names(logs.feature_names, config)` or `fit_encoding` for the others).
    """
    text = [*config.categorical, *config.boolean_columns, config.treatment]
    frame = read_table(path, columns=config.columns(), text_columns=text)
    return logs_from_frame(frame, config, encoding, source=str(path))


def logs_frame(logs: Logs) -> pd.DataFrame:
    """`logs` as a table: encoded features, `treatment` (name), `revenue`, `cost`, oracle columns if any."""
    columns: dict[str, Any] = {name: logs.features[:, k] for k, name in enumerate(logs.feature_names)}
    columns["treatment"] = np.asarray(logs.treatment_names, dtype=object)[logs.treatment]
    columns["revenue"] = logs.revenue
    columns["cost"] = logs.cost
    if logs.true_revenue is not None and logs.true_cost is not None:
        for j, name in enumerate(logs.treatment_names):
            columns[f"true_revenue_{name}"] = logs.true_revenue[:, j]
        for j, name in enumerate(logs.treatment_names):
            columns[f"true_cost_{name}"] = logs.true_cost[:, j]
    return pd.DataFrame(columns)


def save_logs(logs: Logs, path: str | Path) -> DatasetConfig:
    """Write `logs` as a table (Parquet or CSV by suffix); returns the config that loads it back.

    Features are written already encoded (one-hot columns like `zip_code=Rural` are numeric columns here),
    so the returned config has no categorical columns and reproduces `logs.feature_names` exactly.
    """
    reserved = {"treatment", "revenue", "cost"}
    clash = reserved.intersection(logs.feature_names)
    if clash:
        raise ValueError(f"logs.feature_names uses reserved column name(s) {sorted(clash)}")
    write_table(logs_frame(logs), path)
    oracle = logs.has_oracle
    return DatasetConfig(
        features=tuple(logs.feature_names),
        treatment="treatment",
        treatments=tuple(logs.treatment_names),
        revenue="revenue",
        cost="cost",
        binary_revenue=logs.binary_revenue,
        binary_cost=logs.binary_cost,
        true_revenue_prefix="true_revenue_" if oracle else None,
        true_cost_prefix="true_cost_" if oracle else None,
        min_rows_per_arm=0,
    )
