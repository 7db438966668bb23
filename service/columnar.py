"""The columnar /allocate body, for batch callers: ids as one array, features as columns or as a matrix.

    {"campaign": "spring", "ids": ["a", "b"], "columns": [[0.1, 0.4], [2.0, 3.5], ...]}   # D arrays of N values
    {"campaign": "spring", "ids": ["a", "b"], "matrix": [[0.1, 2.0, ...], [0.4, 3.5, ...]]}  # N arrays of D values

Columns are in the order of `GET /model`'s `features` (one-hot columns included, as numbers). An optional
`allowed_treatments` array holds, per individual, null or the list of treatment ids it may get. The values go
from orjson's lists into numpy in one C-level conversion (`np.array`), with no per-individual Python work;
only when that conversion finds something that is not a number does a per-value pass name the bad field.
`"response": "columns"` asks for the answer in the same shape: `allocations` as one array per field.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.errors import RequestError, json_type
from service.features import NUMBER_TYPES, FeatureEncoder
from service.payload import (
    ID_TYPES,
    MAX_ID_LENGTH,
    AllocateBatch,
    Identifier,
    allowed_mask,
    parse_campaign,
)

COLUMNAR_FIELDS = frozenset({"campaign", "ids", "columns", "matrix", "allowed_treatments", "response"})
RESPONSE_FORMS = ("rows", "columns")
NUMERIC_KINDS = frozenset("biuf")  # numpy dtype kinds of JSON numbers and booleans


def decode_columnar(data: dict[str, Any], encoder: FeatureEncoder, n_treatments: int, max_batch: int) -> AllocateBatch:
    """Validate a decoded columnar body; RequestError (422, or 413 over `max_batch`) names the field."""
    for key in data:
        if key not in COLUMNAR_FIELDS:
            raise RequestError(key, f"unknown field (expected {sorted(COLUMNAR_FIELDS)})")
    campaign = parse_campaign(data.get("campaign", "default"))
    ids = _ids(data.get("ids"), max_batch)
    n = len(ids)
    if ("columns" in data) == ("matrix" in data):
        raise RequestError(
            "columns", "give exactly one of 'columns' (one array per feature) or 'matrix' (one array per individual)"
        )
    if "columns" in data:
        features = _numbers(data["columns"], "columns", (encoder.width, n), encoder.names).T
    else:
        features = _numbers(data["matrix"], "matrix", (n, encoder.width), encoder.names)
    allowed_values = data.get("allowed_treatments")
    allowed = None
    if allowed_values is not None:
        if not isinstance(allowed_values, list) or len(allowed_values) != n:
            raise RequestError(
                "allowed_treatments", f"expected an array of {n} entries (null or treatment ids), one per id"
            )
        allowed = allowed_mask(allowed_values, n_treatments, lambda i: f"allowed_treatments[{i}]")
    response = data.get("response", "rows")
    if response not in RESPONSE_FORMS:
        got = repr(response[:32]) if isinstance(response, str) else json_type(response)
        raise RequestError("response", f"expected one of {list(RESPONSE_FORMS)}, got {got}")
    return AllocateBatch(campaign, ids, np.ascontiguousarray(features), allowed, 0, response == "columns")


def _ids(ids: Any, max_batch: int) -> list[Identifier]:
    if ids is None:
        raise RequestError("ids", "field required")
    if not isinstance(ids, list):
        raise RequestError("ids", f"expected an array of ids, got {json_type(ids)}")
    if not ids:
        raise RequestError("ids", "empty batch: send at least one id")
    if len(ids) > max_batch:
        raise RequestError("ids", f"batch of {len(ids)} exceeds the limit of {max_batch}", status=413)
    types = set(map(type, ids))
    if types == {str}:  # the usual case: one C-level pass for the lengths
        too_long = max(map(len, ids)) > MAX_ID_LENGTH
    else:
        too_long = str in types and max(len(i) for i in ids if type(i) is str) > MAX_ID_LENGTH
    if types <= ID_TYPES and not too_long:
        return ids
    for i, identifier in enumerate(ids):
        if type(identifier) not in ID_TYPES:
            raise RequestError(f"ids[{i}]", f"expected a string or an integer, got {json_type(identifier)}")
        if isinstance(identifier, str) and len(identifier) > MAX_ID_LENGTH:
            raise RequestError(f"ids[{i}]", f"longer than {MAX_ID_LENGTH} characters")
    raise RequestError("ids", "malformed ids")  # unreachable when the fast check is consistent


def _numbers(values: Any, field: str, shape: tuple[int, int], names: list[str]) -> NDArray[np.float32]:
    """`values` as a float32 array of `shape`; RequestError names the first bad array or value.

    `np.array` builds the whole array in C; JSON numbers (and booleans) give a numeric dtype, anything else
    (a string, null, an object, a ragged or nested array) gives another dtype, shape or a ValueError.
    """
    try:
        with np.errstate(over="ignore"):
            array = np.array(values)
    except (ValueError, OverflowError):
        array = None
    if array is None or array.dtype.kind not in NUMERIC_KINDS or array.shape != shape:
        # Raises unless every value is a number: then only integers beyond int64 kept the dtype off numbers.
        _diagnose(values, field, shape, names)
        array = np.array(values, dtype=np.float64)
    with np.errstate(over="ignore"):  # beyond float32 → inf, reported below with its field
        matrix = array.astype(np.float32)
    finite = np.isfinite(matrix)
    if not finite.all():
        outer, inner = (int(x[0]) for x in np.nonzero(~finite))
        raise RequestError(f"{field}[{outer}][{inner}]", f"{_feature(field, outer, inner, names)}: NaN or infinite")
    return matrix


def _feature(field: str, outer: int, inner: int, names: list[str]) -> str:
    """Which feature and individual `field[outer][inner]` is, for error messages."""
    j, i = (outer, inner) if field == "columns" else (inner, outer)
    return f"feature {names[j]!r} of individual {i}"


def _diagnose(values: Any, field: str, shape: tuple[int, int], names: list[str]) -> None:
    """Raise the RequestError for the first array or value that is not as `shape` and JSON numbers require."""
    outer_n, inner_n = shape
    what = "one array per feature (GET /model order)" if field == "columns" else "one array per individual"
    if not isinstance(values, list) or len(values) != outer_n:
        got = f"{len(values)} arrays" if isinstance(values, list) else json_type(values)
        raise RequestError(field, f"expected {outer_n} arrays, {what}; got {got}")
    for outer, row in enumerate(values):
        if not isinstance(row, list) or len(row) != inner_n:
            got = f"{len(row)} values" if isinstance(row, list) else json_type(row)
            raise RequestError(f"{field}[{outer}]", f"expected an array of {inner_n} numbers, got {got}")
        for inner, value in enumerate(row):
            if type(value) not in NUMBER_TYPES:
                where = _feature(field, outer, inner, names)
                raise RequestError(f"{field}[{outer}][{inner}]", f"{where}: expected a number, got {json_type(value)}")
            try:
                float(value)
            except OverflowError as error:
                where = _feature(field, outer, inner, names)
                raise RequestError(f"{field}[{outer}][{inner}]", f"{where}: number out of range") from error
