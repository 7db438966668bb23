"""Prometheus series of the campaigns, computed when /metrics is scraped (no work on the hot path).

allocator_campaign_{budget,committed,realized,remaining,slice_held} per campaign, allocator_campaign_pace_error
and allocator_campaign_paced_lambda (last step this replica led), allocator_campaign_capped_total (individuals
moved to the cheapest treatment by the budget, per reason), allocator_campaign_ledger_up.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from service.campaigns.leader import Pacer
from service.campaigns.slices import CampaignBook


class CampaignCollector(Collector):
    def __init__(self, book: CampaignBook, pacer: Pacer) -> None:
        self.book = book
        self.pacer = pacer

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        book = self.book
        ledger_up = GaugeMetricFamily("allocator_campaign_ledger_up", "1 when the campaign ledger answers")
        ledger_up.add_metric([], 1.0 if book.ledger_up else 0.0)
        yield ledger_up
        families = {
            name: GaugeMetricFamily(f"allocator_campaign_{name}", text, labels=["campaign"])
            for name, text in (
                ("budget", "Campaign total budget"),
                ("committed", "Predicted cost committed (ledger, last report)"),
                ("realized", "Realized cost reported"),
                ("remaining", "Budget minus committed"),
                ("slice_held", "Budget slice this replica may still spend"),
                ("pace_error", "(committed − target) ÷ budget at the last pacing step this replica led"),
                ("paced_lambda", "λ chosen by the last pacing step this replica led"),
                ("uncharged_floor_cost", "Predicted cost of cheapest treatments given beyond this replica's slice"),
            )
        }
        capped = CounterMetricFamily(
            "allocator_campaign_capped",
            "Individuals given the cheapest treatment by the budget",
            labels=["campaign", "reason"],
        )
        for campaign, wallet in list(book.wallets.items()):
            state = book.states.get(campaign)
            if state is not None:
                families["budget"].add_metric([campaign], state.budget)
                families["committed"].add_metric([campaign], state.committed)
                families["realized"].add_metric([campaign], state.realized)
                families["remaining"].add_metric([campaign], state.remaining)
            families["slice_held"].add_metric([campaign], wallet.available)
            families["uncharged_floor_cost"].add_metric([campaign], wallet.uncharged)
            step = self.pacer.last.get(campaign)
            if step is not None:
                families["pace_error"].add_metric([campaign], step.pace_error)
                families["paced_lambda"].add_metric([campaign], step.lam)
            for reason, count in wallet.capped_counts().items():
                capped.add_metric([campaign, reason], count)
        yield from families.values()
        yield capped


def register_campaign_metrics(registry: CollectorRegistry, book: CampaignBook, pacer: Pacer) -> None:
    registry.register(CampaignCollector(book, pacer))
