"""The one streaming pass over a training table: categorical encoding, standardisation, arm propensities.

What `training.data.fit_encoding`, `training.network.standardisation` and `Logs.propensity` compute from a table
held in memory, computed here from row-group pieces (each rank scans a share, the partial results are merged),
so the numbers a streamed run trains with are those of the in-memory path (`tests/test_scale_stream.py`).
Categories are counted per piece and sorted at the end, so the encoding is identical; means and variances are
merged with Chan's pairwise update in float64 over the float32 features the network sees.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from training.config import DatasetConfig
from training.data import CategoricalEncoding, numeric_column, text_column, treatment_index
from training.scale import ranks
from training.scale.stream import ParquetTable, Piece, static_share


@dataclass
class Moments:
    """Row count, mean and summed squared deviations of each column (population variance = m2 / count)."""

    count: int
    mean: NDArray[np.float64]  # (D,)
    m2: NDArray[np.float64]  # (D,)

    @staticmethod
    def of(values: NDArray[np.floating]) -> Moments:
        x = np.asarray(values, dtype=np.float64)
        mean = x.mean(axis=0) if len(x) else np.zeros(x.shape[1])
        return Moments(len(x), mean, ((x - mean) ** 2).sum(axis=0))

    def merge(self, other: Moments) -> Moments:
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / n)
        return Moments(n, mean, m2)

    def standardisation(self) -> tuple[list[float], list[float]]:
        """Per-column mean and std, std floored like `training.network.standardisation`."""
        std = np.sqrt(self.m2 / max(self.count, 1))
        return self.mean.tolist(), np.where(std > 1e-8, std, 1.0).tolist()


@dataclass
class TableStats:
    """What one pass learns about a training table."""

    rows: int
    arm_counts: NDArray[np.int64]  # (K,)
    numeric: Moments  # of the numeric feature columns, as float32
    categories: dict[str, Counter[str]] = field(default_factory=dict)  # column → category → rows
    binary_revenue: bool = True
    binary_cost: bool = True

    def merge(self, other: TableStats) -> TableStats:
        categories = {
            c: self.categories.get(c, Counter()) + other.categories.get(c, Counter()) for c in self.categories
        }
        return TableStats(
            self.rows + other.rows,
            self.arm_counts + other.arm_counts,
            self.numeric.merge(other.numeric),
            categories,
            self.binary_revenue and other.binary_revenue,
            self.binary_cost and other.binary_cost,
        )

    def encoding(self, config: DatasetConfig) -> CategoricalEncoding:
        """The encoding `training.data.fit_encoding` learns from the same rows (categories sorted)."""
        return CategoricalEncoding(
            numeric=tuple(config.features),
            categories={c: tuple(sorted(self.categories[c])) for c in config.categorical},
        )

    def feature_moments(self, encoding: CategoricalEncoding) -> Moments:
        """Moments of the encoded features: numeric columns, then each one-hot column (mean p, variance p(1 − p))."""
        means, m2s = [self.numeric.mean], [self.numeric.m2]
        for column, cats in encoding.categories.items():
            counts = self.categories.get(column, Counter())
            share = np.array([counts.get(c, 0) for c in cats], dtype=np.float64) / max(self.rows, 1)
            means.append(share)
            m2s.append(share * (1.0 - share) * self.rows)
        return Moments(self.rows, np.concatenate(means), np.concatenate(m2s))

    def propensity(self) -> NDArray[np.float64]:
        """(K,) p_j = N_j / N, as `Logs.propensity`."""
        return self.arm_counts / max(self.rows, 1)

    def check_arms(self, config: DatasetConfig, source: str) -> None:
        for j, count in enumerate(self.arm_counts):
            if count < config.min_rows_per_arm:
                raise ValueError(
                    f"{source}: column {config.treatment!r}: treatment {config.treatments[j]!r} has {count} row(s), "
                    f"fewer than min_rows_per_arm = {config.min_rows_per_arm}"
                )

    def rows_per_treatment(self, config: DatasetConfig) -> dict[str, int]:
        return dict(zip(config.treatment_names, self.arm_counts.tolist(), strict=True))


def empty_stats(config: DatasetConfig) -> TableStats:
    d = len(config.features)
    return TableStats(
        0,
        np.zeros(config.n_treatments, dtype=np.int64),
        Moments(0, np.zeros(d), np.zeros(d)),
        {c: Counter() for c in config.categorical},
    )


def scan(table: ParquetTable, config: DatasetConfig, pieces: Sequence[Piece]) -> TableStats:
    """Statistics of `pieces`, validating every row as `training.data.load_logs` would."""
    stats = empty_stats(config)
    for piece in pieces:
        frame = table.read(piece)
        source = table.source(piece)
        numeric = (
            np.stack([numeric_column(frame, c, source) for c in config.features], axis=1)
            if config.features
            else (np.zeros((len(frame), 0)))
        )
        categories = {c: Counter(text_column(frame, c, source).tolist()) for c in config.categorical}
        revenue = numeric_column(frame, config.revenue, source)
        cost = numeric_column(frame, config.cost, source)
        if (cost < 0).any():
            row = int(np.flatnonzero(cost < 0)[0])
            raise ValueError(
                f"{source}: column {config.cost!r} has negative cost {float(cost[row])} at data row {row + 1}"
            )
        arms = np.bincount(treatment_index(frame, config, source), minlength=config.n_treatments)
        part = TableStats(
            len(frame),
            arms.astype(np.int64),
            Moments.of(numeric.astype(np.float32)),  # the network sees float32 features
            categories,
            bool(np.isin(revenue, (0.0, 1.0)).all()),
            bool(np.isin(cost, (0.0, 1.0)).all()),
        )
        stats = stats.merge(part)
    return stats


def scan_all(table: ParquetTable, config: DatasetConfig) -> TableStats:
    """Statistics of the whole table: each rank scans a fixed share, the shares are merged on every rank."""
    me = ranks.current()
    partial = scan(table, config, static_share(table.pieces, me.rank, me.world_size))
    merged = empty_stats(config)
    for part in ranks.gather_objects(partial):
        merged = merged.merge(part)
    merged.check_arms(config, str(table.path))
    return merged
