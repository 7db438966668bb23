"""Serving benchmark: /allocate throughput and latency, /budget solve time, beside ceilings from the same run.

    python -m bench.serve [--model-dir models/default] [--batch 1000] [--seconds 10]

Starts `python -m service` (one uvicorn worker, loopback; a redis-server on a free port when one is installed)
and measures
  * batch path: individuals/s for POST /allocate with `--batch` individuals per request, beside the ceilings
    orjson decoding alone of the same body and onnxruntime alone on the same batch;
  * single path: req/s, p50 and p99 for one-individual requests from `--concurrency` clients (one httpx
    AsyncClient per task), beside the same two ceilings for a single individual;
  * /budget: server time (Server-Timing header) and λ* solve time for new budgets.
Every phase is bounded by a request count and by `--seconds`. Results go to docs/benchmarks.md ("serve").
When `--model-dir` does not exist, a toy model (onnx.helper, like the service tests') is built in a temp dir.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import orjson

from bench.report import write_section
from service.decision import sweep
from service.manifest import Manifest, Treatment, read_manifest

ADMIN_TOKEN = "bench-admin-token-0123456789"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


@contextmanager
def redis_server() -> Iterator[str | None]:
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
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


@contextmanager
def service(model_dir: Path, redis_url: str | None, max_batch: int) -> Iterator[str]:
    """`python -m service` on a free loopback port; yields its base URL once /readyz answers 200."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALLOCATOR_")}
    env.update(
        ALLOCATOR_MODEL_DIR=str(model_dir),
        ALLOCATOR_ADMIN_TOKEN=ADMIN_TOKEN,
        ALLOCATOR_LOG_LEVEL="WARNING",
        ALLOCATOR_MAX_BATCH=str(max_batch),
    )
    if redis_url is not None:
        env["ALLOCATOR_REDIS_URL"] = redis_url
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)], env=env, stderr=subprocess.PIPE
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise SystemExit(f"service exited: {process.stderr.read().decode() if process.stderr else ''}")
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("service not ready within 60 s")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def body_for(population: np.ndarray, names: list[str], start: int, count: int) -> bytes:
    rows = population[np.arange(start, start + count) % len(population)]
    individuals = [
        {"id": f"user-{start + i}", "features": dict(zip(names, map(float, row), strict=True))}
        for i, row in enumerate(rows)
    ]
    return orjson.dumps({"campaign": "default", "individuals": individuals})


def best_seconds(fn: Any, repeat: int) -> float:
    """Median wall time of `fn()` over `repeat` calls (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


async def run_batch(url: str, bodies: list[bytes], requests: int, seconds: float, clients: int) -> tuple[float, float]:
    """(individuals/s end to end, median server ms) over `requests` batch requests from `clients` tasks."""
    individuals = len(orjson.loads(bodies[0])["individuals"])
    server_ms: list[float] = []
    done = 0
    deadline = time.monotonic() + seconds

    async def worker(k: int) -> None:
        nonlocal done
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            while done < requests and time.monotonic() < deadline:
                done += 1
                response = await client.post("/allocate", content=bodies[done % len(bodies)], headers=JSON)
                response.raise_for_status()
                server_ms.append(float(response.headers["server-timing"].split("dur=")[1]))

    started = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(clients)))
    elapsed = time.perf_counter() - started
    return len(server_ms) * individuals / elapsed, float(np.median(server_ms))


JSON = {"content-type": "application/json"}


async def run_single(url: str, bodies: list[bytes], requests: int, seconds: float, clients: int) -> dict[str, float]:
    """req/s and latency percentiles for one-individual requests from `clients` concurrent tasks."""
    latencies: list[float] = []
    server_ms: list[float] = []
    sent = 0
    deadline = time.monotonic() + seconds

    async def worker(k: int) -> None:
        nonlocal sent
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            while sent < requests and time.monotonic() < deadline:
                sent += 1
                body = bodies[sent % len(bodies)]
                started = time.perf_counter()
                response = await client.post("/allocate", content=body, headers=JSON)
                latencies.append(time.perf_counter() - started)
                response.raise_for_status()
                server_ms.append(float(response.headers["server-timing"].split("dur=")[1]))

    started = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(clients)))
    elapsed = time.perf_counter() - started
    ms = 1e3 * np.array(latencies)
    return {
        "rps": len(ms) / elapsed,
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "server_p50": float(np.percentile(server_ms, 50)),
        "server_p99": float(np.percentile(server_ms, 99)),
    }


def run_budget(url: str, per_capita: list[float]) -> tuple[list[float], list[float]]:
    """Server ms (Server-Timing) and λ* solve ms of POST /budget for each budget."""
    server, solve = [], []
    with httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as client:
        for b in per_capita:
            response = client.post("/budget", json={"campaign": "bench", "budget_per_capita": b})
            response.raise_for_status()
            server.append(float(response.headers["server-timing"].split("dur=")[1]))
            solve.append(response.json()["solve_ms"])
    return server, solve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=Path("models/default"))
    parser.add_argument("--batch", type=int, default=1000, help="individuals per batch request")
    parser.add_argument("--batch-requests", type=int, default=60)
    parser.add_argument("--batch-clients", type=int, default=2, help="concurrent batch clients")
    parser.add_argument("--single-requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--budgets", type=int, default=30, help="new budgets posted to /budget")
    parser.add_argument("--seconds", type=float, default=15.0, help="time limit per phase")
    parser.add_argument("--no-write", action="store_true", help="print only, leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)

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
        names = manifest.features
        batch_bodies = [body_for(population, names, k * args.batch, args.batch) for k in range(4)]
        single_bodies = [body_for(population, names, k, 1) for k in range(256)]

        # Ceilings, measured in this process on the same bodies and batch.
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])
        x_batch = population[np.arange(args.batch) % len(population)]
        decode_batch = best_seconds(lambda: orjson.loads(batch_bodies[0]), 50)
        onnx_batch = best_seconds(lambda: session.run(None, {"features": x_batch}), 50)
        decode_one = best_seconds(lambda: orjson.loads(single_bodies[0]), 2000)
        onnx_one = best_seconds(lambda: session.run(None, {"features": x_batch[:1]}), 2000)
        # Budgets spread over the feasible range: the cheapest policy's spend up to the revenue-maximising one's.
        path = sweep(*session.run(["revenue", "cost"], {"features": population}))
        low, high = (path.min_spend * (1 + 1e-6) + 1e-9) / path.n_rows, path.max_spend / path.n_rows

        with redis_server() as redis_url, service(model_dir, redis_url, max(args.batch, 10_000)) as url:
            batch_ips, batch_server_ms = asyncio.run(
                run_batch(url, batch_bodies, args.batch_requests, args.seconds, args.batch_clients)
            )
            single = asyncio.run(run_single(url, single_bodies, args.single_requests, args.seconds, args.concurrency))
            budget_server, budget_solve = run_budget(url, list(np.linspace(low, high, args.budgets)))

    decode_ips = args.batch / decode_batch
    onnx_ips = args.batch / onnx_batch
    server_ips = args.batch / (batch_server_ms / 1e3)
    store = "Redis" if redis_url else "in-process store"
    lines = [
        f"Model: {source} (model version {manifest.model_version}, D={manifest.n_features}, "
        f"K={manifest.n_treatments}); one uvicorn worker on loopback, {store}; clients in one asyncio process "
        "on the same 2 cores.",
        "",
        f"**Batch path** ({args.batch} individuals per request, {args.batch_clients} concurrent clients):",
        "",
        "| measure | individuals/s | vs JSON-decoding ceiling |",
        "|---|---:|---:|",
        f"| POST /allocate, end to end | {batch_ips:,.0f} | {batch_ips / decode_ips:.0%} |",
        f"| POST /allocate, server time (Server-Timing, median {batch_server_ms:.2f} ms) | {server_ips:,.0f} | "
        f"{server_ips / decode_ips:.0%} |",
        f"| ceiling: orjson decoding of the same body | {decode_ips:,.0f} | 100% |",
        f"| ceiling: onnxruntime alone on the same batch | {onnx_ips:,.0f} | {onnx_ips / decode_ips:.0%} |",
        "",
        f"**Single-individual requests** ({args.concurrency} concurrent clients, one httpx AsyncClient each):",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| req/s | {single['rps']:,.0f} |",
        f"| p50 latency, client-observed | {single['p50']:.1f} ms |",
        f"| p99 latency, client-observed | {single['p99']:.1f} ms (target ≤ 50 ms) |",
        f"| p50 / p99 server time (Server-Timing) | {single['server_p50']:.2f} / {single['server_p99']:.2f} ms |",
        f"| ceiling: orjson decoding of one body | {1 / decode_one:,.0f} req/s |",
        f"| ceiling: onnxruntime alone on one row | {1 / onnx_one:,.0f} req/s |",
        "",
        f"**POST /budget** ({args.budgets} new budgets on the {len(population):,}-row reference population):",
        "",
        "| measure | median | max |",
        "|---|---:|---:|",
        f"| server time (incl. Redis write + publish) | {np.median(budget_server):.2f} ms | "
        f"{np.max(budget_server):.2f} ms |",
        f"| λ* solve (binary search on the cached sweep) | {np.median(budget_solve):.3f} ms | "
        f"{np.max(budget_solve):.3f} ms |",
    ]
    markdown = "\n".join(lines)
    print(markdown)
    if not args.no_write:
        command = "python -m bench.serve" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
        write_section("serve", command.strip(), markdown)


if __name__ == "__main__":
    main()
