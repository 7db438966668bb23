"""The markdown of bench.serve: ceilings, batch and single-request tables per worker count, and the targets."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.wrk import LoadResult

if TYPE_CHECKING:  # runtime import would be circular (bench.serve imports this module)
    from bench.serve import Ceilings, Timing, WorkerRuns


def _yes(met: bool) -> str:
    return "**met**" if met else "**not met**"


def _ms(timing: Timing) -> str:
    unit, scale = ("µs", 1e6) if timing.wall < 1e-4 else ("ms", 1e3)
    return f"{scale * timing.wall:.3g} ({scale * timing.cpu:.3g}) {unit}"


def wall_ratio(ceiling: Timing, result: LoadResult) -> float:
    return ceiling.wall / (result.server_p50_ms / 1e3)


def cpu_ratio(ceiling: Timing, result: LoadResult) -> float:
    return ceiling.cpu / (result.server_cpu_p50_ms / 1e3) if result.server_cpu_p50_ms > 0 else float("nan")


def _ratio(ceiling: Timing, result: LoadResult) -> str:
    return f"{wall_ratio(ceiling, result):.0%} ({cpu_ratio(ceiling, result):.0%})"


def _server_ms(result: LoadResult) -> str:
    if result.server_p50_ms == 0:
        return "–"  # the trivial app sends no Server-Timing
    return f"{result.server_p50_ms:.2f} / {result.server_p99_ms:.2f} ms"


def per_core(result: LoadResult) -> float:
    return result.rps / result.server_cpu if result.server_cpu > 0 else float("nan")


def _cpu(result: LoadResult) -> str:
    """wrk / server / everything else busy / stolen by the hypervisor, in shares of one core."""
    rest = max(0.0, result.machine_cpu - result.client_cpu - result.server_cpu)
    split = f" ({' + '.join(f'{cpu:.0%}' for cpu in result.worker_cpu)})" if len(result.worker_cpu) > 1 else ""
    return f"{result.client_cpu:.0%} / {result.server_cpu:.0%}{split} / {rest:.0%} / {result.steal_cpu:.0%}"


def report(
    args: argparse.Namespace,
    ceilings: Ceilings,
    stacks: tuple[LoadResult, LoadResult],
    runs: list[WorkerRuns],
    context: dict[str, Any],
) -> str:
    stack, pure = stacks  # the trivial app under httptools + uvloop, and under h11 + asyncio
    manifest, sizes = context["manifest"], context["sizes"]
    n = args.batch
    lines = [
        f"Model: {context['source']} (model version {manifest.model_version}, D={manifest.n_features}, "
        f"K={manifest.n_treatments}); `python -m service` on loopback with {context['store']}, "
        f"`ALLOCATOR_WORKERS` = {', '.join(str(r.workers) for r in runs)}, one onnxruntime thread per worker. "
        f"Load: `wrk` (one thread, keep-alive connections) on the same 2 cores, {args.rounds} interleaved rounds "
        f"of {args.seconds:g} s per load: every server runs throughout and each round loads each once, so the "
        "machine's drifting speed falls on all alike. req/s over all rounds; p50 and p99 the median round's "
        "(the worst round's p99 in brackets: a VM stall of ~100 ms in one round, which hits the trivial app "
        "as well, moves it); ceilings the median of the rounds'.",
        "",
        f"Machine load (`uptime`): {context['uptime'][0]} at the start, {context['uptime'][1]} at the end; "
        f"the benchmark, its server and wrk ran at niceness {context['nice']}. "
        "The machine is shared with other engineers' jobs: every number below is what was left of 2 cores "
        "for the server and wrk together; the CPU columns say how much each got.",
        "",
        "**Ceilings** (same run; decoding and onnxruntime in the benchmark process, median wall time and, in "
        "brackets, median CPU time; the trivial app under wrk):",
        "",
        "| ceiling | time per request | rate (wall) |",
        "|---|---:|---:|",
        f"| orjson decoding, row batch body ({n} individuals, {sizes['rows'] / 1e3:.0f} kB) | "
        f"{_ms(ceilings.decode_rows)} | {n / ceilings.decode_rows.wall:,.0f} individuals/s |",
        f"| orjson decoding, columnar batch body ({sizes['columns'] / 1e3:.0f} kB) | "
        f"{_ms(ceilings.decode_columns)} | {n / ceilings.decode_columns.wall:,.0f} individuals/s |",
        f"| onnxruntime alone, batch of {n} (one thread) | {_ms(ceilings.onnx_batch)} | "
        f"{n / ceilings.onnx_batch.wall:,.0f} individuals/s |",
        f"| orjson decoding, one-individual body ({sizes['one']} B) | {_ms(ceilings.decode_one)} | "
        f"{1 / ceilings.decode_one.wall:,.0f} req/s |",
        f"| onnxruntime alone, one row | {_ms(ceilings.onnx_one)} | {1 / ceilings.onnx_one.wall:,.0f} req/s |",
        f"| trivial FastAPI POST (reads the body, answers a constant), same uvicorn, one process, "
        f"wrk {stack.connections} connections | p99 {stack.p99_ms:.1f} ms | {stack.rps:,.0f} req/s |",
        f"| the machine: work of 2 busy processes over 1, a pure-Python loop (bench/machine.py), per round | "
        f"{' / '.join(f'{x:.2f}×' for x in context['scaling'])} | – |",
        "",
        f"**Batch path** ({n} individuals per request; one wrk connection per worker, so a request never waits "
        "behind another in its process). Server time: the app's Server-Timing (median), wall and, in brackets, "
        "the process's CPU time during the request; it starts once the headers are parsed, so it includes "
        "reading the body off the socket while wrk is still sending it. Ratios: the JSON-decoding ceiling's "
        "time over the server's (100% = nothing but decoding), wall over wall and CPU over CPU.",
        "",
        f"Batch runs redone because the kernel gave both connections to one worker: {context['redone']}.",
        "",
        "| workers | body | server time | vs decoding the row body | vs decoding its own body | client p50 "
        "| individuals/s (client) | CPU: wrk / server / rest / stolen |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        for form, result, own in (
            ("rows", run.rows, ceilings.decode_rows),
            ("columns, answer in rows", run.columns, ceilings.decode_columns),
            ("columns, answer in columns", run.columns_out, ceilings.decode_columns),
        ):
            lines.append(
                f"| {run.workers} | {form} | {result.server_p50_ms:.2f} ({result.server_cpu_p50_ms:.2f}) ms "
                f"| {_ratio(ceilings.decode_rows, result)} | {_ratio(own, result)} | {result.p50_ms:.2f} ms "
                f"| {result.rps * n:,.0f} | {_cpu(result)} |"
            )
    lines += [
        "",
        "**Single-individual requests** (one individual per request, the row body; wrk's own latency "
        "percentiles, and the app's Server-Timing for the same requests):",
        "",
        "| workers | connections | req/s | p50 | p99 | server p50 / p99 | CPU: wrk / server / rest / stolen "
        "| req/s per server core | load at start |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        for result in [*run.single, *([stack, pure] if run is runs[0] else [])]:
            workers = {id(stack): "trivial app", id(pure): "trivial app, h11 + asyncio"}.get(id(result), run.workers)
            lines.append(
                f"| {workers} | {result.connections} | {result.rps:,.0f} | {result.p50_ms:.1f} ms | "
                f"{result.p99_ms:.1f} ({result.p99_worst_ms:.0f}) ms | {_server_ms(result)} | "
                f"{_cpu(result)} | {per_core(result):,.0f} | {result.load_before:.1f} |"
            )
    lines += [
        "",
        "req/s per server core: requests over the CPU seconds the server processes used, i.e. what one core "
        "would serve if the server had it to itself (a projection that holds while the server is CPU-bound; "
        "it does not count the CPU wrk needs). CPU columns, in shares of one core (the machine has "
        f"{os.cpu_count()}): wrk; the server's processes (with several workers, each one's share in brackets); "
        "the rest of the machine's busy time (Redis, which the service writes its decision log to, the "
        "kernel's loopback networking, the idle servers, anything else running); and the time the hypervisor "
        "gave other guests while this VM wanted a core (`steal` in /proc/stat: the VM's drifting speed, made "
        "visible). A worker serves the connections the kernel hands its socket (SO_REUSEPORT, a hash of the "
        "client's address), so with as many connections as workers two connections can land on one worker.",
    ]
    failures = sum(r.failures for run in runs for r in (run.rows, run.columns, run.columns_out, *run.single))
    lines += ["", f"Failed requests (non-200 or socket errors) over every run: {failures}.", ""]
    lines += targets(args, ceilings, runs, context["scaling"])
    last = next(run for run in reversed(runs) if run.budget_server_ms)
    lines += [
        "",
        f"**POST /budget** ({len(last.budget_server_ms)} new budgets, {last.workers} worker(s)):",
        "",
        "| measure | median | max |",
        "|---|---:|---:|",
        f"| server time (incl. Redis write + publish) | {np.median(last.budget_server_ms):.2f} ms | "
        f"{np.max(last.budget_server_ms):.2f} ms |",
        f"| λ* solve (binary search on the cached sweep) | {np.median(last.budget_solve_ms):.3f} ms | "
        f"{np.max(last.budget_solve_ms):.3f} ms |",
    ]
    return "\n".join(lines)


def targets(args: argparse.Namespace, ceilings: Ceilings, runs: list[WorkerRuns], scaling: list[float]) -> list[str]:
    """The issue's Done-when, each with the number from this run that decides it."""
    by_workers = {run.workers: run for run in runs}
    lines = ["**Targets** (issue 16), from this run:", ""]
    one = by_workers.get(1)
    if one is not None:
        rows, columns = one.rows, one.columns_out
        row_ratio, column_ratio = wall_ratio(ceilings.decode_rows, rows), wall_ratio(ceilings.decode_rows, columns)
        row_cpu, column_cpu = cpu_ratio(ceilings.decode_rows, rows), cpu_ratio(ceilings.decode_rows, columns)
        own_ratio = wall_ratio(ceilings.decode_columns, columns)
        rows_answer = wall_ratio(ceilings.decode_rows, one.columns)
        best = max(one.single, key=lambda r: r.rps)
        lines += [
            f"- row batch server time ≥ 60% of the JSON-decoding ceiling (1 worker): {row_ratio:.0%} wall "
            f"{_yes(row_ratio >= 0.6)}; {row_cpu:.0%} in CPU time {_yes(row_cpu >= 0.6)}",
            f"- columnar batch ≥ 80% of it (answered in columns): {column_ratio:.0%} wall {_yes(column_ratio >= 0.8)}; "
            f"{column_cpu:.0%} in CPU time {_yes(column_cpu >= 0.8)} (of the row body's ceiling; of its own, "
            f"smaller body's: {own_ratio:.0%} wall; answered in rows: {rows_answer:.0%} wall)",
            f"- single requests ≥ 2,000 req/s with one worker: {best.rps:,.0f} req/s at {best.connections} "
            f"connections {_yes(best.rps >= 2000)} ({per_core(best):,.0f} req/s per core of server CPU)",
        ]
    two = by_workers.get(2)
    if two is not None:
        at_64 = [r for r in two.single if r.connections == 64]
        if at_64:
            lines.append(
                f"- p99 ≤ 50 ms at 64 connections with 2 workers: {at_64[0].p99_ms:.1f} ms "
                f"{_yes(at_64[0].p99_ms <= 50)} (median of {args.rounds} rounds; the worst round's: "
                f"{at_64[0].p99_worst_ms:.1f} ms)"
            )
        if one is not None:
            for single_two in two.single:
                single_one = next((r for r in one.single if r.connections == single_two.connections), None)
                if single_one is None or single_two.connections == 1:
                    continue  # one connection keeps one worker busy at a time: no scaling to expect
                ratio = single_two.rps / single_one.rps
                lines.append(
                    f"- 2 workers ≥ 1.6× the req/s of 1 at {single_two.connections} connections: {ratio:.2f}× "
                    f"(the machine: {np.median(scaling):.2f}× for 2 busy processes) "
                    f"{_yes(ratio >= 1.6)} (CPU, wrk / server / rest / stolen: {_cpu(single_one)} with 1 worker, "
                    f"{_cpu(single_two)} with 2)"
                )
    return lines
