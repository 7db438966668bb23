"""The manifest schema and the artifact loader's cross-checks (real ONNX files loaded by onnxruntime)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from service.artifact import load_artifact
from service.manifest import Manifest, read_manifest

from .artifacts import FEATURES, model_bytes, weights, write_artifact


def test_artifact_predicts_the_graph_it_was_built_from(model_dir: Path) -> None:
    artifact = load_artifact(model_dir)
    x = artifact.population[:50]
    revenue, cost = artifact.predict(x)
    w = weights(0)
    np.testing.assert_allclose(revenue, x @ w["w_revenue"] + w["b_revenue"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cost, np.maximum(x @ w["w_cost"], 0) + w["c0"], rtol=1e-5, atol=1e-5)
    assert revenue.dtype == np.float32 and cost.shape == (50, 3)
    assert artifact.manifest.model_version == hashlib.sha256((model_dir / "model.onnx").read_bytes()).hexdigest()[:16]
    assert artifact.population.shape == (2000, 4)


def test_manifest_round_trips_and_names_its_fields(tmp_path: Path) -> None:
    manifest = write_artifact(tmp_path)
    assert read_manifest(tmp_path / "manifest.json") == manifest
    assert manifest.features == FEATURES and manifest.n_treatments == 3
    assert manifest.treatment_names == ["control", "coupon_5", "coupon_10"]
    assert manifest.input_name == "features" and (manifest.revenue_output, manifest.cost_output) == ("revenue", "cost")
    assert manifest.one_hot_columns() == {"region=north", "region=south"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"treatments": [{"id": 1, "name": "a"}, {"id": 0, "name": "b"}]}, "treatment ids must be 0..K-1"),
        ({"features": ["a", "a"]}, "listed twice"),
        ({"categorical": {"region": ["east"]}}, "not in features"),
        ({"model_version": "xyz"}, "model_version"),
        ({"schema_version": 99}, "schema_version 99 is not supported"),
        ({"surprise": 1}, "surprise"),
        ({"default_lambda": -1.0}, "default_lambda"),
    ],
)
def test_bad_manifest_is_refused_naming_the_field(tmp_path: Path, change: dict[str, object], message: str) -> None:
    write_artifact(tmp_path)
    data = json.loads((tmp_path / "manifest.json").read_text())
    data.update(change)
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"manifest\.json") as error:
        load_artifact(tmp_path)
    assert message in str(error.value)


def _edit_manifest(path: Path, **fields: object) -> None:
    data = json.loads((path / "manifest.json").read_text())
    data.update(fields)
    (path / "manifest.json").write_text(json.dumps(data))


def test_model_version_must_match_the_onnx_bytes(tmp_path: Path) -> None:
    write_artifact(tmp_path)
    (tmp_path / "model.onnx").write_bytes(model_bytes(seed=5))
    with pytest.raises(ValueError, match=r"manifest.json: model_version .* does not match model.onnx"):
        load_artifact(tmp_path)


def test_feature_count_mismatch_names_the_input(tmp_path: Path) -> None:
    write_artifact(tmp_path)
    data = model_bytes(seed=0, n_features=5)
    (tmp_path / "model.onnx").write_bytes(data)
    _edit_manifest(tmp_path, model_version=hashlib.sha256(data).hexdigest()[:16])
    with pytest.raises(
        ValueError, match=r"model.onnx: input 'features' has 5 columns but manifest.json features lists 4"
    ):
        load_artifact(tmp_path)


def test_treatment_count_mismatch_names_the_output(tmp_path: Path) -> None:
    write_artifact(tmp_path)
    data = model_bytes(seed=0, n_treatments=4)
    (tmp_path / "model.onnx").write_bytes(data)
    _edit_manifest(tmp_path, model_version=hashlib.sha256(data).hexdigest()[:16])
    with pytest.raises(ValueError, match=r"output 'revenue' has 4 columns but manifest.json treatments lists 3"):
        load_artifact(tmp_path)


def test_output_names_must_match(tmp_path: Path) -> None:
    write_artifact(tmp_path, cost_output="spend")
    with pytest.raises(ValueError, match=r"no output 'spend' \(manifest.json cost_output\)"):
        load_artifact(tmp_path)


def test_population_shape_and_key_are_checked(tmp_path: Path) -> None:
    write_artifact(tmp_path)
    np.savez(tmp_path / "population.npz", features=np.zeros((10, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"population.npz: 'features' has shape \(10, 3\); manifest.json features"):
        load_artifact(tmp_path)
    np.savez(tmp_path / "population.npz", rows=np.zeros((10, 4), dtype=np.float32))
    with pytest.raises(ValueError, match=r"population.npz: no array 'features'"):
        load_artifact(tmp_path)
    np.savez(tmp_path / "population.npz", features=np.full((10, 4), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match=r"NaN or infinite values \(first at row 0\)"):
        load_artifact(tmp_path)


def test_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_artifact(tmp_path / "nowhere")
    write_artifact(tmp_path)
    (tmp_path / "population.npz").unlink()
    with pytest.raises(ValueError, match=r"population\.npz: population file does not exist"):
        load_artifact(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"not onnx")
    with pytest.raises(ValueError, match="model_version"):
        load_artifact(tmp_path)


def test_session_uses_the_configured_threads(model_dir: Path) -> None:
    artifact = load_artifact(model_dir, threads=2)
    assert isinstance(artifact.session, ort.InferenceSession)
    assert artifact.session.get_session_options().intra_op_num_threads == 2


def test_manifest_model_is_frozen(model_dir: Path) -> None:
    manifest = read_manifest(model_dir / "manifest.json")
    with pytest.raises(ValueError, match="frozen"):
        manifest.method = "other"
    assert isinstance(manifest, Manifest)
