"""Streamed Parquet reading: the encoding and statistics match the in-memory path, every row is read once per
epoch, ranks get disjoint equal shares, and bad input names the file and row group."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from training.config import DatasetConfig
from training.data import fit_encoding, load_logs, read_table
from training.network import standardisation
from training.scale.stats import Moments, scan_all
from training.scale.stream import EncodedRows, ParquetTable, ShardStream, deal, training_columns
from training.synthetic import SyntheticSpec, write_benchmark


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DatasetConfig]:
    out = tmp_path_factory.mktemp("stream")
    paths = write_benchmark(out, SyntheticSpec(n_treatments=3, seed=2), rct_rows=500, obs_rows=5000, val_rows=300,
                            test_rows=100, seed=2)  # fmt: skip
    frame = pd.read_parquet(paths["obs"])
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), out / "obs_groups.parquet", row_group_size=700)
    # As the decision-log sink writes: a hive-partitioned directory (the partition key is a feature column here).
    ds.write_dataset(pa.Table.from_pandas(frame, preserve_index=False), out / "obs_hive", format="parquet",
                     partitioning=["city_tier"], partitioning_flavor="hive", max_rows_per_group=900,
                     min_rows_per_group=0)  # fmt: skip
    return out, DatasetConfig.load(paths["config"])


def sorted_rows(rows: EncodedRows) -> np.ndarray:
    table = np.column_stack([rows.features, rows.treatment, rows.revenue, rows.cost]).astype(np.float64)
    return table[np.lexsort(table.T[::-1])]


@pytest.mark.parametrize("name", ["obs.parquet", "obs_groups.parquet", "obs_hive"])
def test_statistics_pass_matches_the_in_memory_encoding(synthetic: tuple[Path, DatasetConfig], name: str) -> None:
    out, config = synthetic
    logs = load_logs(out / "obs.parquet", config)
    table = ParquetTable(out / name, training_columns(config), min_pieces=4)
    stats = scan_all(table, config)
    encoding = stats.encoding(config)
    assert encoding == fit_encoding(read_table(out / "obs.parquet"), config)
    assert encoding.feature_names == logs.feature_names
    mean, std = stats.feature_moments(encoding).standardisation()
    expected_mean, expected_std = standardisation(logs.features)
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(std, expected_std, rtol=1e-9)
    np.testing.assert_array_equal(stats.propensity(), logs.propensity())
    assert (stats.binary_revenue, stats.binary_cost) == (False, False)
    assert stats.rows == logs.n_rows == table.n_rows


@pytest.mark.parametrize("name", ["obs_groups.parquet", "obs_hive"])
def test_one_rank_reads_every_row_once_per_epoch_shuffled(synthetic: tuple[Path, DatasetConfig], name: str) -> None:
    out, config = synthetic
    logs = load_logs(out / "obs.parquet", config)
    table = ParquetTable(out / name, training_columns(config))
    stream = ShardStream(table, config, scan_all(table, config).encoding(config), 128, seed=5, buffer_rows=1000)
    epochs = [list(stream.epoch(e)) for e in (0, 1)]
    for batches in epochs:
        assert all(b.n_rows == 128 for b in batches[:-1])
        rows = EncodedRows.concat(batches)
        expected = EncodedRows(logs.features, logs.treatment, logs.revenue, logs.cost)
        np.testing.assert_array_equal(sorted_rows(rows), sorted_rows(expected))
    first = [EncodedRows.concat(b).features for b in epochs]
    assert not np.array_equal(first[0], first[1]), "each epoch is shuffled differently"
    assert not np.array_equal(first[0][:500], logs.features[:500]), "rows are not read in file order"


def test_two_ranks_get_disjoint_shares_of_equal_length(synthetic: tuple[Path, DatasetConfig]) -> None:
    out, config = synthetic
    table = ParquetTable(out / "obs.parquet", training_columns(config), min_pieces=8)  # one row group, split
    assert len(table.pieces) == 8 and table.n_rows == 5000
    encoding = scan_all(table, config).encoding(config)
    streams = [ShardStream(table, config, encoding, 64, rank=r, world_size=2, seed=1, buffer_rows=512) for r in (0, 1)]
    batches = [list(s.epoch(0)) for s in streams]
    assert len(batches[0]) == len(batches[1]) == streams[0].steps(0) > 0
    assert all(b.n_rows == 64 for share in batches for b in share)
    rows = [sorted_rows(EncodedRows.concat(share)) for share in batches]
    both = np.concatenate(rows)
    assert len(np.unique(both, axis=0)) == len(both), "no row is read by both ranks"
    shares = deal(table.pieces, 2, seed=1, epoch=0)
    assert {p for s in shares for p in s} == set(table.pieces)


def test_streaming_errors_name_the_input(synthetic: tuple[Path, DatasetConfig], tmp_path: Path) -> None:
    out, config = synthetic
    with pytest.raises(ValueError, match=r"streamed training reads Parquet"):
        ParquetTable(out / "config.toml", training_columns(config))
    with pytest.raises(ValueError, match=r"does not exist"):
        ParquetTable(tmp_path / "missing.parquet", training_columns(config))
    frame = pd.read_parquet(out / "obs.parquet")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['revenue'\]"):
        pq.write_table(pa.Table.from_pandas(frame.drop(columns="revenue")), tmp_path / "no_revenue.parquet")
        ParquetTable(tmp_path / "no_revenue.parquet", training_columns(config))
    frame.loc[1203, "cost"] = -1.0
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "bad.parquet", row_group_size=1000)
    table = ParquetTable(tmp_path / "bad.parquet", training_columns(config))
    where = r"bad.parquet \(row group 1, rows 0..999\): column 'cost' has negative cost -1.0 at data row 204"
    with pytest.raises(ValueError, match=where):
        scan_all(table, config)


def test_moments_merge_equals_one_pass() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(1000, 3))
    merged = Moments.of(x[:10]).merge(Moments.of(x[10:400])).merge(Moments.of(x[400:]))
    whole = Moments.of(x)
    np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-12)
    np.testing.assert_allclose(merged.m2, whole.m2, rtol=1e-10)
