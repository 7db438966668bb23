"""`python -m training <command>`: synthetic data, hybrid splits, training, evaluation, export, benchmarks."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from training import commands
from training.benchmark import SUITES

DESCRIPTION = """\
Train and evaluate decision-focused budget-allocation models (TSM, DFCL, Bi-DFCL) and export them for serving.

Typical session:
  python -m training synth --out data/synthetic
  python -m training train --method tsm --rct data/synthetic/rct_train.parquet --val data/synthetic/rct_val.parquet \\
      --config data/synthetic/config.toml --out runs/tsm.pt
  python -m training evaluate --model runs/tsm.pt --test data/synthetic/rct_test.parquet --out runs/eval
"""


def _floats(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from error


def _ints(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from error


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="write the synthetic coupon benchmark (RCT, confounded OBS, oracle test)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--rct-rows", type=int, default=10_000, help="RCT training rows (default 10000)")
    p.add_argument("--obs-rows", type=int, default=200_000, help="observational rows (default 200000)")
    p.add_argument("--val-rows", type=int, default=10_000, help="RCT validation rows (default 10000)")
    p.add_argument("--test-rows", type=int, default=50_000, help="RCT test rows with oracle outcomes (default 50000)")
    p.add_argument("--treatments", type=int, default=5, help="K, including no_coupon (default 5)")
    p.add_argument("--selection-strength", type=float, default=1.5, help="OBS confounding, 0 = uniform (default 1.5)")
    p.add_argument("--noise", type=float, default=1.0, help="outcome noise coefficient of variation (default 1.0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", default="parquet", choices=["parquet", "csv", "csv.gz"])

    p = sub.add_parser("hybrid", help="split one RCT file into OBS + RCT train/val/test (Bi-DFCL's Criteo Hybrid)")
    p.add_argument("--input", required=True, type=Path, help="the RCT table (CSV or Parquet)")
    p.add_argument("--config", required=True, type=Path, help="dataset config (TOML) naming its columns")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--seed", type=int, default=0)
    for name, default, what in (
        ("policy-train", 0.05, "fit the logging policy's ridge model (then discarded)"),
        ("policy-apply", 0.50, "are logged by that policy: rows whose random arm matches it become OBS"),
        ("rct-train", 0.05, "become RCT training rows"),
        ("rct-val", 0.10, "become RCT validation rows"),
        ("rct-test", 0.30, "become RCT test rows"),
    ):
        p.add_argument(f"--{name}", type=float, default=default, help=f"share of input rows that {what} ({default})")
    p.add_argument("--top-share", type=float, default=0.5, help="share the logging policy targets with a coupon (0.5)")
    p.add_argument("--ridge-alpha", type=float, default=1.0, help="ridge penalty of the policy's model (1.0)")
    p.add_argument("--format", default="parquet", choices=["parquet", "csv", "csv.gz"])
    p.add_argument(
        "--strict",
        action="store_true",
        help="refuse (exit 2, nothing written) when an arm is empty or thin in a split or the policy is worse "
        "than random; without it those are printed as warnings",
    )

    p = sub.add_parser("train", help="train one method and save a checkpoint")
    p.add_argument("--method", required=True, choices=commands.method_names(), help="the method to train")
    p.add_argument("--config", required=True, type=Path, help="dataset config (TOML)")
    p.add_argument("--rct", type=Path, help="RCT training logs")
    p.add_argument("--obs", type=Path, help="observational logs (tsm-obs, bidfcl-*)")
    p.add_argument("--val", type=Path, help="RCT validation logs (default: 20%% of --rct, seeded)")
    p.add_argument("--out", required=True, type=Path, help="checkpoint file to write (.pt)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, help="training epochs (method default if omitted)")
    p.add_argument("--batch-size", type=int, help="mini-batch rows (tsm, tsm-obs, dfcl-*)")
    p.add_argument("--obs-batch-size", type=int, help="bidfcl-*: OBS rows per lower step (per rank under torchrun)")
    p.add_argument("--rct-batch-size", type=int, help="bidfcl-*: RCT rows per upper step (per rank under torchrun)")
    p.add_argument("--lr", type=float, help="learning rate (tsm, tsm-obs, dfcl-*)")
    p.add_argument("--alpha", type=float, help="dfcl-*: weight of the prediction loss")
    p.add_argument("--tau", type=float, help="softmax temperature (dfcl-mer, bidfcl-ppl/-pifd/-ppl-explicit)")
    p.add_argument("--lams", type=_floats, help="dfcl-*: comma-separated λ values (default: from budgets)")
    p.add_argument("--n-cg", type=int, help="bidfcl-ppl/-pifd: conjugate-gradient iterations")
    p.add_argument("--cg-tol", type=float, help="bidfcl-ppl/-pifd: CG relative residual tolerance")
    p.add_argument("--damping", type=float, help="bidfcl-ppl/-pifd: δ in (H + δI)v = ∇L_up")
    p.add_argument("--k-steps", type=int, help="bidfcl-ppl/-pifd/-ppl-explicit: lower steps before each upper step")
    p.add_argument(
        "--validation",
        choices=["dr", "ipw"],
        help="DFCL/Bi-DFCL checkpoint score on validation: doubly robust (default) or the IPW EOM area",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--stream",
        action="store_true",
        help="stream the training table (Parquet file or directory) in row-group shards; implied under torchrun",
    )
    p.add_argument(
        "--shuffle-buffer", type=int, default=65_536, help="streamed: rows shuffled together (default 65536)"
    )
    p.add_argument("--resume-dir", type=Path, help="streamed: per-epoch resume state here (shared by all ranks)")
    p.add_argument("--encoding", type=Path, help="streamed: a saved encoding (JSON) instead of fitting one")
    p.add_argument(
        "--steps-per-epoch", type=int, help="streamed: end each epoch after this many batches per rank (timing runs)"
    )
    p.add_argument("--warm-start-epochs", type=int, help="DFCL/Bi-DFCL: epochs before the decision/bilevel loss")
    p.epilog = "An option the chosen method does not use is an error, never silently ignored."

    p = sub.add_parser(
        "evaluate",
        help="EOM cost curves of one or more checkpoints on held-out RCT data",
        description="EOM cost curves of one or more checkpoints on held-out RCT data (METHOD.md §7).",
        epilog="Budget grid (default): --levels per-capita budgets evenly spaced from the cost of giving everyone "
        "the cheapest arm (excluded: that policy is trivial) up to the cost of giving everyone the dearest arm, "
        "from the test rows' arm mean costs (true costs on oracle sets; training.evaluate.budget_grid). "
        "At each budget the policy argmax_j (r̂ − λĉ) is cut before the first "
        "policy whose IPW cost exceeds it. The area of a cost curve is the mean per-capita revenue over the "
        "budget levels (the rectangle rule on the evenly spaced grid), so areas are in revenue per customer.",
    )
    p.add_argument("--model", required=True, action="append", type=Path, help="checkpoint (repeat to compare)")
    p.add_argument("--test", required=True, type=Path, help="RCT test logs (oracle columns used when present)")
    p.add_argument("--config", type=Path, help="dataset config (default: the one saved in the checkpoint)")
    p.add_argument("--budgets", type=_floats, help="per-capita budgets (default: 10-level grid of the data)")
    p.add_argument("--levels", type=int, default=10, help="levels of the default budget grid")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for intervals (0 = none)")
    p.add_argument("--reference", help="method the improvement is measured against (default: the first model)")
    p.add_argument("--out", required=True, type=Path, help="directory for results.json, results.md, cost_curves.png")

    p = sub.add_parser("logs", help="decision log + outcomes → RCT (exploration), OBS and validation tables")
    p.add_argument("--decisions", required=True, type=Path, help="the sink's output directory (Parquet)")
    p.add_argument("--outcomes", required=True, type=Path, help="table: decision_id and the config's revenue, cost")
    p.add_argument("--config", required=True, type=Path, help="dataset config (TOML) of the model's data")
    p.add_argument("--out", required=True, type=Path, help="directory for the tables `train` reads")
    p.add_argument("--val-share", type=float, default=0.2, help="share of exploration rows for validation")
    p.add_argument(
        "--holdout-hours",
        type=float,
        default=24.0,
        help="exploration rows of the last H hours form rct_shadow.parquet, kept out of training (0 = none)",
    )
    p.add_argument("--drop-unmatched-decisions", action="store_true", help="leave out decisions with no outcome")

    p = sub.add_parser("shadow", help="candidate vs live model on the latest exploration slice; promotion decision")
    p.add_argument("--candidate", required=True, type=Path, help="candidate checkpoint (.pt) or artifact directory")
    p.add_argument("--live", required=True, type=Path, help="live checkpoint (.pt) or artifact directory")
    p.add_argument("--slice", required=True, type=Path, help="exploration slice (rct_shadow.parquet)")
    p.add_argument("--config", type=Path, help="dataset config (default: the one saved in the checkpoint)")
    p.add_argument("--budgets", type=_floats, help="per-capita budgets (default: 10-level grid of the slice)")
    p.add_argument("--bootstrap", type=int, default=400, help="paired bootstrap resamples")
    p.add_argument("--estimator", choices=["ipw", "dr"], default="ipw", help="IPW/EOM (default) or doubly robust")
    p.add_argument("--margin", type=float, default=0.01, help="largest tolerated loss, share of the live area")
    p.add_argument("--out", type=Path, help="write the result as JSON here")

    p = sub.add_parser("export", help="export a checkpoint to a serving artifact (ONNX + manifest + population)")
    p.add_argument("--model", required=True, type=Path, help="checkpoint to export")
    p.add_argument("--population", required=True, type=Path, help="table of the individuals the budget covers")
    p.add_argument("--config", type=Path, help="dataset config (default: the one saved in the checkpoint)")
    p.add_argument("--out", required=True, type=Path, help="artifact directory, e.g. models/my-model")
    p.add_argument("--population-rows", type=int, default=20_000, help="rows kept as the reference population")
    p.add_argument("--budget-per-capita", type=float, help="default budget (default: middle of the spend range)")
    p.add_argument("--seed", type=int, default=0, help="seed of the population sample")

    p = sub.add_parser("default-model", help="rebuild models/default (Bi-DFCL on the synthetic benchmark)")
    p.add_argument("--out", type=Path, default=Path("models/default"))
    p.add_argument("--work", type=Path, default=Path("runs/default-model"), help="scratch directory")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("benchmark", help="train every method over several seeds and write the comparison table")
    p.add_argument("--suite", required=True, choices=SUITES)
    p.add_argument(
        "--methods",
        type=_names,
        default=None,
        help="comma-separated methods (default: all; synthetic suites add tsm-rich, TSM on a 200k-row RCT)",
    )
    p.add_argument("--seeds", type=int, default=5, help="number of seeds (0..S-1)")
    p.add_argument("--seed-list", type=_ints, help="explicit comma-separated seeds instead of --seeds")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples per seed")
    p.add_argument("--out", type=Path, default=Path("docs/results"), help="directory for tables and plots")
    p.add_argument(
        "--work", type=Path, default=Path("runs/benchmark"), help="scratch directory for data and cached predictions"
    )
    p.add_argument("--fresh", action="store_true", help="retrain every run instead of reusing cached predictions")
    p.add_argument("--quiet", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    handler = getattr(commands, "run_" + args.command.replace("-", "_"))
    try:
        handler(args)
    except (ValueError, FileNotFoundError) as error:
        sys.stderr.write(f"error: {error}\n")
        return 2
    return 0
