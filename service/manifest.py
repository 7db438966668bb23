"""The schema of `manifest.json` (DESIGN.md §3): one pydantic model written by the exporter, read by the service.

A manifest describes `model.onnx` (input `features` float32 [batch, D], outputs `revenue` and `cost` float32
[batch, K]) and `population.npz`. `features` names the D numeric ONNX input columns in order. A categorical
raw column `col` listed in `categorical` is one-hot encoded into the columns named `col=value` inside
`features` (categories in `categorical[col]` order); the service builds them from a raw value so clients
can send `{"col": "value"}`. A value not in the list encodes as all zeros, as in training (`training/data.py`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"


class Treatment(BaseModel):
    """One arm: id 0..K-1 (0 = control, no coupon) and a human-readable name."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: int = Field(ge=0)
    name: str = Field(min_length=1)


class Manifest(BaseModel):
    """Everything the service needs to know about an exported model, and what it was trained on."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, protected_namespaces=())

    schema_version: int = SCHEMA_VERSION
    model_version: str = Field(pattern=r"^[0-9a-f]{16}$", description="sha256 of model.onnx, first 16 hex digits")
    created_at: str = Field(description="ISO 8601 export time")
    method: str = Field(min_length=1, description="training method, e.g. 'tsm', 'dfcl', 'bidfcl'")
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    features: list[str] = Field(min_length=1, description="names of the ONNX input columns, in order")
    categorical: dict[str, list[str]] = Field(
        default_factory=dict, description="raw categorical column → categories; one-hot columns are 'col=value'"
    )
    treatments: list[Treatment] = Field(min_length=2, description="id 0..K-1 in order, 0 = control")
    training_data: dict[str, Any] = Field(default_factory=dict)
    validation_metrics: dict[str, Any] = Field(default_factory=dict)
    default_budget_per_capita: float = Field(ge=0.0)
    default_lambda: float = Field(ge=0.0)
    opset: int = Field(gt=0)
    input_name: str = "features"
    revenue_output: str = "revenue"
    cost_output: str = "cost"

    @field_validator("schema_version")
    @classmethod
    def _known_schema(cls, value: int) -> int:
        if value != SCHEMA_VERSION:
            raise ValueError(f"schema_version {value} is not supported (this service reads {SCHEMA_VERSION})")
        return value

    @field_validator("features")
    @classmethod
    def _unique_features(cls, names: list[str]) -> list[str]:
        seen: set[str] = set()
        for name in names:
            if not name:
                raise ValueError("feature names must be non-empty")
            if name in seen:
                raise ValueError(f"feature {name!r} is listed twice")
            seen.add(name)
        return names

    @field_validator("treatments")
    @classmethod
    def _ordered_treatments(cls, treatments: list[Treatment]) -> list[Treatment]:
        for position, treatment in enumerate(treatments):
            if treatment.id != position:
                raise ValueError(f"treatment ids must be 0..K-1 in order; position {position} has id {treatment.id}")
        names = [t.name for t in treatments]
        if len(set(names)) != len(names):
            raise ValueError(f"treatment names must be unique, got {names}")
        return treatments

    @model_validator(mode="after")
    def _categorical_columns_exist(self) -> Manifest:
        features = set(self.features)
        for column, categories in self.categorical.items():
            if not categories:
                raise ValueError(f"categorical column {column!r} has no categories")
            if len(set(categories)) != len(categories):
                raise ValueError(f"categorical column {column!r} lists a category twice")
            if column in features:
                raise ValueError(f"categorical column {column!r} is also a numeric feature")
            missing = [f"{column}={c}" for c in categories if f"{column}={c}" not in features]
            if missing:
                raise ValueError(f"categorical column {column!r}: one-hot features {missing[:3]} are not in features")
        if len({self.input_name, self.revenue_output, self.cost_output}) != 3:
            raise ValueError("input_name, revenue_output and cost_output must be three different names")
        if not math.isfinite(self.default_lambda):
            raise ValueError("default_lambda must be finite")
        return self

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def n_treatments(self) -> int:
        return len(self.treatments)

    @property
    def treatment_names(self) -> list[str]:
        return [t.name for t in self.treatments]

    def one_hot_columns(self) -> set[str]:
        """The `col=value` feature names built from raw categorical values."""
        return {f"{column}={c}" for column, cats in self.categorical.items() for c in cats}

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2) + "\n"


def read_manifest(path: str | Path) -> Manifest:
    """Parse and validate a manifest file; ValueError names the file and the offending field."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: manifest file does not exist")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    try:
        return Manifest.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in error.errors()
        )
        raise ValueError(f"{path}: invalid manifest: {problems}") from error
