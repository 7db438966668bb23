"""The columnar /allocate body: same allocations as the row body, its own errors naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.artifact import load_artifact

NAMES = ["recency", "history", "region=north", "region=south"]


def _population(model_dir: Path, n: int) -> np.ndarray:
    return load_artifact(model_dir).population[:n]


def test_row_columns_and_matrix_bodies_give_identical_allocations(client: TestClient, model_dir: Path) -> None:
    x = _population(model_dir, 250)
    ids: list[Any] = [f"u{i}" if i % 3 else i for i in range(len(x))]  # strings and integers
    allowed: list[Any] = [None if i % 4 else [0, 1] for i in range(len(x))]
    rows = [
        {"id": i, "features": dict(zip(NAMES, map(float, r), strict=True)), "allowed_treatments": a}
        for i, r, a in zip(ids, x, allowed, strict=True)
    ]
    by_rows = client.post("/allocate", json={"campaign": "default", "individuals": rows})
    by_columns = client.post("/allocate", json={"ids": ids, "columns": x.T.tolist(), "allowed_treatments": allowed})
    by_matrix = client.post("/allocate", json={"ids": ids, "matrix": x.tolist(), "allowed_treatments": allowed})
    for response in (by_rows, by_columns, by_matrix):
        assert response.status_code == 200, response.text
    answers = [_without_decision_ids(r.json()) for r in (by_rows, by_columns, by_matrix)]
    assert answers[0] == answers[1] == answers[2]
    treatments = [a["treatment"] for a in by_rows.json()["allocations"]]
    assert len(set(treatments)) > 1  # the comparison covers more than one arm
    assert all(t in (0, 1) for t, a in zip(treatments, allowed, strict=True) if a is not None)


def test_a_columnar_answer_holds_the_row_answer_field_by_field(client: TestClient, model_dir: Path) -> None:
    x = _population(model_dir, 120)
    ids: list[Any] = [f"u{i}" if i % 2 else i for i in range(len(x))]
    allowed: list[Any] = [None if i % 5 else [1, 2] for i in range(len(x))]
    body = {"campaign": "default", "ids": ids, "matrix": x.tolist(), "allowed_treatments": allowed}
    by_rows = client.post("/allocate", json=body).json()
    by_columns = client.post("/allocate", json={**body, "response": "columns"}).json()
    fields = by_columns.pop("allocations")
    assert set(fields) == {"id", "treatment", "treatment_name", "expected_revenue", "expected_cost", "decision_id"}
    assert all(len(values) == len(ids) for values in fields.values())
    as_rows = [dict(zip(fields, values, strict=True)) for values in zip(*fields.values(), strict=True)]
    assert len({a["decision_id"] for a in as_rows}) == len(ids)  # ids of this request's own decisions
    assert _without_decision_ids({**by_columns, "allocations": as_rows}) == _without_decision_ids(by_rows)
    assert fields["id"] == ids


def test_integer_and_boolean_values_count_as_numbers(client: TestClient) -> None:
    columns = [[1, 0.5], [2, 3], [True, False], [False, True]]
    by_columns = client.post("/allocate", json={"ids": ["a", "b"], "columns": columns}).json()
    rows = [{"id": "a", "features": [1.0, 2.0, 1.0, 0.0]}, {"id": "b", "features": [0.5, 3.0, 0.0, 1.0]}]
    by_rows = client.post("/allocate", json={"individuals": rows}).json()
    assert _without_decision_ids(by_columns) == _without_decision_ids(by_rows)


def _without_decision_ids(answer: dict[str, Any]) -> dict[str, Any]:
    """The answer less each allocation's decision id (every request logs new decisions)."""
    allocations = [{k: v for k, v in a.items() if k != "decision_id"} for a in answer["allocations"]]
    assert all("decision_id" in a for a in answer["allocations"])
    return {**answer, "allocations": allocations}


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        ({"ids": ["a"]}, 422, "columns: give exactly one of 'columns'"),
        ({"ids": ["a"], "columns": [[1]] * 4, "matrix": [[1] * 4]}, 422, "columns: give exactly one of"),
        ({"columns": [[1]] * 4}, 422, "ids: field required"),
        ({"ids": [], "columns": []}, 422, "ids: empty batch"),
        ({"ids": "a", "columns": [[1]] * 4}, 422, "ids: expected an array of ids, got string"),
        ({"ids": ["a", None], "columns": [[1, 2]] * 4}, 422, "ids[1]: expected a string or an integer, got null"),
        ({"ids": ["a", "x" * 300], "matrix": [[1] * 4] * 2}, 422, "ids[1]: longer than 256 characters"),
        ({"ids": ["a"], "columns": [[1]] * 3}, 422, "columns: expected 4 arrays, one array per feature"),
        ({"ids": ["a", "b"], "columns": [[1, 2], [1], [1, 2], [1, 2]]}, 422, "columns[1]: expected an array of 2"),
        (
            {"ids": ["a", "b"], "columns": [[1, 2], [1, "2"], [1, 2], [1, 2]]},
            422,
            "columns[1][1]: feature 'history' of individual 1: expected a number, got string",
        ),
        (
            {"ids": ["a", "b"], "matrix": [[1, 2, 3, 4], [1, 2, None, 4]]},
            422,
            "matrix[1][2]: feature 'region=north' of individual 1: expected a number, got null",
        ),
        (
            {"ids": ["a"], "matrix": [[1, 2, 1e300, 4]]},
            422,
            "matrix[0][2]: feature 'region=north' of individual 0: NaN or infinite",
        ),
        ({"ids": ["a"], "matrix": [[1, 2, [3], 4]]}, 422, "matrix[0][2]: feature 'region=north' of individual 0"),
        ({"ids": ["a"], "matrix": [[1] * 4], "extra": 1}, 422, "extra: unknown field"),
        ({"ids": ["a"], "matrix": [[1] * 4], "allowed_treatments": [[7]]}, 422, "allowed_treatments[0]: unknown"),
        ({"ids": ["a"], "matrix": [[1] * 4], "allowed_treatments": [None, None]}, 422, "allowed_treatments: expected"),
        ({"ids": ["a"] * 6, "matrix": [[1] * 4] * 6}, 413, "ids: batch of 6 exceeds the limit of 5"),
        ({"ids": ["a"], "matrix": [[1] * 4], "campaign": "a b"}, 422, "campaign: expected 1-64 characters"),
        ({"ids": ["a"], "matrix": [[1] * 4], "response": "csv"}, 422, "response: expected one of ['rows', 'columns']"),
        ({"ids": ["a"], "matrix": [[1] * 4], "response": None}, 422, "response: expected one of"),
    ],
)
def test_columnar_errors_name_the_field(
    make_client: Any, model_dir: Path, body: dict[str, Any], status: int, detail: str
) -> None:
    client = make_client(model_dir, max_batch=5)
    response = client.post("/allocate", json=body)
    assert response.status_code == status, response.text
    assert response.json()["detail"].startswith(detail), response.json()["detail"]


def test_huge_integers_are_numbers_and_beyond_float32_an_error(client: TestClient) -> None:
    headers = {"content-type": "application/json"}
    fine = b'{"ids": ["a"], "matrix": [[123456789012345678901234567890, 18446744073709551617, 1, 0]]}'
    response = client.post("/allocate", content=fine, headers=headers)
    assert response.status_code == 200, response.text
    huge = b'{"ids": ["a"], "columns": [[1], [1' + b"0" * 39 + b"], [1], [0]]}"
    response = client.post("/allocate", content=huge, headers=headers)
    assert response.status_code == 422
    assert response.json()["detail"] == "columns[1][0]: feature 'history' of individual 0: NaN or infinite"


def test_openapi_documents_both_body_forms_with_examples(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    content = spec["paths"]["/allocate"]["post"]["requestBody"]["content"]["application/json"]
    rows, columns = content["schema"]["oneOf"]
    assert set(rows["properties"]) == {"campaign", "individuals"}
    assert set(columns["properties"]) == {"campaign", "ids", "columns", "matrix", "allowed_treatments", "response"}
    # Exactly one of the two, never null: a body with both is refused, so the schema must not admit it.
    assert columns["oneOf"] == [{"required": ["columns"]}, {"required": ["matrix"]}]
    assert columns["properties"]["columns"]["type"] == columns["properties"]["matrix"]["type"] == "array"
    assert set(content["examples"]) == {"rows", "columns", "matrix"}
    answers = spec["paths"]["/allocate"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert {ref["$ref"].rsplit("/", 1)[1] for ref in answers["anyOf"]} == {
        "AllocateResponse",
        "AllocateColumnsResponse",
    }
