"""A Parquet dataset read in row-group pieces: each rank its own share, shuffled within a bounded buffer.

The input is one Parquet file, a directory of them, or a hive-partitioned directory (`day=2026-12-01/…`, as the
decision-log sink writes); partition keys are ordinary columns. The unit of work is a row group (split into
equal row ranges when there are fewer row groups than 4 × ranks, so every rank gets work). Every epoch the
pieces are shuffled with a seed all ranks share and dealt out so each rank's rows are balanced; a rank reads
only its pieces, one at a time, into a shuffle buffer of at most `buffer_rows` rows plus one row group. Peak
memory is therefore bounded by the buffer and the largest row group, not by the table.

With more than one rank every rank yields the same number of full batches per epoch (the smallest share's),
because each optimiser step averages one batch from every rank; the few rows left over differ per epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
from numpy.typing import NDArray

from training.config import DatasetConfig
from training.data import CategoricalEncoding, numeric_column, treatment_index

MIN_PIECES_PER_RANK = 4


def training_columns(config: DatasetConfig) -> list[str]:
    """The columns a training table is read for (oracle columns, if any, are evaluation-only)."""
    return [*config.features, *config.categorical, config.treatment, config.revenue, config.cost]


@dataclass(frozen=True)
class Piece:
    """Rows [start, stop) of one row group of one file of the dataset."""

    fragment: int  # index into ParquetTable.fragments
    row_group: int
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


class ParquetTable:
    """The row-group pieces of a Parquet file or directory, and reading one piece's columns as a DataFrame."""

    def __init__(self, path: str | Path, columns: Sequence[str], min_pieces: int = 1) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise ValueError(f"data {self.path} does not exist")
        if self.path.is_file() and not self.path.name.lower().endswith(".parquet"):
            raise ValueError(
                f"{self.path}: streamed training reads Parquet (a file, a directory, or a hive-partitioned "
                "directory); convert CSV first, e.g. with pandas.read_csv(...).to_parquet(...)"
            )
        try:
            self.dataset = ds.dataset(self.path, format="parquet", partitioning="hive")
        except Exception as error:  # pyarrow raises several types for unreadable inputs
            raise ValueError(f"{self.path}: not a readable Parquet dataset: {error}") from error
        names = list(self.dataset.schema.names)
        missing = [c for c in columns if c not in names]
        if missing:
            raise ValueError(f"{self.path}: missing column(s) {missing}; the dataset has {names}")
        self.columns = list(columns)
        self.fragments = list(self.dataset.get_fragments())
        if not self.fragments:
            raise ValueError(f"{self.path}: no Parquet files found")
        self.pieces = self._pieces(min_pieces)
        if self.n_rows == 0:
            raise ValueError(f"{self.path}: the dataset has no rows")

    def _pieces(self, min_pieces: int) -> list[Piece]:
        groups: list[tuple[int, int, int]] = []  # (fragment, row group id, rows)
        for index, fragment in enumerate(self.fragments):
            fragment.ensure_complete_metadata()
            groups += [(index, group.id, group.num_rows) for group in fragment.row_groups if group.num_rows > 0]
        parts = max(1, math.ceil(min_pieces / max(len(groups), 1)))
        pieces = []
        for index, group, rows in groups:
            n = min(parts, rows)
            bounds = [rows * k // n for k in range(n + 1)]
            pieces += [Piece(index, group, bounds[k], bounds[k + 1]) for k in range(n)]
        return pieces

    @property
    def n_rows(self) -> int:
        return sum(piece.rows for piece in self.pieces)

    def source(self, piece: Piece) -> str:
        """Where a piece's rows come from, for error messages (row numbers are within this piece)."""
        path = self.fragments[piece.fragment].path
        return f"{path} (row group {piece.row_group}, rows {piece.start}..{piece.stop - 1})"

    def read(self, piece: Piece) -> pd.DataFrame:
        """The table's columns of one piece (partition keys filled in), as pandas reads Parquet."""
        fragment = self.fragments[piece.fragment].subset(row_group_ids=[piece.row_group])
        table = fragment.to_table(schema=self.dataset.schema, columns=self.columns)
        if piece.start or piece.stop != table.num_rows:
            table = table.slice(piece.start, piece.rows)
        return table.to_pandas()


def deal(pieces: Sequence[Piece], world_size: int, seed: int, epoch: int) -> list[list[Piece]]:
    """Every rank's pieces for `epoch`: a shared seeded shuffle, each piece to the rank with the fewest rows so far."""
    order = np.random.default_rng([seed, epoch]).permutation(len(pieces))
    shares: list[list[Piece]] = [[] for _ in range(world_size)]
    loads = [0] * world_size
    for index in order:
        rank = int(np.argmin(loads))
        shares[rank].append(pieces[int(index)])
        loads[rank] += pieces[int(index)].rows
    return shares


def static_share(pieces: Sequence[Piece], rank: int, world_size: int) -> list[Piece]:
    """A fixed split of the pieces (for one-off passes such as the statistics scan)."""
    return list(pieces[rank::world_size])


@dataclass(frozen=True)
class EncodedRows:
    """Encoded training rows: what a mini-batch is cut from."""

    features: NDArray[np.float32]  # (N, D)
    treatment: NDArray[np.int64]  # (N,)
    revenue: NDArray[np.float32]  # (N,)
    cost: NDArray[np.float32]  # (N,)

    @property
    def n_rows(self) -> int:
        return int(self.treatment.shape[0])

    def take(self, rows: NDArray[np.int64]) -> EncodedRows:
        return EncodedRows(self.features[rows], self.treatment[rows], self.revenue[rows], self.cost[rows])

    @staticmethod
    def concat(parts: Sequence[EncodedRows]) -> EncodedRows:
        return EncodedRows(
            np.concatenate([p.features for p in parts]),
            np.concatenate([p.treatment for p in parts]),
            np.concatenate([p.revenue for p in parts]),
            np.concatenate([p.cost for p in parts]),
        )


def encode_rows(frame: pd.DataFrame, config: DatasetConfig, encoding: CategoricalEncoding, source: str) -> EncodedRows:
    """Validate and encode one piece exactly as `training.data.logs_from_frame` encodes a whole table."""
    features = encoding.transform(frame, source)
    treatment = treatment_index(frame, config, source)
    revenue = numeric_column(frame, config.revenue, source)
    cost = numeric_column(frame, config.cost, source)
    if (cost < 0).any():
        row = int(np.flatnonzero(cost < 0)[0])
        raise ValueError(f"{source}: column {config.cost!r} has negative cost {float(cost[row])} at data row {row + 1}")
    return EncodedRows(features, treatment, revenue.astype(np.float32), cost.astype(np.float32))


class ShardStream:
    """One rank's shuffled mini-batches of a streamed table, epoch by epoch."""

    def __init__(
        self,
        table: ParquetTable,
        config: DatasetConfig,
        encoding: CategoricalEncoding,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        buffer_rows: int = 65_536,
        max_steps: int | None = None,
    ) -> None:
        if batch_size < 1 or buffer_rows < batch_size:
            raise ValueError(f"need 1 <= batch_size <= buffer_rows, got {batch_size} and {buffer_rows}")
        self.table, self.config, self.encoding = table, config, encoding
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.seed, self.buffer_rows = seed, buffer_rows
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"steps per epoch must be >= 1, got {max_steps}")
        self.max_steps = max_steps

    def steps(self, epoch: int) -> int | None:
        """Batches every rank yields in `epoch` (None: one rank, every row including a last partial batch)."""
        if self.world_size == 1:
            return self.max_steps
        shares = deal(self.table.pieces, self.world_size, self.seed, epoch)
        steps = min(sum(p.rows for p in share) for share in shares) // self.batch_size
        return steps if self.max_steps is None else min(steps, self.max_steps)

    def rows_per_epoch(self, epoch: int = 0) -> int:
        """Rows all ranks together train on in `epoch`."""
        steps = self.steps(epoch)
        if steps is None:
            return self.table.n_rows
        return min(steps * self.batch_size * self.world_size, self.table.n_rows)

    def epoch(self, epoch: int) -> Iterator[EncodedRows]:
        """This rank's mini-batches of `epoch`, shuffled within the buffer (seeded by seed, epoch and rank)."""
        limit = self.steps(epoch)
        if limit == 0:
            raise ValueError(
                f"{self.table.path}: a rank's share of {self.table.n_rows} rows holds no full batch of "
                f"{self.batch_size}; use fewer ranks or a smaller batch"
            )
        share = deal(self.table.pieces, self.world_size, self.seed, epoch)[self.rank]
        rng = np.random.default_rng([self.seed, epoch, self.rank])
        emitted = 0
        pending: list[EncodedRows] = []
        held = 0
        for piece in share:
            rows = encode_rows(self.table.read(piece), self.config, self.encoding, self.table.source(piece))
            pending.append(rows)
            held += rows.n_rows
            if held < self.buffer_rows:
                continue
            buffer = EncodedRows.concat(pending)
            shuffled = buffer.take(rng.permutation(buffer.n_rows))
            full = (shuffled.n_rows // self.batch_size) * self.batch_size
            for start in range(0, full, self.batch_size):
                if limit is not None and emitted >= limit:
                    return
                yield shuffled.take(np.arange(start, start + self.batch_size))
                emitted += 1
            rest = shuffled.take(np.arange(full, shuffled.n_rows))
            pending, held = [rest], rest.n_rows
        if not held:
            return
        buffer = EncodedRows.concat(pending)
        shuffled = buffer.take(rng.permutation(buffer.n_rows))
        for start in range(0, shuffled.n_rows, self.batch_size):
            if limit is not None and (emitted >= limit or start + self.batch_size > shuffled.n_rows):
                return
            yield shuffled.take(np.arange(start, min(start + self.batch_size, shuffled.n_rows)))
            emitted += 1
