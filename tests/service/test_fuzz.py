"""Nothing a client sends makes the service answer 500: odd bodies get 4xx with a detail."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import ADMIN

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
feature_values = st.one_of(
    json_values, st.floats(min_value=-1e308, max_value=1e308), st.sampled_from(["north", "south", "x"])
)
features = st.one_of(
    st.dictionaries(
        st.sampled_from(["recency", "history", "region", "region=north", "region=south", "junk"]), feature_values
    ),
    st.lists(feature_values, min_size=3, max_size=5),
    json_values,
)
individual = st.one_of(
    st.fixed_dictionaries(
        {"id": st.one_of(st.text(max_size=4), st.integers(-(2**63), 2**63 - 1), json_values), "features": features},
        optional={"allowed_treatments": st.one_of(st.lists(st.integers(-2, 4), max_size=3), json_values)},
    ),
    json_values,
)
bodies = st.one_of(
    st.fixed_dictionaries({"individuals": st.lists(individual, max_size=4)}, optional={"campaign": json_values}),
    json_values,
)

ODD_BYTES = [
    b"",
    b"{",
    b"null",
    b'"individuals"',
    b'{"individuals": [{"id": 1, "features": [1e999, 0, 0, 0]}]}',
    b'{"individuals": [{"id": 1, "features": [123456789012345678901234567890, 0, 0, 0]}]}',
    b'{"individuals": [{"id": 1, "features": {"recency": 1, "recency": "a"}}]}',
    b'{"individuals": [{"id": 1, "features": [NaN, 0, 0, 0]}]}',
    b"\xff\xfe\x00garbage",
    b'{"individuals": ' + b"[" * 2000 + b"]" * 2000 + b"}",
    b'{"individuals": [{"id": 99999999999999999999999999, "features": [0, 0, 1, 0]}]}',
]


@pytest.mark.parametrize("body", ODD_BYTES)
def test_odd_allocate_bytes_are_never_server_errors(client: TestClient, body: bytes) -> None:
    response = client.post("/allocate", content=body, headers={"content-type": "application/json"})
    assert response.status_code < 500, response.text
    if response.status_code != 200:  # a huge but finite float32 number is a valid feature value
        assert 400 <= response.status_code < 500 and isinstance(response.json()["detail"], str)


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b"[]",
        b'{"budget_per_capita": 1e999}',
        b'{"budget_per_capita": [1]}',
        b'{"budget_per_capita": true, "x": 1}',
    ],
)
def test_odd_budget_bytes_are_client_errors(client: TestClient, body: bytes) -> None:
    response = client.post("/budget", content=body, headers={**ADMIN, "content-type": "application/json"})
    assert response.status_code == 422, response.text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies)
def test_random_allocate_bodies_never_500(client: TestClient, body: Any) -> None:
    response = client.post("/allocate", content=orjson.dumps(body), headers={"content-type": "application/json"})
    assert response.status_code in (200, 413, 422), response.text
    if response.status_code == 200:
        assert len(response.json()["allocations"]) == len(body["individuals"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.dictionaries(
        st.sampled_from(["campaign", "budget_per_capita", "total_budget", "population_size"]), json_values
    )
)
def test_random_budget_bodies_never_500(client: TestClient, body: Any) -> None:
    response = client.post("/budget", content=orjson.dumps(body), headers={**ADMIN, "content-type": "application/json"})
    assert response.status_code in (200, 422), response.text


column_values = st.lists(feature_values, min_size=1, max_size=3)
columnar_bodies = st.fixed_dictionaries(
    {},
    optional={
        "campaign": json_values,
        "ids": st.one_of(st.lists(st.one_of(st.text(max_size=4), st.integers(-5, 5), json_values), max_size=3)),
        "columns": st.one_of(st.lists(column_values, min_size=3, max_size=5), json_values),
        "matrix": st.one_of(st.lists(st.lists(feature_values, min_size=3, max_size=5), max_size=3), json_values),
        "allowed_treatments": st.one_of(st.lists(st.one_of(st.none(), st.lists(st.integers(-2, 4))), max_size=3)),
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=columnar_bodies)
def test_random_columnar_bodies_never_500(client: TestClient, body: Any) -> None:
    response = client.post("/allocate", content=orjson.dumps(body), headers={"content-type": "application/json"})
    assert response.status_code in (200, 413, 422), response.text
    if response.status_code == 200:
        assert len(response.json()["allocations"]) == len(body["ids"])
