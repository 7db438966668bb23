"""How many worker processes one container runs, and how many onnxruntime threads each of them gets.

Worker processes are replicas like any other (DESIGN.md §5): each loads the model and keeps its own λ* table
in step with Redis. So more than one needs Redis; without it the in-process store would give every worker its
own budgets. An explicit `ALLOCATOR_WORKERS` above 1 without `ALLOCATOR_REDIS_URL` is refused; the default
(the CPUs the container may use) falls back to one worker and says so.

The CPU count is what the process may actually run on: its affinity mask and, inside a container, the cgroup
CPU quota (`cpu.max` in cgroup v2, `cpu.cfs_quota_us` / `cpu.cfs_period_us` in v1), rounded up.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

from service.config import Settings

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")


class WorkerPlanError(ValueError):
    """The settings ask for something the service cannot run (e.g. several workers without Redis)."""


@dataclass(frozen=True)
class WorkerPlan:
    workers: int  # uvicorn worker processes
    threads: int  # onnxruntime intra-op threads per worker
    cpus: int  # CPUs the container may use
    note: str | None = None  # why the plan differs from what the settings asked, to log at startup


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs allowed by the cgroup quota (e.g. 1.5), or None when there is no quota or no cgroup file."""
    v2 = root / "cpu.max"
    try:
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        v1_quota, v1_period = root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us"
        if v1_quota.is_file() and v1_period.is_file():
            quota_us = int(v1_quota.read_text())
            return None if quota_us <= 0 else quota_us / int(v1_period.read_text())
    except (OSError, ValueError):
        log.debug("unreadable cgroup CPU quota under %s", root, exc_info=True)
    return None


def allowed_cpus(root: Path = CGROUP_ROOT) -> int:
    """CPUs this process may run on: the affinity mask, capped by the cgroup quota (rounded up), at least 1."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cpus = min(cpus, math.ceil(limit))
    return max(1, cpus)


def planned_workers(settings: Settings, cpus: int) -> int:
    """The setting when given, else one per allowed CPU with Redis and one without."""
    if settings.workers is not None:
        return settings.workers
    return cpus if settings.redis_url is not None else 1


def plan_workers(settings: Settings, cpus: int | None = None) -> WorkerPlan:
    """Workers and threads per worker for `settings`; WorkerPlanError when they cannot be honoured."""
    cpus = allowed_cpus() if cpus is None else cpus
    workers = planned_workers(settings, cpus)
    if workers > 1 and settings.redis_url is None:
        raise WorkerPlanError(
            f"ALLOCATOR_WORKERS={workers} needs ALLOCATOR_REDIS_URL: worker processes are replicas and share "
            "λ* only through Redis (set ALLOCATOR_REDIS_URL, or ALLOCATOR_WORKERS=1)"
        )
    note = None
    if settings.workers is None and settings.redis_url is None and cpus > 1:
        note = f"one worker process although {cpus} CPUs are allowed: more need ALLOCATOR_REDIS_URL"
    return WorkerPlan(workers=workers, threads=onnx_threads(settings, cpus), cpus=cpus, note=note)


def onnx_threads(settings: Settings, cpus: int | None = None) -> int:
    """onnxruntime threads per worker: the setting, else the CPUs left to each planned worker.

    Every worker computes the same plan from the same settings, so workers × threads never exceeds the CPUs.
    """
    if settings.threads is not None:
        return settings.threads
    cpus = allowed_cpus() if cpus is None else cpus
    return max(1, cpus // planned_workers(settings, cpus))
