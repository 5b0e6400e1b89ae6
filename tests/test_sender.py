"""The reliable sender: acks and rejections for its own source only, controller restarts,
oversize messages, and what the simulators say at exit.

Most tests drive a sender against a fake controller (a PULL and an XPUB on inproc): an
XPUB hands the test each subscription, so a test knows the sender's SUB is joined before it
publishes anything. The last tests run the real controller service on a fake clock, which
the test advances so that resends and snapshot acks always come.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time

import pytest
import zmq
from helpers import FakeClock
from test_service import make_service, rebind

from aumsim.service import AumSimulator
from aumsim.splits import account_names
from common import protocol
from common.history import recover
from common.lifecycle import StopFlag
from common.protocol import (
    DEFAULT_TICKERS,
    MAX_MESSAGE_BYTES,
    MAX_NAME_LENGTH,
    SPLIT,
    fill_message,
    pack,
    split_message,
    unpack,
)
from common.sender import (
    REJECTION_LOG_EVERY,
    REJECTIONS_LOGGED_IN_FULL,
    MessageTooLarge,
    ReliableSender,
    size_limit,
)
from controller.deadletter import DeadLetters
from controller.engine import Engine
from controller.journal import JournalWriter
from fillsim.market import Market
from fillsim.service import FillSimulator

DEADLINE = 10.0  # seconds any wait in these tests may take before it fails
SIMULATOR_DEADLINE = 30.0
INSTANCE_A = "aaaaaaaaaaaa"
INSTANCE_B = "bbbbbbbbbbbb"
_endpoints = itertools.count()


class FakeController:
    """The controller's sockets, driven by the test. Topics follow the wire contract:
    `ack:<source>` and `rejected:<source>`, bodies carrying the controller instance."""

    def __init__(self, ctx: zmq.Context, instance: str = INSTANCE_A) -> None:
        n = next(_endpoints)
        self.inputs, self.events = f"inproc://fake-inputs-{n}", f"inproc://fake-events-{n}"
        self.instance = instance
        self.pull = ctx.socket(zmq.PULL)
        self.pull.bind(self.inputs)
        self.pub = ctx.socket(zmq.XPUB)
        self.pub.bind(self.events)
        self.subscriptions: set[bytes] = set()

    def wait_subscribed(self, *topics: bytes) -> None:
        """Read subscription messages until every topic is subscribed: from then on, what
        the XPUB sends on those topics reaches the subscriber."""
        deadline = time.monotonic() + DEADLINE
        while not set(topics) <= self.subscriptions:
            if time.monotonic() > deadline:
                raise AssertionError(f"never subscribed to {topics}: {self.subscriptions}")
            if self.pub.poll(100):
                message = self.pub.recv()
                if message[:1] == b"\x01":
                    self.subscriptions.add(message[1:])
                else:
                    self.subscriptions.discard(message[1:])

    def join(self, sender: ReliableSender) -> None:
        self.wait_subscribed(
            b"ack:" + sender.source.encode(), b"rejected:" + sender.source.encode()
        )

    def receive(self, count: int, sender: ReliableSender) -> list[dict]:
        """The next `count` input messages, pumping `sender` meanwhile."""
        messages: list[dict] = []
        deadline = time.monotonic() + DEADLINE
        while len(messages) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"received {len(messages)} of {count} messages")
            sender.pump(0)
            if self.pull.poll(50):
                messages.append(unpack(self.pull.recv()))
        return messages

    def ack(self, source: str, seq: int, instance: str | None = None, topic: str | None = None):
        body = {"source": source, "seq": seq, "instance": instance or self.instance}
        self.pub.send_multipart([b"ack:" + (topic or source).encode(), pack(body)])

    def reject(self, source: str, seq: int, reason: str, instance: str | None = None) -> None:
        body = {
            "source": source,
            "seq": seq,
            "reason": reason,
            "instance": instance or self.instance,
        }
        self.pub.send_multipart([b"rejected:" + source.encode(), pack(body)])

    def close(self) -> None:
        self.pull.close()
        self.pub.close()


class Responder(threading.Thread):
    """A fake controller answering on its own thread: every message is acknowledged, and
    those whose seq is in `rejects` are rejected first (as the controller does)."""

    def __init__(self, fake: FakeController, rejects: set[int]) -> None:
        super().__init__(daemon=True)
        self.fake = fake
        self.rejects = rejects
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            if not self.fake.pull.poll(20):
                continue
            message = unpack(self.fake.pull.recv())
            source, seq = message["source"], message["seq"]
            if seq in self.rejects:
                self.fake.reject(source, seq, "unknown ticker 'NOPE' (not in the universe)")
            self.fake.ack(source, seq)

    def finish(self) -> None:
        self.stop.set()
        self.join(DEADLINE)
        assert not self.is_alive()


def pump_until(condition, *senders: ReliableSender) -> None:
    """Pump the senders until `condition()` holds, failing after DEADLINE seconds."""
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        for sender in senders:
            sender.pump(10)


@pytest.fixture
def fake(ctx):
    controller = FakeController(ctx)
    yield controller
    controller.close()


def connected_sender(ctx, fake, source="desk@00000001", **kwargs) -> ReliableSender:
    """A sender whose SUB is joined to `fake`. Its clock is a FakeClock unless given, so it
    resends only when the test moves the clock (and no stray resend reaches `fake`)."""
    kwargs.setdefault("clock", FakeClock())
    sender = ReliableSender(ctx, source, fake.inputs, fake.events, **kwargs)
    fake.join(sender)
    return sender


def fills(sender: ReliableSender, count: int, quantity: int = 1) -> None:
    for _ in range(count):
        sender.send(fill_message(sender.source, 0, "AAPL", 10.0, quantity))


def test_sender_subscribes_to_its_own_ack_and_rejection_topics_only(ctx, fake):
    sender = connected_sender(ctx, fake, "desk-a@1")
    assert fake.subscriptions == {b"ack:desk-a@1", b"rejected:desk-a@1"}
    sender.close()


def test_events_for_a_longer_source_with_the_same_prefix_are_ignored(ctx, fake):
    sender = connected_sender(ctx, fake, "desk-a@1")
    fills(sender, 3)
    fake.receive(3, sender)
    # Both reach the SUB (prefix match) but are not this sender's.
    fake.ack("desk-a@12", 3)
    fake.reject("desk-a@12", 2, "not yours")
    fake.ack("desk-a@12", 3, topic="desk-a@1")  # right topic, wrong body
    fake.ack("desk-a@1", 1)  # sent last on the same pipe: read after the others
    pump_until(lambda: sender.acked == 1, sender)
    assert sender.pending == 2 and sender.rejected == 0 and sender.accepted == 1
    sender.close()


def test_unreadable_and_malformed_events_are_ignored(ctx, fake, caplog):
    sender = connected_sender(ctx, fake)
    fills(sender, 2)
    fake.receive(2, sender)
    topic = b"ack:" + sender.source.encode()
    with caplog.at_level(logging.WARNING, logger="common.sender"):
        fake.pub.send_multipart([topic, b"\xc1 not msgpack"])
        fake.pub.send_multipart([topic])  # one frame only
        fake.pub.send_multipart([topic, pack({"source": sender.source, "seq": "2"})])
        fake.reject(sender.source, 2, None)  # no reason
        fake.ack(sender.source, 1)
        pump_until(lambda: sender.acked == 1, sender)
    assert (sender.pending, sender.rejected, sender.accepted) == (1, 0, 1)
    assert len(caplog.records) == 3  # unreadable, malformed ack, malformed rejection
    sender.close()


def test_a_rejected_message_is_dropped_counted_and_never_resent(ctx, fake, caplog):
    clock = FakeClock()
    sender = connected_sender(ctx, fake, clock=clock, resend_after=1.0)
    fills(sender, 3)
    assert [m["seq"] for m in fake.receive(3, sender)] == [1, 2, 3]
    reason = "unknown ticker 'NOPE' %s {0} [red]x[/red]"  # data, never a format string
    with caplog.at_level(logging.WARNING, logger="common.sender"):
        fake.reject(sender.source, 2, reason)
        fake.ack(sender.source, 2)
        pump_until(lambda: sender.acked == 2, sender)
    assert sender.pending == 1 and sender.rejected == 1 and sender.accepted == 1
    assert [r.getMessage() for r in caplog.records] == [
        f"{sender.source}: controller rejected seq 2: {reason}"
    ]

    clock.now += 1.0  # quiet for resend_after: everything unacknowledged goes again
    resent = fake.receive(1, sender)
    assert [m["seq"] for m in resent] == [3]
    fake.ack(sender.source, 3)
    pump_until(lambda: sender.pending == 0, sender)
    assert (sender.accepted, sender.rejected) == (2, 1)
    assert sender.summary() == "2 accepted, 1 rejected"
    assert not sender.all_accepted
    sender.close()


def test_a_rejection_of_a_message_still_waiting_drops_it_from_every_resend(ctx, fake):
    clock = FakeClock()
    sender = connected_sender(ctx, fake, clock=clock, resend_after=1.0)
    fills(sender, 3)
    fake.receive(3, sender)
    fake.reject(sender.source, 1, "bad")  # no ack yet: seq 1 is gone all the same
    pump_until(lambda: sender.rejected == 1, sender)
    assert list(sender.outbox) == [2, 3]
    clock.now += 1.0
    assert [m["seq"] for m in fake.receive(2, sender)] == [2, 3]
    fake.ack(sender.source, 3)
    pump_until(lambda: sender.pending == 0, sender)
    assert (sender.accepted, sender.rejected) == (2, 1)
    sender.close()


def test_rejection_logs_are_rate_limited(ctx, fake, caplog):
    sender = connected_sender(ctx, fake)
    total = REJECTIONS_LOGGED_IN_FULL + REJECTION_LOG_EVERY
    fills(sender, total)
    with caplog.at_level(logging.WARNING, logger="common.sender"):
        for seq in range(1, total + 1):
            fake.reject(sender.source, seq, f"bad #{seq}")
        fake.ack(sender.source, total)
        pump_until(lambda: sender.acked == total, sender)
    assert (sender.accepted, sender.rejected, sender.pending) == (0, total, 0)
    lines = [r.getMessage() for r in caplog.records if "controller rejected" in r.getMessage()]
    assert len(lines) == REJECTIONS_LOGGED_IN_FULL + 1
    assert lines[-1].endswith(
        f"bad #{REJECTION_LOG_EVERY}"
        f" ({REJECTION_LOG_EVERY} rejected so far; logging one in {REJECTION_LOG_EVERY})"
    )
    sender.close()


def test_an_ack_going_back_within_one_instance_is_ignored(ctx, fake, caplog):
    sender = connected_sender(ctx, fake)
    fills(sender, 4)
    fake.receive(4, sender)
    with caplog.at_level(logging.ERROR, logger="common.sender"):
        fake.ack(sender.source, 3)
        fake.ack(sender.source, 1)  # impossible from one instance: not a restart
        fake.ack(sender.source, 4)
        pump_until(lambda: sender.acked == 4, sender)
    assert sender.source == "desk@00000001" and sender.lost == 0
    assert sender.accepted == 4 and sender.all_accepted
    assert any(
        f"instance {INSTANCE_A} acknowledged seq 1 after 3" in r.getMessage()
        for r in caplog.records
    )
    sender.close()


def test_a_new_instance_that_lost_acknowledged_messages_starts_a_new_session(ctx, fake, caplog):
    sender = connected_sender(ctx, fake)
    fills(sender, 3, quantity=1)
    fake.receive(3, sender)
    fake.ack(sender.source, 3)
    pump_until(lambda: sender.acked == 3, sender)
    sender.send(fill_message(sender.source, 0, "MSFT", 20.0, 4))
    sender.send(fill_message(sender.source, 0, "MSFT", 20.0, 5))
    fake.receive(2, sender)
    old = sender.source

    with caplog.at_level(logging.ERROR, logger="common.sender"):
        fake.ack(old, 1, INSTANCE_B)  # a restarted controller that knows only seq 1
        pump_until(lambda: sender.source != old, sender)
    assert sender.source.startswith("desk@") and sender.controller_instance == INSTANCE_B
    (line,) = [r.getMessage() for r in caplog.records]
    assert f"instance {INSTANCE_B} acknowledged seq 1 where instance {INSTANCE_A}" in line
    assert "lost messages 2..3" in line and f"continuing as {sender.source}" in line

    # Listens under its new identity only, and sends what was unacknowledged, renumbered.
    fake.join(sender)
    assert b"ack:" + old.encode() not in fake.subscriptions
    resent = fake.receive(2, sender)
    assert [(m["source"], m["seq"], m["quantity"]) for m in resent] == [
        (sender.source, 1, 4),
        (sender.source, 2, 5),
    ]
    fake.ack(sender.source, 2, INSTANCE_A)  # late, from the replaced controller: stale
    fake.ack(sender.source, 1, INSTANCE_B)
    pump_until(lambda: sender.acked == 1, sender)
    assert sender.pending == 1
    fake.ack(sender.source, 2, INSTANCE_B)
    pump_until(lambda: sender.pending == 0, sender)
    assert (sender.accepted, sender.lost) == (3, 2)
    assert (
        sender.summary()
        == "3 accepted, 0 rejected, 2 acknowledged then lost by a controller restart"
    )
    assert not sender.all_accepted
    sender.close()


def test_a_new_instance_that_kept_everything_is_followed_without_a_new_session(ctx, fake, caplog):
    sender = connected_sender(ctx, fake)
    fills(sender, 3)
    fake.receive(3, sender)
    fake.ack(sender.source, 2)
    pump_until(lambda: sender.acked == 2, sender)
    with caplog.at_level(logging.INFO, logger="common.sender"):
        fake.ack(sender.source, 3, INSTANCE_B)
        pump_until(lambda: sender.acked == 3, sender)
    assert sender.source == "desk@00000001" and sender.controller_instance == INSTANCE_B
    assert any(
        f"controller restarted (instance {INSTANCE_A} -> {INSTANCE_B})" in r.getMessage()
        for r in caplog.records
    )
    assert sender.all_accepted
    sender.close()


def oversize_split(sender: ReliableSender) -> dict:
    """A valid-looking split whose encoding is over the split size limit."""
    name = "A" * (MAX_NAME_LENGTH - 8)
    count = size_limit(SPLIT) // MAX_NAME_LENGTH + 1
    splits = {f"{name}{i:08d}": 100 / count for i in range(count)}
    return split_message(sender.source, 0, splits)


def test_an_oversize_message_is_refused_and_never_queued(ctx, fake):
    sender = connected_sender(ctx, fake)
    with pytest.raises(MessageTooLarge, match=r"split message is [\d,]+ bytes, over the"):
        sender.send(oversize_split(sender))
    huge_fill = fill_message(sender.source, 0, "T" * MAX_MESSAGE_BYTES, 1.0, 1)
    with pytest.raises(MessageTooLarge, match=f"over the {MAX_MESSAGE_BYTES:,}-byte limit"):
        sender.send(huge_fill)
    assert (sender.pending, sender.next_seq, sender.refused) == (0, 1, 2)
    assert sender.send(fill_message(sender.source, 0, "AAPL", 1.0, 1)) == 1
    assert fake.receive(1, sender)[0]["seq"] == 1  # the first thing the controller sees
    sender.close()


@pytest.mark.parametrize("rejects", [set(), {2}])
def test_fill_simulator_says_what_was_accepted_and_rejected_at_exit(ctx, fake, caplog, rejects):
    sender = connected_sender(ctx, fake, clock=time.monotonic)
    simulator = FillSimulator(sender, Market(DEFAULT_TICKERS, seed=1), rate=1000.0, count=5)
    with caplog.at_level(logging.INFO, logger="fillsim.service"):
        run_with_responder(simulator.run, fake, rejects)
    messages = [r.getMessage() for r in caplog.records if r.name == "fillsim.service"]
    if rejects:
        assert messages == [f"{sender.source}: 5 fills sent: 4 accepted, 1 rejected"]
    else:
        assert messages == [f"{sender.source}: all 5 fills sent and acknowledged"]
    sender.close()


@pytest.mark.parametrize("rejects", [set(), {1}])
def test_aum_simulator_says_what_was_accepted_and_rejected_at_exit(ctx, fake, caplog, rejects):
    sender = connected_sender(ctx, fake, clock=time.monotonic)
    simulator = AumSimulator(sender, account_names(3), interval=0.001, count=2, seed=1)
    with caplog.at_level(logging.INFO, logger="aumsim.service"):
        run_with_responder(simulator.run, fake, rejects)
    last = [r.getMessage() for r in caplog.records if r.name == "aumsim.service"][-1]
    if rejects:
        assert last == f"{sender.source}: 2 splits sent: 1 accepted, 1 rejected"
    else:
        assert last == f"{sender.source}: all 2 splits sent and acknowledged"
    sender.close()


def test_aum_simulator_logs_an_oversize_split_and_finishes(ctx, fake, caplog, monkeypatch):
    # Any split within the account limit fits the real split limit; a smaller limit makes
    # one that does not, with an account count the simulator accepts.
    monkeypatch.setattr(protocol, "MAX_SPLIT_MESSAGE_BYTES", 64 * 1024)
    sender = connected_sender(ctx, fake, clock=time.monotonic)
    count = size_limit(SPLIT) // 100 + 1  # names of over 100 bytes each: too big
    accounts = [f"{'A' * 100}{i:08d}" for i in range(count)]
    simulator = AumSimulator(sender, accounts, interval=0.001, count=1, seed=1)
    with caplog.at_level(logging.INFO, logger="aumsim.service"):
        run_with_responder(simulator.run, fake, set())
    messages = [r.getMessage() for r in caplog.records if r.name == "aumsim.service"]
    assert "refused (1 so far): split message is" in messages[0]
    assert (
        messages[-1]
        == f"{sender.source}: 0 splits sent: 0 accepted, 0 rejected, 1 refused as too large"
    )
    assert fake.pull.poll(0) == 0  # nothing went out
    sender.close()


def run_with_responder(run, fake: FakeController, rejects: set[int]) -> None:
    """Run a simulator's loop while a responder thread plays the controller; a watchdog
    stops the loop (and the test then fails) if it does not finish in time."""
    stop = StopFlag()
    watchdog = threading.Timer(SIMULATOR_DEADLINE, stop.set)
    responder = Responder(fake, rejects)
    responder.start()
    watchdog.start()
    try:
        run(stop)
    finally:
        watchdog.cancel()
        responder.finish()
    assert not stop, "the simulator did not finish by itself"


# -- against the real controller service, on a fake clock -----------------------------------
def deliver(service, sender: ReliableSender, clock: FakeClock, tick: float = 0.25) -> None:
    """Step the controller and pump the sender until the sender has nothing pending.

    The clock moves `tick` per round, so a sender whose SUB joined after an ack went out
    resends (every `resend_after`) and the controller acks again (also after each snapshot):
    the loop cannot wait on an ack that was published before anyone could hear it."""
    deadline = time.monotonic() + DEADLINE
    while sender.pending:
        if time.monotonic() > deadline:
            raise AssertionError(f"{sender.pending} messages still unacknowledged")
        clock.advance(tick)
        service.step(5)
        sender.pump(0)


def test_sender_started_before_controller_delivers_everything(ctx):
    clock = FakeClock()
    endpoints = (
        f"inproc://early-inputs-{next(_endpoints)}",
        f"inproc://early-events-{next(_endpoints)}",
    )
    sender = ReliableSender(ctx, "early", *endpoints, clock=clock)
    sender.send(split_message("early", 0, {"X": 50, "Y": 50}))
    for _ in range(20):
        sender.send(fill_message("early", 0, "AAPL", 10.0, 3))
    service = make_service(ctx, endpoints, clock)
    deliver(service, sender, clock)
    assert service.engine.book.total_shares()["AAPL"] == 60
    assert service.engine.sequencer.last_seq["early"] == 21
    assert (sender.accepted, sender.rejected) == (21, 0)
    assert sender.controller_instance == service.instance
    service.close()
    sender.close()


def test_controller_rejection_reaches_the_sender_and_is_never_resent(ctx):
    clock = FakeClock()
    service = make_service(ctx, ("tcp://127.0.0.1:*", "tcp://127.0.0.1:*"), clock)
    sender = ReliableSender(ctx, "desk", service.inputs, service.publish, clock=clock)
    sender.send(split_message("desk", 0, {"A": 100}))
    deliver(service, sender, clock)  # from here on the sender hears this controller
    sender.send(fill_message("desk", 0, "NOPE", 10.0, 5))
    sender.send(fill_message("desk", 0, "AAPL", 10.0, 5))
    deliver(service, sender, clock)
    assert (sender.accepted, sender.rejected) == (2, 1)
    assert service.engine.sequencer.last_seq["desk"] == 3
    assert service.engine.book.total_shares()["AAPL"] == 5
    service.close()
    sender.close()


def test_controller_restart_loses_nothing_and_counts_nothing_twice(ctx, tmp_path):
    # tcp, not inproc: inproc peers do not reconnect to a rebound endpoint.
    clock = FakeClock()
    journal = tmp_path / "journal"
    checkpoint = tmp_path / "journal.checkpoint"

    def start_controller(endpoints):
        engine = Engine.from_recovered(
            recover(journal, checkpoint, DEFAULT_TICKERS),
            JournalWriter(journal),
            DeadLetters(tmp_path / "dead.jsonl"),
        )
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
    deliver(service, sender, clock)
    first_instance = service.instance
    send_fills(50)
    service.close()  # a stop with fills in flight: unacknowledged ones stay with the sender
    send_fills(25)
    service = start_controller(endpoints)
    deliver(service, sender, clock)
    book = service.engine.book
    assert book.total_shares() == sent
    assert book.fills_allocated == 125
    assert service.engine.sequencer.last_seq["s"] == 126
    # A new instance that kept everything: followed, same session, nothing lost.
    assert sender.controller_instance == service.instance != first_instance
    assert (sender.source, sender.accepted, sender.lost) == ("s", 126, 0)
    service.close()
    assert recover(journal, None, DEFAULT_TICKERS).book == book
    sender.close()


def test_sender_carries_on_as_a_new_session_when_the_controller_lost_its_acks(
    ctx, tmp_path, caplog
):
    # A controller that comes back knowing less than it acknowledged (here: a new, empty
    # journal) can never fill the gap before the sender's next seq; the sender starts over.
    clock = FakeClock()
    first = make_service(ctx, ("tcp://127.0.0.1:*", "tcp://127.0.0.1:*"), clock)
    endpoints = (first.inputs, first.publish)
    sender = ReliableSender(ctx, "desk@00000000", *endpoints, clock=clock, resend_after=1.0)
    sender.send(split_message("x", 0, {"A": 100}))
    for _ in range(4):
        sender.send(fill_message("x", 0, "AAPL", 10.0, 1))
    deliver(first, sender, clock)  # ends only once the sender has heard this controller
    assert sender.controller_instance == first.instance
    first.close()
    second = rebind(ctx, endpoints, clock)
    sender.send(split_message("x", 0, {"A": 100}))
    sender.send(fill_message("x", 0, "AAPL", 10.0, 7))
    with caplog.at_level(logging.ERROR, logger="common.sender"):
        deliver(second, sender, clock)
    assert sender.source != "desk@00000000" and sender.source.startswith("desk@")
    assert sender.controller_instance == second.instance
    assert second.engine.sequencer.last_seq == {sender.source: 2}
    assert second.engine.book.total_shares()["AAPL"] == 7
    lost = [r.getMessage() for r in caplog.records if "lost messages" in r.getMessage()]
    assert len(lost) == 1
    assert (
        f"instance {second.instance} acknowledged seq 0 where instance {first.instance}" in lost[0]
    )
    assert (sender.accepted, sender.lost) == (2, 5)
    second.close()
    sender.close()


def test_rejections_heard_out_of_seq_order_are_all_counted(ctx, fake):
    """A sell held until the first split is rejected when the split comes, after a later
    seq of the same source was already rejected: both rejections count."""
    sender = connected_sender(ctx, fake, clock=FakeClock(), resend_after=1.0)
    fills(sender, 2)
    fake.receive(2, sender)
    fake.reject(sender.source, 2, "unknown ticker 'NOPE'")
    pump_until(lambda: sender.rejected == 1, sender)
    fake.reject(sender.source, 1, "sell of 10 AAPL exceeds the 0 held across accounts")
    fake.ack(sender.source, 2)
    pump_until(lambda: sender.acked == 2, sender)
    assert (sender.accepted, sender.rejected, sender.pending) == (0, 2, 0)
    assert sender.summary() == "0 accepted, 2 rejected"
    sender.close()
