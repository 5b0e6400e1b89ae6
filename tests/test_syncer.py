"""Group commit on the sync thread (controller/syncer.py through the service): a batch's
events and acks are published only after a sync that covers it succeeded, the loop reads
on while the disk works, a failed sync publishes nothing it covered and is never retried,
and snapshots show durable state only. The disk is a real file; the sync is held and
released by the test (an Event), never timed."""

from __future__ import annotations

import itertools
import threading

import pytest
import zmq
from helpers import FakeClock, collect, wait_for

from common.protocol import (
    DEFAULT_TICKERS,
    TOPIC_ACK,
    TOPIC_ALLOCATION,
    TOPIC_POSITIONS,
    fill_message,
    pack,
    split_message,
)
from controller import journal as journal_module
from controller.book import Book
from controller.engine import Engine
from controller.journal import JournalWriter, read_records
from controller.service import ControllerService

_endpoints = itertools.count()


class HeldJournal(JournalWriter):
    """A journal whose data syncs wait for the test to let them go (or fail)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.release = threading.Semaphore(0)
        self.started = threading.Semaphore(0)
        self.fail_next = False
        self.sync_calls = 0

    def sync_data(self) -> None:
        self.sync_calls += 1
        self.started.release()
        self.release.acquire()
        if self.fail_next:
            raise OSError(5, "Input/output error")
        super().sync_data()


@pytest.fixture
def setup(ctx, tmp_path):
    n = next(_endpoints)
    journal = HeldJournal(tmp_path / "journal")
    engine = Engine(Book(DEFAULT_TICKERS), journal, compiled=True)
    service = ControllerService(
        ctx,
        engine,
        f"inproc://sync-in-{n}",
        f"inproc://sync-out-{n}",
        clock=FakeClock(),
        sync_thread=True,
    )
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(service.publish)
    push = ctx.socket(zmq.PUSH)
    push.connect(service.inputs)
    yield service, journal, sub, push
    journal.release.release(100)  # never leave the sync thread waiting
    service.close()


def joined(service, journal, sub) -> None:
    """Publish snapshots until the subscriber sees one (nothing written yet: no sync)."""

    def seen() -> bool:
        service.publish_snapshot()
        return any(topic == TOPIC_POSITIONS for topic, _ in collect(sub, 10))

    wait_for(seen, 10, "the subscriber to join")
    collect(sub)


def step_until(service, condition, what: str) -> None:
    wait_for(lambda: service.step(10) is not None and condition(), 10, what)


def test_events_wait_for_their_sync_and_the_loop_reads_on(setup):
    service, journal, sub, push = setup
    joined(service, journal, sub)
    push.send(pack(split_message("aum", 1, {"A": 60, "B": 40})))
    push.send(pack(fill_message("desk", 1, "AAPL", 100.0, 10)))
    step_until(service, lambda: service.syncer.busy, "a sync to start")
    assert journal.started.acquire(timeout=10)
    # The sync is held: the batch is written, nothing of it is published ...
    assert [r[1][1] for r in read_records(journal.path)] == ["aum", "desk"]
    assert collect(sub) == []
    # ... and the loop goes on reading and writing the next batch meanwhile.
    push.send(pack(fill_message("desk", 2, "MSFT", 50.0, 5)))
    step_until(service, lambda: len(list(read_records(journal.path))) == 3, "batch 2 written")
    assert collect(sub) == []
    journal.release.release()  # the first sync ends: the first batch is published
    events: list = []
    step_until(service, lambda: events.extend(collect(sub)) or events, "batch 1 published")
    assert [body["seq"] for topic, body in events if topic == TOPIC_ALLOCATION] == [1]
    assert all(body["seq"] <= 1 for topic, body in events if topic.startswith(TOPIC_ACK))
    assert journal.started.acquire(timeout=10)  # one sync covers what was written since
    journal.release.release()
    step_until(
        service,
        lambda: events.extend(collect(sub)) or len(
            [b for t, b in events if t == TOPIC_ALLOCATION]
        ) == 2,
        "batch 2 published",
    )
    acks = {b["source"]: b["seq"] for t, b in events if t.startswith(TOPIC_ACK)}
    assert acks == {"aum": 1, "desk": 2}


def test_a_failed_sync_publishes_nothing_it_covered_and_is_never_retried(setup):
    service, journal, sub, push = setup
    joined(service, journal, sub)
    synced = journal.synced_offset
    journal.fail_next = True
    push.send(pack(split_message("aum", 1, {"A": 60, "B": 40})))
    push.send(pack(fill_message("desk", 1, "AAPL", 100.0, 10)))
    step_until(service, lambda: service.syncer.busy, "a sync to start")
    assert journal.started.acquire(timeout=10)
    calls = journal.sync_calls
    journal.release.release()
    step_until(service, lambda: service.failure is not None, "the failure")
    assert "fdatasync failed" in service.failure
    assert collect(sub) == []  # no event, no ack of the batch the sync covered
    assert journal.path.stat().st_size == synced  # cut back to what was durable
    assert journal.sync_calls == calls  # never retried
    with pytest.raises(Exception, match="earlier write or sync failed"):
        journal.commit()


def test_a_snapshot_shows_durable_state_only(setup):
    service, journal, sub, push = setup
    joined(service, journal, sub)
    push.send(pack(split_message("aum", 1, {"A": 60, "B": 40})))
    push.send(pack(fill_message("desk", 1, "AAPL", 100.0, 10)))
    step_until(service, lambda: service.syncer.busy, "a sync to start")
    journal.release.release(2)  # this sync, and the one the snapshot may need
    service.publish_snapshot()  # waits for the sync: allocation first, then the snapshot
    events = collect(sub, 100)
    topics = [topic for topic, _ in events]
    assert topics.index(TOPIC_ALLOCATION) < topics.index(TOPIC_POSITIONS)
    snapshot = next(body for topic, body in events if topic == TOPIC_POSITIONS)
    assert snapshot["counts"]["fills"] == 1
    assert snapshot["sources"] == {"aum": 1, "desk": 1}


def test_a_sync_failing_while_the_loop_fails_too_is_still_cut_off(setup, monkeypatch):
    """A write fails while a sync runs (the loop stops at once); that sync fails as well:
    its result is still taken at close and its batch cut off, or the next start's fsync
    (a failed sync is reported once) would trust pages never written."""
    service, journal, sub, push = setup
    joined(service, journal, sub)
    synced = journal.synced_offset
    push.send(pack(split_message("aum", 1, {"A": 60, "B": 40})))
    step_until(service, lambda: service.syncer.busy, "a sync to start")
    assert journal.started.acquire(timeout=10)
    journal.fail_next = True

    def failing_write(*args, **kwargs):
        journal.release.release()  # the held sync goes on, and fails, as this write does
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(journal_module.os, "pwrite", failing_write)
    push.send(pack(fill_message("desk", 1, "AAPL", 100.0, 10)))
    step_until(service, lambda: service.failure is not None, "the write failure")
    assert "write failed" in service.failure  # the loop failed first, on its own write
    monkeypatch.undo()
    assert collect(sub) == []
    assert journal.path.stat().st_size == synced  # the failed sync's batch is cut off too
