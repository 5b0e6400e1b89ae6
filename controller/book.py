"""The book: the controller's whole state, and the only code that changes it.

Pure Python, no sockets, no clock: apply splits and fills, keep shares per account per
ticker and exact book values (integer micro-units, so money never drifts), hold fills
that arrive before the first split, and describe itself as a snapshot.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from common.protocol import PRICE_SCALE, Fill, Split, build_split
from controller.allocator import allocate_integral, name_ranks

STATE_VERSION = 1


@dataclass(frozen=True, slots=True)
class Allocation:
    """How one fill was split: shares per account, in account order, zeros left out."""

    fill: Fill
    shares: dict[str, int]


class Book:
    """Positions and book values per account, the split in force, fills waiting for one."""

    def __init__(self, tickers: tuple[str, ...] | list[str]) -> None:
        self.tickers = tuple(tickers)
        self.accounts: list[str] = []
        self._index: dict[str, int] = {}
        self._ranks: list[int] = []  # tie-break order of the accounts (by name)
        self.values: list[int] = []  # book value per account, micro-units
        self.positions: list[dict[str, int]] = []  # shares per ticker per account
        self.weights: list[int] = []  # current split, aligned with accounts (0 = not in it)
        self.split: Split | None = None
        self.last_price: dict[str, int] = {}  # micro-units
        self.pending: deque[Fill] = deque()
        self.fills_allocated = 0
        self.splits_applied = 0
        self.rejected = 0

    # -- changes -------------------------------------------------------------------------
    def apply_split(self, split: Split) -> list[Allocation]:
        """Make `split` the one in force; allocate any fills that were waiting for it."""
        known = len(self.accounts)
        for account in split.accounts:
            self._ensure_account(account)
        if len(self.accounts) != known:
            self._ranks = name_ranks(self.accounts)  # once per split, not per new account
        self.weights = [0] * len(self.accounts)
        for account, weight in zip(split.accounts, split.weights, strict=True):
            self.weights[self._index[account]] = weight
        self.split = split
        self.splits_applied += 1
        released = [self._allocate(fill) for fill in self.pending]
        self.pending.clear()
        return released

    def apply_fill(self, fill: Fill) -> Allocation | None:
        """Allocate `fill` now, or hold it (None) until the first split arrives."""
        self.last_price[fill.ticker] = fill.price_units
        if self.split is None:
            self.pending.append(fill)
            return None
        return self._allocate(fill)

    def count_rejection(self) -> None:
        self.rejected += 1

    def _allocate(self, fill: Fill) -> Allocation:
        shares = allocate_integral(
            self.accounts, self.values, self.weights, fill.price_units, fill.quantity, self._ranks
        )
        given = {}
        ticker, price = fill.ticker, fill.price_units
        values, positions, accounts = self.values, self.positions, self.accounts
        for i, count in enumerate(shares):
            if count:
                values[i] += count * price
                held = positions[i]
                held[ticker] = held.get(ticker, 0) + count
                given[accounts[i]] = count
        self.fills_allocated += 1
        return Allocation(fill, given)

    def _ensure_account(self, account: str) -> None:
        if account not in self._index:
            self._index[account] = len(self.accounts)
            self.accounts.append(account)
            self.values.append(0)
            self.positions.append({})
            self.weights.append(0)

    # -- views ---------------------------------------------------------------------------
    def total_shares(self) -> dict[str, int]:
        """Shares allocated per ticker, over all accounts."""
        totals = dict.fromkeys(self.tickers, 0)
        for held in self.positions:
            for ticker, count in held.items():
                totals[ticker] = totals.get(ticker, 0) + count
        return totals

    def snapshot(self) -> dict[str, Any]:
        """Full state for the position server: accounts, prices, totals and counts."""
        total_value = sum(self.values)
        targets = self.split.target_percent() if self.split else {}
        accounts = {}
        for i, account in enumerate(self.accounts):
            held = self.positions[i]
            market = sum(count * self.last_price[t] for t, count in held.items())
            weight = 100 * self.values[i] / total_value if total_value else 0.0
            target = targets.get(account, 0.0)
            accounts[account] = {
                "positions": {t: held.get(t, 0) for t in self.tickers},
                "value": self.values[i] / PRICE_SCALE,
                "market_value": market / PRICE_SCALE,
                "weight": weight,
                "target": target,
                "deviation": weight - target,
            }
        return {
            "accounts": accounts,
            "prices": {t: p / PRICE_SCALE for t, p in self.last_price.items()},
            "totals": {
                "positions": self.total_shares(),
                "value": total_value / PRICE_SCALE,
                "market_value": sum(a["market_value"] for a in accounts.values()),
            },
            "counts": {
                "fills": self.fills_allocated,
                "splits": self.splits_applied,
                "rejected": self.rejected,
                "pending": len(self.pending),
            },
            "split": {"source": self.split.source, "seq": self.split.seq} if self.split else None,
        }

    # -- checkpoints ---------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        """Everything needed to rebuild this book exactly (big integers as strings)."""
        split = self.split
        return {
            "version": STATE_VERSION,
            "tickers": list(self.tickers),
            "accounts": list(self.accounts),
            "values": [str(v) for v in self.values],
            "positions": [dict(held) for held in self.positions],
            "split": None
            if split is None
            else [split.source, split.seq, dict(zip(split.accounts, split.percents, strict=True))],
            "last_price": dict(self.last_price),
            "pending": [
                [f.source, f.seq, f.ticker, f.price_units, f.quantity] for f in self.pending
            ],
            "counts": [self.fills_allocated, self.splits_applied, self.rejected],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Book:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported book state version {state.get('version')!r}")
        book = cls(state["tickers"])
        for account in state["accounts"]:
            book._ensure_account(account)
        book._ranks = name_ranks(book.accounts)
        book.values = [int(v) for v in state["values"]]
        book.positions = [dict(p) for p in state["positions"]]
        if state["split"] is not None:
            source, seq, percents = state["split"]
            book.split = build_split(source, seq, percents)
            for account, weight in zip(book.split.accounts, book.split.weights, strict=True):
                book.weights[book._index[account]] = weight
        book.last_price = dict(state["last_price"])
        book.pending = deque(Fill(*f) for f in state["pending"])
        book.fills_allocated, book.splits_applied, book.rejected = state["counts"]
        return book

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Book) and self.to_state() == other.to_state()

    __hash__ = None  # type: ignore[assignment]
