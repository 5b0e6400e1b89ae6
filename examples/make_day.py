"""Write day.jsonl and day.csv: one made-up trading day for `python -m controller replay`.

Deterministic: fixed seeds drive fillsim's market model and aumsim's random splits, so the
files, and the numbers quoted in docs/operators-audit-replay.md, are the same everywhere.
The day: a split, then 100 fills, four times over. AUM drifts rather than jumps: each later
split moves a fifth of the way from the one before towards a fresh random split, and a
sixth account joins at the third split.

    python examples/make_day.py            # rewrites examples/day.jsonl and examples/day.csv
    python examples/make_day.py OUT_DIR    # writes them into OUT_DIR instead

It also writes day-sells.jsonl and day-sells.csv: the same day in which about a third of the
fills are sells (of at most half of what the accounts hold of that ticker), so that a split
that moves a target down can be met by selling.
"""

from __future__ import annotations

import csv
import json
import random
import sys
from pathlib import Path

from aumsim.splits import account_names, random_split
from fillsim.market import Market

TICKERS = ("AAPL", "MSFT", "NVDA", "JPM", "XOM", "TSLA")
ACCOUNTS_PER_SPLIT = (5, 5, 6, 6)  # one split per entry, each followed by a block of fills
FILLS_PER_SPLIT = 100
MARKET_SEED = 7
SPLIT_SEED = 11
SIDE_SEED = 13
SELL_FRACTION = 1 / 3
DRIFT = 0.2  # how far each split moves from the previous one towards a fresh random split
BASIS_POINTS = 10_000  # 100.00 % in hundredths of a percent
CSV_HEADER = ("type", "ticker", "price", "quantity", "splits")
CSV_SELLS_HEADER = (*CSV_HEADER, "side")


def day(sells: bool = False) -> list[dict]:
    """The day's inputs in order, as replay's JSON-lines objects (no source or seq); with
    `sells`, about SELL_FRACTION of the fills sell at most half of what is held."""
    market = Market(TICKERS, seed=MARKET_SEED)
    split_rng = random.Random(SPLIT_SEED)
    side_rng = random.Random(SIDE_SEED)
    held = dict.fromkeys(TICKERS, 0)
    items: list[dict] = []
    split: dict[str, float] = {}
    for count in ACCOUNTS_PER_SPLIT:
        fresh = random_split(split_rng, account_names(count))
        split = drifted(split, fresh) if split else fresh
        items.append({"type": "split", "splits": split})
        for _ in range(FILLS_PER_SPLIT):
            ticker, price, quantity = market.next_fill()
            fill = {"type": "fill", "ticker": ticker, "price": price, "quantity": quantity}
            if sells and held[ticker] >= 2 and side_rng.random() < SELL_FRACTION:
                fill.update(quantity=min(quantity, held[ticker] // 2), side="sell")
                held[ticker] -= fill["quantity"]
            else:
                held[ticker] += quantity
            items.append(fill)
    return items


def drifted(old: dict[str, float], fresh: dict[str, float]) -> dict[str, float]:
    """The split DRIFT of the way from `old` to `fresh`, rounded to 0.01 % by largest
    remainder so that it sums to exactly 100.00 (accounts new in `fresh` start from 0)."""
    accounts = sorted(fresh)
    scaled = [
        BASIS_POINTS * ((1 - DRIFT) * old.get(a, 0.0) + DRIFT * fresh[a]) / 100 for a in accounts
    ]
    points = [int(s) for s in scaled]
    by_remainder = sorted(range(len(accounts)), key=lambda i: (points[i] - scaled[i], i))
    for i in by_remainder[: BASIS_POINTS - sum(points)]:
        points[i] += 1
    return {a: p / 100 for a, p in zip(accounts, points, strict=True)}


def csv_row(item: dict, with_side: bool = False) -> list[str]:
    """One input as a CSV row: splits written ACCOUNT=PERCENT;ACCOUNT=PERCENT."""
    if item["type"] == "split":
        splits = ";".join(f"{account}={percent}" for account, percent in item["splits"].items())
        row = ["split", "", "", "", splits]
    else:
        row = ["fill", item["ticker"], repr(item["price"]), str(item["quantity"]), ""]
    return [*row, item.get("side", "")] if with_side else row


def write(directory: Path) -> None:
    """Write day.jsonl and day.csv, and day-sells.jsonl and day-sells.csv, into `directory`."""
    for name, sells in (("day", False), ("day-sells", True)):
        items = day(sells)
        with open(directory / f"{name}.jsonl", "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(item) + "\n" for item in items)
        with open(directory / f"{name}.csv", "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(CSV_SELLS_HEADER if sells else CSV_HEADER)
            writer.writerows(csv_row(item, sells) for item in items)


if __name__ == "__main__":
    write(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent)
