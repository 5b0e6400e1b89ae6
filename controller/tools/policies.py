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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from common.protocol import Allocated, Input
from controller.book import BOOK, MARKET, VALUATIONS, Book, Rule, exact_rule

__all__ = ["BOOK", "MARKET", "VALUATIONS"]

EXACT = "exact"
PRO_RATA = "pro-rata"
POLICIES = (EXACT, PRO_RATA)
BPS_PER_UNIT = 10_000  # a weight of 1 (100 %) is 10,000 basis points


# -- the rules -----------------------------------------------------------------------------
def pro_rata_integral(
    accounts: Sequence[str],
    values: Sequence[int],
    weights: Sequence[int],
    price: int,
    quantity: int,
    ranks: Sequence[int],
) -> list[int]:
    """Each account's target fraction of the fill, rounded down, then one leftover share
    each by largest remainder (ties by account name); `values` and `price` play no part.
    Exact on integers: account i's quota is quantity * weights[i] / sum(weights)."""
    total = sum(weights)
    shares, remainders = [], []
    for i, weight in enumerate(weights):
        whole, remainder = divmod(quantity * weight, total)
        shares.append(whole)
        remainders.append((-remainder, ranks[i], i))
    remainders.sort()
    for _, _, i in remainders[: quantity - sum(shares)]:
        shares[i] += 1
    return shares


def pro_rata_by_holdings(
    accounts: Sequence[str],
    values: Sequence[int],
    weights: Sequence[int],
    price: int,
    quantity: int,
    holdings: Sequence[int],
    ranks: Sequence[int],
) -> list[int]:
    """The sell rule most desks use: each holder sells in proportion to what it holds,
    rounded down, leftovers by largest remainder (ties by name); never above a holding."""
    return pro_rata_integral(accounts, values, holdings, price, quantity, ranks)


RULES: dict[str, Rule] = {
    EXACT: exact_rule(),
    PRO_RATA: Rule(PRO_RATA, pro_rata_integral, pro_rata_by_holdings),
}


def pro_rata_shares(targets: Mapping[str, Fraction], quantity: int) -> dict[str, int]:
    """The pro-rata rule on a map of account -> target fraction (accounts by name)."""
    accounts = sorted(targets)
    denominator = math.lcm(*(fraction.denominator for fraction in targets.values()))
    weights = [int(targets[a] * denominator) for a in accounts]
    shares = pro_rata_integral(accounts, [], weights, 0, quantity, range(len(accounts)))
    return dict(zip(accounts, shares, strict=True))


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
    """One policy and valuation applied to fills and splits through the controller's own
    Book (with the policy as its allocation rule), with its tracking error."""

    policy: str
    valuation: str
    book: Book = field(init=False)
    by_account: dict[str, Deviation] = field(default_factory=dict)
    overall: Deviation = field(default_factory=Deviation)

    def __post_init__(self) -> None:
        if self.policy not in RULES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if self.valuation not in VALUATIONS:
            raise ValueError(
                f"valuation must be one of {', '.join(VALUATIONS)}, got {self.valuation!r}"
            )
        self.book = Book((), RULES[self.policy], self.valuation)

    @property
    def fills(self) -> int:
        return self.book.fills_allocated

    @property
    def splits(self) -> int:
        return self.book.splits_applied

    @property
    def pending(self) -> int:
        return len(self.book.pending)

    def apply(self, item: Input) -> None:
        """Apply one input; measure tracking error after each fill it allocates."""
        for decision in self.book.apply(item):
            if type(decision) is Allocated:
                self._measure()

    def values(self) -> dict[str, int]:
        """Each account's value under this run's valuation, micro-units."""
        return dict(zip(self.book.accounts, self.book.valued(), strict=True))

    def shares(self) -> dict[str, dict[str, int]]:
        """Shares per ticker per account."""
        book = self.book
        return {a: dict(held) for a, held in zip(book.accounts, book.positions, strict=True)}

    def targets(self) -> dict[str, Fraction]:
        """Each account's exact target fraction under the split in force (0 outside it)."""
        total = self.book.weight_total()
        return {
            account: Fraction(weight, total) if total else Fraction(0)
            for account, weight in zip(self.book.accounts, self.book.weights, strict=True)
        }

    def _measure(self) -> None:
        for account, bps in deviations_bps(self.values(), self.targets()).items():
            self.by_account.setdefault(account, Deviation()).add(abs(bps), self.fills)
            self.overall.add(abs(bps), self.fills)


def run_policy(items: Iterable[Input], policy: str, valuation: str) -> PolicyRun:
    """Apply every input in order under `policy` and `valuation`; the finished run."""
    run = PolicyRun(policy, valuation)
    for item in items:
        run.apply(item)
    return run
