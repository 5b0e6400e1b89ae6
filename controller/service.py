"""The controller's shell: sockets and timers around the engine.

PULL (bind) takes fills and splits from any number of senders; PUB (bind) sends
`allocation`, `rejected` and `ack` events as they happen and a full `positions` snapshot
every interval. The loop polls, drains the socket in a batch, commits the batch to the
journal once, then publishes; timers run off an injected clock so tests need no waiting.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import zmq

from common.lifecycle import POLL_SLICE_MS, StopFlag
from common.protocol import MAX_MESSAGE_BYTES, TOPIC_POSITIONS, event
from common.security import ServerSecurity
from controller.engine import Engine

log = logging.getLogger(__name__)

BATCH_MAX = 2048  # messages drained per journal commit, at most
BATCH_SECONDS = 0.005  # and at most this long, so no event waits long for its commit
TRANSPORT_MAX_MESSAGE = 16 * MAX_MESSAGE_BYTES  # beyond this ZeroMQ drops the peer itself
PUB_HWM = 100_000
SNDMORE = int(zmq.SNDMORE)  # an int: pyzmq's enum flag arithmetic is slow per message


class ControllerService:
    """Owns the engine and its two sockets; `step` is one turn of the loop."""

    def __init__(
        self,
        ctx: zmq.Context,
        engine: Engine,
        inputs: str,
        publish: str,
        snapshot_interval: float = 10.0,
        checkpoint_path: str | Path | None = None,
        checkpoint_interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        security: ServerSecurity | None = None,
    ) -> None:
        self.engine = engine
        self.security = security
        self.instance = uuid.uuid4().hex[:12]
        self.clock = clock
        self.wall_clock = wall_clock
        self.snapshot_interval = snapshot_interval
        self.checkpoint_path = checkpoint_path
        self.checkpoint_interval = checkpoint_interval
        self.snapshot_seq = 0
        self.pull = ctx.socket(zmq.PULL)
        self.pull.setsockopt(zmq.MAXMSGSIZE, TRANSPORT_MAX_MESSAGE)
        self.pull.setsockopt(zmq.LINGER, 0)
        self.pub = ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.SNDHWM, PUB_HWM)
        self.pub.setsockopt(zmq.LINGER, 1000)
        if security is not None:
            security.configure(self.pull)
            security.configure(self.pub)
        try:
            self.pull.bind(inputs)
            self.pub.bind(publish)
        except zmq.ZMQError:
            self.pull.close(linger=0)
            self.pub.close(linger=0)
            raise
        self.inputs = self.pull.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.publish = self.pub.getsockopt(zmq.LAST_ENDPOINT).decode()
        log.info(
            "controller %s: inputs bound at %s, publishing at %s",
            self.instance,
            self.inputs,
            self.publish,
        )
        now = clock()
        self.next_snapshot = now + snapshot_interval
        self.next_checkpoint = now + checkpoint_interval

    def run(self, stop: StopFlag) -> None:
        """Serve until `stop` is set, then checkpoint and close."""
        while not stop:
            self.step(min(POLL_SLICE_MS, max(0, int((self.next_snapshot - self.clock()) * 1000))))
        log.info("controller %s stopping (%s)", self.instance, stop.signal_name or "asked")
        self.close()

    def step(self, timeout_ms: int = 0) -> int:
        """Poll up to `timeout_ms`, process what arrived, run due timers; returns messages read."""
        received = self.drain() if self.pull.poll(timeout_ms) else 0
        now = self.clock()
        if now >= self.next_snapshot:
            self.publish_snapshot()
            # Skip missed slots instead of bursting to catch up.
            missed = (now - self.next_snapshot) // self.snapshot_interval
            self.next_snapshot += (missed + 1) * self.snapshot_interval
        if self.checkpoint_path is not None and now >= self.next_checkpoint:
            self.engine.checkpoint(self.checkpoint_path)
            self.next_checkpoint = now + self.checkpoint_interval
        return received

    def drain(self) -> int:
        """Read what is waiting (up to a batch), commit it once, publish its events.

        A batch ends at BATCH_MAX messages or BATCH_SECONDS, whichever comes first, so a
        flood of bad input cannot hold a good fill's allocation back for long.
        """
        pull, receive = self.pull, self.engine.receive
        count = 0
        clock = time.perf_counter
        deadline = clock() + BATCH_SECONDS
        try:
            while count < BATCH_MAX:
                receive(pull.recv(zmq.NOBLOCK))
                count += 1
                if clock() > deadline:
                    break
        except zmq.Again:
            pass
        self.publish_events(self.engine.commit())
        return count

    def publish_events(self, events: list[list[bytes]]) -> None:
        """Send two-frame events; plain send() with an int flag beats send_multipart here."""
        send = self.pub.send
        for topic, body in events:
            send(topic, SNDMORE)
            send(body)

    def publish_snapshot(self) -> None:
        """A full positions snapshot, then every source's ack (for senders that missed one)."""
        self.snapshot_seq += 1
        snapshot = self.engine.snapshot()
        snapshot.update(
            seq=self.snapshot_seq,
            instance=self.instance,
            time=self.wall_clock(),
            interval=self.snapshot_interval,
        )
        snapshot["counts"]["peers_rejected"] = self.security.rejected if self.security else 0
        self.publish_events([event(TOPIC_POSITIONS, snapshot), *self.engine.acks()])

    def close(self) -> None:
        """Commit what is pending, checkpoint, close the sockets and the journal."""
        if self.pull.closed:
            return
        self.pull.close()
        self.publish_events(self.engine.commit())
        if self.checkpoint_path is not None:
            self.engine.checkpoint(self.checkpoint_path)
        if self.engine.journal is not None:
            self.engine.journal.close()
        if self.engine.deadletters is not None:
            self.engine.deadletters.close()
        self.pub.close()
        log.info("controller %s stopped", self.instance)
