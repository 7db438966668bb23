"""Decoded JSON features → the (N, D) float32 matrix the ONNX model takes, in manifest order.

Each individual's features are either an array in manifest order or an object keyed by feature name; a raw
categorical column (`{"region": "north"}`) is one-hot encoded into its `region=…` columns, and a category
not in the manifest encodes as all zeros, as in training. JSON booleans count as 0/1.

Speed matters here (JSON decoding is the service's ceiling), so the common shapes — every row an array, or
every row an object with the same key set — are converted with C-level `map`/`itemgetter` passes and one
numpy conversion. Anything irregular goes through `_careful`, a plain per-value loop that is the reference
behaviour and names the first bad field.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.errors import RequestError, json_type
from service.manifest import Manifest

Float32Array = NDArray[np.float32]
NUMBER_TYPES = frozenset({float, int, bool})


def _getter(names: Sequence[str]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """itemgetter that always returns a tuple (itemgetter of one name returns the bare value)."""
    if len(names) == 1:
        (name,) = names
        return lambda row: (row[name],)
    return itemgetter(*names)


class FeatureEncoder:
    """Builds feature matrices for one manifest; `encode` returns (matrix, number of unseen categories)."""

    def __init__(self, manifest: Manifest) -> None:
        self.names = list(manifest.features)
        self.feature_names = tuple(self.names)  # hashable: `service.rows` keeps one typed decoder per name tuple
        self.width = len(self.names)
        self.index = {name: j for j, name in enumerate(self.names)}
        # raw column → {category: column index of its one-hot feature}
        self.categorical = {
            column: {category: self.index[f"{column}={category}"] for category in categories}
            for column, categories in manifest.categorical.items()
        }
        self.one_hot_of = {f"{c}={v}": c for c, cats in manifest.categorical.items() for v in cats}
        self.numeric = [name for name in self.names if name not in self.one_hot_of]
        self.numeric_columns = np.array([self.index[name] for name in self.numeric], dtype=np.int64)
        self.raw_width = len(self.numeric) + len(self.categorical)
        self._all = _getter(self.names)
        self._numeric = _getter(self.numeric) if self.numeric else None

    def encode(self, features: list[Any]) -> tuple[Float32Array, int]:
        """(N, D) float32 features for N decoded `features` values; RequestError names the first bad one."""
        matrix = self._fast(features)
        unseen = 0
        if matrix is None:
            matrix, unseen = self._careful(features)
        self._check_finite(matrix)
        return matrix, unseen

    # --- fast paths: regular batches ------------------------------------------------------------------
    def _fast(self, features: list[Any]) -> Float32Array | None:
        """The matrix for a regular batch, or None to fall back to `_careful` (which also reports errors)."""
        row_types = set(map(type, features))
        lengths = set(map(len, features)) if row_types <= {list, dict} else set()
        try:
            if row_types == {list} and lengths == {self.width}:
                return _numbers(features, len(features), self.width)
            if row_types == {dict} and lengths == {self.width}:
                return _numbers(list(map(self._all, features)), len(features), self.width)
            if row_types == {dict} and self.categorical and lengths == {self.raw_width}:
                return self._fast_raw(features)
        except (KeyError, TypeError, ValueError, OverflowError):
            return None
        return None

    def _fast_raw(self, features: list[dict[str, Any]]) -> Float32Array | None:
        """Rows holding every numeric feature plus each categorical column's raw value."""
        n = len(features)
        matrix = np.zeros((n, self.width), dtype=np.float32)
        if self._numeric is not None:
            numeric = _numbers(list(map(self._numeric, features)), n, len(self.numeric))
            if numeric is None:
                return None
            matrix[:, self.numeric_columns] = numeric
        rows = np.arange(n)
        for column, lookup in self.categorical.items():
            codes = list(map(lookup.get, map(itemgetter(column), features)))
            if None in codes:  # unseen, non-string or missing: let the careful path decide and count
                return None
            matrix[rows, np.asarray(codes, dtype=np.int64)] = 1.0
        return matrix

    # --- reference path: any shape, precise errors ----------------------------------------------------
    def _careful(self, features: list[Any]) -> tuple[Float32Array, int]:
        matrix = np.zeros((len(features), self.width), dtype=np.float32)
        unseen = 0
        with np.errstate(over="ignore"):  # beyond float32 → inf, reported by _check_finite with its field
            for i, row in enumerate(features):
                unseen += self._careful_row(row, matrix[i], f"individuals[{i}].features")
        return matrix, unseen

    def _careful_row(self, row: Any, out: Float32Array, field: str) -> int:
        if isinstance(row, list):
            if len(row) != self.width:
                raise RequestError(field, f"expected {self.width} values in manifest order, got {len(row)}")
            for j, value in enumerate(row):
                out[j] = _number(value, f"{field}[{j}]")
            return 0
        if isinstance(row, dict):
            return self._careful_object(row, out, field)
        raise RequestError(
            field, f"expected an object keyed by feature name or an array in manifest order, got {json_type(row)}"
        )

    def _careful_object(self, row: dict[str, Any], out: Float32Array, field: str) -> int:
        """Fill one (D,) row from a named-feature object; returns 1 per unseen category."""
        unseen = 0
        for key, value in row.items():
            if key in self.index:
                raw = self.one_hot_of.get(key)
                if raw is not None and raw in row:
                    raise RequestError(f"{field}.{key}", f"give either {raw!r} or its one-hot columns, not both")
                out[self.index[key]] = _number(value, f"{field}.{key}")
            elif key in self.categorical:
                if not isinstance(value, str):
                    raise RequestError(f"{field}.{key}", f"expected a category (string), got {json_type(value)}")
                column = self.categorical[key].get(value)
                if column is None:
                    unseen += 1
                else:
                    out[column] = 1.0
            else:
                raise RequestError(f"{field}.{key}", "unknown feature (GET /model lists the features)")
        missing = [n for n in self.names if n not in row and self.one_hot_of.get(n) not in row]
        if missing:
            raise RequestError(f"{field}.{missing[0]}", f"missing feature (missing: {missing[:5]})")
        return unseen

    def _check_finite(self, matrix: Float32Array) -> None:
        finite = np.isfinite(matrix)
        if not finite.all():
            i, j = (int(x[0]) for x in np.nonzero(~finite))
            raise RequestError(
                f"individuals[{i}].features.{self.names[j]}", "NaN or infinite (or beyond the float32 range)"
            )


def _numbers(rows: list[Any], n: int, width: int) -> Float32Array | None:
    """(n, width) float32 from n sequences of JSON numbers, or None if any value is not a number."""
    flat = list(chain.from_iterable(rows))
    if len(flat) != n * width or not set(map(type, flat)) <= NUMBER_TYPES:
        return None
    # float64 first: a huge int raises OverflowError here instead of wrapping; beyond float32 → inf, caught later.
    with np.errstate(over="ignore"):
        return np.fromiter(flat, dtype=np.float64, count=n * width).reshape(n, width).astype(np.float32)


def _number(value: Any, field: str) -> float:
    if type(value) not in NUMBER_TYPES:
        raise RequestError(field, f"expected a number, got {json_type(value)}")
    try:
        return float(value)
    except OverflowError as error:
        raise RequestError(field, "number out of range") from error
