"""The typed fast path of the row body (`service.rows`) agrees with the reference decoder on every body."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from service.errors import RequestError
from service.features import FeatureEncoder
from service.manifest import read_manifest
from service.payload import AllocateBatch, _regular_batch, decode_reference

from .artifacts import write_artifact

NAMES = ["recency", "history", "region=north", "region=south"]
K = 3
MAX_BATCH = 5


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> FeatureEncoder:
    out: Path = tmp_path_factory.mktemp("rows-model")
    write_artifact(out, seed=0)
    return FeatureEncoder(read_manifest(out / "manifest.json"))


numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.integers(-(2**70), 2**70),
    st.booleans(),
)
odd_values = st.one_of(numbers, st.none(), st.text(max_size=3), st.sampled_from(["north", "south"]))
named = st.fixed_dictionaries({name: numbers for name in NAMES})
odd_named = st.dictionaries(st.sampled_from([*NAMES, "region", "junk"]), odd_values, max_size=5)
array = st.lists(numbers, min_size=4, max_size=4)
odd_array = st.lists(odd_values, min_size=3, max_size=5)
ids = st.one_of(st.text(max_size=3), st.integers(-(2**65), 2**65), st.text(min_size=255, max_size=258), st.none())
allowed = st.one_of(st.none(), st.lists(st.integers(-1, K), max_size=3))


def individual(features: st.SearchStrategy[Any], id_values: st.SearchStrategy[Any] = ids) -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries({"id": id_values, "features": features}, optional={"allowed_treatments": allowed})


valid_ids = st.one_of(st.text(max_size=3), st.integers(-(2**63), 2**64 - 1))
plain = st.one_of(st.floats(allow_nan=False, allow_infinity=False, width=32), st.integers(-(2**40), 2**40))
valid = st.one_of(st.fixed_dictionaries({name: plain for name in NAMES}), st.lists(plain, min_size=4, max_size=4))


bodies = st.fixed_dictionaries(
    {
        "individuals": st.one_of(
            st.lists(individual(valid, valid_ids), min_size=1, max_size=5),
            st.lists(individual(named), max_size=7),
            st.lists(individual(array), max_size=7),
            st.lists(individual(st.one_of(named, array, odd_named, odd_array)), max_size=4),
        )
    },
    optional={"campaign": st.one_of(st.sampled_from(["default", "spring", "a b", ""]), st.none(), st.integers())},
)


def _reference(body: bytes, encoder: FeatureEncoder) -> AllocateBatch | RequestError:
    try:
        return decode_reference(body, encoder, K, MAX_BATCH)
    except RequestError as error:
        return error


def _mask(batch: AllocateBatch) -> np.ndarray:
    return np.ones((len(batch.ids), K), dtype=bool) if batch.allowed is None else batch.allowed


@settings(max_examples=400, deadline=None)
@given(body=bodies)
def test_fast_path_agrees_with_the_reference(encoder: FeatureEncoder, body: dict[str, Any]) -> None:
    raw = json.dumps(body).encode()  # the stdlib writes integers of any size
    fast = _regular_batch(raw, encoder, K, MAX_BATCH)
    reference = _reference(raw, encoder)
    if fast is None:
        event("reference path")
        return  # the reference path decides (and names the error)
    event("fast path")
    assert isinstance(reference, AllocateBatch), f"fast path accepted what the reference refuses: {reference}"
    assert (fast.campaign, fast.ids, fast.unseen_categories) == (reference.campaign, reference.ids, 0)
    assert [type(i) for i in fast.ids] == [type(i) for i in reference.ids]
    np.testing.assert_array_equal(fast.features, reference.features)
    np.testing.assert_array_equal(_mask(fast), _mask(reference))


def test_regular_bodies_take_the_fast_path(encoder: FeatureEncoder) -> None:
    rows = [{"id": f"u{i}", "features": dict(zip(NAMES, [i, 0.5, 1, 0], strict=True))} for i in range(5)]
    assert _regular_batch(orjson.dumps({"individuals": rows}), encoder, K, MAX_BATCH) is not None
    arrays = [{"id": i, "features": [0.1, 2, 0, 1], "allowed_treatments": [0]} for i in range(3)]
    assert _regular_batch(orjson.dumps({"individuals": arrays, "campaign": "x"}), encoder, K, MAX_BATCH) is not None


@pytest.mark.parametrize(
    "raw",
    [
        b'{"individuals": [{"id": 1, "features": {"recency": 1, "recency": 2, "history": 0, '
        b'"region=north": 1, "region=south": 0}}]}',
        b'{"individuals": [{"id": 1, "id": "a", "features": [1, 2, 0, 1]}]}',
        b'{"individuals": [{"id": 1, "features": [1, 2, 0, 1]}], "individuals": []}',
    ],
)
def test_duplicate_keys_decode_as_the_reference_does(encoder: FeatureEncoder, raw: bytes) -> None:
    fast = _regular_batch(raw, encoder, K, MAX_BATCH)
    reference = _reference(raw, encoder)
    if fast is not None:
        assert isinstance(reference, AllocateBatch)
        assert fast.ids == reference.ids
        np.testing.assert_array_equal(fast.features, reference.features)


def test_an_escaped_allowed_treatments_key_is_still_respected(encoder: FeatureEncoder) -> None:
    raw = b'{"individuals": [{"id": 1, "features": [1, 2, 0, 1], "allowed\\u005ftreatments": [2]}]}'
    batch = _regular_batch(raw, encoder, K, MAX_BATCH)
    assert batch is not None and batch.allowed is not None
    assert batch.allowed.tolist() == [[False, False, True]]
