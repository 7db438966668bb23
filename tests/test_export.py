"""The ONNX export (training/export.py): graph contract, torch/onnxruntime parity, the manifest the service
loads, refusals of broken artifacts, decisions and λ* through the service path, byte determinism, the CLI.

Tiny untrained `OutcomeNet`s with non-trivial standardisation stand in for trained ones: the exporter does not
care how the weights were found, and random weights exercise every head.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from numpy.typing import NDArray

from service.artifact import load_artifact
from service.decision import choose, sweep
from service.manifest import Manifest, read_manifest
from training.config import DatasetConfig
from training.data import encoding_from_feature_names, load_logs
from training.dataset import Logs
from training.export import OPSET, _check_parity, export_artifact, onnx_bytes, onnx_predict
from training.network import (
    NetworkConfig,
    OutcomeNet,
    load_checkpoint,
    predict,
    save_checkpoint,
    standardisation,
)
from training.synthetic import SyntheticSpec, write_benchmark

N_FEATURES = 6
PINNED = "2025-01-01T00:00:00+00:00"


@dataclass(frozen=True)
class Case:
    name: str
    n_treatments: int
    binary_revenue: bool
    binary_cost: bool


CASES = [
    Case("k3-binary", 3, binary_revenue=True, binary_cost=True),
    Case("k5-continuous", 5, binary_revenue=False, binary_cost=False),
    Case("k5-binary-revenue", 5, binary_revenue=True, binary_cost=False),
]


def _features(rows: int, seed: int) -> NDArray[np.float32]:
    """(rows, D) raw features on very different scales, so standardisation inside the graph matters."""
    rng = np.random.default_rng(seed)
    mean = np.array([50.0, -3.0, 0.0, 1000.0, 0.5, 7.0])
    scale = np.array([20.0, 0.1, 1.0, 300.0, 0.5, 2.0])
    return (mean + scale * rng.normal(size=(rows, N_FEATURES))).astype(np.float32)


def _network(case: Case, seed: int = 0) -> OutcomeNet:
    torch.manual_seed(seed)
    reference = _features(4000, seed=99)
    config = NetworkConfig(
        n_features=N_FEATURES,
        n_treatments=case.n_treatments,
        hidden=(16, 8),
        binary_revenue=case.binary_revenue,
        binary_cost=case.binary_cost,
        feature_mean=reference.mean(axis=0).astype(float).tolist(),
        feature_std=reference.std(axis=0).astype(float).tolist(),
    )
    return OutcomeNet(config).eval()


def _names(case: Case) -> tuple[list[str], list[str]]:
    features = [f"x{i}" for i in range(N_FEATURES)]
    return features, ["control", *(f"coupon_{j}" for j in range(1, case.n_treatments))]


def _export(case: Case, out: Path, model: OutcomeNet | None = None, **overrides: Any) -> Manifest:
    features, treatments = _names(case)
    arguments: dict[str, Any] = {
        "population": _features(500, seed=1),
        "feature_names": features,
        "treatment_names": treatments,
        "method": "tsm",
        "hyperparameters": {"lr": 0.01, "epochs": 3},
        "training_data": {"rct_train": {"rows": 123}},
        "validation_metrics": {"cost_curve_area": 0.5},
        "created_at": PINNED,
    }
    arguments.update(overrides)
    return export_artifact(model if model is not None else _network(case), out, **arguments)


@pytest.fixture(scope="module", params=CASES, ids=[c.name for c in CASES])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Case, Path, Manifest]:
    case: Case = request.param
    out = tmp_path_factory.mktemp(case.name)
    return case, out, _export(case, out)


def test_graph_contract_and_metadata(exported: tuple[Case, Path, Manifest]) -> None:
    case, out, manifest = exported
    onnx.checker.check_model(str(out / "model.onnx"), full_check=True)
    proto = onnx.load(out / "model.onnx")
    (features,) = proto.graph.input
    assert features.name == "features" and features.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    batch, width = features.type.tensor_type.shape.dim
    assert batch.dim_param == "batch" and not batch.HasField("dim_value")
    assert width.dim_value == N_FEATURES
    assert [o.name for o in proto.graph.output] == ["revenue", "cost"]
    for output in proto.graph.output:
        assert output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert [d.dim_param or d.dim_value for d in output.type.tensor_type.shape.dim] == ["batch", case.n_treatments]
    assert {o.domain: o.version for o in proto.opset_import}[""] == OPSET == manifest.opset
    meta = {p.key: p.value for p in proto.metadata_props}
    feature_names, treatment_names = _names(case)
    assert meta["dfcl.method"] == "tsm"
    assert json.loads(meta["dfcl.features"]) == feature_names
    assert json.loads(meta["dfcl.treatments"]) == treatment_names
    assert json.loads(meta["dfcl.hyperparameters"])["network"]["n_treatments"] == case.n_treatments
    assert "created_at" not in "".join(meta)  # a timestamp inside the bytes would break reproducibility
    # model_version is the hash of the final bytes, metadata included
    assert manifest.model_version == hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()[:16]


@pytest.mark.parametrize("batch", [1, 7, 1024])
def test_torch_and_onnxruntime_agree(exported: tuple[Case, Path, Manifest], batch: int) -> None:
    case, out, _ = exported
    model = _network(case)
    x = _features(batch, seed=batch)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()  # (batch, 2K)
    revenue, cost = load_artifact(out).predict(x)
    assert revenue.shape == cost.shape == (batch, case.n_treatments)
    assert revenue.dtype == cost.dtype == np.float32
    np.testing.assert_allclose(revenue, expected[:, : case.n_treatments], rtol=0, atol=1e-5)
    np.testing.assert_allclose(cost, expected[:, case.n_treatments :], rtol=0, atol=1e-5)
    # the exporter's own onnxruntime path (used for λ*) gives the same numbers as the service's session
    r2, c2 = onnx_predict((out / "model.onnx").read_bytes(), x)
    np.testing.assert_array_equal(r2, revenue.astype(np.float64))
    np.testing.assert_array_equal(c2, cost.astype(np.float64))
    if case.binary_revenue:
        assert np.all((revenue >= 0) & (revenue <= 1))
    assert np.all(cost >= 0)  # sigmoid or softplus cost heads


def test_manifest_validates_and_service_loads(exported: tuple[Case, Path, Manifest]) -> None:
    case, out, manifest = exported
    assert read_manifest(out / "manifest.json") == manifest
    artifact = load_artifact(out)
    assert artifact.manifest == manifest
    feature_names, treatment_names = _names(case)
    assert manifest.features == feature_names and manifest.treatment_names == treatment_names
    assert [t.id for t in manifest.treatments] == list(range(case.n_treatments))
    assert manifest.method == "tsm" and manifest.created_at == PINNED
    assert manifest.hyperparameters["lr"] == 0.01
    assert manifest.hyperparameters["network"] == _network(case).config.to_dict()
    assert manifest.training_data == {"rct_train": {"rows": 123}}
    assert manifest.validation_metrics == {"cost_curve_area": 0.5}
    np.testing.assert_array_equal(artifact.population, _features(500, seed=1))
    assert not list(out.glob(".export-*")), "the scratch directory must be cleaned up"


def test_default_lambda_is_what_the_service_solves(exported: tuple[Case, Path, Manifest]) -> None:
    _, out, manifest = exported
    artifact = load_artifact(out)
    revenue, cost = artifact.predict(artifact.population)
    budget_sweep = sweep(revenue, cost)
    solution = budget_sweep.solve_per_capita(manifest.default_budget_per_capita)
    assert solution.lam == manifest.default_lambda
    # no budget given → the middle of the predicted spend range, where λ* is a real trade-off
    n = budget_sweep.n_rows
    middle = (budget_sweep.min_spend + budget_sweep.max_spend) / (2 * n)
    assert manifest.default_budget_per_capita == pytest.approx(middle, rel=1e-12)
    assert manifest.default_lambda > 0
    assert solution.spend_per_capita <= manifest.default_budget_per_capita + 1e-12


def test_decisions_match_torch_with_the_manifest_lambda(exported: tuple[Case, Path, Manifest]) -> None:
    case, out, manifest = exported
    artifact = load_artifact(out)
    # Fresh rows: a population row sits exactly on λ*'s tie, where a 1e-7 difference may pick either arm.
    x = _features(2000, seed=7)
    served = choose(*artifact.predict(x), manifest.default_lambda)
    offline = choose(*predict(_network(case), x), manifest.default_lambda)
    np.testing.assert_array_equal(served, offline)
    assert len(np.unique(served)) > 1, "λ* should split the rows between arms, or the check is vacuous"


def test_explicit_default_budget(tmp_path: Path) -> None:
    case = CASES[1]
    _export(case, tmp_path / "mid")
    artifact = load_artifact(tmp_path / "mid")
    budget_sweep = sweep(*artifact.predict(artifact.population))
    n = budget_sweep.n_rows
    budget = (0.75 * budget_sweep.min_spend + 0.25 * budget_sweep.max_spend) / n  # a quarter up the range
    manifest = _export(case, tmp_path / "quarter", default_budget_per_capita=budget)
    assert manifest.default_budget_per_capita == budget
    assert manifest.default_lambda == budget_sweep.solve_per_capita(budget, with_assignment=False).lam
    assert manifest.default_lambda > read_manifest(tmp_path / "mid" / "manifest.json").default_lambda
    with pytest.raises(ValueError, match=r"default_budget_per_capita .* below the cheapest"):
        _export(case, tmp_path / "low", default_budget_per_capita=0.5 * budget_sweep.min_spend / n)
    with pytest.raises(ValueError, match="default_budget_per_capita must be a finite"):
        _export(case, tmp_path / "nan", default_budget_per_capita=float("nan"))
    assert not (tmp_path / "low").exists(), "a refused export writes nothing"


def test_export_is_deterministic(tmp_path: Path) -> None:
    case = CASES[0]
    first = _export(case, tmp_path / "a")
    second = _export(case, tmp_path / "b")  # a fresh, identically seeded network
    unpinned = _export(case, tmp_path / "c", created_at=None)
    for name in ("model.onnx", "population.npz", "manifest.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert first == second
    for name in ("model.onnx", "population.npz"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "c" / name).read_bytes(), name
    assert unpinned.created_at != PINNED
    assert unpinned.model_copy(update={"created_at": PINNED}) == first


def test_export_is_deterministic_across_processes(tmp_path: Path) -> None:
    case = CASES[1]
    model = _network(case)
    checkpoint = tmp_path / "net.pt"
    save_checkpoint(model, str(checkpoint))
    np.save(tmp_path / "population.npy", _features(500, seed=1))
    here = _export(case, tmp_path / "here", model=model)
    script = f"""
import numpy as np, torch
torch.set_num_threads(1)
from training.export import export_artifact
from training.network import load_checkpoint
model, _ = load_checkpoint({str(checkpoint)!r})
export_artifact(model, {str(tmp_path / "there")!r}, population=np.load({str(tmp_path / "population.npy")!r}),
    feature_names={_names(case)[0]!r}, treatment_names={_names(case)[1]!r}, method="tsm",
    hyperparameters={{"lr": 0.01, "epochs": 3}}, training_data={{"rct_train": {{"rows": 123}}}},
    validation_metrics={{"cost_curve_area": 0.5}}, created_at={PINNED!r})
"""
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, timeout=120)
    for name in ("model.onnx", "population.npz", "manifest.json"):
        assert (tmp_path / "here" / name).read_bytes() == (tmp_path / "there" / name).read_bytes(), name
    assert read_manifest(tmp_path / "there" / "manifest.json").model_version == here.model_version


def test_export_keeps_the_model_mode_and_other_files(tmp_path: Path) -> None:
    case = CASES[0]
    model = _network(case).train()
    (tmp_path / "README.txt").write_text("kept")
    _export(case, tmp_path, model=model)
    _export(case, tmp_path, model=model)  # re-export over an existing artifact
    assert model.training
    assert (tmp_path / "README.txt").read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.txt", "manifest.json", "model.onnx", "population.npz"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"feature_names": [f"x{i}" for i in range(N_FEATURES + 1)]}, "feature_names has 7 names"),
        ({"treatment_names": ["control", "a"]}, "treatment_names has 2 names"),
        ({"population": np.zeros((10, N_FEATURES - 1), np.float32)}, r"population must be \(M > 0, 6\)"),
        ({"population": np.zeros((0, N_FEATURES), np.float32)}, r"population must be \(M > 0, 6\)"),
        ({"created_at": "yesterday"}, "created_at 'yesterday' is not an ISO 8601"),
        ({"hyperparameters": {"callback": object()}}, "hyperparameters is not JSON-serialisable"),
        ({"treatment_names": ["control", "a", "a"]}, "treatment names must be unique"),
    ],
)
def test_export_refuses_bad_inputs(tmp_path: Path, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _export(CASES[0], tmp_path / "out", **overrides)
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_export_refuses_non_finite_population(tmp_path: Path) -> None:
    population = _features(20, seed=3)
    population[4, 2] = np.nan
    with pytest.raises(ValueError, match=r"population has NaN or infinite values \(first at row 4\)"):
        _export(CASES[0], tmp_path, population=population)


# --- a broken or mismatched artifact is refused, naming the file and the field ------------------------------


def _edit_manifest(out: Path, change: dict[str, Any]) -> None:
    data = json.loads((out / "manifest.json").read_text())
    data.update(change)
    (out / "manifest.json").write_text(json.dumps(data))


def _rehash(out: Path) -> None:
    _edit_manifest(out, {"model_version": hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()[:16]})


def _truncate_model(out: Path) -> None:
    data = (out / "model.onnx").read_bytes()
    (out / "model.onnx").write_bytes(data[: len(data) // 2])


def _garbage_model(out: Path) -> None:
    (out / "model.onnx").write_bytes(b"this is not an onnx model" * 10)
    _rehash(out)


def _truncated_model_rehashed(out: Path) -> None:
    _truncate_model(out)
    _rehash(out)


def _extra_feature(out: Path) -> None:
    data = json.loads((out / "manifest.json").read_text())
    _edit_manifest(out, {"features": [*data["features"], "one_too_many"]})


def _extra_treatment(out: Path) -> None:
    data = json.loads((out / "manifest.json").read_text())
    k = len(data["treatments"])
    _edit_manifest(out, {"treatments": [*data["treatments"], {"id": k, "name": "coupon_extra"}]})


def _narrow_population(out: Path) -> None:
    np.savez(out / "population.npz", features=np.zeros((10, N_FEATURES - 1), np.float32))


def _population_without_key(out: Path) -> None:
    np.savez(out / "population.npz", rows=np.zeros((10, N_FEATURES), np.float32))


BREAKAGES = {
    "truncated-model": (_truncate_model, r"manifest.json: model_version '[0-9a-f]{16}' does not match model.onnx"),
    "truncated-model-rehashed": (_truncated_model_rehashed, "model.onnx: onnxruntime cannot load the model"),
    "garbage-model": (_garbage_model, "model.onnx: onnxruntime cannot load the model"),
    "extra-feature": (_extra_feature, "model.onnx: input 'features' has 6 columns but manifest.json features lists 7"),
    "extra-treatment": (
        _extra_treatment,
        "model.onnx: output 'revenue' has 3 columns but manifest.json treatments lists 4",
    ),
    "narrow-population": (_narrow_population, r"population.npz: 'features' has shape \(10, 5\); manifest.json"),
    "population-key": (_population_without_key, r"population.npz: no array 'features' \(arrays: \['rows'\]\)"),
    "bad-json": (lambda out: (out / "manifest.json").write_text("{"), "manifest.json: not valid JSON"),
    "missing-manifest": (lambda out: (out / "manifest.json").unlink(), "manifest.json: manifest file does not exist"),
    "missing-model": (lambda out: (out / "model.onnx").unlink(), "model.onnx: model file does not exist"),
    "missing-population": (
        lambda out: (out / "population.npz").unlink(),
        "population.npz: population file does not exist",
    ),
    "bad-field": (
        lambda out: _edit_manifest(out, {"default_lambda": -1.0}),
        "manifest.json: invalid manifest: default_lambda: Input should be greater than or equal to 0",
    ),
}


@pytest.fixture(scope="module")
def good_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("good")
    _export(CASES[0], out)
    return out


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_broken_artifact_is_refused(good_artifact: Path, tmp_path: Path, breakage: str) -> None:
    out = tmp_path / "artifact"
    shutil.copytree(good_artifact, out)
    load_artifact(out)  # the copy is fine before the breakage
    damage, message = BREAKAGES[breakage]
    damage(out)
    with pytest.raises(ValueError, match=message):
        load_artifact(out)


def test_parity_guard_refuses_a_graph_of_another_network() -> None:
    case = CASES[0]
    other_bytes = onnx_bytes(_network(case, seed=1))
    with pytest.raises(ValueError, match="model: onnxruntime and torch predictions differ"):
        _check_parity(_network(case, seed=0), other_bytes, _features(50, seed=2))


# --- the CLI: python -m training export -------------------------------------------------------------------


def _cli_checkpoint(tmp_path: Path) -> tuple[Path, Path, Logs]:
    """A small synthetic benchmark and an (untrained) checkpoint carrying what `train` saves with it."""
    try:
        import training.commands  # noqa: F401  (the CLI needs every training module to import)
    except ImportError as error:
        pytest.skip(f"training.commands is not importable yet: {error}")
    spec = SyntheticSpec(n_treatments=3, seed=5)
    paths = write_benchmark(tmp_path / "data", spec, rct_rows=50, obs_rows=50, val_rows=50, test_rows=400, fmt="csv")
    config = DatasetConfig.load(paths["config"])
    logs = load_logs(paths["rct_test"], config)
    encoding = encoding_from_feature_names(logs.feature_names, config)
    mean, std = standardisation(logs.features)
    torch.manual_seed(0)
    network_config = NetworkConfig(logs.n_features, logs.n_treatments, hidden=(8,), feature_mean=mean, feature_std=std)
    extra = {
        "method": "dfcl",
        "dataset_config": config.to_dict(),
        "encoding": encoding.to_dict(),
        "config": {"epochs": 1, "lr": 0.001},
        "training_data": {"rct_train": {"rows": 50}},
        "validation_metrics": {"cost_curve_area": 1.25},
    }
    checkpoint = tmp_path / "dfcl.pt"
    save_checkpoint(OutcomeNet(network_config), str(checkpoint), extra)
    return checkpoint, paths["rct_test"], logs


def _run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "training", "export", *(str(a) for a in args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


def test_cli_export_end_to_end(tmp_path: Path) -> None:
    checkpoint, table, logs = _cli_checkpoint(tmp_path)
    run = _run_cli("--model", checkpoint, "--population", table, "--out", tmp_path / "cli", "--population-rows", "300")
    assert run.returncode == 0, run.stderr
    assert "model version" in run.stdout
    artifact = load_artifact(tmp_path / "cli")
    manifest = artifact.manifest
    assert manifest.method == "dfcl"
    assert manifest.features == list(logs.feature_names)
    assert manifest.treatment_names == list(logs.treatment_names)
    assert manifest.categorical == {"city_tier": [n.split("=", 1)[1] for n in logs.feature_names if "=" in n]}
    assert manifest.hyperparameters["lr"] == 0.001 and manifest.validation_metrics == {"cost_curve_area": 1.25}
    # a seeded sample of 300 distinct table rows, in table order
    assert artifact.population.shape == (300, logs.n_features)
    positions = [int(np.flatnonzero((logs.features == row).all(axis=1))[0]) for row in artifact.population]
    assert positions == sorted(set(positions))
    # the served model is the checkpoint's network, and λ* is what the service solves
    model, _ = load_checkpoint(str(checkpoint))
    revenue, cost = artifact.predict(logs.features)
    np.testing.assert_allclose(np.hstack([revenue, cost]), np.hstack(predict(model, logs.features)), atol=1e-5, rtol=0)
    solved = sweep(*artifact.predict(artifact.population)).solve_per_capita(manifest.default_budget_per_capita)
    assert solved.lam == manifest.default_lambda
    # the CLI process writes the same ONNX bytes as an export of the checkpoint in this process
    here = export_artifact(
        model,
        tmp_path / "here",
        population=artifact.population,
        feature_names=manifest.features,
        treatment_names=manifest.treatment_names,
        method="dfcl",
        hyperparameters={"epochs": 1, "lr": 0.001},
        categorical=manifest.categorical,
    )
    assert (tmp_path / "here" / "model.onnx").read_bytes() == (tmp_path / "cli" / "model.onnx").read_bytes()
    assert here.model_version == manifest.model_version


def test_cli_export_reports_errors(tmp_path: Path) -> None:
    checkpoint, table, _ = _cli_checkpoint(tmp_path)
    run = _run_cli("--model", checkpoint, "--population", table, "--out", tmp_path / "out", "--budget-per-capita", "-1")
    assert run.returncode == 2
    assert "error: default_budget_per_capita must be a finite number ≥ 0, got -1.0" in run.stderr
    assert not (tmp_path / "out").exists()
