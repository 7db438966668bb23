"""Several worker processes behind one port are replicas: a budget set through any one is served by all.

Real parts only: one redis-server (conftest) and one `python -m service` with `ALLOCATOR_WORKERS=2`. Each
request opens a new connection, so the kernel hands it to whichever worker accepts first; /readyz says which
process answered and which λ* version it serves.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .processes import ADMIN_TOKEN, MODEL_DIR, ROOT, Replica, clean_env, free_port, start_replica

pytestmark = pytest.mark.slow

WORKERS = 2
PROPAGATION_LIMIT_S = 1.0
ROUNDS = 4


def readiness(url: str) -> dict[str, object]:
    """/readyz on a fresh connection (a new accept, so any worker may answer)."""
    with httpx.Client(base_url=url, timeout=5.0) as client:
        body: dict[str, object] = client.get("/readyz").json()
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
    seen: set[int] = set()
    deadline = time.monotonic() + 60
    while len(seen) < WORKERS and time.monotonic() < deadline:
        body = readiness(workers.url)
        if body["ready"]:
            seen.add(int(body["process_id"]))  # type: ignore[call-overload]
    assert len(seen) == WORKERS, f"only processes {seen} answered:\n{workers.logs()}"
    assert f"{WORKERS} worker process(es), 1 onnxruntime thread(s) each" in workers.logs()

    with httpx.Client(base_url=workers.url, timeout=5.0) as client:
        default = float(client.get("/model").json()["default_budget_per_capita"])
    slowest = 0.0
    for round_ in range(ROUNDS):
        with httpx.Client(base_url=workers.url, timeout=5.0) as client:  # a new connection: any worker
            solved = client.post(
                "/budget",
                json={"campaign": "spring", "budget_per_capita": default * (1.05 + 0.05 * round_)},
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            )
        assert solved.status_code == 200, solved.text
        version = solved.json()["version"]
        started = time.monotonic()
        current: set[int] = set()  # processes seen serving the new version
        while current != seen and time.monotonic() - started < PROPAGATION_LIMIT_S:
            body = readiness(workers.url)
            lam = body["lambda"]
            assert isinstance(lam, dict)
            if lam.get("spring", {}).get("version") == version:
                current.add(int(body["process_id"]))  # type: ignore[call-overload]
        elapsed = time.monotonic() - started
        assert current == seen, f"round {round_}: after {elapsed:.2f} s only {current} of {seen} serve v{version}"
        slowest = max(slowest, elapsed)
    print(f"{WORKERS} workers served each new budget within {slowest * 1000:.0f} ms")


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
        pids = {int(readiness(service.url)["process_id"]) for _ in range(10)}  # type: ignore[call-overload]
        assert pids == {service.process.pid}
    finally:
        service.stop()
