"""A real `python -m service` process against abusive clients and shutdown (issue 11, defects 2 and 7).

Raw sockets, because the point is what the server does before a body has arrived: a declared 2 GiB body
is refused at once, a chunked 100 MB body costs no memory, a trickle upload cannot hold a stopping replica.
"""

from __future__ import annotations

import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from .processes import ADMIN_TOKEN, MODEL_DIR, ROOT, Replica, clean_env, start_replica

pytestmark = pytest.mark.slow


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[Replica]:
    env = clean_env(
        ALLOCATOR_MODEL_DIR=str(MODEL_DIR),
        ALLOCATOR_ADMIN_TOKEN=ADMIN_TOKEN,
        ALLOCATOR_LOG_LEVEL="WARNING",
        ALLOCATOR_DRAIN_SECONDS="2",
        ALLOCATOR_BODY_TIMEOUT_SECONDS="2",
        ALLOCATOR_SHUTDOWN_TIMEOUT_SECONDS="3",
    )
    started = start_replica(sys.executable, env, ROOT, tmp_path / "replica.log")
    yield started
    started.stop()


def _connect(replica: Replica) -> socket.socket:
    host, port = replica.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return "\r\n".join(lines).encode()


def _response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in header_lines)}
    while len(body) < int(headers.get("content-length", 0)):
        body += sock.recv(65536)
    return int(status_line.split()[1]), headers, body


def _rss_mb(replica: Replica) -> float:
    for line in Path(f"/proc/{replica.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize(("token", "status"), [(None, 401), (ADMIN_TOKEN, 413)])
def test_a_declared_huge_body_is_refused_before_it_is_sent(replica: Replica, token: str | None, status: int) -> None:
    headers = {"Content-Type": "application/json", "Content-Length": str(2 * 2**30)}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    with _connect(replica) as sock:
        sock.settimeout(5)  # the answer comes before any body byte: no waiting for 2 GiB
        sock.sendall(_head("POST", "/budget", headers))
        code, answer_headers, body = _response(sock)
    assert code == status and answer_headers.get("connection") == "close"
    assert orjson.loads(body)["detail"]


def test_chunked_bodies_cost_no_memory(replica: Replica) -> None:
    before = _rss_mb(replica)
    for path in ("/budget", "/budget", "/allocate"):
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Transfer-Encoding": "chunked"}
        with _connect(replica) as sock:
            sock.sendall(_head("POST", path, headers))
            chunk = b" " * 2**20
            try:
                for _ in range(100):  # 100 MB of whitespace, no Content-Length
                    sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:
                pass  # the server answered 413 and closed the connection: exactly what should happen
            sock.settimeout(5)
            code, _, body = _response(sock)
        assert code == 413, body
    assert _rss_mb(replica) - before < 64, "the bodies were held in memory"


def test_a_trickle_upload_cannot_hold_a_stopping_replica(replica: Replica) -> None:
    with _connect(replica) as sock:
        sock.sendall(_head("POST", "/allocate", {"Content-Type": "application/json", "Content-Length": "1000"}))
        started = time.monotonic()
        replica.process.send_signal(signal.SIGTERM)
        answer = None
        try:
            for _ in range(80):  # one byte every 0.25 s: 20 s if nobody stopped it
                sock.sendall(b" ")
                time.sleep(0.25)
        except OSError:
            pass
        sock.settimeout(5)
        try:
            answer = _response(sock)
        except OSError:
            answer = None
    replica.process.wait(timeout=15)
    assert time.monotonic() - started < 12, "drain 2 s + body timeout 2 s + shutdown 3 s, well inside k8s's 30 s"
    if answer is not None:
        assert answer[0] == 408


def test_draining_replica_closes_kept_alive_connections_and_is_not_ready(replica: Replica) -> None:
    with httpx.Client(base_url=replica.url, timeout=5) as client:
        assert client.get("/readyz").status_code == 200
        replica.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)  # the signal is handled between two requests
        served = client.post("/allocate", json={"individuals": [{"id": 1, "features": [0.0] * 10}]})
        ready = client.get("/readyz")
    assert served.status_code == 200 and served.headers["connection"] == "close"
    assert ready.status_code == 503 and ready.json()["draining"] is True
    replica.process.wait(timeout=15)
