"""The position server's loop: subscribe to snapshots, notice restarts, gaps and silence.

The loop reads every waiting message at each step (so the controller's PUB never has to
buffer for it), records each snapshot, and shows only the newest: a display that is
slower than the controller skips stale screens instead of falling behind.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack  # type: ignore[import-untyped]
import zmq

from common.lifecycle import POLL_SLICE_MS, StopFlag
from common.protocol import TOPIC_POSITIONS, read_event
from positions.desk import DEFAULT_INTERVAL, Desk, MalformedSnapshot, read_snapshot

log = logging.getLogger(__name__)

SILENCE_INTERVALS = 3  # snapshots missed in a row before saying the controller is silent
ASSUMED_INTERVAL = DEFAULT_INTERVAL  # seconds between snapshots, until a snapshot says
MAX_DRAIN = 1000  # messages read in one step before showing the newest
UNREADABLE = (ValueError, TypeError, msgpack.UnpackException)  # what bad wire bytes raise


@dataclass(frozen=True, slots=True)
class Update:
    """What every view gets: the newest snapshot, notices since the last one, counters."""

    desk: Desk
    notices: list[str]
    restarts: int
    missed: int


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
    """SUBscribes to the controller's snapshots; `record`s each one, `show`s the newest."""

    def __init__(
        self,
        ctx: zmq.Context,
        endpoint: str,
        show: Callable[[Update], None],
        clock: Callable[[], float] = time.monotonic,
        configure: Callable[[zmq.Socket], None] | None = None,
        record: Callable[[dict[str, Any]], object] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.sub = ctx.socket(zmq.SUB)
        if configure is not None:
            configure(self.sub)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, TOPIC_POSITIONS)
        self.sub.connect(endpoint)
        self.show = show
        self.record = record
        self.clock = clock
        self.wall_clock = wall_clock
        self.watcher = SnapshotWatcher()
        self.received = 0
        self.ignored = 0
        self.last_seen = clock()
        self.silent = False
        self.interval = ASSUMED_INTERVAL
        self._split_seen: tuple[tuple[str, str, int] | None, float | None] = (None, None)
        log.info("position server subscribed to %s", endpoint)

    def run(self, stop: StopFlag, checks: tuple[Callable[[], None], ...] = ()) -> None:
        """Until `stop`: step, then run `checks` (each raises if a view has failed)."""
        while not stop:
            self.step(POLL_SLICE_MS)
            for check in checks:
                check()
        log.info("position server stopping after %d snapshots", self.received)

    def close(self) -> None:
        """Close the socket (before the context is terminated, so term cannot block)."""
        self.sub.close(linger=0)

    def step(self, timeout_ms: int = 0) -> int:
        """Read every snapshot that arrives within `timeout_ms`, show the newest; returns
        how many were read."""
        latest: Desk | None = None
        notices: list[str] = []
        read = 0
        if self.sub.poll(timeout_ms):
            while read < MAX_DRAIN:
                try:
                    frames = self.sub.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                read += 1
                desk = self._handle(frames, notices)
                latest = desk or latest
        if latest is not None:
            self.show(Update(latest, notices, self.watcher.restarts, self.watcher.missed))
        self._check_silence()
        return read

    def _handle(self, frames: list[bytes], notices: list[str]) -> Desk | None:
        """Check, watch and record one message; None (logged) if it is not a snapshot."""
        try:
            _, raw = read_event(frames)
            desk = read_snapshot(raw, self._first_seen(raw))
        except (*UNREADABLE, MalformedSnapshot) as exc:
            self.ignored += 1
            log.warning("ignored a malformed positions message: %s", exc)
            return None
        found = self.watcher.observe(raw)
        if self.silent:
            found.append("controller is publishing again")
            self.silent = False
        for notice in found:
            log.warning("%s", notice)
        notices += found
        self.received += 1
        self.last_seen = self.clock()
        self.interval = desk.interval
        if self.record is not None:
            self.record(raw)
        return desk

    def _first_seen(self, raw: Any) -> float | None:
        """When the snapshot's split was first seen: the time of the first snapshot of this
        controller run that showed it (the controller does not say when it arrived)."""
        split = raw.get("split") if isinstance(raw, dict) else None
        if not isinstance(split, dict):
            return None
        key = (str(raw.get("instance")), str(split.get("source")), split.get("seq"))
        seen_key, seen = self._split_seen
        if key != seen_key:
            when = raw.get("time")
            seen = float(when) if isinstance(when, int | float) else self.wall_clock()
            self._split_seen = (key, seen)  # type: ignore[assignment]
        return seen

    def _check_silence(self) -> None:
        quiet = self.clock() - self.last_seen
        if not self.silent and quiet > SILENCE_INTERVALS * self.interval:
            self.silent = True
            log.warning("no snapshot for %.0f s: is the controller running?", quiet)
