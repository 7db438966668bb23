"""Load from outside the server: `wrk` (a C load generator, Debian package `wrk`; `make bench-deps` installs it).

`run_wrk` POSTs one JSON body over a fixed number of keep-alive connections for a fixed time (bench/post.lua)
and returns req/s, client-observed p50/p99 latency, the server's own time per request (its Server-Timing
header) and the CPU time that wrk and the server used meanwhile, so a report can say what share of the
shared cores the client took.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LUA_SCRIPT = Path(__file__).resolve().parent / "post.lua"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SUMMARY = re.compile(r"BENCH non200=(\d+) errors=(\d+) requests=(\d+) duration_us=(\d+) p50_us=(\d+) p99_us=(\d+)")


@dataclass(frozen=True)
class LoadResult:
    connections: int
    seconds: float
    requests: int
    rps: float
    p50_ms: float  # client-observed (wrk)
    p99_ms: float
    p99_worst_ms: float  # the worst run's p99 when runs are combined (else p99_ms)
    server_p50_ms: float  # Server-Timing: the app's own time per request
    server_p99_ms: float
    server_cpu_p50_ms: float  # Server-Timing cpu: the process's CPU time during the request (one in flight)
    client_cpu: float  # wrk's CPU seconds per wall second (1.0 = one full core)
    server_cpu: float  # the server processes' CPU seconds per wall second
    machine_cpu: float  # the machine's busy CPU seconds per wall second (/proc/stat): wrk, server, Redis, kernel…
    steal_cpu: float  # CPU seconds per wall second the hypervisor gave other guests while this VM wanted them
    worker_cpu: tuple[float, ...]  # each worker process's share (busiest first; empty for a single process)
    load_before: float  # 1-minute load average when the run started
    failures: int  # non-200 answers and socket errors


def require_wrk() -> str:
    binary = shutil.which("wrk")
    if binary is None:
        raise SystemExit("wrk is not installed: `make bench-deps` installs it (Debian package wrk)")
    return binary


def process_tree_cpu(root: int) -> dict[int, float]:
    """CPU seconds (user + system) used so far by `root` and each of its live child processes (workers)."""
    used = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # the process ended while we looked
        pid = int(stat.parent.name)
        fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) ": state, ppid, …
        if pid == root or int(fields[1]) == root:
            used[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
    return used


def run_wrk(url: str, body: bytes, connections: int, seconds: float, server_pid: int) -> LoadResult:
    """POST `body` to `url` from `connections` connections (one wrk thread) for `seconds`."""
    binary = require_wrk()
    with tempfile.NamedTemporaryFile(suffix=".json") as handle:
        handle.write(body)
        handle.flush()
        env = {**os.environ, "BODY_FILE": handle.name}
        command = [binary, "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "-s", str(LUA_SCRIPT), url]
        load_before = os.getloadavg()[0]
        server_before = process_tree_cpu(server_pid)
        client_before = _children_cpu()  # wrk is the only child reaped during the run
        machine_before, steal_before = machine_cpu_times()
        started = time.perf_counter()
        process = subprocess.run(command, env=env, capture_output=True, check=False)
        elapsed = time.perf_counter() - started
        client_cpu = _children_cpu() - client_before
        server_after = process_tree_cpu(server_pid)
        server_cpu = sum(server_after.values()) - sum(server_before.values())
        workers = {
            pid: cpu - server_before.get(pid, 0.0)
            for pid, cpu in server_after.items()
            if pid != server_pid and _is_worker(pid)
        }
        machine_after, steal_after = machine_cpu_times()
        machine_cpu, steal_cpu = machine_after - machine_before, steal_after - steal_before
    out, err = process.stdout, process.stderr
    text = out.decode()
    summary = SUMMARY.search(text)
    timings = re.search(r"BENCH server_ms=([\d.,]*)", text)
    cpu_timings = re.search(r"BENCH cpu_ms=([\d.,]*)", text)
    if process.returncode != 0 or summary is None or timings is None or cpu_timings is None:
        raise SystemExit(f"wrk failed ({process.returncode}): {err.decode()[-2000:]}{text[-2000:]}")
    non200, errors, requests, duration_us, p50_us, p99_us = (int(g) for g in summary.groups())
    server_ms, cpu_ms = _values(timings.group(1)), _values(cpu_timings.group(1))
    duration = duration_us / 1e6
    return LoadResult(
        connections=connections,
        seconds=duration,
        requests=requests,
        rps=requests / duration,
        p50_ms=p50_us / 1e3,
        p99_ms=p99_us / 1e3,
        p99_worst_ms=p99_us / 1e3,
        server_p50_ms=float(np.percentile(server_ms, 50)),
        server_p99_ms=float(np.percentile(server_ms, 99)),
        server_cpu_p50_ms=float(np.percentile(cpu_ms, 50)),
        client_cpu=client_cpu / elapsed,
        server_cpu=server_cpu / elapsed,
        machine_cpu=machine_cpu / elapsed,
        steal_cpu=steal_cpu / elapsed,
        worker_cpu=tuple(sorted((cpu / elapsed for cpu in workers.values()), reverse=True)),
        load_before=load_before,
        failures=non200 + errors,
    )


def _is_worker(pid: int) -> bool:
    """A worker process, not multiprocessing's resource tracker (also a child of the supervisor)."""
    try:
        return b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def machine_cpu_times() -> tuple[float, float]:
    """CPU seconds, over all cores since boot, spent busy here (user, nice, system, irq, softirq) and stolen
    by the hypervisor for other guests (steal: this VM wanted the CPU and did not get it). /proc/stat."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    return (user + nice + system + irq + softirq) / CLOCK_TICKS, steal / CLOCK_TICKS


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _values(text: str) -> np.ndarray:
    """Comma-separated numbers; [0] when there are none (the trivial app sends no Server-Timing)."""
    values = [float(v) for v in text.split(",") if v]
    return np.array(values or [0.0])


def combine(runs: list[LoadResult]) -> LoadResult:
    """Several runs of one load (the rounds of bench.serve) as one: requests and time add up, CPU shares are
    time-weighted, percentiles are the median run's (a percentile over all requests cannot be rebuilt from
    per-run ones; the median is not moved by one run the VM stalled in), and the worst run's p99 is kept."""
    seconds = sum(r.seconds for r in runs)

    def weighted(values: list[float]) -> float:
        return sum(v * r.seconds for v, r in zip(values, runs, strict=True)) / seconds

    widths = {len(r.worker_cpu) for r in runs}
    worker_cpu: tuple[float, ...] = ()
    if len(widths) == 1:  # the same worker processes throughout (none restarted)
        worker_cpu = tuple(weighted([r.worker_cpu[i] for r in runs]) for i in range(widths.pop()))
    return LoadResult(
        connections=runs[0].connections,
        seconds=seconds,
        requests=sum(r.requests for r in runs),
        rps=sum(r.requests for r in runs) / seconds,
        p50_ms=float(np.median([r.p50_ms for r in runs])),
        p99_ms=float(np.median([r.p99_ms for r in runs])),
        p99_worst_ms=max(r.p99_worst_ms for r in runs),
        server_p50_ms=float(np.median([r.server_p50_ms for r in runs])),
        server_p99_ms=float(np.median([r.server_p99_ms for r in runs])),
        server_cpu_p50_ms=float(np.median([r.server_cpu_p50_ms for r in runs])),
        client_cpu=weighted([r.client_cpu for r in runs]),
        server_cpu=weighted([r.server_cpu for r in runs]),
        machine_cpu=weighted([r.machine_cpu for r in runs]),
        steal_cpu=weighted([r.steal_cpu for r in runs]),
        worker_cpu=worker_cpu,
        load_before=runs[0].load_before,
        failures=sum(r.failures for r in runs),
    )
