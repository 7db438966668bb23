"""Processes and raw clients for `bench.faults`: a redis-server to kill and freeze, replicas to kill, raw sockets."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ADMIN_TOKEN = "faults-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Redis:
    """A redis-server with AOF on (as k8s/redis.yaml), on a fixed port so it can be killed and restarted."""

    binary: str
    workdir: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                *(self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--appendonly", "yes"),
                *("--appendfsync", "always", "--save", "", "--dir", str(self.workdir)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def signal(self, sig: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, sig)

    def kill_and_restart(self, down_seconds: float, keep_data: bool) -> None:
        self.signal(signal.SIGKILL)
        assert self.process is not None
        self.process.wait(timeout=10)
        if not keep_data:
            shutil.rmtree(self.workdir, ignore_errors=True)
        time.sleep(down_seconds)
        self.start()

    def record(self, campaign: str) -> tuple[int, float] | None:
        """(version, budget per capita) stored for `campaign`, read with a plain socket client."""
        import orjson
        import redis

        client = redis.Redis.from_url(self.url)
        version, data = client.hmget(f"allocator:lambda:{campaign}", ["version", "record"])
        client.close()
        if data is None or version is None:
            return None
        return int(version), float(orjson.loads(data)["budget_per_capita"])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@dataclass
class Replica:
    """One `python -m service` process."""

    env: dict[str, str]
    log: Path
    port: int
    process: subprocess.Popen[bytes] = field(init=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        handle = self.log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=ROOT,
            env=self.env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
        handle.close()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"replica exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"replica not ready: {self.log.read_text()[-2000:]}")

    def kill_and_restart(self) -> Replica:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self.start()
        return self

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def individuals(self, count: int) -> list[dict[str, Any]]:
        """`count` individuals with named features, from the shipped model's reference population."""
        names = httpx.get(f"{self.url}/model", timeout=5.0).json()["features"]
        with np.load(ROOT / "models" / "default" / "population.npz") as population:
            rows = population["features"]
        rows = rows[np.arange(count) % len(rows)]
        return [
            {"id": f"u{i}", "features": dict(zip(names, map(float, row), strict=True))} for i, row in enumerate(rows)
        ]


def start_replica(settings: dict[str, str], log: Path) -> Replica:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALLOCATOR_")} | settings
    replica = Replica(env, log, free_port())
    replica.start()
    return replica


def rss_peak_mb(replica: Replica) -> float:
    """The process's peak resident memory so far (VmHWM), in MiB."""
    for line in Path(f"/proc/{replica.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc status")


def _request_head(path: str, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: bench", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return "\r\n".join(lines).encode()


def _status(sock: socket.socket) -> int | str:
    sock.settimeout(10)
    try:
        data = sock.recv(4096)
    except OSError as error:
        return type(error).__name__
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else "no answer"


def declared_post(replica: Replica, path: str, length: int, token: bool) -> int | str:
    """A POST declaring `length` bytes and sending none: the status, which must come without waiting."""
    headers = {"Content-Type": "application/json", "Content-Length": str(length), **(AUTH if token else {})}
    with socket.create_connection(("127.0.0.1", replica.port), timeout=10) as sock:
        sock.sendall(_request_head(path, headers))
        return _status(sock)


def chunked_post(replica: Replica, path: str, megabytes: int, token: bool) -> int | str:
    """A chunked (no Content-Length) body of `megabytes` MiB of whitespace: the status it gets."""
    headers = {"Content-Type": "application/json", "Transfer-Encoding": "chunked", **(AUTH if token else {})}
    chunk = b" " * 2**20
    with socket.create_connection(("127.0.0.1", replica.port), timeout=10) as sock:
        sock.sendall(_request_head(path, headers))
        try:
            for _ in range(megabytes):
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the replica answered and closed the connection mid-body
        return _status(sock)
