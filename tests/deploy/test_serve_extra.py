"""The `serve` extra alone runs the service: a fresh venv, `pip install <repo>[serve]`, no torch.

This is what the Docker `serve` stage does (`pip install "./[serve]"`); no Docker engine is needed to check
that the dependency set is complete and torch-free. pip may use its cache; with no registry it fails loudly.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .processes import MODEL_DIR, ROOT, Replica, clean_env, individuals_from_population, start_replica

pytestmark = pytest.mark.slow

# What the Dockerfile copies into the build stage, plus training/ so the install matches `pip install <repo>`.
PACKAGING_INPUTS = ["pyproject.toml", "README.md", "service", "training"]


@pytest.fixture(scope="module")
def serve_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv (no system site-packages) with only the project and its serve extra installed; returns its python."""
    base = tmp_path_factory.mktemp("serve-extra")
    # Install from a copy: building in the shared working tree would leave build/ and *.egg-info behind.
    source = base / "src"
    source.mkdir()
    for name in PACKAGING_INPUTS:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif path.exists():
            shutil.copy2(path, source / name)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    pip = subprocess.run(
        [str(python), "-m", "pip", "install", f"{source}/[serve]"],
        capture_output=True,
        text=True,
        timeout=900,
        env=clean_env(),
    )
    assert pip.returncode == 0, (
        f"pip install <repo>[serve] failed (package index reachable?):\n{pip.stdout[-3000:]}\n{pip.stderr[-3000:]}"
    )
    return python


@pytest.fixture(scope="module")
def replica(serve_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    # cwd outside the repo, so `python -m service` imports the installed package, not the working tree.
    workdir = tmp_path_factory.mktemp("serve-run")
    env = clean_env(ALLOCATOR_MODEL_DIR=str(MODEL_DIR), ALLOCATOR_ADMIN_TOKEN="serve-extra-token")
    started = start_replica(serve_venv, env, workdir, workdir / "service.log")
    yield started
    started.stop()


def test_venv_has_no_torch_and_no_system_packages(serve_venv: Path) -> None:
    probe = subprocess.run(
        [str(serve_venv), "-c", "import sys; print(sys.prefix != sys.base_prefix); import torch"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.stdout.strip() == "True", "not running inside the venv"
    assert probe.returncode != 0 and "No module named 'torch'" in probe.stderr, probe.stderr
    cfg = (serve_venv.parent.parent / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = false" in cfg


def test_service_imports_from_the_venv_without_torch(serve_venv: Path, tmp_path: Path) -> None:
    code = (
        "import sys, service, service.main, service.__main__; "
        "assert service.__file__.startswith(sys.prefix), service.__file__; "
        "assert 'torch' not in sys.modules; print(service.__file__)"
    )
    probe = subprocess.run([str(serve_venv), "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert probe.returncode == 0, probe.stderr


def test_installed_service_allocates_on_the_default_model(replica: Replica) -> None:
    with httpx.Client(base_url=replica.url, timeout=10.0) as client:
        model = client.get("/model").json()
        treatment_ids = {t["id"] for t in model["treatments"]}
        individuals = individuals_from_population(model, 5)
        response = client.post("/allocate", json={"campaign": "default", "individuals": individuals})
        assert response.status_code == 200, response.text
        body = response.json()
    assert [a["id"] for a in body["allocations"]] == [i["id"] for i in individuals]
    assert {a["treatment"] for a in body["allocations"]} <= treatment_ids
    assert body["model_version"] == model["model_version"]
    assert body["lambda"] >= 0.0
