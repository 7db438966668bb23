"""Two replicas behind one Redis: a budget set on one is served by the other, and losing a replica loses no request.

Real parts only: one redis-server (conftest) and two `python -m service` processes on free ports. The client
does what the Kubernetes Service + a retrying client do for us: round-robin, and on a transport error retry the
same request on the other replica (`/allocate` is a pure read, so a retry is safe).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .processes import ADMIN_TOKEN, MODEL_DIR, ROOT, Replica, clean_env, individuals_from_population, start_replica

pytestmark = pytest.mark.slow

PROPAGATION_LIMIT_S = 1.0
WORKERS = 4
REQUESTS_PER_WORKER = 75
BATCH = 20


@pytest.fixture
def replica_pair(redis_url: str, tmp_path: Path) -> Iterator[tuple[Replica, Replica]]:
    """Two service processes sharing `redis_url` and the admin token, on different ports."""
    env = clean_env(
        ALLOCATOR_MODEL_DIR=str(MODEL_DIR),
        ALLOCATOR_REDIS_URL=redis_url,
        ALLOCATOR_WORKERS="1",  # a replica is one process here: SIGKILL must take down the whole replica
        ALLOCATOR_ADMIN_TOKEN=ADMIN_TOKEN,
        ALLOCATOR_THREADS="1",
        ALLOCATOR_LOG_LEVEL="WARNING",
    )
    first = start_replica(sys.executable, env, ROOT, tmp_path / "replica-a.log")
    try:
        second = start_replica(sys.executable, env, ROOT, tmp_path / "replica-b.log")
    except BaseException:
        first.stop()
        raise
    yield first, second
    first.stop()
    second.stop()


def test_budget_set_on_one_replica_is_served_by_the_other(replica_pair: tuple[Replica, Replica]) -> None:
    first, second = replica_pair
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=first.url, timeout=10.0) as a, httpx.Client(base_url=second.url, timeout=10.0) as b:
        model = b.get("/model").json()
        before = b.get("/budget", params={"campaign": "default"}).json()
        # Above the default: always feasible (only budgets below the cheapest policy are refused).
        budget = 1.1 * float(model["default_budget_per_capita"])
        solved = a.post("/budget", json={"campaign": "default", "budget_per_capita": budget}, headers=auth)
        assert solved.status_code == 200, solved.text
        record = solved.json()
        assert record["version"] > before["version"]

        start = time.monotonic()
        seen = b.get("/budget", params={"campaign": "default"}).json()
        while seen["version"] != record["version"] and time.monotonic() - start < PROPAGATION_LIMIT_S:
            time.sleep(0.02)
            seen = b.get("/budget", params={"campaign": "default"}).json()
        elapsed = time.monotonic() - start
        assert seen["version"] == record["version"], f"replica B still on {seen} after {elapsed:.2f} s"
        assert seen["lambda"] == pytest.approx(record["lambda"])

        body = {"campaign": "default", "individuals": individuals_from_population(model, 3)}
        allocated = b.post("/allocate", json=body)
        assert allocated.status_code == 200, allocated.text
        assert allocated.json()["lambda_version"] == record["version"]
        assert allocated.json()["lambda"] == pytest.approx(record["lambda"])
    print(f"budget propagated from replica A to replica B in {elapsed * 1000:.0f} ms")


def test_killing_one_replica_under_load_loses_no_request(replica_pair: tuple[Replica, Replica]) -> None:
    replicas = list(replica_pair)
    victim, survivor = replicas
    with httpx.Client(base_url=survivor.url, timeout=10.0) as client:
        model = client.get("/model").json()
    body = {"campaign": "default", "individuals": individuals_from_population(model, BATCH)}
    total = WORKERS * REQUESTS_PER_WORKER

    lock = threading.Lock()
    served: Counter[int] = Counter()  # replica index → requests it answered
    served_after_kill: Counter[int] = Counter()
    retries: list[str] = []  # one entry per transport error that was retried
    failures: list[str] = []
    killed = threading.Event()

    def send(worker: int) -> None:
        clients = [httpx.Client(base_url=r.url, timeout=10.0) for r in replicas]
        try:
            for i in range(REQUESTS_PER_WORKER):
                target = (worker + i) % len(clients)
                for attempt in range(2 * len(clients)):
                    index = (target + attempt) % len(clients)
                    client = clients[index]
                    try:
                        response = client.post("/allocate", json=body)
                    except httpx.TransportError as error:
                        with lock:
                            retries.append(f"replica {index}: {type(error).__name__}")
                        continue
                    with lock:
                        if response.status_code == 200 and len(response.json()["allocations"]) == BATCH:
                            served[index] += 1
                            if killed.is_set():
                                served_after_kill[index] += 1
                        else:
                            failures.append(f"{client.base_url}: {response.status_code} {response.text[:200]}")
                    break
                else:
                    with lock:
                        failures.append(f"worker {worker} request {i}: every replica failed")
        finally:
            for c in clients:
                c.close()

    threads = [threading.Thread(target=send, args=(w,)) for w in range(WORKERS)]
    for thread in threads:
        thread.start()
    # Kill mid-load: once a third of the requests are answered, SIGKILL (no graceful shutdown) one replica.
    deadline = time.monotonic() + 60
    while sum(served.values()) < total // 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(victim.process.pid, signal.SIGKILL)
    victim.process.wait(timeout=10)
    killed.set()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "load generator hung"

    print(f"served {dict(served)}, after kill {dict(served_after_kill)}, retried {Counter(retries)}, failed {failures}")
    assert failures == []
    assert sum(served.values()) == total
    assert served[0] > 0, "round-robin reached the victim before the kill"
    assert served_after_kill[1] > 0, "the survivor kept answering"
    assert served_after_kill[0] == 0
    with httpx.Client(base_url=survivor.url, timeout=10.0) as client:
        assert client.get("/healthz").status_code == 200
        assert client.post("/allocate", json=body).status_code == 200
