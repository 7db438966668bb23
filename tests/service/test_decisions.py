"""The decision log and exploration against a real redis-server: propensities, shares, outages, the admin route."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import redis

from service.decisions.exploration import explore
from service.decisions.record import batches_from_entry

from .conftest import ADMIN, AppFactory, RedisServer, redis_stopped, wait_for

K = 3  # treatments of the toy model (tests/service/artifacts.py)


def _individuals(start: int, n: int, seed: int) -> list[dict[str, object]]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2)).round(3).tolist()
    return [{"id": f"user-{start + i}", "features": [a, b, i % 2, 1 - i % 2]} for i, (a, b) in enumerate(x)]


def give_budget(client: object, campaign: str) -> None:
    """A campaign needs a λ* record before /allocate serves it (404 otherwise)."""
    from fastapi.testclient import TestClient

    assert isinstance(client, TestClient)
    response = client.post("/budget", json={"campaign": campaign, "budget_per_capita": 0.8}, headers=ADMIN)
    assert response.status_code == 200, response.text


def _stream(redis_url: str, prefix: str, campaign: str) -> dict[str, dict[str, object]]:
    """Every decision in the campaign's stream by decision id (each entry holds one or more requests' batches)."""
    client = redis.Redis.from_url(redis_url)
    rows: dict[str, dict[str, object]] = {}
    entries = client.xrange(f"{prefix}:decisions:{campaign}")
    for batch in (batch for _, fields in entries for batch in batches_from_entry(fields)):
        for i, decision_id in enumerate(batch.decision_ids):
            rows[decision_id] = {
                "campaign": batch.campaign,
                "individual": str(batch.individuals[i]),
                "treatment": int(batch.treatment[i]),
                "propensity": float(batch.propensity[i]),
                "explore": bool(batch.explore[i]),
                "features": batch.features[i],
            }
    return rows


def test_explore_is_deterministic_uniform_over_allowed_and_propensities_add_up() -> None:
    n = 4000
    ids = [f"u{i}" for i in range(n)]
    policy = np.zeros(n, dtype=np.int64)
    allowed = np.ones((n, 4), dtype=bool)
    allowed[: n // 2, 2] = False  # half the rows may not get treatment 2
    first = explore(policy, allowed, 4, 0.5, "spring", ids, "2026-12-01")
    again = explore(policy, allowed, 4, 0.5, "spring", ids, "2026-12-01")
    assert np.array_equal(first.treatment, again.treatment) and np.array_equal(first.explore, again.explore)
    other_day = explore(policy, allowed, 4, 0.5, "spring", ids, "2026-12-02")
    assert not np.array_equal(first.explore, other_day.explore)
    assert allowed[np.arange(n), first.treatment].all()
    explored = first.treatment[first.explore & (np.arange(n) >= n // 2)]
    assert set(np.bincount(explored, minlength=4).tolist()) != {0} and explored.size > 800
    counts = np.bincount(explored, minlength=4) / explored.size
    assert np.all(np.abs(counts - 0.25) < 0.06)  # uniform over the 4 allowed arms (±4σ at ~1000 draws)
    k_allowed = allowed.sum(axis=1)
    expected = 0.5 / k_allowed + 0.5 * (first.treatment == policy)
    assert np.allclose(first.propensity, expected)
    none = explore(policy, allowed, 4, 0.0, "spring", ids, "2026-12-01")
    assert not none.explore.any() and np.all(none.propensity == 1.0) and np.array_equal(none.treatment, policy)


def test_ten_thousand_decisions_are_logged_with_their_propensities(
    make_client: AppFactory, model_dir: Path, redis_url: str, prefix: str
) -> None:
    epsilon, n, batch = 0.1, 10_000, 1_000
    client = make_client(model_dir, redis_url=redis_url, redis_prefix=prefix)
    give_budget(client, "spring")
    put = client.put("/campaigns/spring/exploration", json={"epsilon": epsilon}, headers=ADMIN)
    assert put.status_code == 200 and put.json()["epsilon"] == epsilon
    given: dict[str, tuple[str, int]] = {}
    for start in range(0, n, batch):
        body = {"campaign": "spring", "individuals": _individuals(start, batch, seed=start)}
        out = client.post("/allocate", json=body).json()
        for allocation in out["allocations"]:
            given[allocation["decision_id"]] = (str(allocation["id"]), allocation["treatment"])
    assert len(given) == n  # decision ids are unique
    wait_for(lambda: client.get("/readyz").json()["decision_log"]["shipped"] == n, timeout=20.0)
    logged = _stream(redis_url, prefix, "spring")
    assert set(logged) == set(given)
    # One entry per shipping round and campaign: requests decided between two rounds share one.
    assert 1 <= redis.Redis.from_url(redis_url).xlen(f"{prefix}:decisions:spring") <= n // batch
    explore_flags = np.array([fields["explore"] for fields in logged.values()])
    share = explore_flags.mean()
    half_width = 3.29 * math.sqrt(epsilon * (1 - epsilon) / n)  # 99.9% binomial interval
    assert abs(share - epsilon) < half_width, (share, half_width)
    for decision_id, fields in logged.items():
        individual, treatment = given[decision_id]
        assert fields["individual"] == individual and fields["treatment"] == treatment
        assert fields["campaign"] == "spring" and np.shape(fields["features"]) == (4,)  # D encoded features
        propensity = fields["propensity"]
        if not fields["explore"]:
            assert propensity == 1 - epsilon + epsilon / K
        else:
            assert propensity in (epsilon / K, 1 - epsilon + epsilon / K)
    # A retried request the same day gets the same arms.
    retry = {"campaign": "spring", "individuals": _individuals(0, batch, seed=0)}
    again = client.post("/allocate", json=retry).json()["allocations"]
    first = {individual: t for individual, t in given.values()}
    assert all(first[a["id"]] == a["treatment"] for a in again)


def test_redis_down_allocate_unaffected_and_drops_counted(
    make_client: AppFactory, model_dir: Path, redis_server: RedisServer, redis_url: str, prefix: str
) -> None:
    client = make_client(model_dir, redis_url=redis_url, redis_prefix=prefix, decision_log_capacity=150)
    body = {"individuals": _individuals(0, 50, seed=1)}
    assert client.post("/allocate", json=body).status_code == 200
    wait_for(lambda: client.get("/readyz").json()["decision_log"]["shipped"] == 50)
    with redis_stopped(redis_server):
        for _ in range(10):
            response = client.post("/allocate", json=body)
            assert response.status_code == 200 and len(response.json()["allocations"]) == 50
        log = client.get("/readyz").json()["decision_log"]
        assert log["dropped"] >= 350 and log["buffered"] <= 150  # the buffer stays within its bound
        ready = client.get("/readyz")
        assert ready.status_code == 200
        metrics = client.get("/metrics").text
        dropped = next(line for line in metrics.splitlines() if line.startswith("allocator_decisions_dropped_total"))
        assert float(dropped.split()[-1]) == log["dropped"]
    # Redis back: what was buffered is shipped, the rest stays counted as dropped.
    wait_for(lambda: client.get("/readyz").json()["decision_log"]["buffered"] == 0, timeout=10.0)
    final = client.get("/readyz").json()["decision_log"]
    assert final["shipped"] + final["dropped"] == 550 and final["redis_up"] is True


def test_exploration_route_needs_admin_validates_and_reaches_other_replicas(
    make_client: AppFactory, model_dir: Path, redis_url: str, prefix: str
) -> None:
    first = make_client(model_dir, redis_url=redis_url, redis_prefix=prefix, refresh_seconds=0.2)
    second = make_client(model_dir, redis_url=redis_url, redis_prefix=prefix, refresh_seconds=0.2)
    assert first.put("/campaigns/spring/exploration", json={"epsilon": 0.2}).status_code == 401
    # `true` and "1" are not shares: lax parsing read them as 1.0, every decision explored (schemathesis ST201).
    for bad in (
        {"epsilon": 1.5},
        {"epsilon": -0.1},
        {},
        {"epsilon": 0.1, "other": 1},
        {"epsilon": True},
        {"epsilon": "1"},
    ):
        response = first.put("/campaigns/spring/exploration", json=bad, headers=ADMIN)
        assert response.status_code == 422, (bad, response.text)
    assert first.put("/campaigns/bad%20name/exploration", json={"epsilon": 0.1}, headers=ADMIN).status_code == 422
    assert first.put("/campaigns/spring/exploration", json={"epsilon": 0.2}, headers=ADMIN).status_code == 200
    assert first.get("/campaigns/spring/exploration").json()["epsilon"] == 0.2
    wait_for(lambda: second.get("/campaigns/spring/exploration").json()["epsilon"] == 0.2, timeout=3.0)
    assert second.get("/campaigns/other/exploration").json()["epsilon"] == 0.0


def test_without_redis_decisions_get_ids_and_the_log_says_it_is_off(client: object) -> None:
    from fastapi.testclient import TestClient

    assert isinstance(client, TestClient)
    out = client.post("/allocate", json={"individuals": _individuals(0, 3, seed=0)}).json()
    assert len({a["decision_id"] for a in out["allocations"]}) == 3
    log = client.get("/readyz").json()["decision_log"]
    assert log["enabled"] is False and log["dropped"] == 0
