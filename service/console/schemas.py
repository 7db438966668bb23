"""Response models of the console's JSON endpoints, as they appear in OpenAPI at /docs."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class CurvePointOut(BaseModel):
    """What the exact policy for one budget does on the model's reference population, per individual."""

    model_config = ConfigDict(populate_by_name=True)

    budget_per_capita: float = Field(description="budget per individual (expected coupon cost)")
    lambda_: float = Field(alias="lambda", description="λ*: marginal expected revenue per unit of budget here")
    expected_spend_per_capita: float = Field(description="expected cost per individual, ≤ the budget")
    expected_revenue_per_capita: float
    mix: dict[str, float] = Field(description="share of individuals on each treatment (sums to 1)")


class CampaignPointOut(CurvePointOut):
    """A campaign's served λ* and what it does on the reference population (the curve's 'current' mark)."""

    campaign: str
    version: int = Field(description="λ* record version; 0 = the manifest's default")
    source: str = Field(description="where λ* comes from ('store', 'manifest default', …)")


class BudgetCurveOut(BaseModel):
    """The what-if curve: `points` budgets evenly spaced from the cheapest policy's spend to the λ = 0 policy's."""

    campaign: str
    model_version: str
    population_size: int = Field(description="rows of the reference population the curve is computed on")
    treatments: list[str] = Field(description="treatment names, manifest order")
    min_budget_per_capita: float = Field(description="what the cheapest policy spends: no smaller budget fits")
    max_budget_per_capita: float = Field(description="what the λ = 0 policy spends: no larger budget buys more")
    current: CampaignPointOut | None = Field(description="the campaign's served λ*; null when it has no budget")
    points: list[CurvePointOut]
    compute_ms: float = Field(description="server time to compute the points")


class WhatIfOut(BaseModel):
    """What `POST /budget` with this budget would serve, next to what the campaign is served now; stores nothing."""

    campaign: str
    model_version: str
    current: CampaignPointOut | None = Field(description="null when the campaign has no budget yet")
    proposed: CurvePointOut


class AllocationCountsOut(BaseModel):
    """Individuals this replica has allocated per treatment since it started (the Prometheus counters)."""

    model_version: str
    replica: str = Field(
        description="host/pid of the process that answered: counters are per process, so only "
        "readings of the same replica may be subtracted"
    )
    counts: dict[str, int] = Field(description="treatment name → individuals allocated")
    total: int
