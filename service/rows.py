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

from collections.abc import Iterable
from functools import lru_cache
from itertools import chain
from operator import attrgetter
from typing import Annotated, Any, NamedTuple

import msgspec
import numpy as np
from numpy.typing import NDArray

from service.limits import CAMPAIGN_PATTERN, INT_RANGE, MAX_ID_LENGTH

_ID = attrgetter("id")
_FEATURES = attrgetter("features")
_ALLOWED = attrgetter("allowed_treatments")
ALLOWED_KEY = b'"allowed_treatments"'
astuple = msgspec.structs.astuple


class RegularRows(NamedTuple):
    """A valid regular row body, decoded (features not yet float32, so not yet checked for overflow)."""

    campaign: str
    ids: list[str | int]
    features: NDArray[np.float64]  # (N, D) manifest order
    allowed: list[list[int] | None] | None  # per individual, None when no individual sent the field


class _Typed(NamedTuple):
    decoder: msgspec.json.Decoder[Any]
    features_type: type


@lru_cache(maxsize=16)
def _typed(names: tuple[str, ...], n_treatments: int, max_batch: int) -> _Typed:
    """The decoder for bodies of a model with these features and treatments, under this batch limit.

    Every constraint the reference decoder checks per value is a msgspec constraint here, checked in C:
    the campaign pattern, id types, lengths and the 64-bit integer range orjson keeps as integers, the
    batch size, treatment ids in 0..K-1. (Struct field names must be identifiers: `rename` maps them.)
    """
    fields = [f"f{j}" for j in range(len(names))]
    features = msgspec.defstruct(
        "NamedFeatures",
        [(field, float) for field in fields],  # msgspec's float takes JSON integers too, not booleans
        rename=dict(zip(fields, names, strict=True)),
        forbid_unknown_fields=True,
        gc=False,
    )
    identifier = (
        Annotated[str, msgspec.Meta(max_length=MAX_ID_LENGTH)]
        # msgspec bounds must fit int64: ids in 2**63..2**64-1 (valid) take the reference path.
        | Annotated[int, msgspec.Meta(ge=INT_RANGE[0], le=min(INT_RANGE[1], 2**63 - 1))]
    )
    treatment = Annotated[int, msgspec.Meta(ge=0, lt=n_treatments)]
    allowed = Annotated[list[treatment], msgspec.Meta(min_length=1)] | None
    individual = msgspec.defstruct(
        "Individual",
        [("id", identifier), ("features", features | list[float]), ("allowed_treatments", allowed, None)],
        forbid_unknown_fields=True,
        gc=False,
    )
    batch = Annotated[list[individual], msgspec.Meta(min_length=1, max_length=max_batch)]  # type: ignore[valid-type]
    campaign = Annotated[str, msgspec.Meta(pattern=CAMPAIGN_PATTERN.pattern)]
    body = msgspec.defstruct(
        "AllocateRows", [("individuals", batch), ("campaign", campaign, "default")], forbid_unknown_fields=True
    )
    return _Typed(msgspec.json.Decoder(body), features)


def decode_regular_rows(body: bytes, names: tuple[str, ...], n_treatments: int, max_batch: int) -> RegularRows | None:
    """The decoded body when it is a valid regular row body for this model, else None."""
    typed = _typed(names, n_treatments, max_batch)
    try:
        request = typed.decoder.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    individuals = request.individuals
    n, width = len(individuals), len(names)
    # The first row says which form. A row of the other form makes the conversion below raise, and the
    # reference path decides: no per-row type pass (arrays still need one for their lengths).
    try:
        if type(individuals[0].features) is typed.features_type:
            values: Iterable[float] = chain.from_iterable(map(astuple, map(_FEATURES, individuals)))
        else:
            features = list(map(_FEATURES, individuals))
            if set(map(len, features)) != {width}:
                return None
            values = chain.from_iterable(features)
        matrix = np.fromiter(values, dtype=np.float64, count=n * width).reshape(n, width)
    except (TypeError, ValueError):  # a row of the other form (structs have no len, lists are no structs)
        return None
    allowed = None
    # A C-level byte search instead of a pass over the individuals; with any backslash in the body the key
    # might be written with escapes (`allowed\u005ftreatments`), so then look at every individual.
    if ALLOWED_KEY in body or b"\\" in body:
        allowed = list(map(_ALLOWED, individuals))
        if allowed.count(None) == n:
            allowed = None
    return RegularRows(request.campaign, list(map(_ID, individuals)), matrix, allowed)
