"""Account splits for the AUM simulator: every percentage > 0, summing to exactly 100.00.

By default AUM drifts: each new split moves part of the way (`DEFAULT_DRIFT`) from the
previous one towards a fresh random split, as client money moves in a real book. With a
drift of 1 every split is fully independent of the one before. Allocations already made
never move (the controller only adds shares), so after a jump in targets the accounts
close their gap only as new fills arrive: small steps keep the desk close to target,
independent splits leave deviations that take many fills to close.
"""

from __future__ import annotations

import random

BASIS_POINTS = 10_000  # 100.00 % in hundredths of a percent
DEFAULT_DRIFT = 0.05  # the share of the way towards a fresh random split each step moves
INDEPENDENT = 1.0  # a drift of 1: every split is a fresh random one


def account_names(count: int) -> list[str]:
    width = max(2, len(str(count)))
    return [f"ACC-{i:0{width}d}" for i in range(1, count + 1)]


def random_split(rng: random.Random, accounts: list[str]) -> dict[str, float]:
    """Random weights rounded to 0.01 % by largest remainder, each at least 0.01 %."""
    _check_count(accounts)
    return to_percents(accounts, [rng.uniform(1.0, 10.0) for _ in accounts])


def drifted_split(old: dict[str, float], fresh: dict[str, float], drift: float) -> dict[str, float]:
    """The split `drift` of the way from `old` to `fresh` (accounts new in `fresh` start
    from 0, accounts absent from it leave), each at least 0.01 %, summing to 100.00."""
    if not 0 < drift <= 1:
        raise ValueError(f"drift must be more than 0 and at most 1, got {drift}")
    accounts = list(fresh)
    _check_count(accounts)
    return to_percents(
        accounts, [(1 - drift) * old.get(a, 0.0) + drift * fresh[a] for a in accounts]
    )


def to_percents(accounts: list[str], raw: list[float]) -> dict[str, float]:
    """Positive `raw` weights as percents at two decimals: one basis point each reserved,
    the rest shared in proportion and rounded by largest remainder (ties to the first)."""
    spare = BASIS_POINTS - len(accounts)
    scaled = [spare * r / sum(raw) for r in raw]
    points = [int(s) for s in scaled]
    by_remainder = sorted(range(len(accounts)), key=lambda i: (points[i] - scaled[i], i))
    for i in by_remainder[: spare - sum(points)]:
        points[i] += 1
    return {a: (p + 1) / 100 for a, p in zip(accounts, points, strict=True)}


class SplitWalk:
    """The simulator's splits in order: a random one first, then each `drift` of the way
    from the last towards a fresh random one (`drift` 1: independent splits)."""

    def __init__(
        self, accounts: list[str], drift: float = DEFAULT_DRIFT, seed: int | None = None
    ) -> None:
        if not 0 < drift <= 1:
            raise ValueError(f"drift must be more than 0 and at most 1, got {drift}")
        _check_count(accounts)
        self.accounts = accounts
        self.drift = drift
        self.rng = random.Random(seed)
        self.last: dict[str, float] | None = None

    def next(self) -> dict[str, float]:
        fresh = random_split(self.rng, self.accounts)
        self.last = fresh if self.last is None else drifted_split(self.last, fresh, self.drift)
        return self.last


def _check_count(accounts: list[str]) -> None:
    if not 1 <= len(accounts) <= BASIS_POINTS:
        raise ValueError(f"need 1 to {BASIS_POINTS} accounts, got {len(accounts)}")
