"""The processes bench.serve measures: a redis-server, `python -m service` with N workers, and a trivial app.

Each runs on a free loopback port and is stopped on exit; `serving` waits until every worker process has
answered its readiness path (a new connection each time, so any worker may take it).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from fastapi import FastAPI, Request, Response

ADMIN_TOKEN = "bench-admin-token-0123456789"


@dataclass(frozen=True)
class Server:
    url: str
    pid: int  # the parent process (uvicorn's supervisor when there are several workers)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def redis_server() -> Iterator[str | None]:
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        break
                except OSError:
                    time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait(timeout=10)


@contextmanager
def serving(command: list[str], env: dict[str, str], ready_path: str, processes: int) -> Iterator[Server]:
    """Run `command` (it gets `--port`); yield once `processes` distinct processes answer `ready_path` with 200."""
    port = free_port()
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen([*command, "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            seen: set[object] = set()
            deadline = time.monotonic() + 90
            while len(seen) < processes:
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise SystemExit(f"{command} not ready within 90 s: {log.read().decode()[-3000:]}")
                try:
                    response = httpx.get(f"{url}{ready_path}", timeout=2)  # a new connection: any worker
                    if response.status_code == 200:
                        seen.add(response.json().get("process_id", 0))
                except httpx.TransportError:
                    time.sleep(0.2)
            yield Server(url, process.pid)
        finally:
            process.terminate()
            process.wait(timeout=20)


def allocator(model_dir: Path, redis_url: str | None, max_batch: int, workers: int) -> AbstractContextManager[Server]:
    """`python -m service` with `workers` worker processes, one onnxruntime thread each, on loopback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALLOCATOR_")}
    env.update(
        ALLOCATOR_MODEL_DIR=str(model_dir),
        ALLOCATOR_ADMIN_TOKEN=ADMIN_TOKEN,
        ALLOCATOR_LOG_LEVEL="WARNING",
        ALLOCATOR_MAX_BATCH=str(max_batch),
        ALLOCATOR_WORKERS=str(workers),
        ALLOCATOR_THREADS="1",
    )
    if redis_url is not None:
        env["ALLOCATOR_REDIS_URL"] = redis_url
    command = [sys.executable, "-m", "service", "--host", "127.0.0.1"]
    return serving(command, env, "/readyz", workers)


def trivial_app() -> FastAPI:
    """The HTTP stack alone: a FastAPI POST that reads the body and answers a constant (`--factory` target)."""
    app = FastAPI()

    @app.post("/allocate")
    async def post(request: Request) -> Response:
        await request.body()
        return Response(b'{"ok":true}', media_type="application/json")

    @app.get("/ready")
    async def ready() -> dict[str, int]:
        return {"process_id": os.getpid()}

    return app


def trivial_server(pure_python: bool = False) -> AbstractContextManager[Server]:
    """`trivial_app` under the same uvicorn (one process, httptools + uvloop when installed) as the service;
    `pure_python`: under uvicorn's fallbacks instead (h11 and asyncio), what the service ran on before."""
    command = [sys.executable, "-m", "uvicorn", "bench.servers:trivial_app", "--factory", "--host", "127.0.0.1"]
    if pure_python:
        command += ["--http", "h11", "--loop", "asyncio"]
    return serving(command, {**os.environ}, "/ready", 1)
