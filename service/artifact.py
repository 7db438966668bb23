"""Load a model artifact directory (`model.onnx`, `manifest.json`, `population.npz`) and check it is coherent.

The service refuses to start on an artifact whose parts disagree (DESIGN.md §3); every error names the file
and the field that differ, so a broken export is fixed at the source.
"""

from __future__ import annotations

import hashlib
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from service.manifest import MANIFEST_FILE, Manifest, read_manifest

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
POPULATION_FILE = "population.npz"
POPULATION_KEY = "features"

Float32Array = NDArray[np.float32]


@dataclass(frozen=True)
class Artifact:
    """An onnxruntime session with the manifest that describes it and the reference population."""

    model_dir: Path
    manifest: Manifest
    session: ort.InferenceSession
    population: Float32Array  # (M, D) features of the reference population, manifest order

    @property
    def model_version(self) -> str:
        return self.manifest.model_version

    def predict(self, features: Float32Array) -> tuple[Float32Array, Float32Array]:
        """(revenue, cost), each (N, K) float32, for (N, D) float32 features in manifest order."""
        if features.ndim != 2 or features.shape[1] != self.manifest.n_features:
            raise ValueError(f"features must have shape (N, {self.manifest.n_features}), got {features.shape}")
        m = self.manifest
        revenue, cost = self.session.run(
            [m.revenue_output, m.cost_output], {m.input_name: np.ascontiguousarray(features, dtype=np.float32)}
        )
        return revenue, cost


def session_options(threads: int = 1) -> ort.SessionOptions:
    """The onnxruntime settings every model session uses: the service's, and `training.export`'s check of the
    exported model, so the default λ* written at export is computed from the very same float32 outputs."""
    options = ort.SessionOptions()
    # One request is a few thousand rows at most: more threads than the pod's CPUs only adds contention.
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def _session(model_path: Path, threads: int) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(model_path), session_options(threads), providers=["CPUExecutionProvider"])
    except (ort_errors.Fail, ort_errors.InvalidGraph, ort_errors.InvalidProtobuf, ort_errors.InvalidArgument) as error:
        raise ValueError(f"{model_path}: onnxruntime cannot load the model ({error})") from error


def _static_dim(shape: list[object], axis: int) -> int | None:
    """The size of `axis` when the ONNX graph fixes it, None when it is symbolic (e.g. 'batch')."""
    if len(shape) <= axis:
        return None
    dim = shape[axis]
    return dim if isinstance(dim, int) else None


def _check_signature(session: ort.InferenceSession, manifest: Manifest, model_path: Path) -> None:
    """The ONNX graph's input/output names, ranks and static sizes against the manifest."""
    inputs = session.get_inputs()
    names = [i.name for i in inputs]
    if names != [manifest.input_name]:
        raise ValueError(f"{model_path}: inputs {names} differ from {MANIFEST_FILE} input_name {manifest.input_name!r}")
    (spec,) = inputs
    if spec.type != "tensor(float)" or len(spec.shape) != 2:
        raise ValueError(f"{model_path}: input {spec.name!r} must be float32 [batch, D], got {spec.type} {spec.shape}")
    width = _static_dim(spec.shape, 1)
    if width is not None and width != manifest.n_features:
        raise ValueError(
            f"{model_path}: input {spec.name!r} has {width} columns but {MANIFEST_FILE} features lists "
            f"{manifest.n_features}"
        )
    outputs = {o.name: o for o in session.get_outputs()}
    for field, name in (("revenue_output", manifest.revenue_output), ("cost_output", manifest.cost_output)):
        if name not in outputs:
            raise ValueError(f"{model_path}: no output {name!r} ({MANIFEST_FILE} {field}); outputs are {list(outputs)}")
        out = outputs[name]
        if out.type != "tensor(float)" or len(out.shape) != 2:
            raise ValueError(f"{model_path}: output {name!r} must be float32 [batch, K], got {out.type} {out.shape}")
        k = _static_dim(out.shape, 1)
        if k is not None and k != manifest.n_treatments:
            raise ValueError(
                f"{model_path}: output {name!r} has {k} columns but {MANIFEST_FILE} treatments lists "
                f"{manifest.n_treatments}"
            )


def _load_population(path: Path, manifest: Manifest) -> Float32Array:
    if not path.is_file():
        raise ValueError(f"{path}: population file does not exist")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if POPULATION_KEY not in archive.files:
                raise ValueError(f"{path}: no array {POPULATION_KEY!r} (arrays: {archive.files})")
            population = archive[POPULATION_KEY]
    except (OSError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path}: not a readable .npz archive ({error})") from error
    if population.ndim != 2 or population.shape[0] == 0 or population.shape[1] != manifest.n_features:
        raise ValueError(
            f"{path}: {POPULATION_KEY!r} has shape {population.shape}; {MANIFEST_FILE} features lists "
            f"{manifest.n_features} columns, so it must be (M > 0, {manifest.n_features})"
        )
    if not np.issubdtype(population.dtype, np.number):
        raise ValueError(f"{path}: {POPULATION_KEY!r} must be numeric, got dtype {population.dtype}")
    population = np.ascontiguousarray(population, dtype=np.float32)
    if not np.isfinite(population).all():
        row = int(np.flatnonzero(~np.isfinite(population).all(axis=1))[0])
        raise ValueError(f"{path}: {POPULATION_KEY!r} has NaN or infinite values (first at row {row})")
    return population


def load_artifact(model_dir: str | Path, threads: int = 1) -> Artifact:
    """Load and cross-check `model_dir`; ValueError names the file and field when the parts disagree."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ValueError(f"model directory {model_dir} does not exist")
    manifest = read_manifest(model_dir / MANIFEST_FILE)
    model_path = model_dir / MODEL_FILE
    if not model_path.is_file():
        raise ValueError(f"{model_path}: model file does not exist")
    digest = hashlib.sha256(model_path.read_bytes()).hexdigest()[:16]
    if digest != manifest.model_version:
        raise ValueError(
            f"{model_dir / MANIFEST_FILE}: model_version {manifest.model_version!r} does not match "
            f"{MODEL_FILE} (sha256 prefix {digest!r})"
        )
    session = _session(model_path, threads)
    _check_signature(session, manifest, model_path)
    population = _load_population(model_dir / POPULATION_FILE, manifest)
    artifact = Artifact(model_dir=model_dir, manifest=manifest, session=session, population=population)
    # Symbolic output widths are only known by running the graph: check them on a few population rows.
    revenue, cost = artifact.predict(population[:2])
    k = manifest.n_treatments
    for name, values in ((manifest.revenue_output, revenue), (manifest.cost_output, cost)):
        if values.shape != (min(2, len(population)), k):
            raise ValueError(
                f"{model_path}: output {name!r} has shape {values.shape} on {POPULATION_FILE} rows; "
                f"{MANIFEST_FILE} treatments lists {k}"
            )
    log.info(
        "loaded model %s (%s, %d features, %d treatments, population %d) from %s",
        manifest.model_version,
        manifest.method,
        manifest.n_features,
        k,
        len(population),
        model_dir,
    )
    return artifact
