"""The sink process against a real redis-server: Parquet on disk, acknowledged after, nothing lost on SIGKILL."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from .conftest import AppFactory, wait_for
from .test_decisions import _individuals, give_budget

pytest.importorskip("pyarrow")
from training.logs import read_decisions

ROOT = Path(__file__).resolve().parents[2]


def _sink(redis_url: str, prefix: str, out: Path, batch: int) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "service.sink",
        *("--out", str(out), "--redis-url", redis_url, "--prefix", prefix),
        *("--consumer", "sink-a", "--batch", str(batch), "--block-ms", "50"),
    ]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _log_decisions(make_client: AppFactory, model_dir: Path, redis_url: str, prefix: str, n: int) -> set[str]:
    client = make_client(model_dir, redis_url=redis_url, redis_prefix=prefix)
    for campaign in ("spring", "autumn"):
        give_budget(client, campaign)
    ids: set[str] = set()
    for start in range(0, n, 1_000):
        for campaign in ("spring", "autumn"):
            body = {"campaign": campaign, "individuals": _individuals(start, 500, seed=start)}
            ids.update(a["decision_id"] for a in client.post("/allocate", json=body).json()["allocations"])
    wait_for(lambda: client.get("/readyz").json()["decision_log"]["shipped"] == len(ids), timeout=30.0)
    return ids


def test_sink_killed_mid_batch_and_restarted_loses_nothing(
    make_client: AppFactory, model_dir: Path, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    ids = _log_decisions(make_client, model_dir, redis_url, prefix, 20_000)
    out = tmp_path / "decisions"
    client = redis.Redis.from_url(redis_url)
    streams = [f"{prefix}:decisions:spring", f"{prefix}:decisions:autumn"]

    def pending() -> int:
        total = 0
        for stream in streams:
            with contextlib.suppress(redis.ResponseError):  # the group does not exist yet
                total += int(client.xpending(stream, "sink")["pending"])
        return total

    sink = _sink(redis_url, prefix, out, batch=4)
    try:
        deadline = time.monotonic() + 60
        while pending() == 0:  # delivered to the sink and not yet acknowledged: a batch in flight
            assert sink.poll() is None and time.monotonic() < deadline
        os.kill(sink.pid, signal.SIGKILL)
        sink.wait(timeout=10)
    finally:
        if sink.poll() is None:
            sink.kill()
    assert pending() > 0  # the kill left delivered, unacknowledged entries behind
    restarted = _sink(redis_url, prefix, out, batch=4)
    try:
        wait_for(lambda: pending() == 0 and len(read_decisions(out)[0]) == len(ids), timeout=60.0, step=0.2)
    finally:
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(timeout=20)
    assert restarted.returncode == 0, restarted.stderr.read() if restarted.stderr else ""
    frame, schemas = read_decisions(out)
    assert set(frame["decision_id"]) == ids  # nothing lost, nothing doubled after dedup
    assert len(frame) == len(ids)
    assert set(frame["campaign"]) == {"spring", "autumn"} and len(schemas) == 1
    assert all(len(v) == 4 for v in frame["features"])
    parts = sorted(p.relative_to(out).parts[:2] for p in out.rglob("*.parquet") if not p.name.startswith("."))
    assert {p[0] for p in parts} == {"campaign=spring", "campaign=autumn"} and all(
        p[1].startswith("hour=") for p in parts
    )


def test_heartbeat_probe(tmp_path: Path) -> None:
    beat = tmp_path / "beat"
    probe = [sys.executable, "-m", "service.sink", "--check-heartbeat", str(beat)]
    assert subprocess.run(probe, cwd=ROOT, check=False).returncode == 1  # never touched
    beat.touch()
    assert subprocess.run(probe, cwd=ROOT, check=False).returncode == 0
    os.utime(beat, (time.time() - 120, time.time() - 120))
    assert subprocess.run(probe, cwd=ROOT, check=False).returncode == 1  # stale: the sink is stuck
