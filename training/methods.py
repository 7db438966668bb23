"""Every trainable method by name: which logs it learns from and the function that fits it.

One table maps a method name to its data needs and its trainer, shared by `python -m training train` and
`python -m training benchmark`, so a benchmark row is exactly what a user gets from `train`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

from training.bidfcl import BiDFCLConfig, fit_bidfcl
from training.dataset import Logs
from training.network import OutcomeNet
from training.train import TrainConfig, fit_single_level


@dataclass(frozen=True)
class MethodSpec:
    """How a method trains: the logs it needs, a fixed part of its configuration, and what a user may change."""

    description: str
    data: str  # "rct": RCT train only; "obs": OBS only; "both": OBS + RCT train
    family: str  # "single" (training/train.py) or "bilevel" (training/bidfcl.py)
    settings: dict[str, Any]
    options: tuple[str, ...]  # config fields an override may set; any other one is refused, never ignored


# Config fields each family of methods actually reads; an override outside a method's set is an error.
_SINGLE = ("seed", "epochs", "batch_size", "lr")
_DFCL = (*_SINGLE, "alpha", "lams", "validation", "warm_start_epochs")
_BILEVEL = ("seed", "epochs", "validation", "warm_start_epochs", "obs_batch_size", "rct_batch_size")
_UPPER = (*_BILEVEL, "tau", "k_steps")  # runs with upper steps: the relaxed decision's τ, the assumed lower steps
_IMPLICIT = (*_UPPER, "n_cg", "cg_tol", "damping")

# DFCL-MER's temperature: τ = 3, the DFCL code's Criteo value (METHOD.md §5.4; its marketing experiments used
# 0.01). With PL's τ = 1 in TrainConfig, MER is a different loss, not PL under another name.
MER_TAU = 3.0

METHODS: dict[str, MethodSpec] = {
    "tsm": MethodSpec("two-stage S-learner on RCT (the reference)", "rct", "single", {"method": "tsm"}, _SINGLE),
    "tsm-obs": MethodSpec("two-stage S-learner on OBS only (biased)", "obs", "single", {"method": "tsm"}, _SINGLE),
    "dfcl-pl": MethodSpec("DFCL policy-learning loss on RCT", "rct", "single", {"method": "dfcl-pl"}, _DFCL),
    "dfcl-mer": MethodSpec(
        "DFCL maximum-entropy loss on RCT", "rct", "single", {"method": "dfcl-mer", "tau": MER_TAU}, (*_DFCL, "tau")
    ),
    "dfcl-ifd": MethodSpec("DFCL improved finite differences on RCT", "rct", "single", {"method": "dfcl-ifd"}, _DFCL),
    "bidfcl-ppl": MethodSpec("Bi-DFCL, PPL upper loss, implicit", "both", "bilevel", {"upper_loss": "ppl"}, _IMPLICIT),
    "bidfcl-pifd": MethodSpec(
        "Bi-DFCL, PIFD upper loss, implicit", "both", "bilevel", {"upper_loss": "pifd"}, _IMPLICIT
    ),
    "bidfcl-ppl-fixed": MethodSpec(
        "ablation: Bi-DFCL with the bridge fixed at w = 0.5",
        "both",
        "bilevel",
        {"upper_loss": "ppl", "fixed_gate": 0.5},
        _BILEVEL,
    ),
    "bidfcl-ppl-explicit": MethodSpec(
        "ablation: Bi-DFCL with the explicit (unrolled) hypergradient",
        "both",
        "bilevel",
        {"upper_loss": "ppl", "hypergradient": "explicit"},
        _UPPER,
    ),
}


def option_flag(key: str) -> str:
    """The `train` command-line flag of a config field (`n_cg` → `--n-cg`)."""
    return "--" + key.replace("_", "-")


def _config(cls: type, settings: dict[str, Any], overrides: dict[str, Any]) -> Any:
    """A config dataclass from the method's settings plus the user's overrides (already checked)."""
    return replace(cls(), **{**settings, **overrides})


def method_config(name: str, overrides: dict[str, Any] | None = None) -> TrainConfig | BiDFCLConfig:
    """The full hyperparameter set a method would train with.

    `overrides` with value None are unset; any other key the method does not read raises ValueError naming the
    option and the ones the method takes, so a run never silently trains with defaults the user tried to change.
    """
    spec = get_method(name)
    cls: type = BiDFCLConfig if spec.family == "bilevel" else TrainConfig
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(given) - set(spec.options))
    if unknown:
        flags = ", ".join(option_flag(k) for k in unknown)
        takes = ", ".join(option_flag(k) for k in spec.options)
        raise ValueError(f"{flags} does not apply to method {name} (it takes {takes})")
    config: TrainConfig | BiDFCLConfig = _config(cls, spec.settings, given)
    return config


def get_method(name: str) -> MethodSpec:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]


Trainer = Callable[..., tuple[OutcomeNet, dict[str, Any]]]


def train_method(
    name: str,
    *,
    rct_train: Logs | None,
    rct_val: Logs | None,
    obs: Logs | None = None,
    overrides: dict[str, Any] | None = None,
    progress: bool = True,
) -> tuple[OutcomeNet, dict[str, Any]]:
    """Fit method `name`; return the deployed network and {"config": …, "history": …}."""
    spec = get_method(name)
    config = method_config(name, overrides)
    if spec.data in ("rct", "both") and rct_train is None:
        raise ValueError(f"method {name} needs RCT training logs (--rct)")
    if spec.data in ("obs", "both") and obs is None:
        raise ValueError(f"method {name} needs observational logs (--obs)")
    if isinstance(config, BiDFCLConfig):
        if rct_val is None:
            raise ValueError(f"method {name} needs RCT validation logs (--val)")
        assert obs is not None and rct_train is not None  # checked above
        model, history = fit_bidfcl(obs, rct_train, rct_val, config, progress=progress)
        return model, {"config": _plain(config), "history": history}
    train = obs if spec.data == "obs" else rct_train
    assert train is not None  # checked above
    model, hist = fit_single_level(train, rct_val, config, progress=progress)
    return model, {"config": _plain(config), "history": hist.to_dict()}


def _plain(config: Any) -> dict[str, Any]:
    """A config dataclass as JSON-friendly values (tuples → lists)."""
    out = {}
    for f in fields(config):
        value = getattr(config, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out
