"""In-memory form of a logged data set: what every trainer and evaluator consumes.

A `Logs` holds one table after loading and encoding (see `training/data.py`): features as a float32
matrix, the logged treatment, and the factual revenue and cost. Synthetic oracle sets also carry every
potential outcome, so the true value of a policy can be computed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class Logs:
    """One table of logged individuals: (x_i, t_i, r_i, c_i) and, on oracle sets, R(·), C(·)."""

    features: NDArray[np.float32]  # (N, D) encoded features, manifest order
    treatment: NDArray[np.int64]  # (N,) logged treatment index in 0..K-1 (0 = control)
    revenue: NDArray[np.float32]  # (N,) factual revenue r_{i,t_i}
    cost: NDArray[np.float32]  # (N,) factual cost c_{i,t_i}
    feature_names: tuple[str, ...]
    treatment_names: tuple[str, ...]
    true_revenue: NDArray[np.float32] | None = None  # (N, K) potential revenue, synthetic only
    true_cost: NDArray[np.float32] | None = None  # (N, K) potential cost, synthetic only
    source: str = "<memory>"  # file the rows came from, for error messages and summaries
    binary_revenue: bool = field(default=False)  # revenue is a 0/1 label (sigmoid head, BCE)
    binary_cost: bool = field(default=False)  # cost is a 0/1 label

    def __post_init__(self) -> None:
        n = self.features.shape[0]
        for name in ("treatment", "revenue", "cost"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"{name} has shape {getattr(self, name).shape}, expected ({n},)")
        if self.features.ndim != 2 or self.features.shape[1] != len(self.feature_names):
            raise ValueError(f"features have shape {self.features.shape} but {len(self.feature_names)} feature names")
        for name in ("true_revenue", "true_cost"):
            value = getattr(self, name)
            if value is not None and value.shape != (n, self.n_treatments):
                raise ValueError(f"{name} has shape {value.shape}, expected ({n}, {self.n_treatments})")

    @property
    def n_rows(self) -> int:
        return int(self.features.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.features.shape[1])

    @property
    def n_treatments(self) -> int:
        return len(self.treatment_names)

    @property
    def has_oracle(self) -> bool:
        return self.true_revenue is not None and self.true_cost is not None

    def arm_counts(self) -> NDArray[np.int64]:
        """(K,) rows per logged treatment."""
        return np.bincount(self.treatment, minlength=self.n_treatments).astype(np.int64)

    def propensity(self) -> NDArray[np.float64]:
        """(K,) share of rows per treatment: p_j = N_j / N, the RCT assignment probability estimate."""
        return self.arm_counts() / max(self.n_rows, 1)

    def subset(self, rows: NDArray[np.int64] | NDArray[np.bool_]) -> Logs:
        """The same table restricted to `rows` (indices or a boolean mask)."""

        def take(a: NDArray | None) -> NDArray | None:
            return None if a is None else a[rows]

        return Logs(
            features=self.features[rows],
            treatment=self.treatment[rows],
            revenue=self.revenue[rows],
            cost=self.cost[rows],
            feature_names=self.feature_names,
            treatment_names=self.treatment_names,
            true_revenue=take(self.true_revenue),
            true_cost=take(self.true_cost),
            source=self.source,
            binary_revenue=self.binary_revenue,
            binary_cost=self.binary_cost,
        )
