"""Request and response models of the API (DESIGN.md §4), as they appear in OpenAPI at /docs.

`AllocateRequest` (rows) and `AllocateColumnsRequest` (columns) document the /allocate body but do not parse
it (see `service.payload`, `service.columnar`); the /budget body is small and is parsed by `BudgetRequest`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from service.errors import RequestError
from service.payload import CAMPAIGN_PATTERN

CAMPAIGN_FIELD = Field(default="default", pattern=CAMPAIGN_PATTERN.pattern, description="campaign name")


class Individual(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | int = Field(description="echoed back in the allocation")
    features: dict[str, float | bool | str] | list[float | bool] = Field(
        description="object keyed by feature name (raw categorical values allowed) or an array in manifest order"
    )
    allowed_treatments: list[int] | None = Field(default=None, description="treatment ids this individual may get")


class AllocateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    campaign: str = CAMPAIGN_FIELD
    individuals: list[Individual] = Field(min_length=1, description="at most ALLOCATOR_MAX_BATCH individuals")


class AllocateColumnsRequest(BaseModel):
    """The columnar body for batch callers: ids as one array, features as columns or as a row-major matrix."""

    model_config = ConfigDict(extra="forbid")

    campaign: str = CAMPAIGN_FIELD
    ids: list[str | int] = Field(min_length=1, description="one per individual, echoed back in the allocations")
    columns: list[list[float]] | None = Field(
        default=None, description="one array of len(ids) numbers per feature, in GET /model's `features` order"
    )
    matrix: list[list[float]] | None = Field(
        default=None, description="instead of columns: one array per individual, in GET /model's `features` order"
    )
    allowed_treatments: list[list[int] | None] | None = Field(
        default=None, description="per individual: null (all allowed) or the treatment ids it may get"
    )
    response: Literal["rows", "columns"] = Field(
        default="rows",
        description="'columns': `allocations` as one array per field (AllocateColumnsResponse), cheaper to "
        "build and to decode for large batches",
    )


class Allocation(BaseModel):
    id: str | int
    treatment: int
    treatment_name: str
    expected_revenue: float
    expected_cost: float
    decision_id: str = Field(description="id of this decision in the decision log: report outcomes against it")


class AllocateResponse(BaseModel):
    allocations: list[Allocation] = Field(description="one per individual, in request order")
    model_version: str
    lambda_: float = Field(alias="lambda", description="λ* used: argmax_j (revenue − λ*·cost)")
    lambda_version: int = Field(description="version of the λ* record (0: the manifest's default)")
    campaign_status: str | None = Field(
        default=None,
        description="campaign resources only: active, scheduled, paused, ended, exhausted or budget_unavailable "
        "(every status but active gives the cheapest allowed treatment to the individuals it names in `capped`)",
    )
    capped: int | None = Field(default=None, description="individuals moved to their cheapest allowed treatment")


class AllocationColumns(BaseModel):
    """The allocations of a columnar answer: each field of `Allocation` as one array, in request order."""

    id: list[str | int]
    treatment: list[int]
    treatment_name: list[str]
    expected_revenue: list[float]
    expected_cost: list[float]
    decision_id: list[str]


class AllocateColumnsResponse(BaseModel):
    """The answer to a columnar body sent with `"response": "columns"`; otherwise as AllocateResponse."""

    allocations: AllocationColumns
    model_version: str
    lambda_: float = Field(alias="lambda")
    lambda_version: int
    campaign_status: str | None = None
    capped: int | None = None


class ErrorOut(BaseModel):
    """Every 4xx and 5xx answer: one sentence that names the field (or the dependency) at fault."""

    detail: str = Field(description="what is wrong, starting with the field it is about")


class BudgetRequest(BaseModel):
    """A new budget: per capita, or a total over `population_size` individuals. Strict JSON types."""

    model_config = ConfigDict(extra="forbid", strict=True)

    campaign: str = CAMPAIGN_FIELD
    budget_per_capita: float | None = Field(default=None, description="expected cost per individual")
    total_budget: float | None = Field(default=None, description="total expected cost; needs population_size")
    population_size: int | None = Field(default=None, description="individuals the total budget covers")

    @field_validator("population_size", mode="before")
    @classmethod
    def _integral_float(cls, value: Any) -> Any:
        """2.0 is an integer in JSON Schema (so generated clients send it); 2.5, true and "2" stay errors."""
        return int(value) if type(value) is float and value.is_integer() else value

    @model_validator(mode="after")
    def _one_budget(self) -> BudgetRequest:
        if (self.budget_per_capita is None) == (self.total_budget is None):
            raise ValueError("give exactly one of budget_per_capita or total_budget (with population_size)")
        for name in ("budget_per_capita", "total_budget"):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value <= 0):
                raise ValueError(f"{name} must be a positive finite number, got {value}")
        if self.total_budget is not None:
            if self.population_size is None or self.population_size <= 0:
                raise ValueError("population_size must be a positive integer when total_budget is given")
        elif self.population_size is not None:
            raise ValueError("population_size only goes with total_budget")
        return self

    @property
    def per_capita(self) -> float:
        if self.budget_per_capita is not None:
            return self.budget_per_capita
        return float(self.total_budget) / float(self.population_size)  # type: ignore[arg-type]


class LambdaOut(BaseModel):
    """The λ* a replica serves for a campaign and where it came from."""

    model_config = ConfigDict(populate_by_name=True)

    campaign: str
    lambda_: float = Field(alias="lambda")
    version: int = Field(description="monotonically increasing per campaign; 0 = the manifest's default")
    source: str = Field(description="'store', 'store, re-solved for this model' or 'manifest default'")
    budget_per_capita: float
    expected_cost_per_capita: float | None
    expected_revenue_per_capita: float | None
    model_version: str = Field(description="model this λ* is for (the loaded one)")
    solved_at: str | None


class BudgetOut(LambdaOut):
    solve_ms: float = Field(description="server time to solve λ* on the reference population")
    population_size: int = Field(description="rows of the reference population")
    request_id: str = Field(description="the Idempotency-Key (sent or generated): a retry with it returns this write")


M = TypeVar("M", bound=BaseModel)


def problems(errors: Sequence[Any]) -> list[tuple[str, str]]:
    """(field, message) for each pydantic error, the field dotted from its location without 'body'."""
    out = []
    for item in errors:
        field = ".".join(str(part) for part in item.get("loc", ()) if part != "body") or "body"
        message = str(item.get("msg", "invalid")).removeprefix("Value error, ")
        out.append((field, message))
    return out


def parse_body(model: type[M], body: bytes) -> M:
    """Validate a JSON body against `model` (strict types as the model declares); RequestError names each field."""
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        errors = error.errors(include_url=False, include_input=False)
        if errors and errors[0]["type"] == "json_invalid":
            raise RequestError("body", f"invalid JSON ({errors[0]['msg']})") from error
        found = problems(errors)
        rest = "".join(f"; {field}: {message}" for field, message in found[1:])
        raise RequestError(found[0][0], found[0][1] + rest) from error


def budget_body_schema() -> dict[str, Any]:
    """The /budget body as JSON Schema: exactly one of the two forms, no nulls (what `BudgetRequest` accepts)."""
    campaign = {"type": "string", "pattern": CAMPAIGN_PATTERN.pattern, "default": "default"}
    positive = {"type": "number", "exclusiveMinimum": 0}
    per_capita = {
        "type": "object",
        "title": "Per-capita budget",
        "properties": {
            "campaign": campaign,
            "budget_per_capita": {**positive, "description": "expected cost per individual"},
        },
        "required": ["budget_per_capita"],
        "additionalProperties": False,
    }
    total = {
        "type": "object",
        "title": "Total budget over a population",
        "properties": {
            "campaign": campaign,
            "total_budget": {**positive, "description": "total expected cost"},
            "population_size": {"type": "integer", "minimum": 1, "description": "individuals the budget covers"},
        },
        "required": ["total_budget", "population_size"],
        "additionalProperties": False,
    }
    return {"oneOf": [per_capita, total]}


class ExplorationIn(BaseModel):
    # Strict: `true` or "1" is not a share (lax pydantic read them as 1.0: every decision explored).
    model_config = ConfigDict(extra="forbid", strict=True)

    epsilon: float = Field(ge=0.0, le=1.0, allow_inf_nan=False, description="share of decisions explored, 0..1")


class ExplorationOut(BaseModel):
    campaign: str
    epsilon: float
    updated_at: str | None = Field(description="when it was set (PUT only)")


# Examples for the default model (models/default): its 10 features in GET /model order.
_ROW = [24.0, 3.0, 41.5, 12.0, 9.0, 0.35, 1.0, 0.0, 1.0, 0.0]
_ROW_2 = [3.0, 0.0, 0.0, 80.0, 1.0, 0.7, 0.0, 1.0, 0.0, 0.0]
ALLOCATE_EXAMPLES = {
    "rows": {
        "summary": "Rows (default): one object per individual, features by name or as an array",
        "value": {
            "campaign": "default",
            "individuals": [
                {
                    "id": "user-1",
                    "features": {
                        "tenure_months": 24,
                        "orders_90d": 3,
                        "avg_basket": 41.5,
                        "days_since_order": 12,
                        "app_sessions_30d": 9,
                        "discount_affinity": 0.35,
                        "is_member": 1,
                        "city_tier": "tier_2",
                    },
                },
                {"id": "user-2", "features": _ROW_2, "allowed_treatments": [0, 1]},
            ],
        },
    },
    "columns": {
        "summary": "Columns (batch callers): one array per feature, in GET /model order; answer in columns too",
        "value": {
            "campaign": "default",
            "ids": ["user-1", "user-2"],
            "columns": [list(pair) for pair in zip(_ROW, _ROW_2, strict=True)],
            "response": "columns",
        },
    },
    "matrix": {
        "summary": "Matrix (batch callers): one array per individual, in GET /model order",
        "value": {"campaign": "default", "ids": ["user-1", "user-2"], "matrix": [_ROW, _ROW_2]},
    },
}


def allocate_request_body() -> dict[str, Any]:
    """The /allocate requestBody for OpenAPI: either body form, with an example of each."""
    schema = {"oneOf": [inline_schema(AllocateRequest), inline_schema(AllocateColumnsRequest)]}
    return {"required": True, "content": {"application/json": {"schema": schema, "examples": ALLOCATE_EXAMPLES}}}


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with every `$ref` replaced by its definition (for `openapi_extra`)."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(definitions[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved
