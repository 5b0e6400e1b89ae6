"""Allocation policies run offline side by side: the controller's exact rule and pro-rata.

Pure code behind `python -m controller replay`: a portfolio (shares and book value per
account, last price per ticker, the split in force), the rules that split one fill across
it, and tracking error (each account's weight against its target, in basis points)
measured after every fill. Fills that arrive before the first split wait for it, as in the
controller's Book.

The exact rule is the controller's: `allocate()` with V_i = each account's value, which is
its book value (price paid) or, with market valuation, its shares at each ticker's last
fill price. Pro-rata splits each fill by target percentage alone, rounding down and giving
the leftover shares by largest remainder (ties by account name).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction

from common.protocol import Fill, Split
from controller.allocator import allocate

EXACT = "exact"
PRO_RATA = "pro-rata"
POLICIES = (EXACT, PRO_RATA)
BOOK = "book"
MARKET = "market"
VALUATIONS = (BOOK, MARKET)
BPS_PER_UNIT = 10_000  # a weight of 1 (100 %) is 10,000 basis points

Rule = Callable[[Mapping[str, int], Mapping[str, Fraction], Fill], dict[str, int]]


# -- the rules -----------------------------------------------------------------------------
def exact_shares(
    values: Mapping[str, int], targets: Mapping[str, Fraction], fill: Fill
) -> dict[str, int]:
    """The controller's rule with V_i = `values` (micro-units): allocate() on exact numbers."""
    return allocate(values, targets, fill.price_units, fill.quantity)


def pro_rata_shares(
    values: Mapping[str, int], targets: Mapping[str, Fraction], fill: Fill
) -> dict[str, int]:
    """Each account's target fraction of the fill, rounded down, then one leftover share
    each by largest remainder (ties by account name); `values` play no part."""
    quotas = {account: fill.quantity * weight for account, weight in targets.items()}
    shares = {account: math.floor(quota) for account, quota in quotas.items()}
    leftover = fill.quantity - sum(shares.values())
    by_remainder = sorted(quotas, key=lambda account: (shares[account] - quotas[account], account))
    for account in by_remainder[:leftover]:
        shares[account] += 1
    return shares


RULES: dict[str, Rule] = {EXACT: exact_shares, PRO_RATA: pro_rata_shares}


# -- the portfolio -------------------------------------------------------------------------
class Portfolio:
    """Shares and book value per account, last price per ticker, targets of the split."""

    def __init__(self) -> None:
        self.shares: dict[str, dict[str, int]] = {}  # account -> ticker -> shares
        self.book_values: dict[str, int] = {}  # micro-units, price paid
        self.last_price: dict[str, int] = {}  # micro-units
        self.targets: dict[str, Fraction] = {}  # exact target fraction, 0 outside the split
        self.split: Split | None = None

    def apply_split(self, split: Split) -> None:
        """Make `split` the one in force; accounts outside it keep shares, target 0."""
        total = sum(split.weights)
        self.targets = dict.fromkeys(self.shares, Fraction(0))
        for account, weight in zip(split.accounts, split.weights, strict=True):
            self.shares.setdefault(account, {})
            self.book_values.setdefault(account, 0)
            self.targets[account] = Fraction(weight, total)
        self.split = split

    def add(self, fill: Fill, shares: Mapping[str, int]) -> None:
        """Book each account's shares of `fill` at the fill price."""
        for account, count in shares.items():
            if count:
                held = self.shares[account]
                held[fill.ticker] = held.get(fill.ticker, 0) + count
                self.book_values[account] += count * fill.price_units

    def values(self, valuation: str) -> dict[str, int]:
        """Each account's value in micro-units: price paid, or shares at last prices."""
        if valuation == BOOK:
            return dict(self.book_values)
        return {
            account: sum(count * self.last_price[ticker] for ticker, count in held.items())
            for account, held in self.shares.items()
        }


# -- tracking error ------------------------------------------------------------------------
@dataclass(slots=True)
class Deviation:
    """Running statistics of |weight - target| in basis points over samples."""

    samples: int = 0
    total_bps: float = 0.0
    max_bps: float = 0.0
    max_fill: int = 0  # the fill count when the maximum was reached

    def add(self, bps: float, fill: int) -> None:
        self.samples += 1
        self.total_bps += bps
        if bps > self.max_bps:
            self.max_bps, self.max_fill = bps, fill

    @property
    def mean_bps(self) -> float:
        return self.total_bps / self.samples if self.samples else 0.0


def deviations_bps(values: Mapping[str, int], targets: Mapping[str, Fraction]) -> dict[str, float]:
    """Each account's weight (share of the total value) minus its target, in basis points."""
    total = sum(values.values())
    return {
        account: (value / total - float(targets.get(account, 0))) * BPS_PER_UNIT
        for account, value in values.items()
    }


# -- one policy over a stream of inputs ----------------------------------------------------
@dataclass
class PolicyRun:
    """One policy and valuation applied to fills and splits, with its tracking error."""

    policy: str
    valuation: str
    portfolio: Portfolio = field(default_factory=Portfolio)
    pending: deque[Fill] = field(default_factory=deque)
    by_account: dict[str, Deviation] = field(default_factory=dict)
    overall: Deviation = field(default_factory=Deviation)
    fills: int = 0
    splits: int = 0

    def __post_init__(self) -> None:
        if self.policy not in RULES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if self.valuation not in VALUATIONS:
            raise ValueError(
                f"valuation must be one of {', '.join(VALUATIONS)}, got {self.valuation!r}"
            )

    def apply(self, item: Fill | Split) -> None:
        """Apply one input: a split (releasing waiting fills) or a fill."""
        if type(item) is Split:
            self.portfolio.apply_split(item)
            self.splits += 1
            waiting, self.pending = self.pending, deque()
            for fill in waiting:
                self._allocate(fill)
            return
        self.portfolio.last_price[item.ticker] = item.price_units
        if self.portfolio.split is None:
            self.pending.append(item)
        else:
            self._allocate(item)

    def values(self) -> dict[str, int]:
        """Each account's value under this run's valuation, micro-units."""
        return self.portfolio.values(self.valuation)

    def _allocate(self, fill: Fill) -> None:
        rule = RULES[self.policy]
        shares = rule(self.values(), self.portfolio.targets, fill)
        self.portfolio.add(fill, shares)
        self.fills += 1
        self._measure()

    def _measure(self) -> None:
        for account, bps in deviations_bps(self.values(), self.portfolio.targets).items():
            self.by_account.setdefault(account, Deviation()).add(abs(bps), self.fills)
            self.overall.add(abs(bps), self.fills)


def run_policy(items: Iterable[Fill | Split], policy: str, valuation: str) -> PolicyRun:
    """Apply every input in order under `policy` and `valuation`; the finished run."""
    run = PolicyRun(policy, valuation)
    for item in items:
        run.apply(item)
    return run
