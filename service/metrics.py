"""Prometheus metrics of one app instance (its own registry, so two apps in one process never collide)."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from service.lambdas import LambdaTable

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 10, 100, 1_000, 10_000, 100_000)


class Metrics:
    def __init__(self, treatment_names: list[str], model_version: str, method: str, store_backend: str) -> None:
        self.registry = registry = CollectorRegistry()
        self.treatment_names = treatment_names
        self.latency = Histogram(
            "allocator_request_latency_seconds",
            "Server time per request",
            ["endpoint", "status"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "allocator_batch_size", "Individuals per /allocate request", buckets=BATCH_BUCKETS, registry=registry
        )
        self.allocations = Counter(
            "allocator_allocations", "Individuals allocated, per treatment", ["treatment"], registry=registry
        )
        self.unseen_categories = Counter(
            "allocator_unseen_categories",
            "Categorical values not in the manifest (encoded as all zeros)",
            registry=registry,
        )
        self.budget_solve = Histogram(
            "allocator_budget_solve_seconds",
            "λ* solve time for a new budget",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.lam = Gauge("allocator_lambda", "λ* served per campaign", ["campaign", "source"], registry=registry)
        self.lambda_version = Gauge(
            "allocator_lambda_version",
            "Version of the λ* record served per campaign",
            ["campaign"],
            registry=registry,
        )
        self.store_up = Gauge("allocator_store_up", "1 when the λ* store answers", ["backend"], registry=registry)
        self.store_staleness = Gauge(
            "allocator_store_seconds_since_sync", "Seconds since the last full λ* resync", registry=registry
        )
        self.rejected_records = Gauge(
            "allocator_store_rejected_records",
            "Stored λ* records skipped because they failed validation",
            registry=registry,
        )
        self.sync_restarts = Gauge(
            "allocator_sync_restarts", "Times the λ* sync task failed unexpectedly and was restarted", registry=registry
        )
        self.model = Gauge("allocator_model_info", "The loaded model", ["model_version", "method"], registry=registry)
        self.model.labels(model_version=model_version, method=method).set(1)
        self.decisions_shipped = Counter(
            "allocator_decisions_shipped", "Decisions written to the decision-log streams", registry=registry
        )
        self.decisions_dropped = Counter(
            "allocator_decisions_dropped",
            "Decisions not logged because the in-process buffer was full (Redis down or slow)",
            registry=registry,
        )
        self.decisions_buffered = Gauge(
            "allocator_decisions_buffered", "Decisions waiting in memory to be shipped", registry=registry
        )
        self._decision_totals = {"shipped": 0, "dropped": 0}
        self.store_backend = store_backend
        # Pre-create the per-treatment series so dashboards see zeros rather than gaps.
        self._treatment_counters = [self.allocations.labels(treatment=name) for name in treatment_names]
        self._latency_series: dict[tuple[str, int], Any] = {}  # bounded: endpoints are a fixed set, statuses few

    def observe_latency(self, endpoint: str, status: int, seconds: float) -> None:
        series = self._latency_series.get((endpoint, status))
        if series is None:  # `labels` takes a lock and builds a key on every call: look each series up once
            series = self._latency_series[endpoint, status] = self.latency.labels(endpoint=endpoint, status=str(status))
        series.observe(seconds)

    def count_allocations(self, treatment: NDArray[np.int64]) -> None:
        counts = np.bincount(treatment, minlength=len(self.treatment_names))
        for counter, count in zip(self._treatment_counters, counts.tolist(), strict=True):
            if count:
                counter.inc(count)

    def observe_decision_log(self, status: dict[str, Any]) -> None:
        """Bring the decision-log counters up to the log's own totals (they only grow)."""
        for name, counter in (("shipped", self.decisions_shipped), ("dropped", self.decisions_dropped)):
            delta = int(status[name]) - self._decision_totals[name]
            if delta > 0:
                counter.inc(delta)
                self._decision_totals[name] += delta
        self.decisions_buffered.set(int(status["buffered"]))

    def render(self, table: LambdaTable, now: float, rejected_records: int = 0) -> bytes:
        """The exposition text, with the λ* gauges refreshed from the table first."""
        self.lam.clear()
        self.lambda_version.clear()
        for campaign, served in {"default": table.default, **table.campaigns()}.items():
            self.lam.labels(campaign=campaign, source=served.source).set(served.lam)
            self.lambda_version.labels(campaign=campaign).set(served.version)
        self.store_up.labels(backend=self.store_backend).set(1.0 if table.store_up else 0.0)
        self.store_staleness.set(now - table.synced_at if table.synced_at is not None else float("inf"))
        self.rejected_records.set(rejected_records)
        self.sync_restarts.set(table.sync_restarts)
        return generate_latest(self.registry)
