"""The AUM simulator's splits: drifting by default, fully independent on request."""

from __future__ import annotations

import random
from statistics import mean

import pytest

from aumsim import cli
from aumsim.splits import (
    DEFAULT_DRIFT,
    INDEPENDENT,
    SplitWalk,
    account_names,
    drifted_split,
    random_split,
)

ACCOUNTS = account_names(5)


def valid(split: dict[str, float]) -> bool:
    """Every percent at least 0.01, at two decimals, summing to exactly 100.00."""
    points = {a: round(p * 100) for a, p in split.items()}
    exact = all(abs(points[a] - 100 * p) < 1e-6 for a, p in split.items())
    return exact and min(points.values()) >= 1 and sum(points.values()) == 10_000


def test_the_first_split_is_the_seeded_random_split():
    assert SplitWalk(ACCOUNTS, seed=3).next() == random_split(random.Random(3), ACCOUNTS)
    assert SplitWalk(ACCOUNTS, INDEPENDENT, seed=3).next() == random_split(
        random.Random(3), ACCOUNTS
    )


def test_a_drifted_split_moves_the_asked_share_of_the_way():
    old = {"A": 70.0, "B": 20.0, "C": 10.0}
    fresh = {"A": 10.0, "B": 20.0, "C": 60.0, "D": 10.0}  # D joins, starting from 0
    split = drifted_split(old, fresh, 0.25)
    assert valid(split) and list(split) == ["A", "B", "C", "D"]
    for account, percent in split.items():
        expected = 0.75 * old.get(account, 0.0) + 0.25 * fresh[account]
        assert percent == pytest.approx(expected, abs=0.05)
    assert drifted_split(old, fresh, 1.0) == pytest.approx(fresh, abs=0.01)
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="drift"):
            drifted_split(old, fresh, bad)


def steps(drift: float, count: int = 100, seed: int = 11) -> list[float]:
    """The largest change of any account's target from one split to the next, in points."""
    walk = SplitWalk(account_names(5), drift, seed)
    splits = [walk.next() for _ in range(count)]
    assert all(valid(s) for s in splits)
    return [max(abs(b[a] - s[a]) for a in s) for s, b in zip(splits, splits[1:], strict=False)]


def test_by_default_targets_drift_in_small_steps_instead_of_jumping():
    drifting, independent = steps(DEFAULT_DRIFT), steps(INDEPENDENT)
    assert mean(drifting) < 0.3 * mean(independent)
    assert max(drifting) < 10.0 < max(independent)


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--drift", "0"], "--drift must be more than 0"),
        (["--drift", "1.5"], "--drift must be more than 0"),
    ],
)
def test_bad_drift_exits_2(argv, says, capsys):
    assert cli.main([*argv, "--count", "1"]) == 2
    assert says in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv", [["--drift", "0.5", "--independent"], ["--indep"], ["--dri", "0.5"]]
)
def test_conflicting_or_abbreviated_flags_are_refused(argv):
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
