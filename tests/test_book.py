"""Tests for controller.book.Book against an exact reference built on allocate()."""

from __future__ import annotations

from fractions import Fraction

import msgpack
import pytest
from helpers import meant
from hypothesis import given, settings
from hypothesis import strategies as st

from common.protocol import PRICE_SCALE, Allocated, Fill, Rejected, Split, build_split
from controller.allocator import allocate
from controller.book import Book
from controller.snapshot import build_snapshot

TICKERS = ("AAPL", "MSFT", "XOM")


def fill(ticker: str, price: str | int, quantity: int, seq: int = 1, source: str = "f") -> Fill:
    """A Fill at an exact decimal price given as a string ("12.5")."""
    units = Fraction(price) * PRICE_SCALE
    assert units.denominator == 1
    return Fill(source, seq, ticker, int(units), quantity)


def split(percents: dict[str, float], seq: int = 1, source: str = "aum"):
    return build_split(source, seq, percents)


def apply_fill(book: Book, f: Fill) -> Allocated | None:
    """Apply a fill through Book.apply: its allocation, or None if it was held."""
    (decision,) = book.apply(f)
    return decision if type(decision) is Allocated else None


def apply_split(book: Book, s: Split) -> list[Allocated]:
    """Apply a split through Book.apply: the allocations of the fills it released."""
    decisions = book.apply(s)
    return [d for d in decisions if type(d) is Allocated]


NO_DELIVERY = {
    "refused": 0,
    "duplicates": 0,
    "gaps": 0,
    "held": 0,
    "dropped": 0,
    "peers_rejected": 0,
}


def snapshot_of(book: Book) -> dict:
    return build_snapshot(book).to_body()


def reject(book: Book) -> None:
    assert book.apply(Rejected("f", 99, "bad")) == [Rejected("f", 99, "bad")]


class Reference:
    """The book's job redone with allocate() on exact Fractions, one fill at a time."""

    def __init__(self) -> None:
        self.values: dict[str, Fraction] = {}
        self.shares: dict[str, dict[str, int]] = {}
        self.weights: dict[str, Fraction] | None = None
        self.pending: list[Fill] = []

    def apply_split(self, percents: dict[str, float]) -> list[dict[str, int]]:
        exact = {a: meant(p) for a, p in percents.items()}
        total = sum(exact.values())
        self.weights = {a: p / total for a, p in exact.items()}
        for account in percents:
            self.values.setdefault(account, Fraction(0))
            self.shares.setdefault(account, {})
        released = [self._allocate(f) for f in self.pending]
        self.pending.clear()
        return released

    def apply_fill(self, f: Fill) -> dict[str, int] | None:
        if self.weights is None:
            self.pending.append(f)
            return None
        return self._allocate(f)

    def _allocate(self, f: Fill) -> dict[str, int]:
        price = Fraction(f.price_units, PRICE_SCALE)
        result = allocate(self.values, self.weights, price, f.quantity)
        for account, count in result.items():
            self.values[account] += count * price
            held = self.shares[account]
            if count:
                held[f.ticker] = held.get(f.ticker, 0) + count
        return {a: n for a, n in result.items() if n}

    def check(self, book: Book) -> None:
        """The book holds exactly what the reference computed."""
        kept = set(book.accounts)
        for account in set(self.values) - kept:  # forgotten only when it has nothing
            assert self.values[account] == 0 and not any(self.shares[account].values())
            assert self.weights.get(account, 0) == 0, account
        assert kept <= set(self.values)
        for i, account in enumerate(book.accounts):
            assert Fraction(book.values[i], PRICE_SCALE) == self.values[account], account
            assert book.positions[i] == self.shares[account], account


# -- pending fills -------------------------------------------------------------------------
def test_fills_before_the_first_split_wait_in_order_then_are_allocated():
    book = Book(TICKERS)
    fills = [
        fill("AAPL", "187.25", 100, seq=1),
        fill("MSFT", "410.5", 7, seq=2),
        fill("AAPL", "187.3", 33, seq=3),
        fill("XOM", "0.000001", 1_000_001, seq=4),
    ]
    for f in fills:
        assert apply_fill(book, f) is None
    assert list(book.pending) == fills
    assert book.fills_allocated == 0
    assert all(not held for held in book.positions)
    assert snapshot_of(book)["counts"]["pending"] == 4
    assert book.last_price["AAPL"] == 187_300_000  # prices are tracked while waiting

    percents = {"acct-b": 25.5, "acct-a": 44.5, "acct-c": 30}
    released = apply_split(book, split(percents))

    reference = Reference()
    for f in fills:
        assert reference.apply_fill(f) is None
    expected = reference.apply_split(percents)
    assert [a.fill for a in released] == fills  # arrival order
    assert [a.shares for a in released] == expected
    assert [sum(a.shares.values()) for a in released] == [f.quantity for f in fills]
    assert not book.pending
    assert book.fills_allocated == 4
    reference.check(book)

    # A later fill goes straight through.
    later = fill("MSFT", "411", 50, seq=5)
    allocation = apply_fill(book, later)
    assert allocation is not None and allocation.fill == later
    assert allocation.shares == reference.apply_fill(later)
    reference.check(book)
    assert snapshot_of(book)["counts"]["pending"] == 0


def test_allocations_match_allocate_step_by_step():
    book = Book(TICKERS)
    reference = Reference()
    percents = {"a": 33.33, "b": 33.33, "c": 33.34}
    assert apply_split(book, split(percents)) == []
    reference.apply_split(percents)
    for i, (ticker, price, quantity) in enumerate(
        [("AAPL", "10", 1), ("AAPL", "10.01", 2), ("MSFT", "999.999999", 5), ("XOM", "0.5", 17)] * 5
    ):
        f = fill(ticker, price, quantity, seq=i + 1)
        allocation = apply_fill(book, f)
        assert allocation.shares == reference.apply_fill(f)
        assert 0 not in allocation.shares.values()
        reference.check(book)


# -- conservation and exactness ------------------------------------------------------------
def test_shares_are_conserved_per_ticker():
    book = Book(TICKERS)
    apply_split(book, split({"a": 50, "b": 30, "c": 20}))
    sent = dict.fromkeys(TICKERS, 0)
    quantities = [1, 2, 3, 7, 11, 101, 999, 12_345]
    for i, quantity in enumerate(quantities * 3):
        ticker = TICKERS[i % 2]  # XOM never trades
        apply_fill(book, fill(ticker, f"{10 + i}.25", quantity, seq=i + 1))
        sent[ticker] += quantity
        if i == 10:
            apply_split(book, split({"b": 10, "c": 60, "d": 30}, seq=2))
    assert book.total_shares() == sent
    assert sent["XOM"] == 0
    for ticker in TICKERS:
        assert sum(held.get(ticker, 0) for held in book.positions) == sent[ticker]
    assert snapshot_of(book)["totals"]["positions"] == sent


def test_values_are_exact_integers_with_no_drift():
    book = Book(TICKERS)
    apply_split(book, split({"only": 100}))
    for seq in (1, 2, 3):
        apply_fill(book, fill("AAPL", "0.1", 1, seq=seq))
    assert 0.1 + 0.1 + 0.1 != 0.3  # what floats would have given
    assert book.values == [300_000]
    assert type(book.values[0]) is int
    snapshot = snapshot_of(book)
    assert snapshot["accounts"]["only"]["value"] == 0.3
    assert snapshot["totals"]["value"] == 0.3


def test_values_are_exact_across_many_accounts():
    book = Book(TICKERS)
    apply_split(book, split({"a": 33.33, "b": 33.33, "c": 33.34}))
    for seq in range(1, 1001):
        apply_fill(book, fill("AAPL", "0.1", 7, seq=seq))
    assert sum(book.values) == 7000 * 100_000
    for i, held in enumerate(book.positions):
        assert book.values[i] == held["AAPL"] * 100_000
    assert snapshot_of(book)["totals"]["value"] == 700.0


def test_dropped_accounts_get_nothing_more_but_keep_positions():
    book = Book(TICKERS)
    apply_split(book, split({"a": 50, "b": 50}))
    for seq in range(1, 6):
        apply_fill(book, fill("AAPL", "100", 10, seq=seq))
    a = book.accounts.index("a")
    kept_positions = dict(book.positions[a])
    kept_value = book.values[a]
    assert kept_positions == {"AAPL": 25}

    apply_split(book, split({"b": 50, "c": 50}, seq=2))
    for seq in range(6, 20):
        allocation = apply_fill(book, fill("MSFT", "3.5", 9, seq=seq))
        assert "a" not in allocation.shares
    assert book.positions[a] == kept_positions
    assert book.values[a] == kept_value
    assert book.accounts == ["a", "b", "c"]

    snapshot = snapshot_of(book)
    assert snapshot["accounts"]["a"]["positions"] == {"AAPL": 25, "MSFT": 0, "XOM": 0}
    assert snapshot["accounts"]["a"]["target"] == 0.0
    assert snapshot["totals"]["positions"] == {"AAPL": 50, "MSFT": 14 * 9, "XOM": 0}


def test_zero_percent_account_exists_but_gets_nothing_and_survives_a_checkpoint():
    book = Book(TICKERS)
    apply_split(book, split({"a": 100, "z": 0}))
    allocation = apply_fill(book, fill("AAPL", "1", 1000))
    assert allocation.shares == {"a": 1000}
    assert snapshot_of(book)["accounts"]["z"]["positions"] == dict.fromkeys(TICKERS, 0)
    assert Book.from_state(book.to_state()) == book  # the split still names "z"
    apply_split(book, split({"a": 100}, seq=2))
    assert book.accounts == ["a"]  # out of the split with nothing: forgotten


def test_splits_naming_ever_new_accounts_do_not_grow_the_book():
    """Accounts that hold nothing and have no target are forgotten at the next split, so a
    stream of splits with fresh names keeps the book (and its snapshots) small."""
    book = Book(TICKERS)
    apply_split(book, split({"a": 100}))
    apply_fill(book, fill("AAPL", "10", 10))
    for seq in range(2, 22):
        names = {f"new-{seq}-{n}": 0.01 for n in range(1000)}
        names["a"] = 100 - 10
        apply_split(book, split(names, seq=seq))
    assert len(book.accounts) <= 1001
    assert len(snapshot_of(book)["accounts"]) <= 1001
    apply_split(book, split({"a": 100}, seq=22))
    assert book.accounts == ["a"]


# -- snapshot ------------------------------------------------------------------------------
def test_snapshot_fields():
    book = Book(TICKERS)
    apply_split(book, split({"a": 60, "b": 40}, seq=7, source="aum-1"))
    assert apply_fill(book, fill("AAPL", "10", 100)).shares == {"a": 60, "b": 40}
    assert apply_fill(book, fill("AAPL", "12.5", 10)).shares == {"a": 6, "b": 4}
    assert apply_fill(book, fill("MSFT", "3", 5)).shares == {"a": 3, "b": 2}
    reject(book)

    snapshot = snapshot_of(book)
    assert snapshot["accounts"] == {
        "a": {
            "positions": {"AAPL": 66, "MSFT": 3, "XOM": 0},
            "value": 684.0,
            "market_value": 66 * 12.5 + 3 * 3,
            "weight": 60.0,
            "target": 60.0,
            "deviation": 0.0,
        },
        "b": {
            "positions": {"AAPL": 44, "MSFT": 2, "XOM": 0},
            "value": 456.0,
            "market_value": 44 * 12.5 + 2 * 3,
            "weight": 40.0,
            "target": 40.0,
            "deviation": 0.0,
        },
    }
    assert snapshot["prices"] == {"AAPL": 12.5, "MSFT": 3.0}
    assert snapshot["totals"] == {
        "positions": {"AAPL": 110, "MSFT": 5, "XOM": 0},
        "value": 1140.0,
        "market_value": 1390.0,
    }
    assert snapshot["counts"] == {
        "fills": 3,
        "splits": 1,
        "rejected": 1,
        "pending": 0,
        **NO_DELIVERY,
    }
    assert snapshot["split"] == {"source": "aum-1", "seq": 7}

    # A new split moves targets and deviations, not weights or values.
    apply_split(book, split({"b": 50, "c": 50}, seq=8, source="aum-1"))
    accounts = snapshot_of(book)["accounts"]
    assert {a: (v["weight"], v["target"], v["deviation"]) for a, v in accounts.items()} == {
        "a": (60.0, 0.0, 60.0),
        "b": (40.0, 50.0, -10.0),
        "c": (0.0, 50.0, -50.0),
    }
    assert accounts["c"]["positions"] == dict.fromkeys(TICKERS, 0)
    assert accounts["c"]["value"] == 0.0 and accounts["c"]["market_value"] == 0.0
    assert snapshot_of(book)["counts"]["splits"] == 2


def test_snapshot_market_value_uses_the_last_price_even_of_a_waiting_fill():
    book = Book(TICKERS)
    apply_split(book, split({"a": 100}))
    apply_fill(book, fill("AAPL", "10", 10))
    apply_fill(book, fill("AAPL", "20", 10))
    snapshot = snapshot_of(book)
    assert snapshot["accounts"]["a"]["value"] == 300.0
    assert snapshot["accounts"]["a"]["market_value"] == 400.0


def test_empty_book_snapshot():
    snapshot = snapshot_of(Book(TICKERS))
    assert snapshot["accounts"] == {}
    assert snapshot["prices"] == {}
    assert snapshot["totals"] == {
        "positions": dict.fromkeys(TICKERS, 0),
        "value": 0.0,
        "market_value": 0,
    }
    assert snapshot["counts"] == {
        "fills": 0,
        "splits": 0,
        "rejected": 0,
        "pending": 0,
        **NO_DELIVERY,
    }
    assert snapshot["split"] is None


# -- state round trip ----------------------------------------------------------------------
def _busy_book() -> Book:
    book = Book(TICKERS)
    apply_fill(book, fill("AAPL", "187.25", 100, seq=1))
    apply_split(book, split({"a": 33.33, "b": 33.33, "c": 33.34}))
    for seq in range(2, 30):
        apply_fill(book, fill(TICKERS[seq % 3], f"{seq}.123456", seq * 1_000_003, seq=seq))
    apply_split(book, split({"b": 12.5, "d": 87.5}, seq=2))
    apply_fill(book, fill("XOM", "999999.999999", 10_000_000_000, seq=30))  # huge values
    reject(book)
    return book


def _through_msgpack(state):
    """What a checkpoint does to the state."""
    packed = msgpack.packb(state, use_bin_type=True)
    return msgpack.unpackb(packed, raw=False, strict_map_key=False)


@pytest.mark.parametrize("via_msgpack", [False, True])
def test_state_round_trip_gives_an_equal_book_that_allocates_identically(via_msgpack):
    book = _busy_book()
    state = book.to_state()
    if via_msgpack:
        state = _through_msgpack(state)
    copy = Book.from_state(state)
    assert copy == book
    assert copy.accounts == book.accounts
    assert copy.values == book.values
    assert copy.weights == book.weights
    assert copy.split == book.split
    assert snapshot_of(copy) == snapshot_of(book)

    for seq in range(31, 36):
        f = fill("MSFT", "412.07", 1_234_567 + seq, seq=seq)
        assert apply_fill(copy, f) == apply_fill(book, f)
    assert copy == book
    next_split = split({"a": 20, "e": 80}, seq=3)
    assert apply_split(copy, next_split) == apply_split(book, next_split)
    f = fill("AAPL", "1", 99, seq=40)
    assert apply_fill(copy, f) == apply_fill(book, f)
    assert copy == book


def test_state_round_trip_keeps_waiting_fills():
    book = Book(TICKERS)
    for seq in range(1, 4):
        apply_fill(book, fill("AAPL", f"{seq}.5", 10 * seq, seq=seq))
    copy = Book.from_state(_through_msgpack(book.to_state()))
    assert copy == book
    assert list(copy.pending) == list(book.pending)
    assert copy.split is None
    s = split({"x": 40, "y": 60})
    assert apply_split(copy, s) == apply_split(book, s)
    assert copy == book and not copy.pending


def test_books_that_differ_are_not_equal():
    book = _busy_book()
    other = Book.from_state(book.to_state())
    apply_fill(other, fill("AAPL", "1", 1, seq=99))
    assert other != book
    assert Book(TICKERS) != "not a book"


def test_unknown_state_version_is_rejected():
    state = Book(TICKERS).to_state()
    state["version"] = 99
    with pytest.raises(ValueError, match="version 99"):
        Book.from_state(state)


def test_to_state_is_a_detached_copy():
    book = Book(TICKERS)
    apply_split(book, split({"a": 100}))
    apply_fill(book, fill("AAPL", "10", 5))
    state = book.to_state()
    apply_split(book, split({"b": 100}, seq=2))
    apply_fill(book, fill("AAPL", "10", 5, seq=2))
    assert state["accounts"] == ["a"]
    assert state["positions"] == [{"AAPL": 5}]


# -- property: the book equals allocate() replayed on exact Fractions ----------------------
POOL = ("acc-a", "acc-b", "acc-c", "acc-d", "acc-e")


@st.composite
def splits(draw):
    accounts = draw(st.lists(st.sampled_from(POOL), min_size=1, max_size=5, unique=True))
    if draw(st.booleans()):
        # Quarter-percent steps that sum to exactly 100 (zeros allowed).
        cuts = sorted(
            draw(
                st.lists(
                    st.integers(0, 400), min_size=len(accounts) - 1, max_size=len(accounts) - 1
                )
            )
        )
        edges = [0, *cuts, 400]
        percents = [(hi - lo) / 4 for lo, hi in zip(edges, edges[1:], strict=False)]
    elif draw(st.booleans()):
        # Two decimals, the last taking the remainder (like 33.33, 33.33, 33.34).
        share = round(100 / len(accounts), 2)
        percents = [share] * (len(accounts) - 1)
        percents.append(round(100 - share * len(percents), 2))
    else:
        # Equal three-decimal shares: off 100 within the tolerance (3 x 33.333 = 99.999).
        percents = [round(100 / len(accounts), 3)] * len(accounts)
    return ("split", dict(zip(accounts, percents, strict=True)))


fills = st.tuples(
    st.just("fill"),
    st.sampled_from(TICKERS),
    st.integers(1, 10**9),  # price units: up to 1,000.000000
    st.integers(1, 10**6),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(splits(), fills, fills), min_size=1, max_size=25))
def test_book_matches_allocate_on_exact_fractions(operations):
    book = Book(TICKERS)
    reference = Reference()
    sent = dict.fromkeys(TICKERS, 0)
    for seq, operation in enumerate(operations, start=1):
        if operation[0] == "split":
            percents = operation[1]
            released = apply_split(book, build_split("aum", seq, percents))
            assert [a.shares for a in released] == reference.apply_split(percents)
        else:
            _, ticker, units, quantity = operation
            f = Fill("f", seq, ticker, units, quantity)
            sent[ticker] += quantity
            allocation = apply_fill(book, f)
            expected = reference.apply_fill(f)
            assert (allocation.shares if allocation else None) == expected
        reference.check(book)
    assert list(book.pending) == reference.pending
    if book.split is not None:
        assert book.total_shares() == sent
