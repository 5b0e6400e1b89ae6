"""Snapshots built off the engine's thread (controller.snapshot.SnapshotWorker and the
service's `snapshot_worker` mode): the same bytes as a snapshot built at once, from a copy
the engine can no longer change, one at a time, never costing the process."""

from __future__ import annotations

import itertools
import logging
import random
import threading

import pytest
import zmq
from helpers import FakeClock, collect

from common.protocol import (
    DEFAULT_TICKERS,
    PRICE_SCALE,
    TOPIC_ACK,
    TOPIC_POSITIONS,
    AccountRow,
    Snapshot,
    fill_message,
    pack,
    split_message,
    unpack,
)
from controller import native
from controller.book import BOOK, MARKET, Book
from controller.engine import DeliveryCounts, Engine
from controller.service import ControllerService
from controller.snapshot import (
    NO_DELIVERY,
    ROWS_PER_PIECE,
    SnapshotMeta,
    SnapshotState,
    SnapshotWorker,
    build,
    build_snapshot,
    capture,
    encode,
    snapshot_packer,
)

TICKERS = ("AAPL", "MSFT", "XOM")
CLOSE_WAIT = 10.0  # seconds; a bound for a stuck test, never reached when all is well
WAIT = 10.0
WALL = 1_700_000_000.0


def reference_snapshot(
    book: Book,
    delivery: DeliveryCounts = NO_DELIVERY,
    meta: SnapshotMeta = SnapshotMeta(),  # noqa: B008
    sources: dict[str, int] | None = None,
) -> Snapshot:
    """build_snapshot as it was before snapshots could be built elsewhere, straight from
    the live book through its own views: the oracle for every other way of building one."""
    total_value = sum(book.values)
    targets = book.split.target_percent() if book.split else {}
    prices = book.last_price
    markets = book.market_values()
    valued = markets if book.valuation == MARKET else book.values
    valued_total = sum(valued)
    no_shares = dict.fromkeys(book.tickers, 0)
    accounts = {}
    for i, account in enumerate(book.accounts):
        positions = no_shares.copy()
        positions.update(book.positions[i])
        weight = 100 * valued[i] / valued_total if valued_total else 0.0
        target = targets.get(account, 0.0)
        accounts[account] = AccountRow(
            positions=positions,
            value=book.values[i] / PRICE_SCALE,
            market_value=markets[i] / PRICE_SCALE,
            weight=weight,
            target=target,
            deviation=weight - target,
        )
    split = book.split
    return Snapshot(
        accounts=accounts,
        prices={t: p / PRICE_SCALE for t, p in prices.items()},
        totals={
            "positions": book.total_shares(),
            "value": total_value / PRICE_SCALE,
            "market_value": sum(markets) / PRICE_SCALE,
        },
        counts={
            "fills": book.fills_allocated,
            "splits": book.splits_applied,
            "rejected": book.rejected + delivery.unreadable + delivery.refused,
            "refused": delivery.refused,
            "pending": len(book.pending),
            "duplicates": delivery.duplicates,
            "gaps": delivery.gaps,
            "held": delivery.held,
            "dropped": delivery.dropped,
            "peers_rejected": meta.peers_rejected,
        },
        split=None if split is None else {"source": split.source, "seq": split.seq},
        sources=dict(sources or {}),
        seq=meta.seq,
        instance=meta.instance,
        time=meta.time,
        interval=meta.interval,
        journal=meta.journal,
        paused=meta.paused,
    )


def random_engine(seed: int, accounts: int, valuation: str = BOOK, fills: int = 30) -> Engine:
    """An engine fed a split, buys and sells (some over-sells), a later split that drops
    and adds accounts, and fills held before the first split."""
    rng = random.Random(seed)
    engine = Engine(Book(TICKERS, valuation=valuation))
    seqs = itertools.count(1)
    for _ in range(rng.randint(0, 2)):  # held until a split arrives
        engine.receive(pack(fill_message("f", next(seqs), "XOM", 42.5, rng.randint(1, 50))))
    names = [f"ACC-{i:05d}" for i in range(accounts)]
    if accounts:
        engine.receive(pack(split_message("aum", 1, even_split(names))))
    for _ in range(fills):
        side = "sell" if rng.random() < 0.3 else None
        price = rng.randint(100, 90_000) / 100
        message = fill_message(
            "f", next(seqs), rng.choice(TICKERS), price, rng.randint(1, 500), side
        )
        engine.receive(pack(message))
    if accounts > 2:
        later = names[1:] + [f"NEW-{i}" for i in range(rng.randint(0, 3))]
        engine.receive(pack(split_message("aum", 2, even_split(later))))
    engine.commit()
    return engine


def even_split(names: list[str]) -> dict[str, float]:
    """Percents with two decimals summing to exactly 100 (the remainder on the first)."""
    cents = 10_000 // len(names)
    percents = dict.fromkeys(names, cents / 100)
    percents[names[0]] = (10_000 - cents * (len(names) - 1)) / 100
    return percents


def parts(engine: Engine, seq: int = 7) -> tuple[DeliveryCounts, SnapshotMeta, dict[str, int]]:
    meta = SnapshotMeta(seq=seq, instance="abc", time=WALL, interval=10.0, journal="j" * 32)
    return engine.delivery(), meta, engine.sequencer.last_seq


SIZES = [0, 1, 3, ROWS_PER_PIECE - 1, ROWS_PER_PIECE, ROWS_PER_PIECE + 1, 2 * ROWS_PER_PIECE + 7]


@pytest.mark.parametrize("valuation", [BOOK, MARKET])
@pytest.mark.parametrize("accounts", SIZES)
def test_every_way_of_building_gives_the_reference_bytes(accounts, valuation):
    engine = random_engine(accounts * 31 + len(valuation), accounts, valuation)
    delivery, meta, sources = parts(engine)
    expected = reference_snapshot(engine.book, delivery, meta, sources).frames()
    assert build_snapshot(engine.book, delivery, meta, sources).frames() == expected
    state = capture(engine.book, delivery, meta, sources)
    assert build(state).frames() == expected
    pauses = []
    assert encode(state, snapshot_packer(), lambda: pauses.append(1)) == expected
    assert len(pauses) == 2 * -(-len(engine.book.accounts) // ROWS_PER_PIECE)  # two passes
    worker = SnapshotWorker(CLOSE_WAIT)
    try:
        assert worker.submit(state)
        assert worker.wait(WAIT)
        built = worker.take()
        assert built is not None and built.seq == meta.seq and built.frames == expected
    finally:
        worker.close()


def test_a_capture_is_not_changed_by_what_the_engine_does_next():
    engine = random_engine(5, 40)
    delivery, meta, sources = parts(engine)
    before = reference_snapshot(engine.book, delivery, meta, dict(sources)).frames()
    state = capture(engine.book, delivery, meta, sources)
    # Buys and sells change positions dicts in place; a split forgets and adds accounts;
    # a new source appears in the sequencer's dict.
    for seq, side in enumerate([None, "sell", None], start=200):
        engine.receive(pack(fill_message("f", seq, "AAPL", 12.5, 30, side)))
    engine.receive(pack(fill_message("g", 1, "MSFT", 99.0, 7)))
    engine.receive(pack(split_message("aum", 3, {"X": 50, "Y": 50})))
    engine.commit()
    assert reference_snapshot(engine.book, *parts(engine)).frames() != before
    assert encode(state, snapshot_packer()) == before


def test_a_failed_build_is_logged_and_costs_that_snapshot_only(caplog):
    engine = random_engine(9, 5)
    state = capture(engine.book, *parts(engine))
    calls = []

    def make(job: SnapshotState) -> list[bytes]:
        calls.append(job.meta.seq)
        if len(calls) == 1:
            raise RuntimeError("planted")
        return encode(job, snapshot_packer())

    worker = SnapshotWorker(CLOSE_WAIT, make=make)
    try:
        with caplog.at_level(logging.ERROR, logger="controller.snapshot"):
            assert worker.submit(state) and worker.wait(WAIT)
            failed = worker.take()
        assert failed is not None and failed.frames is None and failed.seq == 7
        assert "could not build snapshot #7" in caplog.text and "planted" in caplog.text
        assert worker.submit(state) and worker.wait(WAIT)
        again = worker.take()
        assert again is not None and again.frames == build(state).frames()
    finally:
        worker.close()


def test_one_job_at_a_time_and_close_does_not_wait_forever():
    gate = threading.Event()
    engine = random_engine(3, 4)
    state = capture(engine.book, *parts(engine))

    def stuck(job: SnapshotState) -> list[bytes]:
        gate.wait()
        return build(job).frames()

    worker = SnapshotWorker(0.01, make=stuck)
    assert worker.submit(state)
    assert not worker.submit(state)  # one in hand: the second is refused, not queued
    assert worker.take() is None and worker.busy
    worker.close()  # the build in hand never ends by itself; close gives up on it
    assert not worker.busy and not worker.submit(state)
    gate.set()


# -- the service with a worker, on a fake clock over inproc -------------------------------
_endpoints = itertools.count()


@pytest.fixture
def rig(ctx):
    """A service with a snapshot worker, a subscriber caught up with it, a pusher."""
    n = next(_endpoints)
    inputs, events = f"inproc://snap-in-{n}", f"inproc://snap-out-{n}"
    clock = FakeClock()
    wall = itertools.count(WALL)
    service = ControllerService(
        ctx,
        Engine(Book(DEFAULT_TICKERS)),
        inputs,
        events,
        snapshot_interval=10.0,
        clock=clock,
        wall_clock=lambda: float(next(wall)),
        snapshot_worker=True,
    )
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(events)
    for _ in range(200):  # end the slow-joiner window
        service.publish_snapshot()
        if any(topic == TOPIC_POSITIONS for topic, _ in collect(sub, 10)):
            break
    else:
        raise AssertionError("subscriber never received a snapshot")
    collect(sub)
    push = ctx.socket(zmq.PUSH)
    push.connect(inputs)
    yield service, clock, sub, push
    service.close()


def feed(service: ControllerService, push: zmq.Socket, *messages: dict) -> None:
    """Send messages and step until the engine has taken them all."""
    for message in messages:
        push.send(pack(message))
    received = 0
    while received < len(messages):
        received += service.step(1000)


def expected_next(service: ControllerService) -> bytes:
    """The body the next timed snapshot must have, built at once from the live state."""
    engine = service.engine
    meta = SnapshotMeta(
        seq=service.snapshot_seq + 1,
        instance=service.instance,
        time=WALL + service.snapshot_seq,  # the fake wall clock ticks once per snapshot
        interval=service.snapshot_interval,
    )
    return reference_snapshot(
        engine.book, engine.delivery(), meta, engine.sequencer.last_seq
    ).frames()[1]


def positions_events(events: list[tuple[bytes, dict]]) -> list[dict]:
    return [body for topic, body in events if topic == TOPIC_POSITIONS]


def raw_events(sub: zmq.Socket, timeout_ms: int = 100) -> list[list[bytes]]:
    """Every message waiting on `sub`, as frames (waiting up to `timeout_ms` for the first)."""
    messages = []
    if sub.poll(timeout_ms):
        try:
            while True:
                messages.append(sub.recv_multipart(zmq.NOBLOCK))
        except zmq.Again:
            pass
    return messages


def published_snapshot(sub: zmq.Socket) -> tuple[bytes, set[str]]:
    """The one snapshot body waiting on `sub`, and the sources acked right after it."""
    messages = raw_events(sub)
    at = [i for i, frames in enumerate(messages) if frames[0] == TOPIC_POSITIONS]
    assert len(at) == 1, f"{len(at)} snapshots published"
    acks = set()
    for topic, body in messages[at[0] + 1 :]:
        if not topic.startswith(TOPIC_ACK):
            break
        acks.add(unpack(body)["source"])
    return messages[at[0]][1], acks


def test_the_service_publishes_the_state_it_captured_then_the_acks(rig):
    service, clock, sub, push = rig
    split = split_message("aum", 1, {"A": 60, "B": 40})
    feed(service, push, split, fill_message("f", 1, "AAPL", 10.0, 9))
    expected = expected_next(service)
    clock.advance(10)
    service.step(0)  # captures; the worker builds
    assert service.worker is not None and service.worker.busy
    feed(service, push, fill_message("f", 2, "AAPL", 11.0, 5))  # changes the book meanwhile
    assert service.worker.wait(WAIT)
    service.step(0)  # sends what the worker made, if the loop has not yet
    body, acks = published_snapshot(sub)
    assert body == expected and unpack(body)["counts"]["fills"] == 1
    assert acks == {"aum", "f"}


def test_a_slot_due_while_building_is_skipped_not_queued(rig):
    service, clock, sub, push = rig
    assert service.worker is not None
    service.worker.close()
    gate = threading.Event()

    def slow(job: SnapshotState) -> list[bytes]:
        gate.wait()
        return encode(job, snapshot_packer())

    service.worker = SnapshotWorker(CLOSE_WAIT, make=slow)
    first = service.snapshot_seq + 1
    clock.advance(10)
    service.step(0)
    for _ in range(3):
        clock.advance(10)
        service.step(0)
    assert service.snapshots_skipped == 3 and service.snapshot_seq == first
    assert positions_events(collect(sub, 10)) == []
    gate.set()
    assert service.worker.wait(WAIT)
    service.step(0)
    assert [body["seq"] for body in positions_events(collect(sub, 100))] == [first]
    clock.advance(10)
    service.step(0)
    assert service.worker.wait(WAIT)
    service.step(0)
    assert [body["seq"] for body in positions_events(collect(sub, 100))] == [first + 1]


def test_a_failed_build_leaves_the_service_serving(rig, caplog):
    service, clock, sub, push = rig
    assert service.worker is not None
    service.worker.close()
    failures = iter([True])

    def flaky(job: SnapshotState) -> list[bytes]:
        if next(failures, False):
            raise ValueError("planted")
        return encode(job, snapshot_packer())

    service.worker = SnapshotWorker(CLOSE_WAIT, make=flaky)
    with caplog.at_level(logging.ERROR, logger="controller.snapshot"):
        clock.advance(10)
        service.step(0)
        assert service.worker.wait(WAIT)
        service.step(0)
    assert "planted" in caplog.text
    assert positions_events(collect(sub, 10)) == []
    feed(service, push, split_message("aum", 1, {"A": 100}))  # still serving
    expected = expected_next(service)
    clock.advance(10)
    service.step(0)
    assert service.worker.wait(WAIT)
    service.step(0)
    assert published_snapshot(sub)[0] == expected


def test_a_direct_snapshot_waits_for_the_one_in_hand(rig):
    service, clock, sub, push = rig
    clock.advance(10)
    service.step(0)
    service.publish_snapshot()  # tests and tools call this; the order must hold
    seqs = [body["seq"] for body in positions_events(collect(sub, 100))]
    assert seqs == sorted(seqs) and len(seqs) == 2


def test_without_its_thread_the_service_builds_on_the_loop(rig):
    service, clock, sub, push = rig
    assert service.worker is not None
    service.worker.close()  # as if the thread had died
    expected = expected_next(service)
    clock.advance(10)
    service.step(0)
    assert published_snapshot(sub)[0] == expected


def test_close_with_a_build_in_hand_returns(rig):
    service, clock, sub, push = rig
    assert service.worker is not None
    service.worker.close()
    gate = threading.Event()

    def stuck(job: SnapshotState) -> list[bytes]:
        gate.wait()
        return build(job).frames()

    service.worker = SnapshotWorker(0.01, make=stuck)
    clock.advance(10)
    service.step(0)
    assert service.worker.busy
    service.close()
    assert service.pub.closed and service.pull.closed
    gate.set()


@pytest.mark.skipif(native.hotpath is None, reason="the compiled hot path is not built")
def test_a_capture_holds_against_the_compiled_path():
    """The compiled path keeps the book in an int64 mirror and writes it back when the
    book is read: a capture must still be the state it was taken at."""
    engine = Engine(Book(TICKERS), compiled=True)
    assert engine.fast is not None
    names = [f"ACC-{i:03d}" for i in range(150)]
    engine.receive(pack(split_message("aum", 1, even_split(names))))
    rng = random.Random(11)
    seqs = itertools.count(1)
    for _ in range(40):
        message = fill_message("f", next(seqs), rng.choice(TICKERS), 25.5, rng.randint(1, 400))
        engine.receive(pack(message))
    engine.commit()
    delivery, meta, sources = parts(engine)
    before = reference_snapshot(engine.book, delivery, meta, dict(sources)).frames()
    state = capture(engine.book, delivery, meta, sources)
    for _ in range(40):
        message = fill_message("f", next(seqs), rng.choice(TICKERS), 30.0, rng.randint(1, 400))
        engine.receive(pack(message))
    engine.commit()
    assert engine.fast.counts()["handled"] == 80  # every fill took the compiled path
    assert reference_snapshot(engine.book, *parts(engine)).frames() != before
    assert encode(state, snapshot_packer()) == before
