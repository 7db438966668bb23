"""Serving benchmark: /allocate server and client-observed time, 1 and 2 workers, beside ceilings from the same run.

    make bench-deps   # redis-server and wrk (Debian packages)
    python -m bench.serve [--model-dir models/default] [--batch 1000] [--seconds 5] [--rounds 3] [--workers 1,2]

Starts `python -m service` for each worker count (`ALLOCATOR_WORKERS`, one onnxruntime thread each, loopback,
one redis-server on a free port) and two trivial apps, all at once, and loads each in turn with `wrk`
(bench/wrk.py), a C load generator, in `--rounds` interleaved rounds of `--seconds` per load:
  * row batch and columnar batch (answered in rows, and in columns): `--batch` individuals per request, one
    connection per worker; the server's own time (Server-Timing) and the client-observed latency and throughput;
  * single-individual requests at each of `--connections` (default 1, 16, 64): req/s, p50 and p99, client and
    server side, and the CPU that wrk, the server and everything else took from the shared cores;
  * /budget: server time and λ* solve time for new budgets.
Ceilings, measured again in each round: orjson decoding of each body and onnxruntime alone on the batch and on
one row (in this process), a trivial FastAPI POST under the same uvicorn (the HTTP stack alone, `wrk`), and
how much more work two busy processes do than one on this machine (bench/machine.py).
Results go to docs/benchmarks.md ("serve"). When `--model-dir` does not exist, a toy model is built.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import orjson

from bench.machine import cpu_scaling
from bench.report import write_section
from bench.serve_report import report
from bench.servers import ADMIN_TOKEN, Server, allocator, redis_server, trivial_server
from bench.wrk import LoadResult, combine, require_wrk, run_wrk
from service.decision import sweep
from service.manifest import Manifest, Treatment, read_manifest


def build_toy_model(out: Path, n_features: int = 8, n_treatments: int = 4, rows: int = 20_000) -> None:
    """A linear-revenue, relu-cost S-learner written as a serving artifact (no torch needed)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    params = {
        "w_revenue": rng.normal(0, 0.5, (n_features, n_treatments)).astype(np.float32),
        "b_revenue": np.linspace(0, 1, n_treatments).astype(np.float32),
        "w_cost": np.abs(rng.normal(0, 0.3, (n_features, n_treatments))).astype(np.float32),
        "c0": np.linspace(0, 1, n_treatments).astype(np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["features", "w_revenue"], ["r0"]),
        helper.make_node("Add", ["r0", "b_revenue"], ["revenue"]),
        helper.make_node("MatMul", ["features", "w_cost"], ["c1"]),
        helper.make_node("Relu", ["c1"], ["c2"]),
        helper.make_node("Add", ["c2", "c0"], ["cost"]),
    ]
    graph = helper.make_graph(
        nodes,
        "bench_toy",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", n_features])],
        [
            helper.make_tensor_value_info("revenue", TensorProto.FLOAT, ["batch", n_treatments]),
            helper.make_tensor_value_info("cost", TensorProto.FLOAT, ["batch", n_treatments]),
        ],
        initializer=[numpy_helper.from_array(v, name=k) for k, v in params.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    data = model.SerializeToString()
    manifest = Manifest(
        model_version=hashlib.sha256(data).hexdigest()[:16],
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        method="toy (bench.serve)",
        features=[f"x{j}" for j in range(n_features)],
        treatments=[Treatment(id=j, name=f"arm_{j}") for j in range(n_treatments)],
        default_budget_per_capita=0.5,
        default_lambda=0.5,
        opset=17,
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.onnx").write_bytes(data)
    (out / "manifest.json").write_text(manifest.to_json())
    np.savez(out / "population.npz", features=rng.normal(size=(rows, n_features)).astype(np.float32))


def body_for(population: np.ndarray, names: list[str], start: int, count: int) -> bytes:
    """Row body: one object per individual, features keyed by name (what a typical caller sends)."""
    rows = population[np.arange(start, start + count) % len(population)]
    individuals = [
        {"id": f"user-{start + i}", "features": dict(zip(names, map(float, row), strict=True))}
        for i, row in enumerate(rows)
    ]
    return orjson.dumps({"campaign": "default", "individuals": individuals})


def columnar_body_for(population: np.ndarray, start: int, count: int, answer: str = "rows") -> bytes:
    """Columnar body for the same individuals as `body_for`: ids and one array per feature; `answer` "columns"
    asks for the allocations as one array per field too."""
    rows = population[np.arange(start, start + count) % len(population)]
    ids = [f"user-{start + i}" for i in range(count)]
    body: dict[str, Any] = {"campaign": "default", "ids": ids, "columns": rows.astype(np.float64).T.tolist()}
    if answer != "rows":
        body["response"] = answer
    return orjson.dumps(body)


@dataclass(frozen=True)
class Timing:
    wall: float  # seconds, median
    cpu: float  # this thread's CPU seconds, median: unaffected by waiting for a core on a busy machine


def best_seconds(fn: Any, repeat: int) -> Timing:
    """Median wall and CPU time of `fn()` over `repeat` calls (after one warm-up)."""
    fn()
    wall, cpu = [], []
    for _ in range(repeat):
        started, cpu_started = time.perf_counter(), time.thread_time()
        fn()
        wall.append(time.perf_counter() - started)
        cpu.append(time.thread_time() - cpu_started)
    return Timing(float(np.median(wall)), float(np.median(cpu)))


@dataclass
class Ceilings:
    decode_rows: Timing  # orjson.loads of the row batch body
    decode_columns: Timing  # of the columnar batch body
    onnx_batch: Timing  # onnxruntime alone, one thread, on the batch
    decode_one: Timing
    onnx_one: Timing


def measure_ceilings(model_dir: Path, bodies: dict[str, bytes], x_batch: np.ndarray) -> Ceilings:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])
    return Ceilings(
        decode_rows=best_seconds(lambda: orjson.loads(bodies["rows"]), 200),
        decode_columns=best_seconds(lambda: orjson.loads(bodies["columns"]), 200),
        onnx_batch=best_seconds(lambda: session.run(None, {"features": x_batch}), 200),
        decode_one=best_seconds(lambda: orjson.loads(bodies["one"]), 5000),
        onnx_one=best_seconds(lambda: session.run(None, {"features": x_batch[:1]}), 5000),
    )


def run_budget(url: str, per_capita: list[float]) -> tuple[list[float], list[float]]:
    """Server ms (Server-Timing) and λ* solve ms of POST /budget for each budget."""
    server, solve = [], []
    with httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as client:
        for b in per_capita:
            response = client.post("/budget", json={"campaign": "bench", "budget_per_capita": b})
            response.raise_for_status()
            server.append(float(response.headers["server-timing"].split("app;dur=")[1].split(",")[0]))
            solve.append(response.json()["solve_ms"])
    return server, solve


def check_bodies(url: str, bodies: dict[str, bytes]) -> None:
    """Every batch form allocates the same before anything is timed (a benchmark of wrong answers is no use)."""
    with httpx.Client(base_url=url, timeout=30, headers={"content-type": "application/json"}) as client:
        answers = {form: client.post("/allocate", content=body) for form, body in bodies.items()}
    for form, response in answers.items():
        if response.status_code != 200:
            raise SystemExit(f"POST /allocate ({form}) answered {response.status_code}: {response.text[:500]}")
    fields = answers["columns_out"].json()["allocations"]
    as_rows = [dict(zip(fields, values, strict=True)) for values in zip(*fields.values(), strict=True)]
    decided = [
        [{k: v for k, v in a.items() if k != "decision_id"} for a in allocations]
        for allocations in (answers["rows"].json()["allocations"], answers["columns"].json()["allocations"], as_rows)
    ]  # every request logs decisions of its own
    if not decided[0] == decided[1] == decided[2]:
        raise SystemExit("the row and columnar bodies were allocated differently")


@dataclass
class WorkerRuns:
    workers: int
    rows: LoadResult
    columns: LoadResult  # columnar body, row-form answer
    columns_out: LoadResult  # columnar body and answer
    single: list[LoadResult]
    budget_server_ms: list[float]
    budget_solve_ms: list[float]


def run_rounds(
    args: argparse.Namespace,
    servers: dict[int, Server],
    trivials: dict[str, Server],
    bodies: dict[str, bytes],
    ceiling: Callable[[], Ceilings],
) -> tuple[list[Ceilings], list[float], int, dict[tuple[str, Any, int], LoadResult]]:
    """Every load `args.rounds` times, interleaved: round 1 runs each load once, then round 2, … So the
    machine's drifting speed (±25% from one run to the next on this VM) falls on every load alike and the
    ratios between them (workers, the trivial app, the ceilings, measured again each round) hold.

    Returns the ceilings and the machine's 2-process scaling of each round, how many batch runs were redone
    because a worker got no connection, and each load's runs combined, keyed by (body, workers or trivial
    app, connections).
    """
    loads: dict[tuple[str, Any, int], list[LoadResult]] = defaultdict(list)
    ceilings, scaling = [], []
    redone_runs = 0
    for round_ in range(args.rounds):
        started = time.monotonic()
        ceilings.append(ceiling())
        scaling.append(cpu_scaling())
        for name, trivial in trivials.items():
            loads["trivial", name, 16].append(
                run_wrk(f"{trivial.url}/allocate", bodies["one"], 16, args.seconds, trivial.pid)
            )
        for workers, server in servers.items():
            url = f"{server.url}/allocate"
            # One connection per worker: server time is the request's own, not time queued behind another.
            for form in ("rows", "columns", "columns_out"):
                result, redone = one_connection_per_worker(url, bodies[form], workers, args.seconds, server.pid)
                loads[form, workers, workers].append(result)
                redone_runs += redone
            for connections in args.connections:
                result = run_wrk(url, bodies["one"], connections, args.seconds, server.pid)
                loads["one", workers, connections].append(result)
        print(f"round {round_ + 1}/{args.rounds} took {time.monotonic() - started:.0f} s", file=sys.stderr)
    return ceilings, scaling, redone_runs, {key: combine(runs) for key, runs in loads.items()}


# A worker with less than this share of the server's CPU in a batch run had no connection of its own.
IDLE_WORKER_SHARE = 0.1
BALANCE_TRIES = 5


def one_connection_per_worker(url: str, body: bytes, workers: int, seconds: float, pid: int) -> tuple[LoadResult, int]:
    """A batch run with `workers` connections, redone (new connections) while the kernel's SO_REUSEPORT hash
    gave two of them to one worker and left another idle (a coin flip for 2 of 2); the runs redone."""
    for tries in range(BALANCE_TRIES):
        result = run_wrk(url, body, workers, seconds, pid)
        if workers == 1 or min(result.worker_cpu, default=1.0) >= IDLE_WORKER_SHARE * result.server_cpu / workers:
            return result, tries
    return result, BALANCE_TRIES - 1  # reported as measured: the split shows in the CPU column


def median_ceilings(rounds: list[Ceilings]) -> Ceilings:
    """Each ceiling's median wall and CPU time over the rounds."""

    def median(timings: list[Timing]) -> Timing:
        return Timing(float(np.median([t.wall for t in timings])), float(np.median([t.cpu for t in timings])))

    return Ceilings(*(median([getattr(c, f.name) for c in rounds]) for f in fields(Ceilings)))


def parse_ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=Path("models/default"))
    parser.add_argument("--batch", type=int, default=1000, help="individuals per batch request")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each wrk run in each round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every load")
    parser.add_argument("--workers", type=parse_ints, default=[1, 2], help="worker counts to measure (e.g. 1,2)")
    parser.add_argument("--connections", type=parse_ints, default=[1, 16, 64], help="wrk connections, single")
    parser.add_argument("--budgets", type=int, default=30, help="new budgets posted to /budget")
    parser.add_argument("--no-write", action="store_true", help="print only, leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    require_wrk()
    uptime_before = uptime()

    with tempfile.TemporaryDirectory() as scratch:
        model_dir = args.model_dir
        source = str(model_dir)
        if not (model_dir / "manifest.json").exists():
            model_dir = Path(scratch) / "toy"
            build_toy_model(model_dir)
            source = f"toy model (D=8, K=4; {args.model_dir} not found)"
        manifest = read_manifest(model_dir / "manifest.json")
        with np.load(model_dir / "population.npz") as archive:
            population = archive["features"].astype(np.float32)
        bodies = {
            "rows": body_for(population, manifest.features, 0, args.batch),
            "columns": columnar_body_for(population, 0, args.batch),
            "columns_out": columnar_body_for(population, 0, args.batch, answer="columns"),
            "one": body_for(population, manifest.features, 0, 1),
        }
        ceilings = measure_ceilings(model_dir, bodies, population[np.arange(args.batch) % len(population)])
        # Budgets spread over the feasible range: the cheapest policy's spend up to the revenue-maximising one's.
        session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
        path = sweep(*session.run(["revenue", "cost"], {"features": population}))
        low, high = (path.min_spend * (1 + 1e-6) + 1e-9) / path.n_rows, path.max_spend / path.n_rows
        args.budgets = list(np.linspace(low, high, args.budgets))

        with ExitStack() as stack:
            redis_url = stack.enter_context(redis_server())
            if redis_url is None and max(args.workers) > 1:
                raise SystemExit("several workers need Redis: `make bench-deps` installs redis-server")
            # Every server runs for the whole benchmark (idle while another is measured), so rounds interleave.
            trivials = {
                "trivial app": stack.enter_context(trivial_server()),
                "trivial app, h11 + asyncio": stack.enter_context(trivial_server(pure_python=True)),
            }
            servers = {
                w: stack.enter_context(allocator(model_dir, redis_url, max(args.batch, 10_000), w))
                for w in args.workers
            }
            for server in servers.values():
                check_bodies(server.url, bodies)
                run_wrk(f"{server.url}/allocate", bodies["one"], 16, 2, server.pid)  # warm-up
            x_batch = population[np.arange(args.batch) % len(population)]
            rounds, scaling, redone, loads = run_rounds(
                args, servers, trivials, bodies, lambda: measure_ceilings(model_dir, bodies, x_batch)
            )
            budget_server, budget_solve = run_budget(servers[max(servers)].url, args.budgets)
        runs = [
            WorkerRuns(
                w,
                loads["rows", w, w],
                loads["columns", w, w],
                loads["columns_out", w, w],
                [loads["one", w, c] for c in args.connections],
                budget_server if w == max(servers) else [],
                budget_solve if w == max(servers) else [],
            )
            for w in args.workers
        ]
        ceilings = median_ceilings(rounds)
        stacks = (loads["trivial", "trivial app", 16], loads["trivial", "trivial app, h11 + asyncio", 16])
    context = {
        "source": source,
        "manifest": manifest,
        "store": "Redis" if redis_url else "in-process store",
        "sizes": {form: len(body) for form, body in bodies.items()},
        "uptime": (uptime_before, uptime()),
        "nice": os.nice(0),  # the priority the benchmark (and the server and wrk it starts) ran at
        "scaling": scaling,
        "redone": redone,
    }
    markdown = report(args, ceilings, stacks, runs, context)
    print(markdown)
    if not args.no_write:
        command = "python -m bench.serve" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
        write_section("serve", command.strip(), markdown)


def uptime() -> str:
    """`uptime`'s load averages (the machine is shared: they say how much else was running)."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f}"


if __name__ == "__main__":
    main()
