"""`python -m service` starts uvicorn on the given port with settings from ALLOCATOR_* variables."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from .conftest import ADMIN, ADMIN_TOKEN, free_port


def test_python_m_service_serves_and_refuses_a_broken_artifact(model_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALLOCATOR_")}
    env.update(ALLOCATOR_MODEL_DIR=str(model_dir), ALLOCATOR_ADMIN_TOKEN=ADMIN_TOKEN, ALLOCATOR_LOG_LEVEL="WARNING")
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "service did not become ready"
            time.sleep(0.1)
        assert httpx.get(f"{url}/readyz").json()["store"] == "in-process"
        out = httpx.post(f"{url}/budget", json={"budget_per_capita": 0.8}, headers=ADMIN).json()
        body = {"individuals": [{"id": "a", "features": [0.1, 0.2, 1, 0]}]}
        assert httpx.post(f"{url}/allocate", json=body).json()["lambda_version"] == out["version"] == 1
    finally:
        process.terminate()
        process.wait(timeout=10)
    # A manifest that disagrees with the ONNX file: the process refuses to start and says which field.
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("model.onnx", "population.npz"):
        (broken / name).write_bytes((model_dir / name).read_bytes())
    manifest = (model_dir / "manifest.json").read_text()
    (broken / "manifest.json").write_text(manifest.replace('"opset": 17', '"opset": 17, "features_extra": 1'))
    env["ALLOCATOR_MODEL_DIR"] = str(broken)
    result = subprocess.run(
        [sys.executable, "-m", "service", "--port", str(free_port())], env=env, capture_output=True, timeout=60
    )
    assert result.returncode != 0
    assert b"manifest.json: invalid manifest: features_extra" in result.stderr
