"""The plots of docs/campaigns.md: cumulative spend against the budget and target, and λ over the day."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from bench.campaign_run import DayTrace
from bench.campaign_world import Day, time_of_day

TITLES = {
    "paced": "pacing even",
    "fixed": "fixed reference λ* (pacing off)",
    "paced_kill": "pacing even, replica killed",
}


def plot_spend(
    path: Path, day: Day, traces: dict[str, DayTrace], budget: float, events: dict[str, list[float]] | None = None
) -> None:
    """One panel per run; `events` marks moments (e.g. a replica killed and restarted) as vertical lines."""
    figure, axes = plt.subplots(1, len(traces), figsize=(5 * len(traces), 4), sharey=True)
    profile = np.concatenate([[0.0], np.cumsum(time_of_day(48))])
    for axis, (name, trace) in zip(np.atleast_1d(axes), traces.items(), strict=True):
        served = trace.treatment >= 0
        order = np.argsort(np.where(served, trace.sent_fraction, np.inf), kind="stable")[: int(served.sum())]
        rows = order
        true_cost = day.true_cost[rows, trace.treatment[rows]]
        x = trace.sent_fraction[rows]
        axis.plot(x, np.cumsum(trace.predicted_cost[rows]) / budget, label="committed (predicted cost)")
        axis.plot(x, np.cumsum(true_cost) / budget, label="true spend")
        axis.plot(np.linspace(0, 1, 49), profile, "k:", label="target (traffic-weighted even)")
        axis.axhline(1.0, color="red", linewidth=0.8, label="budget")
        if trace.ledger:
            axis.plot(
                [s["fraction"] for s in trace.ledger],
                [s["realized"] / budget for s in trace.ledger],
                label="realized reported",
            )
        for moment in (events or {}).get(name, []):
            axis.axvline(moment, color="grey", linewidth=0.6, linestyle="--")
        axis.set_title(TITLES.get(name, name))
        axis.set_xlabel("time of day (share of the flight)")
        axis.set_xlim(0, 1.05)
    np.atleast_1d(axes)[0].set_ylabel("cumulative spend ÷ budget")
    np.atleast_1d(axes)[0].legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_lambda(path: Path, traces: dict[str, DayTrace], reference: float, hindsight: float) -> None:
    figure, axis = plt.subplots(figsize=(7, 4))
    for name, trace in traces.items():
        axis.plot(
            [s["fraction"] for s in trace.ledger], [s["lambda"] for s in trace.ledger], label=TITLES.get(name, name)
        )
    axis.axhline(reference, color="grey", linestyle="--", linewidth=0.8, label="reference λ*")
    axis.axhline(hindsight, color="black", linestyle=":", linewidth=0.8, label="hindsight-best fixed λ")
    axis.set_xlabel("time of day (share of the flight)")
    axis.set_ylabel("λ served")
    axis.set_xlim(0, 1.05)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
