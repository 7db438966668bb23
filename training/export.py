"""Export a trained target network to the serving artifact (DESIGN.md §3).

`models/<name>/` holds `model.onnx` (input `features` float32 [batch, D], outputs `revenue` and `cost`
float32 [batch, K], standardisation inside the graph, the manifest's key facts in `metadata_props`),
`manifest.json` (the schema in `service/manifest.py`, shared with the service loader) and `population.npz`
(features of a reference population, on which the service re-solves λ* for a new budget). The default
budget's λ* is solved here with the final ONNX bytes under the service's session options, so the number in
the manifest is exactly what the service would compute.

Identical inputs give byte-identical `model.onnx` and `population.npz` and a manifest that differs only in
`created_at` (pin it with `created_at=` for reproducible builds). The artifact is written to a scratch
directory, loaded back with the service's own loader, and only then moved into place.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from numpy.typing import NDArray
from pydantic_core import PydanticSerializationError, to_jsonable_python
from torch import nn

from service.artifact import MODEL_FILE, POPULATION_FILE, load_artifact, session_options
from service.decision import BudgetError, sweep
from service.manifest import MANIFEST_FILE, SCHEMA_VERSION, Manifest, Treatment
from training.network import OutcomeNet, predict

OPSET = 17
INPUT_NAME = "features"
OUTPUT_NAMES = ("revenue", "cost")
METADATA_PREFIX = "dfcl."
# Torch (float32, oneDNN) and onnxruntime (float32, MLAS) sum in different orders; a correct export agrees
# to ~1e-6 relative. A gap above this means the graph computes something else.
PARITY_TOLERANCE = 1e-4
_PARITY_ROWS = 4096


class _ServingGraph(nn.Module):
    """The network with its (N, 2K) output split into the two named outputs the service reads."""

    def __init__(self, model: OutcomeNet) -> None:
        super().__init__()
        self.model = model
        self.k = model.config.n_treatments

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(features)  # (N, 2K): first K revenue, last K cost
        return out[:, : self.k], out[:, self.k :]


def _check_signature(proto: onnx.ModelProto, n_features: int, n_treatments: int) -> None:
    """The graph has input `features` [batch, D] and outputs `revenue`, `cost` [batch, K], all float32."""
    inputs, outputs = [v.name for v in proto.graph.input], [v.name for v in proto.graph.output]
    if inputs != [INPUT_NAME] or outputs != list(OUTPUT_NAMES):
        raise ValueError(
            f"model: exported inputs {inputs} and outputs {outputs}, expected {INPUT_NAME!r} → {OUTPUT_NAMES}"
        )
    widths = [n_features] + [n_treatments] * len(OUTPUT_NAMES)
    for value, width in zip([*proto.graph.input, *proto.graph.output], widths, strict=True):
        tensor = value.type.tensor_type
        dims = list(tensor.shape.dim)
        dynamic_batch = len(dims) == 2 and dims[0].HasField("dim_param")
        if tensor.elem_type != onnx.TensorProto.FLOAT or not dynamic_batch or dims[1].dim_value != width:
            shape = [d.dim_param or d.dim_value for d in dims]
            raise ValueError(
                f"model: {value.name!r} must be float32 [batch, {width}] with a dynamic batch, got {shape}"
            )


def onnx_bytes(model: OutcomeNet, metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialise the network to ONNX with a dynamic batch axis; `metadata` goes into `metadata_props`.

    Uses the TorchScript exporter (`dynamo=False`, DESIGN.md §3), whose output is deterministic for fixed
    weights. The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    graph = _ServingGraph(model).eval()
    example = torch.zeros(2, model.config.n_features, dtype=torch.float32)
    try:
        with warnings.catch_warnings(), tempfile.TemporaryDirectory(prefix="dfcl-onnx-") as scratch:
            # The legacy exporter is chosen on purpose (the dynamo one needs onnxscript); silence its notice.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                graph,
                (example,),
                Path(scratch) / MODEL_FILE,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)},
                opset_version=OPSET,
                dynamo=False,
            )
            proto = onnx.load(Path(scratch) / MODEL_FILE)
    finally:
        model.train(was_training)
    proto.producer_name = "dfcl-allocator"
    proto.doc_string = "Predicted revenue and cost per treatment (first K revenue, last K cost of the S-learner)."
    for key in sorted(metadata or {}):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, (metadata or {})[key]
    _check_signature(proto, model.config.n_features, model.config.n_treatments)
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def onnx_predict(model_bytes: bytes, features: NDArray[np.floating]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(revenue, cost), each (N, K), from the ONNX bytes with onnxruntime under the service's session options."""
    # The service's own session options, so the default λ* is computed from the very same float32 outputs.
    session = ort.InferenceSession(model_bytes, session_options(1), providers=["CPUExecutionProvider"])
    revenue, cost = session.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(features, dtype=np.float32)})
    return np.asarray(revenue, dtype=np.float64), np.asarray(cost, dtype=np.float64)


def _json(name: str, value: Any) -> str:
    """Canonical JSON (sorted keys, no spaces) for a metadata entry; ValueError names the parameter."""
    try:
        return json.dumps(to_jsonable_python(value), sort_keys=True, separators=(",", ":"))
    except (PydanticSerializationError, TypeError, ValueError) as error:
        raise ValueError(f"{name} is not JSON-serialisable: {error}") from error


def _check_parity(model: OutcomeNet, model_bytes: bytes, population: NDArray[np.float32]) -> None:
    """Torch and onnxruntime agree on the first population rows (guards against a silently wrong graph)."""
    rows = population[:_PARITY_ROWS]  # (M', D)
    torch_out = np.hstack(predict(model, rows))  # (M', 2K)
    onnx_out = np.hstack(onnx_predict(model_bytes, rows))
    gap = np.abs(torch_out - onnx_out) / (1.0 + np.abs(torch_out))
    if not np.all(gap <= PARITY_TOLERANCE):
        row = int(np.argmax(np.nan_to_num(gap, nan=np.inf).max(axis=1)))
        raise ValueError(
            f"model: onnxruntime and torch predictions differ by {float(np.nanmax(gap)):.3g} (relative) at "
            f"population row {row}; the ONNX graph does not reproduce the network"
        )


def _default_lambda(
    revenue: NDArray[np.float64], cost: NDArray[np.float64], budget_per_capita: float | None
) -> tuple[float, float]:
    """(per-capita budget, λ*) on the population; None → the midpoint of the predicted spend range."""
    solved = sweep(revenue, cost)
    per_capita = (solved.min_spend + solved.max_spend) / (2 * solved.n_rows)
    if budget_per_capita is not None:
        per_capita = float(budget_per_capita)
        if not math.isfinite(per_capita) or per_capita < 0:
            raise ValueError(f"default_budget_per_capita must be a finite number ≥ 0, got {budget_per_capita}")
    try:
        lam = solved.solve_per_capita(per_capita, with_assignment=False).lam
    except BudgetError as error:
        raise ValueError(f"default_budget_per_capita {per_capita:.6g}: {error}") from error
    return per_capita, lam


def _population_bytes(population: NDArray[np.float32]) -> bytes:
    # Plain savez (not compressed): its zip entries carry a fixed 1980 timestamp, so the bytes are reproducible.
    buffer = io.BytesIO()
    np.savez(buffer, features=population)  # the key is service.artifact.POPULATION_KEY
    return buffer.getvalue()


def _check_inputs(
    model: OutcomeNet, population: NDArray[np.floating], feature_names: list[str], treatment_names: list[str]
) -> NDArray[np.float32]:
    """Names and population against the network; the population as contiguous float32 (M, D)."""
    config = model.config
    if len(feature_names) != config.n_features:
        raise ValueError(f"feature_names has {len(feature_names)} names, the network takes {config.n_features}")
    if len(treatment_names) != config.n_treatments:
        raise ValueError(f"treatment_names has {len(treatment_names)} names, the network has {config.n_treatments}")
    features = np.ascontiguousarray(population, dtype=np.float32)
    if features.ndim != 2 or features.shape[1] != config.n_features or len(features) == 0:
        raise ValueError(f"population must be (M > 0, {config.n_features}) features, got shape {features.shape}")
    finite = np.isfinite(features).all(axis=1)
    if not finite.all():
        raise ValueError(f"population has NaN or infinite values (first at row {int(np.argmin(finite))})")
    return features


def _timestamp(created_at: str | None) -> str:
    if created_at is None:
        return datetime.now(UTC).isoformat(timespec="seconds")
    try:
        datetime.fromisoformat(created_at)
    except ValueError as error:
        raise ValueError(f"created_at {created_at!r} is not an ISO 8601 time") from error
    return created_at


def export_artifact(
    model: OutcomeNet,
    out_dir: str | Path,
    *,
    population: NDArray[np.floating],
    feature_names: list[str],
    treatment_names: list[str],
    method: str,
    hyperparameters: dict[str, Any],
    categorical: dict[str, list[str]] | None = None,
    training_data: dict[str, Any] | None = None,
    validation_metrics: dict[str, Any] | None = None,
    default_budget_per_capita: float | None = None,
    created_at: str | None = None,
) -> Manifest:
    """Write model.onnx, manifest.json and population.npz into `out_dir`; return the manifest.

    `default_budget_per_capita` None → the midpoint of the population's predicted spend range.
    `created_at` None → now (UTC); pass an ISO 8601 string to make the manifest reproducible too.
    Other files in `out_dir` are left alone; the three artifact files are replaced only after the new
    artifact has passed `service.artifact.load_artifact`.
    """
    features = _check_inputs(model, population, feature_names, treatment_names)
    timestamp = _timestamp(created_at)
    # The network's own config wins over a stale "network" entry in the caller's hyperparameters.
    all_hyperparameters = {**hyperparameters, "network": model.config.to_dict()}
    metadata = {
        f"{METADATA_PREFIX}schema_version": str(SCHEMA_VERSION),
        f"{METADATA_PREFIX}method": method,
        f"{METADATA_PREFIX}features": _json("feature_names", list(feature_names)),
        f"{METADATA_PREFIX}treatments": _json("treatment_names", list(treatment_names)),
        f"{METADATA_PREFIX}categorical": _json("categorical", categorical or {}),
        f"{METADATA_PREFIX}hyperparameters": _json("hyperparameters", all_hyperparameters),
    }
    was_training = model.training
    try:
        model_bytes = onnx_bytes(model, metadata)
        _check_parity(model, model_bytes, features)
    finally:
        model.train(was_training)
    per_capita, lam = _default_lambda(*onnx_predict(model_bytes, features), default_budget_per_capita)

    manifest = Manifest(
        # The hash of the final bytes, metadata included: the service recomputes it on load.
        model_version=hashlib.sha256(model_bytes).hexdigest()[:16],
        created_at=timestamp,
        method=method,
        hyperparameters=all_hyperparameters,
        features=list(feature_names),
        categorical=categorical or {},
        treatments=[Treatment(id=i, name=name) for i, name in enumerate(treatment_names)],
        training_data=training_data or {},
        validation_metrics=validation_metrics or {},
        default_budget_per_capita=per_capita,
        default_lambda=lam,
        opset=OPSET,
        input_name=INPUT_NAME,
        revenue_output=OUTPUT_NAMES[0],
        cost_output=OUTPUT_NAMES[1],
    )
    files = {
        MODEL_FILE: model_bytes,
        POPULATION_FILE: _population_bytes(features),
        MANIFEST_FILE: manifest.to_json().encode(),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".export-", dir=out))
    try:
        for name, data in files.items():
            (scratch / name).write_bytes(data)
        load_artifact(scratch)  # the service's own checks, before anything in `out` is touched
        # Manifest last: until it is replaced, a reader sees the old manifest whose hash refuses a new model.
        for name in (POPULATION_FILE, MODEL_FILE, MANIFEST_FILE):
            os.replace(scratch / name, out / name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return manifest
