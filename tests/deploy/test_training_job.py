"""The training Job's script, run verbatim from k8s/training-job.yaml on a tiny synthetic data set.

Only the Job's environment is changed (paths in a tmp dir, small tables, TSM for 2 epochs), so this checks the
script itself: every CLI flag it passes exists, the artifact lands under MODELS_DIR by rename, the service's
loader accepts it, and an existing MODEL_NAME is never overwritten.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.artifact import load_artifact

from .processes import ROOT, clean_env

pytestmark = pytest.mark.slow

JOB = ROOT / "k8s" / "training-job.yaml"


def _container() -> dict[str, Any]:
    job = yaml.safe_load(JOB.read_text())
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _run_job(tmp_path: Path, model_name: str) -> subprocess.CompletedProcess[str]:
    container = _container()
    env = {e["name"]: e["value"] for e in container["env"]}
    env.update(
        MODEL_NAME=model_name,
        METHOD="tsm",
        MODELS_DIR=str(tmp_path / "models"),
        WORK_DIR=str(tmp_path / "work"),
        DATA_DIR=str(tmp_path / "work" / "data"),
        DATA_CONFIG=str(tmp_path / "work" / "data" / "config.toml"),
        SYNTH_ARGS="--rct-rows 600 --obs-rows 1500 --val-rows 400 --test-rows 800",
        TRAIN_ARGS="--epochs 2",
        OMP_NUM_THREADS="1",
    )
    (tmp_path / "models").mkdir(exist_ok=True)
    # The image's PYTHONPATH is the installed package; here it is the working tree.
    full_env = clean_env(**env, PYTHONPATH=str(ROOT))
    # The image's `python` is the one with the project installed; here that is this interpreter, whatever
    # `python` is first on PATH (a clean environment's PATH has only the system one, without pandas).
    full_env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return subprocess.run(container["command"], cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=600)


def test_job_script_exports_a_loadable_artifact_and_never_overwrites(tmp_path: Path) -> None:
    first = _run_job(tmp_path, "candidate")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    target = tmp_path / "models" / "candidate"
    assert sorted(p.name for p in target.iterdir()) == ["manifest.json", "model.onnx", "population.npz"]
    assert not (tmp_path / "models" / ".incoming-candidate").exists()
    assert (tmp_path / "models" / "evaluations" / "candidate" / "results.json").is_file()
    artifact = load_artifact(target)
    assert artifact.manifest.method == "tsm"
    assert artifact.population.shape[1] == artifact.manifest.n_features

    before = (target / "model.onnx").read_bytes()
    again = _run_job(tmp_path, "candidate")
    assert again.returncode == 1
    assert "artifacts are immutable" in again.stderr
    assert (target / "model.onnx").read_bytes() == before
