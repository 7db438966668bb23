"""Client errors raised below the routers; the app turns them into responses with a fixed status and detail."""

from __future__ import annotations


class RequestError(ValueError):
    """Something a client sent is wrong: `field` names where (e.g. `individuals[3].features.recency`)."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status

    @property
    def detail(self) -> str:
        return f"{self.field}: {self.message}"


class StoreUnavailableError(RuntimeError):
    """The λ* store (Redis) cannot be reached; admin writes answer 503, allocation keeps the last λ*."""


class WriteOutcomeUnknownError(RuntimeError):
    """A store write was sent but not confirmed: it may have been applied, and cannot apply after `deadline_ms`."""

    def __init__(self, message: str, deadline_ms: int) -> None:
        super().__init__(message)
        self.deadline_ms = deadline_ms


class InvalidRecordError(ValueError):
    """A stored λ* record does not validate (corrupt, or not a record); it is skipped, never served."""


def json_type(value: object) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
