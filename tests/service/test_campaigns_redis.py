"""The campaign ledger over one real redis-server: several replicas, concurrent requests, a killed replica,
Redis down. The cap is checked on what clients were actually given (sum of expected_cost in the responses)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from service.campaigns.ledger import InProcessLedger, Ledger, LedgerState, PacePoint
from service.campaigns.redis_ledger import RedisLedger

from .conftest import ADMIN, ADMIN_TOKEN, AppFactory, RedisServer, free_port, redis_stopped, wait_for
from .test_campaigns import allocate, given_cost, individuals, spec

ROOT = Path(__file__).resolve().parents[2]
FAST = {"campaign_tick_seconds": 0.05, "campaign_refresh_seconds": 0.2, "slice_lease_seconds": 1.0}


def ledger_hash(redis_url: str, prefix: str, campaign: str, part: str = "") -> dict[str, float]:
    key = f"{prefix}:campaign:{{{campaign}}}" + (f":{part}" if part else "")
    with redis.Redis.from_url(redis_url) as client:
        raw = client.hgetall(key)
    return {k.decode(): float(v) for k, v in raw.items() if k != b"spec"}


class LedgerWatch:
    """Polls the ledger in a thread and keeps the largest committed and committed + reserved it saw."""

    def __init__(self, redis_url: str, prefix: str, campaign: str) -> None:
        self.args = (redis_url, prefix, campaign)
        self.max_committed = 0.0
        self.max_used = 0.0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            fields = ledger_hash(*self.args)
            if fields:
                self.max_committed = max(self.max_committed, fields["committed"])
                self.max_used = max(self.max_used, fields["committed"] + fields["reserved"])
                self.samples += 1
            time.sleep(0.005)

    def __enter__(self) -> LedgerWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def learned(client: TestClient, campaign: str) -> bool:
    return campaign in client.get("/readyz").json()["campaign_slices"]


def test_committed_never_above_budget_across_replicas(
    make_client: AppFactory, model_dir: Path, redis_url: str, prefix: str
) -> None:
    replicas = [make_client(model_dir, redis_url=redis_url, redis_prefix=prefix, **FAST) for _ in range(3)]
    budget = 60.0
    assert replicas[0].put("/campaigns/cap", json=spec(budget), headers=ADMIN).status_code == 200
    wait_for(lambda: all(learned(r, "cap") for r in replicas))

    def one(n: int) -> float:
        return given_cost(allocate(replicas[n % 3], "cap", 20, seed=n))

    with LedgerWatch(redis_url, prefix, "cap") as watch, ThreadPoolExecutor(9) as pool:
        given = sum(pool.map(one, range(240)))
    assert watch.samples > 10
    assert given <= budget + 1e-6
    assert watch.max_committed <= budget + 1e-9 and watch.max_used <= budget + 1e-9
    assert given >= 0.9 * budget  # demand far above the budget: nearly all of it is given out
    wait_for(lambda: ledger_hash(redis_url, prefix, "cap")["committed"] >= given - 1e-6, timeout=5)
    assert ledger_hash(redis_url, prefix, "cap")["committed"] == pytest.approx(given, abs=1e-4)


@pytest.fixture()
def doomed_replica(
    model_dir: Path, redis_url: str, prefix: str, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A `python -m service` process over the same Redis, replica id 'doomed', holding big slices."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALLOCATOR_")}
    env.update(
        ALLOCATOR_MODEL_DIR=str(model_dir),
        ALLOCATOR_REDIS_URL=redis_url,
        ALLOCATOR_REDIS_PREFIX=prefix,
        ALLOCATOR_ADMIN_TOKEN=ADMIN_TOKEN,
        ALLOCATOR_REPLICA_ID="doomed",
        ALLOCATOR_WORKERS="1",  # the process killed below is the replica itself, not a supervisor
        ALLOCATOR_SLICE_MIN_SHARE="0.2",
        ALLOCATOR_CAMPAIGN_TICK_SECONDS="0.05",
        ALLOCATOR_CAMPAIGN_REFRESH_SECONDS="0.2",
        ALLOCATOR_SLICE_LEASE_SECONDS="1.0",
    )
    with (tmp_path / "doomed.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "--port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=log
        )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
        except httpx.TransportError:
            return process.poll() is not None  # exited: stop waiting, the test fails below

    wait_for(ready, timeout=60, step=0.1)
    assert process.poll() is None, (tmp_path / "doomed.log").read_text()
    yield process, url
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)


def doomed_slice(redis_url: str, prefix: str) -> float:
    """The slice held by the replica named doomed-<pid>-<random> (0 when it holds none)."""
    slices = ledger_hash(redis_url, prefix, "kill", "slices")
    return sum(v for k, v in slices.items() if k.startswith("doomed-") and "#" not in k)


def test_a_killed_replicas_slice_is_recovered(
    make_client: AppFactory,
    model_dir: Path,
    redis_url: str,
    prefix: str,
    doomed_replica: tuple[subprocess.Popen[bytes], str],
) -> None:
    process, url = doomed_replica
    survivor = make_client(model_dir, redis_url=redis_url, redis_prefix=prefix, **FAST)
    budget = 100.0
    survivor.put("/campaigns/kill", json=spec(budget, expected_audience=100), headers=ADMIN)
    wait_for(lambda: doomed_slice(redis_url, prefix) > 10.0)
    given = 0.0
    for seed in range(3):  # the doomed replica gives some treatments out, then dies without returning its slice
        body = httpx.post(f"{url}/allocate", json={"campaign": "kill", "individuals": individuals(20, seed)}).json()
        given += given_cost(body)
    time.sleep(0.2)  # its last report
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    held = doomed_slice(redis_url, prefix)
    assert held > 5.0
    # After the lease (1 s) the survivor's next report reclaims it: no longer reserved, charged as presumed spend.
    wait_for(lambda: doomed_slice(redis_url, prefix) == 0.0, timeout=5)
    state = ledger_hash(redis_url, prefix, "kill")
    assert state["presumed"] == pytest.approx(held)
    assert state["reserved"] <= budget - state["committed"] + 1e-9
    # The rest of the budget is the survivor's to spend, to the last coupon.
    deadline = time.monotonic() + 20.0
    seed = 100
    while time.monotonic() < deadline and ledger_hash(redis_url, prefix, "kill")["committed"] < budget - 1.0:
        given += given_cost(allocate(survivor, "kill", 20, seed))
        seed += 1
        time.sleep(0.01)
    wait_for(lambda: survivor.get("/campaigns/kill").json()["reserved"] < 0.5, timeout=5)
    final = survivor.get("/campaigns/kill").json()
    assert given <= budget + 1e-6 and final["committed"] <= budget + 1e-9
    assert final["committed"] >= budget - 1.0  # everything but crumbs: the dead slice was not stranded


def test_redis_down_means_no_overspend(
    make_client: AppFactory, model_dir: Path, redis_server: RedisServer, redis_url: str, prefix: str
) -> None:
    replicas = [
        make_client(model_dir, redis_url=redis_url, redis_prefix=prefix, slice_min_share=0.05, **FAST) for _ in range(2)
    ]
    budget = 200.0
    replicas[0].put("/campaigns/down", json=spec(budget), headers=ADMIN)
    wait_for(lambda: all(learned(r, "down") for r in replicas))
    given = sum(given_cost(allocate(replicas[s % 2], "down", 10, seed=s)) for s in range(10))
    with redis_stopped(redis_server):
        wait_for(lambda: not replicas[0].get("/readyz").json()["campaign_ledger_up"], timeout=5)
        held = sum(r.get("/readyz").json()["campaign_slices"]["down"] for r in replicas)
        during, statuses = 0.0, set()
        deadline = time.monotonic() + 2.0  # longer than the lease: the slices stop being spendable
        seed = 1000
        while time.monotonic() < deadline:
            body = allocate(replicas[seed % 2], "down", 20, seed)
            during += given_cost(body)
            statuses.add(body["campaign_status"])
            seed += 1
        assert during <= held + 1e-6  # only what the replicas already held
        assert "budget_unavailable" in statuses
        last = allocate(replicas[0], "down", 20, seed + 1)
        assert last["campaign_status"] == "budget_unavailable" and given_cost(last) == 0.0
        assert "allocator_campaign_ledger_up 0.0" in replicas[1].get("/metrics").text
    given += during
    # Redis came back empty: the replicas recreate the ledger from what they last saw (conservatively).
    wait_for(lambda: bool(ledger_hash(redis_url, prefix, "down")), timeout=5)
    wait_for(lambda: replicas[0].get("/readyz").json()["campaign_ledger_up"], timeout=5)
    assert ledger_hash(redis_url, prefix, "down")["committed"] >= given - 1e-6
    for s in range(2000, 2200):
        given += given_cost(allocate(replicas[s % 2], "down", 20, seed=s))
    assert given <= budget + 1e-6


async def _script(ledger: Ledger) -> list[LedgerState | None]:
    """The same operations on a ledger; returns the states after each."""
    out: list[LedgerState | None] = [await ledger.upsert("c", "{}", 100.0)]
    steps = [("a", 1, 0.0, 30.0), ("b", 1, 0.0, 80.0), ("a", 2, 12.5, 30.0), ("a", 3, 12.5, 30.0), ("b", 2, 40.0, 10.0)]
    for replica, seq, total, want in steps:
        grant = await ledger.report("c", replica, seq, total, want, 60_000, 0.5, False)
        out.append(None if grant is None else grant.state)
    out.append(await ledger.realize("c", 5.0, 4.0))
    await ledger.set_cap("c", 70.0)
    grant = await ledger.report("c", "a", 4, 20.0, 50.0, 60_000, 0.5, False)
    out.append(None if grant is None else grant.state)
    stale = await ledger.report("c", "a", 3, 20.0, 1.0, 60_000, 0.5, False)  # overtaken: must not shrink a's slice
    out.append(None if stale is None else stale.state)
    grant = await ledger.report("c", "b", 3, 41.0, 0.0, 60_000, 0.5, True)
    out.append(None if grant is None else grant.state)
    out.append(None if await ledger.report("missing", "a", 1, 0.0, 1.0, 1000, 0.5, False) is None else out[0])
    return out


def test_redis_and_in_process_ledgers_agree(redis_url: str, prefix: str) -> None:
    """The Lua scripts and the in-process ledger take the same steps (idempotent retries, shrink on request)."""
    redis_ledger = RedisLedger(redis_url, prefix, 1.0)

    async def both() -> tuple[list[LedgerState | None], list[LedgerState | None]]:
        try:
            return await _script(redis_ledger), await _script(InProcessLedger())
        finally:
            await redis_ledger.close()

    in_redis, in_process = asyncio.run(both())
    assert in_redis == in_process
    final = in_redis[-2]
    assert final is not None and final.committed + final.reserved <= final.budget
    assert in_redis[4] == in_redis[3]  # the same cumulative report twice counts once
    assert in_redis[8] == in_redis[7]  # an overtaken report changes nothing


def test_pacing_history_is_capped_and_the_same_in_both_ledgers(redis_url: str, prefix: str) -> None:
    """record_pace keeps the last `keep` points, oldest first, in Redis exactly as in process."""
    redis_ledger = RedisLedger(redis_url, prefix, 1.0)
    points = [PacePoint(1e9 + i, float(i), 10.0, None if i % 2 else 0.5 * i, 0.0, 0.1 * i) for i in range(7)]

    async def history(ledger: Ledger) -> list[PacePoint]:
        await ledger.upsert("h", "{}", 10.0)
        for point in points:
            await ledger.record_pace("h", point, 5)
        return await ledger.pace_history("h")

    async def both() -> tuple[list[PacePoint], list[PacePoint]]:
        try:
            return await history(redis_ledger), await history(InProcessLedger())
        finally:
            await redis_ledger.close()

    in_redis, in_process = asyncio.run(both())
    assert in_redis == in_process == points[2:]


def test_an_unreadable_history_entry_is_skipped(redis_url: str, prefix: str) -> None:
    """An entry this code did not write (another version, a hand edit) is skipped, never a 500."""
    ledger = RedisLedger(redis_url, prefix, 1.0)
    point = PacePoint(1e9, 1.0, 10.0, 0.5, 0.0, 0.2)

    async def history() -> list[PacePoint]:
        try:
            await ledger.record_pace("odd", point, 5)
            redis.Redis.from_url(redis_url).rpush(f"{prefix}:campaign:{{odd}}:history", b"not json", b'{"at": 1}')
            return await ledger.pace_history("odd")
        finally:
            await ledger.close()

    assert asyncio.run(history()) == [point]


def test_a_frozen_redis_does_not_break_the_cap(
    make_client: AppFactory, model_dir: Path, redis_server: RedisServer, redis_url: str, prefix: str
) -> None:
    """Redis stops answering for longer than the socket timeout (SIGSTOP), then resumes with the reports that
    timed out still queued: they arrive after newer ones and must not resize the slices the replicas spend."""
    replicas = [
        make_client(model_dir, redis_url=redis_url, redis_prefix=prefix, redis_timeout_seconds=0.2, **FAST)
        for _ in range(2)
    ]
    budget = 80.0
    replicas[0].put("/campaigns/frozen", json=spec(budget, expected_audience=100), headers=ADMIN)
    wait_for(lambda: all(learned(r, "frozen") for r in replicas))
    assert redis_server.process is not None
    given = 0.0
    with LedgerWatch(redis_url, prefix, "frozen") as watch:
        for round_ in range(3):
            for s in range(5):
                given += given_cost(allocate(replicas[s % 2], "frozen", 10, seed=100 * round_ + s))
            redis_server.process.send_signal(signal.SIGSTOP)
            try:
                for s in range(5, 15):
                    given += given_cost(allocate(replicas[s % 2], "frozen", 10, seed=100 * round_ + s))
                    time.sleep(0.05)
            finally:
                redis_server.process.send_signal(signal.SIGCONT)
            time.sleep(0.3)
        for s in range(1000, 1100):
            given += given_cost(allocate(replicas[s % 2], "frozen", 20, seed=s))
    assert given <= budget + 1e-6
    assert watch.max_used <= budget + 1e-9 and watch.max_committed <= budget + 1e-9
