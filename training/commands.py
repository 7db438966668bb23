"""What each `python -m training` subcommand does; `cli.py` only parses arguments.

The CLI's output layer is `say` (stdout): library modules log, the CLI talks to the user.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from training import benchmark, shadow
from training.config import DatasetConfig
from training.data import CategoricalEncoding, encoding_from_feature_names, load_logs
from training.dataset import Logs
from training.default_model import build_default_model
from training.evaluate import budget_grid, eom_curve
from training.export import export_artifact
from training.hybrid import HybridFractions, build_hybrid
from training.logs import build_training_tables
from training.methods import METHODS, get_method, method_config, train_method
from training.network import OutcomeNet, load_checkpoint, predict, save_checkpoint
from training.report import format_table, write_report
from training.scale.ranks import launched_by_torchrun
from training.synthetic import SyntheticSpec, write_benchmark


def say(message: str = "") -> None:
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def method_names() -> list[str]:
    return list(METHODS)


def run_synth(args: argparse.Namespace) -> None:
    spec = SyntheticSpec(
        n_treatments=args.treatments, noise=args.noise, selection_strength=args.selection_strength, seed=args.seed
    )
    paths = write_benchmark(
        args.out,
        spec,
        rct_rows=args.rct_rows,
        obs_rows=args.obs_rows,
        val_rows=args.val_rows,
        test_rows=args.test_rows,
        seed=args.seed,
        fmt=args.format,
    )
    for name, path in paths.items():
        say(f"{name:>10}: {path}")
    say(
        f"next: python -m training train --method tsm --rct {paths['rct_train']} --val {paths['rct_val']} "
        f"--config {paths['config']} --out runs/tsm.pt"
    )


def run_hybrid(args: argparse.Namespace) -> None:
    config = DatasetConfig.load(args.config)
    fractions = HybridFractions(
        policy_train=args.policy_train, policy_apply=args.policy_apply, rct_train=args.rct_train,
        rct_val=args.rct_val, rct_test=args.rct_test,
    )  # fmt: skip
    paths = build_hybrid(
        args.input, config, args.out, seed=args.seed, fractions=fractions, top_share=args.top_share,
        ridge_alpha=args.ridge_alpha, fmt=args.format, strict=args.strict,
    )  # fmt: skip
    summary = json.loads(Path(paths["summary"]).read_text())
    for name, path in paths.items():
        counts = summary["arm_counts"].get(name)
        say(f"{name:>10}: {path}" + (f"  rows per treatment {counts}" if counts else ""))
    policy = summary["logging_policy"]
    say(f"logging policy: {policy_quality(policy)}")
    for problem in summary["warnings"]:
        sys.stderr.write(f"warning: {problem}\n")


def policy_quality(report: dict[str, Any]) -> str:
    """One line on how well the hybrid's logging policy targets, from `hybrid.policy_report`."""

    def number(value: float | None, percent: bool = False) -> str:
        if value is None:
            return "n/a"
        return f"{100 * value:+.0f}%" if percent else f"{value:.4g}"

    line = (
        f"incremental ROI {number(report['policy_incremental_roi'])} vs random targeting "
        f"{number(report['random_incremental_roi'])} (IPW on its rows; lift "
        f"{number(report.get('roi_lift_vs_random'), percent=True)})"
    )
    if "true_roi_lift_vs_random" in report:
        line += f", true lift {number(report['true_roi_lift_vs_random'], percent=True)}"
    return line


def load_splits(
    config: DatasetConfig, rct: Path | None, obs: Path | None, val: Path | None, seed: int
) -> tuple[Logs | None, Logs | None, Logs | None, CategoricalEncoding]:
    """Load RCT/OBS/validation logs with one encoding (fitted on the first training file)."""
    first = rct or obs
    if first is None:
        raise ValueError("give training logs: --rct and/or --obs")
    head = load_logs(first, config)
    encoding = encoding_from_feature_names(head.feature_names, config)
    rct_logs = head if rct is not None else None
    obs_logs = (head if rct is None else load_logs(obs, config, encoding)) if obs is not None else None
    if val is not None:
        val_logs = load_logs(val, config, encoding)
    elif rct_logs is not None:
        # No validation file: hold out a seeded 20% of the RCT rows (validation is always RCT).
        order = np.random.default_rng(seed).permutation(rct_logs.n_rows)
        cut = rct_logs.n_rows // 5
        val_logs, rct_logs = rct_logs.subset(order[:cut]), rct_logs.subset(order[cut:])
    else:
        raise ValueError("give RCT validation logs (--val) or RCT training logs (--rct) to hold out from")
    return rct_logs, obs_logs, val_logs, encoding


def data_summary(**tables: Logs | None) -> dict[str, Any]:
    return {
        name: {
            "rows": logs.n_rows,
            "source": logs.source,
            "rows_per_treatment": dict(zip(logs.treatment_names, logs.arm_counts().tolist(), strict=True)),
        }
        for name, logs in tables.items()
        if logs is not None
    }


def validation_metrics(model: OutcomeNet, val: Logs) -> dict[str, Any]:
    """EOM (IPW) per-capita revenue and cost at the validation budget grid, recorded in checkpoints/manifests."""
    revenue, cost = predict(model, val.features)
    budgets = budget_grid(val)
    curve = eom_curve(revenue, cost, val, budgets)
    return {
        "budgets_per_capita": [float(b) for b in budgets],
        "eom_revenue_per_capita": [float(v) for v in curve.revenue_ipw],
        "eom_cost_per_capita": [float(v) for v in curve.cost_ipw],
        "cost_curve_area": float(np.mean(curve.revenue_ipw)),
    }


def run_train(args: argparse.Namespace) -> None:
    overrides = {
        "seed": args.seed,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "alpha": args.alpha,
        "tau": args.tau,
        "lams": tuple(args.lams) if args.lams else None,
        "n_cg": args.n_cg,
        "obs_batch_size": args.obs_batch_size,
        "rct_batch_size": args.rct_batch_size,
        "cg_tol": args.cg_tol,
        "damping": args.damping,
        "k_steps": args.k_steps,
        "validation": args.validation,
        "warm_start_epochs": args.warm_start_epochs,
    }
    method_config(args.method, overrides)  # an option the method does not use fails before any data is read
    if args.stream or launched_by_torchrun():
        from training.scale.command import run_streamed_train  # the streamed trainers load only when used

        run_streamed_train(args, say)
        return
    config = DatasetConfig.load(args.config)
    rct, obs, val, encoding = load_splits(config, args.rct, args.obs, args.val, args.seed)
    model, info = train_method(
        args.method, rct_train=rct, rct_val=val, obs=obs, overrides=overrides, progress=not args.quiet
    )
    assert val is not None
    metrics = validation_metrics(model, val)
    extra = {
        "method": args.method,
        "dataset_config": config.to_dict(),
        "encoding": encoding.to_dict(),
        "training_data": data_summary(rct_train=rct, obs=obs, rct_val=val),
        "validation_metrics": metrics,
        **info,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, str(args.out), extra)
    say(f"saved {args.method} to {args.out}; validation cost-curve area (IPW EOM) {metrics['cost_curve_area']:.5g}")


def _load_model(path: Path, config_path: Path | None) -> tuple[OutcomeNet, dict[str, Any], DatasetConfig]:
    model, extra = load_checkpoint(str(path))
    if config_path is not None:
        config = DatasetConfig.load(config_path)
    elif "dataset_config" in extra:
        config = DatasetConfig.from_dict(extra["dataset_config"], source=f"{path} (saved config)")
    else:
        raise ValueError(f"{path} has no saved dataset config; pass --config")
    return model, extra, config


def _test_logs(extra: dict[str, Any], config: DatasetConfig, path: Path, model_path: Path) -> Logs:
    encoding = CategoricalEncoding.from_dict(extra["encoding"]) if "encoding" in extra else None
    logs = load_logs(path, config, encoding)
    if "encoding" not in extra:
        raise ValueError(f"{model_path} has no saved feature encoding")
    return logs


def run_evaluate(args: argparse.Namespace) -> None:
    predictions: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    test: Logs | None = None
    for path in args.model:
        model, extra, config = _load_model(path, args.config)
        logs = _test_logs(extra, config, args.test, path)
        if test is not None and logs.n_rows != test.n_rows:
            raise ValueError(f"{path} reads {args.test} differently from the first model (row count differs)")
        test = logs if test is None else test
        name = str(extra.get("method", path.stem))
        name = name if name not in predictions else f"{name} ({path.stem})"
        predictions[name] = predict(model, logs.features)
    assert test is not None
    reference = args.reference or next(iter(predictions))
    if reference not in predictions:
        raise ValueError(f"--reference {reference!r} is not one of the models: {', '.join(predictions)}")
    budgets = np.asarray(args.budgets, dtype=float) if args.budgets else budget_grid(test, levels=args.levels)
    result = benchmark.evaluate_predictions(predictions, test, budgets, reference, args.bootstrap, seed=0)
    kind = "oracle" if test.has_oracle else "ipw"
    write_report(
        result.curves,
        args.out,
        title=f"EOM on {args.test}",
        reference=reference,
        intervals=result.intervals,
        interval_kind=kind,
    )
    say(format_table(result.curves, reference=reference, intervals=result.intervals))
    say(f"wrote {args.out}/results.json, results.md and cost_curves.png")


def run_logs(args: argparse.Namespace) -> None:
    config = DatasetConfig.load(args.config)
    summary = build_training_tables(
        args.decisions,
        args.outcomes,
        config,
        args.out,
        val_share=args.val_share,
        holdout_hours=args.holdout_hours,
        drop_unmatched_decisions=args.drop_unmatched_decisions,
    )
    say(json.dumps(summary["rows"]))
    paths = summary["paths"]
    say(
        f"next: python -m training train --method bidfcl-ppl --rct {paths['rct_train']} --obs {paths['obs']} "
        f"--val {paths['rct_val']} --config {paths['config']} --out runs/candidate.pt"
    )


def run_shadow(args: argparse.Namespace) -> None:
    config = DatasetConfig.load(args.config) if args.config else None
    candidate, slice_logs = shadow.predictions(args.candidate, args.slice, config)
    live, live_logs = shadow.predictions(args.live, args.slice, config)
    if live_logs.n_rows != slice_logs.n_rows:
        raise ValueError(f"{args.live} reads {args.slice} differently from {args.candidate} (row count differs)")
    budgets = np.asarray(args.budgets, dtype=float) if args.budgets else None
    result = shadow.shadow_evaluate(
        candidate, live, slice_logs, budgets, n_boot=args.bootstrap, margin=args.margin, estimator=args.estimator
    )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    low, high = result.gain_interval
    say(
        f"slice {result.rows} rows ({result.estimator}): candidate {result.candidate_area:.5g}, "
        f"live {result.live_area:.5g}, gain {result.gain:+.5g} [{low:+.5g}, {high:+.5g}] ({result.gain_percent:+.2f}%)"
    )
    say(("PROMOTE: " if result.promote else "KEEP LIVE: ") + result.reason)


def run_export(args: argparse.Namespace) -> None:
    model, extra, config = _load_model(args.model, args.config)
    population = _test_logs(extra, config, args.population, args.model)
    if population.n_rows > args.population_rows:
        rows = np.sort(np.random.default_rng(args.seed).choice(population.n_rows, args.population_rows, replace=False))
        population = population.subset(rows)
    encoding = CategoricalEncoding.from_dict(extra["encoding"])
    manifest = export_artifact(
        model,
        args.out,
        population=population.features,
        feature_names=list(population.feature_names),
        treatment_names=list(population.treatment_names),
        method=str(extra.get("method", "unknown")),
        hyperparameters=dict(extra.get("config", {})),
        categorical={column: list(values) for column, values in encoding.categories.items()},
        training_data=dict(extra.get("training_data", {})),
        validation_metrics=dict(extra.get("validation_metrics", {})),
        default_budget_per_capita=args.budget_per_capita,
    )
    say(
        f"exported {args.model} to {args.out} (model version {manifest.model_version}, "
        f"default budget {manifest.default_budget_per_capita:.4g} per capita → λ* {manifest.default_lambda:.4g})"
    )


def run_default_model(args: argparse.Namespace) -> None:
    build_default_model(args.out, args.work, progress=not args.quiet, say=say)


def run_benchmark(args: argparse.Namespace) -> None:
    seeds = args.seed_list if args.seed_list else list(range(args.seeds))
    methods = args.methods or benchmark.default_methods(args.suite)
    for name in methods:
        get_method(benchmark.ALIASES.get(name, (name, ""))[0])  # unknown names fail before any training
    benchmark.run_benchmark(
        args.suite,
        methods,
        seeds,
        args.out,
        args.work,
        n_boot=args.bootstrap,
        progress=not args.quiet,
        say=say,
        fresh=args.fresh,
    )
