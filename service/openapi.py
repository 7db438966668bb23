"""The OpenAPI document as the running replica accepts it: one error schema, and the loaded model's features.

FastAPI's defaults publish a 422 body (`HTTPValidationError`, `detail` as an array) that this service never
sends, and a static `/allocate` body that allows feature arrays of any length. A published schema is a
contract that fuzzers and client generators take literally, so every 4xx/5xx is declared as `ErrorOut` and
the body schema is narrowed to the loaded model: its feature names, its D and its treatment ids.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.manifest import Manifest
from service.payload import MAX_ID_LENGTH

# The largest double that float32 rounds to a finite value (its max plus half an ulp, exclusive).
FLOAT32_MAX = float(np.nextafter(float(np.finfo(np.float32).max) + 2.0**103, 0.0))
ERROR_REF = {"$ref": "#/components/schemas/ErrorOut"}
# JSON booleans count as 0/1; the model computes in float32, so larger magnitudes are refused.
NUMBER = {"type": ["number", "boolean"], "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX}


def install(app: FastAPI) -> None:
    """Replace `app.openapi` with a generator that applies both corrections (cached after the first call)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, summary=app.summary, description=app.description, routes=app.routes
        )
        _one_error_schema(schema)
        runtime = getattr(app.state, "runtime", None)
        if runtime is not None:  # the model is loaded once the lifespan has started
            _narrow_allocate_body(schema, runtime.artifact.manifest)
            _narrow_budget_body(schema, *runtime.solver.accepted_budgets)
            _narrow_what_if_query(schema, *runtime.solver.accepted_budgets)
            app.openapi_schema = schema  # only cache the complete document
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _one_error_schema(schema: dict[str, Any]) -> None:
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for code, response in operation.get("responses", {}).items():
                if code[0] in "45":
                    response["content"] = {"application/json": {"schema": ERROR_REF}}
    components = schema.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)


def _narrow_allocate_body(schema: dict[str, Any], manifest: Manifest) -> None:
    body = schema["paths"]["/allocate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    rows, columns = body["oneOf"]  # `schemas.allocate_request_body`: the row form, then the columnar form
    _narrow_columnar_body(columns, manifest)
    individual = rows["properties"]["individuals"]["items"]["properties"]
    individual["id"]["anyOf"] = [{"type": "string", "maxLength": MAX_ID_LENGTH}, {"type": "integer"}]
    width = manifest.n_features
    number = NUMBER
    one_hot = manifest.one_hot_columns()
    numeric = [name for name in manifest.features if name not in one_hot]
    encoded = {
        "type": "object",
        "description": "every feature of GET /model by name (one-hot columns as numbers)",
        "properties": {name: number for name in manifest.features},
        "required": list(manifest.features),
        "additionalProperties": False,
    }
    forms: list[dict[str, Any]] = [encoded]
    if manifest.categorical:
        raw_columns = {  # a category the model has not seen is accepted (encoded as all zeros), so no enum
            column: {"type": "string", "description": f"one of {categories} (others encode as all zeros)"}
            for column, categories in manifest.categorical.items()
        }
        forms.append(
            {
                "type": "object",
                "description": "numeric features by name and each categorical column by its raw value",
                "properties": {**{name: number for name in numeric}, **raw_columns},
                "required": [*numeric, *manifest.categorical],
                "additionalProperties": False,
            }
        )
    forms.append(
        {
            "type": "array",
            "description": "every feature in GET /model order",
            "items": number,
            "minItems": width,
            "maxItems": width,
        }
    )
    individual["features"] = {"description": individual["features"].get("description", ""), "anyOf": forms}
    individual["allowed_treatments"]["anyOf"][0] = {
        "type": "array",
        "items": {"type": "integer", "minimum": 0, "maximum": manifest.n_treatments - 1},
        "minItems": 1,
    }


def _narrow_columnar_body(body: dict[str, Any], manifest: Manifest) -> None:
    """`columns`: D arrays (one per feature); `matrix`: arrays of D numbers; exactly one of the two (not null);
    ids and treatment ids as for rows."""
    fields = body["properties"]
    width = manifest.n_features
    fields["ids"]["items"] = {"anyOf": [{"type": "string", "maxLength": MAX_ID_LENGTH}, {"type": "integer"}]}
    column = {"type": "array", "items": NUMBER, "minItems": 1}
    row = {"type": "array", "items": NUMBER, "minItems": width, "maxItems": width}
    for name, schema in (
        ("columns", {"type": "array", "items": column, "minItems": width, "maxItems": width}),
        ("matrix", {"type": "array", "items": row, "minItems": 1}),
    ):
        fields[name] = {**schema, "description": fields[name].get("description", "")}
    body["oneOf"] = [{"required": ["columns"]}, {"required": ["matrix"]}]
    treatments = {"type": "integer", "minimum": 0, "maximum": manifest.n_treatments - 1}
    allowed = {"anyOf": [{"type": "array", "items": treatments, "minItems": 1}, {"type": "null"}]}
    fields["allowed_treatments"]["anyOf"][0] = {"type": "array", "items": allowed, "minItems": 1}  # one per id


def _narrow_budget_body(schema: dict[str, Any], lowest: float, highest: float) -> None:
    """A per-capita budget the loaded model can spend: from its cheapest policy's cost to its λ = 0 policy's."""
    body = schema["paths"]["/budget"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    per_capita = body["oneOf"][0]["properties"]["budget_per_capita"]
    per_capita["minimum"] = lowest
    per_capita["maximum"] = highest
    per_capita["description"] += f" (this model: {lowest:.6g} to {highest:.6g})"


def _narrow_what_if_query(schema: dict[str, Any], lowest: float, highest: float) -> None:
    """GET /budget/whatif's budget: exactly the per-capita range the solver accepts (the console's preview)."""
    parameters = schema["paths"]["/budget/whatif"]["get"]["parameters"]
    per_capita = next(p for p in parameters if p["name"] == "budget_per_capita")["schema"]
    if lowest > 0:  # else keep `exclusiveMinimum: 0`: the route refuses 0 even where it would fit
        per_capita.pop("exclusiveMinimum", None)
        per_capita["minimum"] = lowest
    per_capita["maximum"] = highest
    per_capita["description"] = f"{per_capita.get('description', '')} (this model: {lowest:.6g} to {highest:.6g})"
