"""The controller service in one process, over inproc, on a fake clock (the senders' tests
against it are in test_sender.py)."""

from __future__ import annotations

import itertools

import pytest
import zmq
from helpers import FakeClock, collect, wait_for

from common.protocol import (
    DEFAULT_TICKERS,
    TOPIC_ACK,
    TOPIC_ALLOCATION,
    TOPIC_POSITIONS,
    TOPIC_REJECTED,
    fill_message,
    pack,
    split_message,
)
from controller.book import Book
from controller.engine import Engine
from controller.service import ControllerService
from positions.service import PositionServer

_endpoints = itertools.count()


@pytest.fixture
def endpoints():
    n = next(_endpoints)
    return f"inproc://inputs-{n}", f"inproc://events-{n}"


def make_service(ctx, endpoints, clock, engine=None, interval=10.0, **kwargs):
    engine = engine if engine is not None else Engine(Book(DEFAULT_TICKERS))
    return ControllerService(
        ctx, engine, endpoints[0], endpoints[1], snapshot_interval=interval, clock=clock, **kwargs
    )


def rebind(ctx, endpoints, clock, engine=None, **kwargs):
    """A new service on endpoints just released: ZeroMQ closes listeners asynchronously."""

    def attempt():
        try:
            return make_service(ctx, endpoints, clock, engine, **kwargs)
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EADDRINUSE:
                raise
            return None

    return wait_for(attempt, 10, f"{endpoints} to be free again")


def subscriber(ctx, endpoint):
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    return sub


def sync(service, sub):
    """Publish snapshots until the subscriber sees one (ends the slow-joiner window)."""
    for _ in range(200):
        service.publish_snapshot()
        if any(topic == TOPIC_POSITIONS for topic, _ in collect(sub, 10)):
            collect(sub)
            return
    raise AssertionError("subscriber never received a snapshot")


def test_allocations_acks_and_snapshot_match(ctx, endpoints):
    clock = FakeClock()
    service = make_service(ctx, endpoints, clock)
    sub = subscriber(ctx, endpoints[1])
    sync(service, sub)
    push = ctx.socket(zmq.PUSH)
    push.connect(endpoints[0])
    push.send(pack(split_message("aum", 1, {"A": 60, "B": 40})))
    push.send(pack(fill_message("f", 1, "AAPL", 100.0, 10)))
    push.send(pack(fill_message("f", 2, "MSFT", 50.25, 7)))
    events = []
    while len([t for t, _ in events if t == TOPIC_ALLOCATION]) < 2:
        service.step(100)
        events += collect(sub)
    allocations = [body for topic, body in events if topic == TOPIC_ALLOCATION]
    assert allocations[0]["allocations"] == {"A": 6, "B": 4}
    assert allocations[0]["price"] == 100.0 and allocations[0]["ticker"] == "AAPL"
    assert sum(allocations[1]["allocations"].values()) == 7
    acks = {body["source"]: body["seq"] for topic, body in events if topic.startswith(TOPIC_ACK)}
    assert acks == {"aum": 1, "f": 2}

    clock.advance(10)
    service.step(0)
    snapshot = next(body for topic, body in collect(sub, 100) if topic == TOPIC_POSITIONS)
    for account in ("A", "B"):
        held = snapshot["accounts"][account]["positions"]
        for ticker in ("AAPL", "MSFT"):
            expected = sum(
                a["allocations"].get(account, 0) for a in allocations if a["ticker"] == ticker
            )
            assert held[ticker] == expected
    assert snapshot["counts"]["fills"] == 2
    assert snapshot["instance"] == service.instance
    service.close()


def test_bad_input_is_answered_and_changes_nothing(ctx, endpoints):
    service = make_service(ctx, endpoints, FakeClock())
    sub = subscriber(ctx, endpoints[1])
    sync(service, sub)
    before = service.engine.book.to_state()
    push = ctx.socket(zmq.PUSH)
    push.connect(endpoints[0])
    push.send(b"\xc1 not msgpack")
    push.send(pack(fill_message("f", 1, "NOPE", 10.0, 5)))
    events = []
    while len(events) < 3:
        service.step(100)
        events += collect(sub)
    rejected = [body for topic, body in events if topic.startswith(TOPIC_REJECTED)]
    assert "not valid msgpack" in rejected[0]["reason"]
    assert rejected[1]["source"] == "f" and rejected[1]["seq"] == 1
    assert "unknown ticker 'NOPE'" in rejected[1]["reason"]
    after = service.engine.book.to_state()
    assert after["positions"] == before["positions"] and after["values"] == before["values"]
    service.close()


def test_snapshots_follow_the_clock(ctx, endpoints):
    clock = FakeClock()
    service = make_service(ctx, endpoints, clock, interval=10.0)
    sub = subscriber(ctx, endpoints[1])
    sync(service, sub)
    first = service.snapshot_seq
    clock.advance(9.9)
    service.step(0)
    assert service.snapshot_seq == first
    clock.advance(0.1)
    service.step(0)
    assert service.snapshot_seq == first + 1
    clock.advance(35)  # missed slots are skipped, not replayed in a burst
    service.step(0)
    assert service.snapshot_seq == first + 2
    clock.advance(5)
    service.step(0)
    assert service.snapshot_seq == first + 3
    service.close()


def test_position_server_sees_snapshots_and_a_restart(ctx):
    shown = []
    clock = FakeClock()
    service = make_service(ctx, ("tcp://127.0.0.1:*", "tcp://127.0.0.1:*"), clock)
    endpoints = (service.inputs, service.publish)
    server = PositionServer(ctx, endpoints[1], lambda update: shown.append(update))

    def publish_until_shown(controller):
        for _ in range(500):
            controller.publish_snapshot()
            if server.step(10):
                return
        raise AssertionError("no snapshot reached the position server")

    publish_until_shown(service)
    assert shown[0].notices == []
    service.close()
    replacement = rebind(ctx, endpoints, clock)
    publish_until_shown(replacement)
    assert any("controller restarted" in note for note in shown[-1].notices)
    assert server.watcher.restarts == 1
    replacement.close()


def test_watcher_reports_missed_snapshots():
    from positions.service import SnapshotWatcher

    watcher = SnapshotWatcher()
    assert watcher.observe({"instance": "a", "seq": 1}) == []
    assert watcher.observe({"instance": "a", "seq": 2}) == []
    assert watcher.observe({"instance": "a", "seq": 5}) == ["missed 2 snapshot(s): #2 then #5"]
    assert watcher.missed == 2
    assert "restarted" in watcher.observe({"instance": "b", "seq": 1})[0]


def test_idle_fully_acknowledged_sources_leave_the_ack_broadcast(ctx, endpoints):
    clock = FakeClock()
    service = make_service(ctx, endpoints, clock, source_retire_after=60.0)
    sub = subscriber(ctx, endpoints[1])
    sync(service, sub)
    push = ctx.socket(zmq.PUSH)
    push.connect(endpoints[0])
    push.send(pack(split_message("aum", 1, {"a": 100})))
    push.send(pack(fill_message("old", 1, "AAPL", 10.0, 5)))
    push.send(pack(fill_message("gapped", 1, "AAPL", 10.0, 5)))
    push.send(pack(fill_message("gapped", 3, "AAPL", 10.0, 5)))  # waits behind seq 2
    wait_for(lambda: service.step(10) or service.engine.sequencer.is_waiting("gapped"), 10)
    clock.advance(30)
    push.send(pack(fill_message("new", 1, "AAPL", 10.0, 5)))
    wait_for(lambda: service.step(10) or service.engine.sequencer.last_seq.get("new"), 10)
    clock.advance(45)  # "old", "gapped" and "aum" idle for 75 s, "new" for 45 s
    collect(sub, 10)

    def repeated_acks() -> set[str]:
        service.publish_snapshot()
        events = collect(sub, 100)
        return {body["source"] for topic, body in events if topic.startswith(TOPIC_ACK)}

    assert repeated_acks() == {"new", "gapped"}
    push.send(pack(fill_message("old", 2, "AAPL", 10.0, 5)))  # heard again: back in
    wait_for(lambda: service.step(10) or service.engine.sequencer.last_seq["old"] == 2, 10)
    assert repeated_acks() == {"new", "gapped", "old"}
    service.close()
    push.close(linger=0)
