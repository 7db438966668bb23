"""The /allocate request body, decoded with orjson straight into numpy (not through pydantic), and the response.

Two body forms: rows (`individuals`, one object per individual; the default, here) and columns (`ids` plus
`columns` or `matrix`, for batch callers; `service.columnar`). Both decode to the same `AllocateBatch`.

Pydantic-parsing a list of floats per individual costs ~4× the JSON decoding itself, so the hot path checks
types with C-level passes over the decoded lists and builds the (N, D) float32 matrix directly. The pydantic
models in `service.schemas` document the same body in OpenAPI; they are not used to parse it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import orjson
from numpy.typing import NDArray

from service.errors import RequestError, json_type
from service.features import FeatureEncoder
from service.limits import CAMPAIGN_PATTERN, MAX_ID_LENGTH
from service.rows import decode_regular_rows

BODY_FIELDS = frozenset({"campaign", "individuals"})
COLUMNAR_MARKERS = frozenset({"ids", "columns", "matrix"})  # any of these and no `individuals`: service.columnar
INDIVIDUAL_FIELDS = frozenset({"id", "features", "allowed_treatments"})
ID_TYPES = frozenset({str, int})

Identifier = str | int


@dataclass(frozen=True)
class AllocateBatch:
    """A validated /allocate request."""

    campaign: str
    ids: list[Identifier]  # (N,) as sent, echoed back in request order
    features: NDArray[np.float32]  # (N, D) manifest order
    allowed: NDArray[np.bool_] | None  # (N, K) allowed treatments, None when every row allows all
    unseen_categories: int  # categorical values not in the manifest (encoded as all zeros)
    columnar_response: bool = False  # answer with one array per field (`"response": "columns"`)


def parse_campaign(value: Any, field: str = "campaign") -> str:
    if not isinstance(value, str) or not CAMPAIGN_PATTERN.fullmatch(value):
        raise RequestError(field, "expected 1-64 characters from A-Z a-z 0-9 _ . : -")
    return value


def decode_allocate(body: bytes, encoder: FeatureEncoder, n_treatments: int, max_batch: int) -> AllocateBatch:
    """Decode and validate an /allocate body; RequestError (422, or 413 over `max_batch`) names the field."""
    batch = _regular_batch(body, encoder, n_treatments, max_batch)
    return batch if batch is not None else decode_reference(body, encoder, n_treatments, max_batch)


def decode_reference(body: bytes, encoder: FeatureEncoder, n_treatments: int, max_batch: int) -> AllocateBatch:
    """Any body, through orjson and per-field checks: the behaviour the fast path must agree with."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise RequestError("body", f"invalid JSON ({error})") from error
    if not isinstance(data, dict):
        raise RequestError("body", f"expected a JSON object with 'individuals', got {json_type(data)}")
    if "individuals" not in data and not COLUMNAR_MARKERS.isdisjoint(data):
        # Imported here: the columnar decoder builds on this module's checks (AllocateBatch, ids, campaign).
        from service.columnar import decode_columnar

        return decode_columnar(data, encoder, n_treatments, max_batch)
    for key in data:
        if key not in BODY_FIELDS:
            raise RequestError(key, f"unknown field (expected {sorted(BODY_FIELDS)})")
    campaign = parse_campaign(data.get("campaign", "default"))
    if "individuals" not in data:
        raise RequestError("individuals", "field required")
    individuals = data["individuals"]
    if not isinstance(individuals, list):
        raise RequestError("individuals", f"expected an array of individuals, got {json_type(individuals)}")
    if not individuals:
        raise RequestError("individuals", "empty batch: send at least one individual")
    if len(individuals) > max_batch:
        raise RequestError("individuals", f"batch of {len(individuals)} exceeds the limit of {max_batch}", status=413)
    ids, features, fields = _columns(individuals)
    matrix, unseen = encoder.encode(features)
    allowed = _allowed(individuals, n_treatments) if "allowed_treatments" in fields else None
    return AllocateBatch(campaign, ids, matrix, allowed, unseen)


def _regular_batch(body: bytes, encoder: FeatureEncoder, n_treatments: int, max_batch: int) -> AllocateBatch | None:
    """The batch by `service.rows`' typed fast path when the body is regular and valid, else None.

    Anything that fails here goes down the reference path, which raises the exact error.
    """
    rows = decode_regular_rows(body, encoder.feature_names, n_treatments, max_batch)
    if rows is None:
        return None
    with np.errstate(over="ignore"):  # beyond float32 → inf: the reference path names the field
        matrix = rows.features.astype(np.float32)
    if not np.isfinite(matrix).all():
        return None
    allowed = None
    if rows.allowed is not None:  # ids already checked by msgspec: this cannot raise
        allowed = allowed_mask(rows.allowed, n_treatments, lambda i: f"individuals[{i}].allowed_treatments")
    return AllocateBatch(rows.campaign, rows.ids, matrix, allowed, 0)


def _columns(individuals: list[Any]) -> tuple[list[Identifier], list[Any], set[str]]:
    """ids and features of every individual and the union of their field names (C-level passes)."""
    try:
        ids = [row["id"] for row in individuals]
        features = [row["features"] for row in individuals]
        fields: set[str] = set().union(*individuals)
    except (KeyError, TypeError):
        ids, features, fields = [], [], set()
    if not ids or not fields <= INDIVIDUAL_FIELDS or not set(map(type, ids)) <= ID_TYPES:
        _diagnose(individuals)
    # Id length: one C-level pass when every id is a string (the usual case).
    id_types = set(map(type, ids))
    if id_types == {str} and max(map(len, ids)) > MAX_ID_LENGTH:
        _diagnose(individuals)
    if len(id_types) > 1 and max(len(i) for i in ids if isinstance(i, str)) > MAX_ID_LENGTH:
        _diagnose(individuals)
    return ids, features, fields


def _diagnose(individuals: list[Any]) -> None:
    """Raise the RequestError for the first malformed individual (the fast pass found one)."""
    for i, row in enumerate(individuals):
        field = f"individuals[{i}]"
        if not isinstance(row, dict):
            raise RequestError(field, f"expected an object with 'id' and 'features', got {json_type(row)}")
        for key in row:
            if key not in INDIVIDUAL_FIELDS:
                raise RequestError(f"{field}.{key}", f"unknown field (expected {sorted(INDIVIDUAL_FIELDS)})")
        for key in ("id", "features"):
            if key not in row:
                raise RequestError(f"{field}.{key}", "field required")
        identifier = row["id"]
        if type(identifier) not in ID_TYPES:
            raise RequestError(f"{field}.id", f"expected a string or an integer, got {json_type(identifier)}")
        if isinstance(identifier, str) and len(identifier) > MAX_ID_LENGTH:
            raise RequestError(f"{field}.id", f"longer than {MAX_ID_LENGTH} characters")
    raise RequestError("individuals", "malformed individuals")  # unreachable when the fast pass is consistent


def _allowed(individuals: list[dict[str, Any]], n_treatments: int) -> NDArray[np.bool_]:
    """(N, K) mask from each individual's optional `allowed_treatments` (null or absent: all allowed)."""
    values = [row.get("allowed_treatments") for row in individuals]
    return allowed_mask(values, n_treatments, lambda i: f"individuals[{i}].allowed_treatments")


def allowed_mask(values: list[Any], n_treatments: int, field: Callable[[int], str]) -> NDArray[np.bool_]:
    """(N, K) mask from N entries, each null (all allowed) or a non-empty list of treatment ids."""
    mask = np.ones((len(values), n_treatments), dtype=bool)
    for i, allowed in enumerate(values):
        if allowed is None:
            continue
        if not isinstance(allowed, list) or not allowed:
            raise RequestError(field(i), f"expected a non-empty array of treatment ids, got {json_type(allowed)}")
        ids = [_treatment_id(treatment, n_treatments, field(i)) for treatment in allowed]
        mask[i] = False
        mask[i, ids] = True
    return mask


class _Allocation(msgspec.Struct, gc=False):
    """One allocation as the response writes it (field order is key order; `schemas.Allocation` documents it)."""

    id: Identifier
    treatment: int
    treatment_name: str
    expected_revenue: float
    expected_cost: float


class _DecidedAllocation(_Allocation, gc=False):
    """An allocation with the id of its logged decision (`service.decisions`)."""

    decision_id: str


# msgspec encodes (and decodes) holding the GIL throughout, so one encoder serves every thread.
_RESPONSE_ENCODER = msgspec.json.Encoder()


def _treatment_id(value: Any, n_treatments: int, field: str) -> int:
    """A treatment id; 3.0 is 3 (JSON Schema's integer type admits it, so clients generated from it send it)."""
    if type(value) is float and value.is_integer():
        value = int(value)
    if type(value) is not int or not 0 <= value < n_treatments:
        raise RequestError(field, f"unknown treatment id {value!r} (ids are 0..{n_treatments - 1})")
    return value


def encode_allocations(
    ids: list[Identifier],
    treatment: NDArray[np.int64],
    revenue: NDArray[np.float32],
    cost: NDArray[np.float32],
    treatment_names: list[str],
    header: dict[str, Any],
    decision_ids: list[str] | None = None,
    columnar: bool = False,
) -> bytes:
    """The /allocate response body: `header` fields plus one allocation per individual, in request order.

    treatment: (N,) chosen arm; revenue, cost: (N, K) predictions, reported at the chosen arm; decision_ids
    (N,), when given, are returned per allocation so outcomes can be attributed to decisions. Structs, built
    by `map` over columns, cost less than a dict per individual (docs/benchmarks.md, serve). `columnar`:
    `allocations` is one object of arrays, the same fields as a row's (`schemas.AllocationColumns`).
    """
    rows = np.arange(len(treatment))
    chosen = treatment.tolist()
    # The fields of `_DecidedAllocation`, in its order, one column each (decision_id only when given).
    columns: dict[str, Any] = {
        "id": ids,
        "treatment": chosen,
        "treatment_name": list(map(treatment_names.__getitem__, chosen)),
        "expected_revenue": revenue[rows, treatment].tolist(),
        "expected_cost": cost[rows, treatment].tolist(),
    }
    if decision_ids is not None:
        columns["decision_id"] = decision_ids
    if columnar:
        return _RESPONSE_ENCODER.encode({"allocations": columns, **header})
    row = _Allocation if decision_ids is None else _DecidedAllocation
    return _RESPONSE_ENCODER.encode({"allocations": list(map(row, *columns.values())), **header})
