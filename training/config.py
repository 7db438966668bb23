"""Which column of a logged table is what: the small TOML file that describes a data set (DESIGN.md §6).

A data set is a table with numeric feature columns, categorical feature columns (one-hot encoded by
`training/data.py`), a treatment column, a revenue column and a cost column. Synthetic sets also carry the
potential outcomes of every arm in oracle columns `<prefix><treatment name>`. Example:

    features = ["recency", "history"]
    categorical = ["zip_code"]
    treatment = "segment"
    revenue = "conversion"
    cost = "visit"

    [[treatments]]          # index 0 = control, then in order
    value = "No E-Mail"     # as written in the treatment column
    name = "no_email"       # display name (defaults to value)

`treatments = ["a", "b"]` (values that are also the names) is accepted too.

A column with two values such as "yes"/"no" or "male"/"female" can be declared boolean: one 0/1 feature named
after the column instead of two one-hot columns (a constant column would stay a column). Give the value
encoded as 0, then the one encoded as 1; any other value is an error naming the file, column and row:

    boolean = { newbie = ["no", "yes"], gender = ["male", "female"] }

Boolean features follow the numeric ones in the encoded order; the service takes them as numbers (0 or 1).
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_KEYS = (
    "features",
    "categorical",
    "treatment",
    "treatments",
    "revenue",
    "cost",
    "binary_revenue",
    "binary_cost",
    "true_revenue_prefix",
    "true_cost_prefix",
    "min_rows_per_arm",
    "boolean",
)


@dataclass(frozen=True)
class DatasetConfig:
    """Column roles of one logged data set; every file of a benchmark (RCT, OBS, val, test) shares it."""

    features: tuple[str, ...]  # numeric feature columns, in encoded order
    treatment: str  # column holding the logged treatment
    treatments: tuple[str, ...]  # values of the treatment column, index 0 = control
    revenue: str
    cost: str
    categorical: tuple[str, ...] = ()  # one-hot encoded after the numeric features, in this order
    treatment_names: tuple[str, ...] = ()  # display names, same order as treatments; () → the values
    binary_revenue: bool | None = None  # None → inferred: the column only holds 0/1
    binary_cost: bool | None = None
    true_revenue_prefix: str | None = None  # oracle columns <prefix><treatment name>, synthetic sets only
    true_cost_prefix: str | None = None
    min_rows_per_arm: int = 50  # loading fails when an arm has fewer logged rows
    boolean: tuple[tuple[str, str, str], ...] = ()  # (column, value for 0, value for 1), after `features`

    @property
    def boolean_columns(self) -> tuple[str, ...]:
        return tuple(column for column, _, _ in self.boolean)

    def __post_init__(self) -> None:
        if not self.treatment_names:
            object.__setattr__(self, "treatment_names", tuple(self.treatments))
        if len(self.treatments) < 2:
            raise ValueError(f"treatments must list at least 2 values (control first), got {list(self.treatments)}")
        if len(self.treatment_names) != len(self.treatments):
            raise ValueError(f"treatments: {len(self.treatment_names)} names for {len(self.treatments)} values")
        for key in ("treatments", "treatment_names"):
            values = getattr(self, key)
            if len(set(values)) != len(values):
                raise ValueError(f"{key} has duplicates: {list(values)}")
        if not self.features and not self.categorical and not self.boolean:
            raise ValueError("features, boolean and categorical are all empty: a model needs an input column")
        for column, false_value, true_value in self.boolean:
            if false_value == true_value:
                raise ValueError(f"boolean column {column!r}: its two values are both {true_value!r}")
        roles = [*self.features, *self.boolean_columns, *self.categorical, self.treatment, self.revenue, self.cost]
        repeated = sorted({c for c in roles if roles.count(c) > 1})
        if repeated:
            raise ValueError(
                f"columns used in more than one role (features/boolean/categorical/treatment/...): {repeated}"
            )
        if (self.true_revenue_prefix is None) != (self.true_cost_prefix is None):
            raise ValueError("true_revenue_prefix and true_cost_prefix must be given together")
        if self.min_rows_per_arm < 0:
            raise ValueError(f"min_rows_per_arm must be >= 0, got {self.min_rows_per_arm}")

    @property
    def n_treatments(self) -> int:
        return len(self.treatments)

    @property
    def has_oracle(self) -> bool:
        return self.true_revenue_prefix is not None

    def oracle_columns(self) -> tuple[list[str], list[str]]:
        """(revenue columns, cost columns) of the potential outcomes, one per treatment; ([], []) without oracle."""
        if self.true_revenue_prefix is None or self.true_cost_prefix is None:
            return [], []
        return (
            [f"{self.true_revenue_prefix}{name}" for name in self.treatment_names],
            [f"{self.true_cost_prefix}{name}" for name in self.treatment_names],
        )

    def columns(self) -> list[str]:
        """Every column a table must have for this config, in a stable order."""
        revenue_cols, cost_cols = self.oracle_columns()
        return [
            *self.features, *self.boolean_columns, *self.categorical, self.treatment, self.revenue, self.cost,
            *revenue_cols, *cost_cols,
        ]  # fmt: skip

    # --- (de)serialisation ------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> DatasetConfig:
        """Build from the TOML layout; errors name `source` and the offending key."""
        unknown = sorted(set(data) - set(_KEYS))
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {unknown}; expected some of {list(_KEYS)}")
        for key in ("features", "treatment", "treatments", "revenue", "cost"):
            if key not in data:
                raise ValueError(f"{source}: missing required key {key!r}")
        values, names = _treatments(data["treatments"], source)
        try:
            return cls(
                features=_str_list(data, "features", source),
                categorical=_str_list(data, "categorical", source) if "categorical" in data else (),
                treatment=_str(data, "treatment", source),
                treatments=values,
                treatment_names=names,
                revenue=_str(data, "revenue", source),
                cost=_str(data, "cost", source),
                binary_revenue=_opt_bool(data, "binary_revenue", source),
                binary_cost=_opt_bool(data, "binary_cost", source),
                true_revenue_prefix=_opt_str(data, "true_revenue_prefix", source),
                true_cost_prefix=_opt_str(data, "true_cost_prefix", source),
                min_rows_per_arm=_int(data, "min_rows_per_arm", source, default=50),
                boolean=_boolean(data.get("boolean", {}), source),
            )
        except ValueError as err:
            if str(err).startswith(source):
                raise
            raise ValueError(f"{source}: {err}") from err

    @classmethod
    def load(cls, path: str | Path) -> DatasetConfig:
        """Read a TOML data-set config; a syntax error or a bad key raises ValueError naming the file."""
        path = Path(path)
        try:
            with path.open("rb") as handle:
                data = tomllib.load(handle)
        except FileNotFoundError as err:
            raise ValueError(f"dataset config {path} does not exist") from err
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"{path}: invalid TOML: {err}") from err
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """The TOML layout as plain data (JSON-serialisable); `from_dict(to_dict())` round-trips."""
        data: dict[str, Any] = {
            "features": list(self.features),
            "categorical": list(self.categorical),
            "treatment": self.treatment,
            "revenue": self.revenue,
            "cost": self.cost,
            "min_rows_per_arm": self.min_rows_per_arm,
        }
        for key in ("binary_revenue", "binary_cost", "true_revenue_prefix", "true_cost_prefix"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        if self.boolean:
            data["boolean"] = {column: [false_value, true_value] for column, false_value, true_value in self.boolean}
        data["treatments"] = [
            {"value": value, "name": name} for value, name in zip(self.treatments, self.treatment_names, strict=True)
        ]
        return data

    def dump(self, path: str | Path, comment: str = "") -> None:
        """Write as TOML (optionally headed by `comment` lines); `load(path)` gives back an equal config."""
        lines = [f"# {line}".rstrip() for line in comment.splitlines()]
        data = self.to_dict()
        arms = data.pop("treatments")
        # JSON string and array syntax is valid TOML for the plain strings, lists and bools written here.
        boolean = data.pop("boolean", {})
        lines += [f"{key} = {json.dumps(value, ensure_ascii=False)}" for key, value in data.items()]
        if boolean:  # a TOML inline table: quoted keys, `=` rather than JSON's `:`
            pairs = ", ".join(f"{json.dumps(k, ensure_ascii=False)} = {json.dumps(v, ensure_ascii=False)}"
                              for k, v in boolean.items())  # fmt: skip
            lines.append(f"boolean = {{ {pairs} }}")
        for arm in arms:
            lines += ["", "[[treatments]]", f"value = {json.dumps(arm['value'], ensure_ascii=False)}"]
            lines.append(f"name = {json.dumps(arm['name'], ensure_ascii=False)}")
        Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _str(data: Mapping[str, Any], key: str, source: str) -> str:
    value = data[key]
    if not isinstance(value, str) or not value:
        raise ValueError(f"{source}: key {key!r} must be a non-empty string, got {value!r}")
    return value


def _opt_str(data: Mapping[str, Any], key: str, source: str) -> str | None:
    return _str(data, key, source) if key in data else None


def _str_list(data: Mapping[str, Any], key: str, source: str) -> tuple[str, ...]:
    value = data[key]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{source}: key {key!r} must be a list of non-empty strings, got {value!r}")
    if len(set(value)) != len(value):
        raise ValueError(f"{source}: key {key!r} lists a column twice: {value!r}")
    return tuple(value)


def _opt_bool(data: Mapping[str, Any], key: str, source: str) -> bool | None:
    value = data.get(key)
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"{source}: key {key!r} must be true or false, got {value!r}")
    return value


def _int(data: Mapping[str, Any], key: str, source: str, default: int) -> int:
    value = data.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{source}: key {key!r} must be an integer, got {value!r}")
    return value


def _boolean(value: Any, source: str) -> tuple[tuple[str, str, str], ...]:
    """`{column = [value for 0, value for 1], ...}` → ((column, false value, true value), ...)."""
    if not isinstance(value, Mapping):
        raise ValueError(
            f"{source}: key 'boolean' must be a table {{column = [value for 0, value for 1]}}, got {value!r}"
        )
    out = []
    for column, pair in value.items():
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not all(isinstance(v, str | int) and not isinstance(v, bool) for v in pair)
        ):
            raise ValueError(
                f"{source}: boolean.{column} must be [value for 0, value for 1] (strings or integers), got {pair!r}"
            )
        out.append((str(column), str(pair[0]), str(pair[1])))
    return tuple(out)


def _treatments(value: Any, source: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(values, display names) from `["a", "b"]` or `[{value = "a", name = "x"}, ...]`.

    Values may be written as TOML integers (e.g. an `exp_group` column 0..7); they are kept as strings and
    compared with the column's values as numbers when the column is numeric (see `training/data.py`).
    """
    if not isinstance(value, list) or not value:
        raise ValueError(f"{source}: key 'treatments' must be a non-empty list, got {value!r}")
    values: list[str] = []
    names: list[str] = []
    for i, arm in enumerate(value):
        if isinstance(arm, Mapping):
            extra = sorted(set(arm) - {"value", "name"})
            if "value" not in arm or extra:
                raise ValueError(f"{source}: treatments[{i}] must have 'value' and optional 'name', got {dict(arm)}")
            raw, name = arm["value"], arm.get("name", arm["value"])
        else:
            raw, name = arm, arm
        if isinstance(raw, bool) or not isinstance(raw, str | int) or not isinstance(name, str | int):
            raise ValueError(f"{source}: treatments[{i}] must be a string or integer, got {arm!r}")
        values.append(str(raw))
        names.append(str(name))
    return tuple(values), tuple(names)
