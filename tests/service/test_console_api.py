"""The console's JSON endpoints and page on one replica (in-process store), and the treatment-mix path."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.artifact import load_artifact
from service.console.curve import CHECKPOINT_EDGES, MixPath
from service.console.page import ASSETS
from service.decision import choose, sweep
from service.lambdas import BudgetSolver

from .artifacts import write_artifact
from .conftest import ADMIN, AppFactory


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("integers", [False, True])
def test_mix_path_counts_equal_the_assignment_at_every_budget(seed: int, integers: bool) -> None:
    rng = np.random.default_rng(seed)
    n, k = 6000, 4
    if integers:  # many exact ties: equal slopes, equal costs, duplicate arms
        revenue, cost = rng.integers(0, 6, (n, k)).astype(float), rng.integers(0, 4, (n, k)).astype(float)
    else:
        revenue, cost = rng.random((n, k)), rng.random((n, k))
    population = sweep(revenue, cost)
    assert population.neg_slope.size > 2 * CHECKPOINT_EDGES  # several checkpoints are crossed
    path = MixPath.build(population, k)
    budgets = np.linspace(population.min_spend, population.max_spend, 41)
    for budget in budgets:
        solution = population.solve(float(budget))
        assert solution.assignment is not None
        np.testing.assert_array_equal(path.counts(solution.lam), np.bincount(solution.assignment, minlength=k))
    # And at λ values between and on the edges' slopes, against the decision rule itself.
    if not integers:
        for lam in [0.0, 0.3, 0.9, float(-population.neg_slope[len(population.neg_slope) // 2]) + 1e-7, 50.0]:
            np.testing.assert_array_equal(path.counts(lam), np.bincount(choose(revenue, cost, lam), minlength=k))


def test_the_curve_is_the_exact_solver_at_evenly_spaced_budgets(client: TestClient, model_dir: Path) -> None:
    response = client.get("/budget/curve", params={"points": 25})
    assert response.status_code == 200, response.text
    body = response.json()
    artifact = load_artifact(model_dir)
    solver = BudgetSolver(artifact)
    assert body["treatments"] == artifact.manifest.treatment_names
    assert body["population_size"] == solver.population_size == len(artifact.population)
    assert body["min_budget_per_capita"] == solver.min_spend_per_capita
    assert body["max_budget_per_capita"] == solver.max_spend_per_capita
    points = body["points"]
    assert len(points) == 25
    budgets = [p["budget_per_capita"] for p in points]
    np.testing.assert_allclose(budgets, np.linspace(solver.min_spend_per_capita, solver.max_spend_per_capita, 25))
    revenue, cost = artifact.predict(artifact.population)
    for p in points:
        solution = solver.sweep.solve_per_capita(p["budget_per_capita"])
        assert (p["lambda"], p["expected_spend_per_capita"]) == (solution.lam, solution.spend_per_capita)
        assert p["expected_revenue_per_capita"] == solution.revenue_per_capita
        assert p["expected_spend_per_capita"] <= p["budget_per_capita"] * (1 + 1e-12)
        assert solution.assignment is not None
        shares = np.bincount(solution.assignment, minlength=3) / len(solution.assignment)
        np.testing.assert_allclose(list(p["mix"].values()), shares, rtol=0, atol=1e-12)
    assert np.all(np.diff([p["lambda"] for p in points]) <= 0)
    assert np.all(np.diff([p["expected_revenue_per_capita"] for p in points]) >= -1e-12)
    # The default campaign's marker: the manifest's λ and what the decision rule does with it.
    current = body["current"]
    assert current["campaign"] == "default" and current["version"] == 0
    assert current["lambda"] == artifact.manifest.default_lambda
    chosen = choose(revenue, cost, current["lambda"])
    np.testing.assert_allclose(
        list(current["mix"].values()), np.bincount(chosen, minlength=3) / len(chosen), rtol=0, atol=1e-12
    )
    rows = np.arange(len(chosen))
    assert current["expected_spend_per_capita"] == pytest.approx(float(cost[rows, chosen].mean()), rel=1e-5)


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ({"points": 1}, "query.points: Input should be greater than or equal to 2"),
        ({"points": 1001}, "query.points: Input should be less than or equal to 1000"),
        ({"points": "many"}, "query.points: Input should be a valid integer"),
        ({"campaign": "no spaces"}, "query.campaign: String should match pattern"),
    ],
)
def test_bad_curve_queries_are_422_naming_the_parameter(
    client: TestClient, query: dict[str, object], detail: str
) -> None:
    response = client.get("/budget/curve", params=query)
    assert response.status_code == 422
    assert response.json()["detail"].startswith(detail)


def test_what_if_is_what_post_budget_then_serves_and_stores_nothing(client: TestClient) -> None:
    what_if = client.get("/budget/whatif", params={"campaign": "spring", "budget_per_capita": 0.6})
    assert what_if.status_code == 200, what_if.text
    body = what_if.json()
    assert body["current"] is None  # no budget yet: /allocate would answer 404
    assert client.get("/budget", params={"campaign": "spring"}).status_code == 404
    assert client.get("/budget/curve", params={"campaign": "spring"}).json()["current"] is None
    stored = client.post("/budget", json={"campaign": "spring", "budget_per_capita": 0.6}, headers=ADMIN).json()
    proposed = body["proposed"]
    assert proposed["lambda"] == stored["lambda"]
    assert proposed["expected_spend_per_capita"] == stored["expected_cost_per_capita"]
    assert proposed["expected_revenue_per_capita"] == stored["expected_revenue_per_capita"]
    after = client.get("/budget/whatif", params={"campaign": "spring", "budget_per_capita": 0.9}).json()
    assert after["current"]["version"] == stored["version"] and after["current"]["lambda"] == stored["lambda"]
    assert after["current"]["expected_spend_per_capita"] == stored["expected_cost_per_capita"]
    assert client.get("/budget", params={"campaign": "spring"}).json()["version"] == stored["version"]
    curve = client.get("/budget/curve", params={"campaign": "spring", "points": 3}).json()
    assert curve["current"]["budget_per_capita"] == 0.6 and curve["current"]["source"] == "store"


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ({}, "query.budget_per_capita: Field required"),
        ({"budget_per_capita": "inf"}, "query.budget_per_capita: Input should be a finite number"),
        ({"budget_per_capita": -1}, "query.budget_per_capita: Input should be greater than 0"),
        ({"budget_per_capita": 1e9}, "budget_per_capita: budget 1e+09 per capita exceeds the most"),
    ],
)
def test_bad_what_if_is_422_naming_the_budget(client: TestClient, query: dict[str, object], detail: str) -> None:
    response = client.get("/budget/whatif", params=query)
    assert response.status_code == 422
    assert response.json()["detail"].startswith(detail)


def test_budget_campaigns_lists_default_first_then_every_stored_campaign(client: TestClient) -> None:
    assert [c["campaign"] for c in client.get("/budget/campaigns").json()] == ["default"]
    for campaign, budget in (("b_sale", 0.5), ("a_sale", 0.7)):
        client.post("/budget", json={"campaign": campaign, "budget_per_capita": budget}, headers=ADMIN)
    listed = client.get("/budget/campaigns").json()
    assert [c["campaign"] for c in listed] == ["default", "b_sale", "a_sale"]
    for record in listed:
        assert record == client.get("/budget", params={"campaign": record["campaign"]}).json()


def test_allocation_counts_follow_the_allocations(client: TestClient, model_dir: Path) -> None:
    assert client.get("/allocations/counts").json()["total"] == 0
    population = load_artifact(model_dir).population[:150]
    allocations = client.post(
        "/allocate", json={"individuals": [{"id": i, "features": row.tolist()} for i, row in enumerate(population)]}
    ).json()["allocations"]
    counts = client.get("/allocations/counts").json()
    assert counts["total"] == 150
    assert counts["replica"] == f"{socket.gethostname()}/{os.getpid()}"  # readings are only comparable per process
    expected = {name: 0 for name in ("control", "coupon_5", "coupon_10")}
    for allocation in allocations:
        expected[allocation["treatment_name"]] += 1
    assert counts["counts"] == expected


def test_the_page_is_served_with_its_own_assets_only(client: TestClient) -> None:
    page = client.get("/console")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "default-src 'none'" in csp
    html = page.text
    for reference in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert reference == "data:," or reference.startswith("console/"), reference
        if reference != "data:,":
            asset = client.get(f"/{reference}")
            assert asset.status_code == 200 and asset.headers["content-type"] == ASSETS[reference.split("/")[-1]]
    scripts = "".join(client.get(f"/console/{name}").text for name in ASSETS if name.endswith(".js"))
    imported = set(re.findall(r'from "\./([^"]+)"', scripts))
    assert imported == {name for name in ASSETS if name.endswith(".js")} - {"app.js"}  # all served, all used
    assert set(re.findall(r"https?://[^\s\"']+", scripts)) == {"http://www.w3.org/2000/svg"}  # an XML namespace
    assert not re.search(r"(localStorage|sessionStorage)\s*\.|document\.cookie", scripts)  # the token stays in memory
    assert client.get("/console/../service/main.py").status_code == 404
    missing = client.get("/console/manifest.json")
    assert missing.status_code == 404 and missing.json() == {"detail": "path: no console file 'manifest.json'"}
    assert client.get("/console/index.html").status_code == 404  # the page is GET /console


def test_openapi_documents_the_console_endpoints(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/budget/curve", "/budget/whatif", "/budget/campaigns", "/allocations/counts", "/console"):
        assert "get" in paths[path], path
    curve = paths["/budget/curve"]["get"]
    assert {p["name"] for p in curve["parameters"]} == {"campaign", "points"}
    points = next(p for p in curve["parameters"] if p["name"] == "points")
    assert points["schema"]["minimum"] == 2 and points["schema"]["maximum"] == 1000
    assert "422" in curve["responses"] and "422" in paths["/budget/whatif"]["get"]["responses"]
    # The what-if budget's published range is exactly what the solver accepts: its ends answer 200, beyond 422.
    what_if = paths["/budget/whatif"]["get"]["parameters"]
    budget = next(p for p in what_if if p["name"] == "budget_per_capita")["schema"]
    highest = budget["maximum"]
    assert client.get("/budget/whatif", params={"budget_per_capita": highest}).status_code == 200
    assert client.get("/budget/whatif", params={"budget_per_capita": highest * (1 + 1e-7)}).status_code == 422


def test_a_model_with_a_costly_cheapest_policy_starts_its_curve_there(make_client: AppFactory, tmp_path: Path) -> None:
    write_artifact(tmp_path, cost_offset=0.5, default_budget_per_capita=1.0)
    client = make_client(tmp_path)
    body = client.get("/budget/curve", params={"points": 2}).json()
    first, last = body["points"]
    assert first["budget_per_capita"] == body["min_budget_per_capita"] == pytest.approx(0.5, rel=1e-6)
    assert first["mix"]["control"] == 1.0
    assert last["lambda"] == 0.0 and last["budget_per_capita"] == body["max_budget_per_capita"]
    budget = next(
        p
        for p in client.get("/openapi.json").json()["paths"]["/budget/whatif"]["get"]["parameters"]
        if p["name"] == "budget_per_capita"
    )["schema"]
    assert "exclusiveMinimum" not in budget
    assert client.get("/budget/whatif", params={"budget_per_capita": budget["minimum"]}).status_code == 200
    below = client.get("/budget/whatif", params={"budget_per_capita": 0.1})
    assert below.status_code == 422
    assert below.json()["detail"].startswith(
        "budget_per_capita: budget 0.1 per capita is below what the cheapest policy spends, 0.5 per capita"
    )


def test_long_curves_run_off_the_event_loop_and_give_the_same_points(client: TestClient) -> None:
    long = client.get("/budget/curve", params={"points": 1000}).json()["points"]  # thread pool (> INLINE_POINTS)
    short = client.get("/budget/curve", params={"points": 2}).json()["points"]  # inline, mix path now cached
    assert len(long) == 1000
    assert long[0] == short[0] and long[-1] == short[-1]
