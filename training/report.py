"""Evaluation results as files people compare: results.json, a markdown table and a cost-curve plot (PNG).

Input is one `CostCurve` per method on one budget grid (`training.evaluate`), optionally with bootstrap
improvement intervals against a reference method. A method whose name starts with "random" is drawn dashed (the
random allocation baseline), one starting with "oracle" dotted (the optimum from true outcomes).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on training machines or in CI

import matplotlib.pyplot as plt  # after use(): the backend is chosen before pyplot loads
import numpy as np

from training.evaluate import CostCurve, curve_area

log = logging.getLogger(__name__)

Interval = tuple[float, float, float]  # improvement % vs the reference: mean, 95% percentile low and high
_BOUNDS = ("mean", "low", "high")


def _check_curves(curves: dict[str, CostCurve]) -> np.ndarray:
    """The shared budget grid (L,); every curve must be on it."""
    if not curves:
        raise ValueError("curves is empty: nothing to report")
    name, first = next(iter(curves.items()))
    for other, curve in curves.items():
        if curve.budgets.shape != first.budgets.shape or not np.allclose(curve.budgets, first.budgets):
            raise ValueError(f"curve {other!r} has budgets {curve.budgets} but {name!r} has {first.budgets}")
    return first.budgets


def _areas(curve: CostCurve) -> dict[str, float | None]:
    return {
        "area_ipw": curve_area(curve, "ipw"),
        "area_hajek": curve_area(curve, "hajek"),
        "area_oracle": curve_area(curve, "oracle") if curve.has_oracle else None,
    }


def significant(value: float, digits: int) -> str:
    """`value` with `digits` significant digits in fixed notation (14.000, 0.0095105), trailing zeros kept."""
    if value == 0 or not np.isfinite(value):
        return f"{value:g}"
    decimals = max(0, digits - 1 - int(np.floor(np.log10(abs(value)))))
    return f"{value:.{decimals}f}"


def _improvement_cell(
    name: str, curves: dict[str, CostCurve], reference: str, intervals: Mapping[str, Interval] | None
) -> str:
    """Cell "+1.23% [−0.40, +2.90]" from a bootstrap interval, else the point improvement of the IPW area."""
    if name == reference:
        return "reference"
    if intervals is not None and name in intervals:
        mean, low, high = intervals[name]
        return f"{mean:+.2f}% [{low:+.2f}, {high:+.2f}]"
    if reference in curves:
        ref_area = curve_area(curves[reference], "ipw")
        if ref_area != 0:
            return f"{(curve_area(curves[name], 'ipw') / ref_area - 1) * 100:+.2f}%"
    return "—"


def format_table(
    curves: dict[str, CostCurve], reference: str = "tsm", intervals: Mapping[str, Interval] | None = None
) -> str:
    """Markdown table, one row per method: cost-curve areas, improvement vs `reference`, EOM r̄ at each budget."""
    budgets = _check_curves(curves)
    oracle = any(curve.has_oracle for curve in curves.values())
    suffix = " (95% CI)" if intervals else ""
    header = ["method", "area (IPW)"] + (["area (oracle)"] if oracle else []) + [f"vs {reference}{suffix}"]
    header += [f"r̄ @ b={b:.4g}" for b in budgets]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, curve in curves.items():
        areas = _areas(curve)
        row = [name, significant(curve_area(curve, "ipw"), 5)]
        if oracle:
            row.append("—" if areas["area_oracle"] is None else significant(areas["area_oracle"], 5))
        row.append(_improvement_cell(name, curves, reference, intervals))
        row += [significant(float(value), 5) for value in curve.revenue_ipw]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _plot(curves: dict[str, CostCurve], path: Path, title: str) -> None:
    """Per-capita revenue against per-capita cost, one line per method; an oracle panel when true values exist."""
    panels: list[tuple[str, str, str]] = [("EOM (IPW) on RCT rows", "cost_ipw", "revenue_ipw")]
    if any(curve.has_oracle for curve in curves.values()):
        panels.append(("true value (oracle)", "oracle_cost", "oracle_revenue"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), 4.5), squeeze=False)
    for ax, (label, x_field, y_field) in zip(axes[0], panels, strict=True):
        for name, curve in curves.items():
            x, y = getattr(curve, x_field), getattr(curve, y_field)
            if x is None or y is None:
                continue
            style: dict[str, Any] = {"marker": "o", "markersize": 3}
            if name.lower().startswith("random"):
                style = {"linestyle": "--", "color": "grey"}
            elif name.lower().startswith("oracle"):
                style = {"linestyle": ":", "color": "black"}
            ax.plot(x, y, label=name, **style)
        ax.set_title(label)
        ax.set_xlabel("per-capita cost")
        ax.set_ylabel("per-capita revenue")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _interval_dict(intervals: Mapping[str, Interval] | None, name: str) -> dict[str, float] | None:
    if intervals is None or name not in intervals:
        return None
    return {bound: float(value) for bound, value in zip(_BOUNDS, intervals[name], strict=True)}


def write_report(
    curves: dict[str, CostCurve],
    out_dir: str | Path,
    title: str,
    reference: str = "tsm",
    intervals: Mapping[str, Interval] | None = None,
    interval_kind: str = "ipw",
    interval_method: str = "paired bootstrap resamples of the test rows",
) -> dict[str, Path]:
    """Write results.json, results.md and cost_curves.png into `out_dir`; returns their paths by kind.

    `intervals` are improvements over `reference` on the `interval_kind` area ("ipw" or "oracle"), resampled as
    `interval_method` says.
    """
    budgets = _check_curves(curves)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md", "plot": out / "cost_curves.png"}
    methods = {
        name: {
            **_areas(curve),
            "improvement": _interval_dict(intervals, name),
            "curve": curve.to_dict(),
        }
        for name, curve in curves.items()
    }
    results = {"title": title, "reference": reference, "budgets_per_capita": budgets.tolist(), "methods": methods}
    paths["json"].write_text(json.dumps(results, indent=2) + "\n")
    notes = (
        "Cost-curve area = mean per-capita revenue over the budget grid (normalised area under the cost curve). "
        + (
            f"Improvement = (area / area of {reference} − 1)·100 on the {interval_kind} area, mean and 95% "
            f"percentile interval over {interval_method}. "
            if intervals
            else f"Improvement = (area / area of {reference} − 1)·100 on the IPW area. "
        )
        + "r̄ @ b: IPW EOM per-capita revenue at per-capita budget b."
    )
    paths["markdown"].write_text(f"# {title}\n\n{format_table(curves, reference, intervals)}\n\n{notes}\n")
    _plot(curves, paths["plot"], title)
    log.info("wrote %s, %s and %s", *paths.values())
    return paths
