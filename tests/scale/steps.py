"""One training step of tsm and of Bi-DFCL, shared by the two-rank worker and the single-process reference.

`python tests/scale/steps.py MODE DATA_DIR OUT_DIR` under `torchrun` takes one step on every rank (its own
streamed batch, its own RCT batch) and saves the parameters and the rows it used; the test recomputes the
same step in one process on the union of those rows.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training import losses
from training.batch import FactualBatch
from training.bidfcl import BiDFCLConfig, LowerBatch, _Bilevel, _take, upper_budgets
from training.config import DatasetConfig
from training.data import load_logs
from training.dataset import Logs
from training.network import OutcomeNet
from training.scale import ranks
from training.scale.bilevel import DataParallelBilevel, bilevel_step, initial_state, rct_generator
from training.scale.command import network_config
from training.scale.single import factual_batch, train_step, wrap
from training.scale.stats import Moments, scan_all
from training.scale.stream import EncodedRows, ParquetTable, ShardStream, training_columns

TSM_BATCH = 64
OBS_BATCH = 32
BIDFCL = BiDFCLConfig(obs_batch_size=OBS_BATCH, rct_batch_size=128, teacher_epochs=2, hidden=(16, 16), seed=3)


class Setup:
    """Data, statistics and the streamed batch of `rank` (computable without a process group)."""

    def __init__(self, data_dir: Path, table_name: str, batch_size: int, rank: int, world_size: int) -> None:
        self.config = DatasetConfig.load(data_dir / "config.toml")
        self.table = ParquetTable(data_dir / table_name, training_columns(self.config), 4 * world_size)
        self.stats = scan_all(self.table, self.config)
        self.encoding = self.stats.encoding(self.config)
        self.binary = (self.stats.binary_revenue, self.stats.binary_cost)
        self.propensity = torch.as_tensor(self.stats.propensity(), dtype=torch.float32)
        stream = ShardStream(
            self.table,
            self.config,
            self.encoding,
            batch_size,
            rank=rank,
            world_size=world_size,
            seed=7,
            buffer_rows=256,
        )
        self.rows: EncodedRows = next(iter(stream.epoch(0)))

    def batch(self, rows: EncodedRows | None = None) -> FactualBatch:
        return factual_batch(rows or self.rows, self.propensity, self.binary)


def tsm_model(setup: Setup) -> OutcomeNet:
    torch.manual_seed(0)
    moments = setup.stats.feature_moments(setup.encoding)
    return OutcomeNet(network_config(moments, setup.config.n_treatments, (16, 16), setup.binary))


def tsm_step(model: OutcomeNet, net: torch.nn.Module, batch: FactualBatch) -> None:
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    train_step(net, optimiser, losses.factual_loss, batch)


def bidfcl_inputs(data_dir: Path, setup: Setup) -> tuple[Logs, Logs, Any]:
    rct = load_logs(data_dir / "rct_train.parquet", setup.config, setup.encoding)
    val = load_logs(data_dir / "rct_val.parquet", setup.config, setup.encoding)
    moments = setup.stats.feature_moments(setup.encoding).merge(Moments.of(rct.features))
    return rct, val, network_config(moments, setup.config.n_treatments, BIDFCL.hidden, setup.binary)


def rct_rows(rct: Logs, rank: int) -> torch.Tensor:
    """The RCT rows `rank` draws for its first upper step of epoch 0."""
    return torch.randperm(rct.n_rows, generator=rct_generator(BIDFCL.seed, 0, rank))[: BIDFCL.rct_batch_size]


def bidfcl_step(
    bilevel: _Bilevel, teacher: OutcomeNet, setup: Setup, rows: EncodedRows, rct: Logs, picks: torch.Tensor
) -> None:
    from training.batch import full_batch

    lower = LowerBatch.table(setup.batch(rows), teacher)
    bilevel_step(bilevel, lower, _take(full_batch(rct), picks), warm=False)


def state(*nets: torch.nn.Module) -> list[dict[str, torch.Tensor]]:
    return [{k: v.detach().clone() for k, v in net.state_dict().items()} for net in nets]


def worker(mode: str, data_dir: Path, out_dir: Path) -> None:
    me = ranks.init()
    try:
        if mode == "tsm":
            setup = Setup(data_dir, "rct_train.parquet", TSM_BATCH, me.rank, me.world_size)
            model = tsm_model(setup)
            tsm_step(model, wrap(model), setup.batch())
            saved: dict[str, Any] = {"nets": state(model)}
        else:
            setup = Setup(data_dir, "obs.parquet", OBS_BATCH, me.rank, me.world_size)
            rct, val, net_config = bidfcl_inputs(data_dir, setup)
            teacher, target, bridge = initial_state(rct, val, net_config, BIDFCL)
            bilevel = DataParallelBilevel(target, bridge, BIDFCL, upper_budgets(rct, BIDFCL))
            bidfcl_step(bilevel, teacher, setup, setup.rows, rct, rct_rows(rct, me.rank))
            saved = {"nets": state(target, bridge)}
        saved["rows"] = {k: np.asarray(v) for k, v in vars(setup.rows).items()}
        torch.save(saved, out_dir / f"rank{me.rank}.pt")
    finally:
        ranks.shutdown()


if __name__ == "__main__":
    worker(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
