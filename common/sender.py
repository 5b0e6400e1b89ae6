"""At-least-once delivery to the controller: number, keep, resend until acknowledged.

A sender PUSHes msgpack messages to the controller's input endpoint and SUBscribes to the
controller's events about its own source only: `ack:<source>` and `rejected:<source>`.
Every message gets the next `seq` of this sender's `source` and stays in a bounded outbox
until an ack covers it or a rejection names it. Unacknowledged messages are resent after a
quiet timeout and as soon as the connection comes back, so a controller crash or restart
loses nothing (the controller drops what it has already applied). A rejected message is
dropped, never resent: the controller consumed its seq and will not take it again.

Acks carry the controller's instance id (random per controller process). Within one
instance acks never go back; a new instance acknowledging less than the sender already had
acknowledged lost acknowledged messages, and the sender carries on as a new session.
"""

from __future__ import annotations

import logging
import os
import reprlib
import socket
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from common import protocol, security
from common.protocol import (
    MAX_NAME_LENGTH,
    ack_topic,
    pack,
    read_event,
    rejected_topic,
    unpack,
)

log = logging.getLogger(__name__)

OUTBOX_MAX = 100_000  # unacknowledged messages kept before the sender pauses
RESEND_AFTER = 2.0  # seconds without ack progress before resending
SEND_HWM = 10_000
STOP_FLUSH = 3.0  # seconds a stopping sender waits for its last acknowledgements
REJECTIONS_LOGGED_IN_FULL = 10  # then one line per REJECTION_LOG_EVERY, so floods stay short
REJECTION_LOG_EVERY = 1000
REJECTIONS_KEPT = 10_000  # rejected seqs remembered per session, to ignore one heard twice


class MessageTooLarge(ValueError):
    """A message the controller would refuse for its size: the sender never queues it."""

    def __init__(self, kind: object, size: int, limit: int) -> None:
        super().__init__(
            f"{kind or 'untyped'} message is {size:,} bytes, over the {limit:,}-byte limit: "
            "not sent"
        )
        self.size = size
        self.limit = limit


def size_limit(kind: object) -> int:
    """The largest encoded message of type `kind` the controller accepts (splits may have a
    larger limit than fills)."""
    return protocol.size_limit(kind)


def worth_logging(count: int) -> bool:
    """Whether the `count`-th occurrence of a repeated problem gets a log line: the first
    REJECTIONS_LOGGED_IN_FULL, then one in REJECTION_LOG_EVERY, so a flood stays short."""
    return count <= REJECTIONS_LOGGED_IN_FULL or count % REJECTION_LOG_EVERY == 0


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
    """Owns a PUSH socket (to the controller) and a SUB socket (its acks and rejections).

    Counters for the exit summary: `accepted` (acknowledged and not rejected), `rejected`
    (by the controller), `refused` (too large, never sent) and `lost` (acknowledged, then
    lost by a controller that restarted without them).
    """

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
        self.controller_instance: str | None = None  # the instance whose acks we follow
        self._retired_instances: set[str] = set()  # earlier instances: their acks are stale
        self.accepted = 0
        self.rejected = 0
        self.refused = 0
        self.lost = 0
        self._rejected_seqs: list[int] = []  # rejected here, above `acked`: not accepted
        # Seqs of this session heard rejected. Not only the highest: a fill held until the
        # first split is rejected when that split comes, after later seqs may have been.
        self._rejections_heard: set[int] = set()
        self._last_progress = clock()
        self.push = ctx.socket(zmq.PUSH)
        self.sub = ctx.socket(zmq.SUB)
        for sock in (self.push, self.sub):
            if configure is not None:
                configure(sock)
            sock.setsockopt(zmq.LINGER, 0)
        self.push.setsockopt(zmq.SNDHWM, SEND_HWM)
        self.push.setsockopt(zmq.IMMEDIATE, 1)  # queue only to live connections
        self._subscribe()
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
        """Messages sent but neither acknowledged nor rejected yet."""
        return len(self.outbox)

    @property
    def all_accepted(self) -> bool:
        """True when everything given to `send` was acknowledged and nothing was rejected,
        refused or lost: only then may a simulator say "all sent and acknowledged"."""
        return not (self.outbox or self.rejected or self.refused or self.lost)

    def summary(self) -> str:
        """What the controller made of the messages, for the exit log line (messages still
        unacknowledged are `pending`)."""
        parts = [f"{self.accepted} accepted", f"{self.rejected} rejected"]
        if self.refused:
            parts.append(f"{self.refused} refused as too large")
        if self.lost:
            parts.append(f"{self.lost} acknowledged then lost by a controller restart")
        return ", ".join(parts)

    def send(self, body: dict[str, Any]) -> int:
        """Number `body` with the next seq, keep it, try to send it; returns the seq.

        Raises OverflowError when the outbox is full and MessageTooLarge (nothing kept, no
        seq used) when the controller would refuse the message for its size.
        """
        if not self.room:
            raise OverflowError("outbox full: wait for acknowledgements")
        seq = self.next_seq
        body["source"] = self.source
        body["seq"] = seq
        raw = pack(body)
        limit = size_limit(body.get("type"))
        if len(raw) > limit:
            self.refused += 1
            raise MessageTooLarge(body.get("type"), len(raw), limit)
        self.next_seq += 1
        if not self.outbox:
            self._last_progress = self.clock()
        self.outbox[seq] = raw
        self._send_waiting()
        return seq

    def pump(self, timeout_ms: int = 0) -> None:
        """Wait up to `timeout_ms` for acks or connection events; resend what is due."""
        for sock, _ in self.poller.poll(timeout_ms):
            if sock is self.sub:
                self._read_events()
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

    # -- subscriptions -------------------------------------------------------------------
    def _subscribe(self) -> None:
        """Listen for this source's acks and rejections only."""
        self._ack_topic = ack_topic(self.source)
        self._rejection_topic = rejected_topic(self.source)
        self.sub.setsockopt(zmq.SUBSCRIBE, self._ack_topic)
        self.sub.setsockopt(zmq.SUBSCRIBE, self._rejection_topic)

    def _unsubscribe(self) -> None:
        self.sub.setsockopt(zmq.UNSUBSCRIBE, self._ack_topic)
        self.sub.setsockopt(zmq.UNSUBSCRIBE, self._rejection_topic)

    # -- sending -------------------------------------------------------------------------
    def _send_waiting(self) -> None:
        """Hand the socket every kept message after `sent_upto`, until it would block."""
        if self.sent_upto + 1 >= self.next_seq:
            return
        push, outbox = self.push, self.outbox
        seq = max(self.sent_upto, self.acked) + 1
        try:
            while seq < self.next_seq:
                raw = outbox.get(seq)
                if raw is not None:  # a rejected message is gone for good
                    push.send(raw, zmq.NOBLOCK)
                self.sent_upto = seq
                seq += 1
        except zmq.Again:
            pass  # no live connection or queue full: kept, sent later

    # -- events from the controller ------------------------------------------------------
    def _read_events(self) -> None:
        """Read every waiting ack and rejection; ignore what is not exactly ours.

        SUB filtering is by prefix (`ack:desk@1` also matches `ack:desk@12`), so both the
        topic and the body's source must be this sender's."""
        while True:
            try:
                frames = self.sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 2 or frames[0] not in (self._ack_topic, self._rejection_topic):
                continue
            try:
                topic, body = read_event(frames)
            except (ValueError, TypeError):  # what msgpack raises for bad bytes
                log.warning("%s: ignored an unreadable event from the controller", self.source)
                continue
            if not isinstance(body, dict) or body.get("source") != self.source:
                continue
            if topic == self._ack_topic:
                self._on_ack(body)
            else:
                self._on_rejection(body)

    def _on_ack(self, body: dict[str, Any]) -> None:
        """An ack from the controller instance we follow, or from a new one (a restart)."""
        seq, instance = body.get("seq"), body.get("instance")
        if type(seq) is not int or seq < 0 or not isinstance(instance, str):
            log.warning("%s: ignored a malformed ack %s", self.source, reprlib.repr(body))
            return
        if instance in self._retired_instances:
            return  # a late event from a controller that has since been replaced
        current = self.controller_instance
        if current is not None and instance != current:
            self._controller_restarted(seq, current, instance)
            return
        if seq < self.acked:
            log.error(
                "%s: controller instance %s acknowledged seq %d after %d; ignored (an instance"
                " never takes back an acknowledgement)",
                self.source,
                instance,
                seq,
                self.acked,
            )
            return
        self.controller_instance = instance
        self._acknowledge(seq)

    def _controller_restarted(self, seq: int, old: str, new: str) -> None:
        """A new controller instance acknowledged `seq`: if it still has everything it had
        acknowledged, follow it; if not, it lost acknowledged messages: new session."""
        self._retired_instances.add(old)
        self.controller_instance = new
        if seq < self.acked:
            self._start_new_session(seq, old, new)
            return
        log.info(
            "%s: controller restarted (instance %s -> %s) and still has seq %d",
            self.source,
            old,
            new,
            seq,
        )
        self._acknowledge(seq)

    def _acknowledge(self, seq: int) -> None:
        """Everything up to `seq` is applied (accepted or rejected) and journaled."""
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
            if seq <= self.acked:
                return
        outbox = self.outbox
        while outbox and next(iter(outbox)) <= seq:
            outbox.popitem(last=False)
        rejected_here = sum(1 for s in self._rejected_seqs if s <= seq)
        self._rejected_seqs = [s for s in self._rejected_seqs if s > seq]
        self.accepted += seq - self.acked - rejected_here
        self.acked = seq
        self.sent_upto = max(self.sent_upto, seq)
        self._last_progress = self.clock()

    def _remember_rejection(self, seq: int) -> None:
        """Keep the rejected seqs heard, bounded: the oldest half goes past REJECTIONS_KEPT
        (a rejection is published once, so a very old one never comes again)."""
        heard = self._rejections_heard
        heard.add(seq)
        if len(heard) > REJECTIONS_KEPT:
            for old in sorted(heard)[: REJECTIONS_KEPT // 2]:
                heard.discard(old)

    def _on_rejection(self, body: dict[str, Any]) -> None:
        """The controller refused message `seq` and consumed its seq: drop it for good."""
        seq, reason = body.get("seq"), body.get("reason")
        if type(seq) is not int or not isinstance(reason, str):
            log.warning("%s: ignored a malformed rejection %s", self.source, reprlib.repr(body))
            return
        if not 1 <= seq < self.next_seq:
            log.error("%s: controller rejected seq %d, which was never sent", self.source, seq)
            return
        if seq in self._rejections_heard:
            return  # heard before
        self._remember_rejection(seq)
        if seq <= self.acked:
            # Acknowledged before its rejection reached us: it was counted as accepted.
            self.accepted = max(0, self.accepted - 1)
        else:
            self._rejected_seqs.append(seq)
        self.outbox.pop(seq, None)
        self.rejected += 1
        self._last_progress = self.clock()
        self._log_rejection(seq, reason)

    def _log_rejection(self, seq: int, reason: str) -> None:
        """The first rejections one by one, then one line per REJECTION_LOG_EVERY."""
        count = self.rejected
        if not worth_logging(count):
            return
        if count <= REJECTIONS_LOGGED_IN_FULL:
            log.warning("%s: controller rejected seq %d: %s", self.source, seq, reason)
        else:
            log.warning(
                "%s: controller rejected seq %d: %s (%d rejected so far; logging one in %d)",
                self.source,
                seq,
                reason,
                count,
                REJECTION_LOG_EVERY,
            )

    def _start_new_session(self, seq: int, old_instance: str, new_instance: str) -> None:
        """A new controller instance went back to an earlier state (its journal lost
        acknowledged messages, e.g. a power cut under fsync = "interval"). Its gap before
        our next seq can never fill, so carry on as a new session, renumbering what is not
        yet acknowledged, and listen for the new identity's acks and rejections."""
        previous, old = self.acked, self.source
        bodies = [unpack(raw) for raw in self.outbox.values()]
        self.lost += previous - seq
        self.accepted = max(0, self.accepted - (previous - seq))
        self._unsubscribe()
        self.source = session_source(old.rsplit("@", 1)[0], "")
        self._subscribe()
        self.outbox.clear()
        self._rejected_seqs.clear()
        self._rejections_heard = set()
        self.next_seq, self.acked, self.sent_upto = 1, 0, 0
        log.error(
            "%s: controller instance %s acknowledged seq %d where instance %s had acknowledged"
            " %d: it lost messages %d..%d; continuing as %s with %d unacknowledged messages",
            old,
            new_instance,
            seq,
            old_instance,
            previous,
            seq + 1,
            previous,
            self.source,
            len(bodies),
        )
        for body in bodies:
            self.send(body)

    # -- the connection ------------------------------------------------------------------
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
