"""One /allocate call's decisions as logged, and their Redis Stream entry. Writes no Redis keys itself.

A `DecisionBatch` keeps the arrays /allocate already computed, and the shipper writes the whole batch as ONE
stream entry (format 2, columnar): O(1) Python work per request, the per-decision work is numpy copies. Entry
fields (bytes):
- `format`: "2";
- `token`, `count`: the batch token and the number of decisions N; decision ids are `<token>-<row in hex>`
  (`decision_ids`), so they need not be stored one by one;
- `time` (epoch seconds), `campaign`, `model_version`, `lambda`, `lambda_version`: once for the batch;
- `individuals`: the individual ids as the caller sent them (strings or integers), one JSON array;
- `treatment` (int64), `propensity` (float64), `explore` (bool, one byte each) and `features` (float32, N × D,
  encoded, manifest order): little-endian array bytes, C order; `layout` is a JSON object giving each array's
  dtype and shape, e.g. `{"treatment": ["<i8", [N]], ..., "features": ["<f4", [N, D]]}`.
Format 3 is several batches of one campaign and model in ONE entry, which the shipper writes when a round
holds more than one (single-individual requests: one XADD per round instead of one per request): `format` "3",
`campaign`, `model_version`, `count` (all decisions), `individuals` and the arrays concatenated in batch order
as in format 2, and `batches`: a JSON array of `[token, count, time, lambda, lambda_version]`, one per batch.
Entries without a `format` field are format 1 (issue 14's first layout, one entry per decision; the sink still
reads them): `id`, `time`, `campaign`, `individual`, `model_version`, `lambda`, `lambda_version`, `treatment`,
`propensity`, `explore` ("1"/"0") and `features` (little-endian float32 bytes).
"""

from __future__ import annotations

import os
import random
import secrets
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

FORMAT = "2"
MERGED_FORMAT = "3"
# The arrays of a format-2 entry: field → (dtype written, number of dimensions).
ARRAYS: dict[str, tuple[str, int]] = {
    "treatment": ("<i8", 1),
    "propensity": ("<f8", 1),
    "explore": ("|b1", 1),
    "features": ("<f4", 2),
}


# Seeded from the OS once per process, and again in a forked child (so no two processes share a state): a
# token then costs a Mersenne Twister draw, where `secrets` paid a getrandom system call per request.
_TOKENS = random.Random(secrets.token_bytes(32))
os.register_at_fork(after_in_child=lambda: _TOKENS.seed(secrets.token_bytes(32)))


def new_batch_token() -> str:
    """A random 64-bit token, unique across replicas and restarts, shared by one batch's decision ids."""
    return f"{_TOKENS.getrandbits(64):016x}"


def decision_ids(token: str, n: int) -> list[str]:
    """The ids of a batch's n decisions: the batch token and the row's position."""
    return list(map(token.__add__, _row_suffixes(n)))


def _row_suffixes(n: int) -> list[str]:
    """`-<row in hex>` for rows 0..n-1, formatted once per process (an f-string per row cost 0.2 ms per 1,000)."""
    global _SUFFIXES
    if len(_SUFFIXES) < n:
        _SUFFIXES = [f"-{i:x}" for i in range(max(n, 2 * len(_SUFFIXES)))]
    return _SUFFIXES[:n]


_SUFFIXES: list[str] = []


def _individuals_json(individuals: list[str | int]) -> bytes:
    try:
        return orjson.dumps(individuals)
    except orjson.JSONEncodeError:  # an integer id beyond 64 bits: logged as its text, as format 1 did
        return orjson.dumps([str(individual) for individual in individuals])


@dataclass(frozen=True)
class DecisionBatch:
    token: str  # decision ids are `<token>-<row in hex>`
    time: float  # epoch seconds of the request
    campaign: str
    individuals: list[str | int]  # (N,) ids as the caller sent them
    model_version: str
    lam: float
    lambda_version: int
    treatment: NDArray[np.int64]  # (N,) given
    propensity: NDArray[np.float64]  # (N,)
    explore: NDArray[np.bool_]  # (N,)
    features: NDArray[np.float32]  # (N, D) encoded, manifest order

    @property
    def size(self) -> int:
        return len(self.treatment)

    @property
    def decision_ids(self) -> list[str]:
        return decision_ids(self.token, self.size)

    def entry(self) -> dict[str, bytes | str]:
        """The batch's one stream entry (format 2, see the module docstring)."""
        return {
            "format": FORMAT,
            "token": self.token,
            "count": str(self.size),
            "time": repr(self.time),
            "campaign": self.campaign,
            "model_version": self.model_version,
            "lambda": repr(float(self.lam)),
            "lambda_version": str(self.lambda_version),
            "individuals": _individuals_json(self.individuals),
            **_array_fields([self]),
        }

    @classmethod
    def from_entry(cls, fields: dict[bytes, bytes]) -> DecisionBatch:
        """A format-2 entry read back; ValueError naming the field when it is malformed."""
        if fields.get(b"format") != FORMAT.encode():
            raise ValueError(f"field 'format': expected {FORMAT!r}, got {fields.get(b'format')!r}")
        try:
            n = int(_field(fields, "count"))
        except ValueError as error:
            raise ValueError(f"field 'count' unreadable: {error}") from error
        individuals, arrays = _columns(fields, n)
        return cls(
            token=_field(fields, "token").decode(),
            time=float(_field(fields, "time")),
            campaign=_field(fields, "campaign").decode(),
            individuals=individuals,
            model_version=_field(fields, "model_version").decode(),
            lam=float(_field(fields, "lambda")),
            lambda_version=int(_field(fields, "lambda_version")),
            **arrays,
        )


def merged_entry(batches: list[DecisionBatch]) -> dict[str, bytes | str]:
    """Several batches of one campaign and model as one stream entry (format 3, see the module docstring)."""
    first = batches[0]
    if any(b.campaign != first.campaign or b.model_version != first.model_version for b in batches):
        raise ValueError("one entry holds batches of one campaign and model version")
    meta = [[b.token, b.size, b.time, float(b.lam), b.lambda_version] for b in batches]
    individuals = [individual for b in batches for individual in b.individuals]
    return {
        "format": MERGED_FORMAT,
        "campaign": first.campaign,
        "model_version": first.model_version,
        "count": str(len(individuals)),
        "batches": orjson.dumps(meta),
        "individuals": _individuals_json(individuals),
        **_array_fields(batches),
    }


def _array_fields(batches: list[DecisionBatch]) -> dict[str, bytes]:
    """`layout` and the little-endian bytes of each array of `ARRAYS`, the batches' rows in order."""
    arrays = {
        name: np.ascontiguousarray(
            getattr(batches[0], name) if len(batches) == 1 else np.concatenate([getattr(b, name) for b in batches]),
            dtype=dtype,
        )
        for name, (dtype, _) in ARRAYS.items()
    }
    layout = {name: [array.dtype.str, list(array.shape)] for name, array in arrays.items()}
    return {"layout": orjson.dumps(layout), **{name: array.tobytes() for name, array in arrays.items()}}


def batches_from_entry(fields: dict[bytes, bytes]) -> list[DecisionBatch]:
    """The batches of a format-2 or format-3 entry, in the order they were decided; ValueError naming the field."""
    if fields.get(b"format") != MERGED_FORMAT.encode():
        return [DecisionBatch.from_entry(fields)]
    try:
        n = int(_field(fields, "count"))
        meta = orjson.loads(_field(fields, "batches"))
        parts = [
            (str(token), int(size), float(when), float(lam), int(version)) for token, size, when, lam, version in meta
        ]
    except (ValueError, TypeError, orjson.JSONDecodeError) as error:
        raise ValueError(f"field 'count' or 'batches' unreadable: {error}") from error
    if sum(size for _, size, *_ in parts) != n or any(size < 1 for _, size, *_ in parts):
        raise ValueError(f"field 'batches': batch sizes do not add up to the {n} decisions of the entry")
    individuals, arrays = _columns(fields, n)
    campaign, model_version = _field(fields, "campaign").decode(), _field(fields, "model_version").decode()
    batches, start = [], 0
    for token, size, when, lam, version in parts:
        rows = slice(start, start + size)
        start += size
        batches.append(
            DecisionBatch(
                token=token,
                time=when,
                campaign=campaign,
                individuals=individuals[rows],
                model_version=model_version,
                lam=lam,
                lambda_version=version,
                **{name: array[rows] for name, array in arrays.items()},
            )
        )
    return batches


def _columns(fields: dict[bytes, bytes], n: int) -> tuple[list[str | int], dict[str, Any]]:
    """The individuals and the arrays (typed as `DecisionBatch` holds them) of an entry of n decisions."""
    try:
        layout = orjson.loads(_field(fields, "layout"))
        individuals = orjson.loads(_field(fields, "individuals"))
    except orjson.JSONDecodeError as error:
        raise ValueError(f"field 'layout' or 'individuals' unreadable: {error}") from error
    if not isinstance(individuals, list) or len(individuals) != n:
        raise ValueError(f"field 'individuals': expected a JSON array of {n} ids")
    arrays = {name: _array(fields, layout, name, n) for name in ARRAYS}
    return individuals, {
        "treatment": arrays["treatment"].astype(np.int64, copy=False),
        "propensity": arrays["propensity"].astype(np.float64, copy=False),
        "explore": arrays["explore"].astype(np.bool_, copy=False),
        "features": arrays["features"].astype(np.float32, copy=False),
    }


def _field(fields: dict[bytes, bytes], name: str) -> bytes:
    value = fields.get(name.encode())
    if value is None:
        raise ValueError(f"field {name!r} missing")
    return value


def _array(fields: dict[bytes, bytes], layout: Any, name: str, n: int) -> NDArray[Any]:
    """One array field, checked against its layout: n rows, the expected dtype kind and number of dims."""
    try:
        dtype_str, shape = layout[name]
        dtype = np.dtype(dtype_str)
        shape = tuple(int(d) for d in shape)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"field 'layout': no valid dtype and shape for {name!r}") from error
    expected = np.dtype(ARRAYS[name][0])
    if dtype.kind != expected.kind or len(shape) != ARRAYS[name][1] or shape[0] != n:
        raise ValueError(f"field {name!r}: layout {dtype_str} {list(shape)} does not fit {n} rows of {expected}")
    data = _field(fields, name)
    if len(data) != dtype.itemsize * int(np.prod(shape)):
        raise ValueError(f"field {name!r}: {len(data)} bytes, layout {dtype_str} {list(shape)} needs another size")
    return np.frombuffer(data, dtype=dtype).reshape(shape)
