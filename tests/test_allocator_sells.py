"""Tests for the sell side of controller.allocator against exact (Fraction) references.

The problem: whole s_i with 0 <= s_i <= h_i (account i's holding) and sum s_i = q minimising
    sum_i (V_i - p*s_i - w_i*(V - p*q))^2
with the weights normalised exactly, ties broken by account name (smallest sells first).
Values may be negative (book value is net cash invested) and weights zero.

References used here, all in exact rational arithmetic:
  * brute force over every bounded composition of q (small n and q): the optimum objective;
  * one-share-at-a-time greedy (sell from the account furthest above target among those
    still holding, ties by name): the exact allocation, including the tie-breaking;
  * an optimality certificate that works for any size: every share sold is no cheaper to
    sell (in (marginal cost, name) order) than any share left that could still be sold.
"""

from __future__ import annotations

import heapq
import random
import re
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.allocator import allocate_sell, allocate_sell_integral, name_ranks

# -- exact reference maths ---------------------------------------------------------------


class SellProblem:
    """The exact data of one sell (missing values, weights and holdings are 0)."""

    def __init__(self, values, weights, price, quantity, holdings):
        self.accounts = sorted(set(values) | set(weights) | set(holdings))
        self.values = {a: Fraction(values.get(a, 0)) for a in self.accounts}
        raw = {a: Fraction(weights.get(a, 0)) for a in self.accounts}
        total = sum(raw.values())
        self.weights = {a: w / total for a, w in raw.items()}
        self.holdings = {a: holdings.get(a, 0) for a in self.accounts}
        self.price = Fraction(price)
        self.quantity = quantity
        self.target_total = sum(self.values.values()) - self.price * quantity

    def objective(self, sold) -> Fraction:
        p, t = self.price, self.target_total
        return sum((self.values[a] - p * sold[a] - self.weights[a] * t) ** 2 for a in self.accounts)

    def cost(self, account, k) -> Fraction:
        """(A positive multiple of) the cost of selling the account's k-th share: minus
        how far above target it is halfway through that share."""
        excess = (
            self.values[account]
            - self.price * (k - Fraction(1, 2))
            - self.weights[account] * self.target_total
        )
        return -excess

    def greedy(self) -> dict[str, int]:
        """Sell shares one by one from the account furthest above target among those still
        holding, ties by name."""
        sold = {a: 0 for a in self.accounts}
        heap = [(self.cost(a, 1), a) for a in self.accounts if self.holdings[a] > 0]
        heapq.heapify(heap)
        for _ in range(self.quantity):
            _, account = heapq.heappop(heap)
            sold[account] += 1
            if sold[account] < self.holdings[account]:
                heapq.heappush(heap, (self.cost(account, sold[account] + 1), account))
        return sold

    def brute_force_minimum(self) -> Fraction:
        bounds = [self.holdings[a] for a in self.accounts]
        return min(
            self.objective(dict(zip(self.accounts, parts, strict=True)))
            for parts in bounded_compositions(self.quantity, bounds)
        )

    def check_certificate(self, sold) -> None:
        """Exact optimality, tie-breaking included, for sells of any size.

        The greedy optimum of a separable convex objective over boxes is the q cheapest
        steps in (cost, name) order, so the dearest share sold must come strictly before
        the cheapest share that could still be sold (an account below its holding).
        """
        check_bounds(self.holdings, self.quantity, sold)
        sold_steps = [(self.cost(a, s), a) for a, s in sold.items() if s > 0]
        next_steps = [(self.cost(a, s + 1), a) for a, s in sold.items() if s < self.holdings[a]]
        assert sold_steps, "no share was sold"
        if next_steps:
            assert max(sold_steps) < min(next_steps), (max(sold_steps), min(next_steps))


def bounded_compositions(total: int, bounds: list[int]):
    """Every tuple of ints 0 <= x_i <= bounds[i] summing to `total`."""
    if len(bounds) == 1:
        if total <= bounds[0]:
            yield (total,)
        return
    room = sum(bounds[1:])
    for first in range(max(0, total - room), min(total, bounds[0]) + 1):
        for rest in bounded_compositions(total - first, bounds[1:]):
            yield (first, *rest)


def check_bounds(holdings, quantity, sold) -> None:
    """Conservation, 0 <= sold <= held, plain ints, every account present."""
    assert set(sold) >= set(holdings)
    assert all(type(s) is int for s in sold.values())
    assert sum(sold.values()) == quantity
    for account, s in sold.items():
        assert 0 <= s <= holdings.get(account, 0), (account, s)


# -- strategies --------------------------------------------------------------------------

NAMES = st.text(alphabet="abcxyzAB_09é", min_size=1, max_size=4)

SIGNED_VALUES = st.one_of(
    st.integers(-(10**11), 10**11).map(lambda cents: cents / 100),
    st.floats(-1e9, 1e9),
    st.integers(-30, 30),  # plenty of exact ties
    st.fractions(min_value=-(10**6), max_value=10**6, max_denominator=1000),
    st.decimals(
        min_value=-(10**6), max_value=10**6, places=3, allow_nan=False, allow_infinity=False
    ),
)
SMALL_INTS = st.integers(-30, 30)

PRICES = st.one_of(
    st.integers(1, 500),
    st.integers(1, 10**7).map(lambda cents: cents / 100),
    st.floats(1e-3, 1e5),
    st.fractions(min_value=Fraction(1, 1000), max_value=10**4, max_denominator=1000),
    st.decimals(min_value=Decimal("0.01"), max_value=10**4, places=2),
)
SMALL_PRICES = st.integers(1, 5)  # with SMALL_INTS values: many equal marginal costs


def normalised(raw: list[int], kind: str) -> list:
    """Integer weights normalised as exact Fractions, floats or Decimals (sum within 1e-9)."""
    total = sum(raw)
    if kind == "fraction":
        return [Fraction(k, total) for k in raw]
    if kind == "float":
        return [k / total for k in raw]
    return [Decimal(k) / Decimal(total) for k in raw]


@st.composite
def sells(draw, max_accounts, max_holding, values=SIGNED_VALUES, prices=PRICES, partial=False):
    """(values, weights, price, quantity, holdings) with 1 <= quantity <= total held.

    With partial=True an account may be missing from `values` (value 0), from `weights`
    (weight 0) or from `holdings` (holds nothing).
    """
    names = draw(st.lists(NAMES, min_size=1, max_size=max_accounts, unique=True))
    n = len(names)
    raw = draw(st.lists(st.integers(0, 100), min_size=n, max_size=n))
    raw[draw(st.integers(0, n - 1))] = draw(st.integers(1, 100))
    weight_list = normalised(raw, draw(st.sampled_from(["fraction", "float", "decimal"])))
    held = draw(st.lists(st.integers(0, max_holding), min_size=n, max_size=n))
    held[draw(st.integers(0, n - 1))] = draw(st.integers(1, max_holding))
    value_map, weights, holdings = {}, {}, {}
    for name, k, w, h in zip(names, raw, weight_list, held, strict=True):
        if not partial or k > 0 or draw(st.booleans()):
            weights[name] = w
        if not partial or draw(st.booleans()):
            value_map[name] = draw(values)
        if not partial or h > 0 or draw(st.booleans()):
            holdings[name] = h
    price = draw(prices)
    quantity = draw(st.integers(1, sum(held)))
    return value_map, weights, price, quantity, holdings


@st.composite
def integral_sells(draw, max_accounts, max_holding, max_value=10**12, max_price=10**8):
    """Arguments of allocate_sell_integral, accounts in no particular order."""
    names = draw(st.lists(NAMES, min_size=1, max_size=max_accounts, unique=True))
    n = len(names)
    values = draw(st.lists(st.integers(-max_value, max_value), min_size=n, max_size=n))
    weights = draw(st.lists(st.integers(0, 10**6), min_size=n, max_size=n))
    weights[draw(st.integers(0, n - 1))] = draw(st.integers(1, 10**6))
    holdings = draw(st.lists(st.integers(0, max_holding), min_size=n, max_size=n))
    holdings[draw(st.integers(0, n - 1))] = draw(st.integers(1, max_holding))
    price = draw(st.integers(1, max_price))
    quantity = draw(st.integers(1, sum(holdings)))
    return names, values, weights, price, quantity, holdings


def as_problem(names, values, weights, price, quantity, holdings) -> SellProblem:
    def by_name(xs):
        return dict(zip(names, xs, strict=True))

    return SellProblem(by_name(values), by_name(weights), price, quantity, by_name(holdings))


# -- (a) brute force: the objective is the exact minimum ---------------------------------


@settings(max_examples=200, deadline=None)
@given(sells(max_accounts=4, max_holding=5))
def test_matches_brute_force_minimum(problem):
    values, weights, price, quantity, holdings = problem
    result = allocate_sell(values, weights, price, quantity, holdings)
    exact_problem = SellProblem(values, weights, price, quantity, holdings)
    check_bounds(holdings, quantity, result)
    assert exact_problem.objective(result) == exact_problem.brute_force_minimum()
    # and among the optimal sells, it is the one the name tie-break picks
    assert result == exact_problem.greedy()


@settings(max_examples=200, deadline=None)
@given(sells(max_accounts=4, max_holding=5, values=SMALL_INTS, prices=SMALL_PRICES))
def test_matches_brute_force_minimum_with_many_ties(problem):
    values, weights, price, quantity, holdings = problem
    result = allocate_sell(values, weights, price, quantity, holdings)
    exact_problem = SellProblem(values, weights, price, quantity, holdings)
    assert exact_problem.objective(result) == exact_problem.brute_force_minimum()
    assert result == exact_problem.greedy()


# -- (b) greedy: the identical sell for bigger problems ----------------------------------


@settings(max_examples=150, deadline=None)
@given(sells(max_accounts=8, max_holding=60))
def test_matches_one_share_at_a_time_greedy(problem):
    values, weights, price, quantity, holdings = problem
    result = allocate_sell(values, weights, price, quantity, holdings)
    exact_problem = SellProblem(values, weights, price, quantity, holdings)
    assert result == exact_problem.greedy()
    exact_problem.check_certificate(result)


@settings(max_examples=150, deadline=None)
@given(sells(max_accounts=8, max_holding=40, values=SMALL_INTS, prices=SMALL_PRICES))
def test_matches_greedy_with_many_ties(problem):
    values, weights, price, quantity, holdings = problem
    result = allocate_sell(values, weights, price, quantity, holdings)
    assert result == SellProblem(values, weights, price, quantity, holdings).greedy()


@settings(max_examples=100, deadline=None)
@given(sells(max_accounts=8, max_holding=40, partial=True))
def test_partial_account_maps_match_greedy(problem):
    values, weights, price, quantity, holdings = problem
    result = allocate_sell(values, weights, price, quantity, holdings)
    assert set(result) == set(values) | set(weights) | set(holdings)
    assert result == SellProblem(values, weights, price, quantity, holdings).greedy()


@settings(max_examples=120, deadline=None)
@given(integral_sells(max_accounts=8, max_holding=60))
def test_integral_core_matches_greedy_in_any_account_order(problem):
    names, values, weights, price, quantity, holdings = problem
    result = allocate_sell_integral(names, values, weights, price, quantity, holdings)
    exact_problem = as_problem(names, values, weights, price, quantity, holdings)
    assert dict(zip(names, result, strict=True)) == exact_problem.greedy()
    # the ranks a caller keeps give the same answer as the ones computed inside
    ranks = name_ranks(names)
    assert allocate_sell_integral(names, values, weights, price, quantity, holdings, ranks) == (
        result
    )


@settings(max_examples=150, deadline=None)
@given(integral_sells(max_accounts=6, max_holding=30, max_value=40, max_price=4))
def test_integral_core_matches_greedy_with_many_ties(problem):
    names, values, weights, price, quantity, holdings = problem
    weights = [w % 4 for w in weights]  # few distinct weights, zeros among them
    if not any(weights):
        weights[0] = 1
    result = allocate_sell_integral(names, values, weights, price, quantity, holdings)
    exact_problem = as_problem(names, values, weights, price, quantity, holdings)
    assert dict(zip(names, result, strict=True)) == exact_problem.greedy()


def test_equal_accounts_tie_break_by_name():
    weights = {"c": Fraction(1, 3), "a": Fraction(1, 3), "b": Fraction(1, 3)}
    values = {"c": 300, "a": 300, "b": 300}
    held = {"c": 10, "a": 10, "b": 10}
    assert allocate_sell(values, weights, 10, 1, held) == {"a": 1, "b": 0, "c": 0}
    assert allocate_sell(values, weights, 10, 2, held) == {"a": 1, "b": 1, "c": 0}
    assert allocate_sell(values, weights, 10, 4, held) == {"a": 2, "b": 1, "c": 1}
    # a holds nothing: the tie goes to the next name
    assert allocate_sell(values, weights, 10, 1, {**held, "a": 0}) == {"a": 0, "b": 1, "c": 0}


def test_tie_break_uses_string_order_not_insertion_order():
    weights = {"b": 0.5, "B": 0.5}
    assert allocate_sell({"b": 10, "B": 10}, weights, 1, 1, {"b": 5, "B": 5}) == {"B": 1, "b": 0}


def test_overweight_account_sells_first():
    # b is far above its 50% target, so every share of a small sell comes from it
    result = allocate_sell({"a": 0, "b": 1000}, {"a": 0.5, "b": 0.5}, 10, 20, {"a": 50, "b": 50})
    assert result == {"a": 0, "b": 20}


def test_holding_caps_the_most_overweight_account():
    # b would sell everything if it could; it holds 3, the rest comes from a
    result = allocate_sell({"a": 500, "b": 10**6}, {"a": 0.5, "b": 0.5}, 10, 20, {"a": 50, "b": 3})
    assert result == {"a": 17, "b": 3}


def test_account_holding_nothing_never_sells():
    values = {"rich": 10**9, "poor": 0}
    result = allocate_sell(values, {"rich": 0.5, "poor": 0.5}, 1, 7, {"poor": 10})
    assert result == {"rich": 0, "poor": 7}


# -- (c) zero weights, whole holdings, negative values ------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(1, 100), min_size=1, max_size=5),  # positive weights
    st.lists(st.integers(1, 30), min_size=1, max_size=5),  # zero-weight holdings
    st.lists(st.integers(0, 10**6), min_size=10, max_size=10),  # holdings, extra value
    st.integers(-(10**4), 10**6),  # value per weight unit of the positive-weight accounts
    st.integers(1, 1000),
    st.data(),
)
def test_zero_weight_holders_sell_first(positive, zero_held, extras, unit, price, data):
    # Positive-weight accounts exactly proportional to their weights, zero-weight accounts
    # worth at least their holding at the price: the zero-weight accounts are above target
    # by at least half a share on each share they hold, every positive-weight account is
    # below target by at least half a share, so the zero-weight accounts sell first.
    values, weights, holdings = {}, {}, {}
    for i, c in enumerate(positive):
        name = f"p{i}"
        weights[name] = Fraction(c, sum(positive))
        values[name] = c * unit
        holdings[name] = extras[i]
    for i, h in enumerate(zero_held):
        name = f"z{i}"
        values[name] = price * h + extras[5 + i]
        holdings[name] = h
    zero_total = sum(zero_held)
    quantity = data.draw(st.integers(1, zero_total))
    result = allocate_sell(values, weights, price, quantity, holdings)
    assert all(result[f"p{i}"] == 0 for i in range(len(positive)))
    assert result == SellProblem(values, weights, price, quantity, holdings).greedy()
    # one more than they hold: all of theirs, then one share from a positive-weight account
    if sum(holdings.values()) > zero_total:
        result = allocate_sell(values, weights, price, zero_total + 1, holdings)
        assert all(result[f"z{i}"] == h for i, h in enumerate(zero_held))
        assert sum(result[f"p{i}"] for i in range(len(positive))) == 1


@settings(max_examples=100, deadline=None)
@given(sells(max_accounts=8, max_holding=10**6, partial=True))
def test_whole_holding_sold_when_quantity_is_everything_held(problem):
    values, weights, price, _, holdings = problem
    quantity = sum(holdings.values())
    result = allocate_sell(values, weights, price, quantity, holdings)
    assert result == {a: holdings.get(a, 0) for a in result}


def test_whole_holding_sold_in_the_integral_core():
    shares = allocate_sell_integral(["b", "a", "c"], [-5, 7, 0], [0, 1, 2], 3, 9, [4, 0, 5])
    assert shares == [4, 0, 5]


@settings(max_examples=150, deadline=None)
@given(
    sells(
        max_accounts=8,
        max_holding=50,
        values=st.integers(-(10**9), 0).map(lambda cents: cents / 100),
    )
)
def test_negative_values_match_greedy(problem):
    values, weights, price, quantity, holdings = problem
    result = allocate_sell(values, weights, price, quantity, holdings)
    exact_problem = SellProblem(values, weights, price, quantity, holdings)
    assert result == exact_problem.greedy()
    exact_problem.check_certificate(result)


def test_negative_values_example():
    # Net cash invested: a sold at a profit and stands at -$500 with 10 shares left; b has
    # $2,000 in with 10 shares. Equal targets; the total after selling 4 at $50 is $1,300,
    # so the targets are $650 each: b is far above it and sells all 4.
    values = {"a": -500, "b": 2000}
    result = allocate_sell(values, {"a": 0.5, "b": 0.5}, 50, 4, {"a": 10, "b": 10})
    assert result == {"a": 0, "b": 4}
    # with b holding 1, the other 3 come from a even though a is below its target
    result = allocate_sell(values, {"a": 0.5, "b": 0.5}, 50, 4, {"a": 10, "b": 1})
    assert result == {"a": 3, "b": 1}


def test_zero_weight_holder_with_negative_value_sells_last():
    # z has no target but is below it (negative value): the accounts above target go first
    values = {"a": 1000, "z": -1000}
    result = allocate_sell(values, {"a": 1.0}, 10, 5, {"a": 100, "z": 100})
    assert result == {"a": 5, "z": 0}
    assert result == SellProblem(values, {"a": 1.0}, 10, 5, {"a": 100, "z": 100}).greedy()


# -- (d) invariants, determinism, key order -------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(sells(max_accounts=8, max_holding=10**9, partial=True), st.randoms())
def test_invariants_and_key_order_independence(problem, rnd):
    values, weights, price, quantity, holdings = problem
    result = allocate_sell(values, weights, price, quantity, holdings)
    assert set(result) == set(values) | set(weights) | set(holdings)
    SellProblem(values, weights, price, quantity, holdings).check_certificate(result)
    assert allocate_sell(values, weights, price, quantity, holdings) == result

    def shuffled(mapping):
        items = list(mapping.items())
        rnd.shuffle(items)
        return dict(items)

    again = allocate_sell(shuffled(values), shuffled(weights), price, quantity, shuffled(holdings))
    assert again == result


@settings(max_examples=100, deadline=None)
@given(integral_sells(max_accounts=12, max_holding=10**9), st.randoms())
def test_integral_core_is_independent_of_account_order(problem, rnd):
    names, values, weights, price, quantity, holdings = problem
    result = allocate_sell_integral(names, values, weights, price, quantity, holdings)
    assert all(type(s) is int for s in result)
    order = list(range(len(names)))
    rnd.shuffle(order)

    def permuted(xs):
        return [xs[i] for i in order]

    again = allocate_sell_integral(
        permuted(names),
        permuted(values),
        permuted(weights),
        price,
        quantity,
        permuted(holdings),
    )
    assert again == permuted(result)
    as_problem(names, values, weights, price, quantity, holdings).check_certificate(
        dict(zip(names, result, strict=True))
    )


def test_result_shares_are_plain_ints():
    result = allocate_sell({"a": Decimal("1.5")}, {"a": Fraction(1)}, Fraction(3, 2), 7, {"a": 9})
    assert result == {"a": 7}
    assert type(result["a"]) is int


@pytest.mark.parametrize(
    "convert",
    [
        pytest.param(lambda x: x, id="float"),
        pytest.param(Fraction, id="fraction"),
        pytest.param(lambda x: Decimal(str(x)), id="decimal"),
    ],
)
def test_number_types_give_the_same_result_for_the_same_exact_values(convert):
    # dyadic numbers are exact in every representation
    values = {"a": 1000.25, "b": -250.5, "c": 0.0, "d": 17.75}
    weights = {"a": 0.25, "b": 0.5, "c": 0.125, "d": 0.125}
    holdings = {"a": 100, "b": 40, "c": 150, "d": 60}
    expected = allocate_sell(values, weights, 12.5, 233, holdings)
    converted = allocate_sell(
        {a: convert(v) for a, v in values.items()},
        {a: convert(w) for a, w in weights.items()},
        convert(12.5),
        233,
        holdings,
    )
    assert converted == expected
    assert expected == SellProblem(values, weights, 12.5, 233, holdings).greedy()


# -- (e) large problems: certificate of optimality -----------------------------------------


def random_book(rnd: random.Random, n: int, holding: int, spread: int):
    """n accounts with random weights, signed values in micro-dollars and holdings."""
    names = [f"acct{i:04d}" for i in range(n)]
    rnd.shuffle(names)
    values = [rnd.randint(-spread, 10 * spread) for _ in range(n)]
    weights = [rnd.choice([0, rnd.randint(1, 10**6)]) for _ in range(n)]
    weights[0] = max(weights[0], 1)
    holdings = [rnd.choice([0, rnd.randint(1, holding), holding]) for _ in range(n)]
    return names, values, weights, holdings


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize(
    ("holding", "quantity"),
    [
        (10**7, 1),  # only the account furthest above target sells
        (10**7, 999),  # some accounts sell, most do not
        (10**7, 10**9),  # most holders sell some, none everything
        (10**6, 10**9),  # below: many sell everything they hold
        (10**12, 10**9),  # huge holdings
    ],
)
def test_thousand_accounts_up_to_a_billion_shares(seed, holding, quantity):
    rnd = random.Random(seed * 1_000_003 + holding + quantity)
    n = 1000
    names, values, weights, holdings = random_book(rnd, n, holding, spread=10**15)
    total = sum(holdings)
    quantity = min(quantity, total - 1)
    price = rnd.randint(1, 10**9)
    result = allocate_sell_integral(names, values, weights, price, quantity, holdings)
    exact_problem = as_problem(names, values, weights, price, quantity, holdings)
    exact_problem.check_certificate(dict(zip(names, result, strict=True)))


def test_billion_share_sell_of_a_book_near_target_every_holder_sells():
    # the common case: no account meets a bound, each sells close to its share of q
    rnd = random.Random(7)
    n, quantity, price = 1000, 10**9, 101.25
    names = [f"acct{i:04d}" for i in range(n)]
    raw = [rnd.randint(1, 1000) for _ in range(n)]
    weights = dict(zip(names, normalised(raw, "fraction"), strict=True))
    values = {a: k * 10**9 for a, k in zip(names, raw, strict=True)}  # exactly at target
    holdings = {a: k * 10**7 for a, k in zip(names, raw, strict=True)}
    result = allocate_sell(values, weights, price, quantity, holdings)
    exact_problem = SellProblem(values, weights, price, quantity, holdings)
    exact_problem.check_certificate(result)
    for account in names:
        assert abs(result[account] - exact_problem.weights[account] * quantity) < 1, account


def test_sell_down_to_a_few_shares_left():
    # q = everything held but 5: all but a handful of accounts are sold out
    rnd = random.Random(11)
    names, values, weights, holdings = random_book(rnd, 1000, 10**6, spread=10**12)
    quantity = sum(holdings) - 5
    result = allocate_sell_integral(names, values, weights, 1234, quantity, holdings)
    as_problem(names, values, weights, 1234, quantity, holdings).check_certificate(
        dict(zip(names, result, strict=True))
    )
    assert sum(h - s for h, s in zip(holdings, result, strict=True)) == 5


@settings(max_examples=150, deadline=None)
@given(sells(max_accounts=40, max_holding=10**12, partial=True))
def test_large_random_problems_are_optimal(problem):
    values, weights, price, quantity, holdings = problem
    result = allocate_sell(values, weights, price, quantity, holdings)
    SellProblem(values, weights, price, quantity, holdings).check_certificate(result)


def test_certificate_rejects_a_worse_sell_and_a_wrong_tie_break():
    values, weights, holdings = {"a": 10, "b": 10}, {"a": 0.5, "b": 0.5}, {"a": 9, "b": 9}
    exact_problem = SellProblem(values, weights, 1, 10, holdings)
    exact_problem.check_certificate({"a": 5, "b": 5})
    with pytest.raises(AssertionError):
        exact_problem.check_certificate({"a": 6, "b": 4})
    with pytest.raises(AssertionError):  # above a holding
        exact_problem.check_certificate({"a": 10, "b": 0})
    with pytest.raises(AssertionError):  # right objective, wrong tie-break
        SellProblem(values, weights, 1, 1, holdings).check_certificate({"a": 0, "b": 1})


# -- errors -------------------------------------------------------------------------------

GOOD_VALUES = {"a": 100.0, "b": -50.0}
GOOD_WEIGHTS = {"a": 0.5, "b": 0.5}
GOOD_HOLDINGS = {"a": 10, "b": 10}


@pytest.mark.parametrize(
    ("quantity", "message"),
    [
        (0, "quantity must be > 0, got 0"),
        (-3, "quantity must be > 0, got -3"),
        (3.0, "quantity must be a whole number of shares (int), got 3.0"),
        (True, "quantity must be a whole number of shares (int), got True"),
        (21, "quantity must be <= the 20 shares held, got 21"),
    ],
)
def test_bad_quantity(quantity, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        allocate_sell(GOOD_VALUES, GOOD_WEIGHTS, 10.0, quantity, GOOD_HOLDINGS)


@pytest.mark.parametrize(
    ("holdings", "message"),
    [
        ({"a": -1, "b": 10}, "holding of account 'a' must be >= 0, got -1"),
        ({"a": 1.0, "b": 10}, "holding of account 'a' must be a whole number of shares (int)"),
        ({"a": True, "b": 10}, "holding of account 'a' must be a whole number of shares (int)"),
        ({"a": "3", "b": 10}, "holding of account 'a' must be a whole number of shares (int)"),
        ({"a": Decimal(3)}, "holding of account 'a' must be a whole number of shares (int)"),
        ({"": 3}, "account names must be non-empty strings, got ''"),
        ({}, "quantity must be <= the 0 shares held, got 1"),
    ],
)
def test_bad_holdings(holdings, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        allocate_sell(GOOD_VALUES, GOOD_WEIGHTS, 10.0, 1, holdings)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (float("nan"), "value of account 'a' must be finite, got nan"),
        (float("-inf"), "value of account 'a' must be finite, got -inf"),
        (Decimal("NaN"), "value of account 'a' must be finite, got Decimal('NaN')"),
        ("100", "value of account 'a' must be a number, got '100'"),
        (None, "value of account 'a' must be a number, got None"),
        (False, "value of account 'a' must be a number, got False"),
    ],
)
def test_bad_value(value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        allocate_sell({"a": value, "b": 50.0}, GOOD_WEIGHTS, 10.0, 1, GOOD_HOLDINGS)


@pytest.mark.parametrize(
    ("price", "message"),
    [
        (0, "price must be > 0, got 0"),
        (-1.5, "price must be > 0, got -1.5"),
        (float("nan"), "price must be finite, got nan"),
        (None, "price must be a number, got None"),
    ],
)
def test_bad_price(price, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        allocate_sell(GOOD_VALUES, GOOD_WEIGHTS, price, 1, GOOD_HOLDINGS)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"a": -0.5, "b": 1.5}, "weight of account 'a' must be >= 0, got -0.5"),
        ({"a": 0.5, "b": 0.4}, "weights must sum to 1 (within 1e-06), got 0.9"),
        ({"a": 0, "b": 0.0}, "weights must have at least one account with a positive weight"),
        ({}, "weights must have at least one account with a positive weight"),
    ],
)
def test_bad_weights(weights, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        allocate_sell(GOOD_VALUES, weights, 10.0, 1, GOOD_HOLDINGS)


@pytest.mark.parametrize(
    "values", [{"": 1.0, "b": 50.0}, {1: 1.0, "a": 2.0}], ids=["empty", "not-a-string"]
)
def test_bad_account_name(values):
    with pytest.raises(ValueError, match="account names must be non-empty strings, got"):
        allocate_sell(values, GOOD_WEIGHTS, 10.0, 1, GOOD_HOLDINGS)


def test_negative_values_are_accepted():
    result = allocate_sell({"a": -100.0, "b": -50.0}, GOOD_WEIGHTS, 10.0, 3, GOOD_HOLDINGS)
    assert sum(result.values()) == 3


@pytest.mark.parametrize("quantity", [0, -1, 11])
def test_integral_core_rejects_a_sell_it_cannot_fill(quantity):
    with pytest.raises(ValueError, match=re.escape("quantity must be between 1 and the 10")):
        allocate_sell_integral(["a", "b"], [0, 0], [1, 1], 5, quantity, [4, 6])
