"""Worker and thread counts: the CPUs a container may use, and the Redis rule for several workers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.config import Settings
from service.workers import WorkerPlanError, allowed_cpus, cgroup_cpu_limit, onnx_threads, plan_workers

REDIS = "redis://127.0.0.1:6390/0"  # never connected to: planning only reads the setting


def test_cgroup_v2_and_v1_quotas_are_read(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(v2) == 1.5
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(v2) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(v1) == 2.0
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(v1) is None
    assert cgroup_cpu_limit(tmp_path / "none") is None


def test_allowed_cpus_is_the_affinity_capped_by_the_quota_rounded_up(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    assert allowed_cpus(tmp_path) == affinity  # no cgroup files: the affinity mask alone
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a CPU: still one worker
    assert allowed_cpus(tmp_path) == 1
    (tmp_path / "cpu.max").write_text(f"{100000 * (affinity + 3)} 100000\n")  # quota above the mask
    assert allowed_cpus(tmp_path) == affinity


def test_default_is_one_worker_per_cpu_with_redis_and_one_without() -> None:
    with_redis = plan_workers(Settings(redis_url=REDIS), cpus=4)
    assert (with_redis.workers, with_redis.threads, with_redis.note) == (4, 1, None)
    alone = plan_workers(Settings(), cpus=4)
    assert (alone.workers, alone.threads) == (1, 4)
    assert alone.note is not None and "need ALLOCATOR_REDIS_URL" in alone.note
    assert plan_workers(Settings(), cpus=1).note is None


def test_threads_share_the_cpus_between_workers() -> None:
    assert plan_workers(Settings(redis_url=REDIS, workers=2), cpus=8).threads == 4
    assert plan_workers(Settings(redis_url=REDIS, workers=3), cpus=2).threads == 1
    assert plan_workers(Settings(redis_url=REDIS, workers=2, threads=3), cpus=8).threads == 3
    # What each worker computes for itself from the same settings equals the plan.
    assert onnx_threads(Settings(redis_url=REDIS, workers=2), cpus=8) == 4


def test_several_workers_without_redis_are_refused() -> None:
    with pytest.raises(WorkerPlanError, match="ALLOCATOR_WORKERS=2 needs ALLOCATOR_REDIS_URL"):
        plan_workers(Settings(workers=2), cpus=4)
    assert plan_workers(Settings(workers=1), cpus=4).workers == 1
