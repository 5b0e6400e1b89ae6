"""The positions snapshot, assembled in one place from the book and the delivery counts."""

from __future__ import annotations

from dataclasses import dataclass

from common.protocol import PRICE_SCALE, AccountRow, Snapshot
from controller.book import MARKET, Book
from controller.engine import DeliveryCounts


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """What only the service knows: the snapshot's number, the process, the time."""

    seq: int = 0
    instance: str = ""
    time: float = 0.0
    interval: float = 0.0
    peers_rejected: int = 0
    journal: str | None = None
    paused: bool = False


NO_DELIVERY = DeliveryCounts(0, 0, 0, 0, 0, 0)


def build_snapshot(
    book: Book,
    delivery: DeliveryCounts = NO_DELIVERY,
    meta: SnapshotMeta = SnapshotMeta(),  # noqa: B008 (frozen, shared safely)
    sources: dict[str, int] | None = None,
) -> Snapshot:
    """Every account's positions, values, weight against target; prices, totals, counts."""
    total_value = sum(book.values)
    targets = book.split.target_percent() if book.split else {}
    prices = book.last_price
    markets = book.market_values()
    valued = markets if book.valuation == MARKET else book.values  # what the rule tracks
    valued_total = sum(valued)
    no_shares = dict.fromkeys(book.tickers, 0)
    accounts = {}
    for i, account in enumerate(book.accounts):
        positions = no_shares.copy()
        positions.update(book.positions[i])
        weight = 100 * valued[i] / valued_total if valued_total else 0.0
        target = targets.get(account, 0.0)
        accounts[account] = AccountRow(
            positions=positions,
            value=book.values[i] / PRICE_SCALE,
            market_value=markets[i] / PRICE_SCALE,
            weight=weight,
            target=target,
            deviation=weight - target,
        )
    market_total = sum(markets)
    split = book.split
    return Snapshot(
        accounts=accounts,
        prices={t: p / PRICE_SCALE for t, p in prices.items()},
        totals={
            "positions": book.total_shares(),
            "value": total_value / PRICE_SCALE,
            "market_value": market_total / PRICE_SCALE,
        },
        counts={
            "fills": book.fills_allocated,
            "splits": book.splits_applied,
            "rejected": book.rejected + delivery.unreadable + delivery.refused,
            "refused": delivery.refused,
            "pending": len(book.pending),
            "duplicates": delivery.duplicates,
            "gaps": delivery.gaps,
            "held": delivery.held,
            "dropped": delivery.dropped,
            "peers_rejected": meta.peers_rejected,
        },
        split=None if split is None else {"source": split.source, "seq": split.seq},
        sources=dict(sources or {}),
        seq=meta.seq,
        instance=meta.instance,
        time=meta.time,
        interval=meta.interval,
        journal=meta.journal,
        paused=meta.paused,
    )
