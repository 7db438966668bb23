"""One simulated day against real replicas: redis-server and `python -m service` processes on loopback.

The day is played in wall time: slot k of the day is sent at start + k·slot_seconds, split over the live
replicas (one request each, like a load balancer). Realized cost (the true cost of the decisions) is reported to
`/campaigns/{c}/realized` after a redemption lag. The ledger is sampled every `sample_seconds`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from numpy.typing import NDArray

from bench.campaign_world import Day, time_of_day

ADMIN_TOKEN = "bench-campaign-admin-token-0123"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def redis_server() -> Iterator[str]:
    """A redis-server of its own on a free loopback port (no persistence)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("bench.campaign needs redis-server (make redis-server installs it)")
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        args = [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ]
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        break
                except OSError:
                    time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait(timeout=10)


@dataclass
class Replica:
    process: subprocess.Popen[bytes]
    url: str

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


def start_replica(model_dir: Path, redis_url: str, prefix: str, settings: dict[str, str]) -> Replica:
    """`python -m service` on a free port (not yet ready: see `wait_ready`)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALLOCATOR_")}
    env.update(
        ALLOCATOR_MODEL_DIR=str(model_dir),
        ALLOCATOR_REDIS_URL=redis_url,
        ALLOCATOR_REDIS_PREFIX=prefix,
        ALLOCATOR_ADMIN_TOKEN=ADMIN_TOKEN,
        ALLOCATOR_LOG_LEVEL="WARNING",
        **{f"ALLOCATOR_{k.upper()}": v for k, v in settings.items()},
    )
    args = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return Replica(process, f"http://127.0.0.1:{port}")


async def wait_ready(client: httpx.AsyncClient, replica: Replica, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if replica.process.poll() is not None:
            raise SystemExit(f"replica {replica.url} exited with {replica.process.returncode}")
        try:
            if (await client.get(f"{replica.url}/readyz", timeout=1.0)).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.2)
    raise SystemExit(f"replica {replica.url} not ready within {timeout} s")


@dataclass
class DayTrace:
    """What happened: per arrival the treatment given (−1: not served), and samples of the ledger over time."""

    treatment: NDArray[np.int64]
    predicted_cost: NDArray[np.float64]  # (N,) expected_cost of the treatment given
    sent_fraction: NDArray[np.float64]  # (N,) time of day when the arrival was answered
    ledger: list[dict[str, float]] = field(default_factory=list)  # fraction, committed, realized, lambda, cap
    statuses: dict[str, int] = field(default_factory=dict)
    failed_requests: int = 0


@dataclass(frozen=True)
class DayPlan:
    campaign: str
    pacing: str
    budget: float
    day_seconds: float
    lag_fraction: float = 0.03  # redemptions arrive this share of the day after the decision
    kill_at: float | None = None  # kill a replica at this share of the day ...
    restart_at: float | None = None  # ... and start a new one at this share
    sample_seconds: float = 0.5


async def play_day(day: Day, plan: DayPlan, replicas: list[Replica], spawn: Any) -> DayTrace:
    """Create the campaign, play every slot in wall time, report realized cost with a lag; returns the trace."""
    n = len(day.slot)
    trace = DayTrace(np.full(n, -1, dtype=np.int64), np.zeros(n), np.full(n, np.nan))
    live = list(replicas)
    async with httpx.AsyncClient(timeout=30.0) as client:
        start = datetime.now(UTC) + timedelta(seconds=3)
        spec = {
            "total_budget": plan.budget,
            "start": start.isoformat(),
            "end": (start + timedelta(seconds=plan.day_seconds)).isoformat(),
            "pacing": plan.pacing,
            "expected_audience": n,
            "traffic_profile": time_of_day(48).tolist(),  # the operator's forecast of the day's traffic shape
        }
        created = await client.put(f"{live[0].url}/campaigns/{plan.campaign}", json=spec, headers=ADMIN)
        created.raise_for_status()
        t0 = start.timestamp()
        slot_seconds = plan.day_seconds / day.slots
        done = asyncio.Event()
        reporter = asyncio.create_task(_report_realized(client, live, plan, day, trace, t0, done))
        sampler = asyncio.create_task(_sample_ledger(client, live, plan, t0, trace, done))
        killed = restarted = False
        joining: asyncio.Task[None] | None = None
        for k in range(day.slots):
            await asyncio.sleep(max(t0 + k * slot_seconds - time.time(), 0.0))
            share = k / day.slots
            if plan.kill_at is not None and not killed and share >= plan.kill_at:
                victim = live.pop()
                victim.kill()
                killed = True
            if plan.restart_at is not None and killed and not restarted and share >= plan.restart_at:
                restarted = True
                joining = asyncio.create_task(_join(client, spawn(), live))
            rows = np.flatnonzero(day.slot == k)
            parts = [p for p in np.array_split(rows, len(live)) if p.size]
            await asyncio.gather(
                *(
                    _send(client, replica, list(live), plan, day, part, trace, t0)
                    for replica, part in zip(live, parts, strict=False)
                )
            )
        await asyncio.sleep(max(t0 + plan.day_seconds - time.time(), 0.0) + plan.lag_fraction * plan.day_seconds + 1.0)
        done.set()
        await asyncio.gather(reporter, sampler, *([joining] if joining is not None else []))
    return trace


async def _join(client: httpx.AsyncClient, replica: Replica, live: list[Replica]) -> None:
    await wait_ready(client, replica)
    live.append(replica)


async def _send(
    client: httpx.AsyncClient,
    replica: Replica,
    live: list[Replica],
    plan: DayPlan,
    day: Day,
    rows: NDArray[np.int64],
    trace: DayTrace,
    t0: float,
) -> None:
    body = {"campaign": plan.campaign, "individuals": [{"id": int(i), "features": day.features[i]} for i in rows]}
    answer: dict[str, Any] | None = None
    for target in [replica, *(r for r in live if r is not replica)]:  # a load balancer retries elsewhere
        try:
            response = await client.post(f"{target.url}/allocate", json=body)
            response.raise_for_status()
            answer = response.json()
            break
        except httpx.HTTPError:
            trace.failed_requests += 1
    if answer is None:
        return
    trace.treatment[rows] = [a["treatment"] for a in answer["allocations"]]
    trace.predicted_cost[rows] = [a["expected_cost"] for a in answer["allocations"]]
    trace.sent_fraction[rows] = (time.time() - t0) / plan.day_seconds
    status = str(answer.get("campaign_status"))
    trace.statuses[status] = trace.statuses.get(status, 0) + len(rows)


async def _report_realized(
    client: httpx.AsyncClient,
    live: list[Replica],
    plan: DayPlan,
    day: Day,
    trace: DayTrace,
    t0: float,
    done: asyncio.Event,
) -> None:
    """Every second: the true cost of the decisions older than the lag, and their predicted cost."""
    reported = np.zeros(len(day.slot), dtype=bool)
    while not done.is_set():
        await asyncio.sleep(1.0)
        matured_before = (time.time() - t0) / plan.day_seconds - plan.lag_fraction
        ready = ~reported & (trace.treatment >= 0) & (trace.sent_fraction <= matured_before)
        if not ready.any():
            continue
        rows = np.flatnonzero(ready)
        true_cost = float(day.true_cost[rows, trace.treatment[rows]].sum())
        report = {"realized_cost": true_cost, "predicted_cost": float(trace.predicted_cost[rows].sum())}
        for replica in list(live):
            try:
                (
                    await client.post(f"{replica.url}/campaigns/{plan.campaign}/realized", json=report, headers=ADMIN)
                ).raise_for_status()
                reported[rows] = True
                break
            except httpx.HTTPError:
                continue


async def _sample_ledger(
    client: httpx.AsyncClient, live: list[Replica], plan: DayPlan, t0: float, trace: DayTrace, done: asyncio.Event
) -> None:
    while not done.is_set():
        for replica in list(live):
            try:
                state = (await client.get(f"{replica.url}/campaigns/{plan.campaign}")).json()
            except (httpx.HTTPError, ValueError):
                continue
            trace.ledger.append(
                {
                    "fraction": (time.time() - t0) / plan.day_seconds,
                    "committed": state["committed"],
                    "realized": state["realized"],
                    "cap": state["cap"],
                    "lambda": state["lambda"],
                    "target": state["target"] if state["target"] is not None else float("nan"),
                }
            )
            break
        await asyncio.sleep(plan.sample_seconds)
