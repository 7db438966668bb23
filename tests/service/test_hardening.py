"""Regression tests of issue 11: no wrong answer under bad input, Redis stalls or concurrent budgets."""

from __future__ import annotations

import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from fastapi.testclient import TestClient

from service.artifact import load_artifact
from service.decision import sweep

from .conftest import ADMIN, ADMIN_TOKEN, AppFactory, RedisServer, wait_for

ONE = {"individuals": [{"id": 1, "features": [0.3, -0.2, 1, 0]}]}


def _max_spend_per_capita(model_dir: Path) -> float:
    artifact = load_artifact(model_dir)
    revenue, cost = artifact.predict(artifact.population)
    budgets = sweep(revenue, cost)
    return budgets.max_spend / budgets.n_rows


# --- 1. budgets that overflow or exceed what the population can spend ------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"budget_per_capita": 1e304}, "budget_per_capita"),
        ({"total_budget": 1e308, "population_size": 1}, "total_budget"),
        ({"budget_per_capita": 1e6}, "budget_per_capita"),
    ],
)
def test_a_budget_above_what_the_population_can_spend_is_422(
    client: TestClient, body: dict[str, Any], field: str
) -> None:
    response = client.post("/budget", json=body, headers=ADMIN)
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith(f"{field}: budget")
    assert "exceeds the most this population can spend" in response.json()["detail"]
    assert client.get("/budget").json()["version"] == 0  # nothing stored


def test_the_most_the_population_can_spend_is_a_valid_budget(client: TestClient, model_dir: Path) -> None:
    ceiling = _max_spend_per_capita(model_dir)
    response = client.post("/budget", json={"budget_per_capita": ceiling}, headers=ADMIN)
    assert response.status_code == 200 and response.json()["lambda"] == 0.0


# --- 2. bodies: admin before body, limits counted as bytes arrive ---------------------------------------


def _chunks(total: int, size: int = 65536) -> Any:
    sent = 0
    while sent < total:
        yield b" " * min(size, total - sent)
        sent += size


def test_admin_routes_refuse_before_reading_the_body(make_client: AppFactory, model_dir: Path) -> None:
    client = make_client(model_dir)
    for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}):
        response = client.post("/budget", content=_chunks(50 * 2**20), headers=headers)
        assert response.status_code in (401, 403), response.text
        assert response.json()["detail"].startswith("Authorization: ")


def test_bodies_over_the_limit_are_413_even_without_a_content_length(make_client: AppFactory, model_dir: Path) -> None:
    client = make_client(model_dir, max_small_body_bytes=4096, max_body_bytes=100_000)
    budget = client.post("/budget", content=_chunks(50_000, 1000), headers=ADMIN)
    assert budget.status_code == 413 and budget.json() == {"detail": "body: larger than 4096 bytes"}
    allocate = client.post("/allocate", content=_chunks(300_000, 1000))
    assert allocate.status_code == 413 and allocate.json() == {"detail": "body: larger than 100000 bytes"}
    assert client.post("/allocate", json=ONE).status_code == 200  # the held bytes were given back


def test_bodies_held_at_once_are_capped(make_client: AppFactory, model_dir: Path) -> None:
    client = make_client(model_dir, max_held_body_bytes=10_000)
    response = client.post("/allocate", content=_chunks(50_000, 1000))
    assert response.status_code == 503 and "holds too many request bodies" in response.json()["detail"]
    assert client.post("/allocate", json=ONE).status_code == 200


# --- 3 and 7. a write whose outcome is unknown never takes effect later; idempotent retries -------------


def test_a_budget_refused_while_redis_is_frozen_never_takes_effect(
    make_client: AppFactory, model_dir: Path, redis_server: RedisServer, redis_url: str, prefix: str
) -> None:
    client = make_client(model_dir, redis_url=redis_url, redis_prefix=prefix, redis_timeout_seconds=0.3)
    first = client.post("/budget", json={"campaign": "c", "budget_per_capita": 0.8}, headers=ADMIN).json()
    assert redis_server.process is not None
    os.kill(redis_server.process.pid, signal.SIGSTOP)
    try:
        frozen = client.post(
            "/budget", json={"campaign": "c", "budget_per_capita": 0.4}, headers={**ADMIN, "Idempotency-Key": "k-1"}
        )
        time.sleep(0.5)  # the write's deadline passes while Redis is still frozen
    finally:
        os.kill(redis_server.process.pid, signal.SIGCONT)
    assert frozen.status_code in (503, 504), frozen.text
    time.sleep(0.5)  # Redis runs whatever it had queued
    stored = redis.Redis.from_url(redis_url).hgetall(f"{prefix}:lambda:c")
    assert int(stored[b"version"]) == 1 and orjson.loads(stored[b"record"])["budget_per_capita"] == 0.8
    wait_for(lambda: client.get("/readyz").json()["store_up"] is True, timeout=5.0)
    assert client.get("/budget", params={"campaign": "c"}).json()["lambda"] == first["lambda"]
    # Retrying with the same key settles it exactly once: the key was burnt (503, never applies) or the first
    # attempt never arrived and the retry applies it now; a second retry returns that same answer.
    key = {**ADMIN, "Idempotency-Key": "k-1"}
    retries = [client.post("/budget", json={"campaign": "c", "budget_per_capita": 0.4}, headers=key) for _ in range(2)]
    if retries[0].status_code == 503:
        assert "use a new one" in retries[0].json()["detail"] and retries[1].status_code == 503
        assert int(redis.Redis.from_url(redis_url).hget(f"{prefix}:lambda:c", "version")) == 1
    else:
        assert [r.status_code for r in retries] == [200, 200]
        assert retries[0].json()["version"] == retries[1].json()["version"] == 2


@pytest.mark.parametrize("backend", ["redis", "in-process"])
def test_a_retried_budget_returns_its_first_write(
    make_client: AppFactory, model_dir: Path, redis_url: str, prefix: str, backend: str
) -> None:
    settings: dict[str, Any] = {"redis_url": redis_url, "redis_prefix": prefix} if backend == "redis" else {}
    client = make_client(model_dir, **settings)
    headers = {**ADMIN, "Idempotency-Key": "budget-2026-12-01"}
    first = client.post("/budget", json={"campaign": "c", "budget_per_capita": 0.8}, headers=headers)
    retry = client.post("/budget", json={"campaign": "c", "budget_per_capita": 0.8}, headers=headers)
    assert first.status_code == retry.status_code == 200
    assert retry.json()["version"] == first.json()["version"] == 1 and retry.json()["request_id"] == "budget-2026-12-01"
    other = client.post("/budget", json={"campaign": "c", "budget_per_capita": 0.5}, headers=headers)
    assert other.status_code == 409 and other.json()["detail"].startswith("idempotency-key: request id")
    assert client.get("/budget", params={"campaign": "c"}).json()["version"] == 1


# --- 4. each /budget answer describes its own write ---------------------------------------------------


def test_concurrent_budgets_each_answer_with_their_own_record(
    make_client: AppFactory, model_dir: Path, redis_url: str, prefix: str
) -> None:
    replicas = [make_client(model_dir, redis_url=redis_url, redis_prefix=prefix) for _ in range(2)]
    budgets = [round(0.2 + 0.01 * i, 4) for i in range(40)]
    artifact = load_artifact(model_dir)
    solved = sweep(*artifact.predict(artifact.population))

    def post(i: int) -> dict[str, Any]:
        body = {"campaign": "race", "budget_per_capita": budgets[i]}
        response = replicas[i % 2].post("/budget", json=body, headers=ADMIN)
        assert response.status_code == 200, response.text
        return dict(response.json())

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, range(len(budgets))))
    assert sorted(a["version"] for a in answers) == list(range(1, len(budgets) + 1))
    for budget, answer in zip(budgets, answers, strict=True):
        assert answer["budget_per_capita"] == budget
        assert answer["lambda"] == solved.solve_per_capita(budget, with_assignment=False).lam


# --- 5. stored records are validated, bad ones skipped and counted, the sync task survives -------------


def _store_raw(redis_url: str, prefix: str, campaign: str, version: int, record: dict[str, Any]) -> None:
    client = redis.Redis.from_url(redis_url)
    client.hset(f"{prefix}:lambda:{campaign}", mapping={"version": version, "record": orjson.dumps(record)})
    client.sadd(f"{prefix}:campaigns", campaign)
    client.publish(f"{prefix}:lambda", campaign)


def test_bad_stored_records_are_skipped_and_counted_never_fatal(
    make_client: AppFactory, model_dir: Path, redis_url: str, prefix: str
) -> None:
    good = {
        "campaign": "newer",
        "lam": 0.5,
        "budget_per_capita": 0.7,
        "model_version": load_artifact(model_dir).model_version,
        "solved_at": "2026-12-01T00:00:00.000+00:00",
        "spend_per_capita": 0.6,
        "revenue_per_capita": 1.0,
    }
    # Written by a newer release (an extra field) and plainly broken records, before the replica starts.
    _store_raw(redis_url, prefix, "newer", 3, {**good, "pacing": {"mode": "even"}})
    _store_raw(redis_url, prefix, "broken", 1, {**good, "campaign": "broken", "lam": "high"})
    _store_raw(redis_url, prefix, "negative", 1, {**good, "campaign": "negative", "lam": -1.0})
    client = make_client(model_dir, redis_url=redis_url, redis_prefix=prefix, refresh_seconds=0.3)
    served = client.get("/budget", params={"campaign": "newer"}).json()
    assert served["lambda"] == 0.5 and served["version"] == 3
    assert client.get("/budget", params={"campaign": "broken"}).status_code == 404
    ready = client.get("/readyz").json()
    assert ready["ready"] is True and ready["rejected_records"] >= 2
    assert ready["sync_task"] == {"running": True, "restarts": 0, "last_error": None}
    # While running: a broken record is announced, then a good one; the good one still arrives.
    _store_raw(redis_url, prefix, "broken", 2, {"campaign": "broken"})
    _store_raw(redis_url, prefix, "later", 1, {**good, "campaign": "later", "lam": 0.25})
    wait_for(lambda: client.get("/budget", params={"campaign": "later"}).status_code == 200, timeout=3.0)
    assert "allocator_store_rejected_records" in client.get("/metrics").text
    assert client.get("/readyz").json()["sync_task"]["running"] is True


# --- 6. a campaign with no budget is not served the default λ -----------------------------------------


def test_allocate_on_a_campaign_with_no_budget_is_404(make_client: AppFactory, model_dir: Path) -> None:
    strict = make_client(model_dir)
    response = strict.post("/allocate", json={"campaign": "sprnig", **ONE})
    assert response.status_code == 404
    assert response.json()["detail"].startswith("campaign: no budget set for campaign 'sprnig'")
    assert strict.post("/allocate", json=ONE).status_code == 200  # "default" always has the manifest's
    lenient = make_client(model_dir, serve_unknown_campaigns=True)
    served = lenient.post("/allocate", json={"campaign": "sprnig", **ONE}).json()
    assert served["lambda_version"] == 0 and served["lambda"] == lenient.get("/budget").json()["lambda"]


# --- 8. the contract: strict /budget types, one error schema, what the schema allows is accepted ------


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (b'{"budget_per_capita": true}', "budget_per_capita: Input should be a valid number"),
        (b'{"budget_per_capita": "1.5"}', "budget_per_capita: Input should be a valid number"),
        (b'{"total_budget": 10.0, "population_size": 2.5}', "population_size: Input should be a valid integer"),
        (b'{"total_budget": 10.0, "population_size": true}', "population_size: Input should be a valid integer"),
        (b'{"budget_per_capita": 0.5', "body: invalid JSON"),
        (b"", "body: invalid JSON"),
        (b'{"budget_per_capita": 0.5, "extra": 1}', "extra: Extra inputs are not permitted"),
    ],
)
def test_budget_bodies_are_strict_and_every_error_is_422_with_a_field(
    client: TestClient, raw: bytes, detail: str
) -> None:
    response = client.post("/budget", content=raw, headers={**ADMIN, "content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith(detail)


def test_what_the_published_schema_allows_is_accepted(client: TestClient) -> None:
    body = {"individuals": [{"id": "a", "features": [0.3, -0.2, 1, 0], "allowed_treatments": [2.0, 0]}]}
    response = client.post("/allocate", json=body)
    assert response.status_code == 200 and response.json()["allocations"][0]["treatment"] in (0, 2)
    schema = client.get("/openapi.json").json()
    features = schema["paths"]["/allocate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    features = features["oneOf"][0]["properties"]["individuals"]["items"]["properties"]["features"]["anyOf"]
    array = next(form for form in features if form["type"] == "array")
    assert array["minItems"] == array["maxItems"] == 4  # the toy model's D: `features: []` is not allowed


def test_features_that_overflow_the_model_are_422_not_500(make_client: AppFactory) -> None:
    # Found by schemathesis on the shipped model: a finite float32 feature makes its predictions overflow.
    client = make_client(Path(__file__).resolve().parents[2] / "models" / "default")
    names = client.get("/model").json()["features"]
    typical = dict.fromkeys(names, 0.0)
    huge = {"individuals": [{"id": 1, "features": typical}, {"id": 2, "features": {**typical, "is_member": 3.4e38}}]}
    response = client.post("/allocate", json=huge)
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith("individuals[1].features: values so far outside")


def test_every_error_response_is_declared_with_the_one_error_schema(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for code, response in operation["responses"].items():
                if code[0] in "45":
                    content = response["content"]["application/json"]["schema"]
                    assert content == {"$ref": "#/components/schemas/ErrorOut"}, (path, method, code)


def test_admin_token_comparison_still_accepts_the_right_token(client: TestClient) -> None:
    response = client.post(
        "/budget", json={"budget_per_capita": 0.5}, headers={"Authorization": f"bearer {ADMIN_TOKEN}"}
    )
    assert response.status_code == 200


def test_large_bodies_are_scored_off_the_event_loop(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 10k-row batch must not stall /healthz and /readyz: its CPU work runs in the batch thread."""
    import threading

    from service.routes import allocate as route

    threads: list[str] = []
    original = route.allocate_body

    def recording(body: bytes, runtime: Any) -> Any:
        threads.append(threading.current_thread().name)
        return original(body, runtime)

    monkeypatch.setattr(route, "allocate_body", recording)
    small = client.post("/allocate", json=ONE)
    big = client.post(
        "/allocate", json={"individuals": [{"id": i, "features": [0.3, -0.2, 1, 0]} for i in range(5000)]}
    )
    assert small.status_code == big.status_code == 200
    assert not threads[0].startswith("allocate") and threads[1].startswith("allocate")


@pytest.mark.parametrize("path", ["/budget", "/campaigns/spring/realized", "/campaigns/spring"])
def test_a_body_that_is_not_utf8_is_422_naming_the_body(client: TestClient, path: str) -> None:
    """FastAPI answers 400 'There was an error parsing the body' (undocumented) for bytes that are not text."""
    method = client.put if path == "/campaigns/spring" else client.post
    response = method(path, content=b"VR\xff\xfe", headers={**ADMIN, "content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith("body: invalid JSON")


@pytest.mark.parametrize(
    "body",
    [
        ONE,
        {"ids": ["a", "b"], "matrix": [[0.3, -0.2, 1, 0], [1.5, 2.0, 0, 1]], "response": "columns"},
        {"individuals": [{"id": 1, "features": [0.3, "x", 1, 0]}]},
        {"individuals": []},
        {"ids": ["a"], "columns": [[1]] * 3},
        {"campaign": "no-such-campaign", "individuals": ONE["individuals"]},
    ],
)
def test_the_hot_path_answers_as_the_fastapi_route_it_bypasses(
    make_client: Any, model_dir: Path, body: dict[str, Any]
) -> None:
    """POST /allocate skips FastAPI's stack (`service.main.AllocatorApp`); its FastAPI route, which OpenAPI
    documents, must give the same status and body (decision ids aside: every answer logs its own)."""
    hot = make_client(model_dir)
    routed = make_client(model_dir)
    routed.app.hot_path = False
    answers = [client.post("/allocate", json=body) for client in (hot, routed)]
    assert answers[0].status_code == answers[1].status_code, [a.text for a in answers]
    assert answers[0].headers["content-type"] == answers[1].headers["content-type"] == "application/json"
    bodies = [re.sub(r'"[0-9a-f]{16}-[0-9a-f]+"', '"<decision>"', a.text) for a in answers]
    assert bodies[0] == bodies[1]


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("OPTIONS", "/budget", "GET, HEAD, POST"),
        ("DELETE", "/campaigns/spring", "GET, HEAD, PUT"),
        ("GET", "/allocate", "POST"),
        ("POST", "/healthz", "GET, HEAD"),
    ],
)
def test_a_405_allows_every_method_of_the_path(client: TestClient, method: str, path: str, allow: str) -> None:
    """Starlette's 405 listed the methods of the first route it matched only (`OPTIONS /budget`: POST; schemathesis
    ST205), so a client that trusted `Allow` would never find GET /budget."""
    response = client.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allow


def test_the_startup_heap_is_frozen_out_of_the_collector_while_serving(make_client: Any, model_dir: Path) -> None:
    """A full collection of what startup built took 50-60 ms under load; frozen, the collector skips it. The
    app unfreezes at shutdown, so a process that starts many apps (this one) can collect what each held."""
    import gc

    client = make_client(model_dir)
    assert gc.get_freeze_count() > 0
    client.__exit__(None, None, None)
    assert gc.get_freeze_count() == 0
