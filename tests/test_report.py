"""Evaluation report files: results.json, the markdown table and the cost-curve PNG (training/report.py)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from training.dataset import Logs
from training.evaluate import (
    CostCurve,
    bootstrap_areas,
    budget_grid,
    curve_area,
    eom_curve,
    improvement,
    oracle_optimum_curve,
    random_curve,
)
from training.report import format_table, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def oracle_logs(n: int = 2000, k: int = 3, seed: int = 0) -> Logs:
    """RCT rows with known potential outcomes: arm j costs j·v_i and lifts revenue by gain_i·√j."""
    rng = np.random.default_rng(seed)
    arms = np.arange(k)
    true_cost = rng.uniform(0.5, 1.5, (n, 1)) * arms[None, :]
    true_revenue = 1.0 + rng.lognormal(0, 0.8, (n, 1)) * np.sqrt(arms)[None, :]
    treatment = rng.integers(0, k, n)
    rows = np.arange(n)
    return Logs(
        features=np.zeros((n, 1), dtype=np.float32),
        treatment=treatment.astype(np.int64),
        revenue=(true_revenue[rows, treatment] * rng.lognormal(-0.125, 0.5, n)).astype(np.float32),
        cost=true_cost[rows, treatment].astype(np.float32),
        feature_names=("x",),
        treatment_names=tuple(f"arm{j}" for j in range(k)),
        true_revenue=true_revenue.astype(np.float32),
        true_cost=true_cost.astype(np.float32),
    )


@pytest.fixture(scope="module")
def evaluated() -> tuple[dict[str, CostCurve], dict, Logs]:
    logs = oracle_logs()
    assert logs.true_revenue is not None and logs.true_cost is not None
    budgets = budget_grid(logs, levels=5)
    rng = np.random.default_rng(1)
    predictions = {
        "tsm": (logs.true_revenue + rng.normal(0, 1.0, logs.true_revenue.shape), logs.true_cost),
        "dfcl-ifd": (logs.true_revenue + rng.normal(0, 0.3, logs.true_revenue.shape), logs.true_cost),
    }
    curves = {name: eom_curve(*pred, logs, budgets) for name, pred in predictions.items()}
    curves["random"] = random_curve(logs, budgets, draws=3, seed=0)
    curves["oracle"] = oracle_optimum_curve(logs, budgets)
    samples = bootstrap_areas(predictions, logs, budgets, n_boot=30, seed=0)
    intervals = {name: improvement(samples, name, "tsm") for name in predictions}
    return curves, intervals, logs


def table_rows(markdown: str) -> list[list[str]]:
    """Cells of the body rows of the first markdown table in `markdown`."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def test_write_report_files(evaluated: tuple[dict[str, CostCurve], dict, Logs], tmp_path: Path) -> None:
    curves, intervals, _ = evaluated
    paths = write_report(curves, tmp_path / "eval", title="synthetic oracle set", reference="tsm", intervals=intervals)
    assert {p.name for p in (tmp_path / "eval").iterdir()} == {"results.json", "results.md", "cost_curves.png"}

    png = paths["plot"].read_bytes()
    assert png[:8] == PNG_MAGIC
    image = matplotlib.image.imread(paths["plot"])
    assert image.ndim == 3 and image.shape[1] > image.shape[0] > 100  # two panels side by side
    assert image[..., :3].std() > 0.05  # something was drawn

    results = json.loads(paths["json"].read_text())
    assert results["reference"] == "tsm" and len(results["budgets_per_capita"]) == 5
    assert list(results["methods"]) == list(curves)
    for name, entry in results["methods"].items():
        assert entry["area_ipw"] == pytest.approx(curve_area(curves[name], "ipw"))
        assert entry["area_oracle"] == pytest.approx(curve_area(curves[name], "oracle"))
        assert entry["curve"]["revenue_ipw"] == pytest.approx(curves[name].revenue_ipw.tolist())
    assert results["methods"]["dfcl-ifd"]["improvement"]["mean"] == pytest.approx(intervals["dfcl-ifd"].mean)
    assert results["methods"]["random"]["improvement"] is None

    markdown = paths["markdown"].read_text()
    assert markdown.startswith("# synthetic oracle set")
    assert format_table(curves, reference="tsm", intervals=intervals) in markdown


def test_table_has_one_row_per_method(evaluated: tuple[dict[str, CostCurve], dict, Logs]) -> None:
    curves, intervals, _ = evaluated
    table = format_table(curves, reference="tsm", intervals=intervals)
    header = table.splitlines()[0]
    assert "area (IPW)" in header and "area (oracle)" in header and "vs tsm (95% CI)" in header
    rows = table_rows(table)
    assert [row[0] for row in rows] == list(curves)
    by_name = {row[0]: row for row in rows}
    assert by_name["tsm"][3] == "reference"
    low, high = intervals["dfcl-ifd"].low, intervals["dfcl-ifd"].high
    assert by_name["dfcl-ifd"][3] == f"{intervals['dfcl-ifd'].mean:+.2f}% [{low:+.2f}, {high:+.2f}]"
    # Methods without a bootstrap interval get the point improvement of the IPW area.
    point = (curve_area(curves["random"]) / curve_area(curves["tsm"]) - 1) * 100
    assert by_name["random"][3] == f"{point:+.2f}%"
    assert all(len(row) == 4 + 5 for row in rows)  # method, 2 areas, improvement, r̄ at 5 budgets
    assert float(by_name["oracle"][2]) > float(by_name["random"][2])


def test_ipw_only_report_and_unknown_reference(
    evaluated: tuple[dict[str, CostCurve], dict, Logs], tmp_path: Path
) -> None:
    curves, _, logs = evaluated
    no_oracle = Logs(logs.features, logs.treatment, logs.revenue, logs.cost, logs.feature_names, logs.treatment_names)
    budgets = budget_grid(no_oracle, levels=5)
    assert logs.true_revenue is not None and logs.true_cost is not None
    ipw_curves = {"dfcl": eom_curve(logs.true_revenue, logs.true_cost, no_oracle, budgets)}
    paths = write_report(ipw_curves, tmp_path, title="real data", reference="tsm")
    table = paths["markdown"].read_text()
    assert "area (oracle)" not in table and "vs tsm |" in table
    assert table_rows(table)[0][2] == "—"  # no tsm curve to compare with
    image = matplotlib.image.imread(paths["plot"])
    assert image.shape[0] > 100 and image.shape[1] < 1.5 * image.shape[0]  # one panel

    with pytest.raises(ValueError, match="curves is empty"):
        format_table({})
    other = {"a": curves["tsm"], "b": eom_curve(logs.true_revenue, logs.true_cost, logs, budgets[:3])}
    with pytest.raises(ValueError, match="has budgets"):
        format_table(other)
