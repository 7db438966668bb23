"""One /allocate call's decisions as logged, and their Redis Stream entries. Writes no Redis keys itself.

A `DecisionBatch` keeps the arrays /allocate already computed (no per-row work on the hot path); the shipper
turns it into one stream entry per decision. Entry fields (bytes): `id` (decision id), `time` (epoch seconds),
`campaign`, `individual`, `model_version`, `lambda`, `lambda_version`, `treatment`, `propensity`, `explore`
("1"/"0") and `features`, the encoded feature vector as little-endian float32 bytes (manifest order).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

FIELDS = (
    "id",
    "time",
    "campaign",
    "individual",
    "model_version",
    "lambda",
    "lambda_version",
    "treatment",
    "propensity",
    "explore",
    "features",
)


def new_decision_ids(n: int) -> list[str]:
    """n ids unique across replicas and restarts: a random 64-bit batch token and the row's position."""
    token = secrets.token_hex(8)
    return [f"{token}-{i:x}" for i in range(n)]


@dataclass(frozen=True)
class DecisionBatch:
    decision_ids: list[str]  # (N,)
    time: float  # epoch seconds of the request
    campaign: str
    individuals: list[str | int]  # (N,) ids as the caller sent them
    model_version: str
    lam: float
    lambda_version: int
    treatment: NDArray[np.int64]  # (N,) given
    propensity: NDArray[np.float64]  # (N,)
    explore: NDArray[np.bool_]  # (N,)
    features: NDArray[np.float32]  # (N, D) encoded, manifest order

    @property
    def size(self) -> int:
        return len(self.decision_ids)

    def entries(self) -> list[dict[str, bytes | str]]:
        """One stream entry per decision."""
        features = np.ascontiguousarray(self.features, dtype="<f4")
        common = {
            "time": repr(self.time),
            "campaign": self.campaign,
            "model_version": self.model_version,
            "lambda": repr(float(self.lam)),
            "lambda_version": str(self.lambda_version),
        }
        return [
            {
                "id": decision_id,
                "individual": str(individual),
                "treatment": str(treatment),
                "propensity": repr(propensity),
                "explore": "1" if explored else "0",
                "features": features[i].tobytes(),
                **common,
            }
            for i, (decision_id, individual, treatment, propensity, explored) in enumerate(
                zip(
                    self.decision_ids,
                    self.individuals,
                    self.treatment.tolist(),
                    self.propensity.tolist(),
                    self.explore.tolist(),
                    strict=True,
                )
            )
        ]
