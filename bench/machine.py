"""How much two busy processes get out of this machine compared with one: the ceiling of worker scaling.

A VM's two vCPUs may share a physical core (SMT) or a host under other tenants' load, and its speed drifts
from second to second. `cpu_scaling` runs the same pure-Python loop in one process, then in two at once, and
returns the ratio of work done: what 2 workers could at best gain over 1 at that moment, before any HTTP.
"""

from __future__ import annotations

import multiprocessing
import time
from multiprocessing.queues import Queue


def _spin(seconds: float, done: Queue[int]) -> None:
    """Count loop iterations for `seconds` (the GIL-bound work a worker does per request, without I/O)."""
    end = time.perf_counter() + seconds
    count = 0
    while time.perf_counter() < end:
        for _ in range(1000):
            count += 1
    done.put(count)


def work_done(processes: int, seconds: float) -> int:
    """Iterations `processes` spawned processes complete together in `seconds`."""
    context = multiprocessing.get_context("spawn")
    done: Queue[int] = context.Queue()
    workers = [context.Process(target=_spin, args=(seconds, done)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    total = sum(done.get() for _ in workers)
    for worker in workers:
        worker.join()
    return total


def cpu_scaling(seconds: float = 1.0) -> float:
    """Work of 2 processes at once over the work of 1, measured back to back."""
    return work_done(2, seconds) / work_done(1, seconds)
