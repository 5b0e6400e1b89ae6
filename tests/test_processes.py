"""Real processes and real signals: the controller alone (the launcher: test_launcher.py)."""

from __future__ import annotations

import signal
from fractions import Fraction

import pytest
import zmq
from helpers import collect, start_controller, wait_for

from common.history import recover
from common.protocol import (
    PRICE_SCALE,
    TOPIC_ALLOCATION,
    TOPIC_POSITIONS,
    TOPIC_REJECTED,
    fill_message,
    pack,
    split_message,
)
from controller.allocator import allocate


def next_snapshot(sub, after_seq=0, timeout=10.0):
    def poll():
        for topic, body in collect(sub, 50):
            if topic == TOPIC_POSITIONS and body["seq"] > after_seq:
                return body
        return None

    return wait_for(poll, timeout, "a positions snapshot")


def test_controller_process_allocates_exactly_and_answers_bad_input(ctx, tmp_path):
    controller, inputs, publish = start_controller(tmp_path)
    try:
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(publish)
        next_snapshot(sub)  # connected and subscribed
        push = ctx.socket(zmq.PUSH)
        push.connect(inputs)
        split = {"A": 50.5, "B": 30.25, "C": 19.25}
        fills = [
            ("AAPL", 189.37, 1000),
            ("MSFT", 420.0, 333),
            ("AAPL", 190.01, 7),
            ("V", 280.5, 10**9),
        ]
        push.send(pack(split_message("aum", 1, split)))
        for seq, (ticker, price, quantity) in enumerate(fills, 1):
            push.send(pack(fill_message("desk", seq, ticker, price, quantity)))
        bad = [
            b"\x92\x01\x02",  # a msgpack list
            pack(
                {
                    "type": "fill",
                    "source": "desk",
                    "seq": 5,
                    "ticker": "AAPL",
                    "price": True,
                    "quantity": 1,
                }
            ),
            pack(
                {
                    "type": "fill",
                    "source": "desk",
                    "seq": 6,
                    "ticker": "AAPL",
                    "price": 1.0,
                    "quantity": 3.5,
                }
            ),
            pack({"type": "split", "source": "aum", "seq": 2, "splits": {"A": 50, "B": 49}}),
        ]
        for raw in bad:
            push.send(raw)
        push.send(pack(fill_message("desk", 7, "XOM", 115.25, 50)))

        events = []
        wait_for(
            lambda: (
                events.extend(collect(sub, 50))
                or sum(t == TOPIC_ALLOCATION for t, _ in events) == 5
                and sum(t.startswith(TOPIC_REJECTED) for t, _ in events) == 4
            ),
            15,
            "all events",
        )
        allocations = [b for t, b in events if t == TOPIC_ALLOCATION]
        reasons = [b["reason"] for t, b in events if t.startswith(TOPIC_REJECTED)]
        assert "must be a msgpack map" in reasons[0]
        assert "price must be a number" in reasons[1]
        assert "quantity must be a whole number" in reasons[2]
        assert "percentages sum to 99" in reasons[3]

        # Every allocation is the exact optimum given the values before it.
        values = {a: Fraction(0) for a in split}
        weights = {a: Fraction(p).limit_denominator(10**6) / 100 for a, p in split.items()}
        for event in allocations:
            price = Fraction(round(event["price"] * PRICE_SCALE), PRICE_SCALE)
            expected = allocate(values, weights, price, event["quantity"])
            assert event["allocations"] == {a: n for a, n in expected.items() if n}
            for account, shares in expected.items():
                values[account] += price * shares

        # The snapshot is the sum of the allocations.
        snapshot = next_snapshot(sub, 0)
        for account, row in snapshot["accounts"].items():
            for ticker, held in row["positions"].items():
                assert held == sum(
                    e["allocations"].get(account, 0) for e in allocations if e["ticker"] == ticker
                )
            assert row["value"] == pytest.approx(float(values[account]), rel=1e-12)
        assert snapshot["counts"]["fills"] == 5 and snapshot["counts"]["rejected"] == 4
    finally:
        controller.process.send_signal(signal.SIGTERM)
        assert controller.wait(15) == 0
    assert "stopped" in controller.stderr
    state = recover(tmp_path / "journal", tmp_path / "journal.checkpoint", ["AAPL"])
    assert state.book.fills_allocated == 5
    dead = (tmp_path / "journal.rejected.jsonl").read_text().splitlines()
    assert len(dead) == 4


def test_controller_refuses_a_corrupt_journal(tmp_path):
    (tmp_path / "journal").write_bytes(b"not a journal at all")
    controller, _, _ = start_controller(tmp_path)
    assert controller.wait(15) == 2
    assert "not a journal" in controller.stderr
