"""Tests for controller.allocator.allocate against exact (Fraction) reference solutions.

The problem: whole x_i >= 0 with sum x_i = q minimising
    sum_i (V_i + p*x_i - w_i*(V + p*q))^2
with the weights normalised exactly, ties broken by account name (smallest first).

References used here, all in exact rational arithmetic:
  * brute force over every composition of q (small n and q): the optimum objective;
  * one-share-at-a-time greedy (the cheapest next marginal step, ties by name): the exact
    allocation, including the tie-breaking;
  * an optimality certificate that works for any size: every share given is no dearer
    (in (marginal cost, name) order) than any share not given.
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

from controller.allocator import WEIGHT_SUM_TOLERANCE, allocate

# -- exact reference maths ---------------------------------------------------------------


def exact(number) -> Fraction:
    """The exact value of an int, float, Fraction or Decimal."""
    return Fraction(number)


class Problem:
    """The exact data of one allocation problem (missing values / weights are 0)."""

    def __init__(self, values, weights, price, quantity):
        self.accounts = sorted(set(values) | set(weights))
        self.values = {a: exact(values.get(a, 0)) for a in self.accounts}
        raw = {a: exact(weights.get(a, 0)) for a in self.accounts}
        total = sum(raw.values())
        self.weights = {a: w / total for a, w in raw.items()}
        self.price = exact(price)
        self.quantity = quantity
        self.target_total = sum(self.values.values()) + self.price * quantity

    def objective(self, alloc) -> Fraction:
        p, t = self.price, self.target_total
        return sum(
            (self.values[a] + p * alloc[a] - self.weights[a] * t) ** 2 for a in self.accounts
        )

    def marginal(self, account, k) -> Fraction:
        """E_i(k): (a positive multiple of) the cost of giving account its k-th share."""
        return (
            self.values[account]
            + self.price * (k - Fraction(1, 2))
            - self.weights[account] * self.target_total
        )

    def greedy(self) -> dict[str, int]:
        """Hand out shares one by one to the smallest next marginal cost, ties by name."""
        alloc = {a: 0 for a in self.accounts}
        heap = [(self.marginal(a, 1), a) for a in self.accounts]
        heapq.heapify(heap)
        for _ in range(self.quantity):
            _, account = heapq.heappop(heap)
            alloc[account] += 1
            heapq.heappush(heap, (self.marginal(account, alloc[account] + 1), account))
        return alloc

    def brute_force_minimum(self) -> Fraction:
        return min(
            self.objective(dict(zip(self.accounts, parts, strict=True)))
            for parts in compositions(self.quantity, len(self.accounts))
        )

    def check_certificate(self, alloc) -> None:
        """Exact optimality, tie-breaking included, for allocations of any size.

        For a separable convex objective the greedy optimum is the q cheapest marginal
        steps in (cost, name) order, so: the dearest share given must come strictly
        before the cheapest share not given. Equal costs are only allowed when the
        account given the share sorts first. Zero-weight accounts are included in the
        'not given' side, which is stronger than looking only at positive weights.
        """
        given_steps = [(self.marginal(a, x), a) for a, x in alloc.items() if x > 0]
        next_steps = [(self.marginal(a, x + 1), a) for a, x in alloc.items()]
        assert given_steps, "no share was placed"
        dearest_given = max(given_steps)
        cheapest_next = min(next_steps)
        assert dearest_given < cheapest_next, (dearest_given, cheapest_next)


def compositions(total: int, parts: int):
    """Every tuple of `parts` non-negative ints summing to `total`."""
    if parts == 1:
        yield (total,)
        return
    for first in range(total + 1):
        for rest in compositions(total - first, parts - 1):
            yield (first, *rest)


def check_basic(values, weights, quantity, result) -> None:
    """Conservation, non-negativity, every account present, zero weights get nothing."""
    accounts = set(values) | set(weights)
    assert set(result) == accounts
    assert all(type(x) is int for x in result.values())
    assert all(x >= 0 for x in result.values())
    assert sum(result.values()) == quantity
    for account in accounts:
        if exact(weights.get(account, 0)) == 0:
            assert result[account] == 0, account


# -- strategies --------------------------------------------------------------------------

NAMES = st.text(alphabet="abcxyzAB_09é", min_size=1, max_size=4)

FEW_DECIMAL_FLOATS = st.integers(0, 10**11).map(lambda cents: cents / 100)
ARBITRARY_FLOATS = st.floats(0, 1e9)
SMALL_INTS = st.integers(0, 30)  # plenty of exact ties
FRACTIONS = st.fractions(min_value=0, max_value=10**6, max_denominator=1000)
DECIMALS = st.decimals(
    min_value=0, max_value=10**6, places=3, allow_nan=False, allow_infinity=False
)
VALUES = st.one_of(FEW_DECIMAL_FLOATS, ARBITRARY_FLOATS, SMALL_INTS, FRACTIONS, DECIMALS)

PRICES = st.one_of(
    st.integers(1, 500),
    st.integers(1, 10**7).map(lambda cents: cents / 100),
    st.floats(1e-3, 1e5),
    st.fractions(min_value=Fraction(1, 1000), max_value=10**4, max_denominator=1000),
    st.decimals(min_value=Decimal("0.01"), max_value=10**4, places=2),
)


def normalised(raw: list[int], kind: str) -> list:
    """Integer weights normalised as exact Fractions, floats (sum within 1e-9), or Decimals."""
    total = sum(raw)
    if kind == "fraction":
        return [Fraction(k, total) for k in raw]
    if kind == "float":
        weights = [k / total for k in raw]
        assert abs(sum(map(Fraction, weights)) - 1) <= Fraction(1, 10**9)
        return weights
    weights = [Decimal(k) / Decimal(total) for k in raw]
    assert abs(sum(map(Fraction, weights)) - 1) <= Fraction(1, 10**9)
    return weights


@st.composite
def problems(draw, max_accounts, max_quantity, values=VALUES, partial=False):
    """(values, weights, price, quantity); at least one account has a positive weight.

    With partial=True some zero-weight accounts appear only in `values` and some accounts
    appear only in `weights` (their value is then 0).
    """
    names = draw(st.lists(NAMES, min_size=1, max_size=max_accounts, unique=True))
    raw = draw(st.lists(st.integers(0, 100), min_size=len(names), max_size=len(names)))
    raw[draw(st.integers(0, len(names) - 1))] = draw(st.integers(1, 100))
    kind = draw(st.sampled_from(["fraction", "float", "decimal"]))
    weight_list = normalised(raw, kind)
    weights, value_map = {}, {}
    for name, k, w in zip(names, raw, weight_list, strict=True):
        where = draw(st.sampled_from(["both", "values", "weights"])) if partial else "both"
        if where != "values" or k > 0:
            weights[name] = w
        if where != "weights":
            value_map[name] = draw(values)
    price = draw(PRICES)
    quantity = draw(st.integers(1, max_quantity))
    return value_map, weights, price, quantity


# -- (a) brute force: the objective is the exact minimum ---------------------------------


@settings(max_examples=300, deadline=None)
@given(problems(max_accounts=4, max_quantity=8))
def test_matches_brute_force_minimum(problem):
    values, weights, price, quantity = problem
    result = allocate(values, weights, price, quantity)
    check_basic(values, weights, quantity, result)
    exact_problem = Problem(values, weights, price, quantity)
    assert exact_problem.objective(result) == exact_problem.brute_force_minimum()
    # and among the optimal allocations, it is the one the name tie-break picks
    assert result == exact_problem.greedy()


@settings(max_examples=200, deadline=None)
@given(problems(max_accounts=4, max_quantity=8, values=SMALL_INTS))
def test_matches_brute_force_minimum_with_many_ties(problem):
    values, weights, price, quantity = problem
    result = allocate(values, weights, price, quantity)
    exact_problem = Problem(values, weights, price, quantity)
    assert exact_problem.objective(result) == exact_problem.brute_force_minimum()
    assert result == exact_problem.greedy()


# -- (b) greedy: the identical allocation for bigger problems ----------------------------


@settings(max_examples=200, deadline=None)
@given(problems(max_accounts=8, max_quantity=200))
def test_matches_one_share_at_a_time_greedy(problem):
    values, weights, price, quantity = problem
    result = allocate(values, weights, price, quantity)
    check_basic(values, weights, quantity, result)
    exact_problem = Problem(values, weights, price, quantity)
    assert result == exact_problem.greedy()
    exact_problem.check_certificate(result)


@settings(max_examples=150, deadline=None)
@given(problems(max_accounts=8, max_quantity=200, values=SMALL_INTS))
def test_matches_greedy_with_many_ties(problem):
    values, weights, price, quantity = problem
    result = allocate(values, weights, price, quantity)
    assert result == Problem(values, weights, price, quantity).greedy()


def test_equal_accounts_tie_break_by_name():
    weights = {"c": Fraction(1, 3), "a": Fraction(1, 3), "b": Fraction(1, 3)}
    values = {"c": 0, "a": 0, "b": 0}
    assert allocate(values, weights, 10, 1) == {"a": 1, "b": 0, "c": 0}
    assert allocate(values, weights, 10, 2) == {"a": 1, "b": 1, "c": 0}
    assert allocate(values, weights, 10, 4) == {"a": 2, "b": 1, "c": 1}


def test_tie_break_uses_string_order_not_insertion_order():
    weights = {"b": 0.5, "B": 0.5}
    assert allocate({"b": 0, "B": 0}, weights, 1, 1) == {"B": 1, "b": 0}


def test_underweight_account_is_filled_first():
    # a is far below its 50% target, so every share of a small fill goes to it
    result = allocate({"a": 0, "b": 1000}, {"a": 0.5, "b": 0.5}, 10, 20)
    assert result == {"a": 20, "b": 0}


# -- (c) conservation, non-negativity, zero weights, determinism --------------------------


@settings(max_examples=200, deadline=None)
@given(problems(max_accounts=8, max_quantity=10**6, partial=True), st.randoms())
def test_invariants_and_key_order_independence(problem, rnd):
    values, weights, price, quantity = problem
    result = allocate(values, weights, price, quantity)
    check_basic(values, weights, quantity, result)
    Problem(values, weights, price, quantity).check_certificate(result)

    value_items, weight_items = list(values.items()), list(weights.items())
    rnd.shuffle(value_items)
    rnd.shuffle(weight_items)
    again = allocate(dict(value_items), dict(weight_items), price, quantity)
    assert again == result
    reversed_again = allocate(
        dict(reversed(values.items())), dict(reversed(weights.items())), price, quantity
    )
    assert reversed_again == result


@settings(max_examples=100, deadline=None)
@given(problems(max_accounts=8, max_quantity=200, partial=True))
def test_partial_account_lists_match_greedy(problem):
    values, weights, price, quantity = problem
    result = allocate(values, weights, price, quantity)
    assert result == Problem(values, weights, price, quantity).greedy()


def test_zero_weight_account_gets_nothing_even_when_far_below_everyone():
    values = {"rich": 10**9, "poor": 0, "empty": 0}
    weights = {"rich": 1.0, "poor": 0.0}
    result = allocate(values, weights, 1, 1000)
    assert result == {"rich": 1000, "poor": 0, "empty": 0}


def test_accounts_only_in_one_mapping_are_in_the_result():
    result = allocate({"a": 100, "old": 50}, {"a": 0.5, "new": 0.5}, 1, 10)
    assert set(result) == {"a", "new", "old"}
    assert result["old"] == 0
    assert sum(result.values()) == 10


def test_weights_within_tolerance_are_normalised_exactly():
    # sum is 1 + 5e-7, inside the tolerance; the exact normalised problem is solved
    weights = {"a": 0.3, "b": 0.7 + 5e-7}
    values = {"a": 0, "b": 0}
    result = allocate(values, weights, 1, 999)
    assert result == Problem(values, weights, 1, 999).greedy()


def test_result_shares_are_plain_ints():
    result = allocate({"a": Decimal("1.5")}, {"a": Fraction(1)}, Fraction(3, 2), 7)
    assert result == {"a": 7}
    assert type(result["a"]) is int


# -- (d) number types ---------------------------------------------------------------------


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
    values = {"a": 1000.25, "b": 250.5, "c": 0.0, "d": 17.75}
    weights = {"a": 0.25, "b": 0.5, "c": 0.125, "d": 0.125}
    price = 12.5
    expected = allocate(values, weights, price, 333)
    converted = allocate(
        {a: convert(v) for a, v in values.items()},
        {a: convert(w) for a, w in weights.items()},
        convert(price),
        333,
    )
    assert converted == expected
    assert expected == Problem(values, weights, price, 333).greedy()


def test_int_inputs():
    result = allocate({"a": 0, "b": 100}, {"a": 1, "b": 0}, 3, 5)
    assert result == {"a": 5, "b": 0}


@settings(max_examples=100, deadline=None)
@given(
    st.lists(DECIMALS, min_size=2, max_size=5),
    st.lists(st.integers(1, 9), min_size=2, max_size=5),
    st.decimals(min_value=Decimal("0.01"), max_value=1000, places=2),
    st.integers(1, 150),
)
def test_decimal_inputs_are_used_at_their_exact_value(value_list, raw, price, quantity):
    names = [f"acct{i}" for i in range(min(len(value_list), len(raw)))]
    values = dict(zip(names, value_list, strict=False))
    weights = dict(zip(names, normalised(raw[: len(names)], "decimal"), strict=False))
    result = allocate(values, weights, price, quantity)
    assert result == Problem(values, weights, price, quantity).greedy()


@settings(max_examples=100, deadline=None)
@given(problems(max_accounts=6, max_quantity=150, values=FRACTIONS))
def test_fraction_inputs(problem):
    values, weights, price, quantity = problem
    result = allocate(values, weights, price, quantity)
    assert result == Problem(values, weights, price, quantity).greedy()


# -- large problems: certificate of optimality --------------------------------------------


def random_weights(rnd: random.Random, n: int, kind: str) -> list:
    return normalised([rnd.randint(1, 1000) for _ in range(n)], kind)


@pytest.mark.parametrize("kind", ["fraction", "float"])
def test_billion_shares_over_thousand_accounts_with_zero_values(kind):
    rnd = random.Random(20240601)
    n, quantity = 1000, 10**9
    names = [f"acct{i:04d}" for i in range(n)]
    weights = dict(zip(names, random_weights(rnd, n, kind), strict=True))
    values = {a: 0 for a in names}
    result = allocate(values, weights, 101.25, quantity)
    check_basic(values, weights, quantity, result)
    exact_problem = Problem(values, weights, 101.25, quantity)
    for account in names:
        continuous_target = exact_problem.weights[account] * quantity
        assert abs(result[account] - continuous_target) < 1, account
    exact_problem.check_certificate(result)


@pytest.mark.parametrize("quantity", [10, 10**9])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_small_and_huge_quantities_are_both_optimal(quantity, seed):
    rnd = random.Random(seed)
    n = 200
    names = [f"acct{i:03d}" for i in range(n)]
    weights = dict(zip(names, random_weights(rnd, n, "float"), strict=True))
    values = {a: rnd.randint(0, 10**9) / 100 for a in names}
    price = rnd.randint(1, 10**6) / 100
    result = allocate(values, weights, price, quantity)
    check_basic(values, weights, quantity, result)
    Problem(values, weights, price, quantity).check_certificate(result)


@settings(max_examples=150, deadline=None)
@given(problems(max_accounts=40, max_quantity=10**12, partial=True))
def test_large_random_problems_are_optimal(problem):
    values, weights, price, quantity = problem
    result = allocate(values, weights, price, quantity)
    check_basic(values, weights, quantity, result)
    Problem(values, weights, price, quantity).check_certificate(result)


def test_certificate_agrees_with_greedy_and_rejects_a_worse_allocation():
    # guards the certificate itself: it must reject a non-optimal allocation
    values, weights = {"a": 0, "b": 0}, {"a": 0.5, "b": 0.5}
    exact_problem = Problem(values, weights, 1, 10)
    exact_problem.check_certificate({"a": 5, "b": 5})
    with pytest.raises(AssertionError):
        exact_problem.check_certificate({"a": 6, "b": 4})
    with pytest.raises(AssertionError):  # right objective, wrong tie-break
        Problem(values, weights, 1, 1).check_certificate({"a": 0, "b": 1})


# -- errors -------------------------------------------------------------------------------

GOOD_VALUES = {"a": 100.0, "b": 50.0}
GOOD_WEIGHTS = {"a": 0.5, "b": 0.5}


@pytest.mark.parametrize(
    ("quantity", "message"),
    [
        (0, "quantity must be > 0, got 0"),
        (-3, "quantity must be > 0, got -3"),
        (3.0, "quantity must be a whole number of shares (int), got 3.0"),
        (True, "quantity must be a whole number of shares (int), got True"),
        ("3", "quantity must be a whole number of shares (int), got '3'"),
        (Fraction(3), "quantity must be a whole number of shares (int), got Fraction(3, 1)"),
    ],
)
def test_bad_quantity(quantity, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        allocate(GOOD_VALUES, GOOD_WEIGHTS, 10.0, quantity)


@pytest.mark.parametrize(
    ("price", "message"),
    [
        (0, "price must be > 0, got 0"),
        (0.0, "price must be > 0, got 0.0"),
        (-1.5, "price must be > 0, got -1.5"),
        (float("nan"), "price must be finite, got nan"),
        (float("inf"), "price must be finite, got inf"),
        (float("-inf"), "price must be finite, got -inf"),
        (Decimal("NaN"), "price must be finite, got Decimal('NaN')"),
        (True, "price must be a number, got True"),
        ("10", "price must be a number, got '10'"),
        (None, "price must be a number, got None"),
    ],
)
def test_bad_price(price, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        allocate(GOOD_VALUES, GOOD_WEIGHTS, price, 10)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (float("nan"), "value of account 'a' must be finite, got nan"),
        (float("inf"), "value of account 'a' must be finite, got inf"),
        (Decimal("NaN"), "value of account 'a' must be finite, got Decimal('NaN')"),
        ("100", "value of account 'a' must be a number, got '100'"),
        (None, "value of account 'a' must be a number, got None"),
        (False, "value of account 'a' must be a number, got False"),
    ],
)
def test_bad_value(value, message):  # negative values are fine (net cash after sells)
    with pytest.raises(ValueError, match=re.escape(message)):
        allocate({"a": value, "b": 50.0}, GOOD_WEIGHTS, 10.0, 10)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"a": -0.5, "b": 1.5}, "weight of account 'a' must be >= 0, got -0.5"),
        ({"a": "0.5", "b": 0.5}, "weight of account 'a' must be a number, got '0.5'"),
        ({"a": float("nan"), "b": 0.5}, "weight of account 'a' must be finite, got nan"),
        ({"a": 0.5, "b": 0.4}, f"weights must sum to 1 (within {WEIGHT_SUM_TOLERANCE}), got 0.9"),
        ({"a": 0.6, "b": 0.6}, f"weights must sum to 1 (within {WEIGHT_SUM_TOLERANCE}), got 1.2"),
        ({"a": 0, "b": 0.0}, "weights must have at least one account with a positive weight"),
        ({}, "weights must have at least one account with a positive weight"),
    ],
)
def test_bad_weights(weights, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        allocate(GOOD_VALUES, weights, 10.0, 10)


def test_weights_just_outside_tolerance_are_rejected():
    weights = {"a": 0.5, "b": 0.5 + 2 * WEIGHT_SUM_TOLERANCE}
    with pytest.raises(ValueError, match=re.escape("weights must sum to 1")):
        allocate(GOOD_VALUES, weights, 10.0, 10)


@pytest.mark.parametrize(
    ("values", "weights"),
    [
        ({"": 1.0, "b": 50.0}, GOOD_WEIGHTS),
        (GOOD_VALUES, {"": 0.5, "a": 0.5}),
        ({1: 1.0}, {"a": 1.0}),
    ],
)
def test_bad_account_name(values, weights):
    with pytest.raises(ValueError, match="account names must be non-empty strings, got"):
        allocate(values, weights, 10.0, 10)


def test_negative_values_are_allowed_and_accounts_outside_the_split_never_buy():
    """Net cash can be negative after selling at a profit: an account outside the split
    (target 0) still never buys, and the rest is the optimum among those that may."""
    shares = allocate({"a": -495, "b": -495}, {"a": 1.0}, 100, 10)
    assert shares == {"a": 10, "b": 0}
    shares = allocate({"a": -1000, "b": 500, "c": 0}, {"a": 0.5, "b": 0.5}, 10, 100)
    problem = Problem({"a": -1000, "b": 500, "c": 0}, {"a": 0.5, "b": 0.5}, 10, 100)
    assert shares["c"] == 0
    best = min(
        ({"a": x, "b": 100 - x, "c": 0} for x in range(101)), key=problem.objective
    )
    assert problem.objective(shares) == problem.objective(best)
