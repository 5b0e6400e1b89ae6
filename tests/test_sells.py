"""Sells without shorting, through the book, the engine and a real controller process: each
sell at the exact optimum of the bounded rule, never an account below zero, an over-sell
rejected with a reason and no change, and the snapshot equal to the sum of the events."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest
import zmq
from helpers import collect, start_controller, wait_for
from hypothesis import given, settings
from hypothesis import strategies as st

from common.protocol import (
    BUY,
    DEFAULT_TICKERS,
    PRICE_SCALE,
    SELL,
    TOPIC_ALLOCATION,
    TOPIC_POSITIONS,
    Allocated,
    Fill,
    Invalid,
    Rejected,
    build_split,
    fill_message,
    pack,
    split_message,
    validate,
)
from controller.allocator import allocate, allocate_sell
from controller.book import MARKET, Book
from controller.snapshot import build_snapshot

TICKERS = ("AAPL", "MSFT")


def fill(seq: int, quantity: int, side: str = BUY, price: int = 100, ticker: str = "AAPL"):
    return Fill("desk", seq, ticker, price * PRICE_SCALE, quantity, side)


def split(seq: int, percents: dict[str, float]):
    return build_split("aum", seq, percents)


def independent(book: Book, f: Fill) -> dict[str, int]:
    """The fill allocated by the public API on exact fractions from the book's state."""
    assert book.split is not None
    total = sum(book.split.weights)
    weights = {
        a: Fraction(w, total) for a, w in zip(book.split.accounts, book.split.weights, strict=True)
    }
    values = {
        a: Fraction(v, PRICE_SCALE) for a, v in zip(book.accounts, book.valued(), strict=True)
    }
    if book.valuation == MARKET:  # the fill's price is the ticker's price before allocating
        prices = dict(book.last_price, **{f.ticker: f.price_units})
        values = {
            a: Fraction(sum(n * prices[t] for t, n in held.items()), PRICE_SCALE)
            for a, held in zip(book.accounts, book.positions, strict=True)
        }
    price = Fraction(f.price_units, PRICE_SCALE)
    if f.side == SELL:
        held = {a: p.get(f.ticker, 0) for a, p in zip(book.accounts, book.positions, strict=True)}
        shares = allocate_sell(values, weights, price, f.quantity, held)
    elif min(values.values()) >= 0:
        shares = allocate(values, weights, price, f.quantity)
    else:  # net cash can be negative after selling at a profit: greedy, one share at a time
        shares = greedy_buy(values, weights, price, f.quantity)
    return {a: n for a, n in shares.items() if n}


def greedy_buy(values, weights, price, quantity) -> dict[str, int]:
    """Each share to the account with the smallest marginal cost, ties by name."""
    total = sum(values.values()) + price * quantity
    shares = dict.fromkeys(values, 0)
    for _ in range(quantity):
        cost = {
            a: values[a] + price * (shares[a] + Fraction(1, 2)) - weights.get(a, 0) * total
            for a in values
            if weights.get(a, 0)
        }
        chosen = min(cost, key=lambda a: (cost[a], a))
        shares[chosen] += 1
    return shares


# -- the protocol --------------------------------------------------------------------------
def test_side_is_buy_by_default_sell_when_said_and_nothing_else():
    base = fill_message("desk", 1, "AAPL", 10.0, 5)
    assert validate(pack(base), set(TICKERS)).side == BUY
    assert validate(pack({**base, "side": "sell"}), set(TICKERS)).side == SELL
    assert validate(pack({**base, "side": "buy"}), set(TICKERS)).side == BUY
    # A bin "sell" is text too (docs/protocol.md, encodings); bin that is not UTF-8 is not.
    assert validate(pack({**base, "side": b"sell"}), set(TICKERS)).side == SELL
    for bad in ("SELL", "short", "", 1, None, b"\xff"):
        with pytest.raises(Invalid, match="side must be 'buy' or 'sell'"):
            validate(pack({**base, "side": bad}), set(TICKERS))


# -- the book ------------------------------------------------------------------------------
def test_a_sell_takes_from_the_accounts_furthest_above_target_first():
    book = Book(TICKERS)
    book.apply(split(1, {"a": 50, "b": 50}))
    book.apply(fill(1, 100))
    book.apply(split(2, {"a": 10, "b": 90}))  # a is now far above its target
    (decision,) = book.apply(fill(2, 40, SELL))
    assert type(decision) is Allocated and decision.fill.side == SELL
    assert decision.shares == {"a": 40}
    assert book.positions[0]["AAPL"] == 10


def test_an_over_sell_is_rejected_with_a_reason_and_changes_nothing():
    book = Book(TICKERS)
    book.apply(split(1, {"a": 50, "b": 50}))
    book.apply(fill(1, 320))
    before = book.to_state()
    (decision,) = book.apply(fill(2, 500, SELL, price=120))
    assert decision == Rejected("desk", 2, "sell of 500 AAPL exceeds the 320 held across accounts")
    after = book.to_state()
    assert after.pop("counts") != before.pop("counts")  # only the rejection is counted
    assert after == before  # not even the last price moved
    assert book.rejected == 1


def test_a_sell_before_the_first_split_waits_and_is_checked_when_released():
    book = Book(TICKERS)
    assert [type(d).__name__ for d in book.apply(fill(1, 5, SELL))] == ["Held"]
    decisions = book.apply(split(1, {"a": 100}))
    assert [type(d).__name__ for d in decisions] == ["SplitApplied", "Rejected"]
    assert "exceeds the 0 held" in decisions[1].reason


def test_a_whole_holding_can_be_sold_and_positions_never_go_negative():
    book = Book(TICKERS)
    book.apply(split(1, {"a": 30, "b": 70}))
    book.apply(fill(1, 77))
    (decision,) = book.apply(fill(2, 77, SELL))
    assert sum(decision.shares.values()) == 77
    assert book.positions == [{}, {}]
    assert book.values == [0, 0]


steps = st.lists(
    st.tuples(
        st.sampled_from(["buy", "buy", "sell", "split"]),
        st.integers(1, 400),
        st.integers(1, 300),
        st.sampled_from(TICKERS),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(steps=steps, valuation=st.sampled_from(["book", "market"]), seed=st.integers(0, 10**6))
def test_random_days_of_buys_sells_and_splits_are_exact_and_never_short(steps, valuation, seed):
    rng = random.Random(seed)
    book = Book(TICKERS, valuation=valuation)
    book.apply(split(1, {"a": 40, "b": 35, "c": 25}))
    splits, seq = 1, 0
    for kind, quantity, price, ticker in steps:
        if kind == "split":
            splits += 1
            accounts = rng.sample(["a", "b", "c", "d"], rng.randint(1, 4))
            raw = [rng.randint(0, 10) for _ in accounts]
            if not any(raw):
                raw[0] = 1
            book.apply(
                split(splits, {a: 100 * r / sum(raw) for a, r in zip(accounts, raw, strict=True)})
            )
            continue
        seq += 1
        f = fill(seq, quantity, SELL if kind == "sell" else BUY, price, ticker)
        held = sum(p.get(ticker, 0) for p in book.positions)
        if f.side == SELL and quantity > held:
            before = book.to_state()
            (decision,) = book.apply(f)
            assert type(decision) is Rejected
            assert {k: v for k, v in book.to_state().items() if k != "counts"} == {
                k: v for k, v in before.items() if k != "counts"
            }
            continue
        expected = independent(book, f)
        (decision,) = book.apply(f)
        assert decision.shares == expected
        assert all(n >= 0 for held in book.positions for n in held.values())


# -- a real controller process -------------------------------------------------------------
def test_a_controller_process_allocates_buys_and_sells_exactly(tmp_path):
    """Buys and sells from two sources with split changes between them; the events replayed
    through a reference book give the same shares, and the snapshot is their sum."""
    running, inputs, publish = start_controller(tmp_path, "0.2")
    ctx = zmq.Context()
    try:
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(publish)
        events: list = []
        wait_for(
            lambda: events.extend(collect(sub, 50)) or any(t == TOPIC_POSITIONS for t, _ in events),
            20,
            "a snapshot (the subscriber is joined)",
        )
        events.clear()
        push = ctx.socket(zmq.PUSH)
        push.connect(inputs)
        rng = random.Random(7)
        messages, seqs = [], {"desk-1": 0, "desk-2": 0}
        messages.append(split_message("aum", 1, {"a": 50, "b": 30, "c": 20}))
        held = 0
        for n in range(120):
            if n in (40, 80):
                messages.append(
                    split_message(
                        "aum",
                        2 + n // 80,
                        {"a": 10, "b": 20, "c": 70} if n == 40 else {"b": 60, "d": 40},
                    )
                )
            source = f"desk-{1 + n % 2}"
            seqs[source] += 1
            selling = n > 10 and held > 0 and rng.random() < 0.4
            quantity = rng.randint(1, 300)
            if selling:
                quantity = min(quantity, held) if n % 17 else held + 50  # now and then too much
            side = "sell" if selling else None
            messages.append(
                fill_message(
                    source, seqs[source], "AAPL", rng.randint(90, 110) + 0.25, quantity, side
                )
            )
            if not selling:
                held += quantity
            elif quantity <= held:
                held -= quantity
        expected = {"desk-1": seqs["desk-1"], "desk-2": seqs["desk-2"], "aum": 3}
        for message in messages:
            push.send(pack(message))

        def all_answered() -> bool:
            events.extend(collect(sub, 50))
            acks = {b["source"]: b["seq"] for t, b in events if t.startswith(b"ack:")}
            return all(acks.get(s, 0) >= q for s, q in expected.items())

        wait_for(all_answered, 30, "every message acknowledged")
        reference = Book(DEFAULT_TICKERS)
        allocations = [b for t, b in events if t == TOPIC_ALLOCATION]
        rejected = [b for t, b in events if t.startswith(b"rejected:")]
        by_key = {(b["source"], b["seq"]): b for b in allocations}
        seen_over_sell = False
        for message in messages:
            if message["type"] == "split":
                reference.apply(build_split(message["source"], message["seq"], message["splits"]))
                continue
            f = validate(pack(message), {"AAPL"})
            (decision,) = reference.apply(f)
            if type(decision) is Rejected:
                seen_over_sell = True
                assert (f.source, f.seq) not in by_key
                assert any(r["seq"] == f.seq and "exceeds the" in r["reason"] for r in rejected)
                continue
            published = by_key[(f.source, f.seq)]
            assert published["side"] == f.side
            assert published["allocations"] == decision.shares
        assert seen_over_sell
        assert all(n >= 0 for held in reference.positions for n in held.values())

        def snapshot_after() -> dict | None:
            events.extend(collect(sub, 50))
            snaps = [b for t, b in events if t == TOPIC_POSITIONS]
            return (
                snaps[-1]
                if snaps and snaps[-1]["counts"]["fills"] == reference.fills_allocated
                else None
            )

        snapshot = wait_for(snapshot_after, 20, "a snapshot with every fill")
        expected_snapshot = build_snapshot(reference).to_body()
        for account, row in expected_snapshot["accounts"].items():
            assert snapshot["accounts"][account]["positions"] == row["positions"]
            assert snapshot["accounts"][account]["value"] == row["value"]
        net = {}
        for body in allocations:
            sign = -1 if body["side"] == SELL else 1
            for account, count in body["allocations"].items():
                net[account] = net.get(account, 0) + sign * count
        for account, row in snapshot["accounts"].items():
            assert row["positions"]["AAPL"] == net.get(account, 0) >= 0
    finally:
        running.process.terminate()
        running.wait(30)
        ctx.destroy(linger=0)


def test_over_sells_are_dead_lettered_like_every_rejection(tmp_path):
    """Both the over-sell refused at once and the one refused when a split released it."""
    import json

    from controller.deadletter import DeadLetters
    from controller.engine import Engine

    dead = DeadLetters(tmp_path / "dead.jsonl")
    engine = Engine(Book(TICKERS), deadletters=dead)
    engine.receive(pack(fill_message("desk", 1, "AAPL", 10.0, 5, "sell")))  # waits
    engine.receive(pack(split_message("aum", 1, {"a": 100})))  # releases it: refused
    engine.receive(pack(fill_message("desk", 2, "AAPL", 10.0, 5)))
    engine.receive(pack(fill_message("desk", 3, "AAPL", 10.5, 50, "sell")))  # refused
    engine.commit()
    dead.close()
    lines = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert [(d["source"], d["seq"]) for d in lines] == [("desk", 1), ("desk", 3)]
    assert "exceeds the 0 held" in lines[0]["reason"]
    assert "sell of 50 AAPL exceeds the 5 held" in lines[1]["reason"]
    resent = validate(bytes.fromhex(lines[1]["raw_hex"]), set(TICKERS))
    assert (resent.side, resent.quantity, resent.price_units) == (SELL, 50, 10_500_000)
