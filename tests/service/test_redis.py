"""Replicas sharing a real redis-server: propagation, versions, outages, model changes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import redis

from service.artifact import load_artifact
from service.decision import sweep
from service.state import LambdaRecord, RedisStore

from .conftest import ADMIN, AppFactory, RedisServer, redis_stopped, wait_for

ONE = {"individuals": [{"id": 1, "features": [0.3, -0.2, 1, 0]}]}


def test_budget_on_one_replica_reaches_another_within_a_second(
    make_client: AppFactory, model_dir: Path, redis_url: str, prefix: str
) -> None:
    first = make_client(model_dir, redis_url=redis_url, redis_prefix=prefix, refresh_seconds=30)
    second = make_client(model_dir, redis_url=redis_url, redis_prefix=prefix, refresh_seconds=30)
    out = first.post("/budget", json={"campaign": "spring", "budget_per_capita": 0.8}, headers=ADMIN).json()
    assert out["version"] == 1
    # refresh_seconds=30: only the pub/sub announcement can deliver it this fast.
    # Until the announcement arrives the campaign is unknown there (404, no version).
    took = wait_for(lambda: second.get("/budget", params={"campaign": "spring"}).json().get("version") == 1, 1.0)
    assert took < 1.0
    served = second.post("/allocate", json={"campaign": "spring", **ONE}).json()
    assert served["lambda"] == out["lambda"] and served["lambda_version"] == 1
    # Versions only increase, whichever replica writes.
    again = second.post("/budget", json={"campaign": "spring", "budget_per_capita": 0.5}, headers=ADMIN).json()
    assert again["version"] == 2
    wait_for(lambda: first.get("/budget", params={"campaign": "spring"}).json().get("version") == 2, timeout=1.0)
    record = redis.Redis.from_url(redis_url).hgetall(f"{prefix}:lambda:spring")
    assert int(record[b"version"]) == 2


def test_a_new_replica_starts_with_the_stored_lambda(
    make_client: AppFactory, model_dir: Path, redis_url: str, prefix: str
) -> None:
    first = make_client(model_dir, redis_url=redis_url, redis_prefix=prefix)
    out = first.post("/budget", json={"budget_per_capita": 0.7}, headers=ADMIN).json()
    late = make_client(model_dir, redis_url=redis_url, redis_prefix=prefix)
    ready = late.get("/readyz").json()
    assert ready["lambda"]["default"] == {"lambda": out["lambda"], "version": 1, "source": "store"}
    assert ready["store"] == "redis" and ready["store_up"] is True


def test_redis_outage_keeps_serving_the_last_lambda_then_recovers(
    make_client: AppFactory, model_dir: Path, redis_server: RedisServer, redis_url: str, prefix: str
) -> None:
    client = make_client(model_dir, redis_url=redis_url, redis_prefix=prefix, refresh_seconds=0.3)
    out = client.post("/budget", json={"campaign": "spring", "budget_per_capita": 0.8}, headers=ADMIN).json()
    with redis_stopped(redis_server):
        wait_for(lambda: client.get("/readyz").json()["store_up"] is False, timeout=3.0)
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["serving_last_known_lambda"] is True
        assert ready.json()["store_error"]
        served = client.post("/allocate", json={"campaign": "spring", **ONE})
        assert served.status_code == 200 and served.json()["lambda"] == out["lambda"]
        assert served.json()["lambda_version"] == 1
        refused = client.post("/budget", json={"campaign": "spring", "budget_per_capita": 0.5}, headers=ADMIN)
        assert refused.status_code == 503 and refused.json()["detail"].startswith("λ* store unavailable")
        assert 'allocator_store_up{backend="redis"} 0.0' in client.get("/metrics").text
    # The restarted Redis is empty: the replica reconnects and restores what it knows, version kept.
    wait_for(lambda: client.get("/readyz").json()["store_up"] is True, timeout=5.0)
    wait_for(lambda: redis.Redis.from_url(redis_url).hget(f"{prefix}:lambda:spring", "version") == b"1", timeout=3.0)
    after = client.post("/budget", json={"campaign": "spring", "budget_per_capita": 0.5}, headers=ADMIN)
    assert after.status_code == 200 and after.json()["version"] == 2


def test_a_replica_started_while_redis_is_down_is_not_ready_until_it_syncs(
    make_client: AppFactory, model_dir: Path, redis_server: RedisServer, redis_url: str, prefix: str
) -> None:
    with redis_stopped(redis_server):
        client = make_client(model_dir, redis_url=redis_url, redis_prefix=prefix, refresh_seconds=0.3)
        assert client.get("/readyz").status_code == 503
        response = client.post("/allocate", json=ONE)
        assert response.status_code == 503 and "λ* unknown" in response.json()["detail"]
        assert client.get("/healthz").status_code == 200
    wait_for(lambda: client.get("/readyz").status_code == 200, timeout=5.0)
    assert client.post("/allocate", json=ONE).status_code == 200


def test_a_new_model_re_solves_the_last_budget_before_serving(
    make_client: AppFactory, model_dir: Path, other_model_dir: Path, redis_url: str, prefix: str
) -> None:
    old = make_client(model_dir, redis_url=redis_url, redis_prefix=prefix)
    old_out = old.post("/budget", json={"campaign": "spring", "budget_per_capita": 0.8}, headers=ADMIN).json()
    new = make_client(other_model_dir, redis_url=redis_url, redis_prefix=prefix)
    artifact = load_artifact(other_model_dir)
    revenue, cost = artifact.predict(artifact.population)
    expected = sweep(revenue, cost).solve_per_capita(0.8, with_assignment=False).lam
    served = new.get("/budget", params={"campaign": "spring"}).json()
    assert served["lambda"] == expected != old_out["lambda"]
    assert served["source"] == f"store, re-solved for model {artifact.model_version}"
    assert served["model_version"] == artifact.model_version and served["version"] == 1
    allocation = new.post("/allocate", json={"campaign": "spring", **ONE}).json()
    assert allocation["lambda"] == expected and allocation["model_version"] == artifact.model_version
    # The old replica keeps its own λ* for the same record: no ping-pong between model versions.
    assert old.get("/budget", params={"campaign": "spring"}).json()["lambda"] == old_out["lambda"]


def test_store_versions_only_increase(redis_url: str, prefix: str) -> None:
    async def scenario() -> tuple[list[int], bool, bool]:
        store = RedisStore(redis_url, prefix=prefix)
        record = LambdaRecord("c", 1.0, 0.5, "0" * 16, "now", 0.4, 1.0)
        versions = [(await store.put(record, after_version=0)).version for _ in range(3)]
        # A replica that remembers version 10 (Redis lost data) pushes the next write past it.
        versions.append((await store.put(record, after_version=10)).version)
        stale = await store.restore(LambdaRecord("c", 2.0, 0.5, "0" * 16, "now", 0.4, 1.0, version=5))
        fresh = await store.restore(LambdaRecord("d", 2.0, 0.5, "0" * 16, "now", 0.4, 1.0, version=5))
        stored = await store.get_all()
        assert stored["c"].version == 11 and stored["c"].lam == 1.0 and stored["d"].version == 5
        await store.close()
        return versions, stale, fresh

    versions, stale, fresh = asyncio.run(scenario())
    assert versions == [1, 2, 3, 11] and not stale and fresh


def test_concurrent_writers_get_distinct_increasing_versions(redis_url: str, prefix: str) -> None:
    async def scenario() -> list[int]:
        stores = [RedisStore(redis_url, prefix=prefix) for _ in range(4)]
        record = LambdaRecord("c", 1.0, 0.5, "0" * 16, "now", 0.4, 1.0)
        results = await asyncio.gather(*(s.put(record, after_version=0) for s in stores for _ in range(5)))
        for store in stores:
            await store.close()
        return sorted(r.version for r in results)

    assert asyncio.run(scenario()) == list(range(1, 21))


def test_allocations_under_a_redis_lambda_match_the_decision_rule(
    make_client: AppFactory, model_dir: Path, redis_url: str, prefix: str
) -> None:
    from service.decision import choose

    client = make_client(model_dir, redis_url=redis_url, redis_prefix=prefix)
    lam = client.post("/budget", json={"budget_per_capita": 0.6}, headers=ADMIN).json()["lambda"]
    artifact = load_artifact(model_dir)
    x = artifact.population[-200:]
    body = client.post("/allocate", json={"individuals": [{"id": i, "features": r.tolist()} for i, r in enumerate(x)]})
    revenue, cost = artifact.predict(x)
    np.testing.assert_array_equal([a["treatment"] for a in body.json()["allocations"]], choose(revenue, cost, lam))
