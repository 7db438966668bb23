"""Every endpoint on one replica with the in-process store (the lifespan runs: `with TestClient(app)`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.artifact import load_artifact
from service.decision import choose, sweep

from .artifacts import write_artifact
from .conftest import ADMIN, AppFactory


def _individuals(x: np.ndarray) -> list[dict[str, object]]:
    names = ["recency", "history", "region=north", "region=south"]
    return [{"id": f"u{i}", "features": dict(zip(names, map(float, row), strict=True))} for i, row in enumerate(x)]


def test_allocations_equal_the_shared_decision_rule(client: TestClient, model_dir: Path) -> None:
    artifact = load_artifact(model_dir)
    x = artifact.population[:300]
    response = client.post("/allocate", json={"individuals": _individuals(x)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["lambda_version"] == 0 and body["lambda"] == artifact.manifest.default_lambda
    assert body["model_version"] == artifact.model_version and body["campaign"] == "default"
    revenue, cost = artifact.predict(x)
    expected = choose(revenue, cost, body["lambda"])
    got = np.array([a["treatment"] for a in body["allocations"]])
    np.testing.assert_array_equal(got, expected)
    assert [a["id"] for a in body["allocations"]] == [f"u{i}" for i in range(300)]
    rows = np.arange(300)
    np.testing.assert_allclose([a["expected_revenue"] for a in body["allocations"]], revenue[rows, expected], rtol=1e-6)
    np.testing.assert_allclose([a["expected_cost"] for a in body["allocations"]], cost[rows, expected], rtol=1e-6)
    assert {a["treatment_name"] for a in body["allocations"]} <= {"control", "coupon_5", "coupon_10"}


def test_array_form_and_raw_categories_allocate_the_same(client: TestClient, model_dir: Path) -> None:
    x = load_artifact(model_dir).population[:20]
    named = client.post("/allocate", json={"individuals": _individuals(x)}).json()
    arrays = client.post(
        "/allocate", json={"individuals": [{"id": f"u{i}", "features": r.tolist()} for i, r in enumerate(x)]}
    ).json()
    raw = client.post(
        "/allocate",
        json={
            "individuals": [
                {
                    "id": f"u{i}",
                    "features": {
                        "recency": float(r[0]),
                        "history": float(r[1]),
                        "region": "north" if r[2] else "south",
                    },
                }
                for i, r in enumerate(x)
            ]
        },
    ).json()
    # Every decision gets its own id; everything else must agree.
    for out in (named, arrays, raw):
        assert len({a.pop("decision_id") for a in out["allocations"]}) == len(x)
    assert named["allocations"] == arrays["allocations"] == raw["allocations"]


def test_allowed_treatments_are_respected(client: TestClient, model_dir: Path) -> None:
    artifact = load_artifact(model_dir)
    x = artifact.population[:100]
    individuals = [{"id": i, "features": r.tolist(), "allowed_treatments": [0, 1]} for i, r in enumerate(x)]
    body = client.post("/allocate", json={"individuals": individuals}).json()
    revenue, cost = artifact.predict(x)
    allowed = np.zeros((100, 3), dtype=bool)
    allowed[:, :2] = True
    expected = choose(revenue, cost, body["lambda"], allowed)
    assert [a["treatment"] for a in body["allocations"]] == expected.tolist()
    assert all(a["treatment"] != 2 for a in body["allocations"])


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        ({"individuals": []}, "individuals: empty batch: send at least one individual"),
        (
            {"individuals": [{"id": 1, "features": {"recency": 1.0}}]},
            "individuals[0].features.history: missing feature",
        ),
        (
            {"individuals": [{"id": 1, "features": [1, 2, 3, 4], "allowed_treatments": [9]}]},
            "individuals[0].allowed_treatments: unknown treatment id 9",
        ),
    ],
)
def test_allocate_422_names_the_field(client: TestClient, payload: dict[str, object], detail: str) -> None:
    response = client.post("/allocate", json=payload)
    assert response.status_code == 422
    assert response.json()["detail"].startswith(detail)


def test_nan_and_infinity_are_422(client: TestClient) -> None:
    # JSON has no NaN literal; Python's encoder writes one anyway, and a float32 overflow is infinite.
    response = client.post(
        "/allocate",
        content=b'{"individuals": [{"id": 1, "features": [NaN, 1, 0, 1]}]}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422 and response.json()["detail"].startswith("body: invalid JSON")
    response = client.post("/allocate", json={"individuals": [{"id": 1, "features": [1e300, 1, 0, 1]}]})
    assert response.status_code == 422
    assert response.json()["detail"] == "individuals[0].features.recency: NaN or infinite (or beyond the float32 range)"


def test_oversize_batch_is_413(make_client: AppFactory, model_dir: Path) -> None:
    small = make_client(model_dir, max_batch=5, max_body_bytes=2000)
    response = small.post("/allocate", json={"individuals": [{"id": i, "features": [0, 0, 1, 0]} for i in range(6)]})
    assert response.status_code == 413
    assert response.json()["detail"] == "individuals: batch of 6 exceeds the limit of 5"
    big_body = {"individuals": [{"id": "x" * 500, "features": [0, 0, 1, 0]} for _ in range(5)]}
    response = small.post("/allocate", json=big_body)
    assert response.status_code == 413 and response.json()["detail"] == "body: larger than 2000 bytes"


def test_budget_requires_the_admin_token(client: TestClient) -> None:
    response = client.post("/budget", json={"budget_per_capita": 0.8})
    assert response.status_code == 401 and response.json()["detail"] == "Authorization: missing bearer token"
    response = client.post("/budget", json={"budget_per_capita": 0.8}, headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 403 and response.json()["detail"] == "Authorization: wrong admin token"
    response = client.post("/budget", json={"budget_per_capita": 0.8}, headers={"Authorization": "Basic abc"})
    assert response.status_code == 401


def test_budget_without_configured_token_is_refused(make_client: AppFactory, model_dir: Path) -> None:
    closed = make_client(model_dir, admin_token=None)
    response = closed.post("/budget", json={"budget_per_capita": 0.8}, headers=ADMIN)
    assert response.status_code == 403 and "admin API disabled" in response.json()["detail"]


def test_budget_solves_lambda_exactly_and_serves_it(client: TestClient, model_dir: Path) -> None:
    artifact = load_artifact(model_dir)
    revenue, cost = artifact.predict(artifact.population)
    expected = sweep(revenue, cost).solve_per_capita(0.8, with_assignment=False)
    response = client.post("/budget", json={"campaign": "spring", "budget_per_capita": 0.8}, headers=ADMIN)
    assert response.status_code == 200, response.text
    out = response.json()
    assert out["lambda"] == expected.lam and out["version"] == 1 and out["source"] == "store"
    assert out["expected_cost_per_capita"] == pytest.approx(expected.spend_per_capita)
    assert out["expected_revenue_per_capita"] == pytest.approx(expected.revenue_per_capita)
    assert out["expected_cost_per_capita"] <= 0.8 + 1e-12
    assert out["population_size"] == 2000 and out["solve_ms"] > 0  # speed: bench.serve, not a test
    # Total budget over a population size is the same per-capita budget.
    again = client.post(
        "/budget", json={"campaign": "spring", "total_budget": 8000.0, "population_size": 10000}, headers=ADMIN
    ).json()
    assert again["lambda"] == expected.lam and again["version"] == 2
    assert client.get("/budget", params={"campaign": "spring"}).json()["version"] == 2
    body = client.post("/allocate", json={"campaign": "spring", "individuals": [{"id": 1, "features": [0, 0, 1, 0]}]})
    assert body.json()["lambda"] == expected.lam and body.json()["lambda_version"] == 2
    # The default campaign still uses the manifest default; a campaign with no budget is not served at all.
    default = client.get("/budget").json()
    assert default["version"] == 0 and default["source"] == "manifest default"
    other = client.get("/budget", params={"campaign": "autumn"})
    assert other.status_code == 404
    assert other.json()["detail"].startswith("campaign: no budget set for campaign 'autumn'")


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"budget_per_capita": 0}, "budget_per_capita must be a positive finite number"),
        ({"budget_per_capita": -1}, "budget_per_capita must be a positive finite number"),
        ({"total_budget": 10.0}, "population_size must be a positive integer"),
        ({"budget_per_capita": 1.0, "total_budget": 10.0}, "give exactly one of"),
        ({}, "give exactly one of"),
        ({"budget_per_capita": "lots"}, "budget_per_capita"),
        ({"budget_per_capita": 1.0, "campaign": "no spaces"}, "campaign"),
    ],
)
def test_bad_budget_is_422(client: TestClient, payload: dict[str, object], field: str) -> None:
    response = client.post("/budget", json=payload, headers=ADMIN)
    assert response.status_code == 422
    assert field in str(response.json()["detail"])


def test_budget_below_the_cheapest_policy_is_422_in_per_capita_terms(make_client: AppFactory, tmp_path: Path) -> None:
    # Every arm costs at least 0.5 more: the cheapest policy spends 0.5 per capita on the reference population.
    write_artifact(tmp_path, cost_offset=0.5, default_budget_per_capita=1.0)
    client = make_client(tmp_path)
    response = client.post("/budget", json={"budget_per_capita": 0.1}, headers=ADMIN)
    assert response.status_code == 422
    # Per capita, as the client thinks (not the reference population's totals: 200 of 1000 over 2,000 rows).
    assert response.json()["detail"].startswith(
        "budget_per_capita: budget 0.1 per capita is below what the cheapest policy spends, 0.5 per capita"
    )
    response = client.post("/budget", json={"total_budget": 10.0, "population_size": 100}, headers=ADMIN)
    assert response.status_code == 422
    assert response.json()["detail"].startswith("total_budget: budget 0.1 per capita is below")


def test_model_health_readiness_and_metrics(client: TestClient, model_dir: Path) -> None:
    model = client.get("/model").json()
    assert model["features"] == ["recency", "history", "region=north", "region=south"]
    assert model["treatments"] == [
        {"id": 0, "name": "control"},
        {"id": 1, "name": "coupon_5"},
        {"id": 2, "name": "coupon_10"},
    ]
    assert model["categorical"] == {"region": ["north", "south"]}
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["store"] == "in-process" and ready.json()["lambda"]["default"]["source"] == "manifest default"
    client.post("/allocate", json={"individuals": [{"id": i, "features": [0, 0, 1, 0]} for i in range(7)]})
    client.post("/budget", json={"campaign": "spring", "budget_per_capita": 0.8}, headers=ADMIN)
    text = client.get("/metrics").text
    assert 'allocator_request_latency_seconds_count{endpoint="/allocate",status="200"} 1.0' in text
    counts = {t: 0.0 for t in ("control", "coupon_5", "coupon_10")}
    for line in text.splitlines():
        if line.startswith("allocator_allocations_total{"):
            counts[line.split('"')[1]] = float(line.rsplit(" ", 1)[1])
    assert sum(counts.values()) == 7
    assert 'allocator_lambda_version{campaign="spring"} 1.0' in text
    assert 'allocator_lambda{campaign="default",source="manifest default"} 0.5' in text
    assert 'allocator_store_up{backend="in-process"} 1.0' in text
    assert "allocator_model_info{" in text


def test_responses_carry_request_id_and_server_timing(client: TestClient) -> None:
    response = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    assert response.headers["server-timing"].startswith("app;dur=")


def test_openapi_documents_the_allocate_body(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    schema = spec["paths"]["/allocate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(schema["oneOf"][0]["properties"]) == {"campaign", "individuals"}  # rows; columns: test_columnar
    assert "$ref" not in str(schema)
    assert spec["paths"]["/allocate"]["post"]["description"].startswith("Assign each individual")
