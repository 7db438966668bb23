"""Several worker processes behind one port are replicas: a budget set through any one is served by all.

Real parts only: one redis-server (conftest) and one `python -m service` with `ALLOCATOR_WORKERS=2`. A new
connection goes to whichever worker accepts it first and stays with it (keep-alive); /readyz says which
process answered and which λ* version it serves.
"""

from __future__ import annotations

import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .processes import ADMIN_TOKEN, MODEL_DIR, ROOT, Replica, clean_env, free_port, start_replica

pytestmark = pytest.mark.slow

WORKERS = 2
PROPAGATION_LIMIT_S = 1.0
ROUNDS = 4


def readiness(client: httpx.Client) -> dict[str, Any]:
    body: dict[str, Any] = client.get("/readyz").json()
    return body


@pytest.fixture
def workers(redis_url: str, tmp_path: Path) -> Iterator[Replica]:
    env = clean_env(
        ALLOCATOR_MODEL_DIR=str(MODEL_DIR),
        ALLOCATOR_REDIS_URL=redis_url,
        ALLOCATOR_ADMIN_TOKEN=ADMIN_TOKEN,
        ALLOCATOR_WORKERS=str(WORKERS),
        ALLOCATOR_LOG_LEVEL="INFO",
    )
    service = start_replica(sys.executable, env, ROOT, tmp_path / "workers.log")
    yield service
    service.stop()


def test_a_budget_set_through_one_worker_is_served_by_every_worker_within_a_second(workers: Replica) -> None:
    # One kept-alive connection pinned to each worker: a new client is a new connection, accepted by any worker.
    pinned: dict[int, httpx.Client] = {}
    spare: list[httpx.Client] = []
    deadline = time.monotonic() + 60
    try:
        while len(pinned) < WORKERS and time.monotonic() < deadline:
            client = httpx.Client(base_url=workers.url, timeout=5.0)
            body = readiness(client)
            if body["ready"] and body["process_id"] not in pinned:
                pinned[body["process_id"]] = client
            else:
                spare.append(client)
        assert len(pinned) == WORKERS, f"only processes {set(pinned)} answered:\n{workers.logs()}"
        assert f"{WORKERS} worker process(es), 1 onnxruntime thread(s) each" in workers.logs()
        default = float(next(iter(pinned.values())).get("/model").json()["default_budget_per_capita"])
        slowest = 0.0
        for round_, (writer, _) in enumerate(list(pinned.items()) * (ROUNDS // WORKERS)):
            solved = pinned[writer].post(
                "/budget",
                json={"campaign": "spring", "budget_per_capita": default * (1.05 + 0.05 * round_)},
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            )
            assert solved.status_code == 200, solved.text
            version = solved.json()["version"]
            started = time.monotonic()
            waiting = set(pinned)
            while waiting and time.monotonic() - started < PROPAGATION_LIMIT_S:
                for pid in list(waiting):
                    body = readiness(pinned[pid])
                    assert body["process_id"] == pid  # the connection stayed with its worker
                    if body["lambda"].get("spring", {}).get("version") == version:
                        waiting.discard(pid)
            elapsed = time.monotonic() - started
            assert not waiting, f"set through {writer}: {waiting} not serving v{version} after {elapsed:.2f} s"
            slowest = max(slowest, elapsed)
    finally:
        for client in [*pinned.values(), *spare]:
            client.close()
    print(f"{WORKERS} workers each served every new budget (set through each of them) within {slowest * 1000:.0f} ms")


def test_several_workers_without_redis_are_refused_and_the_default_falls_back_to_one(tmp_path: Path) -> None:
    env = clean_env(ALLOCATOR_MODEL_DIR=str(MODEL_DIR), ALLOCATOR_WORKERS="2")
    result = subprocess.run(
        [sys.executable, "-m", "service", "--port", str(free_port())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert b"ALLOCATOR_WORKERS=2 needs ALLOCATOR_REDIS_URL" in result.stderr

    env = clean_env(ALLOCATOR_MODEL_DIR=str(MODEL_DIR), ALLOCATOR_ADMIN_TOKEN=ADMIN_TOKEN)
    service = start_replica(sys.executable, env, ROOT, tmp_path / "one.log")
    try:
        assert "1 worker process(es)" in service.logs()
        pids = set()
        for _ in range(10):
            with httpx.Client(base_url=service.url, timeout=5.0) as client:  # a new connection each time
                pids.add(readiness(client)["process_id"])
        assert pids == {service.process.pid}
    finally:
        service.stop()


def test_sigterm_drains_every_worker_then_stops(redis_url: str, tmp_path: Path) -> None:
    env = clean_env(
        ALLOCATOR_MODEL_DIR=str(MODEL_DIR),
        ALLOCATOR_REDIS_URL=redis_url,
        ALLOCATOR_ADMIN_TOKEN=ADMIN_TOKEN,
        ALLOCATOR_WORKERS=str(WORKERS),
        ALLOCATOR_DRAIN_SECONDS="2",
        ALLOCATOR_SHUTDOWN_TIMEOUT_SECONDS="3",
    )
    service = start_replica(sys.executable, env, ROOT, tmp_path / "drain.log")
    pinned: dict[int, httpx.Client] = {}
    try:
        deadline = time.monotonic() + 60
        while len(pinned) < WORKERS and time.monotonic() < deadline:
            client = httpx.Client(base_url=service.url, timeout=5.0)
            pid = readiness(client)["process_id"]
            if pid in pinned:
                client.close()
            else:
                pinned[pid] = client
        assert len(pinned) == WORKERS
        started = time.monotonic()
        service.process.send_signal(signal.SIGTERM)  # to the supervisor, as Kubernetes does
        time.sleep(0.5)
        for pid, client in pinned.items():  # every worker drains: still serving, not ready, closing
            ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["draining"] is True, (pid, ready.text)
            assert ready.headers["connection"] == "close"
        service.process.wait(timeout=20)
        assert time.monotonic() - started < 12, "drain 2 s + shutdown 3 s, well inside k8s's 30 s"
        assert service.process.returncode == 0, service.logs()
    finally:
        for client in pinned.values():
            client.close()
        service.stop()


def test_workers_stop_when_their_supervisor_is_killed(redis_url: str, tmp_path: Path) -> None:
    env = clean_env(ALLOCATOR_MODEL_DIR=str(MODEL_DIR), ALLOCATOR_REDIS_URL=redis_url, ALLOCATOR_WORKERS=str(WORKERS))
    service = start_replica(sys.executable, env, ROOT, tmp_path / "orphans.log")
    try:
        pids: set[int] = set()
        deadline = time.monotonic() + 60
        while len(pids) < WORKERS and time.monotonic() < deadline:
            with httpx.Client(base_url=service.url, timeout=5.0) as client:
                pids.add(readiness(client)["process_id"])
        assert len(pids) == WORKERS
        service.process.kill()  # SIGKILL: no chance to stop its workers itself
        service.process.wait(timeout=10)
        deadline = time.monotonic() + 20
        while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(Path(f"/proc/{pid}").exists() for pid in pids), "workers outlived their supervisor"
    finally:
        service.stop()


def test_a_broken_artifact_stops_every_worker_instead_of_restarting_them(redis_url: str, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("model.onnx", "population.npz"):
        (broken / name).write_bytes((MODEL_DIR / name).read_bytes())
    manifest = (MODEL_DIR / "manifest.json").read_text()
    (broken / "manifest.json").write_text(manifest.replace('"opset": 17', '"opset": 17, "features_extra": 1'))
    env = clean_env(ALLOCATOR_MODEL_DIR=str(broken), ALLOCATOR_REDIS_URL=redis_url, ALLOCATOR_WORKERS=str(WORKERS))
    command = [sys.executable, "-m", "service", "--port", str(free_port())]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, timeout=120)
    assert result.returncode == 3, result.stderr.decode()[-2000:]  # uvicorn's startup failure, as one process
    assert b"manifest.json: invalid manifest: features_extra" in result.stderr
    assert b"failed to start; stopping" in result.stderr


def test_each_worker_listens_on_its_own_socket_of_one_port() -> None:
    """SO_REUSEPORT sockets, one per worker: the kernel spreads new connections over them (one shared socket
    let the first worker to wake accept all 16 of wrk's connections). Port 0 picks one free port for all."""
    from service.supervisor import listening_sockets

    sockets = listening_sockets("127.0.0.1", 0, 3)
    try:
        ports = {sock.getsockname()[1] for sock in sockets}
        assert len(sockets) == 3 and len(ports) == 1
        assert all(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for sock in sockets)
        # Connections land on more than one of them (16 clients all hashed to one socket: p = 3 * 3**-16).
        port = ports.pop()
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(16)]
        try:
            accepted = [0] * len(sockets)
            while sum(accepted) < len(clients):
                ready, _, _ = select.select(sockets, [], [], 2.0)
                assert ready, f"accepted {accepted} of {len(clients)} connections"
                for sock in ready:
                    sock.accept()[0].close()
                    accepted[sockets.index(sock)] += 1
            assert max(accepted) < len(clients), accepted  # each socket has its own queue
        finally:
            for client in clients:
                client.close()
    finally:
        for sock in sockets:
            sock.close()


def test_a_taken_port_is_a_clear_error_not_a_traceback(redis_url: str) -> None:
    from service.config import Settings
    from service.supervisor import supervise

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert supervise(Settings(redis_url=redis_url), 2, "127.0.0.1", port, "%(message)s") == 1
