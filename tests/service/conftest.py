"""Fixtures for the service tests: a real redis-server, real ONNX artifacts, apps with their lifespan running."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from service.main import create_app

from .artifacts import write_artifact

ADMIN_TOKEN = "test-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
REDIS_ARGS = ("--save", "", "--appendonly", "no")  # no persistence: a restart loses every record


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A redis-server process on a fixed free port that tests can stop and start again (data is not kept)."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [*(self.binary, "--port", str(self.port), "--bind", "127.0.0.1"), *REDIS_ARGS, "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not self.ping():
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"redis-server did not answer PING on port {self.port}")
            time.sleep(0.05)

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server (no persistence) on a free port for the whole session."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (make redis-server installs it)")
    server = RedisServer(binary, tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture()
def redis_url(redis_server: RedisServer) -> str:
    """The running server's URL (restarted if an earlier test left it stopped)."""
    if not redis_server.running:
        redis_server.start()
    return redis_server.url


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ONNX artifact: K = 3 treatments, D = 4 features (one categorical column), 2,000 reference rows."""
    out = tmp_path_factory.mktemp("model")
    write_artifact(out, seed=0)
    return out


@pytest.fixture(scope="session")
def other_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second model with the same schema but different weights (a new model version)."""
    out = tmp_path_factory.mktemp("model-b")
    write_artifact(out, seed=1)
    return out


AppFactory = Callable[..., TestClient]


@pytest.fixture()
def make_client() -> Iterator[Callable[..., TestClient]]:
    """`make_client(model_dir, **settings)` → a started TestClient (lifespan run); all closed after the test."""
    clients: list[TestClient] = []

    def make(model_dir: Path, **settings: object) -> TestClient:
        fields: dict[str, object] = {"model_dir": model_dir, "admin_token": ADMIN_TOKEN, "refresh_seconds": 0.5}
        fields.update(settings)
        client = TestClient(create_app(Settings.model_validate(fields)))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in reversed(clients):
        client.__exit__(None, None, None)


@pytest.fixture()
def client(make_client: AppFactory, model_dir: Path) -> TestClient:
    """An app on the toy model with the in-process store."""
    return make_client(model_dir)


@pytest.fixture()
def prefix() -> str:
    """A Redis key prefix of its own, so tests sharing the server never see each other's records."""
    return f"test-{uuid.uuid4().hex[:12]}"


@contextmanager
def redis_stopped(server: RedisServer) -> Iterator[None]:
    """Stop the server for the block, start it again (empty) after."""
    server.stop()
    try:
        yield
    finally:
        server.start()


def wait_for(condition: Callable[[], bool], timeout: float = 5.0, step: float = 0.02) -> float:
    """Poll until `condition()` holds; returns the seconds it took (fails the test on timeout)."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(step)
    return time.monotonic() - started
