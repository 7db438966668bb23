"""Real ONNX artifacts for the service tests, built with `onnx.helper` (no torch).

revenue = features @ W_r + b_r and cost = relu(features @ W_c) + c0, with K = 3 treatments and D = 4
features, one of which may be a one-hot categorical column pair.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from service.manifest import Manifest, Treatment

N_FEATURES = 4
N_TREATMENTS = 3
FEATURES = ["recency", "history", "region=north", "region=south"]
CATEGORICAL = {"region": ["north", "south"]}
TREATMENTS = ["control", "coupon_5", "coupon_10"]


def weights(seed: int, cost_offset: float = 0.0) -> dict[str, NDArray[np.float32]]:
    """Weights of the toy S-learner: dearer coupons cost more and (mostly) earn more."""
    rng = np.random.default_rng(seed)
    w_revenue = rng.normal(0.0, 0.5, size=(N_FEATURES, N_TREATMENTS)).astype(np.float32)
    b_revenue = np.array([0.0, 0.6, 1.0], dtype=np.float32)
    w_cost = np.abs(rng.normal(0.0, 0.3, size=(N_FEATURES, N_TREATMENTS))).astype(np.float32)
    w_cost[:, 0] = 0.0  # control costs nothing beyond its constant
    c0 = np.array([0.0, 0.5, 1.0], dtype=np.float32) + np.float32(cost_offset)
    return {"w_revenue": w_revenue, "b_revenue": b_revenue, "w_cost": w_cost, "c0": c0}


def model_bytes(
    seed: int, n_features: int = N_FEATURES, n_treatments: int = N_TREATMENTS, cost_offset: float = 0.0
) -> bytes:
    """A valid ONNX graph: input `features` [batch, D] → outputs `revenue`, `cost` [batch, K]."""
    params = weights(seed, cost_offset)
    if (n_features, n_treatments) != (N_FEATURES, N_TREATMENTS):
        rng = np.random.default_rng(seed)
        params = {
            "w_revenue": rng.normal(size=(n_features, n_treatments)).astype(np.float32),
            "b_revenue": np.zeros(n_treatments, dtype=np.float32),
            "w_cost": np.abs(rng.normal(size=(n_features, n_treatments))).astype(np.float32),
            "c0": np.linspace(0.0, 1.0, n_treatments).astype(np.float32),
        }
    nodes = [
        helper.make_node("MatMul", ["features", "w_revenue"], ["revenue_raw"]),
        helper.make_node("Add", ["revenue_raw", "b_revenue"], ["revenue"]),
        helper.make_node("MatMul", ["features", "w_cost"], ["cost_raw"]),
        helper.make_node("Relu", ["cost_raw"], ["cost_pos"]),
        helper.make_node("Add", ["cost_pos", "c0"], ["cost"]),
    ]
    graph = helper.make_graph(
        nodes,
        "toy_s_learner",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", n_features])],
        [
            helper.make_tensor_value_info("revenue", TensorProto.FLOAT, ["batch", n_treatments]),
            helper.make_tensor_value_info("cost", TensorProto.FLOAT, ["batch", n_treatments]),
        ],
        initializer=[numpy_helper.from_array(v, name=k) for k, v in params.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def population(seed: int, rows: int = 2000) -> NDArray[np.float32]:
    """(rows, D) reference population: two numeric columns and a one-hot region pair."""
    rng = np.random.default_rng(seed + 1000)
    numeric = rng.normal(size=(rows, 2))
    region = rng.integers(0, 2, size=rows)
    one_hot = np.stack([region == 0, region == 1], axis=1)
    return np.hstack([numeric, one_hot]).astype(np.float32)


def write_artifact(
    out: Path,
    seed: int = 0,
    rows: int = 2000,
    default_lambda: float = 0.5,
    cost_offset: float = 0.0,
    **overrides: object,
) -> Manifest:
    """Write model.onnx, manifest.json and population.npz into `out`; `overrides` replace manifest fields."""
    data = model_bytes(seed, cost_offset=cost_offset)
    fields: dict[str, object] = {
        "model_version": hashlib.sha256(data).hexdigest()[:16],
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "method": "toy",
        "hyperparameters": {"seed": seed},
        "features": FEATURES,
        "categorical": CATEGORICAL,
        "treatments": [Treatment(id=i, name=n) for i, n in enumerate(TREATMENTS)],
        "training_data": {"rows": rows},
        "validation_metrics": {},
        "default_budget_per_capita": 0.6,
        "default_lambda": default_lambda,
        "opset": 17,
    }
    fields.update(overrides)
    manifest = Manifest.model_validate(fields)
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.onnx").write_bytes(data)
    (out / "manifest.json").write_text(manifest.to_json())
    np.savez(out / "population.npz", features=population(seed, rows))
    return manifest
