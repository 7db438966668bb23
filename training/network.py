"""The S-learner network: features → predicted revenue and cost for every treatment.

One MLP maps (N, D) features to (N, 2K) outputs, the first K revenue, the last K cost (Bi-DFCL App. B.1.3).
Standardisation is a fixed affine layer inside the module, so the exported ONNX graph takes raw features.
Teacher, target and bridge networks of Bi-DFCL are all this class.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn


@dataclass
class NetworkConfig:
    """Hyperparameters saved with the weights (in checkpoints and the ONNX manifest)."""

    n_features: int
    n_treatments: int
    hidden: tuple[int, ...] = (64, 32, 32)
    # Sigmoid heads for 0/1 labels (Criteo/Hillstrom conversion and visit), identity otherwise.
    binary_revenue: bool = False
    binary_cost: bool = False
    # Non-negative heads (softplus) for amounts that cannot be negative; ignored for binary heads.
    nonnegative_cost: bool = True
    feature_mean: list[float] = field(default_factory=list)
    feature_std: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["hidden"] = list(self.hidden)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetworkConfig:
        data = dict(data)
        data["hidden"] = tuple(data.get("hidden", (64, 32, 32)))
        return cls(**data)


def standardisation(features: NDArray[np.floating]) -> tuple[list[float], list[float]]:
    """Per-feature mean and std (std floored so constant columns pass through unchanged)."""
    x = np.asarray(features, dtype=np.float64)
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std = np.where(std > 1e-8, std, 1.0)
    return mean.tolist(), std.tolist()


class OutcomeNet(nn.Module):
    """(N, D) raw features → (N, 2K): revenue for treatments 0..K-1, then cost for 0..K-1."""

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.config = config
        d, k = config.n_features, config.n_treatments
        mean = config.feature_mean or [0.0] * d
        std = config.feature_std or [1.0] * d
        if len(mean) != d or len(std) != d:
            raise ValueError(f"feature_mean/std have {len(mean)}/{len(std)} entries, expected n_features={d}")
        self.register_buffer("feature_mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("feature_std", torch.tensor(std, dtype=torch.float32))
        layers: list[nn.Module] = []
        width = d
        for h in config.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 2 * k))
        self.body = nn.Sequential(*layers)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(N, 2K) pre-activation outputs (for BCE-with-logits and for the Bi-DFCL bridge gates)."""
        x = (features - self.get_buffer("feature_mean")) / self.get_buffer("feature_std")
        return self.body(x)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(N, 2K) predictions in outcome units: sigmoid heads for binary labels."""
        z = self.logits(features)
        k = self.config.n_treatments
        revenue, cost = z[:, :k], z[:, k:]
        if self.config.binary_revenue:
            revenue = torch.sigmoid(revenue)
        if self.config.binary_cost:
            cost = torch.sigmoid(cost)
        elif self.config.nonnegative_cost:
            cost = nn.functional.softplus(cost)
        return torch.cat([revenue, cost], dim=1)


def split_outcomes(outputs: torch.Tensor, n_treatments: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 2K) network output → ((N, K) revenue, (N, K) cost)."""
    return outputs[:, :n_treatments], outputs[:, n_treatments:]


def predict(
    model: OutcomeNet, features: NDArray[np.floating], batch_size: int = 65536
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Predicted (N, K) revenue and (N, K) cost as float64 numpy arrays, in eval mode, without gradients."""
    model.eval()
    k = model.config.n_treatments
    out = []
    with torch.no_grad():
        for start in range(0, len(features), batch_size):
            chunk = torch.as_tensor(np.asarray(features[start : start + batch_size], dtype=np.float32))
            out.append(model(chunk).double().numpy())
    stacked = np.concatenate(out) if out else np.zeros((0, 2 * k))
    return stacked[:, :k], stacked[:, k:]


def save_checkpoint(model: OutcomeNet, path: str, extra: dict[str, Any] | None = None) -> None:
    """Weights plus the config and any metadata (method, hyperparameters, data summary)."""
    torch.save({"config": model.config.to_dict(), "state_dict": model.state_dict(), "extra": extra or {}}, path)


def load_checkpoint(path: str) -> tuple[OutcomeNet, dict[str, Any]]:
    """Inverse of `save_checkpoint`: the network in eval mode and its metadata."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # torch raises several types for a file that is not a checkpoint
        raise ValueError(f"{path} is not a dfcl-allocator checkpoint: {error}") from error
    if not isinstance(blob, dict) or "config" not in blob or "state_dict" not in blob:
        raise ValueError(f"{path} is not a dfcl-allocator checkpoint (no config/state_dict)")
    model = OutcomeNet(NetworkConfig.from_dict(blob["config"]))
    model.load_state_dict(blob["state_dict"])
    model.eval()
    return model, dict(blob.get("extra", {}))
