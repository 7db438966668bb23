"""Dataset configs, loading and validation of CSV/Parquet logs, categorical encoding, writing tables."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.config import DatasetConfig
from training.data import (
    CategoricalEncoding,
    encoding_from_feature_names,
    fit_encoding,
    load_logs,
    read_table,
    save_logs,
    write_table,
)

ROOT = Path(__file__).resolve().parents[1]
HILLSTROM = Path("/work/shared/data/hillstrom/hillstrom.csv.gz")
HILLSTROM_CONFIG = ROOT / "configs" / "hillstrom.toml"
needs_hillstrom = pytest.mark.skipif(not HILLSTROM.exists(), reason=f"{HILLSTROM} not on this machine")

SMALL = DatasetConfig(
    features=("age", "spend"),
    categorical=("city",),
    treatment="arm",
    treatments=("ctrl", "promo"),
    treatment_names=("control", "promo"),
    revenue="revenue",
    cost="cost",
    min_rows_per_arm=2,
)


def _small_frame(n: int = 8) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "age": np.arange(n) + 20,
            "spend": np.round(rng.random(n) * 10, 2),
            "city": ["NA", "Paris", "Rome", "Paris"] * (n // 4),  # "NA" is a city here, not a missing value
            "arm": ["ctrl", "promo"] * (n // 2),
            "revenue": np.round(rng.random(n) * 5, 2),
            "cost": [0.0, 1.0] * (n // 2),
            "unused": "x",
        }
    )


def _write_csv(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


# --- config ------------------------------------------------------------------------------------------


@needs_hillstrom
def test_hillstrom_config_and_load() -> None:
    config = DatasetConfig.load(HILLSTROM_CONFIG)
    assert config.treatment_names == ("no_email", "mens_email", "womens_email")
    assert "history_segment" not in config.features + config.categorical
    logs = load_logs(HILLSTROM, config)
    assert logs.n_rows == 64_000
    assert logs.arm_counts().tolist() == [21_306, 21_307, 21_387]  # data README
    assert logs.feature_names == (
        "recency",
        "history",
        "mens",
        "womens",
        "newbie",
        "zip_code=Rural",
        "zip_code=Surburban",
        "zip_code=Urban",
        "channel=Multichannel",
        "channel=Phone",
        "channel=Web",
    )
    assert logs.revenue.mean() == pytest.approx(0.00903, abs=1e-5)  # conversion
    assert logs.cost.mean() == pytest.approx(0.14678, abs=1e-5)  # visit
    assert logs.binary_revenue and logs.binary_cost  # inferred: 0/1 columns
    np.testing.assert_array_equal(logs.features[:, 5:8].sum(axis=1), 1.0)  # one zip code per row
    assert not logs.has_oracle


def test_config_round_trip(tmp_path: Path) -> None:
    config = DatasetConfig(
        features=("x",),
        categorical=("c",),
        treatment="t",
        treatments=("0", "1", "2"),
        treatment_names=("none", "small", 'quote"d'),
        revenue="r",
        cost="k",
        binary_revenue=True,
        true_revenue_prefix="true_r_",
        true_cost_prefix="true_c_",
        min_rows_per_arm=7,
    )
    config.dump(tmp_path / "c.toml", comment="two\nlines")
    assert DatasetConfig.load(tmp_path / "c.toml") == config
    assert DatasetConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    revenue_columns, cost_columns = config.oracle_columns()
    assert revenue_columns == ["true_r_none", "true_r_small", 'true_r_quote"d']
    assert cost_columns == ["true_c_none", "true_c_small", 'true_c_quote"d']


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('features = ["a"]\ntreatment = "t"\nrevenue = "r"\ncost = "c"\n', "missing required key 'treatments'"),
        ('features = "a"\ntreatment = "t"\ntreatments = ["0", "1"]\nrevenue = "r"\ncost = "c"\n', "key 'features'"),
        ('features = ["a"]\ntreatment = "t"\ntreatments = ["0", "1"]\nrevenue = "r"\ncost = "c"\ncolor = 1\n', "color"),
        ('features = ["a"]\ntreatment = "t"\ntreatments = ["0"]\nrevenue = "r"\ncost = "c"\n', "at least 2"),
        (
            'features = ["a"]\ntreatment = "a"\ntreatments = ["0", "1"]\nrevenue = "r"\ncost = "c"\n',
            "more than one role",
        ),
        (
            'features = ["a"]\ntreatment = "t"\ntreatments = [0, 1]\nrevenue = "r"\ncost = "c"\nbinary_cost = 1\n',
            "binary_cost",
        ),
        ('features = ["a"\n', "invalid TOML"),
    ],
)
def test_config_errors_name_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as err:
        DatasetConfig.load(path)
    assert str(path) in str(err.value)


def test_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        DatasetConfig.load(tmp_path / "nope.toml")


# --- loading and validation ----------------------------------------------------------------------------


def test_csv_gz_and_parquet_load_identically(tmp_path: Path) -> None:
    frame = _small_frame()
    paths = [tmp_path / "t.csv", tmp_path / "t.csv.gz", tmp_path / "t.parquet"]
    for path in paths:
        write_table(frame, path)
    loaded = [load_logs(path, SMALL) for path in paths]
    for logs in loaded[1:]:
        np.testing.assert_array_equal(logs.features, loaded[0].features)
        np.testing.assert_array_equal(logs.treatment, loaded[0].treatment)
        np.testing.assert_array_equal(logs.revenue, loaded[0].revenue)
    logs = loaded[0]
    assert logs.feature_names == ("age", "spend", "city=NA", "city=Paris", "city=Rome")
    assert logs.treatment.tolist() == [0, 1] * 4
    assert logs.treatment_names == ("control", "promo")
    assert logs.binary_cost and not logs.binary_revenue
    assert logs.source == str(paths[0])


@pytest.mark.parametrize(
    ("column", "row", "value", "message"),
    [
        ("age", 3, "", "column 'age' is empty or NaN at data row 3"),
        ("spend", 5, "lots", "column 'spend' has non-numeric value 'lots' at data row 5"),
        ("spend", 2, "inf", "column 'spend' has non-numeric value 'inf' at data row 2"),
        ("city", 4, "", "column 'city' is empty or NaN at data row 4"),
        ("arm", 6, "promo2", "column 'arm' has unknown treatment 'promo2' at data row 6"),
        ("cost", 7, "-1.5", "column 'cost' has negative cost -1.5 at data row 7"),
        ("revenue", 1, " ", "column 'revenue' is empty or NaN at data row 1"),
    ],
)
def test_bad_cells_name_file_column_and_row(tmp_path: Path, column: str, row: int, value: str, message: str) -> None:
    frame = _small_frame().astype(str)
    frame.loc[row - 1, column] = value
    for path in (tmp_path / "bad.csv", tmp_path / "bad.parquet"):
        write_table(frame, path)
        with pytest.raises(ValueError, match=message) as err:
            load_logs(path, SMALL)
        assert str(path) in str(err.value)


def test_missing_column_and_thin_arm(tmp_path: Path) -> None:
    path = _write_csv(_small_frame().drop(columns=["revenue"]), tmp_path / "a.csv")
    with pytest.raises(ValueError, match=r"a\.csv: missing column\(s\) \['revenue'\]"):
        load_logs(path, SMALL)
    frame = _small_frame()
    frame.loc[frame.arm == "promo", "arm"] = "ctrl"
    frame.loc[0, "arm"] = "promo"
    path = _write_csv(frame, tmp_path / "b.csv")
    with pytest.raises(ValueError, match="treatment 'promo' has 1 row\\(s\\), fewer than min_rows_per_arm = 2"):
        load_logs(path, SMALL)
    with pytest.raises(ValueError, match="unsupported table format"):
        load_logs(tmp_path / "c.xlsx", SMALL)
    with pytest.raises(ValueError, match="does not exist"):
        load_logs(tmp_path / "d.csv", SMALL)


def test_numeric_treatment_column_matches_integer_values(tmp_path: Path) -> None:
    frame = _small_frame()
    frame["arm"] = [0, 1, 2, 0, 1, 2, 0, 1]
    config = DatasetConfig.from_dict(
        {"features": ["age"], "treatment": "arm", "treatments": [0, 1, 2], "revenue": "revenue", "cost": "cost"}
    )
    config = DatasetConfig(**{**config.__dict__, "min_rows_per_arm": 1})
    for path in (tmp_path / "n.csv", tmp_path / "n.parquet"):
        write_table(frame.astype({"arm": float}) if path.suffix == ".parquet" else frame, path)
        assert load_logs(path, config).treatment.tolist() == [0, 1, 2, 0, 1, 2, 0, 1]


def test_explicit_binary_flags_override_inference(tmp_path: Path) -> None:
    path = write_table(_small_frame(), tmp_path / "t.csv")
    config = DatasetConfig(**{**SMALL.__dict__, "binary_cost": False})
    assert not load_logs(path, config).binary_cost


# --- categorical encoding ------------------------------------------------------------------------------


def test_encoding_applies_to_other_files_and_unseen_is_zero(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    train = load_logs(write_table(_small_frame(), tmp_path / "train.csv"), SMALL)
    encoding = encoding_from_feature_names(train.feature_names, SMALL)
    assert encoding == fit_encoding(read_table(tmp_path / "train.csv", text_columns=["city"]), SMALL)
    other = _small_frame()
    other["city"] = ["Oslo", "Rome", "Oslo", "NA"] * 2
    with caplog.at_level(logging.WARNING, logger="training.data"):
        logs = load_logs(write_table(other, tmp_path / "other.csv"), SMALL, encoding)
    assert logs.feature_names == train.feature_names
    one_hot = logs.features[:, 2:]
    np.testing.assert_array_equal(one_hot[0], [0, 0, 0])  # Oslo: unseen → all zeros
    np.testing.assert_array_equal(one_hot[1], [0, 0, 1])  # Rome
    np.testing.assert_array_equal(one_hot[3], [1, 0, 0])  # NA
    warnings = [r for r in caplog.records if "unseen" in r.getMessage()]
    assert len(warnings) == 1 and "Oslo" in warnings[0].getMessage() and "other.csv" in warnings[0].getMessage()


def test_encoding_json_round_trip() -> None:
    encoding = CategoricalEncoding(numeric=("a", "b"), categories={"zip": ("Rural", "Urban"), "ch": ("Web",)})
    restored = CategoricalEncoding.from_dict(json.loads(json.dumps(encoding.to_dict())))
    assert restored == encoding
    assert restored.feature_names == ("a", "b", "zip=Rural", "zip=Urban", "ch=Web")
    with pytest.raises(ValueError, match="'numeric' and 'categorical'"):
        CategoricalEncoding.from_dict({"numeric": []})


def test_encoding_must_match_config(tmp_path: Path) -> None:
    path = write_table(_small_frame(), tmp_path / "t.csv")
    with pytest.raises(ValueError, match="encoding's columns do not match"):
        load_logs(path, SMALL, CategoricalEncoding(numeric=("age",), categories={"city": ("Rome",)}))


# --- writing ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".csv.gz"])
def test_save_logs_round_trip(tmp_path: Path, suffix: str) -> None:
    logs = load_logs(write_table(_small_frame(), tmp_path / "t.csv"), SMALL)
    path = tmp_path / f"saved{suffix}"
    config = save_logs(logs, path)
    again = load_logs(path, config)
    assert again.feature_names == logs.feature_names
    assert again.treatment_names == logs.treatment_names
    np.testing.assert_array_equal(again.features, logs.features)
    np.testing.assert_array_equal(again.treatment, logs.treatment)
    np.testing.assert_array_equal(again.revenue, logs.revenue)
    assert (again.binary_revenue, again.binary_cost) == (logs.binary_revenue, logs.binary_cost)
    first = path.read_bytes()
    save_logs(logs, path)
    assert path.read_bytes() == first  # deterministic bytes (gzip without a timestamp)


def test_boolean_columns_encode_as_one_0_1_feature(tmp_path: Path) -> None:
    """yes/no and male/female columns declared boolean are one feature each, not a one-hot pair."""
    config_path = tmp_path / "config.toml"
    config_path.write_text(
        'features = ["age"]\ntreatment = "arm"\ntreatments = ["a", "b"]\nrevenue = "revenue"\ncost = "cost"\n'
        "min_rows_per_arm = 1\n"
        'boolean = { newbie = ["no", "yes"], gender = ["male", "female"] }\n'
    )
    config = DatasetConfig.load(config_path)
    assert config.boolean == (("newbie", "no", "yes"), ("gender", "male", "female"))
    dumped = tmp_path / "again.toml"
    config.dump(dumped)
    assert DatasetConfig.load(dumped) == config
    frame = pd.DataFrame(
        {"age": [30, 41, 25, 60], "newbie": ["yes", "no", "no", "yes"], "gender": ["male", "male", "male", "male"],
         "arm": ["a", "b", "a", "b"], "revenue": [1.0, 2.0, 0.0, 3.0], "cost": [0.0, 1.0, 0.0, 1.0]}
    )  # fmt: skip
    logs = load_logs(_write_csv(frame, tmp_path / "t.csv"), config)
    assert logs.feature_names == ("age", "newbie", "gender")
    np.testing.assert_array_equal(logs.features[:, 1], [1, 0, 0, 1])
    np.testing.assert_array_equal(logs.features[:, 2], [0, 0, 0, 0])  # constant: still one column
    encoding = encoding_from_feature_names(logs.feature_names, config)
    assert CategoricalEncoding.from_dict(encoding.to_dict()) == encoding
    frame.loc[2, "newbie"] = "maybe"
    with pytest.raises(ValueError, match=r"t2.csv: boolean column 'newbie' has value 'maybe' at data row 3"):
        load_logs(_write_csv(frame, tmp_path / "t2.csv"), config, encoding)
