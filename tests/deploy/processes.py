"""Helpers for the deployment (and browser) tests: free ports, redis-server, clean environments, replicas."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = ROOT / "models" / "default"
ADMIN_TOKEN = "deploy-test-admin-token"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_redis(workdir: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A real redis-server on a free port, without persistence: its URL and process, stopped on exit.

    Skips the test when redis-server is not installed (`make redis-server` installs it).
    """
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (make redis-server installs it)")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                pytest.fail(f"redis-server did not listen on port {port}")
            time.sleep(0.05)
    try:
        yield f"redis://127.0.0.1:{port}/0", process
    finally:
        process.terminate()
        process.wait(timeout=10)


def clean_env(**settings: str) -> dict[str, str]:
    """The parent environment without any ALLOCATOR_* or PYTHONPATH leaking in, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALLOCATOR_") and k != "PYTHONPATH"}
    env.update(settings)
    return env


@dataclass
class Replica:
    """One `python -m service` process and its base URL."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_replica(
    python: str | Path, env: Mapping[str, str], cwd: Path, log: Path, *, ready_timeout: float = 90.0
) -> Replica:
    """Start the service on a free port and wait until /readyz answers 200 (model loaded, λ* known)."""
    port = free_port()
    handle = log.open("wb")
    process = subprocess.Popen(
        [str(python), "-m", "service", "--host", "127.0.0.1", "--port", str(port)],
        cwd=cwd,
        env=dict(env),
        stdout=handle,
        stderr=subprocess.STDOUT,
    )
    handle.close()
    replica = Replica(process, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"service exited with {process.returncode} before it was ready:\n{replica.logs()}")
        try:
            if httpx.get(f"{replica.url}/readyz", timeout=1.0).status_code == 200:
                return replica
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    replica.stop()
    pytest.fail(f"service not ready within {ready_timeout} s:\n{replica.logs()}")


def individuals_from_population(model: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """`count` request individuals keyed by GET /model's feature names, valued from population.npz rows."""
    names = [str(n) for n in model["features"]]
    with np.load(MODEL_DIR / "population.npz") as population:
        rows = population["features"][:count]  # (count, D) in manifest feature order
    return [
        {"id": f"user-{i}", "features": {name: float(v) for name, v in zip(names, row, strict=True)}}
        for i, row in enumerate(rows)
    ]
