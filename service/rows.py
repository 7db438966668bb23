"""The fast path of the row body: a msgspec decoder typed for the loaded model's features.

orjson builds a dict per individual and per `features` object, and every check after it is another pass
over Python objects. A msgspec decoder generated from the manifest (one struct field per feature name)
checks field names, id types and that every feature value is a number while it decodes, in C, and structs
are cheaper to build than dicts. What is left per individual is one `astuple` and one numpy conversion.

It only takes regular bodies: every individual's features an object with exactly the manifest's numeric
feature names, or every one an array of D numbers. Anything else (raw categorical values, booleans, mixed
forms, any error) returns None and `service.payload` decodes the body the reference way, which also writes
the error message. So this path never decides what is valid; tests check it agrees with the reference.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import chain
from operator import attrgetter
from typing import Any, NamedTuple

import msgspec
import numpy as np
from numpy.typing import NDArray

_ID = attrgetter("id")
_FEATURES = attrgetter("features")
_ALLOWED = attrgetter("allowed_treatments")


class RegularRows(NamedTuple):
    """A regular row body, decoded: not yet checked for campaign pattern, batch size, id length or ranges."""

    campaign: str
    ids: list[str | int]
    features: NDArray[np.float64]  # (N, D) manifest order
    allowed: list[list[int] | None] | None  # per individual, None when no individual sent the field


class _Typed(NamedTuple):
    decoder: msgspec.json.Decoder[Any]
    features_type: type


@lru_cache(maxsize=16)
def _typed(names: tuple[str, ...]) -> _Typed:
    """The decoder for bodies of a model with these feature names (struct fields must be identifiers)."""
    fields = [f"f{j}" for j in range(len(names))]
    features = msgspec.defstruct(
        "NamedFeatures",
        [(field, float) for field in fields],  # msgspec's float takes JSON integers too, not booleans
        rename=dict(zip(fields, names, strict=True)),
        forbid_unknown_fields=True,
        gc=False,
    )
    individual = msgspec.defstruct(
        "Individual",
        [("id", str | int), ("features", features | list[float]), ("allowed_treatments", list[int] | None, None)],
        forbid_unknown_fields=True,
        gc=False,
    )
    body = msgspec.defstruct(
        "AllocateRows",
        [("individuals", list[individual]), ("campaign", str, "default")],  # type: ignore[valid-type]
        forbid_unknown_fields=True,
        gc=False,
    )
    return _Typed(msgspec.json.Decoder(body), features)


def decode_regular_rows(body: bytes, names: tuple[str, ...]) -> RegularRows | None:
    """The decoded body when it is a regular row body for these feature names, else None."""
    typed = _typed(names)
    try:
        request = typed.decoder.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    individuals = request.individuals
    n, width = len(individuals), len(names)
    features = list(map(_FEATURES, individuals))
    kinds = set(map(type, features))
    if kinds == {typed.features_type}:
        values = chain.from_iterable(map(msgspec.structs.astuple, features))
    elif kinds == {list} and set(map(len, features)) == {width}:
        values = chain.from_iterable(features)
    else:
        return None  # empty, mixed forms, or arrays of the wrong length: the reference path decides
    matrix = np.fromiter(values, dtype=np.float64, count=n * width).reshape(n, width)
    allowed = list(map(_ALLOWED, individuals))
    has_allowed = allowed.count(None) != n
    return RegularRows(request.campaign, list(map(_ID, individuals)), matrix, allowed if has_allowed else None)
