"""Invariant checks that do not trust the code they check.

- `CheckedRule` wraps the book's allocation rule: every buy and sell is checked, as it is
  made, against an O(n) optimality certificate of the rule's objective (marginal costs:
  the dearest step taken costs no more than the cheapest step not taken), and against
  brute force on small cases.
- `Ledger` replays the journal's records independently of the Book (totals per ticker,
  sells rejected when they exceed what is held) and checks each record is what its
  sender sent.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

from controller.book import Rule

BRUTE_FORCE_ACCOUNTS = 3
BRUTE_FORCE_SHARES = 12
INVALID_MARK = "__sim_invalid__"  # set in the simulator's copy of a message sent invalid

Fail = Callable[[str], None]


def _buy_cost(values: Sequence[int], weights: Sequence[int], price: int, quantity: int):
    """2W * E_i(k): the cost of account i's k-th bought share (smaller = further below)."""
    total_w = sum(weights)
    target_total = sum(values) + price * quantity

    def cost(i: int, k: int) -> int:
        return total_w * (2 * values[i] + price * (2 * k - 1)) - 2 * weights[i] * target_total

    return cost


def _sell_cost(values: Sequence[int], weights: Sequence[int], price: int, quantity: int):
    """2W * F_i(k): the cost of account i's k-th sold share (smaller = further above)."""
    total_w = sum(weights)
    target_total = sum(values) - price * quantity

    def cost(i: int, k: int) -> int:
        return total_w * price * (2 * k - 1) - 2 * (total_w * values[i] - weights[i] * target_total)

    return cost


def certify_buy(
    accounts: Sequence[str], values: Sequence[int], weights: Sequence[int], price: int,
    quantity: int, shares: Sequence[int],
) -> str | None:
    """Why `shares` is not the optimal buy, or None. Buys go to accounts with a target only
    (the rule's documented restriction), so steps are compared among those."""
    if len(shares) != len(accounts) or sum(shares) != quantity or min(shares, default=0) < 0:
        return f"buy of {quantity} split as {list(shares)}: not {quantity} whole shares"
    for i, count in enumerate(shares):
        if count and not weights[i]:
            return f"buy gave {count} to {accounts[i]}, which has no target"
    cost = _buy_cost(values, weights, price, quantity)
    members = [i for i in range(len(accounts)) if weights[i]]
    taken = max((cost(i, shares[i]) for i in members if shares[i]), default=None)
    untaken = min((cost(i, shares[i] + 1) for i in members), default=None)
    if taken is not None and untaken is not None and taken > untaken:
        return f"buy of {quantity} as {dict(zip(accounts, shares, strict=True))} is not optimal"
    return None


def certify_sell(
    accounts: Sequence[str], values: Sequence[int], weights: Sequence[int], price: int,
    quantity: int, holdings: Sequence[int], shares: Sequence[int],
) -> str | None:
    """Why `shares` is not the optimal sell within the holdings, or None."""
    if len(shares) != len(accounts) or sum(shares) != quantity:
        return f"sell of {quantity} split as {list(shares)}: not {quantity} shares"
    for i, count in enumerate(shares):
        if not 0 <= count <= holdings[i]:
            return f"sell takes {count} from {accounts[i]}, which holds {holdings[i]}"
    cost = _sell_cost(values, weights, price, quantity)
    n = len(accounts)
    taken = max((cost(i, shares[i]) for i in range(n) if shares[i]), default=None)
    untaken = min((cost(i, shares[i] + 1) for i in range(n) if shares[i] < holdings[i]),
                  default=None)
    if taken is not None and untaken is not None and taken > untaken:
        return f"sell of {quantity} as {dict(zip(accounts, shares, strict=True))} is not optimal"
    return None


def _objective(values, weights, price, quantity, shares, sign: int) -> Fraction:
    total_w = sum(weights)
    target_total = sum(values) + sign * price * quantity
    return sum(
        ((Fraction(v + sign * price * x) - Fraction(w * target_total, total_w)) ** 2
         for v, w, x in zip(values, weights, shares, strict=True)),
        Fraction(0),
    )


def brute_force(
    values: Sequence[int], weights: Sequence[int], price: int, quantity: int,
    bounds: Sequence[int] | None, sign: int,
) -> Fraction | None:
    """The best objective over every whole split (buys: accounts with a target only), or
    None when the case is too big to enumerate."""
    n = len(values)
    if n > BRUTE_FORCE_ACCOUNTS or quantity > BRUTE_FORCE_SHARES:
        return None
    limits = [
        (min(bounds[i], quantity) if bounds is not None else (quantity if weights[i] else 0))
        for i in range(n)
    ]
    best = None
    for split in itertools.product(*(range(limit + 1) for limit in limits)):
        if sum(split) == quantity:
            value = _objective(values, weights, price, quantity, split, sign)
            best = value if best is None or value < best else best
    return best


class CheckedRule:
    """The book's rule, with every allocation certified as it is made."""

    def __init__(self, inner: Rule, fail: Fail) -> None:
        self.inner = inner
        self.fail = fail
        self.checked = 0
        self.brute_forced = 0

    def rule(self) -> Rule:
        return Rule(f"{self.inner.name}+checked", self.buy, self.sell)

    def buy(self, accounts, values, weights, price, quantity, ranks) -> list[int]:
        shares = self.inner.buy(accounts, values, weights, price, quantity, ranks)
        values, weights = list(values), list(weights)
        self.checked += 1
        problem = certify_buy(accounts, values, weights, price, quantity, shares)
        if problem is None:
            best = brute_force(values, weights, price, quantity, None, +1)
            if best is not None:
                self.brute_forced += 1
                if _objective(values, weights, price, quantity, shares, +1) != best:
                    problem = f"buy {shares} misses the brute-force optimum"
        if problem is not None:
            self.fail(f"allocation not exact: {problem}")
        return shares

    def sell(self, accounts, values, weights, price, quantity, holdings, ranks) -> list[int]:
        shares = self.inner.sell(accounts, values, weights, price, quantity, holdings, ranks)
        values, weights, holdings = list(values), list(weights), list(holdings)
        self.checked += 1
        problem = certify_sell(accounts, values, weights, price, quantity, holdings, shares)
        if problem is None:
            best = brute_force(values, weights, price, quantity, holdings, -1)
            if best is not None:
                self.brute_forced += 1
                if _objective(values, weights, price, quantity, shares, -1) != best:
                    problem = f"sell {shares} misses the brute-force optimum"
        if problem is not None:
            self.fail(f"allocation not exact: {problem}")
        return shares


class Ledger:
    """An independent reading of the journal: per-ticker totals, fills held for the first
    split, over-sells rejected; and each record compared with what its sender sent."""

    def __init__(self, sent: dict[tuple[str, int], dict[str, Any]], fail: Fail) -> None:
        self.sent = sent
        self.fail = fail
        self.totals: dict[str, int] = {}
        self.waiting: list[Any] = []
        self.split_seen = False
        self.records = 0

    def take(self, item: Any) -> None:
        from common.protocol import Fill, Rejected, Split, price_units

        self.records += 1
        body = self.sent.get((item.source, item.seq))
        if body is None:
            self.fail(f"journal holds {item.source}#{item.seq}, which no sender sent")
            return
        if type(item) is Fill:
            expected = (body.get("ticker"), price_units(body.get("price")), body.get("quantity"),
                        body.get("side", "buy"))
            if (item.ticker, item.price_units, item.quantity, item.side) != expected:
                self.fail(f"journal record {item.source}#{item.seq} differs from what was sent")
            if self.split_seen:
                self._allocate(item)
            else:
                self.waiting.append(item)
        elif type(item) is Split:
            if body.get("type") != "split":
                self.fail(f"journal holds a split for {item.source}#{item.seq}, sent a fill")
            if not self.split_seen:
                self.split_seen = True
                for fill in self.waiting:
                    self._allocate(fill)
                self.waiting.clear()
        else:
            assert type(item) is Rejected
            if not body.get(INVALID_MARK):
                self.fail(f"journal rejects {item.source}#{item.seq}, a valid message: "
                          f"{item.reason}")

    def _allocate(self, fill: Any) -> None:
        held = self.totals.get(fill.ticker, 0)
        if fill.is_sell:
            if fill.quantity <= held:
                self.totals[fill.ticker] = held - fill.quantity
        else:
            self.totals[fill.ticker] = held + fill.quantity
