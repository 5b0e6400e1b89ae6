"""At-least-once delivery to the controller: number, keep, resend until acknowledged.

A sender PUSHes msgpack messages to the controller's input endpoint and SUBscribes to its
`ack` events. Every message gets the next `seq` of this sender's `source` and stays in a
bounded outbox until an ack covers it. Unacknowledged messages are resent after a quiet
timeout and as soon as the connection comes back, so a controller crash or restart loses
nothing (the controller drops what it has already applied).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from common import security
from common.protocol import MAX_NAME_LENGTH, TOPIC_ACK, pack, read_event, unpack

log = logging.getLogger(__name__)

OUTBOX_MAX = 100_000  # unacknowledged messages kept before the sender pauses
RESEND_AFTER = 2.0  # seconds without ack progress before resending
SEND_HWM = 10_000
STOP_FLUSH = 3.0  # seconds a stopping sender waits for its last acknowledgements


def sender_from_settings(ctx: zmq.Context, args: Any, role: str) -> ReliableSender:
    """The sender a simulator's settings describe: its session identity, the controller's
    endpoints and CURVE keys if configured. Raises SecurityError or ValueError."""
    source = session_source(args.source, role)
    configure = security.client_security(args, [args.controller, args.acks], role)
    return ReliableSender(ctx, source, args.controller, args.acks, configure=configure)


def session_source(name: str | None, role: str) -> str:
    """A source identity unique to this run, so a restarted sender is never a duplicate."""
    base = name or f"{role}-{socket.gethostname()}-{os.getpid()}"
    source = f"{base}@{uuid.uuid4().hex[:8]}"
    if len(source) > MAX_NAME_LENGTH:
        raise ValueError(
            f"source name {base!r} is too long (at most {MAX_NAME_LENGTH - 9} characters)"
        )
    return source


class ReliableSender:
    """Owns a PUSH socket (to the controller) and a SUB socket (its acks)."""

    def __init__(
        self,
        ctx: zmq.Context,
        source: str,
        inputs: str,
        acks: str,
        clock: Callable[[], float] = time.monotonic,
        resend_after: float = RESEND_AFTER,
        outbox_max: int = OUTBOX_MAX,
        configure: Callable[[zmq.Socket], None] | None = None,
    ) -> None:
        self.source = source
        self.clock = clock
        self.resend_after = resend_after
        self.outbox_max = outbox_max
        self.outbox: OrderedDict[int, bytes] = OrderedDict()
        self.next_seq = 1
        self.acked = 0
        self.sent_upto = 0  # highest seq handed to the socket since the last resend
        self.resends = 0
        self._last_progress = clock()
        self.push = ctx.socket(zmq.PUSH)
        self.sub = ctx.socket(zmq.SUB)
        for sock in (self.push, self.sub):
            if configure is not None:
                configure(sock)
            sock.setsockopt(zmq.LINGER, 0)
        self.push.setsockopt(zmq.SNDHWM, SEND_HWM)
        self.push.setsockopt(zmq.IMMEDIATE, 1)  # queue only to live connections
        self.sub.setsockopt(zmq.SUBSCRIBE, TOPIC_ACK)
        self._monitor = self.push.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        self.push.connect(inputs)
        self.sub.connect(acks)
        self.poller = zmq.Poller()
        self.poller.register(self.sub, zmq.POLLIN)
        self.poller.register(self._monitor, zmq.POLLIN)
        log.info("%s: sending to %s, acks from %s", source, inputs, acks)

    @property
    def room(self) -> int:
        """How many more messages the outbox takes before the sender must wait."""
        return self.outbox_max - len(self.outbox)

    @property
    def pending(self) -> int:
        return len(self.outbox)

    def send(self, body: dict[str, Any]) -> int:
        """Number `body` with the next seq, keep it, try to send it; returns the seq."""
        if not self.room:
            raise OverflowError("outbox full: wait for acknowledgements")
        seq = self.next_seq
        self.next_seq += 1
        body["source"] = self.source
        body["seq"] = seq
        if not self.outbox:
            self._last_progress = self.clock()
        self.outbox[seq] = pack(body)
        self._send_waiting()
        return seq

    def pump(self, timeout_ms: int = 0) -> None:
        """Wait up to `timeout_ms` for acks or connection events; resend what is due."""
        for sock, _ in self.poller.poll(timeout_ms):
            if sock is self.sub:
                self._read_acks()
            else:
                self._read_monitor()
        if self.outbox and self.clock() - self._last_progress >= self.resend_after:
            self._resend_all(f"no acknowledgement for {self.resend_after:.1f} s")
        self._send_waiting()

    def flush(self, timeout: float) -> bool:
        """Pump until everything is acknowledged or `timeout` passes; True if all acked."""
        deadline = self.clock() + timeout
        while self.outbox and self.clock() < deadline:
            self.pump(50)
        return not self.outbox

    def close(self) -> None:
        self.push.disable_monitor()
        self._monitor.close()
        self.push.close()
        self.sub.close()

    def _send_waiting(self) -> None:
        """Hand the socket every kept message after `sent_upto`, until it would block."""
        if self.sent_upto + 1 >= self.next_seq:
            return
        push = self.push
        seq = max(self.sent_upto, self.acked) + 1
        try:
            while seq < self.next_seq:
                push.send(self.outbox[seq], zmq.NOBLOCK)
                self.sent_upto = seq
                seq += 1
        except zmq.Again:
            pass  # no live connection or queue full: kept, sent later

    def _read_acks(self) -> None:
        try:
            while True:
                _, body = read_event(self.sub.recv_multipart(zmq.NOBLOCK))
                if body.get("source") == self.source:
                    self._acknowledge(body["seq"])
        except zmq.Again:
            pass

    def _acknowledge(self, seq: int) -> None:
        if seq < self.acked:
            self._start_new_session(seq)
            return
        if seq == self.acked:
            return
        if seq >= self.next_seq:
            log.error(
                "%s: controller acknowledged seq %d but only %d were sent",
                self.source,
                seq,
                self.next_seq - 1,
            )
            seq = self.next_seq - 1
        outbox = self.outbox
        while outbox and next(iter(outbox)) <= seq:
            outbox.popitem(last=False)
        self.acked = seq
        self.sent_upto = max(self.sent_upto, seq)
        self._last_progress = self.clock()

    def _start_new_session(self, seq: int) -> None:
        """The controller went back to an earlier state (its journal lost acknowledged
        messages, e.g. a power cut under fsync = "interval"). Its gap before our next seq can
        never fill, so carry on as a new session, renumbering what is not yet acknowledged."""
        previous, old = self.acked, self.source
        bodies = [unpack(raw) for raw in self.outbox.values()]
        self.source = session_source(old.rsplit("@", 1)[0], "")
        self.outbox.clear()
        self.next_seq, self.acked, self.sent_upto = 1, 0, 0
        log.error(
            "%s: controller acknowledged seq %d after %d: it lost messages %d..%d it had "
            "acknowledged; continuing as %s with %d unacknowledged messages",
            old,
            seq,
            previous,
            seq + 1,
            previous,
            self.source,
            len(bodies),
        )
        for body in bodies:
            self.send(body)

    def _read_monitor(self) -> None:
        message = recv_monitor_message(self._monitor)
        if message["event"] == zmq.EVENT_CONNECTED:
            log.info("%s: connected to controller", self.source)
            if self.outbox and self.sent_upto > self.acked:
                self._resend_all("reconnected")
            self.sent_upto = min(self.sent_upto, self.acked)
        elif message["event"] == zmq.EVENT_DISCONNECTED:
            log.warning(
                "%s: controller went away; keeping %d unacknowledged", self.source, len(self.outbox)
            )

    def _resend_all(self, why: str) -> None:
        log.info(
            "%s: resending %d unacknowledged messages from seq %d (%s)",
            self.source,
            len(self.outbox),
            self.acked + 1,
            why,
        )
        self.resends += 1
        self.sent_upto = self.acked
        self._last_progress = self.clock()
