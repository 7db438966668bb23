"""`python -m training benchmark`: every method over several seeds on one suite, with intervals.

Suites (DESIGN.md §6):
- synthetic: the coupon benchmark (K = 5) with a hidden confounder in the OBS logging policy; OBS ≫ RCT
  (200k vs 10k rows); the test set carries every potential outcome, so the true (oracle) value of each policy
  is known. A 200k-row RCT set trains `tsm-rich`, the "plenty of RCT" reference of the hybrid regime.
- synthetic-strong: the same world with the OBS set logged by a sharply targeted campaign whose targeting
  follows the hidden confounder more closely (selection strength 3, hidden uplift weight 2.5), so the OBS
  labels carry more bias for the RCT rows to correct (docs/results/ compares the suites).
- hillstrom: the Hillstrom e-mail RCT (K = 3, revenue = conversion, cost = visit) split by the hybrid builder
  into OBS + RCT train/val/test; a fresh split per seed, since its statistical power is low.

Per seed every method is trained, predicts on the RCT test set, and is scored with the EOM cost curve over
the 10-level budget grid; improvements over TSM(RCT) get paired bootstrap intervals on test rows, resampled
together with the seeds (hierarchical bootstrap), so an interval reflects both test noise and training noise.
Validation (RCT) is the only data any method tunes or stops on.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from training.config import DatasetConfig
from training.data import encoding_from_feature_names, load_logs
from training.dataset import Logs
from training.evaluate import (
    CostCurve,
    bootstrap_areas,
    budget_grid,
    curve_area,
    eom_curve,
    oracle_optimum_curve,
    random_curve,
)
from training.hybrid import build_hybrid
from training.methods import get_method, method_config, train_method
from training.network import predict
from training.report import significant, write_report
from training.synthetic import SyntheticSpec, write_benchmark

REPO = Path(__file__).resolve().parent.parent
HILLSTROM = REPO.parent / "shared" / "data" / "hillstrom" / "hillstrom.csv.gz"
HILLSTROM_CONFIG = REPO / "configs" / "hillstrom.toml"

REFERENCE = "tsm"
# Runs that are not methods of their own: (method trained, split it trains on).
ALIASES = {"tsm-rich": ("tsm", "rct_rich")}

Say = Callable[[str], None]
Predictions = dict[str, tuple[NDArray[np.float64], NDArray[np.float64]]]


# Synthetic worlds by suite name (training/synthetic.py); the seed is set per run.
SYNTHETIC_WORLDS = {
    "synthetic": SyntheticSpec(),
    "synthetic-strong": SyntheticSpec(selection_strength=3.0, hidden_uplift=2.5),
}
SUITES = (*SYNTHETIC_WORLDS, "hillstrom")


def default_methods(suite: str) -> list[str]:
    core = [
        "tsm",
        "tsm-obs",
        "dfcl-pl",
        "dfcl-mer",
        "dfcl-ifd",
        "bidfcl-ppl",
        "bidfcl-pifd",
        "bidfcl-ppl-fixed",
        "bidfcl-ppl-explicit",
    ]
    return [*core, "tsm-rich"] if suite in SYNTHETIC_WORLDS else core


@dataclass
class Splits:
    """The tables of one suite and seed, encoded alike."""

    rct_train: Logs
    rct_val: Logs
    rct_test: Logs
    obs: Logs
    rct_rich: Logs | None = None
    describe: dict[str, Any] = field(default_factory=dict)


def _load_all(paths: dict[str, Path], config: DatasetConfig) -> dict[str, Logs]:
    first = load_logs(paths["rct_train"], config)
    encoding = encoding_from_feature_names(first.feature_names, config)
    tables = {"rct_train": first}
    for name in ("rct_val", "rct_test", "obs", "rct_rich"):
        if name in paths:
            tables[name] = load_logs(paths[name], config, encoding)
    return tables


def prepare_suite(suite: str, seed: int, work: Path) -> Splits:
    """Write (or reuse) the data of `suite` for `seed` under `work` and load it."""
    out = work / suite / f"seed{seed}"
    if suite in SYNTHETIC_WORLDS:
        spec = replace(SYNTHETIC_WORLDS[suite], seed=seed)
        paths = write_benchmark(out, spec, seed=seed)
        # "Plenty of RCT": the same world randomised at OBS scale (a separate seed stream).
        rich = write_benchmark(
            out / "rich", spec, rct_rows=200_000, obs_rows=2, val_rows=2, test_rows=2, seed=10_000 + seed
        )
        paths["rct_rich"] = rich["rct_train"]
        config = DatasetConfig.load(paths["config"])
    elif suite == "hillstrom":
        if not HILLSTROM.exists():
            raise ValueError(f"the Hillstrom data set is not at {HILLSTROM}")
        config = DatasetConfig.load(HILLSTROM_CONFIG)
        paths = build_hybrid(HILLSTROM, config, out, seed=seed)
    else:
        raise ValueError(f"unknown suite {suite!r}; choose from {', '.join(SUITES)}")
    tables = _load_all(paths, config)
    return Splits(
        rct_train=tables["rct_train"],
        rct_val=tables["rct_val"],
        rct_test=tables["rct_test"],
        obs=tables["obs"],
        rct_rich=tables.get("rct_rich"),
        describe={name: logs.n_rows for name, logs in tables.items()},
    )


@dataclass
class Evaluation:
    """Curves of every method on one test set, plus paired bootstrap samples of their areas."""

    curves: dict[str, CostCurve]
    areas: dict[str, dict[str, float]]  # method → {"ipw": …, "oracle": …}
    samples: dict[str, dict[str, NDArray[np.float64]]]  # kind → method → (n_boot,) areas
    intervals: dict[str, tuple[float, float, float]]  # method → improvement % vs reference (mean, lo, hi)


def improvement_interval(
    samples: dict[str, NDArray[np.float64]], method: str, reference: str
) -> tuple[float, float, float]:
    """Mean improvement % of `method` over `reference` with a 95% percentile interval (paired samples)."""
    ratio = (samples[method] / samples[reference] - 1.0) * 100.0
    return float(np.mean(ratio)), float(np.percentile(ratio, 2.5)), float(np.percentile(ratio, 97.5))


def evaluate_predictions(
    predictions: Predictions, test: Logs, budgets: NDArray[np.float64], reference: str, n_boot: int, seed: int
) -> Evaluation:
    """EOM curves, areas and bootstrap intervals of every method on one RCT test set."""
    curves = {name: eom_curve(revenue, cost, test, budgets) for name, (revenue, cost) in predictions.items()}
    kinds = ["ipw", "oracle"] if test.has_oracle else ["ipw"]
    areas = {name: {kind: curve_area(curve, kind) for kind in kinds} for name, curve in curves.items()}
    samples: dict[str, dict[str, NDArray[np.float64]]] = {}
    intervals: dict[str, tuple[float, float, float]] = {}
    if n_boot > 0:
        for kind in kinds:
            samples[kind] = bootstrap_areas(predictions, test, budgets, n_boot=n_boot, seed=seed, kind=kind)
        main = "oracle" if test.has_oracle else "ipw"
        intervals = {name: improvement_interval(samples[main], name, reference) for name in predictions}
    curves["random"] = random_curve(test, budgets, seed=seed)
    if test.has_oracle:
        curves["oracle-optimum"] = oracle_optimum_curve(test, budgets)
    return Evaluation(curves=curves, areas=areas, samples=samples, intervals=intervals)


def _train_run(name: str, splits: Splits, seed: int, progress: bool) -> tuple[Any, dict[str, Any], float]:
    method, split = ALIASES.get(name, (name, "rct_train"))
    rct = splits.rct_rich if split == "rct_rich" else splits.rct_train
    if rct is None:
        raise ValueError(f"{name} needs a large RCT set, which this suite does not have")
    started = time.perf_counter()
    model, info = train_method(
        method, rct_train=rct, rct_val=splits.rct_val, obs=splits.obs, overrides={"seed": seed}, progress=progress
    )
    return model, info, time.perf_counter() - started


# Code a run's predictions depend on: every training module and the decision rule and solver it shares with serving.
SOURCE_FILES = (
    *sorted((REPO / "training").glob("*.py")),
    REPO / "service" / "decision.py",
    REPO / "service" / "hull.py",
)


@functools.cache
def training_source_hash() -> str:
    """SHA-256 (16 hex digits) of the training code (`SOURCE_FILES`), path and bytes, as it is on disk now."""
    digest = hashlib.sha256()
    for path in SOURCE_FILES:
        digest.update(f"{path.parent.name}/{path.name}".encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def run_fingerprint(name: str, splits: Splits, seed: int) -> str:
    """What a run's test predictions depend on: the training code, method, its full config, seed and data sizes."""
    method, split = ALIASES.get(name, (name, "rct_train"))
    config = asdict(method_config(method, {"seed": seed}))
    blob = json.dumps(
        {"name": name, "split": split, "config": config, "rows": splits.describe, "code": training_source_hash()},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TrainedRun:
    """What the benchmark keeps of one trained run: test-set predictions and how training went."""

    revenue: NDArray[np.float64]  # (N_test, K)
    cost: NDArray[np.float64]  # (N_test, K)
    seconds: float  # training wall time
    best_epoch: int  # the epoch validation kept (0-based, over all the run's epochs and phases)


def cached_predictions(name: str, splits: Splits, seed: int, cache: Path, fresh: bool, progress: bool) -> TrainedRun:
    """Test-set predictions of run `name`, its training seconds and kept epoch, trained or read from `cache`.

    The cache lets a long benchmark be resumed, or its seeds run in parallel processes sharing `--work`; a file
    is reused only when its fingerprint (training code, method config, seed, data sizes) matches and it holds
    every field, so a code change retrains by itself. `fresh` retrains regardless.
    """
    path = cache / f"{name}.npz"
    key = run_fingerprint(name, splits, seed)
    if not fresh and path.exists():
        with np.load(path) as stored:
            if str(stored["fingerprint"]) == key and "best_epoch" in stored:
                return TrainedRun(
                    stored["revenue"], stored["cost"], float(stored["seconds"]), int(stored["best_epoch"])
                )
    model, info, took = _train_run(name, splits, seed, progress)
    revenue, cost = predict(model, splits.rct_test.features)
    best_epoch = int(info["history"]["best_epoch"])
    cache.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp.npz")  # written whole, then renamed: a parallel reader never sees half a file
    np.savez(partial, revenue=revenue, cost=cost, seconds=took, best_epoch=best_epoch, fingerprint=key)
    partial.replace(path)
    return TrainedRun(revenue, cost, took, best_epoch)


def hierarchical_interval(
    per_seed: list[dict[str, NDArray[np.float64]]], method: str, reference: str, seed: int = 0
) -> tuple[float, float, float]:
    """Improvement % over `reference`, resampling seeds and, within each, its paired test bootstrap."""
    rng = np.random.default_rng(seed)
    ratios = [(s[method] / s[reference] - 1.0) * 100.0 for s in per_seed]  # per seed: (n_boot,)
    n_seeds, n_boot = len(ratios), len(ratios[0])
    draws = np.empty(n_boot)
    for b in range(n_boot):
        chosen = rng.integers(0, n_seeds, n_seeds)
        draws[b] = np.mean([ratios[s][rng.integers(0, n_boot)] for s in chosen])
    point = float(np.mean([np.mean(r) for r in ratios]))
    return point, float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))


def _mean_curve(curves: list[CostCurve]) -> CostCurve:
    def avg(name: str) -> NDArray[np.float64] | None:
        values = [getattr(c, name) for c in curves]
        return None if any(v is None for v in values) else np.mean(np.stack(values), axis=0)

    first = curves[0]
    return CostCurve(
        budgets=np.mean(np.stack([c.budgets for c in curves]), axis=0),
        lam=np.mean(np.stack([c.lam for c in curves]), axis=0),
        revenue_ipw=np.mean(np.stack([c.revenue_ipw for c in curves]), axis=0),
        cost_ipw=np.mean(np.stack([c.cost_ipw for c in curves]), axis=0),
        revenue_hajek=np.mean(np.stack([c.revenue_hajek for c in curves]), axis=0),
        cost_hajek=np.mean(np.stack([c.cost_hajek for c in curves]), axis=0),
        oracle_revenue=avg("oracle_revenue") if first.oracle_revenue is not None else None,
        oracle_cost=avg("oracle_cost") if first.oracle_cost is not None else None,
        oracle_lam=avg("oracle_lam") if first.oracle_lam is not None else None,
    )


def gap_closed(areas: dict[str, dict[str, float]], name: str) -> float:
    """Share of the oracle-area gap between random allocation (0) and the true optimum (1) a run closes.

    Raw areas are dominated by revenue every policy earns anyway; this is the part a model can influence.
    """
    low, high = areas["random"]["oracle"], areas["oracle-optimum"]["oracle"]
    return (areas[name]["oracle"] - low) / (high - low)


def summary_table(
    suite: str,
    methods: list[str],
    per_seed: list[dict[str, Any]],
    intervals: dict[str, dict[str, tuple[float, float, float]]],
) -> str:
    """Markdown: mean ± std of cost-curve areas over seeds and improvement over TSM(RCT) with 95% intervals."""
    kinds = list(intervals)
    head = ["method"]
    for kind in kinds:
        head += [f"{kind} area (mean ± std)", f"{kind} vs {REFERENCE} % [95% CI]"]
    if "oracle" in kinds:
        head.append("oracle gap closed")
    head.append("train s")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in [*methods, "random", *(["oracle-optimum"] if "oracle" in kinds else [])]:
        row = [name]
        for kind in kinds:
            values = [run["areas"][name][kind] for run in per_seed if name in run["areas"]]
            row.append(f"{significant(float(np.mean(values)), 5)} ± {np.std(values):.2g}" if values else "")
            if name in intervals[kind]:
                mean, lo, hi = intervals[kind][name]
                row.append(f"{mean:+.2f} [{lo:+.2f}, {hi:+.2f}]")
            else:
                row.append("")
        if "oracle" in kinds:
            closed = [gap_closed(run["areas"], name) for run in per_seed if name in run["areas"]]
            row.append(f"{np.mean(closed):.2f} ± {np.std(closed):.2f}" if closed else "")
        seconds = [run["seconds"][name] for run in per_seed if name in run.get("seconds", {})]
        row.append(f"{np.mean(seconds):.0f}" if seconds else "")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def strongest_baseline(methods: list[str], per_seed: list[dict[str, Any]], kind: str) -> str | None:
    """The single-level method trained on this suite's own data with the highest mean area (None if none).

    Aliases such as tsm-rich train on data the hybrid regime does not have, so they are references, not baselines.
    """
    baselines = [m for m in methods if m not in ALIASES and get_method(m).family == "single"]
    if not baselines:
        return None
    return max(baselines, key=lambda m: float(np.mean([run["areas"][m][kind] for run in per_seed])))


def versus_baseline_table(
    methods: list[str], baseline: str, per_seed_samples: list[dict[str, NDArray[np.float64]]], kind: str
) -> str:
    """Markdown: improvement % of every Bi-DFCL run over `baseline`, paired and hierarchical like the main table."""
    lines = [f"| method | {kind} vs {baseline} % [95% CI] |", "|---|---|"]
    for name in methods:
        if name in ALIASES or get_method(name).family != "bilevel":
            continue
        mean, lo, hi = hierarchical_interval(per_seed_samples, name, baseline)
        lines.append(f"| {name} | {mean:+.2f} [{lo:+.2f}, {hi:+.2f}] |")
    return "\n".join(lines)


def bridge_table(per_seed_samples: list[dict[str, NDArray[np.float64]]], kind: str) -> str:
    """Markdown: the learned bridge (bidfcl-ppl) against the gate fixed at w = 0.5, paired like the main table."""
    mean, lo, hi = hierarchical_interval(per_seed_samples, "bidfcl-ppl", "bidfcl-ppl-fixed")
    return (
        f"Learned bridge against the bridge fixed at w = 0.5 ({kind} area, paired like the table above):\n\n"
        f"| method | {kind} vs bidfcl-ppl-fixed % [95% CI] |\n|---|---|\n"
        f"| bidfcl-ppl | {mean:+.2f} [{lo:+.2f}, {hi:+.2f}] |"
    )


def run_benchmark(
    suite: str,
    methods: list[str],
    seeds: list[int],
    out: Path,
    work: Path,
    n_boot: int = 200,
    progress: bool = True,
    say: Say = lambda message: None,
    fresh: bool = False,
) -> dict[str, Any]:
    """Train and evaluate every method for every seed; write tables, JSON and plots under `out/<suite>`."""
    if REFERENCE not in methods:
        methods = [REFERENCE, *methods]
    target = out / suite
    target.mkdir(parents=True, exist_ok=True)
    per_seed: list[dict[str, Any]] = []
    samples_by_kind: dict[str, list[dict[str, NDArray[np.float64]]]] = {}
    curves_by_method: dict[str, list[CostCurve]] = {}
    for seed in seeds:
        splits = prepare_suite(suite, seed, work)
        budgets = budget_grid(splits.rct_test)
        predictions: Predictions = {}
        seconds: dict[str, float] = {}
        best_epoch: dict[str, int] = {}
        cache = work / suite / f"seed{seed}" / "predictions"
        for name in methods:
            say(f"[{suite} seed {seed}] {name}")
            trained = cached_predictions(name, splits, seed, cache, fresh, progress)
            predictions[name] = (trained.revenue, trained.cost)
            seconds[name] = trained.seconds
            best_epoch[name] = trained.best_epoch
        evaluation = evaluate_predictions(predictions, splits.rct_test, budgets, REFERENCE, n_boot, seed)
        areas = dict(evaluation.areas)
        areas["random"] = {k: curve_area(evaluation.curves["random"], k) for k in areas[REFERENCE]}
        if "oracle-optimum" in evaluation.curves:
            areas["oracle-optimum"] = {k: curve_area(evaluation.curves["oracle-optimum"], k) for k in areas[REFERENCE]}
        run = {
            "seed": seed,
            "rows": splits.describe,
            "budgets": budgets.tolist(),
            "areas": areas,
            "seconds": seconds,
            "best_epoch": best_epoch,
            "curves": {n: c.to_dict() for n, c in evaluation.curves.items()},
        }
        per_seed.append(run)
        for kind, samples in evaluation.samples.items():
            samples_by_kind.setdefault(kind, []).append(samples)
        for name, curve in evaluation.curves.items():
            curves_by_method.setdefault(name, []).append(curve)
        say(
            f"[{suite} seed {seed}] areas: "
            + ", ".join(f"{n}={a.get('oracle', a['ipw']):.4f}" for n, a in areas.items())
        )
        (target / "runs.json").write_text(json.dumps(per_seed, indent=1))

    intervals = {
        kind: {name: hierarchical_interval(samples, name, REFERENCE) for name in methods}
        for kind, samples in samples_by_kind.items()
    }
    table = summary_table(suite, methods, per_seed, intervals)
    main = "oracle" if "oracle" in intervals else "ipw"
    best = strongest_baseline(methods, per_seed, main) if main in samples_by_kind else None
    if (
        best is not None
        and best != REFERENCE
        and any(get_method(m).family == "bilevel" for m in methods if m not in ALIASES)
    ):
        table += (
            f"\n\nAgainst the strongest baseline on this suite ({best}, by mean {main} area):\n\n"
            + versus_baseline_table(methods, best, samples_by_kind[main], main)
        )
    if {"bidfcl-ppl", "bidfcl-ppl-fixed"} <= set(methods) and main in samples_by_kind:
        table += "\n\n" + bridge_table(samples_by_kind[main], main)
    mean_curves = {name: _mean_curve(curves) for name, curves in curves_by_method.items()}
    write_report(
        mean_curves,
        target,
        title=f"{suite}: mean cost curves over seeds {seeds}",
        reference=REFERENCE,
        intervals=intervals.get(main),
        interval_kind=main,
        interval_method="seeds and, within each, paired bootstrap resamples of the test rows (hierarchical)",
    )
    (target / "summary.md").write_text(table + "\n")
    say(table)
    return {"table": table, "runs": per_seed, "intervals": intervals}
