"""Tests for controller.sequencer.Sequencer: exactly-once, in-order release per source."""

from __future__ import annotations

from controller.sequencer import Sequencer


def test_in_order_messages_pass_straight_through():
    seq = Sequencer()
    assert seq.offer("a", 1, "a1") == ["a1"]
    assert seq.offer("a", 2, "a2") == ["a2"]
    assert seq.offer("a", 3, "a3") == ["a3"]
    assert seq.last_seq == {"a": 3}
    assert (seq.duplicates, seq.gaps, seq.dropped, seq.held) == (0, 0, 0, 0)


def test_duplicates_return_none_and_are_counted():
    seq = Sequencer()
    seq.offer("a", 1, "a1")
    seq.offer("a", 2, "a2")
    assert seq.offer("a", 2, "again") is None
    assert seq.offer("a", 1, "again") is None
    assert seq.duplicates == 2
    assert seq.last_seq == {"a": 2}
    # The next one still passes.
    assert seq.offer("a", 3, "a3") == ["a3"]


def test_gap_is_held_then_released_in_order_when_filled():
    seq = Sequencer()
    assert seq.offer("a", 1, "a1") == ["a1"]
    assert seq.offer("a", 4, "a4") == []
    assert seq.offer("a", 3, "a3") == []
    assert seq.held == 2
    assert seq.gaps == 1
    assert seq.last_seq == {"a": 1}
    assert seq.offer("a", 2, "a2") == ["a2", "a3", "a4"]
    assert seq.held == 0
    assert seq.last_seq == {"a": 4}
    assert seq.offer("a", 5, "a5") == ["a5"]


def test_release_stops_at_the_next_gap():
    seq = Sequencer()
    assert seq.offer("a", 2, "a2") == []
    assert seq.offer("a", 3, "a3") == []
    assert seq.offer("a", 5, "a5") == []
    assert seq.offer("a", 1, "a1") == ["a1", "a2", "a3"]
    assert seq.last_seq == {"a": 3}
    assert seq.held == 1
    assert seq.offer("a", 4, "a4") == ["a4", "a5"]
    assert seq.held == 0
    assert seq.last_seq == {"a": 5}


def test_duplicate_of_a_held_seq_is_ignored_and_counted():
    seq = Sequencer()
    seq.offer("a", 1, "a1")
    assert seq.offer("a", 3, "first") == []
    assert seq.offer("a", 3, "second") is None
    assert seq.duplicates == 1
    assert seq.held == 1
    # The copy held first is the one released.
    assert seq.offer("a", 2, "a2") == ["a2", "first"]


def test_max_held_bounds_the_waiting_messages_per_source():
    seq = Sequencer(max_held=3)
    assert seq.offer("a", 2, "a2") == []
    assert seq.offer("a", 3, "a3") == []
    assert seq.offer("a", 4, "a4") == []
    assert seq.offer("a", 5, "a5") == []  # over the bound: dropped
    assert seq.dropped == 1
    assert seq.held == 3
    assert seq.duplicates == 0
    # The bound is per source: another source may still hold.
    assert seq.offer("b", 2, "b2") == []
    assert seq.held == 4
    # Filling the gap releases what was held; the dropped one comes back on resend.
    assert seq.offer("a", 1, "a1") == ["a1", "a2", "a3", "a4"]
    assert seq.last_seq["a"] == 4
    assert seq.offer("a", 5, "a5 resent") == ["a5 resent"]


def test_sources_are_independent():
    seq = Sequencer()
    assert seq.offer("a", 1, "a1") == ["a1"]
    assert seq.offer("b", 1, "b1") == ["b1"]
    assert seq.offer("b", 3, "b3") == []  # b waits...
    assert seq.offer("a", 2, "a2") == ["a2"]  # ...a does not
    assert seq.offer("a", 1, "dup") is None
    assert seq.offer("b", 2, "b2") == ["b2", "b3"]
    assert seq.last_seq == {"a": 2, "b": 3}
    assert seq.duplicates == 1


def test_a_new_source_starts_at_seq_1():
    seq = Sequencer()
    assert seq.offer("new", 2, "n2") == []
    assert "new" not in seq.last_seq
    assert seq.held == 1
    assert seq.gaps == 1
    assert seq.offer("new", 1, "n1") == ["n1", "n2"]
    assert seq.last_seq == {"new": 2}


def test_initial_last_seq_is_respected_and_copied():
    start = {"a": 5}
    seq = Sequencer(start)
    assert seq.offer("a", 5, "dup") is None
    assert seq.offer("a", 6, "a6") == ["a6"]
    assert start == {"a": 5}  # the caller's dict is not changed


def test_mark_applied_records_a_seq_without_offering_it():
    seq = Sequencer()
    seq.mark_applied("a", 1)
    seq.mark_applied("a", 2)
    seq.mark_applied("a", 3)
    assert seq.last_seq == {"a": 3}
    assert seq.offer("a", 3, "dup") is None
    assert seq.offer("a", 2, "dup") is None
    assert seq.offer("a", 4, "a4") == ["a4"]
    assert seq.duplicates == 2
    assert seq.held == 0


def test_held_messages_are_capped_in_total_over_all_sources():
    """Many sources, each with a small gap, cannot make the sequencer hold without bound."""
    seq = Sequencer(max_held=10, max_held_total=25)
    for n in range(100):
        assert seq.offer(f"s{n}", 2, n) == []  # seq 1 of every source is missing
    assert seq.held == 25
    assert seq.dropped == 75
    assert seq.offer("s0", 1, "first") == ["first", 0]  # the held one is released in order
    assert seq.held == 24
    assert not seq.is_waiting("s0") and seq.is_waiting("s1") and not seq.is_waiting("s99")
