"""The controller service and the senders in one process, over inproc, on a fake clock."""

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
from common.sender import ReliableSender
from controller.deadletter import DeadLetters
from controller.engine import Engine, recover
from controller.journal import JournalWriter
from controller.service import ControllerService
from fillsim.market import Market
from positions.service import PositionServer

_endpoints = itertools.count()


@pytest.fixture
def endpoints():
    n = next(_endpoints)
    return f"inproc://inputs-{n}", f"inproc://events-{n}"


def make_service(ctx, endpoints, clock, engine=None, interval=10.0, **kwargs):
    engine = engine if engine is not None else Engine(DEFAULT_TICKERS)
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


def pump_until(service, condition, *others, steps=1000):
    for _ in range(steps):
        service.step(5)
        for other in others:
            other.pump(0)
        if condition():
            return
    raise AssertionError("condition not reached")


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
    acks = {body["source"]: body["seq"] for topic, body in events if topic == TOPIC_ACK}
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
    rejected = [body for topic, body in events if topic == TOPIC_REJECTED]
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


def test_sender_started_before_controller_delivers_everything(ctx, endpoints):
    clock = FakeClock()
    sender = ReliableSender(ctx, "early", endpoints[0], endpoints[1], clock=clock)
    sender.send(split_message("early", 0, {"X": 50, "Y": 50}))
    for _ in range(20):
        sender.send(fill_message("early", 0, "AAPL", 10.0, 3))
    service = make_service(ctx, endpoints, clock)
    pump_until(service, lambda: sender.pending == 0, sender)
    assert service.engine.book.total_shares()["AAPL"] == 60
    assert service.engine.sequencer.last_seq["early"] == 21
    service.close()
    sender.close()


def test_controller_restart_loses_nothing_and_counts_nothing_twice(ctx, tmp_path):
    # tcp, not inproc: inproc peers do not reconnect to a rebound endpoint.
    clock = FakeClock()
    journal = tmp_path / "journal"
    checkpoint = tmp_path / "journal.checkpoint"

    def start_controller(endpoints):
        engine, _ = recover(journal, checkpoint, DEFAULT_TICKERS)
        engine.journal = JournalWriter(journal)
        engine.deadletters = DeadLetters(tmp_path / "dead.jsonl")
        return rebind(ctx, endpoints, clock, engine, checkpoint_path=checkpoint)

    service = start_controller(("tcp://127.0.0.1:*", "tcp://127.0.0.1:*"))
    endpoints = (service.inputs, service.publish)
    sender = ReliableSender(ctx, "s", endpoints[0], endpoints[1], clock=clock, resend_after=1.0)
    sender.send(split_message("s", 0, {"A": 70, "B": 30}))
    market = Market(DEFAULT_TICKERS, seed=3)
    sent = dict.fromkeys(DEFAULT_TICKERS, 0)

    def send_fills(n):
        for _ in range(n):
            ticker, price, quantity = market.next_fill()
            sender.send(fill_message("s", 0, ticker, price, quantity))
            sent[ticker] += quantity

    send_fills(50)
    pump_until(service, lambda: sender.pending == 0, sender)
    send_fills(50)
    service.close()  # a stop with fills in flight: unacknowledged ones stay with the sender
    send_fills(25)
    service = start_controller(endpoints)
    clock.advance(1.0)  # the sender's resend timer fires

    def all_acked():
        clock.advance(0.2)
        return sender.pending == 0

    pump_until(service, all_acked, sender)
    book = service.engine.book
    assert book.total_shares() == sent
    assert book.fills_allocated == 125
    assert service.engine.sequencer.last_seq["s"] == 126
    service.close()
    replayed, _ = recover(journal, None, DEFAULT_TICKERS)
    assert replayed.book == book
    sender.close()


def test_position_server_sees_snapshots_and_a_restart(ctx):
    shown = []
    clock = FakeClock()
    service = make_service(ctx, ("tcp://127.0.0.1:*", "tcp://127.0.0.1:*"), clock)
    endpoints = (service.inputs, service.publish)
    server = PositionServer(ctx, endpoints[1], lambda snap, notes: shown.append((snap, notes)))

    def publish_until_shown(controller):
        for _ in range(500):
            controller.publish_snapshot()
            if server.step(10):
                return
        raise AssertionError("no snapshot reached the position server")

    publish_until_shown(service)
    assert shown[0][1] == []
    service.close()
    replacement = rebind(ctx, endpoints, clock)
    publish_until_shown(replacement)
    assert any("controller restarted" in note for note in shown[-1][1])
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


def test_sender_carries_on_as_a_new_session_when_the_controller_lost_its_acks(ctx, tmp_path):
    # A controller that comes back knowing less than it acknowledged (here: a new, empty
    # journal) can never fill the gap before the sender's next seq; the sender starts over.
    clock = FakeClock()
    first = make_service(ctx, ("tcp://127.0.0.1:*", "tcp://127.0.0.1:*"), clock)
    endpoints = (first.inputs, first.publish)
    sender = ReliableSender(ctx, "desk@00000000", *endpoints, clock=clock, resend_after=1.0)
    sender.send(split_message("x", 0, {"A": 100}))
    for _ in range(4):
        sender.send(fill_message("x", 0, "AAPL", 10.0, 1))
    pump_until(first, lambda: sender.pending == 0, sender)
    first.close()
    second = rebind(ctx, endpoints, clock)
    sender.send(split_message("x", 0, {"A": 100}))
    sender.send(fill_message("x", 0, "AAPL", 10.0, 7))

    def delivered():
        clock.advance(0.3)
        return sender.pending == 0

    pump_until(second, delivered, sender)
    assert sender.source != "desk@00000000" and sender.source.startswith("desk@")
    assert second.engine.sequencer.last_seq == {sender.source: 2}
    assert second.engine.book.total_shares()["AAPL"] == 7
    second.close()
    sender.close()
