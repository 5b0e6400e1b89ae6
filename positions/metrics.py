"""Prometheus metrics of the position server, from the newest snapshot, at scrape time.

A custom collector on its own registry (prometheus_client, the official client library):
every scrape reads the newest `Update` and the clock, so the snapshot age is exact and an
account that left the snapshot disappears from the metrics. The controller's counters
restart from the journal's totals (or from 0, for the "since start" ones) when it does;
Prometheus's rate() treats a drop as a counter reset.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from positions.service import Update

PREFIX = "fillalloc_"
#: counts in the snapshot exported as counters: snapshot key -> (name, help)
COUNTERS = {
    "fills": ("fills_allocated", "Fills allocated by the controller."),
    "rejected": ("rejected", "Input messages the controller rejected."),
    "duplicates": ("duplicates", "Messages ignored as already applied, since controller start."),
    "splits": ("splits_applied", "Splits the controller applied."),
}
#: counts exported as gauges (they go up and down)
GAUGES = {
    "pending": ("pending_fills", "Fills waiting for the first split."),
    "held": ("held_messages", "Messages held behind gaps."),
}


class DeskCollector(Collector):
    """Reads `latest()` (the newest update, or None) on every scrape."""

    def __init__(
        self, latest: Callable[[], Update | None], clock: Callable[[], float] = time.time
    ) -> None:
        self.latest = latest
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        update = self.latest()
        up = GaugeMetricFamily(
            PREFIX + "positions_snapshot_received",
            "1 once the position server has received a snapshot, else 0.",
            value=0 if update is None else 1,
        )
        yield up
        if update is None:
            return
        desk = update.desk
        for key, (name, text) in COUNTERS.items():
            yield CounterMetricFamily(PREFIX + name, text, value=desk.count(key))
        for key, (name, text) in GAUGES.items():
            yield GaugeMetricFamily(PREFIX + name, text, value=desk.count(key))
        yield GaugeMetricFamily(
            PREFIX + "snapshot_age_seconds",
            "Seconds since the controller took the newest snapshot.",
            value=max(0.0, self.clock() - desk.time),
        )
        yield CounterMetricFamily(
            PREFIX + "controller_restarts",
            "Controller restarts seen by this position server.",
            value=update.restarts,
        )
        yield CounterMetricFamily(
            PREFIX + "snapshots_missed",
            "Snapshots this position server missed.",
            value=update.missed,
        )
        yield from self._accounts(update)

    @staticmethod
    def _accounts(update: Update) -> Iterator[Metric]:
        families = {
            "weight": GaugeMetricFamily(
                PREFIX + "account_weight_percent",
                "Account's share of total book value, percent.",
                labels=["account"],
            ),
            "target": GaugeMetricFamily(
                PREFIX + "account_target_percent",
                "Account's target from the split in force, percent.",
                labels=["account"],
            ),
            "bp": GaugeMetricFamily(
                PREFIX + "account_deviation_bp",
                "Weight minus target, basis points.",
                labels=["account"],
            ),
            "value": GaugeMetricFamily(
                PREFIX + "account_deviation_value",
                "Book value minus the target share of total book value, currency.",
                labels=["account"],
            ),
        }
        for row in update.desk.accounts:
            families["weight"].add_metric([row.name], row.weight_pct)
            families["target"].add_metric([row.name], row.target_pct)
            families["bp"].add_metric([row.name], row.deviation_bp)
            families["value"].add_metric([row.name], row.deviation_value)
        yield from families.values()


def desk_registry(
    latest: Callable[[], Update | None], clock: Callable[[], float] = time.time
) -> CollectorRegistry:
    """A registry holding only the desk collector (no process metrics: one per test)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DeskCollector(latest, clock))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of `registry`."""
    return generate_latest(registry)
