"""The allocation maths: split one fill into whole shares across accounts, exactly.

For a fill of q shares at price p, with book values V_i, total V and target fractions w_i,
choose whole x_i >= 0 summing to q that minimise

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

Accounts with w_i = 0 never receive shares: their first marginal step costs at least as
much as a whole share above target, while some positive-weight account is always below
its target until all q shares are placed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from decimal import Decimal
from fractions import Fraction
from numbers import Rational

__all__ = ["allocate", "allocate_integral", "name_ranks", "WEIGHT_SUM_TOLERANCE"]

_INFINITY = float("inf")

#: Weights must sum to 1 within this; they are then normalised exactly.
WEIGHT_SUM_TOLERANCE = 1e-6
_TOLERANCE_DENOMINATOR = 10**6  # 1 / WEIGHT_SUM_TOLERANCE, for an exact integer test


def allocate(
    values: Mapping[str, float],
    weights: Mapping[str, float],
    price: float,
    quantity: int,
) -> dict[str, int]:
    """Return the optimal whole-share split of `quantity` shares at `price`.

    `values` maps account -> current book value (>= 0), `weights` maps account -> target
    fraction (summing to 1 within WEIGHT_SUM_TOLERANCE; normalised exactly). Numbers may be
    int, float, Fraction or Decimal and are used at their exact value. The result has every
    account of `values` or `weights`, zeros included. Raises ValueError on bad arguments.
    """
    _check_quantity(quantity)
    price_ratio = _exact_ratio("price", price)
    if price_ratio[0] <= 0:
        raise ValueError(f"price must be > 0, got {price!r}")
    value_ratios = _ratios("value", values)
    weight_ratios = _ratios("weight", weights)

    accounts = sorted(values.keys() | weights.keys())
    zero = (0, 1)
    money, _ = _over_common_denominator(
        [value_ratios.get(a, zero) for a in accounts] + [price_ratio]
    )
    weight_nums, weight_den = _over_common_denominator(
        [weight_ratios.get(a, zero) for a in accounts]
    )
    weight_sum = sum(weight_nums)
    if weight_sum == 0:
        raise ValueError("weights must have at least one account with a positive weight")
    if abs(weight_sum - weight_den) * _TOLERANCE_DENOMINATOR > weight_den:
        total = float(Fraction(weight_sum, weight_den))
        raise ValueError(f"weights must sum to 1 (within {WEIGHT_SUM_TOLERANCE}), got {total!r}")

    ranks = list(range(len(accounts)))  # `accounts` is already sorted by name
    shares = allocate_integral(accounts, money[:-1], weight_nums, money[-1], quantity, ranks)
    return dict(zip(accounts, shares, strict=True))


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
        kind = type(number)
        if kind is float and number >= 0 and number != _INFINITY:  # the common case, fast
            ratios[account] = number.as_integer_ratio()
        else:
            ratio = _exact_ratio(f"{what} of account {account!r}", number)
            if ratio[0] < 0:
                raise ValueError(f"{what} of account {account!r} must be >= 0, got {number!r}")
            ratios[account] = ratio
        if type(account) is not str or not account:
            _check_account(account)
    return ratios


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
        return number.numerator, number.denominator
    return number.as_integer_ratio()


def _over_common_denominator(ratios: list[tuple[int, int]]) -> tuple[list[int], int]:
    """Numerators of `ratios` rewritten over their least common denominator, and it."""
    den = math.lcm(*(d for _, d in ratios))
    return [num * (den // d) for num, d in ratios], den
