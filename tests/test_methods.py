"""The method table: every name trains something different, and no option is silently ignored."""

from __future__ import annotations

import itertools
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from training import cli
from training.batch import full_batch
from training.data import logs_from_frame
from training.methods import METHODS, get_method, method_config, option_flag
from training.synthetic import SyntheticSpec, dataset_config, generate
from training.train import _decision_loss


def resolved(name: str) -> tuple[str, dict[str, object]]:
    """What a method trains on and with: its data and the config fields it reads (option-settable or fixed)."""
    spec = get_method(name)
    config = asdict(method_config(name))
    return spec.data, config


def test_every_method_resolves_to_a_different_configuration() -> None:
    for a, b in itertools.combinations(METHODS, 2):
        assert resolved(a) != resolved(b), f"{a} and {b} train identically"


def test_mer_uses_its_own_temperature_not_pl_under_another_name() -> None:
    """DFCL-MER is L_PLL with temperature τ (METHOD.md §5.4): with τ = 3 its loss and gradients differ from PL's."""
    pl, mer = method_config("dfcl-pl"), method_config("dfcl-mer")
    assert pl.tau == 1.0 and mer.tau == 3.0  # type: ignore[union-attr]
    spec = SyntheticSpec(seed=0)
    logs = logs_from_frame(generate(spec, 400, True, np.random.default_rng(0)), dataset_config(spec), source="rct")
    batch = full_batch(logs)
    torch.manual_seed(0)
    outputs = (torch.randn(logs.n_rows, 2 * logs.n_treatments) + 5.0).requires_grad_()
    losses = {}
    for name, config in (("pl", pl), ("mer", mer)):
        loss = _decision_loss(config, [0.5, 1.0])(outputs, batch)  # type: ignore[arg-type]
        (grad,) = torch.autograd.grad(loss, outputs)
        losses[name] = (float(loss.detach()), grad)
    assert losses["pl"][0] != pytest.approx(losses["mer"][0], rel=1e-3)
    assert not torch.allclose(losses["pl"][1], losses["mer"][1])


@pytest.mark.parametrize(
    ("method", "key"),
    [("bidfcl-ppl", "lr"), ("bidfcl-ppl", "alpha"), ("bidfcl-ppl", "batch_size"), ("tsm", "tau"),
     ("dfcl-pl", "tau"), ("dfcl-ifd", "n_cg"), ("bidfcl-ppl-fixed", "tau"), ("bidfcl-ppl-explicit", "n_cg"),
     ("tsm", "validation"), ("tsm-obs", "lams")],
)  # fmt: skip
def test_an_option_the_method_does_not_read_is_an_error_naming_it(method: str, key: str) -> None:
    with pytest.raises(ValueError, match=f"{option_flag(key)} does not apply to method {method}"):
        method_config(method, {key: 1})


def test_every_option_a_method_lists_reaches_its_config() -> None:
    values = {"seed": 7, "epochs": 3, "batch_size": 17, "lr": 0.02, "alpha": 2.5, "lams": (0.3,), "tau": 0.7,
              "validation": "ipw", "n_cg": 9, "cg_tol": 1e-5, "damping": 0.02, "k_steps": 3,
              "warm_start_epochs": 2, "obs_batch_size": 128, "rct_batch_size": 512}  # fmt: skip
    for name, spec in METHODS.items():
        config = method_config(name, {key: values[key] for key in spec.options})
        for key in spec.options:
            assert getattr(config, key) == values[key], (name, key)


def test_train_cli_refuses_an_option_of_another_method_before_reading_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", "--method", "bidfcl-ppl", "--lr", "0.01", "--alpha", "2", "--batch-size", "64",
            "--config", str(tmp_path / "missing.toml"), "--rct", "x.csv", "--out", str(tmp_path / "m.pt")]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "--alpha, --batch-size, --lr does not apply to method bidfcl-ppl" in err


def test_train_cli_lists_the_methods(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["train", "--method", "dfcl", "--config", "c.toml", "--out", "m.pt"])
    err = capsys.readouterr().err
    assert "invalid choice: 'dfcl'" in err and "bidfcl-ppl-explicit" in err


def test_evaluate_help_states_the_budget_grid_and_the_area(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "evenly spaced from the cost of giving everyone the cheapest arm" in text
    assert "mean per-capita revenue over the budget levels" in text
