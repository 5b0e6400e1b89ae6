"""A simulated network behind pyzmq's socket interface, so the production service and
sender run unchanged: PUSH/PULL for inputs, PUB/SUB for events, and the PUSH socket's
connection monitor.

Every message's fate (dropped, delayed, duplicated) is drawn from a stream seeded by the
run's seed and the message itself, so it does not depend on the order in which messages
were handed over. Messages in flight to or from a controller die with it; a node cut off
by a partition neither sends nor receives, and its monitor says so (as ZeroMQ would on a
reconnect). Subscriber queues are bounded like a PUB socket's high-water mark.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

from controller.service import PUB_HWM
from simulation.kernel import Scheduler, content_key, uniforms

PULL_QUEUE_MAX = 1000  # ZeroMQ's default receive high-water mark
ENDPOINT = "sim://controller"
SEEN_MAX = 200_000  # message digests remembered to number repeats
LONG_DELAY_FACTOR = 50  # a long delay is up to this many times the usual most


@dataclass
class NetFaults:
    """How hostile the network is right now (the quiet phase sets it all to zero)."""

    delay_max: float = 0.01
    long_delay: float = 0.0  # chance of a delay up to LONG_DELAY_FACTOR x delay_max
    drop: float = 0.0
    duplicate: float = 0.0


@dataclass
class NetCounts:
    sent: int = 0
    delivered: int = 0
    dropped: int = 0
    duplicated: int = 0
    overflowed: int = 0  # dropped at a full queue (high-water mark)
    rejections: list[tuple[str, int, str]] = field(default_factory=list)


class Network:
    """Links every node to the controller (the only bound endpoint)."""

    def __init__(self, scheduler: Scheduler, seed: int) -> None:
        self.scheduler = scheduler
        self.seed = seed
        self.faults = NetFaults()
        self.counts = NetCounts()
        self.incarnation = 0  # the controller process now bound (0: none)
        self.pull: FakePull | None = None
        self.pub: FakePub | None = None
        self.subs: list[FakeSub] = []
        self.monitors: list[FakeMonitor] = []
        self.cut: set[str] = set()  # nodes partitioned from the controller
        self._seen: dict[tuple[str, str], int] = {}
        self.on_snapshot: Callable[[bytes], None] | None = None

    # -- the controller's side -------------------------------------------------------------
    def controller_up(self, pull: FakePull, pub: FakePub) -> None:
        self.incarnation += 1
        self.pull, self.pub = pull, pub
        for monitor in self.monitors:
            if monitor.node not in self.cut:
                monitor.post(zmq.EVENT_CONNECTED)

    def controller_down(self) -> None:
        """The controller process is gone: what was in flight to or from it is lost."""
        if self.pull is None:
            return
        self.pull = self.pub = None
        self.incarnation += 1
        for monitor in self.monitors:
            if monitor.node not in self.cut:
                monitor.post(zmq.EVENT_DISCONNECTED)

    def partition(self, node: str) -> None:
        if node in self.cut:
            return
        self.cut.add(node)
        if self.pull is not None:
            for monitor in self.monitors:
                if monitor.node == node:
                    monitor.post(zmq.EVENT_DISCONNECTED)

    def heal(self, node: str) -> None:
        if node not in self.cut:
            return
        self.cut.discard(node)
        if self.pull is not None:
            for monitor in self.monitors:
                if monitor.node == node:
                    monitor.post(zmq.EVENT_CONNECTED)

    def reachable(self, node: str) -> bool:
        return self.pull is not None and node not in self.cut

    # -- fates -----------------------------------------------------------------------------
    def fate(self, link: str, payload: bytes) -> tuple[list[float], str]:
        """Delays for each copy delivered ([] if dropped) and the ordering key: drawn from
        a digest of the seed, the link, the message and how often it was sent before."""
        key = content_key(link, payload)
        occurrence = self._seen.get((link, key), 0)
        self._seen[(link, key)] = occurrence + 1
        if len(self._seen) > SEEN_MAX:  # bounded: only repeats within a window matter
            self._seen.clear()
        rolls = iter(uniforms(self.seed, key, occurrence))
        faults = self.faults
        self.counts.sent += 1
        if next(rolls) < faults.drop:
            self.counts.dropped += 1
            return [], key
        copies = 2 if next(rolls) < faults.duplicate else 1
        self.counts.duplicated += copies - 1
        delays = []
        for _ in range(copies):
            spread = faults.delay_max * (LONG_DELAY_FACTOR if next(rolls) < faults.long_delay
                                         else 1)
            delays.append(next(rolls) * spread)
        return delays, f"{key}{occurrence}"

    def push(self, node: str, raw: bytes) -> None:
        """A sender's message towards the controller's PULL socket."""
        delays, key = self.fate(f"{node}>ctl", raw)
        incarnation = self.incarnation
        for delay in delays:
            self.scheduler.after(
                delay, lambda: self._arrive_pull(node, raw, incarnation), key
            )

    def _arrive_pull(self, node: str, raw: bytes, incarnation: int) -> None:
        pull = self.pull
        if pull is None or incarnation != self.incarnation or node in self.cut:
            self.counts.dropped += 1
            return
        if len(pull.queue) >= PULL_QUEUE_MAX:
            self.counts.overflowed += 1
            return
        self.counts.delivered += 1
        pull.queue.append(raw)
        pull.notify()

    def publish(self, frames: list[bytes]) -> None:
        """One two-frame event from the controller's PUB socket to every matching SUB."""
        topic = frames[0]
        if topic == b"positions" and self.on_snapshot is not None:
            self.on_snapshot(frames[1])
        if topic.startswith(b"rejected:"):
            self._note_rejection(frames[1])
        incarnation = self.incarnation
        for sub in self.subs:
            if sub.closed or sub.node in self.cut or not sub.matches(topic):
                continue
            delays, key = self.fate(f"ctl>{sub.node}", topic + frames[1])
            for delay in delays:
                self.scheduler.after(delay, self._arrival(sub, frames, incarnation), key)

    def _arrival(self, sub: FakeSub, frames: list[bytes], incarnation: int) -> Callable[[], None]:
        def arrive() -> None:
            self._arrive_sub(sub, frames, incarnation)

        return arrive

    def _note_rejection(self, body: bytes) -> None:
        from common.protocol import unpack

        message = unpack(body)
        self.counts.rejections.append((message["source"], message["seq"], message["reason"]))

    def _arrive_sub(self, sub: FakeSub, frames: list[bytes], incarnation: int) -> None:
        if sub.closed or incarnation != self.incarnation or sub.node in self.cut:
            self.counts.dropped += 1
            return
        if len(sub.inbox) >= PUB_HWM:
            self.counts.overflowed += 1
            return
        self.counts.delivered += 1
        sub.inbox.append(frames)
        sub.notify()


class FakeSocket:
    """What the production code calls on a socket, and nothing more."""

    def __init__(self, network: Network, node: str, on_readable: Callable[[], None]) -> None:
        self.network = network
        self.node = node
        self.closed = False
        self.notify = on_readable

    def setsockopt(self, option: int, value: Any) -> None:
        return None

    def bind(self, endpoint: str) -> None:
        return None

    def connect(self, endpoint: str) -> None:
        return None

    def getsockopt(self, option: int) -> Any:
        return ENDPOINT.encode()

    def close(self, linger: int | None = None) -> None:
        self.closed = True

    def readable(self) -> bool:
        return False

    def poll(self, timeout: int = 0, flags: int = zmq.POLLIN) -> int:
        return zmq.POLLIN if flags == zmq.POLLIN and self.readable() else 0


class FakePull(FakeSocket):
    def __init__(self, network: Network, node: str, on_readable: Callable[[], None]) -> None:
        super().__init__(network, node, on_readable)
        self.queue: deque[bytes] = deque()

    def readable(self) -> bool:
        return bool(self.queue)

    def recv(self, flags: int = 0, copy: bool = True) -> bytes:
        if not self.queue:
            raise zmq.Again()
        return self.queue.popleft()


class FakePub(FakeSocket):
    def __init__(self, network: Network, node: str, on_readable: Callable[[], None]) -> None:
        super().__init__(network, node, on_readable)
        self._frames: list[bytes] = []

    def send(self, data: bytes, flags: int = 0) -> None:
        self._frames.append(bytes(data))
        if not flags & zmq.SNDMORE:
            frames, self._frames = self._frames, []
            if not self.closed and self.network.pub is self:
                self.network.publish(frames)


class FakePush(FakeSocket):
    def send(self, data: bytes, flags: int = 0) -> None:
        """ZMQ_IMMEDIATE: with no live connection the message is not queued (zmq.Again)."""
        if self.closed or not self.network.reachable(self.node):
            raise zmq.Again()
        self.network.push(self.node, bytes(data))

    def get_monitor_socket(self, events: int) -> FakeMonitor:
        monitor = FakeMonitor(self.network, self.node, self.notify)
        self.network.monitors.append(monitor)
        return monitor

    def disable_monitor(self) -> None:
        self.network.monitors = [m for m in self.network.monitors if m.node != self.node]


class FakeSub(FakeSocket):
    def __init__(self, network: Network, node: str, on_readable: Callable[[], None]) -> None:
        super().__init__(network, node, on_readable)
        self.prefixes: list[bytes] = []
        self.inbox: deque[list[bytes]] = deque()
        network.subs.append(self)

    def setsockopt(self, option: int, value: Any) -> None:
        if option == zmq.SUBSCRIBE:
            self.prefixes.append(bytes(value))
        elif option == zmq.UNSUBSCRIBE and value in self.prefixes:
            self.prefixes.remove(value)

    def matches(self, topic: bytes) -> bool:
        return any(topic.startswith(prefix) for prefix in self.prefixes)

    def readable(self) -> bool:
        return bool(self.inbox)

    def recv_multipart(self, flags: int = 0) -> list[bytes]:
        if not self.inbox:
            raise zmq.Again()
        return self.inbox.popleft()

    def close(self, linger: int | None = None) -> None:
        self.closed = True
        if self in self.network.subs:
            self.network.subs.remove(self)


class FakeMonitor(FakeSocket):
    """The PAIR socket of a connection monitor: frames as libzmq writes them."""

    def __init__(self, network: Network, node: str, on_readable: Callable[[], None]) -> None:
        super().__init__(network, node, on_readable)
        self.events: deque[list[bytes]] = deque()

    def post(self, event: int) -> None:
        self.events.append([struct.pack("=hi", int(event), 0), ENDPOINT.encode()])
        self.notify()

    def readable(self) -> bool:
        return bool(self.events)

    def recv_multipart(self, flags: int = 0) -> list[bytes]:
        if not self.events:
            raise zmq.Again()
        return self.events.popleft()


class FakePoller:
    """zmq.Poller over fake sockets: never waits (simulated time does not pass in a poll)."""

    def __init__(self) -> None:
        self.sockets: list[FakeSocket] = []

    def register(self, sock: FakeSocket, flags: int = zmq.POLLIN) -> None:
        self.sockets.append(sock)

    def poll(self, timeout: int | None = None) -> list[tuple[FakeSocket, int]]:
        return [(s, zmq.POLLIN) for s in self.sockets if s.readable()]


class FakeContext:
    """A zmq.Context for one node: its sockets live on the simulated network."""

    KINDS: dict[int, type[FakeSocket]] = {
        zmq.PULL: FakePull, zmq.PUB: FakePub, zmq.PUSH: FakePush, zmq.SUB: FakeSub
    }

    def __init__(self, network: Network, node: str, on_readable: Callable[[], None]) -> None:
        self.network = network
        self.node = node
        self.on_readable = on_readable

    def socket(self, kind: int) -> Any:
        return self.KINDS[kind](self.network, self.node, self.on_readable)
