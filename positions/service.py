"""The position server's loop: subscribe to snapshots, notice restarts, gaps and silence."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import zmq

from common.lifecycle import POLL_SLICE_MS, StopFlag
from common.protocol import TOPIC_POSITIONS, read_event

log = logging.getLogger(__name__)

SILENCE_INTERVALS = 3  # snapshots missed in a row before saying the controller is silent
ASSUMED_INTERVAL = 10.0  # seconds between snapshots, until a snapshot says otherwise


class SnapshotWatcher:
    """Turns a stream of snapshots into notices: controller restarted, snapshots missed."""

    def __init__(self) -> None:
        self.instance: str | None = None
        self.seq = 0
        self.restarts = 0
        self.missed = 0

    def observe(self, snapshot: dict[str, Any]) -> list[str]:
        instance, seq = snapshot.get("instance"), snapshot.get("seq", 0)
        notices = []
        if self.instance is not None and instance != self.instance:
            self.restarts += 1
            notices.append(f"controller restarted ({self.instance} -> {instance})")
        elif self.instance is not None and seq <= self.seq:
            notices.append(f"snapshot #{seq} arrived after #{self.seq} (out of order)")
        elif self.instance is not None and seq != self.seq + 1:
            missed = seq - self.seq - 1
            self.missed += missed
            notices.append(f"missed {missed} snapshot(s): #{self.seq} then #{seq}")
        self.instance, self.seq = instance, seq
        return notices


class PositionServer:
    """SUBscribes to the controller's snapshots and hands each to `show` with notices."""

    def __init__(
        self,
        ctx: zmq.Context,
        endpoint: str,
        show: Callable[[dict[str, Any], list[str]], None],
        clock: Callable[[], float] = time.monotonic,
        configure: Callable[[zmq.Socket], None] | None = None,
    ) -> None:
        self.sub = ctx.socket(zmq.SUB)
        if configure is not None:
            configure(self.sub)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, TOPIC_POSITIONS)
        self.sub.connect(endpoint)
        self.show = show
        self.clock = clock
        self.watcher = SnapshotWatcher()
        self.received = 0
        self.last_seen = clock()
        self.silent = False
        self.interval = ASSUMED_INTERVAL
        log.info("position server subscribed to %s", endpoint)

    def run(self, stop: StopFlag) -> None:
        while not stop:
            self.step(POLL_SLICE_MS)
        log.info("position server stopping after %d snapshots", self.received)
        self.sub.close()

    def step(self, timeout_ms: int = 0) -> int:
        """Show every snapshot that arrives within `timeout_ms`; returns how many."""
        shown = 0
        if self.sub.poll(timeout_ms):
            try:
                while True:
                    _, snapshot = read_event(self.sub.recv_multipart(zmq.NOBLOCK))
                    self._handle(snapshot)
                    shown += 1
            except zmq.Again:
                pass
        self._check_silence()
        return shown

    def _handle(self, snapshot: dict[str, Any]) -> None:
        notices = self.watcher.observe(snapshot)
        if self.silent:
            notices.append("controller is publishing again")
            self.silent = False
        for notice in notices:
            log.warning("%s", notice)
        self.received += 1
        self.last_seen = self.clock()
        self.interval = snapshot.get("interval", ASSUMED_INTERVAL)
        self.show(snapshot, notices)

    def _check_silence(self) -> None:
        quiet = self.clock() - self.last_seen
        if not self.silent and quiet > SILENCE_INTERVALS * self.interval:
            self.silent = True
            log.warning("no snapshot for %.0f s: is the controller running?", quiet)
