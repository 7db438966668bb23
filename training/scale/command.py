"""`python -m training train --stream …` and `torchrun --nproc-per-node N -m training train …`.

Reads the training table as a streamed Parquet dataset (the RCT table for tsm/DFCL, the OBS table for tsm-obs
and Bi-DFCL), keeps validation (and Bi-DFCL's RCT training rows) in memory, trains on every rank, and has rank 0
write the same checkpoint `python -m training train` writes, so `evaluate` and `export` take it unchanged.
"""

from __future__ import annotations

import argparse
import json
import resource
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.bidfcl import BiDFCLConfig
from training.commands import data_summary, validation_metrics
from training.config import DatasetConfig
from training.data import CategoricalEncoding, encoding_from_feature_names, load_logs
from training.dataset import Logs
from training.methods import _plain, get_method, method_config
from training.network import NetworkConfig, save_checkpoint
from training.scale import ranks
from training.scale.bilevel import fit_bidfcl_streamed
from training.scale.resume import ResumeState
from training.scale.single import StreamedData, fit_single_level_streamed
from training.scale.stats import Moments, TableStats, scan_all
from training.scale.stream import (
    MIN_PIECES_PER_RANK,
    EncodedRows,
    ParquetTable,
    ShardStream,
    encode_rows,
    training_columns,
)
from training.train import TrainConfig

SAMPLE_ROWS = 200_000  # DFCL's λ-from-budgets sample of the streamed table (bounded, the same on every rank)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def read_encoding(path: Path) -> CategoricalEncoding:
    """An encoding saved as JSON: the `encoding` object of a manifest or checkpoint, or a file holding one."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"--encoding {path}: not a readable JSON file: {error}") from error
    if isinstance(data, dict) and "encoding" in data:
        data = data["encoding"]
    return CategoricalEncoding.from_dict(data)


def _logs(rows: EncodedRows, encoding: CategoricalEncoding, config: DatasetConfig, binary: tuple[bool, bool]) -> Logs:
    return Logs(
        features=rows.features, treatment=rows.treatment, revenue=rows.revenue, cost=rows.cost,
        feature_names=encoding.feature_names, treatment_names=tuple(config.treatment_names),
        binary_revenue=binary[0], binary_cost=binary[1],
    )  # fmt: skip


def sample_rows(table: ParquetTable, config: DatasetConfig, encoding: CategoricalEncoding, limit: int) -> EncodedRows:
    """The first `limit` rows in piece order (what every rank reads, so the sample is the same everywhere)."""
    parts, held = [], 0
    for piece in table.pieces:
        if held >= limit:
            break
        part = encode_rows(table.read(piece), config, encoding, table.source(piece))
        parts.append(part.take(np.arange(min(part.n_rows, limit - held))))
        held += parts[-1].n_rows
    return EncodedRows.concat(parts)


def network_config(
    moments: Moments, n_treatments: int, hidden: tuple[int, ...], binary: tuple[bool, bool]
) -> NetworkConfig:
    mean, std = moments.standardisation()
    return NetworkConfig(
        n_features=len(mean), n_treatments=n_treatments, hidden=tuple(hidden), binary_revenue=binary[0],
        binary_cost=binary[1], feature_mean=mean, feature_std=std,
    )  # fmt: skip


def run_streamed_train(args: argparse.Namespace, say: Callable[[str], None]) -> None:
    me = ranks.init()
    try:
        _train(args, me, say)
    finally:
        ranks.shutdown()


def _train(args: argparse.Namespace, me: ranks.Ranks, say: Callable[[str], None]) -> None:
    spec = get_method(args.method)
    config = DatasetConfig.load(args.config)
    streamed_path = args.rct if spec.data == "rct" else args.obs
    if streamed_path is None:
        raise ValueError(f"method {args.method} streams {'--rct' if spec.data == 'rct' else '--obs'}; give it")
    if args.val is None:
        raise ValueError("streamed training needs RCT validation logs (--val); it does not hold out rows")
    if spec.data == "both" and args.rct is None:
        raise ValueError(f"method {args.method} needs RCT training logs (--rct)")
    table = ParquetTable(streamed_path, training_columns(config), MIN_PIECES_PER_RANK * me.world_size)
    stats: TableStats = scan_all(table, config)
    rct_train: Logs | None = None
    if args.encoding is not None:
        encoding = read_encoding(args.encoding)
    elif spec.data == "both":
        # As `python -m training train`: the encoding is fitted on the first training file, the RCT table.
        rct_train = load_logs(args.rct, config)
        encoding = encoding_from_feature_names(rct_train.feature_names, config)
    else:
        encoding = stats.encoding(config)
    if spec.data == "both" and rct_train is None:
        rct_train = load_logs(args.rct, config, encoding)
    val = load_logs(args.val, config, encoding)
    binary = (
        stats.binary_revenue if config.binary_revenue is None else config.binary_revenue,
        stats.binary_cost if config.binary_cost is None else config.binary_cost,
    )
    overrides = {
        "seed": args.seed, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "alpha": args.alpha,
        "tau": args.tau, "lams": tuple(args.lams) if args.lams else None, "n_cg": args.n_cg,
        "obs_batch_size": args.obs_batch_size, "rct_batch_size": args.rct_batch_size,
        "validation": args.validation, "warm_start_epochs": args.warm_start_epochs,
    }  # fmt: skip
    method = method_config(args.method, overrides)
    moments = stats.feature_moments(encoding)
    if rct_train is not None:
        moments = moments.merge(Moments.of(rct_train.features))  # Bi-DFCL standardises on OBS ∪ RCT train
    net_config = network_config(moments, config.n_treatments, method.hidden, binary)
    batch_size = method.obs_batch_size if isinstance(method, BiDFCLConfig) else method.batch_size
    stream = ShardStream(
        table, config, encoding, batch_size, rank=me.rank, world_size=me.world_size, seed=args.seed,
        buffer_rows=max(args.shuffle_buffer, batch_size), max_steps=args.steps_per_epoch,
    )  # fmt: skip
    propensity = torch.as_tensor(np.maximum(stats.propensity(), 1e-12), dtype=torch.float32)
    decision_focused = isinstance(method, TrainConfig) and method.method != "tsm"
    sample = (
        _logs(sample_rows(table, config, encoding, SAMPLE_ROWS), encoding, config, binary) if decision_focused else None
    )
    data = StreamedData(stream, propensity, binary, sample)
    run = {"method": args.method, "seed": args.seed, "data": str(streamed_path), "config": _plain(method)}
    resume = ResumeState(args.resume_dir, json.loads(json.dumps(run)))
    info: dict[str, Any]
    if isinstance(method, BiDFCLConfig):
        assert rct_train is not None
        model, history = fit_bidfcl_streamed(data, net_config, rct_train, val, method, resume, not args.quiet)
        info = {"config": _plain(method), "history": history}
    else:
        model, hist = fit_single_level_streamed(data, net_config, val, method, resume, not args.quiet)
        info = {"config": _plain(method), "history": hist.to_dict()}
    peak_rss = ranks.gather_objects(peak_rss_mb())
    if not me.leader:
        return
    metrics = validation_metrics(model, val)
    summary = data_summary(rct_train=rct_train, rct_val=val)
    summary["rct_train" if spec.data == "rct" else "obs"] = {
        "rows": stats.rows, "source": str(streamed_path), "rows_per_treatment": stats.rows_per_treatment(config),
    }  # fmt: skip
    extra = {
        "method": args.method,
        "dataset_config": config.to_dict(),
        "encoding": encoding.to_dict(),
        "training_data": summary,
        "validation_metrics": metrics,
        "streamed": {
            "world_size": me.world_size,
            "shuffle_buffer_rows": stream.buffer_rows,
            "peak_rss_mb": peak_rss,
            "rows_per_epoch": stream.rows_per_epoch(),
        },
        **info,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, str(args.out), extra)
    say(
        f"saved {args.method} to {args.out} ({me.world_size} rank(s), {stats.rows} streamed rows); "
        f"validation cost-curve area (IPW EOM) {metrics['cost_curve_area']:.5g}"
    )
