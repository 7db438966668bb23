"""Mini-batches of factual rows as tensors, with the IPW weights every RCT loss needs."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from training.dataset import Logs


@dataclass(frozen=True)
class FactualBatch:
    """Rows (x_i, t_i, r_i, c_i) of one mini-batch, plus propensities of the table they come from."""

    features: torch.Tensor  # (B, D) float32
    treatment: torch.Tensor  # (B,) int64
    revenue: torch.Tensor  # (B,) float32 factual revenue r_i
    cost: torch.Tensor  # (B,) float32 factual cost c_i
    propensity: torch.Tensor  # (K,) float32 p_j = N_j / N of the whole table (not the batch)
    binary_revenue: bool = False
    binary_cost: bool = False

    @property
    def size(self) -> int:
        return int(self.treatment.shape[0])

    @property
    def n_treatments(self) -> int:
        return int(self.propensity.shape[0])

    @property
    def ipw(self) -> torch.Tensor:
        """(B,) inverse propensity 1/p_{t_i} = N/N_{t_i} (METHOD.md §0)."""
        return 1.0 / self.propensity[self.treatment]


def full_batch(logs: Logs) -> FactualBatch:
    """The whole table as one batch."""
    return FactualBatch(
        features=torch.as_tensor(logs.features, dtype=torch.float32),
        treatment=torch.as_tensor(logs.treatment, dtype=torch.int64),
        revenue=torch.as_tensor(logs.revenue, dtype=torch.float32),
        cost=torch.as_tensor(logs.cost, dtype=torch.float32),
        propensity=torch.as_tensor(np.maximum(logs.propensity(), 1e-12), dtype=torch.float32),
        binary_revenue=logs.binary_revenue,
        binary_cost=logs.binary_cost,
    )


def batches(data: FactualBatch, batch_size: int, generator: torch.Generator | None = None) -> Iterator[FactualBatch]:
    """Shuffled mini-batches of `data` (one epoch); propensities stay those of the full table."""
    order = torch.randperm(data.size, generator=generator) if generator is not None else torch.arange(data.size)
    for start in range(0, data.size, batch_size):
        rows = order[start : start + batch_size]
        yield FactualBatch(
            features=data.features[rows],
            treatment=data.treatment[rows],
            revenue=data.revenue[rows],
            cost=data.cost[rows],
            propensity=data.propensity,
            binary_revenue=data.binary_revenue,
            binary_cost=data.binary_cost,
        )
