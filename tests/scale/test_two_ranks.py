"""Proof that data-parallel training is the same method: two gloo ranks under torchrun vs one process.

After one step, the parameters on both ranks are equal, and equal to one process taking the same step on
the union of the two ranks' batches: for tsm (a DistributedDataParallel Adam step on streamed batches) and for
one Bi-DFCL bilevel step (upper step with the bridge update from the all-reduced hypergradient, then the lower
step on the target).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from training.bidfcl import _Bilevel, upper_budgets
from training.scale.bilevel import initial_state
from training.scale.stream import EncodedRows
from training.synthetic import SyntheticSpec, write_benchmark

from .steps import BIDFCL, OBS_BATCH, TSM_BATCH, Setup, bidfcl_inputs, bidfcl_step, rct_rows, state, tsm_model, tsm_step

STEPS = Path(__file__).with_name("steps.py")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("two-ranks")
    write_benchmark(out, SyntheticSpec(n_treatments=3, seed=1), rct_rows=1500, obs_rows=3000, val_rows=600,
                    test_rows=200, seed=1)  # fmt: skip
    return out


def run_two_ranks(mode: str, data_dir: Path, out: Path) -> list[dict]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(STEPS),
               mode, str(data_dir), str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def union(results: list[dict]) -> EncodedRows:
    return EncodedRows.concat([EncodedRows(**{k: np.asarray(v) for k, v in r["rows"].items()}) for r in results])


def assert_same(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]], atol: float) -> None:
    for net_a, net_b in zip(a, b, strict=True):
        for name in net_a:
            torch.testing.assert_close(
                net_a[name], net_b[name], atol=atol, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}"
            )


def test_tsm_step_on_two_ranks_is_one_step_on_the_union(data_dir: Path, tmp_path: Path) -> None:
    results = run_two_ranks("tsm", data_dir, tmp_path)
    assert_same(results[0]["nets"], results[1]["nets"], atol=0.0)  # the ranks agree exactly
    batches = [Setup(data_dir, "rct_train.parquet", TSM_BATCH, rank, 2) for rank in range(2)]
    for rank, setup in enumerate(batches):  # each rank streamed its own, distinct share
        np.testing.assert_array_equal(setup.rows.features, results[rank]["rows"]["features"])
    assert not np.array_equal(batches[0].rows.features, batches[1].rows.features)
    single = Setup(data_dir, "rct_train.parquet", TSM_BATCH, 0, 1)
    model = tsm_model(single)
    before = state(model)
    tsm_step(model, model, single.batch(union(results)))
    assert_same(results[0]["nets"], state(model), atol=1e-6)
    with pytest.raises(AssertionError):  # the step moved the weights: the comparison can fail
        assert_same(before, state(model), atol=1e-6)


def test_bidfcl_bilevel_step_on_two_ranks_is_one_step_on_the_union(data_dir: Path, tmp_path: Path) -> None:
    results = run_two_ranks("bidfcl", data_dir, tmp_path)
    assert_same(results[0]["nets"], results[1]["nets"], atol=0.0)
    single = Setup(data_dir, "obs.parquet", OBS_BATCH, 0, 1)
    rct, val, net_config = bidfcl_inputs(data_dir, single)
    teacher, target, bridge = initial_state(rct, val, net_config, BIDFCL)
    before = state(target, bridge)
    bilevel = _Bilevel(target, bridge, BIDFCL, upper_budgets(rct, BIDFCL))  # the one-process class
    picks = torch.cat([rct_rows(rct, 0), rct_rows(rct, 1)])  # the union of the ranks' RCT batches, in rank order
    bidfcl_step(bilevel, teacher, single, union(results), rct, picks)
    assert_same(results[0]["nets"], state(target, bridge), atol=1e-5)
    for net_before, net_after in zip(before, state(target, bridge), strict=True):  # both networks moved
        assert any(not torch.equal(net_before[k], net_after[k]) for k in net_before if k.startswith("body"))
