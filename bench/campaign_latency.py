"""The /allocate server time with a paced campaign against the same load without one (one replica, Redis).

One client, so the server time is processing, not queueing behind the other client's request.
Requests alternate between a paced campaign (`even`, budget far from exhausted, so every request takes the
ledger cap path) and a plain /budget campaign with the same λ*, so both see the same machine load. Server time
is the replica's own `Server-Timing: app;dur=…` header.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import numpy as np

from bench.campaign_run import ADMIN
from bench.campaign_world import Day
from service.campaigns.spec import CampaignSpec
from service.campaigns.wallet import SliceWallet

AUDIENCE = 10_000_000  # the paced campaign's budget lasts far longer than the measurement


def _server_ms(response: httpx.Response) -> float:
    # e.g. "app;dur=1.305, cpu;dur=0.9": the app entry is the server time
    for entry in response.headers.get("server-timing", "").split(","):
        name, _, duration = entry.strip().partition(";dur=")
        if name == "app" and duration:
            return float(duration)
    return float("nan")


async def _measure(url: str, day: Day, batch: int, requests: int, concurrency: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"paced": [], "plain": []}
    bodies = [
        [{"id": i, "features": day.features[(k * batch + i) % len(day.features)]} for i in range(batch)]
        for k in range(64)
    ]
    async with httpx.AsyncClient(timeout=30.0) as client:

        async def worker(w: int) -> None:
            for k in range(w, 2 * requests, concurrency):
                campaign = "p99-paced" if k % 2 == 0 else "p99-plain"
                response = await client.post(
                    f"{url}/allocate", json={"campaign": campaign, "individuals": bodies[k % 64]}
                )
                response.raise_for_status()
                times["paced" if k % 2 == 0 else "plain"].append(_server_ms(response))

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return times


def cap_step_microseconds(batch: int, repeat: int = 3000) -> float:
    """In-process cost of the ledger cap step of /allocate (`SliceWallet.cap`) for one batch, median of 5 runs."""
    now = datetime.now(UTC)
    spec = CampaignSpec(
        total_budget=1e12, start=now - timedelta(minutes=1), end=now + timedelta(hours=1), expected_audience=10
    )
    wallet = SliceWallet("bench", spec, lease_seconds=1e6)
    wallet.finish_report(1e12, 0.0, time.monotonic(), 1e12)
    rng = np.random.default_rng(0)
    cost = rng.uniform(0.0, 2.0, size=(batch, 5)).astype(np.float32)
    treatment = rng.integers(0, 5, size=batch)
    runs = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(repeat):
            wallet.cap(treatment, cost, None, time.time())
        runs.append(1e6 * (time.perf_counter() - started) / repeat)
    return float(np.median(runs))


async def measure_latency(url: str, day: Day, requests: int = 2000, concurrency: int = 1) -> dict[str, Any]:
    """p50/p99 server ms per batch size for the paced and the plain campaign."""
    async with httpx.AsyncClient(timeout=30.0) as client:
        model = (await client.get(f"{url}/model")).json()
        per_capita = float(model["default_budget_per_capita"])
        now = datetime.now(UTC)
        spec = {
            "total_budget": per_capita * AUDIENCE,
            "start": (now - timedelta(minutes=1)).isoformat(),
            "end": (now + timedelta(hours=1)).isoformat(),
            "pacing": "even",
            "expected_audience": AUDIENCE,
        }
        (await client.put(f"{url}/campaigns/p99-paced", json=spec, headers=ADMIN)).raise_for_status()
        plain = {"campaign": "p99-plain", "budget_per_capita": per_capita}
        (await client.post(f"{url}/budget", json=plain, headers=ADMIN)).raise_for_status()
    rows: dict[str, Any] = {}
    for batch in (1, 100):
        await _measure(url, day, batch, 50, concurrency)  # warm-up
        times = await _measure(url, day, batch, requests, concurrency)
        rows[str(batch)] = {
            name: {"p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99)), "n": len(v)}
            for name, v in times.items()
        }
        rows[str(batch)]["cap_us"] = cap_step_microseconds(batch)
    return rows
