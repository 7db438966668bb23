"""The closed decision loop on the synthetic world (DESIGN.md §10): serve → log → outcomes → retrain → shadow → promote.

Round 0 trains the learner on a small RCT and a confounded OBS set. Each of the next rounds serves one simulated
day of new individuals through the real service (`python -m service`, uvicorn, onnxruntime) with Redis and the
decision-log sink (`python -m service.sink`) running, with exploration ε = 5% on the campaign; the world draws
each decision's outcome from its known potential outcomes; `python -m training logs` turns the sink's Parquet
files and the outcomes into training tables; the learner is retrained on everything so far (round-0 data plus
every logged day); `python -m training shadow` compares the candidate with the live model on the latest
exploration slice (held out of training) and the candidate replaces the live model when the promotion rule
says so. The true value of every model is known from the world's potential outcomes on a separate population.

    nice -n 10 python -m bench.closed_loop                      # both learners, writes docs/closed-loop.md
    nice -n 10 python -m bench.closed_loop --learners tsm --days 1 --day-size 5000   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from service.artifact import load_artifact
from service.lambdas import BudgetSolver
from training.config import DatasetConfig
from training.data import CategoricalEncoding, logs_from_frame, write_table
from training.evaluate import bootstrap_areas, budget_grid, curve_area, eom_curve
from training.logs import read_decisions
from training.network import load_checkpoint, predict
from training.synthetic import SyntheticSpec, dataset_config, generate

ROOT = Path(__file__).resolve().parents[1]
ADMIN_TOKEN = "closed-loop-admin-token-0123456789"
CAMPAIGN = "loop"
ANALYSIS_MARKER = "<!-- analysis: kept when bench.closed_loop rewrites the tables above -->"
LEARNERS = {"bidfcl-ppl": "Bi-DFCL (PPL)", "tsm": "TSM (RCT only)"}


@dataclass(frozen=True)
class Sizes:
    rct0: int  # round-0 RCT training rows
    val0: int  # round-0 RCT validation rows
    obs0: int  # round-0 OBS rows (confounded logging policy)
    day: int  # individuals served per simulated day
    test: int  # population with potential outcomes for true values
    epochs: int  # training epochs (both learners)
    obs_per_day: int  # exploitation rows of each logged day the learner trains on (a seeded sample)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def python(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `python <args>` (the project's CLIs) and fail loudly with its stderr."""
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} failed:\n{done.stderr[-3000:]}")
    return done


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (make redis-server installs it)")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


@contextmanager
def background(command: list[str], env: dict[str, str], name: str) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            log(f"{name} did not stop on SIGTERM; killing it")
            process.kill()
            process.wait()


def service_env(model_dir: Path, redis_url: str, prefix: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALLOCATOR_")}
    env.update(
        ALLOCATOR_MODEL_DIR=str(model_dir),
        ALLOCATOR_REDIS_URL=redis_url,
        ALLOCATOR_REDIS_PREFIX=prefix,
        ALLOCATOR_ADMIN_TOKEN=ADMIN_TOKEN,
        ALLOCATOR_LOG_LEVEL="WARNING",
        ALLOCATOR_REFRESH_SECONDS="1",
        ALLOCATOR_DECISION_LOG_CAPACITY="2000000",  # a whole simulated day fits: the bench must not drop any
    )
    return env


class World:
    """The synthetic world: populations with potential outcomes, factual outcomes for served decisions."""

    def __init__(self, spec: SyntheticSpec, sizes: Sizes, seed: int) -> None:
        self.spec = spec
        self.config = dataset_config(spec)
        seeds = np.random.SeedSequence(seed).spawn(8)
        self.rct0 = generate(spec, sizes.rct0, True, np.random.default_rng(seeds[0]))
        self.val0 = generate(spec, sizes.val0, True, np.random.default_rng(seeds[1]))
        self.obs0 = generate(spec, sizes.obs0, False, np.random.default_rng(seeds[2]))
        self.test_frame = generate(spec, sizes.test, True, np.random.default_rng(seeds[3]))
        self.day_seeds = seeds[4:]
        self.sizes = sizes
        self.test = logs_from_frame(self.test_frame, self.config, source="world test population")
        self.budgets = budget_grid(self.test)  # per-capita budgets from the true arm costs

    def day(self, index: int) -> pd.DataFrame:
        return generate(self.spec, self.sizes.day, True, np.random.default_rng(self.day_seeds[index - 1]))

    def outcomes(self, frame: pd.DataFrame, treatment: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
        """Factual revenue and cost of the given treatments: potential outcome × mean-one noise (as `generate`)."""
        names = self.spec.treatment_names
        rows = np.arange(len(frame))
        revenue = frame[[f"true_revenue_{n}" for n in names]].to_numpy()[rows, treatment]
        cost = frame[[f"true_cost_{n}" for n in names]].to_numpy()[rows, treatment]
        cv = self.spec.noise
        noise = rng.gamma(1.0 / cv**2, cv**2, size=(2, len(frame))) if cv > 0 else np.ones((2, len(frame)))
        return pd.DataFrame({"revenue": revenue * noise[0], "cost": cost * noise[1]})


def model_predictions(checkpoint: Path, logs_frame: pd.DataFrame, config: DatasetConfig) -> tuple[Any, Any]:
    model, extra = load_checkpoint(str(checkpoint))
    encoding = CategoricalEncoding.from_dict(extra["encoding"])
    logs = logs_from_frame(logs_frame, config, encoding, source="world test population")
    return predict(model, logs.features)


def true_area(world: World, checkpoint: Path) -> float:
    revenue, cost = model_predictions(checkpoint, world.test_frame, world.config)
    return curve_area(eom_curve(revenue, cost, world.test, world.budgets), "oracle")


def paired_true_gain(world: World, new: Path, old: Path, n_boot: int = 500) -> tuple[float, float, float]:
    """True-area gain of `new` over `old` on the world's test population, with a paired 95% bootstrap interval."""
    predictions = {
        "new": model_predictions(new, world.test_frame, world.config),
        "old": model_predictions(old, world.test_frame, world.config),
    }
    samples = bootstrap_areas(predictions, world.test, world.budgets, n_boot=n_boot, kind="oracle")
    gain = samples["new"] - samples["old"]
    point = true_area(world, new) - true_area(world, old)
    low, high = np.percentile(gain, [2.5, 97.5])
    return float(point), float(low), float(high)


def train(learner: str, tables: dict[str, Path], config: Path, out: Path, epochs: int) -> float:
    started = time.perf_counter()
    args = ["-m", "training", "train", "--method", learner, "--config", str(config), "--quiet"]
    args += ["--rct", str(tables["rct"]), "--val", str(tables["val"]), "--out", str(out), "--epochs", str(epochs)]
    if learner != "tsm":
        args += ["--obs", str(tables["obs"])]
    python(*args)
    return time.perf_counter() - started


def export(checkpoint: Path, population: Path, out: Path, budget: float | None) -> dict[str, Any]:
    args = ["-m", "training", "export", "--model", str(checkpoint), "--population", str(population)]
    args += ["--out", str(out), "--population-rows", "5000"]
    if budget is not None:
        args += ["--budget-per-capita", repr(budget)]
    python(*args)
    manifest: dict[str, Any] = json.loads((out / "manifest.json").read_text())
    return manifest


def serve_day(
    world: World, day: int, artifact: Path, redis_url: str, prefix: str, budget: float, epsilon: float, seed: int
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Serve one day through the real service; returns (decision_id, revenue, cost) outcomes and true values."""
    frame = world.day(day)
    port = free_port()
    env = service_env(artifact, redis_url, prefix)
    command = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)]
    features = frame[[*world.config.features, *world.config.categorical]]
    records = features.to_dict(orient="records")
    ids: list[str] = []
    treatments: list[int] = []
    with background(command, env, "service"), httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
        deadline = time.monotonic() + 120
        while True:
            try:
                if http.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the service did not become ready")
            time.sleep(0.2)
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        # The service refuses a budget above what its model would spend with λ* = 0: serve that policy then.
        solver = BudgetSolver(load_artifact(artifact))
        most = solver.sweep.max_spend / solver.sweep.n_rows
        if budget > most:
            log(f"budget {budget:.4g} is above the model's λ* = 0 spend {most:.4g} per capita; setting {most:.4g}")
            budget = most
        answer = http.post("/budget", json={"campaign": CAMPAIGN, "budget_per_capita": budget}, headers=admin)
        if answer.status_code != 200:
            raise RuntimeError(f"POST /budget {budget:.4g}: {answer.status_code} {answer.text}")
        put = http.put(f"/campaigns/{CAMPAIGN}/exploration", json={"epsilon": epsilon}, headers=admin)
        put.raise_for_status()
        for start in range(0, len(records), 1_000):
            chunk = records[start : start + 1_000]
            body = {
                "campaign": CAMPAIGN,
                "individuals": [{"id": f"d{day}-{start + i}", "features": row} for i, row in enumerate(chunk)],
            }
            response = http.post("/allocate", json=body)
            response.raise_for_status()
            for allocation in response.json()["allocations"]:
                ids.append(allocation["decision_id"])
                treatments.append(allocation["treatment"])
        wait_until(lambda: http.get("/readyz").json()["decision_log"]["buffered"] == 0, 60, "decision log shipped")
        dropped = http.get("/readyz").json()["decision_log"]["dropped"]
    if dropped:
        raise RuntimeError(f"the decision log dropped {dropped} decisions")
    treatment = np.asarray(treatments)
    outcome = world.outcomes(frame, treatment, np.random.default_rng(seed))
    names = world.spec.treatment_names
    rows = np.arange(len(frame))
    served = {
        "true_revenue_per_capita": float(
            frame[[f"true_revenue_{n}" for n in names]].to_numpy()[rows, treatment].mean()
        ),
        "true_cost_per_capita": float(frame[[f"true_cost_{n}" for n in names]].to_numpy()[rows, treatment].mean()),
    }
    return pd.DataFrame({"decision_id": ids, "revenue": outcome["revenue"], "cost": outcome["cost"]}), served


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for: {what}")
        time.sleep(0.2)


def logged_count(decisions: Path, expected: int) -> int:
    """Decisions the sink has written so far (distinct ids once the files hold enough rows), 0 before its first."""
    files = [p for p in decisions.rglob("*.parquet") if not p.name.startswith(".")]
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in files)
    if rows < expected:
        return rows
    return len(read_decisions(decisions)[0])


def combine(parts: list[Path], config: DatasetConfig, out: Path, keep: set[str] | None = None) -> Path:
    """One table of the config's columns from several (round-0 tables carry oracle columns; logged ones do not).

    keep: decision ids to keep from logged tables (None: all); round-0 tables are always kept whole.
    """
    columns = [*config.features, *config.categorical, config.treatment, config.revenue, config.cost]
    frames = []
    for path in parts:
        frame = pd.read_parquet(path)
        if keep is not None and "log_decision_id" in frame.columns:
            frame = frame.loc[frame["log_decision_id"].isin(keep)]
        frames.append(frame[columns])
    return write_table(pd.concat([f for f in frames if len(f)], ignore_index=True), out)


def run_learner(
    learner: str, world: World, work: Path, redis_url: str, days: int, epsilon: float, sizes: Sizes, margin: float
) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    prefix = f"loop-{learner}"
    base = work / "round0"
    base.mkdir(exist_ok=True)
    config_path = work / "config.toml"
    world.config.dump(config_path)
    logged_config = DatasetConfig.load(config_path)
    paths = {name: write_table(getattr(world, name), base / f"{name}.parquet") for name in ("rct0", "val0", "obs0")}
    population = write_table(world.test_frame.iloc[:5_000], work / "population.parquet")
    live = base / "model.pt"
    seconds = train(
        learner, {"rct": paths["rct0"], "val": paths["val0"], "obs": paths["obs0"]}, config_path, live, sizes.epochs
    )
    budget = float(np.median(world.budgets))
    artifact = work / "live-artifact"
    export(live, population, artifact, budget)
    round0 = live
    rounds: list[dict[str, Any]] = [
        {
            "round": 0,
            "rct_rows": sizes.rct0,
            "obs_rows": sizes.obs0,
            "train_seconds": round(seconds, 1),
            "live_true_area": true_area(world, live),
            "promoted": True,
        }
    ]
    log(f"{learner} round 0: true area {rounds[0]['live_true_area']:.4f} ({seconds:.0f} s)")
    decisions = work / "decisions"
    sink_env = service_env(artifact, redis_url, prefix)
    sink = [sys.executable, "-m", "service.sink", "--out", str(decisions), "--consumer", "bench", "--block-ms", "200"]
    outcomes_path = work / "outcomes.csv"
    outcomes: list[pd.DataFrame] = []
    obs_keep: set[str] = set()
    with background(sink, sink_env, "sink"):
        for day in range(1, days + 1):
            started = time.time()
            live_area = true_area(world, live)
            day_outcomes, served = serve_day(world, day, artifact, redis_url, prefix, budget, epsilon, seed=100 + day)
            outcomes.append(day_outcomes)
            # The learner trains on a seeded sample of each day's decisions from the OBS side (exploitation rows
            # in it); every exploration row is kept (they are the RCT).
            sample = day_outcomes["decision_id"].sample(n=min(sizes.obs_per_day, len(day_outcomes)), random_state=day)
            obs_keep.update(sample.tolist())
            total = sum(len(o) for o in outcomes)
            wait_until(lambda total=total: logged_count(decisions, total) == total, 600, "sink wrote the day")
            write_table(pd.concat(outcomes, ignore_index=True), outcomes_path)
            tables = work / f"round{day}" / "tables"
            holdout_hours = (time.time() - started) / 3600.0  # exactly this round's day is the latest slice
            python(
                "-m",
                "training",
                "logs",
                "--decisions",
                str(decisions),
                "--outcomes",
                str(outcomes_path),
                "--config",
                str(config_path),
                "--out",
                str(tables),
                "--holdout-hours",
                f"{holdout_hours:.6f}",
            )
            summary = json.loads((tables / "summary.json").read_text())
            data = {
                "rct": combine(
                    [paths["rct0"], tables / "rct_train.parquet"], logged_config, tables / "all_rct.parquet"
                ),
                "val": combine([paths["val0"], tables / "rct_val.parquet"], logged_config, tables / "all_val.parquet"),
                "obs": combine(
                    [paths["obs0"], tables / "obs.parquet"], logged_config, tables / "all_obs.parquet", keep=obs_keep
                ),
            }
            candidate = work / f"round{day}" / "candidate.pt"
            seconds = train(learner, data, tables / "config.toml", candidate, sizes.epochs)
            shadow_out = work / f"round{day}" / "shadow.json"
            python(
                "-m",
                "training",
                "shadow",
                "--candidate",
                str(candidate),
                "--live",
                str(live),
                "--slice",
                str(tables / "rct_shadow.parquet"),
                "--config",
                str(tables / "config.toml"),
                "--budgets",
                ",".join(repr(float(b)) for b in world.budgets),
                "--out",
                str(shadow_out),
                "--margin",
                repr(margin),
            )
            shadow = json.loads(shadow_out.read_text())
            candidate_area = true_area(world, candidate)
            covered = shadow["candidate_interval"][0] <= candidate_area <= shadow["candidate_interval"][1]
            if shadow["promote"]:
                live = candidate
                export(live, population, artifact, budget)
            rct_rows = len(pd.read_parquet(data["rct"], columns=[logged_config.treatment]))
            rounds.append(
                {
                    "round": day,
                    "served_by_true_area": live_area,
                    "served": served,
                    "logged_rows": summary["rows"],
                    "rct_rows": rct_rows,
                    "obs_rows": len(pd.read_parquet(data["obs"], columns=[logged_config.treatment])),
                    "train_seconds": round(seconds, 1),
                    "shadow": shadow,
                    "candidate_true_area": candidate_area,
                    "shadow_covers_truth": covered,
                    "promoted": shadow["promote"],
                    "live_true_area": true_area(world, live),
                }
            )
            log(
                f"{learner} round {day}: RCT {rct_rows}, shadow {shadow['candidate_area']:.4f} "
                f"[{shadow['candidate_interval'][0]:.4f}, {shadow['candidate_interval'][1]:.4f}] vs true "
                f"{candidate_area:.4f}; {'promoted' if shadow['promote'] else 'kept live'}; "
                f"live true area {rounds[-1]['live_true_area']:.4f}"
            )
    final = paired_true_gain(world, live, round0)
    return {"learner": learner, "rounds": rounds, "final_vs_round0": final, "budget_per_capita": budget}


def report(results: list[dict[str, Any]], args: argparse.Namespace, sizes: Sizes, elapsed: float, load: str) -> str:
    lines = [
        "# Closed loop: serve → log → retrain → shadow-evaluate → promote",
        "",
        "Produced by `" + " ".join(["nice -n 10 python -m bench.closed_loop", *sys.argv[1:]]) + "`"
        f" in {elapsed / 60:.1f} min (load average before the run: {load}).",
        "",
        f"World: the synthetic coupon benchmark (`training/synthetic.py`, K = 5, seed {args.seed}); round 0 trains on "
        f"{sizes.rct0:,} RCT + {sizes.obs0:,} confounded OBS rows ({sizes.val0:,} RCT validation rows). Each later "
        f"round serves a day of {sizes.day:,} new individuals through `python -m service` (Redis, the decision "
        f"log, `python -m service.sink`) with ε = {args.epsilon:.0%} on campaign `{CAMPAIGN}` at a per-capita "
        f"budget of {results[0]['budget_per_capita']:.3f}; outcomes come from the world's potential outcomes with "
        "its noise; `python -m training logs` builds the tables (that day's exploration rows are the held-out "
        "shadow slice); the learner retrains on round-0 data plus every logged day: every exploration row as RCT "
        f"(80% train, 20% validation) and, to keep training time bounded, a seeded sample of {sizes.obs_per_day:,} "
        f"decisions per day for the OBS side ({sizes.epochs} epochs); `python -m training shadow` decides promotion "
        f"(paired gain > 0 and its 95% interval above −{args.margin:.0%} of the live area).",
        "",
        "Values are cost-curve areas (mean per-capita revenue over a 10-level budget grid from the true arm costs): "
        f"*true* on a separate population of {sizes.test:,} individuals with known potential outcomes, *shadow* the "
        "IPW estimate on the exploration slice with its 95% bootstrap interval.",
        "",
    ]
    for result in results:
        learner = result["learner"]
        lines += [f"## {LEARNERS.get(learner, learner)}", ""]
        lines += [
            "| round | RCT rows (train) | OBS rows | shadow slice rows | candidate shadow estimate [95%] | "
            "candidate true | covered | paired gain vs live (shadow) [95%] | promoted | live true area | "
            "served true revenue / cost per capita |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in result["rounds"]:
            if r["round"] == 0:
                lines.append(
                    f"| 0 | {r['rct_rows']:,} | {r['obs_rows']:,} | – | – | {r['live_true_area']:.4f} | – | – | "
                    f"(initial) | {r['live_true_area']:.4f} | – |"
                )
                continue
            s = r["shadow"]
            lo, hi = s["candidate_interval"]
            glo, ghi = s["gain_interval"]
            served = r["served"]
            lines.append(
                f"| {r['round']} | {r['rct_rows']:,} | {r['obs_rows']:,} | {s['rows']:,} | "
                f"{s['candidate_area']:.4f} [{lo:.4f}, {hi:.4f}] | {r['candidate_true_area']:.4f} | "
                f"{'yes' if r['shadow_covers_truth'] else '**no**'} | {s['gain']:+.4f} [{glo:+.4f}, {ghi:+.4f}] | "
                f"{'yes' if r['promoted'] else 'no'} | {r['live_true_area']:.4f} | "
                f"{served['true_revenue_per_capita']:.3f} / {served['true_cost_per_capita']:.3f} |"
            )
        point, low, high = result["final_vs_round0"]
        base = result["rounds"][0]["live_true_area"]
        lines += [
            "",
            f"Live policy after round {len(result['rounds']) - 1} vs round 0, true area gain on the test population: "
            f"{point:+.4f} ({100 * point / base:+.1f}%), paired 95% bootstrap interval [{low:+.4f}, {high:+.4f}].",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--learners", default="bidfcl-ppl,tsm", help="comma-separated training methods")
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--day-size", type=int, default=200_000, help="decisions served per simulated day")
    parser.add_argument(
        "--obs-per-day", type=int, default=10_000, help="decisions per day sampled for the OBS side of training"
    )
    parser.add_argument("--rct0", type=int, default=1_000)
    parser.add_argument("--val0", type=int, default=1_000)
    parser.add_argument("--obs0", type=int, default=20_000)
    parser.add_argument("--test", type=int, default=50_000)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--epsilon", type=float, default=0.05)
    parser.add_argument(
        "--margin",
        type=float,
        default=0.05,
        help="promotion rule's tolerated loss (share of the live area); the slice resolves about ±6%%",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("runs/closed-loop"))
    parser.add_argument("--out", type=Path, default=Path("docs/closed-loop.md"))
    args = parser.parse_args()
    sizes = Sizes(args.rct0, args.val0, args.obs0, args.day_size, args.test, args.epochs, args.obs_per_day)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    started = time.perf_counter()
    world = World(SyntheticSpec(seed=args.seed), sizes, args.seed)
    if args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)
    results = []
    with redis_server(args.work) as redis_url:
        for learner in [name.strip() for name in args.learners.split(",") if name.strip()]:
            results.append(
                run_learner(learner, world, args.work / learner, redis_url, args.days, args.epsilon, sizes, args.margin)
            )
    elapsed = time.perf_counter() - started
    text = report(results, args, sizes, elapsed, load)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # The hand-written reading of the numbers below the marker survives a rerun (reread it against the new table).
    kept = args.out.read_text().partition(ANALYSIS_MARKER)[2] if args.out.exists() else ""
    args.out.write_text(text + "\n" + (ANALYSIS_MARKER + kept if kept else ""))
    (args.work / "results.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(text)


if __name__ == "__main__":
    main()
