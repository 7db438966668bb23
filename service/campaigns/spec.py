"""The campaign record an operator writes, and what it implies at a given moment (status, target spend share)."""

from __future__ import annotations

import math
from datetime import datetime
from enum import StrEnum
from functools import cached_property
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from service.errors import json_type

PacingMode = Literal["even", "asap", "off"]
MAX_PROFILE_POINTS = 1440  # one weight per minute of a day
MAX_AMOUNT = 1e15  # budgets and reported costs: far beyond any campaign, far from float overflow in the sums


class CampaignSpec(BaseModel):
    """A campaign: total budget over a flight, how to pace it, and the audience the initial λ* is solved for."""

    model_config = ConfigDict(extra="forbid")

    # Strict numbers and booleans: lax pydantic read `true` as a budget of 1 and "yes" as paused.
    total_budget: float = Field(
        strict=True, gt=0, le=MAX_AMOUNT, description="total predicted cost the campaign may commit (hard cap)"
    )
    start: datetime = Field(description="flight start (ISO 8601 with a time zone)")
    end: datetime = Field(description="flight end (ISO 8601 with a time zone), after start")
    pacing: PacingMode = Field(
        default="even",
        description="'even': spend follows the (traffic-weighted) flight; 'asap': as fast as the cap allows; "
        "'off': the reference-population λ* for total_budget ÷ expected_audience, never moved",
    )
    expected_audience: int = Field(ge=1, description="individuals the budget is meant to cover (initial λ*)")
    paused: bool = Field(
        default=False, strict=True, description="paused campaigns give everyone the cheapest treatment"
    )
    traffic_profile: list[Annotated[float, Field(strict=True)]] | None = Field(
        default=None,
        description="expected traffic over equal parts of the flight (relative weights, e.g. 24 hourly values); "
        "'even' pacing spends in proportion to it; unset: uniform in time",
    )

    @field_validator("expected_audience", mode="before")
    @classmethod
    def _whole_number(cls, value: Any) -> Any:
        """An integer, or a float with no fraction (JSON Schema's integer admits 5.0); not `true`, not "5"."""
        if type(value) is float and value.is_integer():
            return int(value)
        if type(value) is not int:
            raise ValueError(f"must be a positive integer, got {json_type(value)}")
        return value

    @field_validator("start", "end", mode="before")
    @classmethod
    def _text_time(cls, value: Any) -> Any:
        """An ISO 8601 string: lax pydantic read a bare number as seconds since 1970."""
        if not isinstance(value, str | datetime):
            raise ValueError(f"expected an ISO 8601 date-time string, got {json_type(value)}")
        return value

    @field_validator("start", "end")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("needs a time zone (e.g. 2026-12-01T00:00:00Z)")
        return value

    @field_validator("traffic_profile")
    @classmethod
    def _profile(cls, value: list[float] | None) -> list[float] | None:
        if value is None:
            return None
        if not 1 <= len(value) <= MAX_PROFILE_POINTS:
            raise ValueError(f"needs 1 to {MAX_PROFILE_POINTS} weights, got {len(value)}")
        if not all(math.isfinite(w) and w >= 0 for w in value) or not 0 < sum(value) < math.inf:
            raise ValueError("weights must be finite, >= 0, not all zero, with a finite sum")
        return value

    @model_validator(mode="after")
    def _flight(self) -> CampaignSpec:
        if self.end <= self.start:
            raise ValueError(f"end ({self.end.isoformat()}) must be after start ({self.start.isoformat()})")
        return self

    @cached_property
    def flight_seconds(self) -> tuple[float, float]:
        """(start, end) in unix seconds (cached: /allocate asks on every request)."""
        return self.start.timestamp(), self.end.timestamp()

    @property
    def budget_per_capita(self) -> float:
        return self.total_budget / self.expected_audience

    def flight_share(self, now: float) -> float:
        """The share of the flight's expected traffic that has arrived by `now` (unix seconds), 0..1."""
        start, end = self.start.timestamp(), self.end.timestamp()
        elapsed = min(max((now - start) / (end - start), 0.0), 1.0)
        if self.traffic_profile is None:
            return elapsed
        weights = np.asarray(self.traffic_profile, dtype=np.float64)
        cumulative = np.concatenate([[0.0], np.cumsum(weights)]) / weights.sum()  # (P+1,) at part boundaries
        return float(np.interp(elapsed, np.linspace(0.0, 1.0, len(weights) + 1), cumulative))

    def target_share(self, now: float) -> float | None:
        """The share of the budget the pacing mode wants committed by `now`; None when pacing is off."""
        if self.pacing == "off":
            return None
        if self.pacing == "asap":
            return 1.0 if now >= self.start.timestamp() else 0.0
        return self.flight_share(now)


class CampaignStatus(StrEnum):
    """Why a campaign allocates (or not); every non-active status gives everyone the cheapest treatment."""

    ACTIVE = "active"
    SCHEDULED = "scheduled"  # before the flight
    PAUSED = "paused"
    ENDED = "ended"  # after the flight
    EXHAUSTED = "exhausted"  # the ledger has no budget left (under the cap) for the treatments chosen
    SLICE_EMPTY = "slice_empty"  # this replica's slice ran dry before its next refill (the ledger has more)
    BUDGET_UNAVAILABLE = "budget_unavailable"  # no slice held and the ledger cannot be reached


def flight_status(spec: CampaignSpec, now: float) -> CampaignStatus:
    """Active, scheduled, ended or paused at `now` (unix seconds); the ledger decides about exhausted."""
    if spec.paused:
        return CampaignStatus.PAUSED
    start, end = spec.flight_seconds
    if now < start:
        return CampaignStatus.SCHEDULED
    if now >= end:
        return CampaignStatus.ENDED
    return CampaignStatus.ACTIVE
