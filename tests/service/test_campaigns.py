"""Campaign resources over the in-process ledger: the routes, the cap, paused and ended campaigns, pacing steps."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from .artifacts import population
from .conftest import ADMIN, AppFactory, wait_for

FEATURES = ["recency", "history", "region=north", "region=south"]


def individuals(count: int, seed: int = 0) -> list[dict[str, Any]]:
    rows = population(seed, rows=count)  # (count, D) manifest order
    return [{"id": f"u{seed}-{i}", "features": [float(v) for v in row]} for i, row in enumerate(rows)]


def flight(minutes_before: float = 1.0, minutes_after: float = 60.0) -> dict[str, str]:
    now = datetime.now(UTC)
    return {
        "start": (now - timedelta(minutes=minutes_before)).isoformat(),
        "end": (now + timedelta(minutes=minutes_after)).isoformat(),
    }


def spec(total_budget: float, **fields: Any) -> dict[str, Any]:
    return {"total_budget": total_budget, "expected_audience": 1000, "pacing": "off", **flight(), **fields}


def given_cost(response: dict[str, Any]) -> float:
    return float(sum(a["expected_cost"] for a in response["allocations"]))


def allocate(client: TestClient, campaign: str, count: int, seed: int) -> dict[str, Any]:
    response = client.post("/allocate", json={"campaign": campaign, "individuals": individuals(count, seed)})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_create_read_and_serve_initial_lambda(make_client: AppFactory, model_dir: Path) -> None:
    client = make_client(model_dir, slice_min_share=0.2)
    response = client.put("/campaigns/spring", json=spec(400.0), headers=ADMIN)
    assert response.status_code == 200, response.text
    state = response.json()
    assert state["budget"] == 400.0 and state["committed"] == 0.0 and state["status"] == "active"
    solved = client.post("/budget", json={"campaign": "other", "budget_per_capita": 0.4}, headers=ADMIN).json()
    assert state["lambda"] == pytest.approx(solved["lambda"])  # reference λ* for 400 ÷ 1000
    assert state["lambda_version"] >= 1
    body = allocate(client, "spring", 50, seed=1)
    assert body["campaign_status"] == "active" and body["lambda_version"] == state["lambda_version"]


def test_writes_need_the_admin_token_and_a_valid_spec(client: TestClient) -> None:
    assert client.put("/campaigns/c1", json=spec(10.0)).status_code == 401
    bad = client.put("/campaigns/c1", json={**spec(10.0), "end": flight(5, -4)["start"]}, headers=ADMIN)
    assert bad.status_code == 422 and "end" in bad.json()["detail"]
    bad = client.put("/campaigns/c1", json=spec(-1.0), headers=ADMIN)
    assert bad.status_code == 422 and "total_budget" in bad.json()["detail"]
    bad = client.put("/campaigns/c1", json=spec(1e300), headers=ADMIN)
    assert bad.status_code == 422 and "total_budget" in bad.json()["detail"]
    bad = client.put("/campaigns/c1", json=spec(10.0, traffic_profile=[1e308] * 10), headers=ADMIN)
    assert bad.status_code == 422 and "traffic_profile" in bad.json()["detail"]
    bad = client.put("/campaigns/c1", json=spec(10.0, pacing="fast"), headers=ADMIN)
    assert bad.status_code == 422 and "pacing" in bad.json()["detail"]
    naive = {**spec(10.0), "start": "2026-01-01T00:00:00"}
    bad = client.put("/campaigns/c1", json=naive, headers=ADMIN)
    assert bad.status_code == 422 and "time zone" in bad.json()["detail"]
    assert client.get("/campaigns/nothing").status_code == 404
    report = client.post("/campaigns/nothing/realized", json={"realized_cost": 1, "predicted_cost": 1}, headers=ADMIN)
    assert report.status_code == 404


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("total_budget", True),
        ("total_budget", "1000"),
        ("expected_audience", True),
        ("expected_audience", "1000"),
        ("expected_audience", 1000.5),
        ("paused", "yes"),
        ("paused", 1),
        ("start", 0),
        ("traffic_profile", [1.0, True]),
    ],
)
def test_a_spec_takes_json_types_as_they_are(client: TestClient, field: str, value: Any) -> None:
    """Lax parsing read `true` as a budget of 1, "yes" as paused and 0 as a 1970 start: money moved on a typo."""
    bad = client.put("/campaigns/c1", json={**spec(10.0), field: value}, headers=ADMIN)
    assert bad.status_code == 422, bad.text
    assert bad.json()["detail"].startswith(field), bad.json()["detail"]
    assert client.put("/campaigns/c1", json=spec(10, expected_audience=1000.0), headers=ADMIN).status_code == 200


def test_a_realized_report_takes_numbers_only(client: TestClient) -> None:
    assert client.put("/campaigns/c2", json=spec(10.0), headers=ADMIN).status_code == 200
    for bad in ({"realized_cost": True, "predicted_cost": 1}, {"realized_cost": 1, "predicted_cost": "1"}):
        response = client.post("/campaigns/c2/realized", json=bad, headers=ADMIN)
        assert response.status_code == 422, (bad, response.text)
    good = client.post("/campaigns/c2/realized", json={"realized_cost": 1, "predicted_cost": 1.5}, headers=ADMIN)
    assert good.status_code == 204, good.text


def test_the_cap_holds_and_says_why(client: TestClient) -> None:
    budget = 25.0
    client.put("/campaigns/tight", json=spec(budget, pacing="asap", expected_audience=40), headers=ADMIN)
    given, statuses, exhausted = 0.0, set(), 0
    for seed in range(300):  # far more demand than budget
        body = allocate(client, "tight", 40, seed)
        given += given_cost(body)
        statuses.add(body["campaign_status"])
        exhausted += body["campaign_status"] == "exhausted"
        if exhausted >= 30:
            break
        time.sleep(0.01)
    assert given <= budget + 1e-6
    assert "exhausted" in statuses, (given, statuses)
    assert given >= 0.95 * budget  # the cap stops spend, it does not strand the budget
    wait_for(lambda: client.get("/campaigns/tight").json()["reserved"] < 1.0)
    state = client.get("/campaigns/tight").json()
    assert state["committed"] <= budget + 1e-9
    assert state["committed"] == pytest.approx(given, rel=1e-5, abs=1e-4) or state["committed"] >= given


def test_paused_and_ended_campaigns_give_the_cheapest_treatment(client: TestClient) -> None:
    client.put("/campaigns/p", json=spec(1e6, paused=True), headers=ADMIN)
    body = allocate(client, "p", 30, seed=3)
    assert body["campaign_status"] == "paused"
    assert {a["treatment"] for a in body["allocations"]} == {0}  # control costs nothing in the toy model
    client.put("/campaigns/e", json={**spec(1e6), **flight(10, -5)}, headers=ADMIN)
    body = allocate(client, "e", 30, seed=3)
    assert body["campaign_status"] == "ended" and {a["treatment"] for a in body["allocations"]} == {0}
    allowed = [{**i, "allowed_treatments": [1, 2]} for i in individuals(5, seed=4)]
    body = client.post("/allocate", json={"campaign": "p", "individuals": allowed}).json()
    assert all(a["treatment"] in (1, 2) for a in body["allocations"])  # cheapest *allowed*
    assert client.get("/campaigns/p").json()["status"] == "paused"


def test_budget_below_committed_is_refused(client: TestClient) -> None:
    client.put("/campaigns/b", json=spec(50.0, pacing="asap", expected_audience=60), headers=ADMIN)
    seed = 0
    while client.get("/campaigns/b").json()["committed"] <= 1.0 and seed < 200:
        allocate(client, "b", 40, seed)
        seed += 1
        time.sleep(0.02)
    response = client.put("/campaigns/b", json=spec(0.5, pacing="asap"), headers=ADMIN)
    assert response.status_code == 409 and "total_budget" in response.json()["detail"]


def test_plain_budget_campaigns_are_not_capped(client: TestClient) -> None:
    client.post("/budget", json={"campaign": "legacy", "budget_per_capita": 0.5}, headers=ADMIN)
    body = allocate(client, "legacy", 20, seed=5)
    assert "campaign_status" not in body


def test_realized_reports_and_metrics(client: TestClient) -> None:
    client.put("/campaigns/r", json=spec(100.0, pacing="even"), headers=ADMIN)
    report = {"realized_cost": 3.0, "predicted_cost": 2.0}
    assert client.post("/campaigns/r/realized", json=report, headers=ADMIN).status_code == 204
    bad = client.post("/campaigns/r/realized", json={"realized_cost": -1, "predicted_cost": 1}, headers=ADMIN)
    assert bad.status_code == 422 and "realized_cost" in bad.json()["detail"]
    bad = client.post("/campaigns/r/realized", json={"realized_cost": 1, "predicted_cost": 1e300}, headers=ADMIN)
    assert bad.status_code == 422 and "predicted_cost" in bad.json()["detail"]
    state = client.get("/campaigns/r").json()
    assert state["realized"] == 3.0 and state["covered"] == 2.0
    allocate(client, "r", 10, seed=6)
    text = client.get("/metrics").text
    for series in ("allocator_campaign_committed", "allocator_campaign_remaining", "allocator_campaign_ledger_up"):
        assert f"{series}" in text
    assert client.get("/readyz").json()["campaign_ledger_up"] is True


def test_pacing_moves_lambda_and_publishes_versions(make_client: AppFactory, model_dir: Path) -> None:
    """An 'even' campaign that spends too fast at the reference λ*: the pacer raises λ with new versions."""
    client = make_client(model_dir, pace_seconds=0.2)
    # 2-minute flight, budget for a tenth of what the traffic below would spend at the reference λ*.
    client.put("/campaigns/fast", json={**spec(30.0, pacing="even"), **flight(0.5, 1.5)}, headers=ADMIN)
    first = client.get("/campaigns/fast").json()
    for seed in range(40):
        allocate(client, "fast", 50, seed)
        time.sleep(0.03)
    state = client.get("/campaigns/fast").json()
    assert state["lambda"] > first["lambda"] and state["lambda_version"] > first["lambda_version"]
    assert state["pacing_leader"] is True and state["pace_error"] is not None
    assert state["committed"] <= state["budget"]
    assert np.isfinite(state["realized_ratio"])


def test_pacing_history_and_campaign_list(make_client: AppFactory, model_dir: Path) -> None:
    """The leader appends the ledger at each step; GET /campaigns lists the campaign, the history charts it."""
    client = make_client(model_dir, pace_seconds=0.1)
    assert client.get("/campaigns").json() == []
    client.put("/campaigns/drawn", json={**spec(30.0, pacing="even"), **flight(0.5, 1.5)}, headers=ADMIN)
    client.put("/campaigns/plain", json=spec(30.0), headers=ADMIN)  # pacing off: spend is still drawn
    for seed in range(10):
        allocate(client, "drawn", 50, seed)
        allocate(client, "plain", 20, seed)
        time.sleep(0.05)

    def drawn() -> list[dict[str, Any]]:
        points: list[dict[str, Any]] = client.get("/campaigns/drawn/history").json()["points"]
        return points

    # Spend reaches the ledger at the slices' next report: wait for a step that has seen some.
    wait_for(lambda: len(p := drawn()) >= 3 and p[-1]["committed"] > 0, timeout=15.0)
    listed = {c["campaign"]: c for c in client.get("/campaigns").json()}
    assert set(listed) == {"drawn", "plain"} and listed["drawn"]["status"] == "active"
    history = client.get("/campaigns/drawn/history").json()
    points = history["points"]
    assert history["budget"] == 30.0 and history["start"] < points[0]["at"] < history["end"]
    assert history["interval_seconds"] == pytest.approx(0.1)  # a 2-minute flight: every step is kept
    assert [p["at"] for p in points] == sorted(p["at"] for p in points)
    assert all(p["committed"] <= p["cap"] + 1e-9 <= 30.0 + 1e-9 for p in points)
    assert all(p["target"] is not None and p["lambda"] > 0 for p in points)
    committed = [p["committed"] for p in points]
    assert committed == sorted(committed) and committed[-1] > 0
    wait_for(lambda: client.get("/campaigns/plain/history").json()["points"])
    plain = client.get("/campaigns/plain/history").json()["points"]
    assert all(p["target"] is None for p in plain)
    missing = client.get("/campaigns/nope/history")
    assert missing.status_code == 404 and "nope" in missing.json()["detail"]


def test_pacing_history_is_thinned_to_fit_the_flight(make_client: AppFactory, model_dir: Path) -> None:
    """A 30-day flight at a 0.1 s pacing period keeps one point per 30 min, not one per step."""
    client = make_client(model_dir, pace_seconds=0.1)
    client.put("/campaigns/long", json={**spec(30.0, pacing="even"), **flight(1.0, 30 * 24 * 60)}, headers=ADMIN)
    allocate(client, "long", 20, 0)
    wait_for(lambda: client.get("/campaigns/long/history").json()["points"])
    time.sleep(0.5)  # five more steps: none of them is due a point
    history = client.get("/campaigns/long/history").json()
    assert history["interval_seconds"] == pytest.approx((30 * 24 * 60 + 1.0) * 60 / history["max_points"])
    assert len(history["points"]) == 1
