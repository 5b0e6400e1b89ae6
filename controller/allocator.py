"""The allocation maths: split one fill into whole shares across accounts, exactly.

For a buy of q shares at price p, with values V_i, total V and target fractions w_i,
choose whole x_i >= 0 summing to q, with x_i = 0 for every account whose target is 0 (an
account outside the split never buys), that minimise

    sum_i (V_i + p*x_i - w_i*(V + p*q))^2

The objective is separable and convex, so the optimum is the q cheapest marginal steps:
the k-th share given to account i costs a positive multiple of

    E_i(k) = V_i + p*(k - 1/2) - w_i*T,     T = V + p*q,

and every share goes to the account with the smallest E (the one furthest below target).
Instead of handing out q shares one by one, we solve the continuous relaxation exactly
(water-filling over the accounts sorted by E_i(1)), take the floor, and give the fewer than
n shares left over to the accounts with the smallest next E. All arithmetic is on integers
(inputs are brought to a common denominator first), so there is no rounding anywhere:
shares are never created or lost and the result is the exact optimum. Ties go to the
account whose name sorts first, so the same inputs give the same allocation everywhere.

Accounts with w_i = 0 never receive shares: the rule says so, and when values are not
negative it costs nothing, since their first marginal step then costs at least as much as a
whole share above target while some positive-weight account is always below its target
until all q shares are placed. (Book values can be negative after selling at a profit;
without the constraint such an account outside the split would buy, which no desk wants.)
Values may be negative: nothing else in the argument needs signs.

Sells. A sell of q shares at p takes whole s_i with 0 <= s_i <= h_i (h_i: account i's
holding of the ticker), sum s_i = q, minimising

    sum_i (V_i - p*s_i - w_i*(V - p*q))^2

Still separable and convex, now with a box on each variable. With e_i = V_i - w_i*T,
T = V - p*q (how far account i ends up above target if it sells nothing), selling its k-th
share (k <= h_i) costs a positive multiple of

    F_i(k) = p*(k - 1/2) - e_i,

increasing in k, so the optimum is the q cheapest steps of {F_i(k) : 1 <= k <= h_i} in
(cost, name) order: the one-share-at-a-time greedy selling from the account furthest above
target among those still holding. Bounded water-filling finds them without counting shares.
The continuous relaxation (KKT) has one solution s_i(L) = clamp((L + e_i)/p, 0, h_i) at the
level L where sum_i s_i(L) = q: accounts strictly inside their box have marginal cost L,
accounts clamped at 0 have F_i >= L there and accounts clamped at h_i have F_i <= L. The sum
is piecewise linear and non-decreasing in L with two breakpoints per holding account, -e_i
(it starts selling) and p*h_i - e_i (it has sold everything); a sweep over them in order
(the starts sorted once, the ends of the accounts started kept in a heap) finds the segment
where the sum crosses q, and on it L is a ratio of integers: O(n log n) whatever q is (no
sort at all when no account meets a bound, the usual large sell). Proximity, as for
buys: with x_i = floor(s_i(L)) every step taken costs <= L - p/2, the next step of an
account with a fractional part f_i > 0 costs L + p/2 - p*f_i, strictly inside
(L - p/2, L + p/2), and every other step costs >= L + p/2 (an account clamped at 0 starts at
F_i(1) >= L + p/2; one clamped at h_i has no step left). The fewer than n shares left over
therefore go to the accounts with the largest fractional parts, ties by name, which is
exactly the greedy's choice, and never above a holding since f_i > 0 means s_i < h_i.
Values may be negative here (book value is net cash invested) and weights zero: nothing in
the argument needs signs. An account with w_i = 0 has e_i = V_i: its k-th share goes before
the first share of any account not above its target (e_j <= 0) whenever V_i > p*(k - 1),
so a zero-weight holder with V_i >= p*h_i sells all it holds before them.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from numbers import Rational

__all__ = [
    "allocate",
    "allocate_integral",
    "allocate_sell",
    "allocate_sell_integral",
    "name_ranks",
    "WEIGHT_SUM_TOLERANCE",
]

_INFINITY = float("inf")

#: What the public functions take for money and weights: used at its exact value.
Number = int | float | Fraction | Decimal

#: Weights must sum to 1 within this; they are then normalised exactly.
WEIGHT_SUM_TOLERANCE = 1e-6
_TOLERANCE_DENOMINATOR = 10**6  # 1 / WEIGHT_SUM_TOLERANCE, for an exact integer test


def allocate(
    values: Mapping[str, Number],
    weights: Mapping[str, Number],
    price: Number,
    quantity: int,
) -> dict[str, int]:
    """Return the optimal whole-share split of `quantity` shares at `price`.

    `values` maps account -> current value (any sign), `weights` maps account -> target
    fraction (summing to 1 within WEIGHT_SUM_TOLERANCE; normalised exactly). Numbers may be
    int, float, Fraction or Decimal and are used at their exact value. The result has every
    account of `values` or `weights`, zeros included. Raises ValueError on bad arguments.
    """
    problem = _exact_problem(values, weights, price, quantity)
    accounts = problem.accounts
    shares = allocate_integral(
        accounts, problem.values, problem.weights, problem.price, quantity, problem.ranks
    )
    return dict(zip(accounts, shares, strict=True))


def allocate_sell(
    values: Mapping[str, Number],
    weights: Mapping[str, Number],
    price: Number,
    quantity: int,
    holdings: Mapping[str, int],
) -> dict[str, int]:
    """Return the optimal whole-share split of a sell of `quantity` shares at `price`.

    As `allocate`, but shares are taken: `holdings` maps account -> shares of the ticker it
    holds (a non-negative int; missing accounts hold none), and no account sells more than
    it holds. `values` may be negative here (book value is net cash invested). The result
    has every account of `values`, `weights` or `holdings`, zeros included. Raises
    ValueError on bad arguments, including a sell of more shares than are held in total.
    """
    held = _holdings(holdings)
    problem = _exact_problem(values, weights, price, quantity, also=held.keys())
    accounts = problem.accounts
    held_list = [held.get(a, 0) for a in accounts]
    total = sum(held_list)
    if quantity > total:
        raise ValueError(f"quantity must be <= the {total} shares held, got {quantity!r}")
    shares = allocate_sell_integral(
        accounts,
        problem.values,
        problem.weights,
        problem.price,
        quantity,
        held_list,
        problem.ranks,
    )
    return dict(zip(accounts, shares, strict=True))


@dataclass(frozen=True, slots=True)
class _ExactProblem:
    """The public API's arguments on integers: accounts by name, values and price over one
    common denominator, weights over another, and the ranks (name order)."""

    accounts: list[str]
    values: list[int]
    weights: list[int]
    price: int
    ranks: list[int]


def _exact_problem(
    values: Mapping[str, Number],
    weights: Mapping[str, Number],
    price: Number,
    quantity: int,
    also: Iterable[str] = (),
) -> _ExactProblem:
    """Check and convert the public arguments exactly; ValueError naming the culprit.
    Values may be negative (net cash after selling at a profit); `also` names more
    accounts (the holders of a sell)."""
    _check_quantity(quantity)
    price_ratio = _exact_ratio("price", price)
    if price_ratio[0] <= 0:
        raise ValueError(f"price must be > 0, got {price!r}")
    value_ratios = _signed_ratios("value", values)
    weight_ratios = _ratios("weight", weights)
    accounts = sorted(values.keys() | weights.keys() | set(also))
    zero = (0, 1)
    money, _ = _over_common_denominator(
        [value_ratios.get(a, zero) for a in accounts] + [price_ratio]
    )
    weight_nums = _integer_weights(weight_ratios, accounts)
    ranks = list(range(len(accounts)))  # `accounts` is already sorted by name
    return _ExactProblem(accounts, money[:-1], weight_nums, money[-1], ranks)


def allocate_integral(
    accounts: Sequence[str],
    values: Sequence[int],
    weights: Sequence[int],
    price: int,
    quantity: int,
    ranks: Sequence[int] | None = None,
) -> list[int]:
    """The exact core on integers, for callers that already keep integer state.

    `values` and `price` are integers in one common unit (e.g. micro-dollars); `weights` are
    non-negative integers in any common unit, not all zero (the target fraction of account i
    is weights[i] / sum(weights)). `accounts` must be distinct; they break ties (smallest
    name first). `ranks`, each account's position in name order, may be passed by callers
    that keep it. Returns shares per account, in the order given. Arguments are trusted.
    """
    count = len(accounts)
    if ranks is None:
        ranks = name_ranks(accounts)
    # E_i(k) scaled by 2 * weight_total (and by the common value unit) is
    #   alpha_i - h + 2*h*k,  alpha_i = 2*W*a_i - 2*c_i*(A + b*q),  h = W*b.
    two_w = 2 * sum(weights)
    grand = 2 * (sum(values) + price * quantity)
    members = [i for i in range(count) if weights[i]]
    alphas = [two_w * values[i] - weights[i] * grand for i in members]
    two_h = two_w * price
    h2q = two_h * quantity
    active, prefix = len(alphas), sum(alphas)
    # Water level: the largest m such that the m-th cheapest account still gets a
    # non-negative continuous share, g(m) = 2hq + S_m - m*alpha_m >= 0 (g is non-increasing).
    # Usually every account qualifies, which needs no sort.
    if h2q + prefix - active * max(alphas) < 0:
        members, alphas, prefix = _active_accounts(members, alphas, ranks, h2q)
        active = len(alphas)

    shares = [0] * count
    denominator = two_h * active
    base = h2q + prefix
    keys = []  # largest fractional part first, then name order: one int per account
    placed = 0
    for i, alpha in zip(members, alphas, strict=True):
        whole, remainder = divmod(base - active * alpha, denominator)
        shares[i] = whole
        placed += whole
        keys.append(ranks[i] - remainder * count)
    # Fewer than `active` shares remain; each goes to a different account, largest
    # fractional part first (that is the smallest next marginal cost), ties by name.
    left = quantity - placed
    if left:
        by_rank = {ranks[i]: i for i in members}
        keys.sort()  # in C, faster here than a heap in Python for any account count
        for key in keys[:left]:
            shares[by_rank[key % count]] += 1
    return shares


def allocate_sell_integral(
    accounts: Sequence[str],
    values: Sequence[int],
    weights: Sequence[int],
    price: int,
    quantity: int,
    holdings: Sequence[int],
    ranks: Sequence[int] | None = None,
) -> list[int]:
    """The exact sell core on integers: shares sold per account, in the order given.

    Conventions as `allocate_integral` (values may be any integers, negative included);
    `holdings` are each account's non-negative whole shares of the ticker, and no account
    sells more than it holds. Arguments are trusted except the quantity: ValueError unless
    1 <= quantity <= sum(holdings).
    """
    count = len(accounts)
    total = sum(holdings)
    if not 1 <= quantity <= total:
        raise ValueError(f"quantity must be between 1 and the {total} shares held, got {quantity}")
    if quantity == total:
        return list(holdings)  # the only feasible sell
    if ranks is None:
        ranks = name_ranks(accounts)
    # F_i(k) scaled by 2 * weight_total (and by the common value unit) is
    #   alpha_i - h + 2*h*k,  alpha_i = 2*c_i*(A - b*q) - 2*W*a_i,  h = W*b,
    # and at level L account i sells clamp((L - alpha_i) / 2h, 0, holding_i) continuously.
    two_w = 2 * sum(weights)
    grand = 2 * (sum(values) - price * quantity)
    members = [i for i in range(count) if holdings[i]]
    held = [holdings[i] for i in members]
    alphas = [weights[i] * grand - two_w * values[i] for i in members]
    two_h = two_w * price
    need = two_h * quantity
    shares = [0] * count
    keys = []  # largest fractional part first, then name order: one int per account
    inside = members  # the accounts with a key
    placed = 0
    # Usually every holder sells some and none all: no bound binds and no sort is needed.
    # L = base / active; account i sells (base - active * alpha_i) / (2h * active).
    active, prefix = len(alphas), sum(alphas)
    base = need + prefix
    binds = active * max(alphas) > base  # some account would sell less than nothing
    if not binds:
        denominator = two_h * active
        for i, alpha, most in zip(members, alphas, held, strict=True):
            whole, remainder = divmod(base - active * alpha, denominator)
            if whole >= most:
                binds = True  # or all it holds, or more
                break
            shares[i] = whole
            placed += whole
            keys.append(ranks[i] - remainder * count)
    if binds:
        shares = [0] * count
        keys = []
        inside = []
        placed = 0
        active, base, started = _sell_level(alphas, held, two_h, need)
        denominator = two_h * active
        for j in started:  # every other account has alpha_j >= L and sells nothing
            whole, remainder = divmod(base - active * alphas[j], denominator)
            if whole < 0:
                continue
            if whole >= held[j]:
                whole, remainder = held[j], 0
            i = members[j]
            shares[i] = whole
            placed += whole
            if remainder:
                keys.append(ranks[i] - remainder * count)
                inside.append(i)
    # Fewer than n shares remain, each for a different account strictly inside its box,
    # largest fractional part first (the smallest next marginal cost), ties by name.
    left = quantity - placed
    if left:
        by_rank = {ranks[i]: i for i in inside}
        keys.sort()
        for key in keys[:left]:
            shares[by_rank[key % count]] += 1
    return shares


def name_ranks(accounts: Sequence[str]) -> list[int]:
    """Each account's position when the names are sorted (the tie-break order)."""
    ranks = [0] * len(accounts)
    for rank, index in enumerate(sorted(range(len(accounts)), key=accounts.__getitem__)):
        ranks[index] = rank
    return ranks


def _active_accounts(
    members: list[int], alphas: list[int], ranks: Sequence[int], h2q: int
) -> tuple[list[int], list[int], int]:
    """The accounts below the water level (cheapest first), their alphas and alpha sum."""
    ordered = sorted(zip(alphas, (ranks[i] for i in members), members, strict=True))
    prefix = 0
    active = 0
    for alpha, _, _ in ordered:
        if h2q + prefix + alpha - (active + 1) * alpha < 0:
            break
        prefix += alpha
        active += 1
    chosen = ordered[:active]
    return [i for _, _, i in chosen], [alpha for alpha, _, _ in chosen], prefix


def _sell_level(
    alphas: list[int], held: list[int], two_h: int, need: int
) -> tuple[int, int, list[int]]:
    """The water level of a bounded sell: (active, base, started), L = base / active.

    Sweeps the breakpoints in order: account j starts selling at alpha_j and has sold its
    whole holding at alpha_j + 2h*held_j. Between breakpoints, 2h * (shares sold) is
    active*L - prefix + 2h * (holdings of the accounts sold out), so the first breakpoint t
    where active*t - prefix reaches `need` less the sold-out part closes the segment
    holding L. Starts come from one sort; ends from a heap of the accounts started, so a
    small sell touches few of them. `started` lists the accounts with alpha_j <= t.
    Requires 0 < need < 2h * sum(held).
    """
    order = sorted(range(len(alphas)), key=alphas.__getitem__)
    count = len(order)
    ends: list[tuple[int, int]] = []  # (alpha_j + 2h*held_j, j) of the accounts started
    active = prefix = started = 0
    while True:  # ends at the last end at the latest, where everything is sold
        if started < count and (not ends or alphas[order[started]] <= ends[0][0]):
            j = order[started]
            level = alphas[j]
            if active * level - prefix >= need:
                break
            active += 1
            prefix += level
            started += 1
            heapq.heappush(ends, (level + two_h * held[j], j))
        else:
            level, j = ends[0]
            if active * level - prefix >= need:
                break
            heapq.heappop(ends)
            active -= 1
            prefix -= alphas[j]
            need -= two_h * held[j]
    # The sum was below q at the previous breakpoint, so the segment rises: active > 0.
    return active, need + prefix, order[:started]


def _check_quantity(quantity: object) -> None:
    if isinstance(quantity, bool) or not isinstance(quantity, int):
        raise ValueError(f"quantity must be a whole number of shares (int), got {quantity!r}")
    if quantity <= 0:
        raise ValueError(f"quantity must be > 0, got {quantity!r}")


def _check_account(account: object) -> None:
    if not isinstance(account, str) or not account:
        raise ValueError(f"account names must be non-empty strings, got {account!r}")


def _ratios(what: str, numbers: Mapping[str, object]) -> dict[str, tuple[int, int]]:
    """Exact ratios of a map of account -> non-negative number; ValueError naming the culprit."""
    ratios = {}
    for account, number in numbers.items():
        if type(number) is float and number >= 0 and number != _INFINITY:  # common, fast
            ratios[account] = number.as_integer_ratio()
        else:
            ratio = _exact_ratio(f"{what} of account {account!r}", number)
            if ratio[0] < 0:
                raise ValueError(f"{what} of account {account!r} must be >= 0, got {number!r}")
            ratios[account] = ratio
        if type(account) is not str or not account:
            _check_account(account)
    return ratios


def _signed_ratios(what: str, numbers: Mapping[str, object]) -> dict[str, tuple[int, int]]:
    """Exact ratios of a map of account -> any real number; ValueError naming the culprit."""
    ratios = {}
    for account, number in numbers.items():
        if type(number) is float and -_INFINITY < number < _INFINITY:  # the common case, fast
            ratios[account] = number.as_integer_ratio()
        else:
            ratios[account] = _exact_ratio(f"{what} of account {account!r}", number)
        if type(account) is not str or not account:
            _check_account(account)
    return ratios


def _holdings(holdings: Mapping[str, object]) -> dict[str, int]:
    """A map of account -> shares held, checked: whole, non-negative; ValueError otherwise."""
    held = {}
    for account, shares in holdings.items():
        if type(account) is not str or not account:
            _check_account(account)
        if type(shares) is not int:
            raise ValueError(
                f"holding of account {account!r} must be a whole number of shares (int), "
                f"got {shares!r}"
            )
        if shares < 0:
            raise ValueError(f"holding of account {account!r} must be >= 0, got {shares!r}")
        held[account] = shares
    return held


def _integer_weights(weight_ratios: dict[str, tuple[int, int]], accounts: list[str]) -> list[int]:
    """The weights of `accounts` as integers in one unit, checked to sum to 1 in tolerance."""
    weight_nums, weight_den = _over_common_denominator(
        [weight_ratios.get(a, (0, 1)) for a in accounts]
    )
    weight_sum = sum(weight_nums)
    if weight_sum == 0:
        raise ValueError("weights must have at least one account with a positive weight")
    if abs(weight_sum - weight_den) * _TOLERANCE_DENOMINATOR > weight_den:
        total = float(Fraction(weight_sum, weight_den))
        raise ValueError(f"weights must sum to 1 (within {WEIGHT_SUM_TOLERANCE}), got {total!r}")
    return weight_nums


def _exact_ratio(what: str, number: object) -> tuple[int, int]:
    """The exact (numerator, denominator) of a real number; ValueError if it is not one."""
    if type(number) is int:
        return number, 1
    if isinstance(number, bool) or not isinstance(number, int | float | Rational | Decimal):
        raise ValueError(f"{what} must be a number, got {number!r}")
    if isinstance(number, Decimal) and not number.is_finite():
        raise ValueError(f"{what} must be finite, got {number!r}")
    if isinstance(number, float) and not math.isfinite(number):
        raise ValueError(f"{what} must be finite, got {number!r}")
    if isinstance(number, Rational):
        return int(number.numerator), int(number.denominator)
    return number.as_integer_ratio()


def _over_common_denominator(ratios: list[tuple[int, int]]) -> tuple[list[int], int]:
    """Numerators of `ratios` rewritten over their least common denominator, and it."""
    den = math.lcm(*(d for _, d in ratios))
    return [num * (den // d) for num, d in ratios], den
