"""The book: the controller's whole state, and the only code that changes it.

Pure Python, no sockets, no clock. `Book.apply` takes one input (a fill, a split or a
rejection record) and returns what happened (typed decisions from common.protocol); it is
the one mutator, used live by the engine, in recovery and by every offline tool, so they
cannot disagree. It keeps shares per account per ticker and exact book values (integer
micro-units, so money never drifts), holds fills that arrive before the first split, and
splits each fill with an allocation rule (the exact rule unless a tool asks for another).

A buy adds to the accounts the rule chooses; a sell takes from accounts that hold the
ticker, never more than each holds, and a sell of more than all accounts hold together is
rejected (a decision, made the same way live and on replay) and changes nothing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from common.protocol import (
    Allocated,
    Decision,
    Fill,
    Held,
    Input,
    Rejected,
    Split,
    SplitApplied,
    build_split,
)
from controller import allocator
from controller.allocator import name_ranks

STATE_VERSION = 2

BOOK = "book"  # an account's value is the cash it has put in (price paid)
MARKET = "market"  # an account's value is its holdings at each ticker's last fill price
VALUATIONS = (BOOK, MARKET)

#: How a rule splits a buy: (accounts, values, weights, price, quantity, ranks) -> shares per
#: account in the order given.
BuyRule = Callable[
    [Sequence[str], Sequence[int], Sequence[int], int, int, Sequence[int]], list[int]
]
#: How a rule splits a sell: (accounts, values, weights, price, quantity, holdings, ranks)
#: -> shares sold per account, each at most its holding.
SellRule = Callable[
    [Sequence[str], Sequence[int], Sequence[int], int, int, Sequence[int], Sequence[int]],
    list[int],
]


@dataclass(frozen=True, slots=True)
class Rule:
    """An allocation rule: one function for buys, one for sells."""

    name: str
    buy: BuyRule
    sell: SellRule


def exact_rule() -> Rule:
    """The controller's rule: the exact optimum of controller/allocator.py, both sides, run
    by the C kernel when it is built (controller.native: the same results, and the Python
    functions beyond the kernel's int128 bound); without it, the Python functions alone."""
    from controller import native  # here: this function is the book's one use of it

    if not native.available():
        return Rule("exact", allocator.allocate_integral, allocator.allocate_sell_integral)
    return Rule("exact", native.buy_integral, native.sell_integral)


class Book:
    """Positions and book values per account, the split in force, fills waiting for one."""

    def __init__(
        self,
        tickers: tuple[str, ...] | list[str],
        rule: Rule | None = None,
        valuation: str = BOOK,
    ) -> None:
        """`rule` splits each fill (the exact rule unless given)."""
        if valuation not in VALUATIONS:
            raise ValueError(f"valuation must be one of {', '.join(VALUATIONS)}, got {valuation!r}")
        self.tickers = tuple(tickers)
        self.rule: Rule = rule if rule is not None else exact_rule()
        self.valuation = valuation
        self.accounts: list[str] = []
        self._index: dict[str, int] = {}
        self.ranks: list[int] = []  # tie-break order of the accounts (by name)
        self.values: list[int] = []  # book value per account, micro-units
        self.positions: list[dict[str, int]] = []  # shares per ticker per account
        self.weights: list[int] = []  # current split, aligned with accounts (0 = not in it)
        self.split: Split | None = None
        self.last_price: dict[str, int] = {}  # micro-units
        self.pending: deque[Fill] = deque()
        self.fills_allocated = 0
        self.splits_applied = 0
        self.rejected = 0
        self.revision = 0  # bumped by every fill or split applied: a cache of the book is stale

    # -- the one mutator -----------------------------------------------------------------
    def apply(self, item: Input) -> list[Decision]:
        """Apply one input and say what happened: a fill is Allocated or Held; a split is
        SplitApplied, followed by an Allocated for each fill that was waiting for it; a
        rejection record is counted and returned as its own decision."""
        if type(item) is Fill:
            self.revision += 1
            return [self._apply_fill(item)]
        if type(item) is Split:
            self.revision += 1
            return self._apply_split(item)
        if type(item) is Rejected:
            self.rejected += 1
            return [item]
        raise TypeError(f"not a book input: {item!r}")

    def _apply_split(self, split: Split) -> list[Decision]:
        known = len(self.accounts)
        for account in split.accounts:
            self._ensure_account(account)
        self.weights = [0] * len(self.accounts)
        for account, weight in zip(split.accounts, split.weights, strict=True):
            self.weights[self._index[account]] = weight
        if self._forget_empty_accounts(split) or len(self.accounts) != known:
            self.ranks = name_ranks(self.accounts)  # once per split, not per new account
        self.split = split
        self.splits_applied += 1
        waiting, self.pending = self.pending, deque()
        decisions: list[Decision] = [SplitApplied(split, len(waiting))]
        decisions.extend(self._allocate(fill, released=True) for fill in waiting)
        return decisions

    def _apply_fill(self, fill: Fill) -> Allocated | Held | Rejected:
        if self.split is None:
            self.last_price[fill.ticker] = fill.price_units
            self.pending.append(fill)
            return Held(fill)
        return self._allocate(fill)

    def _allocate(self, fill: Fill, released: bool = False) -> Allocated | Rejected:
        if fill.is_sell:
            return self._sell(fill, released)
        self.last_price[fill.ticker] = fill.price_units
        shares = self.rule.buy(
            self.accounts, self.valued(), self.weights, fill.price_units, fill.quantity, self.ranks
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
        return Allocated(fill, given, released)

    def _sell(self, fill: Fill, released: bool) -> Allocated | Rejected:
        """Take `fill.quantity` shares from the accounts holding the ticker, or reject the
        sell (changing nothing but the count) when they hold fewer than that together."""
        ticker, price = fill.ticker, fill.price_units
        holdings = [held.get(ticker, 0) for held in self.positions]
        total = sum(holdings)
        if fill.quantity > total:
            self.rejected += 1
            reason = (
                f"sell of {fill.quantity:,} {ticker} exceeds the {total:,} held across accounts"
            )
            return Rejected(fill.source, fill.seq, reason)
        self.last_price[ticker] = price
        shares = self.rule.sell(
            self.accounts, self.valued(), self.weights, price, fill.quantity, holdings, self.ranks
        )
        taken = {}
        values, positions, accounts = self.values, self.positions, self.accounts
        for i, count in enumerate(shares):
            if count:
                values[i] -= count * price
                held = positions[i]
                left = held[ticker] - count
                if left:
                    held[ticker] = left
                else:
                    del held[ticker]
                taken[accounts[i]] = count
        self.fills_allocated += 1
        return Allocated(fill, taken, released)

    def _forget_empty_accounts(self, split: Split) -> bool:
        """Drop accounts outside `split` with no shares and no money: they can take no part
        in any allocation, so keeping them would only let splits grow memory without bound
        (they stay in the journal and the audit). True if any was dropped."""
        named = set(split.accounts)
        keep = [
            i
            for i, (account, held, value) in enumerate(
                zip(self.accounts, self.positions, self.values, strict=True)
            )
            if held or value or account in named
        ]
        if len(keep) == len(self.accounts):
            return False
        self.accounts = [self.accounts[i] for i in keep]
        self.values = [self.values[i] for i in keep]
        self.positions = [self.positions[i] for i in keep]
        self.weights = [self.weights[i] for i in keep]
        self._index = {account: i for i, account in enumerate(self.accounts)}
        return True

    def _ensure_account(self, account: str) -> None:
        if account not in self._index:
            self._index[account] = len(self.accounts)
            self.accounts.append(account)
            self.values.append(0)
            self.positions.append({})
            self.weights.append(0)

    # -- views ---------------------------------------------------------------------------
    def market_values(self) -> list[int]:
        """Each account's holdings at each ticker's last fill price, micro-units."""
        prices = self.last_price
        return [sum(count * prices[t] for t, count in held.items()) for held in self.positions]

    def valued(self) -> list[int]:
        """Each account's value under this book's valuation, micro-units."""
        return self.values if self.valuation == BOOK else self.market_values()

    def weight_total(self) -> int:
        return sum(self.weights)

    def total_shares(self) -> dict[str, int]:
        """Shares allocated per ticker, over all accounts."""
        totals = dict.fromkeys(self.tickers, 0)
        for held in self.positions:
            for ticker, count in held.items():
                totals[ticker] = totals.get(ticker, 0) + count
        return totals

    def grow_universe(self, tickers: Sequence[str]) -> None:
        """Add tickers the configuration names now (the universe may grow, never shrink)."""
        self.tickers = tuple(dict.fromkeys([*tickers, *self.tickers]))

    # -- checkpoints ---------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        """Everything needed to rebuild this book exactly (big integers as strings)."""
        split = self.split
        return {
            "version": STATE_VERSION,
            "valuation": self.valuation,
            "tickers": list(self.tickers),
            "accounts": list(self.accounts),
            "values": [str(v) for v in self.values],
            "positions": [dict(held) for held in self.positions],
            "split": None if split is None else [split.source, split.seq, split.percent_map()],
            "last_price": dict(self.last_price),
            "pending": [
                [f.source, f.seq, f.ticker, f.price_units, f.quantity, f.side]
                for f in self.pending
            ],
            "counts": [self.fills_allocated, self.splits_applied, self.rejected],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], rule: Rule | None = None) -> Book:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported book state version {state.get('version')!r}")
        book = cls(state["tickers"], rule, state["valuation"])
        for account in state["accounts"]:
            book._ensure_account(account)
        book.ranks = name_ranks(book.accounts)
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

    def copy(self) -> Book:
        """An independent book in the same state, with the same rule."""
        return Book.from_state(self.to_state(), self.rule)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Book) and self.to_state() == other.to_state()

    __hash__ = None  # type: ignore[assignment]
