"""The controller's shell: sockets and timers around the engine.

PULL (bind) takes fills and splits from any number of senders; PUB (bind) sends
`allocation`, `rejected` and `ack` events as they happen and a full `positions` snapshot
every interval. The loop polls, drains the socket in a batch, commits the batch to the
journal once, then publishes; timers run off an injected clock so tests need no waiting.

With `snapshot_worker`, the loop only copies what a snapshot shows (between batches, so it
is acknowledged state) and a worker thread builds and encodes it; the loop sends the frames
when they are ready (this thread alone owns the PUB socket). One snapshot at most is in
the worker's hands: a slot that comes due meanwhile is skipped, never queued.

With `sync_thread` (and fsync = "always"), the loop does not wait for the disk: it writes
each batch into the journal and hands its outputs to controller/syncer.py, whose thread
syncs while the loop reads the next batches; the outputs are published once a sync that
covers them succeeded (group commit). Before anything that shows or saves state (a
snapshot, a checkpoint, a pause, stopping) the loop waits for every written batch to be
durable, so what it shows is always acknowledged state.

When the journal cannot be written the service never publishes the batch: a full disk
pauses input (the PULL socket is left unread, so senders keep their outboxes; the engine is
rebuilt from the journal, which holds exactly what was acknowledged) until space returns;
any other write or fsync error stops the service for good (fail-stop), and recovery from
the journal on disk decides what survived.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import zmq
from zmq.backend import Socket as BackendSocket

from common.lifecycle import POLL_SLICE_MS, StopFlag
from common.protocol import MAX_SPLIT_MESSAGE_BYTES, Ack, Output, encode_output
from common.security import ServerSecurity, sender_user_id
from controller.engine import Engine
from controller.journal import JournalFailed, JournalFull
from controller.snapshot import SnapshotMeta, SnapshotWorker, build, build_snapshot, capture
from controller.syncer import Syncer

log = logging.getLogger(__name__)

BATCH_MAX = 2048  # messages drained per journal commit, at most
BATCH_SECONDS = 0.005  # and at most this long, so no event waits long for its commit
TRANSPORT_MAX_MESSAGE = 2 * MAX_SPLIT_MESSAGE_BYTES  # beyond this ZeroMQ drops the peer
#: Messages queued per subscriber before PUB drops for it: bounds what a subscriber that
#: never reads can make the controller buffer (snapshots are full state; acks are resent).
PUB_HWM = 10_000
SNDMORE = int(zmq.SNDMORE)  # an int: pyzmq's enum flag arithmetic is slow per message
SOURCE_RETIRE_AFTER = 3600.0  # seconds a fully acknowledged source stays in the ack broadcast
PAUSE_RETRY_SECONDS = 5.0  # how often a paused controller checks for free space
FREE_SPACE_MARGIN = 64 * 1024  # bytes free beyond the failed batch before input resumes
#: Longest poll while the worker builds a snapshot, so an idle loop sends it soon after.
SNAPSHOT_WAIT_SLICE_MS = 2
#: Longest wait for the worker's snapshot before one is built on the loop (a worker build
#: of 10,000 accounts takes about 0.1 s; this only bounds a stuck one).
WORKER_WAIT_SECONDS = 5.0
#: Outputs written but not yet durable before the loop stops reading input until the sync
#: running now ends (bounds memory when the disk is slower than the input).
MAX_UNSYNCED_OUTPUTS = 4 * BATCH_MAX


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
        rebuild: Callable[[], Engine] | None = None,
        free_space: Callable[[], int] | None = None,
        source_retire_after: float = SOURCE_RETIRE_AFTER,
        snapshot_worker: bool = False,
        sync_thread: bool = False,
    ) -> None:
        """`rebuild` makes a fresh engine from the journal on disk (after a full disk);
        `free_space` says how many bytes the journal's file system has free;
        `snapshot_worker` builds timed snapshots on a thread of their own (off the loop);
        `sync_thread` syncs the journal on a thread of its own (group commit, see above)."""
        self.security = security
        self.engine = self._adopt(engine)
        self.rebuild = rebuild
        self.free_space = free_space if free_space is not None else self._journal_free_space
        self.paused_since: float | None = None
        self.space_needed = 0
        self.next_space_check = 0.0
        self.failure: str | None = None  # set when the journal failed: fail-stop
        self.source_retire_after = source_retire_after
        started = clock()
        self.last_heard = dict.fromkeys(engine.sequencer.last_seq, started)
        #: The last seq acknowledged per source: what recovery found in the journal, then
        #: every ack published. Snapshots repeat these, never the live sequencer's, which
        #: counts batches the sync thread has not made durable yet.
        self.acknowledged = dict(engine.sequencer.last_seq)
        self.instance = uuid.uuid4().hex[:12]
        self.clock = clock
        self.wall_clock = wall_clock
        self.snapshot_interval = snapshot_interval
        self.checkpoint_path = checkpoint_path
        self.checkpoint_interval = checkpoint_interval
        self.snapshot_seq = 0
        self.snapshots_skipped = 0  # slots that came due while the worker was still building
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
        self.worker = SnapshotWorker(WORKER_WAIT_SECONDS) if snapshot_worker else None
        journal = engine.journal
        self.syncer: Syncer | None = None
        if sync_thread and journal is not None and journal.syncs_each_commit:
            self.syncer = Syncer(ctx, journal)
            self._poll_input_and_sync = zmq.Poller()
            self._poll_input_and_sync.register(self.pull, zmq.POLLIN)
            self._poll_input_and_sync.register(self.syncer.socket, zmq.POLLIN)

    def run(self, stop: StopFlag) -> None:
        """Serve until `stop` is set or the journal fails, then close."""
        while not stop and self.failure is None:
            self.step(min(POLL_SLICE_MS, max(0, int((self.next_snapshot - self.clock()) * 1000))))
        if self.failure is None:
            log.info("controller %s stopping (%s)", self.instance, stop.signal_name or "asked")
        self.close()

    @property
    def paused(self) -> bool:
        return self.paused_since is not None

    def step(self, timeout_ms: int = 0) -> int:
        """Poll up to `timeout_ms`, process what arrived, run due timers; returns messages read."""
        received = 0
        worker = self.worker
        if worker is not None and worker.busy:
            timeout_ms = min(timeout_ms, SNAPSHOT_WAIT_SLICE_MS)
        if self.paused:
            self._maybe_resume()
        if self.syncer is not None and self.failure is None:
            received = self._poll_pipelined(self.syncer, timeout_ms)
        elif not self.paused and self.failure is None and self.pull.poll(timeout_ms):
            received = self.drain()
        elif self.paused and timeout_ms:
            self.pub.poll(timeout_ms, zmq.POLLERR)  # nothing to read: wait out the slice
        if worker is not None and worker.busy:
            self._send_built(worker)
        now = self.clock()
        if now >= self.next_snapshot and self.failure is None:
            self._snapshot_due()
            # Skip missed slots instead of bursting to catch up.
            missed = (now - self.next_snapshot) // self.snapshot_interval
            self.next_snapshot += (missed + 1) * self.snapshot_interval
        if self.checkpoint_path is not None and now >= self.next_checkpoint and not self.paused:
            self._checkpoint()
            self.next_checkpoint = now + self.checkpoint_interval
        return received

    def _poll_pipelined(self, syncer: Syncer, timeout_ms: int) -> int:
        """Wait for input or a finished sync; publish what the sync made durable, drain the
        input (unless paused, or too much already waits for the disk)."""
        reading = not self.paused and syncer.waiting < MAX_UNSYNCED_OUTPUTS
        if reading:
            ready = dict(self._poll_input_and_sync.poll(timeout_ms))
        else:
            ready = {syncer.socket: zmq.POLLIN} if syncer.socket.poll(timeout_ms) else {}
        if syncer.socket in ready:
            try:
                self._publish_acknowledged(syncer.collect())
            except JournalFailed as exc:
                self._fail(exc)
                return 0
        return self.drain() if self.pull in ready else 0

    def _settle(self) -> bool:
        """Wait until every written batch is durable and publish its outputs; False if a
        sync failed (the service has then failed)."""
        if self.syncer is None or self.failure is not None:
            return self.failure is None
        try:
            self._publish_acknowledged(self.syncer.settle())
        except JournalFailed as exc:
            self._fail(exc)
            return False
        return True

    def _checkpoint(self) -> None:
        """Save a checkpoint; a failure to write it costs only a longer recovery."""
        if self.checkpoint_path is None or self.failure is not None or not self._settle():
            return
        try:
            self.engine.checkpoint(self.checkpoint_path)
        except JournalFailed as exc:
            self._fail(exc)
        except JournalFull as exc:
            self._pause(exc)
        except OSError as exc:
            log.warning("could not write checkpoint %s: %s", self.checkpoint_path, exc)

    def drain(self) -> int:
        """Read what is waiting (up to a batch), commit it once, publish its events.

        A batch ends at BATCH_MAX messages or BATCH_SECONDS, whichever comes first, so a
        flood of bad input cannot hold a good fill's allocation back for long.
        """
        engine = self.engine
        pull, receive, declined = self.pull, engine.receive, engine.receive_in_python
        fast = engine.fast  # the compiled path, offered each message first when built
        count = 0
        clock = time.perf_counter
        deadline = clock() + BATCH_SECONDS
        keyed = self.security is not None
        try:
            while count < BATCH_MAX:
                if keyed:  # the frame carries the sender's key identity (ZAP User-Id)
                    frame = pull.recv(zmq.NOBLOCK, copy=False)
                    receive(frame.bytes, sender_user_id(frame))
                elif fast is not None:
                    raw = pull.recv(zmq.NOBLOCK)
                    if not fast.receive(raw):
                        declined(raw)  # it changed nothing: the Python path takes it
                else:
                    receive(pull.recv(zmq.NOBLOCK))
                count += 1
                if clock() > deadline:
                    break
        except zmq.Again:
            pass
        self.commit_and_publish()
        return count

    def commit_and_publish(self) -> None:
        """Make the batch durable, then publish it; on a journal error publish nothing.
        With the sync thread: write it, and publish once a sync covers it."""
        journal = self.engine.journal
        batch = journal.buffered_bytes if journal is not None else 0
        try:
            if self.syncer is not None:
                end, written = self.engine.write()
                outputs = self.syncer.submit(end, written)
            else:
                outputs = self.engine.commit()
        except JournalFull as exc:
            self.space_needed = batch
            self._pause(exc)
            return
        except JournalFailed as exc:
            self._fail(exc)
            return
        self._publish_acknowledged(outputs)

    def _publish_acknowledged(self, outputs: list[Output]) -> None:
        """Publish outputs whose inputs are durable, noting when each source was heard."""
        now = self.clock()
        for output in outputs:
            if type(output) is Ack:
                self.last_heard[output.source] = now
                self.acknowledged[output.source] = output.seq
        self.publish_outputs(outputs)

    def publish_outputs(self, outputs: list[Output]) -> None:
        """Send two-frame events: the backend's send() of bytes with an int flag (pyzmq's
        Socket.send wraps it in Python, 0.4 us a frame here; send_multipart more)."""
        pub, instance = self.pub, self.instance
        # (a stand-in socket, as the simulator's, has only its own send)
        send = BackendSocket.send.__get__(pub) if isinstance(pub, BackendSocket) else pub.send
        for output in outputs:
            if type(output) is tuple:  # an event the compiled path encoded
                topic, body = output
            else:
                topic, body = encode_output(output, instance)
            send(topic, SNDMORE)
            send(body)

    def publish_snapshot(self) -> None:
        """A full positions snapshot built and sent now, on this thread, then every
        source's ack (for senders that missed one). One the worker has in hand goes first,
        so subscribers see snapshots in order (the loop itself never waits for the worker)."""
        worker = self.worker
        if worker is not None and worker.busy and worker.wait(WORKER_WAIT_SECONDS):
            self._send_built(worker)
        if not self._settle():  # a snapshot shows, and its acks repeat, durable state only
            return
        engine = self.engine
        meta = self._next_meta()
        snapshot = build_snapshot(engine.book, engine.delivery(), meta, engine.sequencer.last_seq)
        self._send_snapshot(snapshot.frames())

    def _snapshot_due(self) -> None:
        """The timer's snapshot: published now, or captured for the worker, or skipped
        while the worker still builds the last one (a slow build never queues up)."""
        worker = self.worker
        if worker is None:
            self.publish_snapshot()
            return
        if worker.busy:
            self.snapshots_skipped += 1
            log.debug("snapshot slot skipped: #%d is still being built", self.snapshot_seq)
            return
        if not self._settle():
            return
        engine = self.engine
        meta = self._next_meta()
        state = capture(engine.book, engine.delivery(), meta, engine.sequencer.last_seq)
        if not worker.submit(state):  # its thread is gone: build here rather than go without
            log.error("snapshot worker has stopped; building snapshot #%d on the loop", meta.seq)
            self._send_snapshot(build(state).frames())

    def _send_built(self, worker: SnapshotWorker) -> None:
        """Send the snapshot the worker finished, if it has (a failed one was logged there)."""
        built = worker.take()
        if built is not None and built.frames is not None and self.failure is None:
            self._send_snapshot(built.frames)

    def _next_meta(self) -> SnapshotMeta:
        """What only the service knows about the next snapshot, which takes the next number."""
        self.snapshot_seq += 1
        journal = self.engine.journal
        return SnapshotMeta(
            seq=self.snapshot_seq,
            instance=self.instance,
            time=self.wall_clock(),
            interval=self.snapshot_interval,
            peers_rejected=self.security.rejected if self.security else 0,
            journal=journal.header.journal_id if journal is not None else None,
            paused=self.paused,
        )

    def _send_snapshot(self, frames: list[bytes]) -> None:
        """A snapshot's two frames, then the acks of the sources still heard from."""
        topic, body = frames
        self.pub.send(topic, SNDMORE)
        self.pub.send(body)
        self.publish_outputs(self._acks_to_repeat())

    def _acks_to_repeat(self) -> list[Output]:
        """Every source's last ack again, for senders that missed one, except sources idle
        for longer than `source_retire_after` and fully acknowledged (nothing waits)."""
        now, sequencer = self.clock(), self.engine.sequencer
        horizon = now - self.source_retire_after
        heard = self.last_heard
        return [
            Ack(source, seq)
            for source, seq in self.acknowledged.items()
            if heard.setdefault(source, now) > horizon or sequencer.is_waiting(source)
        ]

    # -- when the journal cannot be written ------------------------------------------------
    def _fail(self, exc: JournalFailed) -> None:
        """Fail-stop: nothing of this batch is acknowledged, the journal is never written
        again by this process, and the process exits for recovery to decide."""
        self.failure = str(exc)
        if self.syncer is not None:
            self.syncer.close()  # its sync ends before the journal's descriptor is closed
        log.critical(
            "journal failure, stopping without acknowledging the last batch: %s "
            "(restart the controller: recovery reads what reached the disk)",
            exc,
        )
        if self.engine.journal is not None:
            self.engine.journal.abandon()

    def _pause(self, exc: JournalFull) -> None:
        """Stop reading input until the journal's disk has room again; drop the batch's
        effects by rebuilding the engine from the journal (what was acknowledged)."""
        if self.rebuild is None:
            self._fail(JournalFailed(f"{exc}; no way to rebuild the state to pause"))
            return
        if not self._settle():  # what was written before the full batch is published first
            return
        if not self.paused:
            log.error(
                "journal disk full (%s): pausing input until about %d bytes are free; "
                "senders keep their messages",
                exc,
                self.space_needed + FREE_SPACE_MARGIN,
            )
        self.paused_since = self.clock()
        self.next_space_check = self.clock() + PAUSE_RETRY_SECONDS
        self.engine = self._adopt(self.rebuild())

    def _adopt(self, engine: Engine) -> Engine:
        """`engine`, set to ask the allow-list who may speak for a source (keys in use)."""
        if self.security is not None:
            engine.authorize = self.security.check
        return engine

    def _maybe_resume(self) -> None:
        now = self.clock()
        if now < self.next_space_check:
            return
        self.next_space_check = now + PAUSE_RETRY_SECONDS
        if self.free_space() >= self.space_needed + FREE_SPACE_MARGIN:
            assert self.paused_since is not None
            log.warning(
                "journal disk has room again: resuming input after %.0f s paused",
                now - self.paused_since,
            )
            self.paused_since = None

    def _journal_free_space(self) -> int:
        journal = self.engine.journal
        if journal is None:
            return 0
        return shutil.disk_usage(journal.path.parent).free

    def close(self) -> None:
        """Commit what is pending, checkpoint, close the sockets and the journal; after a
        journal failure, close without writing or acknowledging anything more."""
        if self.pull.closed:
            return
        self.pull.close()
        if self.worker is not None:
            self.worker.close()  # waits (boundedly) for the build in hand, which is dropped
        if self.failure is None and not self.paused:
            self.commit_and_publish()
            self._checkpoint()  # settles the sync thread first
        self._settle()
        if self.syncer is not None:
            self.syncer.close()
        journal = self.engine.journal
        if journal is not None:
            if self.failure is None:
                try:
                    journal.close()
                except (JournalFailed, OSError) as exc:
                    self._fail(JournalFailed(str(exc)))
            journal.abandon()
        if self.engine.deadletters is not None:
            self.engine.deadletters.close()
        self.pub.close(linger=0 if self.failure else None)
        log.info("controller %s stopped", self.instance)
