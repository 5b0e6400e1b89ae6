"""The C allocation kernel (controller._allocc, controller/_native/alloc_core.h) against the
Python reference, controller.allocator's allocate_integral and allocate_sell_integral.

The kernel must return exactly the reference's shares for every input it accepts, and None
exactly when a number does not fit in int64 or the inputs pass its int128 bound
(`within_bound` below is the bound as the header documents it), so that the caller
(controller.native) can run the reference instead. Seeded random cases cover 1..2,000
accounts and quantities up to 10**9, hypothesis the edges (int64 limits, exact ties, zero
weights, weights over orders of magnitude); named cases reach each of the kernel's paths
(the heap of candidates, the level search's passes and its sorted fallback, the bucket cut of
the leftovers, the sell sweep).

Skipped when the extension is not built or FILLALLOC_NATIVE=0, unless
FILLALLOC_EXPECT_NATIVE=1 (CI), where a missing extension fails. The tests of
controller.native's fallback run either way.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from array import array
from collections.abc import Sequence
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller import native
from controller.allocator import allocate_integral, allocate_sell_integral
from controller.book import exact_rule

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INT128_MAX = 2**127 - 1
DISABLED = os.environ.get(native.ENV_SWITCH) == "0"


@pytest.fixture(scope="module")
def allocc() -> ModuleType:
    """The kernel, or a skip (a failure where CI expects it built)."""
    if native.allocc is None:
        reason = native.unavailable.get("_allocc", "not loaded")
        if os.environ.get("FILLALLOC_EXPECT_NATIVE") == "1" and not DISABLED:
            pytest.fail(f"controller._allocc is {reason} (FILLALLOC_EXPECT_NATIVE=1)")
        pytest.skip(f"controller._allocc is {reason}")
    return native.allocc


# -- what the kernel must answer ---------------------------------------------------------


def fits_int64(*numbers: int) -> bool:
    return all(INT64_MIN <= x <= INT64_MAX for x in numbers)


def within_bound(
    values: Sequence[int], weights: Sequence[int], price: int, quantity: int, sell: bool
) -> bool:
    """The header's bound: W*(B + n*(2V + extra)) <= 2^127 - 1 with V = R + |T|, R the OR
    of the |values|, extra = b (buy) or B + b (sell)."""
    n, w, b_q = len(values), sum(weights), price * quantity
    t = sum(values) - b_q if sell else sum(values) + b_q
    r = 0
    for value in values:
        r |= abs(value)
    extra = b_q + price if sell else price
    return w * (b_q + n * (2 * (r + abs(t)) + extra)) <= INT128_MAX


def names_for(ranks: Sequence[int]) -> list[str]:
    """Account names whose sort order is the given ranks."""
    return [f"acct-{rank:06d}" for rank in ranks]


def expected_buy(values, weights, ranks, price, quantity) -> list[int] | None:
    """The reference's shares, or None where the kernel must decline."""
    if not fits_int64(*values, *weights, price, quantity):
        return None
    if not within_bound(values, weights, price, quantity, sell=False):
        return None
    return allocate_integral(names_for(ranks), values, weights, price, quantity, ranks)


def expected_sell(values, weights, ranks, price, quantity, holdings) -> list[int] | None:
    """The reference's shares sold, or None where the kernel must decline."""
    if not fits_int64(*values, *weights, *holdings, price, quantity):
        return None
    if quantity == sum(holdings):
        return list(holdings)
    if not within_bound(values, weights, price, quantity, sell=True):
        return None
    return allocate_sell_integral(
        names_for(ranks), values, weights, price, quantity, holdings, ranks
    )


def check_buy(allocc, values, weights, ranks, price, quantity) -> list[int] | None:
    got = allocc.buy(values, weights, ranks, price, quantity)
    want = expected_buy(values, weights, ranks, price, quantity)
    assert got == want, (values, weights, ranks, price, quantity)
    if got is not None:
        assert sum(got) == quantity and min(got) >= 0
    return got


def check_sell(allocc, values, weights, ranks, price, quantity, holdings) -> list[int] | None:
    got = allocc.sell(values, weights, ranks, price, quantity, holdings)
    want = expected_sell(values, weights, ranks, price, quantity, holdings)
    assert got == want, (values, weights, ranks, price, quantity, holdings)
    if got is not None:
        assert sum(got) == quantity
        assert all(0 <= s <= h for s, h in zip(got, holdings, strict=True))
    return got


# -- seeded random cases -----------------------------------------------------------------


def random_values(rng: random.Random, n: int, kind: str) -> list[int]:
    """Book values of one of several shapes (micro-units, any sign)."""
    if kind == "near target":  # a $1bn book, each account within 1% of an equal share
        return [rng.randint(99 * 10**9, 101 * 10**9) for _ in range(n)]
    if kind == "signed":
        return [rng.randint(-(10**12), 10**12) for _ in range(n)]
    if kind == "tied":
        return [rng.randint(0, 3) for _ in range(n)]
    if kind == "far below":  # one account far below its target, the rest near it
        values = [rng.randint(10**8, 10**8 + 1000) for _ in range(n)]
        values[rng.randrange(n)] = -(10**12)
        return values
    if kind == "geometric":
        return [2 ** rng.randint(0, 50) for _ in range(n)]
    if kind == "edge":
        return [rng.choice([INT64_MIN, INT64_MAX, INT64_MAX - 1, 0, -1]) for _ in range(n)]
    raise ValueError(kind)


VALUE_KINDS = ["near target", "signed", "tied", "far below", "geometric", "edge"]


def random_weights(rng: random.Random, n: int, kind: str) -> list[int]:
    if kind == "equal":
        weights = [1] * n
    elif kind == "zeros":
        weights = [rng.choice([0, 0, 1, 2]) for _ in range(n)]
    elif kind == "magnitudes":
        weights = [10 ** rng.randint(0, 9) * rng.randint(1, 9) for _ in range(n)]
    elif kind == "percents":
        weights = [rng.randint(1, 10_000) for _ in range(n)]
    else:
        raise ValueError(kind)
    if not any(weights):
        weights[rng.randrange(n)] = 1
    return weights


WEIGHT_KINDS = ["equal", "zeros", "magnitudes", "percents"]


def random_case(rng: random.Random, max_accounts: int) -> tuple:
    n = rng.choice([1, 2, 3, rng.randint(1, 20), rng.randint(1, max_accounts)])
    values = random_values(rng, n, rng.choice(VALUE_KINDS))
    weights = random_weights(rng, n, rng.choice(WEIGHT_KINDS))
    ranks = list(range(n))
    rng.shuffle(ranks)
    price = rng.choice([1, 2, 3, rng.randint(1, 10**6), rng.randint(10**6, 10**9)])
    return values, weights, ranks, price


def random_quantity(rng: random.Random, n: int) -> int:
    return rng.choice(
        [1, 2, rng.randint(1, max(1, n // 16)), rng.randint(1, n), n, n + 1]
        + [rng.randint(1, 10**6), 10**9]
    )


@pytest.mark.parametrize("seed", range(4))
def test_random_buys_match_the_reference(allocc, seed):
    rng = random.Random(seed)
    for _ in range(300):
        values, weights, ranks, price = random_case(rng, 2_000)
        check_buy(allocc, values, weights, ranks, price, random_quantity(rng, len(values)))


@pytest.mark.parametrize("seed", range(4))
def test_random_sells_match_the_reference(allocc, seed):
    rng = random.Random(100 + seed)
    for _ in range(300):
        values, weights, ranks, price = random_case(rng, 2_000)
        n = len(values)
        holdings = [rng.choice([0, 1, rng.randint(0, 5), rng.randint(0, 10**6)]) for _ in values]
        if rng.random() < 0.2:
            holdings = [rng.randint(10**6, 10**9) for _ in values]
        total = sum(holdings)
        if total == 0:
            holdings[rng.randrange(n)] = total = rng.randint(1, 10)
        quantity = rng.choice(
            [1, rng.randint(1, total), total, max(1, total - n), min(total, n), min(total, 10**9)]
        )
        check_sell(allocc, values, weights, ranks, price, quantity, holdings)


# -- hypothesis: the edges ---------------------------------------------------------------

EDGE_INTS = st.one_of(
    st.integers(-30, 30),  # exact ties
    st.integers(-(10**15), 10**15),
    st.integers(INT64_MIN, INT64_MAX),
    st.sampled_from([INT64_MIN, INT64_MIN + 1, INT64_MAX, INT64_MAX - 1, 2**62]),
)
WEIGHTS = st.one_of(
    st.integers(0, 3),
    st.integers(0, 10**9),
    st.integers(0, INT64_MAX),
    st.sampled_from([INT64_MAX, 2**62]),
)
PRICES = st.one_of(st.integers(1, 3), st.integers(1, 10**9), st.integers(1, INT64_MAX))
QUANTITIES = st.one_of(st.integers(1, 40), st.integers(1, 10**9), st.integers(1, INT64_MAX))


@st.composite
def buys(draw, max_accounts: int = 12):
    n = draw(st.integers(1, max_accounts))
    values = draw(st.lists(EDGE_INTS, min_size=n, max_size=n))
    weights = draw(st.lists(WEIGHTS, min_size=n, max_size=n))
    if not any(weights):
        weights[draw(st.integers(0, n - 1))] = draw(st.integers(1, INT64_MAX))
    ranks = draw(st.permutations(range(n)))
    return values, weights, ranks, draw(PRICES), draw(QUANTITIES)


@st.composite
def sells(draw, max_accounts: int = 12):
    values, weights, ranks, price, _ = draw(buys(max_accounts))
    n = len(values)
    holdings = draw(
        st.lists(
            st.one_of(st.integers(0, 5), st.integers(0, 10**9), st.integers(0, INT64_MAX)),
            min_size=n,
            max_size=n,
        )
    )
    if not any(holdings):
        holdings[draw(st.integers(0, n - 1))] = draw(st.integers(1, 10))
    quantity = draw(st.integers(1, sum(holdings)))
    return values, weights, ranks, price, quantity, holdings


@settings(max_examples=400, deadline=None)
@given(buys())
def test_buys_at_the_edges_match_the_reference_or_decline(allocc, case):
    check_buy(allocc, *case)


@settings(max_examples=400, deadline=None)
@given(sells())
def test_sells_at_the_edges_match_the_reference_or_decline(allocc, case):
    check_sell(allocc, *case)


@settings(max_examples=60, deadline=None)
@given(buys(max_accounts=200))
def test_wider_buys_match_the_reference_or_decline(allocc, case):
    check_buy(allocc, *case)


@settings(max_examples=60, deadline=None)
@given(sells(max_accounts=200))
def test_wider_sells_match_the_reference_or_decline(allocc, case):
    check_sell(allocc, *case)


# -- each path of the kernel, by name ----------------------------------------------------


def test_heap_of_candidates_breaks_ties_by_rank(allocc):
    """q <= n/16 selects the candidates with a heap; with every account alike, the q
    smallest ranks get one share each, wherever they sit."""
    rng = random.Random(7)
    n = 2_000
    ranks = list(range(n))
    rng.shuffle(ranks)
    for quantity in (1, 5, 100, n // 16):
        got = check_buy(allocc, [1_000] * n, [3] * n, ranks, 7, quantity)
        assert got is not None
        assert {ranks[i] for i, s in enumerate(got) if s} == set(range(quantity))
        sold = check_sell(allocc, [1_000] * n, [3] * n, ranks, 7, quantity, [2] * n)
        assert sold is not None
        assert {ranks[i] for i, s in enumerate(sold) if s} == set(range(quantity))


def test_heap_keeps_near_ties_the_double_prefilter_cannot_tell_apart(allocc):
    """Values one unit apart near 2^62: doubles cannot separate them, the exact test must."""
    n = 400
    rng = random.Random(11)
    values = [2**62 - rng.randint(0, 3) for _ in range(n)]
    ranks = list(range(n))
    rng.shuffle(ranks)
    for quantity in (1, 3, 25):
        assert check_buy(allocc, values, [1] * n, ranks, 1, quantity) is not None


def test_level_search_falls_back_to_a_sort_on_geometric_values(allocc):
    """Each pass of the level search drops only the accounts above the mean: with values
    doubling from account to account it takes more passes than allowed, and the rest is
    sorted."""
    for n in (63, 200):
        values = [2 ** (i % 63) for i in range(n)]
        ranks = list(range(n))
        random.Random(n).shuffle(ranks)
        for quantity in (n, 2 * n, 10**6):
            assert check_buy(allocc, values, [1] * n, ranks, 1, quantity) is not None


def test_leftovers_over_many_accounts_go_by_remainder_then_rank(allocc):
    """From 256 accounts with a remainder on, the leftovers are cut by buckets first: equal
    remainders (all in one bucket) and spread ones (many buckets) both match."""
    rng = random.Random(5)
    n = 1_000
    ranks = list(range(n))
    rng.shuffle(ranks)
    got = check_buy(allocc, [0] * n, [1] * n, ranks, 1, 1_500)
    assert got is not None and sorted(got) == [1] * 500 + [2] * 500
    assert {ranks[i] for i, s in enumerate(got) if s == 2} == set(range(500))
    values = [rng.randint(0, 10**6) for _ in range(n)]
    weights = [rng.randint(1, 10**4) for _ in range(n)]
    for quantity in (10**4 + 1, 123_457, 10**9 + 7):
        check_buy(allocc, values, weights, ranks, 997, quantity)


def percent_weights(rng: random.Random, n: int, total: int = 10**8) -> list[int]:
    """n positive weights summing to `total` (a split of percents in its integer unit)."""
    cuts = sorted(rng.sample(range(1, total), n - 1))
    return [b - a for a, b in zip([0, *cuts], [*cuts, total], strict=True)]


def test_shares_divide_by_the_step_on_books_where_most_accounts_buy(allocc):
    """The shares divide most - alpha by h = W*b, not level - m*alpha by h*m: on books like
    the controller's (weights summing to 10**8, micro-dollar values up to 10**12, q from
    n/2 to 2n) h*m mostly passes 2^64 and h never does; with weights summing near 2^40 h
    passes it too (and the leftovers' buckets shift their remainders as int128, not in
    64 bits). Books near their targets (every account buys, no level pass), spread ones
    (passes, a level below zero) and sells from both match the reference."""
    rng = random.Random(29)
    for n in (300, 1_000, 3_000):
        ranks = list(range(n))
        rng.shuffle(ranks)
        for total in (10**8, 2**40 + 3):
            weights = percent_weights(rng, n, total)
            book = rng.choice((10**9, 10**12))
            near = [
                w * book // total + rng.randint(-book // n // 50, book // n // 50) for w in weights
            ]
            spread = [rng.randint(0, 10**12) for _ in range(n)]
            for values in (near, spread):
                price = rng.randint(10**7, 5 * 10**8)
                for quantity in (n // 2, n, 2 * n - 1):
                    assert (total * price >> 64 == 0) == (total == 10**8)  # h < 2^64?
                    assert check_buy(allocc, values, weights, ranks, price, quantity) is not None
                    holdings = [rng.randint(1, 4) for _ in range(n)]
                    check_sell(allocc, values, weights, ranks, price, quantity, holdings)


def test_first_buy_level_from_the_values_outside_the_split(allocc):
    """Without the heap a buy starts from level -W*Z, Z the values of the accounts of weight
    0 (no pass over the alphas): with such accounts worth much, nothing or below zero, and
    books where the first pass keeps every member (no level pass) or drops some."""
    rng = random.Random(31)
    for n in (40, 300, 2_000):
        ranks = list(range(n))
        rng.shuffle(ranks)
        for outside_value in (0, 10**12, -(10**12), 1):
            weights = [0 if i % 7 == 3 else rng.randint(1, 10**4) for i in range(n)]
            total = sum(weights)
            for spread in (0, 10, 10**6):
                values = [
                    outside_value + rng.randint(-spread, spread)
                    if w == 0
                    else w * 10**9 // total + rng.randint(-spread, spread)
                    for w in weights
                ]
                for quantity in (n // 8, n, 5 * n + 3):
                    assert check_buy(allocc, values, weights, ranks, 997, quantity) is not None


def test_sell_sweep_with_accounts_sold_out(allocc):
    """Everything held but one share per account: the sweep meets every breakpoint."""
    rng = random.Random(9)
    for n in (2, 17, 300, 1_500):
        values = [rng.randint(-(10**9), 10**9) for _ in range(n)]
        weights = random_weights(rng, n, "percents")
        holdings = [rng.randint(1, 1_000) for _ in range(n)]
        ranks = list(range(n))
        rng.shuffle(ranks)
        for quantity in (sum(holdings) - n, sum(holdings) - 1, sum(holdings) // 2):
            check_sell(allocc, values, weights, ranks, 13, quantity, holdings)


def test_a_huge_holding_is_capped_at_the_quantity(allocc):
    n = 50
    holdings = [INT64_MAX] + [1] * (n - 1)
    values = [10**12] + [0] * (n - 1)  # the big holder is far above target
    for quantity in (1, 10, 10**9):
        got = check_sell(allocc, values, [1] * n, list(range(n)), 100, quantity, holdings)
        assert got is not None


# -- the kernel's inner pieces -------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.integers(1, 2**64 - 1), st.integers(1, 2**127 - 1), st.integers(1, 1000)),
    st.integers(0, INT64_MAX),
    st.data(),
)
def test_division_by_a_prepared_divisor_is_exact(allocc, divisor, quotient, data):
    if quotient * divisor > INT128_MAX:
        quotient = INT128_MAX // divisor
    remainder = data.draw(st.integers(0, min(divisor - 1, INT128_MAX - quotient * divisor)))
    numerator = quotient * divisor + remainder
    assert allocc._divide(numerator, divisor) == (quotient, remainder)


def test_division_corrections_on_many_random_divisors(allocc):
    """The reciprocal's quotient estimate is corrected once about half the time and twice
    about once in a thousand: thousands of cases meet both."""
    rng = random.Random(17)
    for _ in range(20_000):
        divisor = rng.getrandbits(rng.randint(1, 64)) or 1
        numerator = rng.randrange(divisor << 64)
        if numerator // divisor > INT64_MAX:
            numerator >>= 1
        assert allocc._divide(numerator, divisor) == divmod(numerator, divisor)
    for divisor in (1, 2, 3, 2**63, 2**64 - 1, 2**64, 2**64 + 1, 2**100 + 7):
        for numerator in (0, 1, divisor - 1, divisor, INT64_MAX * divisor, INT64_MAX * divisor
                          + divisor - 1):
            if numerator <= INT128_MAX:
                assert allocc._divide(numerator, divisor) == divmod(numerator, divisor)


def key_shapes(rng: random.Random, n: int) -> list[list[int]]:
    """Keys in orders that trouble quicksorts: sorted, reversed, organ pipe, all equal,
    few distinct, random."""
    ascending = list(range(n))
    half = n // 2
    return [
        ascending,
        ascending[::-1],
        list(range(half)) + list(range(n - half, 0, -1)),
        [7] * n,
        [rng.randint(0, 3) for _ in range(n)],
        [rng.randint(INT64_MIN, INT64_MAX) for _ in range(n)],
    ]


@pytest.mark.parametrize("depth", [0, 1, 3, None])
def test_candidate_sort_at_every_depth(allocc, depth):
    """The introsort, and its heapsort (depth 0: at once; 1, 3: after a few partitions)."""
    rng = random.Random(depth or 99)
    for n in (0, 1, 2, 16, 17, 100, 777):
        ranks = list(range(n))
        rng.shuffle(ranks)
        for keys in key_shapes(rng, n):
            want = sorted(range(n), key=lambda i: (keys[i], ranks[i]))
            assert allocc._sort(keys, ranks, 64 if depth is None else depth) == want


@pytest.mark.parametrize("budget", [0, 1, 3, None])
def test_leftover_selection_at_every_budget(allocc, budget):
    """The quickselect of the leftovers, and its heap (budget 0: at once)."""
    rng = random.Random(budget or 98)
    for n in (2, 17, 18, 100, 999):
        ranks = list(range(n))
        rng.shuffle(ranks)
        for keys in key_shapes(rng, n):
            keys = [abs(k) for k in keys]
            first = sorted(range(n), key=lambda i: (-keys[i], ranks[i]))
            for k in {1, n // 3 or 1, n - 1}:
                got = allocc._select(keys, ranks, k, 64 if budget is None else budget)
                assert sorted(got) == sorted(first[:k])


# -- the bound ---------------------------------------------------------------------------


def test_the_bound_is_exactly_the_documented_one(allocc):
    """One account: K = c*(B + 2V + b) with V = |a| + |a + B|. The largest weight within the
    bound gets the exact answer; one more and the kernel declines."""
    value, price, quantity = 2**62, 2**30, 2**31  # B = 2^61
    v = abs(value) + abs(value + price * quantity)
    limit = INT128_MAX // (price * quantity + 2 * v + price)
    assert limit < INT64_MAX
    assert allocc.buy([value], [limit], [0], price, quantity) == [quantity]
    assert allocc.buy([value], [limit + 1], [0], price, quantity) is None
    # a sell of part of a holding at the same edge (the sell's extra term is B + b)
    sell_t = abs(value) + abs(value - price * quantity)
    sell_limit = INT128_MAX // (price * quantity + 2 * sell_t + price * quantity + price)
    holdings = [quantity + 1]
    assert allocc.sell([value], [sell_limit], [0], price, quantity, holdings) == [quantity]
    assert allocc.sell([value], [sell_limit + 1], [0], price, quantity, holdings) is None


@pytest.mark.parametrize(
    "values, weights, price, quantity",
    [
        ([INT64_MAX] * 4, [INT64_MAX] * 4, INT64_MAX, INT64_MAX),
        ([INT64_MIN, INT64_MAX], [2**62, 2**62], 1, 1),
        ([0, 1, 2], [1, 1, 1], 2**62, 2**62),
    ],
)
def test_past_the_bound_the_kernel_declines(allocc, values, weights, price, quantity):
    ranks = list(range(len(values)))
    assert not within_bound(values, weights, price, quantity, sell=False)
    assert allocc.buy(values, weights, ranks, price, quantity) is None
    holdings = [quantity] * len(values)
    assert allocc.sell(values, weights, ranks, price, quantity, holdings) is None


@pytest.mark.parametrize(
    "args",
    [
        ([2**63], [1], [0], 1, 1),
        ([0], [2**63], [0], 1, 1),
        ([0], [1], [2**63], 1, 1),
        ([0], [1], [0], 2**63, 1),
        ([0], [1], [0], 1, 2**63),
        ([-(2**63) - 1], [1], [0], 1, 1),
    ],
)
def test_numbers_beyond_int64_are_declined(allocc, args):
    assert allocc.buy(*args) is None
    assert allocc.sell(*args, [1]) is None


def test_what_the_reference_refuses_is_declined(allocc):
    """The caller's checks, repeated: the kernel never answers what the reference would not."""
    assert allocc.buy([0, 0], [0, 0], [0, 1], 1, 1) is None  # no weight
    assert allocc.buy([0], [-1], [0], 1, 1) is None
    assert allocc.buy([0], [1], [0], 0, 1) is None
    assert allocc.buy([0], [1], [0], 1, 0) is None
    assert allocc.sell([0], [1], [0], 1, 3, [2]) is None  # more than held
    assert allocc.sell([0], [1], [0], 1, 1, [-1]) is None
    assert allocc.sell([0, 0], [0, 0], [0, 1], 1, 1, [1, 1]) is None  # no weight to aim at
    assert allocc.sell([0, 0], [0, 0], [0, 1], 1, 2, [1, 1]) == [1, 1]  # all held: forced


# -- the Python interface ----------------------------------------------------------------


def test_int64_buffers_are_read_in_place_with_the_same_result(allocc):
    rng = random.Random(3)
    values, weights, ranks, price = random_case(rng, 500)
    values = [v // 4 for v in values]
    n = len(values)
    holdings = [rng.randint(1, 100) for _ in range(n)]
    as_array = [array("q", x) for x in (values, weights, ranks)]
    assert allocc.buy(*as_array, price, 77) == allocc.buy(values, weights, ranks, price, 77)
    assert allocc.sell(*as_array, price, 77, array("q", holdings)) == allocc.sell(
        values, weights, ranks, price, 77, holdings
    )
    assert allocc.buy(tuple(values), memoryview(as_array[1]), ranks, price, 5) == allocc.buy(
        values, weights, ranks, price, 5
    )


def test_other_buffers_of_int64(allocc):
    """A ctypes array (format '<q') is read in place; a strided memoryview, which is not
    contiguous, as a sequence; a buffer of the wrong length is refused."""
    import ctypes

    values = [5, 1, 9, 0]
    as_ctypes = (ctypes.c_int64 * 4)(*values)
    want = allocc.buy(values, [1, 2, 3, 4], [0, 1, 2, 3], 3, 11)
    assert allocc.buy(as_ctypes, [1, 2, 3, 4], [0, 1, 2, 3], 3, 11) == want
    strided = memoryview(array("q", [5, -1, 1, -1, 9, -1, 0, -1]))[::2]
    assert allocc.buy(strided, [1, 2, 3, 4], [0, 1, 2, 3], 3, 11) == want
    with pytest.raises(ValueError, match="weights has 3 items, expected 4"):
        allocc.buy(array("q", values), array("q", [1, 2, 3]), [0, 1, 2, 3], 3, 11)


def test_shares_written_into_an_int64_buffer(allocc):
    """`out` takes the shares in place of a new list and is returned; left alone when the
    kernel declines; refused when it is not a writable int64 buffer of n or overlaps an
    input."""
    values, weights, ranks = array("q", [5, 1, 9, 0]), [1, 2, 3, 4], [0, 1, 2, 3]
    out = array("q", [7] * 4)
    assert allocc.buy(values, weights, ranks, 3, 11, out) is out
    assert out.tolist() == allocc.buy(values, weights, ranks, 3, 11) == allocc.buy(
        values, weights, ranks, 3, 11, None
    )
    holdings = [4, 4, 4, 4]
    assert allocc.sell(values, weights, ranks, 3, 5, holdings, out) is out
    assert out.tolist() == allocc.sell(values, weights, ranks, 3, 5, holdings)
    before = out.tolist()
    assert allocc.buy([2**63, 0, 0, 0], weights, ranks, 3, 11, out) is None
    assert allocc.buy(values, [0, 0, 0, 0], ranks, 3, 11, out) is None
    assert out.tolist() == before
    with pytest.raises(ValueError, match="out overlaps an input"):
        allocc.buy(values, weights, ranks, 3, 11, values)
    with pytest.raises(ValueError, match="writable int64 buffer of 4 items"):
        allocc.buy(values, weights, ranks, 3, 11, array("q", [0] * 3))
    with pytest.raises(ValueError, match="writable int64 buffer of 4 items"):
        allocc.buy(values, weights, ranks, 3, 11, array("d", [0.0] * 4))
    with pytest.raises(BufferError):
        allocc.buy(values, weights, ranks, 3, 11, bytes(32))
    with pytest.raises(TypeError, match="takes 5 or 6 arguments"):
        allocc.buy(values, weights, ranks, 3, 11, out, out)


class Shares(int):
    """An int subclass: read through the general path, not the exact-int fast one."""


def test_ints_of_every_size_are_read_exactly(allocc):
    """Small ints are read from their digits (one or two 30-bit digits), others by the
    general call: around each boundary, with bools and int subclasses, the same numbers."""
    held = [0, 1, 2**30 - 1, 2**30, 2**30 + 1, 2**60 - 1, 2**60, 2**61 + 12345, True]
    held += [Shares(7), 2**61 - 3]
    n, total = len(held), sum(held)
    echoed = allocc.sell([0] * n, [1] * n, list(range(n)), 1, total, held)  # sells all held
    assert echoed == [int(h) for h in held]
    keys = [-(2**30), -(2**30) + 1, -(2**60), -(2**60) - 1, 2**60 + 1, -(2**62), INT64_MIN]
    keys += [INT64_MAX, -1, 0, True, False, Shares(-5), 2**31, -(2**31) - 1]
    order = allocc._sort(keys, list(range(len(keys))), 64)
    assert order == sorted(range(len(keys)), key=lambda i: (keys[i], i))


def test_bad_arguments_raise(allocc):
    with pytest.raises(ValueError, match="weights has 1 items, expected 2"):
        allocc.buy([0, 0], [1], [0, 1], 1, 1)
    with pytest.raises(ValueError, match="holdings has 1 items"):
        allocc.sell([0, 0], [1, 1], [0, 1], 1, 1, [1])
    with pytest.raises(TypeError):
        allocc.buy([0.5], [1], [0], 1, 1)
    with pytest.raises(TypeError):
        allocc.buy([0], [1], [0], 1.0, 1)
    with pytest.raises(TypeError, match="takes 5 or 6 arguments"):
        allocc.buy([0], [1], [0], 1)
    with pytest.raises(TypeError):
        allocc.buy(5, [1], [0], 1, 1)
    with pytest.raises(TypeError):  # a buffer of another type is read as a sequence
        allocc.buy(array("d", [0.0]), [1], [0], 1, 1)


# -- controller.native: the same answers with or without the kernel ----------------------


def test_native_functions_fall_back_past_the_bound():
    """Huge values (beyond int64, and past the int128 bound within it): the reference's
    answer, through controller.native whether or not the kernel is built."""
    names = ["a", "b", "c"]
    cases = [
        ([10**30, 5, -(10**25)], [1, 2, 3], 7, 10),
        ([INT64_MAX, INT64_MIN, 0], [INT64_MAX, INT64_MAX, 1], INT64_MAX, INT64_MAX),
    ]
    for values, weights, price, quantity in cases:
        assert native.buy_integral(names, values, weights, price, quantity) == (
            allocate_integral(names, values, weights, price, quantity)
        )
        holdings = [quantity, 3, quantity]
        assert native.sell_integral(names, values, weights, price, quantity, holdings) == (
            allocate_sell_integral(names, values, weights, price, quantity, holdings)
        )
        if native.allocc is not None:
            assert native.allocc.buy(values, weights, [0, 1, 2], price, quantity) is None


def test_native_functions_take_the_reference_signature_and_ranks_default_to_names():
    names = ["zed", "amy", "kim"]
    assert native.buy_integral(names, [0, 0, 0], [1, 1, 1], 1, 1) == [0, 1, 0]
    assert native.buy_integral(names, [0, 0, 0], [1, 1, 1], 1, 1, [0, 1, 2]) == [1, 0, 0]
    assert native.sell_integral(names, [0, 0, 0], [1, 1, 1], 1, 1, [1, 1, 1]) == [0, 1, 0]


@pytest.mark.parametrize("quantity", [0, 4])
def test_native_sell_keeps_the_reference_error_for_a_bad_quantity(quantity):
    with pytest.raises(ValueError, match="quantity must be between 1 and the 3 shares held"):
        native.sell_integral(["a", "b"], [0, 0], [1, 1], 1, quantity, [1, 2])


def test_the_exact_rule_runs_the_kernel_when_it_is_built():
    rule = exact_rule()
    assert rule.name == "exact"
    if native.available():
        assert (rule.buy, rule.sell) == (native.buy_integral, native.sell_integral)
    else:
        assert (rule.buy, rule.sell) == (allocate_integral, allocate_sell_integral)


def test_the_environment_switch_disables_every_compiled_module():
    code = (
        "from controller import native; "
        "print(native.allocc is None, native.hotpath is None, native.available())"
    )
    env = {**os.environ, native.ENV_SWITCH: "0"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["True", "True", "False"]
