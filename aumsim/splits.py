"""Random account splits: every percentage > 0, summing to exactly 100.00 at two decimals."""

from __future__ import annotations

import random

BASIS_POINTS = 10_000  # 100.00 % in hundredths of a percent


def account_names(count: int) -> list[str]:
    width = max(2, len(str(count)))
    return [f"ACC-{i:0{width}d}" for i in range(1, count + 1)]


def random_split(rng: random.Random, accounts: list[str]) -> dict[str, float]:
    """Random weights rounded to 0.01 % by largest remainder, each at least 0.01 %."""
    if not 1 <= len(accounts) <= BASIS_POINTS:
        raise ValueError(f"need 1 to {BASIS_POINTS} accounts, got {len(accounts)}")
    raw = [rng.uniform(1.0, 10.0) for _ in accounts]
    spare = BASIS_POINTS - len(accounts)  # one basis point each is reserved
    scaled = [spare * r / sum(raw) for r in raw]
    points = [int(s) for s in scaled]
    by_remainder = sorted(range(len(accounts)), key=lambda i: (points[i] - scaled[i], i))
    for i in by_remainder[: spare - sum(points)]:
        points[i] += 1
    return {a: (p + 1) / 100 for a, p in zip(accounts, points, strict=True)}
