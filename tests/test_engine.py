"""Tests for controller.engine: validate, sequence, journal, apply, publish, recover."""

from __future__ import annotations

import json

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.history import recover as recover_state
from common.protocol import (
    TOPIC_ALLOCATION,
    Output,
    encode_output,
    fill_message,
    pack,
    read_event,
    split_message,
)
from controller.book import Book
from controller.deadletter import DeadLetters
from controller.engine import Engine
from controller.journal import JournalCorrupt, JournalWriter, read_records, records_end
from controller.snapshot import build_snapshot

TICKERS = ("AAPL", "MSFT", "XOM")


def fill(source: str, seq: int, ticker: str = "AAPL", price: float = 100.0, qty: int = 10):
    return pack(fill_message(source, seq, ticker, price, qty))


def split(source: str, seq: int, splits: dict[str, float]):
    return pack(split_message(source, seq, splits))


INSTANCE = "test-instance"
# Acks and rejections are published on per-source topics (b"ack:<source>"); the tests below
# read them by kind, after `published` has checked the topic against the body.
TOPIC_ACK = b"ack"
TOPIC_REJECTED = b"rejected"


def published(outputs: list[Output]) -> list[tuple[bytes, dict]]:
    """The outputs as the service publishes them, decoded; per-source topics checked and
    folded to their kind, the instance checked and left out."""
    events = []
    for output in outputs:
        topic, body = read_event(encode_output(output, INSTANCE))
        if topic != TOPIC_ALLOCATION:
            assert body.pop("instance") == INSTANCE
            kind, _, source = topic.partition(b":")
            assert source.decode() == body.get("source", ""), (topic, body)
            topic = kind
        events.append((topic, body))
    return events


def run(engine: Engine, *messages: bytes) -> list[tuple[bytes, dict]]:
    """Receive `messages` as one batch; the decoded events of its commit."""
    for raw in messages:
        engine.receive(raw)
    return published(engine.commit())


def new_engine(journal=None, deadletters=None) -> Engine:
    return Engine(Book(TICKERS), journal=journal, deadletters=deadletters)


def snapshot_of(engine: Engine) -> dict:
    snapshot = build_snapshot(engine.book, engine.delivery(), sources=engine.sequencer.last_seq)
    return snapshot.to_body()


def recover(journal, checkpoint, tickers) -> tuple[Engine, int]:
    """An engine recovered from a journal (and checkpoint), and the records replayed."""
    state = recover_state(journal, checkpoint, tickers)
    return Engine.from_recovered(state), state.replayed


def of(events, topic):
    return [body for t, body in events if t == topic]


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def paths(tmp_path):
    return {
        "journal": tmp_path / "controller.journal",
        "checkpoint": tmp_path / "controller.journal.checkpoint",
        "dead": tmp_path / "controller.journal.rejected.jsonl",
    }


@pytest.fixture
def engine(paths):
    journal = JournalWriter(paths["journal"])
    dead = DeadLetters(paths["dead"], clock=Clock())
    engine = new_engine(journal=journal, deadletters=dead)
    yield engine
    journal.close()
    dead.close()


# -- the happy path ------------------------------------------------------------------------
def test_split_then_fill_publishes_an_allocation_and_acks(engine):
    events = run(engine, split("aum", 1, {"a": 60, "b": 40}))
    assert events == [(TOPIC_ACK, {"source": "aum", "seq": 1})]

    events = run(engine, fill("f1", 1, "MSFT", 12.5, 100))
    assert events == [
        (
            TOPIC_ALLOCATION,
            {
                "source": "f1",
                "seq": 1,
                "ticker": "MSFT",
                "price": 12.5,
                "quantity": 100,
                "side": "buy",
                "allocations": {"a": 60, "b": 40},
            },
        ),
        (TOPIC_ACK, {"source": "f1", "seq": 1}),
    ]
    assert engine.book.positions == [{"MSFT": 60}, {"MSFT": 40}]
    assert engine.sequencer.last_seq == {"aum": 1, "f1": 1}


def test_one_ack_per_touched_source_with_its_last_seq_after_everything_else(engine):
    events = run(
        engine,
        split("aum", 1, {"a": 50, "b": 50}),
        fill("f1", 1),
        fill("f2", 1, "XOM", 3.25, 4),
        fill("f1", 2),
        fill("f1", 3),
    )
    topics = [t for t, _ in events]
    assert topics == [TOPIC_ALLOCATION] * 4 + [TOPIC_ACK] * 3
    assert sorted((a["source"], a["seq"]) for a in of(events, TOPIC_ACK)) == [
        ("aum", 1),
        ("f1", 3),
        ("f2", 1),
    ]
    assert [(a["source"], a["seq"]) for a in of(events, TOPIC_ALLOCATION)] == [
        ("f1", 1),
        ("f2", 1),
        ("f1", 2),
        ("f1", 3),
    ]
    # Only sources touched in a batch are acked in it.
    events = run(engine, fill("f2", 2))
    assert of(events, TOPIC_ACK) == [{"source": "f2", "seq": 2}]
    # acks() lists every source.
    every = sorted(body["seq"] for _, body in published(engine.acks()))
    assert every == [1, 2, 3]


def test_fills_before_the_split_wait_and_are_allocated_when_it_comes(engine):
    events = run(engine, fill("f1", 1, qty=10), fill("f1", 2, "MSFT", 5.5, 3))
    assert of(events, TOPIC_ALLOCATION) == []
    assert of(events, TOPIC_ACK) == [{"source": "f1", "seq": 2}]  # accepted, just waiting
    assert snapshot_of(engine)["counts"]["pending"] == 2

    events = run(engine, split("aum", 1, {"a": 50, "b": 50}))
    allocations = of(events, TOPIC_ALLOCATION)
    assert [(a["seq"], a["ticker"], a["allocations"]) for a in allocations] == [
        (1, "AAPL", {"a": 5, "b": 5}),
        (2, "MSFT", {"a": 2, "b": 1}),  # 1.5 shares each: the odd one goes to "a" by name
    ]
    assert events[-1] == (TOPIC_ACK, {"source": "aum", "seq": 1})
    assert snapshot_of(engine)["counts"]["pending"] == 0


# -- duplicates and order ------------------------------------------------------------------
def test_a_resent_duplicate_changes_nothing_but_is_acked(engine):
    run(engine, split("aum", 1, {"a": 50, "b": 50}), fill("f1", 1), fill("f1", 2, qty=7))
    before = Book.from_state(engine.book.to_state())
    size = engine.journal.offset

    events = run(engine, fill("f1", 1))
    assert events == [(TOPIC_ACK, {"source": "f1", "seq": 2})]
    assert engine.book == before
    assert engine.sequencer.duplicates == 1
    assert snapshot_of(engine)["counts"]["duplicates"] == 1
    assert engine.journal.offset == size  # nothing journaled

    # Even a duplicate with different content is a duplicate.
    events = run(engine, fill("f1", 2, "MSFT", 1.0, 999))
    assert of(events, TOPIC_ALLOCATION) == []
    assert engine.book == before
    assert engine.sequencer.duplicates == 2


def test_out_of_order_arrival_gives_the_same_book_as_in_order(paths):
    messages = [
        split("aum", 1, {"a": 30, "b": 70}),
        *(fill("f1", seq, TICKERS[seq % 3], 10.0 + seq, 7 * seq) for seq in range(1, 7)),
    ]
    in_order = new_engine()
    expected_events = run(in_order, *messages)

    shuffled = new_engine()
    run(shuffled, messages[0])
    events = run(shuffled, messages[2])  # f1 seq 2 before seq 1: held
    assert of(events, TOPIC_ALLOCATION) == []
    assert of(events, TOPIC_ACK) == [{"source": "f1", "seq": 0}]  # nothing of f1 applied yet
    assert shuffled.sequencer.held == 1
    assert snapshot_of(shuffled)["counts"]["held"] == 1
    assert snapshot_of(shuffled)["counts"]["gaps"] == 1

    events = run(shuffled, messages[1])  # the gap fills: 1 then 2
    assert [a["seq"] for a in of(events, TOPIC_ALLOCATION)] == [1, 2]
    assert of(events, TOPIC_ACK) == [{"source": "f1", "seq": 2}]
    events = run(shuffled, messages[6], messages[4], messages[5], messages[3])
    assert [a["seq"] for a in of(events, TOPIC_ALLOCATION)] == [3, 4, 5, 6]

    assert shuffled.book == in_order.book
    assert shuffled.sequencer.last_seq == in_order.sequencer.last_seq
    assert shuffled.sequencer.held == 0
    in_order_allocations = of(expected_events, TOPIC_ALLOCATION)
    assert [a["allocations"] for a in in_order_allocations] == [
        a["allocations"] for a in of(run(new_engine(), *messages), TOPIC_ALLOCATION)
    ]


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_any_delivery_order_with_resends_gives_the_in_order_book(data):
    messages = [
        split("aum", 1, {"a": 25, "b": 25, "c": 50}),
        *(fill("aum", seq, TICKERS[seq % 3], seq + 0.5, 3 * seq + 1) for seq in range(2, 10)),
        split("aum", 10, {"b": 40, "c": 60}),
        *(fill("aum", seq, "MSFT", 20.0, seq) for seq in range(11, 14)),
    ]
    in_order = new_engine()
    run(in_order, *messages)

    delivered = data.draw(st.permutations(messages))
    resent = data.draw(st.lists(st.sampled_from(messages), max_size=10))
    cut = data.draw(st.integers(0, len(delivered)))
    engine = new_engine()
    allocations = of(run(engine, *delivered[:cut]), TOPIC_ALLOCATION)
    allocations += of(run(engine, *resent, *delivered[cut:]), TOPIC_ALLOCATION)

    assert engine.book == in_order.book
    assert engine.sequencer.last_seq == {"aum": 13}
    assert engine.sequencer.held == 0
    assert sorted(a["seq"] for a in allocations) == [*range(2, 10), 11, 12, 13]


# -- rejections ----------------------------------------------------------------------------
def test_an_invalid_fill_is_rejected_dead_lettered_and_consumes_its_seq(engine, paths):
    run(engine, split("aum", 1, {"a": 100}))
    bad = fill("f1", 1, "NOPE", 10.0, 5)
    events = run(engine, bad)
    assert len(events) == 2
    topic, body = events[0]
    assert topic == TOPIC_REJECTED
    assert body["source"] == "f1" and body["seq"] == 1
    assert "unknown ticker 'NOPE'" in body["reason"]
    assert events[1] == (TOPIC_ACK, {"source": "f1", "seq": 1})
    assert engine.book.positions == [{}]
    assert engine.book.rejected == 1
    assert snapshot_of(engine)["counts"]["rejected"] == 1

    lines = paths["dead"].read_text().splitlines()
    assert len(lines) == 1
    letter = json.loads(lines[0])
    assert letter["reason"] == body["reason"]
    assert letter["source"] == "f1" and letter["seq"] == 1
    assert bytes.fromhex(letter["raw_hex"]) == bad
    assert letter["time"].startswith("2023-11-14T22:13:20.000")

    # The next seq is applied at once: the rejection does not leave a gap.
    events = run(engine, fill("f1", 2, qty=3))
    assert [a["allocations"] for a in of(events, TOPIC_ALLOCATION)] == [{"a": 3}]
    assert engine.sequencer.held == 0

    records = [r for _, r in read_records(paths["journal"])]
    assert records[1] == ["R", "f1", 1, body["reason"]]
    assert records[2][:3] == ["F", "f1", 2]


@pytest.mark.parametrize(
    "message, reason",
    [
        (fill_message("f1", 2, "AAPL", -1.0, 5), "price must be > 0"),
        (fill_message("f1", 2, "AAPL", 1.0000001, 5), "decimal places"),
        (fill_message("f1", 2, "AAPL", 10.0, 0), "quantity must be > 0"),
        (split_message("f1", 2, {"a": 50, "b": 40}), "sum to 90"),
        ({"type": "trade", "source": "f1", "seq": 2}, "unknown message type"),
    ],
)
def test_invalid_messages_with_identity_consume_their_seq(message, reason):
    engine = new_engine()
    run(engine, split("aum", 1, {"a": 100}), fill("f1", 1))
    events = run(engine, pack(message), fill("f1", 3))
    rejected = of(events, TOPIC_REJECTED)
    assert len(rejected) == 1 and reason in rejected[0]["reason"]
    assert (rejected[0]["source"], rejected[0]["seq"]) == ("f1", 2)
    assert [a["seq"] for a in of(events, TOPIC_ALLOCATION)] == [3]
    assert of(events, TOPIC_ACK) == [{"source": "f1", "seq": 3}]


def test_a_late_invalid_message_releases_those_held_behind_it():
    engine = new_engine()
    run(engine, split("aum", 1, {"a": 100}), fill("f1", 1))
    assert of(run(engine, fill("f1", 3), fill("f1", 4)), TOPIC_ALLOCATION) == []
    events = run(engine, fill("f1", 2, "NOPE"))
    assert [t for t, _ in events] == [TOPIC_REJECTED, TOPIC_ALLOCATION, TOPIC_ALLOCATION, TOPIC_ACK]
    assert [a["seq"] for a in of(events, TOPIC_ALLOCATION)] == [3, 4]
    assert engine.sequencer.held == 0


def test_a_resent_invalid_message_is_a_duplicate(engine):
    run(engine, split("aum", 1, {"a": 100}))
    run(engine, fill("f1", 1, "NOPE"))
    events = run(engine, fill("f1", 1, "NOPE"))
    assert of(events, TOPIC_REJECTED) == []
    assert events == [(TOPIC_ACK, {"source": "f1", "seq": 1})]
    assert engine.book.rejected == 1
    assert engine.sequencer.duplicates == 1


def test_an_undecodable_message_is_rejected_without_source(engine, paths):
    run(engine, split("aum", 1, {"a": 100}))
    before = Book.from_state(engine.book.to_state())
    size = engine.journal.offset
    events = run(engine, b"\xc1")
    assert len(events) == 1
    topic, body = events[0]
    assert topic == TOPIC_REJECTED
    assert "not valid msgpack" in body["reason"]
    assert "source" not in body and "seq" not in body
    assert engine.book == before
    assert engine.journal.offset == size  # nothing to journal: no seq was consumed
    assert engine.unreadable == 1
    assert snapshot_of(engine)["counts"]["rejected"] == 1
    letter = json.loads(paths["dead"].read_text())
    assert letter["raw_hex"] == "c1"
    assert letter["source"] is None and letter["seq"] is None


def test_a_message_without_a_valid_seq_is_rejected_without_consuming_anything():
    engine = new_engine()
    run(engine, split("aum", 1, {"a": 100}))
    events = run(engine, pack(fill_message("f1", 0, "AAPL", 1.0, 1)), fill("f1", 1))
    rejected = of(events, TOPIC_REJECTED)
    assert len(rejected) == 1 and "seq must be an integer" in rejected[0]["reason"]
    assert "seq" not in rejected[0]
    assert [a["seq"] for a in of(events, TOPIC_ALLOCATION)] == [1]


# -- recovery ------------------------------------------------------------------------------
def history() -> list[list[bytes]]:
    """Batches with waiting fills, splits, rejections, duplicates and gaps."""
    return [
        [fill("f1", 1, "AAPL", 187.25, 100), fill("f2", 1, "MSFT", 410.5, 33)],
        [split("aum", 1, {"a": 33.33, "b": 33.33, "c": 33.34}), fill("f1", 3, qty=17)],
        [fill("f1", 2, "XOM", 0.000001, 10**9), b"\xc1", fill("f2", 2, "NOPE")],
        [fill("f1", 2), fill("f2", 3, "AAPL", 188.0, 5)],  # a duplicate
        [split("aum", 2, {"b": 50, "d": 50}), *(fill("f2", s, "MSFT", 411.0, s) for s in (4, 5))],
        [fill("f1", s, "AAPL", 186.0 + s / 100, 1000 + s) for s in range(4, 20)],
        [fill("f1", 21)],  # held at the end: never applied, never journaled
    ]


def test_recover_rebuilds_the_same_book_and_sequence(engine, paths):
    for batch in history():
        run(engine, *batch)
    assert engine.sequencer.held == 1

    recovered, replayed = recover(paths["journal"], paths["checkpoint"], TICKERS)
    assert recovered.book == engine.book
    assert (
        recovered.sequencer.last_seq
        == engine.sequencer.last_seq
        == {
            "f1": 19,
            "f2": 5,
            "aum": 2,
        }
    )
    assert replayed == 19 + 5 + 2  # every applied input, rejections included
    assert recovered.book.rejected == 1
    assert snapshot_of(recovered)["accounts"] == snapshot_of(engine)["accounts"]
    assert recovered.journal is None and recovered.deadletters is None


def test_recover_from_checkpoint_and_tail_equals_recover_from_the_whole_journal(engine, paths):
    batches = history()
    for batch in batches[:3]:
        run(engine, *batch)
    offset = engine.checkpoint(paths["checkpoint"])
    # The end of the records, not of the file (the writer pre-allocated zeros past them).
    assert offset == records_end(paths["journal"]) < paths["journal"].stat().st_size
    for batch in batches[3:]:
        run(engine, *batch)

    from_checkpoint, tail = recover(paths["journal"], paths["checkpoint"], TICKERS)
    whole, everything = recover(paths["journal"], None, TICKERS)
    assert from_checkpoint.book == whole.book == engine.book
    assert from_checkpoint.sequencer.last_seq == whole.sequencer.last_seq
    assert whole.sequencer.last_seq == engine.sequencer.last_seq
    assert everything == 26
    assert tail == everything - offset_count(paths["journal"], offset)
    assert 0 < tail < everything


def offset_count(path, offset) -> int:
    """How many records end at or before `offset`."""
    return sum(1 for end, _ in read_records(path) if end <= offset)


def test_a_checkpoint_at_the_end_replays_nothing(engine, paths):
    for batch in history():
        run(engine, *batch)
    engine.checkpoint(paths["checkpoint"])
    recovered, replayed = recover(paths["journal"], paths["checkpoint"], TICKERS)
    assert replayed == 0
    assert recovered.book == engine.book
    assert recovered.sequencer.last_seq == engine.sequencer.last_seq


def test_a_checkpoint_ahead_of_the_journal_is_ignored(engine, paths, tmp_path):
    for batch in history():
        run(engine, *batch)
    engine.checkpoint(paths["checkpoint"])
    # Recover against a shorter journal (the first batches only).
    short = tmp_path / "short.journal"
    writer = JournalWriter(short)
    partial = new_engine(journal=writer)
    for batch in history()[:2]:
        run(partial, *batch)
    writer.close()
    recovered, replayed = recover(short, paths["checkpoint"], TICKERS)
    assert recovered.book == partial.book
    assert replayed == 3


def test_recover_cuts_a_torn_tail_and_keeps_what_was_committed(engine, paths):
    for batch in history()[:3]:
        run(engine, *batch)
    engine.journal.close()
    good = paths["journal"].stat().st_size
    with open(paths["journal"], "ab") as handle:
        handle.write(b"\x20\x00\x00\x00\x12\x34")  # a record header cut short
    recovered, _ = recover(paths["journal"], None, TICKERS)
    assert recovered.book == engine.book
    assert paths["journal"].stat().st_size == good


def test_after_recover_a_duplicate_is_ignored_and_the_next_seq_applies(engine, paths):
    for batch in history():
        run(engine, *batch)
    engine.checkpoint(paths["checkpoint"])
    run(engine, fill("f2", 6, "XOM", 70.0, 40))  # after the checkpoint: replayed from the tail

    recovered, _ = recover(paths["journal"], paths["checkpoint"], TICKERS)
    assert recovered.book == engine.book
    before = Book.from_state(recovered.book.to_state())
    events = run(
        recovered,
        fill("f2", 6, "XOM", 70.0, 40),
        fill("f1", 5),
        split("aum", 2, {"b": 50, "d": 50}),
    )
    assert of(events, TOPIC_ALLOCATION) == []
    assert of(events, TOPIC_REJECTED) == []
    assert recovered.book == before
    assert recovered.sequencer.duplicates == 3
    assert sorted((a["source"], a["seq"]) for a in of(events, TOPIC_ACK)) == [
        ("aum", 2),
        ("f1", 19),
        ("f2", 6),
    ]

    # Both go on identically.
    more = [fill("f2", 7, "MSFT", 400.0, 77), fill("f2", 8, "AAPL", 190.0, 5)]
    assert run(recovered, *more) == run(engine, *more)
    assert recovered.book == engine.book
    # f1 seq 21 was held, not journaled: the original releases it when 20 comes, the
    # recovered engine once the sender resends it.
    original = of(run(engine, fill("f1", 20, "XOM", 71.0, 9)), TOPIC_ALLOCATION)
    again = of(run(recovered, fill("f1", 20, "XOM", 71.0, 9), fill("f1", 21)), TOPIC_ALLOCATION)
    assert [a["seq"] for a in original] == [a["seq"] for a in again] == [20, 21]
    assert original == again
    assert recovered.book == engine.book


def test_recovered_engine_with_a_new_journal_recovers_again(paths):
    first = new_engine(journal=JournalWriter(paths["journal"]))
    for batch in history()[:4]:
        run(first, *batch)
    first.journal.close()

    second, _ = recover(paths["journal"], None, TICKERS)
    second.journal = JournalWriter(paths["journal"])
    for batch in history()[4:]:
        run(second, *batch)
    second.journal.close()

    third, replayed = recover(paths["journal"], None, TICKERS)
    assert third.book == second.book
    assert third.sequencer.last_seq == second.sequencer.last_seq
    assert replayed == 26


def test_checkpoint_needs_a_journal(paths):
    with pytest.raises(RuntimeError, match="journal"):
        new_engine().checkpoint(paths["checkpoint"])


def test_deeply_nested_input_is_rejected_not_fatal():
    engine = new_engine()
    nested = "x"
    for _ in range(1000):
        nested = [nested]
    for body in ({"source": nested, "seq": 1}, {"source": "s", "seq": 1, "type": nested}):
        engine.receive(msgpack.packb(body))
    events = published(engine.commit())
    reasons = [body["reason"] for topic, body in events if topic == TOPIC_REJECTED]
    # Deep nesting is named by its outer msgpack type, never walked (no RecursionError).
    assert reasons == [
        "source must be a non-empty string, got an array of 1 item",
        "type must be the string 'fill' or 'split', got an array of 1 item",
    ]
    assert engine.sequencer.last_seq == {"s": 1}  # the second one's seq was consumed


def test_a_ticker_added_to_the_universe_after_a_checkpoint(tmp_path):
    journal, checkpoint = tmp_path / "j", tmp_path / "j.checkpoint"
    engine = Engine(Book(["AAPL"]), journal=JournalWriter(journal))
    engine.receive(pack(split_message("aum", 1, {"A": 100})))
    engine.commit()
    engine.checkpoint(checkpoint)
    engine.journal.close()
    grown, _ = recover(journal, checkpoint, ["AAPL", "MSFT"])
    grown.receive(pack(fill_message("f", 1, "MSFT", 10.0, 5)))
    grown.commit()
    assert snapshot_of(grown)["totals"]["positions"] == {"AAPL": 0, "MSFT": 5}


def test_a_record_journaled_twice_stops_recovery_instead_of_counting_twice(tmp_path):
    journal = tmp_path / "j"
    writer = JournalWriter(journal)
    engine = new_engine(journal=writer)
    engine.receive(pack(split_message("aum", 1, {"A": 100})))
    engine.receive(pack(fill_message("f", 1, "AAPL", 10.0, 5)))
    engine.commit()
    writer.append(["F", "f", 1, "AAPL", 10_000_000, 5, "buy"])  # the same fill again
    writer.close()
    with pytest.raises(JournalCorrupt, match="is f#1, expected f#2"):
        recover(journal, None, TICKERS)
