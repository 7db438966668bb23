"""Per-epoch resume: a run killed after an epoch and started again ends with the weights of an uninterrupted run;
and `python -m training train --stream` writes a checkpoint `evaluate` reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from training.bidfcl import BiDFCLConfig
from training.cli import main
from training.config import DatasetConfig
from training.data import load_logs
from training.network import load_checkpoint
from training.scale.bilevel import fit_bidfcl_streamed
from training.scale.command import network_config
from training.scale.resume import ResumeState
from training.scale.single import StreamedData, fit_single_level_streamed
from training.scale.stats import Moments, scan_all
from training.scale.stream import ParquetTable, ShardStream, training_columns
from training.synthetic import SyntheticSpec, write_benchmark
from training.train import TrainConfig


class CrashError(RuntimeError):
    pass


class CrashingResume(ResumeState):
    """Saves like ResumeState, then dies after `epochs` saves (as a killed rank would, with the state on disk)."""

    def __init__(self, directory: Path, run: dict[str, Any], epochs: int) -> None:
        super().__init__(directory, run)
        self.left = epochs

    def save(self, state: dict[str, Any]) -> None:
        super().save(state)
        self.left -= 1
        if self.left == 0:
            raise CrashError


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    out = tmp_path_factory.mktemp("resume")
    paths = write_benchmark(out, SyntheticSpec(n_treatments=3, seed=4), rct_rows=800, obs_rows=3000, val_rows=400,
                            test_rows=300, seed=4)  # fmt: skip
    return out, paths


def streamed(paths: dict[str, Path], table_name: str, batch: int) -> tuple[StreamedData, DatasetConfig, Any]:
    config = DatasetConfig.load(paths["config"])
    table = ParquetTable(paths[table_name], training_columns(config), min_pieces=4)
    stats = scan_all(table, config)
    encoding = stats.encoding(config)
    stream = ShardStream(table, config, encoding, batch, seed=0, buffer_rows=512)
    data = StreamedData(stream, torch.as_tensor(stats.propensity(), dtype=torch.float32), (False, False), None)
    return data, config, (stats, encoding)


def states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)


def test_tsm_resumed_after_a_crash_ends_like_an_uninterrupted_run(synthetic: Any, tmp_path: Path) -> None:
    _, paths = synthetic
    data, config, (stats, encoding) = streamed(paths, "rct_train", 64)
    val = load_logs(paths["rct_val"], config, encoding)
    net = network_config(stats.feature_moments(encoding), config.n_treatments, (16, 16), (False, False))
    train = TrainConfig(method="tsm", epochs=4, hidden=(16, 16), patience=10)
    run = {"test": "tsm"}
    whole, whole_history = fit_single_level_streamed(data, net, val, train, ResumeState(None, run), progress=False)
    with pytest.raises(CrashError):
        fit_single_level_streamed(data, net, val, train, CrashingResume(tmp_path, run, epochs=2), progress=False)
    resumed, history = fit_single_level_streamed(data, net, val, train, ResumeState(tmp_path, run), progress=False)
    states_equal(whole.state_dict(), resumed.state_dict())
    assert history.val_score == whole_history.val_score and len(history.val_score) == 4
    with pytest.raises(ValueError, match="belongs to another run"):
        ResumeState(tmp_path, {"test": "other"}).load()


def test_bidfcl_resumed_after_a_crash_ends_like_an_uninterrupted_run(synthetic: Any, tmp_path: Path) -> None:
    _, paths = synthetic
    data, config, (stats, encoding) = streamed(paths, "obs", 32)
    rct = load_logs(paths["rct_train"], config, encoding)
    val = load_logs(paths["rct_val"], config, encoding)
    moments = stats.feature_moments(encoding).merge(Moments.of(rct.features))
    net = network_config(moments, config.n_treatments, (16, 16), (False, False))
    cfg = BiDFCLConfig(epochs=3, warm_start_epochs=1, obs_batch_size=32, rct_batch_size=128, k_period=10,
                       n_cg=10, teacher_epochs=2, hidden=(16, 16))  # fmt: skip
    run = {"test": "bidfcl"}
    whole, whole_history = fit_bidfcl_streamed(data, net, rct, val, cfg, ResumeState(None, run), progress=False)
    with pytest.raises(CrashError):
        fit_bidfcl_streamed(data, net, rct, val, cfg, CrashingResume(tmp_path, run, epochs=2), progress=False)
    resumed, history = fit_bidfcl_streamed(data, net, rct, val, cfg, ResumeState(tmp_path, run), progress=False)
    states_equal(whole.state_dict(), resumed.state_dict())
    assert history["val_score"] == whole_history["val_score"] and history["bridge_updates"] > 0


@pytest.mark.parametrize("method", ["dfcl-pl", "bidfcl-ppl"])
def test_streamed_cli_checkpoint_is_evaluated(synthetic: Any, tmp_path: Path, method: str) -> None:
    _, paths = synthetic
    model = tmp_path / "model.pt"
    code = main(["train", "--stream", "--quiet", "--method", method, "--config", str(paths["config"]),
                 "--rct", str(paths["rct_train"]), "--obs", str(paths["obs"]), "--val", str(paths["rct_val"]),
                 "--out", str(model), "--epochs", "2", "--warm-start-epochs", "1", "--shuffle-buffer", "1000",
                 "--resume-dir", str(tmp_path / "resume")])  # fmt: skip
    assert code == 0
    _, extra = load_checkpoint(str(model))
    assert extra["streamed"]["world_size"] == 1 and extra["method"] == method
    assert extra["encoding"]["categorical"]["city_tier"]
    assert (tmp_path / "resume" / "resume.pt").is_file()
    assert main(["evaluate", "--model", str(model), "--test", str(paths["rct_test"]), "--bootstrap", "0",
                 "--out", str(tmp_path / "eval")]) == 0  # fmt: skip
    assert np.isfinite(extra["validation_metrics"]["cost_curve_area"])
