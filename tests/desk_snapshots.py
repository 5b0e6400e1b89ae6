"""Controller snapshots in the documented shape (docs/protocol.md), built by hand for the
position server's tests: weights, deviations and totals computed here from holdings."""

from __future__ import annotations

from typing import Any

START = 1_700_000_000.0  # a wall-clock time for snapshots
TICKERS = ("AAPL", "MSFT", "AMZN", "GOOGL", "META", "NVDA", "TSLA", "JPM", "V", "XOM")
#: names that markup, HTML or format strings would interpret
TRICKY_NAMES = ("[/]", "[bold red]x", "<script>alert(1)</script>", "%s %d {0}")


def prices_for(tickers=TICKERS) -> dict[str, float]:
    return {t: round(100.0 + 37.123 * i, 2) for i, t in enumerate(tickers)}


def snapshot(
    targets: dict[str, float],
    holdings: dict[str, dict[str, int]] | None = None,
    seq: int = 1,
    instance: str = "3f2a9c1b0d4e",
    when: float = START,
    tickers=TICKERS,
    prices: dict[str, float] | None = None,
    split: tuple[str, int] | None = ("aum", 1),
) -> dict[str, Any]:
    """A snapshot where each account holds `holdings[account]` bought at `prices` (so book
    and market value agree) under a split of `targets` (percent)."""
    prices = prices_for(tickers) if prices is None else prices
    holdings = holdings if holdings is not None else {}
    names = sorted(set(targets) | set(holdings))
    values = {a: sum(n * prices[t] for t, n in holdings.get(a, {}).items()) for a in names}
    total = sum(values.values())
    accounts = {}
    for a in names:
        weight = 100 * values[a] / total if total else 0.0
        accounts[a] = {
            "positions": {t: holdings.get(a, {}).get(t, 0) for t in tickers},
            "value": values[a],
            "market_value": values[a],
            "weight": weight,
            "target": targets.get(a, 0.0),
            "deviation": weight - targets.get(a, 0.0),
        }
    return {
        "accounts": accounts,
        "prices": dict(prices),
        "totals": {
            "positions": {t: sum(holdings.get(a, {}).get(t, 0) for a in names) for t in tickers},
            "value": total,
            "market_value": total,
        },
        "counts": {
            "fills": 1234,
            "splits": 1,
            "rejected": 4321,
            "pending": 0,
            "duplicates": 8765,
            "gaps": 0,
            "held": 0,
            "dropped": 0,
            "peers_rejected": 0,
        },
        "split": None if split is None else {"source": split[0], "seq": split[1]},
        "sources": {"desk": 1234, "aum": 1},
        "seq": seq,
        "instance": instance,
        "time": when,
        "interval": 10.0,
    }


def busy_snapshot(names=TRICKY_NAMES + ("ACC-01", "ACC-02"), seq: int = 1, **kwargs) -> dict:
    """Every account holding large, distinct quantities of every ticker: wide numbers."""
    targets = {a: 100 / len(names) for a in names}
    holdings = {
        a: {t: 123_457 + 98_765 * i + 7_777 * j for j, t in enumerate(TICKERS)}
        for i, a in enumerate(names)
    }
    return snapshot(targets, holdings, seq=seq, **kwargs)
