"""Request decoding: the fast paths agree with the reference per-value path, and errors name the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from service.errors import RequestError
from service.features import FeatureEncoder
from service.manifest import read_manifest
from service.payload import decode_allocate


@pytest.fixture(scope="module")
def encoder(model_dir: Path) -> FeatureEncoder:
    return FeatureEncoder(read_manifest(model_dir / "manifest.json"))


def _rows(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    region = rng.integers(0, 2, n)
    return np.column_stack([rng.normal(size=(n, 2)), region == 0, region == 1]).astype(np.float32)


def test_array_named_and_raw_categorical_forms_give_the_same_matrix(encoder: FeatureEncoder) -> None:
    x = _rows(40)
    as_arrays = [list(map(float, row)) for row in x]
    named = [dict(zip(encoder.names, map(float, row), strict=True)) for row in x]
    raw = [{"history": float(r[1]), "region": "north" if r[2] else "south", "recency": float(r[0])} for r in x]
    for features in (as_arrays, named, raw):
        matrix, unseen = encoder.encode(features)
        np.testing.assert_array_equal(matrix, x)
        assert unseen == 0
        # The reference path gives the identical matrix.
        careful, _ = encoder._careful(features)
        np.testing.assert_array_equal(careful, x)


def test_mixed_forms_in_one_batch_take_the_careful_path(encoder: FeatureEncoder) -> None:
    x = _rows(3)
    features: list[Any] = [
        list(map(float, x[0])),
        dict(zip(encoder.names, map(float, x[1]), strict=True)),
        {"recency": float(x[2, 0]), "history": float(x[2, 1]), "region": "north" if x[2, 2] else "south"},
    ]
    matrix, _ = encoder.encode(features)
    np.testing.assert_array_equal(matrix, x)


def test_unseen_category_encodes_as_zeros_like_training(encoder: FeatureEncoder) -> None:
    matrix, unseen = encoder.encode([{"recency": 1.0, "history": 2.0, "region": "west"}])
    np.testing.assert_array_equal(matrix, [[1.0, 2.0, 0.0, 0.0]])
    assert unseen == 1


def test_booleans_count_as_zero_one(encoder: FeatureEncoder) -> None:
    matrix, _ = encoder.encode([[0.5, 1, True, False]])
    np.testing.assert_array_equal(matrix, [[0.5, 1.0, 1.0, 0.0]])


@pytest.mark.parametrize(
    ("features", "detail"),
    [
        ({"recency": 1.0, "history": 2.0}, "individuals[0].features.region=north: missing feature"),
        ({"recency": 1.0, "history": 2.0, "region": "north", "age": 3}, "individuals[0].features.age: unknown feature"),
        ({"recency": "1.0", "history": 2.0, "region": "north"}, "individuals[0].features.recency: expected a number"),
        ({"recency": None, "history": 2.0, "region": "north"}, "features.recency: expected a number, got null"),
        ({"recency": 1.0, "history": 2.0, "region": 3}, "features.region: expected a category (string), got number"),
        ({"recency": 1e39, "history": 2.0, "region": "north"}, "features.recency: NaN or infinite"),
        ({"recency": 10**400, "history": 2.0, "region": "north"}, "features.recency: number out of range"),
        (
            {"recency": 1.0, "history": 2.0, "region": "north", "region=north": 1.0},
            "give either 'region' or its one-hot columns",
        ),
        ([1.0, 2.0, 3.0], "individuals[0].features: expected 4 values in manifest order, got 3"),
        ([1.0, 2.0, [3.0], 0.0], "individuals[0].features[2]: expected a number, got array"),
        ("x", "individuals[0].features: expected an object keyed by feature name"),
    ],
)
def test_bad_features_name_the_field(encoder: FeatureEncoder, features: Any, detail: str) -> None:
    with pytest.raises(RequestError) as error:
        encoder.encode([features])
    assert detail in error.value.detail
    assert error.value.status == 422


def _body(individuals: list[Any], **extra: Any) -> bytes:
    return orjson.dumps({"individuals": individuals, **extra})


@pytest.mark.parametrize(
    ("body", "detail", "status"),
    [
        (b"{not json", "body: invalid JSON", 422),
        (b"[1, 2]", "body: expected a JSON object", 422),
        (_body([]), "individuals: empty batch", 422),
        (orjson.dumps({"campaign": "x"}), "individuals: field required", 422),
        (orjson.dumps({"individuals": {"id": 1}}), "individuals: expected an array", 422),
        (_body([{"id": 1, "features": [0, 0, 0, 0]}], extra=1), "extra: unknown field", 422),
        (_body([{"id": 1, "features": [0, 0, 0, 0]}], campaign="bad campaign!"), "campaign: expected 1-64", 422),
        (_body([{"features": [0, 0, 0, 0]}]), "individuals[0].id: field required", 422),
        (_body([{"id": 1.5, "features": [0, 0, 0, 0]}]), "individuals[0].id: expected a string or an integer", 422),
        (_body([{"id": 1, "features": [0, 0, 0, 0], "x": 1}]), "individuals[0].x: unknown field", 422),
        (_body([7]), "individuals[0]: expected an object", 422),
        (_body([{"id": 1, "features": [0, 0, 0, 0]}] * 11), "batch of 11 exceeds the limit of 10", 413),
        (
            _body([{"id": 1, "features": [0, 0, 0, 0], "allowed_treatments": [0, 3]}]),
            "individuals[0].allowed_treatments: unknown treatment id 3 (ids are 0..2)",
            422,
        ),
        (
            _body([{"id": 1, "features": [0, 0, 0, 0], "allowed_treatments": []}]),
            "allowed_treatments: expected a non-empty array",
            422,
        ),
    ],
)
def test_bad_bodies_name_the_field(encoder: FeatureEncoder, body: bytes, detail: str, status: int) -> None:
    with pytest.raises(RequestError) as error:
        decode_allocate(body, encoder, n_treatments=3, max_batch=10)
    assert detail in error.value.detail
    assert error.value.status == status


def test_allowed_treatments_build_a_mask(encoder: FeatureEncoder) -> None:
    body = _body(
        [
            {"id": "a", "features": [0, 0, 1, 0], "allowed_treatments": [0, 2]},
            {"id": "b", "features": [0, 0, 1, 0]},
            {"id": "c", "features": [0, 0, 1, 0], "allowed_treatments": None},
        ]
    )
    batch = decode_allocate(body, encoder, n_treatments=3, max_batch=10)
    assert batch.ids == ["a", "b", "c"] and batch.campaign == "default"
    assert batch.allowed is not None
    np.testing.assert_array_equal(batch.allowed, [[True, False, True], [True, True, True], [True, True, True]])
