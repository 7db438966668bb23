"""The fault-and-abuse suite: two replicas and one Redis on loopback, fuzzed, starved, frozen and killed.

    python -m bench.faults [--examples 300] [--out docs/reliability.md]

Starts its own redis-server (AOF on, as in k8s/redis.yaml) and two `python -m service` replicas, then:
  1. fuzz: schemathesis over every operation of the OpenAPI document, with and without the admin token;
     counts test cases and 5xx answers (from its HAR report) and lists what else it flagged;
  2. faults under paced /allocate load (a retrying client, as a Kubernetes Service + client retries give):
     Redis SIGKILL and restart (data kept by AOF, then data lost), Redis SIGSTOP while budgets are being
     set, a replica SIGKILL; counts failed requests and checks that every budget Redis holds was
     confirmed to its caller (a "phantom" budget is one applied after its caller heard it failed);
  3. 200 concurrent POST /budget from 8 clients over both replicas: each answer must describe its own write;
  4. abusive bodies (huge declared, chunked 100 MB, many large batches at once): peak RSS (VmHWM) of the
     replica against the k8s memory limit, and /healthz latency while 10k-row batches are scored.
Prints the results and writes them to `--out` with this command.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from bench.fault_processes import ADMIN_TOKEN, AUTH, Redis, Replica, free_port, rss_peak_mb, start_replica

ROOT = Path(__file__).resolve().parents[1]
K8S_MEMORY_LIMIT_MB = 512


@dataclass
class Load:
    """Paced /allocate requests (batch of 20) from `workers` threads, round-robin, retried on the other replica."""

    replicas: list[Replica]
    body: dict[str, Any]
    workers: int = 4
    interval: float = 0.02  # per worker: 200 requests/s in all
    sent: int = 0
    failed: list[str] = field(default_factory=list)
    retried: int = 0
    statuses: Counter[int] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(w,), daemon=True) for w in range(self.workers)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _run(self, worker: int) -> None:
        clients = [httpx.Client(base_url=r.url, timeout=5.0) for r in self.replicas]
        i = worker
        while not self._stop.is_set():
            started = time.monotonic()
            self._one(clients, i)
            i += 1
            time.sleep(max(0.0, self.interval - (time.monotonic() - started)))
        for client in clients:
            client.close()

    def _one(self, clients: list[httpx.Client], i: int) -> None:
        for attempt in range(2 * len(clients)):
            client = clients[(i + attempt) % len(clients)]
            try:
                response = client.post("/allocate", json=self.body)
            except httpx.TransportError:
                with self._lock:
                    self.retried += 1
                continue
            with self._lock:
                self.sent += 1
                self.statuses[response.status_code] += 1
                if response.status_code != 200:
                    self.failed.append(f"{response.status_code} {response.text[:120]}")
            return
        with self._lock:
            self.sent += 1
            self.failed.append("every replica refused the connection")


@dataclass
class BudgetLedger:
    """Every /budget attempt and its answer, to find budgets applied without their caller being told."""

    confirmed: dict[float, int] = field(default_factory=dict)  # budget → version answered 200
    refused: dict[float, int] = field(default_factory=dict)  # budget → status (503/504/…)
    next_budget: float = 0.5

    def attempt(self, replica: Replica, campaign: str) -> int:
        budget = round(self.next_budget, 6)
        self.next_budget += 0.001
        try:
            response = httpx.post(
                f"{replica.url}/budget",
                json={"campaign": campaign, "budget_per_capita": budget},
                headers={**AUTH, "Idempotency-Key": f"faults-{budget}"},
                timeout=10.0,
            )
            status = response.status_code
        except httpx.TransportError:
            status = 0
        if status == 200:
            self.confirmed[budget] = response.json()["version"]
        else:
            self.refused[budget] = status
        return status

    def phantoms(self, redis: Redis, campaign: str) -> list[str]:
        """Budgets Redis holds (now, or as versions past every confirmed one) that no caller saw confirmed."""
        record = redis.record(campaign)
        if record is None:
            return []
        version, budget = record
        problems = []
        if budget in self.refused:
            problems.append(f"budget {budget} stored (v{version}) after its caller got {self.refused[budget]}")
        if version > max(self.confirmed.values(), default=0):
            problems.append(f"stored version {version} is past every confirmed write")
        return problems


def fuzz(replica: Replica, examples: int, report_dir: Path, with_token: bool) -> dict[str, Any]:
    """One schemathesis run over every operation; cases and 5xx counted from the HAR of every exchange."""
    har = report_dir / f"fuzz-{'admin' if with_token else 'anonymous'}.har"
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        f"{replica.url}/openapi.json",
        "--max-examples",
        str(examples),
        "--no-color",
        "--seed",
        "20261201",
        "--generation-database",
        "none",
        "--report",
        "har",
        "--report-har-path",
        str(har),
        "--request-timeout",
        "30",
    ]
    if with_token:
        command += ["-H", f"Authorization: Bearer {ADMIN_TOKEN}"]
    output = subprocess.run(command, capture_output=True, text=True, timeout=1800).stdout
    entries = json.loads(har.read_text())["log"]["entries"]
    statuses = Counter(int(e["response"]["status"]) for e in entries)
    flagged = sorted({line.strip() for line in output.splitlines() if line.strip().startswith("❌ ST")})
    return {
        "token": with_token,
        "cases": len(entries),
        "server_errors": sum(n for code, n in statuses.items() if code >= 500 and code not in (503, 504)),
        "unavailable": statuses.get(503, 0) + statuses.get(504, 0),
        "statuses": dict(sorted(statuses.items())),
        "flagged": flagged,
    }


def scenario(name: str, load: Load, action: Any) -> dict[str, Any]:
    sent, failed, retried = load.sent, len(load.failed), load.retried
    action()
    time.sleep(2.0)  # keep the load on after the fault
    return {
        "scenario": name,
        "requests": load.sent - sent,
        "failed": len(load.failed) - failed,
        "retried": load.retried - retried,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="faults-"))
    redis = Redis(shutil.which("redis-server") or "redis-server", work / "redis", free_port())
    redis.start()
    env = {
        "ALLOCATOR_MODEL_DIR": str(ROOT / "models" / "default"),
        "ALLOCATOR_REDIS_URL": redis.url,
        "ALLOCATOR_WORKERS": "1",  # one process per replica: its RSS is the replica's (with Redis the default is 1/CPU)
        "ALLOCATOR_ADMIN_TOKEN": ADMIN_TOKEN,
        "ALLOCATOR_LOG_LEVEL": "WARNING",
        "ALLOCATOR_REFRESH_SECONDS": "1",
    }
    replicas = [start_replica(env, work / f"replica-{i}.log") for i in range(2)]
    results: dict[str, Any] = {"fuzz": [], "faults": [], "abuse": {}}
    try:
        for with_token in (True, False):
            results["fuzz"].append(fuzz(replicas[0], args.examples, work, with_token))
            print("fuzz", results["fuzz"][-1])
        features = replicas[0].individuals(20)
        ledger = BudgetLedger()
        ledger.attempt(replicas[0], "faults")
        with Load(replicas, {"individuals": features}) as load:
            time.sleep(1.0)
            results["faults"].append(scenario("steady load", load, lambda: None))
            results["faults"].append(
                scenario(
                    "Redis SIGKILL, restarted 2 s later (AOF keeps data)",
                    load,
                    lambda: redis.kill_and_restart(2.0, keep_data=True),
                )
            )
            results["faults"].append(
                scenario(
                    "Redis SIGKILL, restarted empty (data lost)",
                    load,
                    lambda: redis.kill_and_restart(2.0, keep_data=False),
                )
            )

            def freeze_while_setting_budgets() -> None:
                redis.signal(signal.SIGSTOP)
                try:
                    for i in range(6):
                        ledger.attempt(replicas[i % 2], "faults")
                finally:
                    redis.signal(signal.SIGCONT)

            results["faults"].append(
                scenario("Redis SIGSTOP while 6 budgets are set (about 2 s each)", load, freeze_while_setting_budgets)
            )
            for _ in range(3):
                ledger.attempt(replicas[0], "faults")
            results["faults"].append(
                scenario(
                    "replica SIGKILL, restarted", load, lambda: replicas.__setitem__(1, replicas[1].kill_and_restart())
                )
            )
            time.sleep(1.0)
        results["load"] = {
            "requests": load.sent,
            "failed": len(load.failed),
            "statuses": dict(load.statuses),
            "examples": load.failed[:5],
        }
        results["budgets"] = {
            "confirmed": len(ledger.confirmed),
            "refused": Counter(ledger.refused.values()),
            "phantoms": ledger.phantoms(redis, "faults"),
        }
        results["concurrent_budgets"] = concurrent_budgets(replicas, redis)
        results["abuse"] = abuse(replicas[0], replicas[0].individuals(10_000))
    finally:
        for replica in replicas:
            replica.stop()
        redis.stop()
    return results


def concurrent_budgets(replicas: list[Replica], redis: Redis, calls: int = 200) -> dict[str, Any]:
    """`calls` budgets at once from 8 clients over both replicas: each 200 must describe its own write, and
    every write Redis applied must have been confirmed (the final version is the number of 200s)."""
    budgets = [round(0.3 + 0.005 * i, 6) for i in range(calls)]

    def post(i: int) -> tuple[float, int, dict[str, Any]]:
        body = {"campaign": "race", "budget_per_capita": budgets[i]}
        response = httpx.post(f"{replicas[i % 2].url}/budget", json=body, headers=AUTH, timeout=10.0)
        return budgets[i], response.status_code, response.json()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, range(calls)))
    confirmed = [(budget, answer) for budget, status, answer in answers if status == 200]
    versions = [answer["version"] for _, answer in confirmed]
    stored = redis.record("race")
    return {
        "calls": calls,
        "statuses": dict(Counter(status for _, status, _ in answers)),
        "distinct_versions": len(set(versions)) == len(versions),
        "answers_about_another_write": sum(answer["budget_per_capita"] != budget for budget, answer in confirmed),
        "unconfirmed_applied": 0 if stored is None else stored[0] - len(confirmed),
    }


PROBE = """
import sys, time, httpx
url, seconds = sys.argv[1], float(sys.argv[2])
with httpx.Client(base_url=url, timeout=60.0) as client:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.perf_counter()
        client.get("/healthz")
        print(1e3 * (time.perf_counter() - started), flush=True)
        time.sleep(0.01)
"""


def abuse(replica: Replica, big_batch: list[dict[str, Any]]) -> dict[str, Any]:
    from bench.fault_processes import chunked_post, declared_post

    outcomes: Counter[str] = Counter()
    outcomes[f"declared 2 GiB /budget, no token → {declared_post(replica, '/budget', 2 * 2**30, token=False)}"] += 1
    outcomes[f"declared 2 GiB /allocate → {declared_post(replica, '/allocate', 2 * 2**30, token=False)}"] += 1
    for path, token in (("/budget", False), ("/budget", True), ("/allocate", False)):
        for _ in range(3):
            outcomes[
                f"chunked 100 MB {path}{' with token' if token else ''} → {chunked_post(replica, path, 100, token)}"
            ] += 1
    junk = b"[" + b"{}," * (2 * 2**20 - 2000) + b"{}]"  # 6 MB of empty objects: the worst decoded size per byte
    batch_body = orjson.dumps({"individuals": big_batch})  # encoded once: the client shares the 2 cores

    def heavy(i: int) -> int:
        with httpx.Client(base_url=replica.url, timeout=60.0) as client:
            if i % 2:
                return client.post("/allocate", content=junk, headers={"content-type": "application/json"}).status_code
            return client.post(
                "/allocate", content=batch_body, headers={"content-type": "application/json"}
            ).status_code

    # The probe runs in its own process, so it measures the replica, not this process's threads.
    prober = subprocess.Popen([sys.executable, "-c", PROBE, replica.url, "20"], stdout=subprocess.PIPE, text=True)
    with ThreadPoolExecutor(16) as pool:
        statuses = Counter(pool.map(heavy, range(48)))
    probe_ms = [float(line) for line in prober.communicate(timeout=120)[0].split()]
    return {
        "outcomes": dict(outcomes),
        "heavy_statuses": dict(statuses),
        "peak_rss_mb": rss_peak_mb(replica),
        "healthz_p50_ms": float(np.percentile(probe_ms, 50)) if probe_ms else None,
        "healthz_p99_ms": float(np.percentile(probe_ms, 99)) if probe_ms else None,
        "healthz_max_ms": max(probe_ms) if probe_ms else None,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=1000, help="schemathesis examples per operation and phase")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "reliability.md")
    args = parser.parse_args(argv)
    started = time.monotonic()
    results = run(args)
    results["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(results, indent=2, default=str))
    from bench.fault_report import write_report

    write_report(args.out, results, K8S_MEMORY_LIMIT_MB, argv if argv is not None else sys.argv[1:])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
