"""Group commit on a second thread: the journal is made durable while the loop goes on.

With fsync = "always", the loop writes each batch into the journal and hands the batch's
outputs here instead of waiting for the disk. One fdatasync at a time runs on this thread
(the GIL is released while it waits), covering every batch written before it began; the
loop publishes a batch's outputs only after a sync that covers them succeeded, in the order
the batches were written. Meanwhile the loop reads, allocates and writes the next batches,
so the second core carries the disk wait instead of the loop.

A failed sync is reported once and never retried: the loop cuts off what it should have
made durable (JournalWriter.sync_failed) and stops, having published nothing it covered.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections import deque

import zmq

from common.protocol import Output
from controller.journal import JournalFailed, JournalWriter

log = logging.getLogger(__name__)

_SYNCED = b"ok"
_FAILED = b"failed:"
_names = itertools.count(1)


class Syncer:
    """Runs the journal's syncs on a thread; wakes the loop through `socket` (a PAIR the
    loop polls) when one ends. Only the loop's thread calls its methods."""

    def __init__(self, ctx: zmq.Context, journal: JournalWriter) -> None:
        self.journal = journal
        endpoint = f"inproc://journal-syncer-{id(self)}-{next(_names)}"
        self.socket = ctx.socket(zmq.PAIR)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(endpoint)
        self._reply = ctx.socket(zmq.PAIR)
        self._reply.setsockopt(zmq.LINGER, 0)
        self._reply.connect(endpoint)
        self._requests: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._waiting: deque[tuple[int, list[Output]]] = deque()  # (journal end, outputs)
        self._in_flight: int | None = None  # the journal end the running sync covers
        self._thread = threading.Thread(target=self._run, name="journal-sync", daemon=True)
        self._thread.start()

    # -- the loop's side ---------------------------------------------------------------
    @property
    def waiting(self) -> int:
        """Outputs written but not yet known durable."""
        return sum(len(outputs) for _, outputs in self._waiting)

    @property
    def busy(self) -> bool:
        return self._in_flight is not None

    def submit(self, end: int, outputs: list[Output]) -> list[Output]:
        """Outputs of a batch written up to journal offset `end`; returns what may be
        published now (only when nothing before it waits and it is already durable)."""
        if not self._waiting and not self.busy and end <= self._durable():
            return outputs
        self._waiting.append((end, outputs))
        if not self.busy:
            self._start()
        return []

    def collect(self) -> list[Output]:
        """After `socket` turned readable: the outputs the finished sync made publishable,
        in order. JournalFailed if it failed (the writer is then dead)."""
        reply = self.socket.recv()
        end, self._in_flight = self._in_flight, None
        assert end is not None
        if reply != _SYNCED:
            self._waiting.clear()
            detail = reply[len(_FAILED):].decode(errors="replace")
            raise self.journal.sync_failed(OSError(detail))
        self.journal.synced_through(end)
        ready: list[Output] = []
        while self._waiting and self._waiting[0][0] <= end:
            ready.extend(self._waiting.popleft()[1])
        if self._waiting:
            self._start()
        return ready

    def settle(self) -> list[Output]:
        """Wait until every written batch is durable; their outputs, in order. JournalFailed
        if a sync fails."""
        ready: list[Output] = []
        while self.busy:
            self.socket.poll()
            ready.extend(self.collect())
        return ready

    def close(self) -> None:
        """Stop the thread once the running sync (if any) ends; outputs still waiting are
        dropped unpublished (a failure, or a pause that rebuilds the engine, drops them).
        A running sync's result is still taken: if it failed, the journal cuts off what it
        should have made durable (the kernel reports a failed sync once; a later fsync,
        at the next start, would trust pages never written)."""
        if not self._thread.is_alive():
            return
        if self.busy:
            self.socket.poll()
            self._waiting.clear()
            try:
                self.collect()
            except JournalFailed as exc:
                log.error("%s", exc)
        self._requests.put(None)
        self._thread.join()
        self.socket.close()
        self._reply.close()

    def _start(self) -> None:
        end = self._waiting[-1][0]  # one sync covers everything written so far
        self._in_flight = end
        self._requests.put(end)

    def _durable(self) -> int:
        return self.journal.synced_offset

    # -- the thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while self._requests.get() is not None:
            try:
                self.journal.sync_data()
            except OSError as exc:
                log.critical("journal fdatasync failed on the sync thread: %s", exc)
                self._reply.send(_FAILED + str(exc).encode())
            else:
                self._reply.send(_SYNCED)


__all__ = ["JournalFailed", "Syncer"]
