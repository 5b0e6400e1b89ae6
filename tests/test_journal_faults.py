"""What the journal promises when disks, peers and files misbehave: fail-stop on a write or
fsync error, a full disk pauses input, one controller per journal, a checkpoint is applied
only to its own journal, and a journal is replayed only under the rules that wrote it."""

from __future__ import annotations

import errno
import itertools
import os
import shutil
import subprocess
import types
from pathlib import Path

import msgpack
import pytest
import zmq
from helpers import FakeClock, Running, collect, python_module, start_controller, wait_for

from common.history import read_steps, recover
from common.protocol import (
    TOPIC_ALLOCATION,
    TOPIC_POSITIONS,
    fill_message,
    pack,
    split_message,
)
from controller import journal as journal_module
from controller.book import Book
from controller.deadletter import DeadLetters
from controller.engine import Engine
from controller.journal import (
    FILL_RECORD,
    HEADER,
    PAGE_BYTES,
    JournalCorrupt,
    JournalFailed,
    JournalFull,
    JournalHeader,
    JournalLock,
    JournalLocked,
    JournalUnsupported,
    JournalWriter,
    frame,
    read_header,
    read_records,
    write_checkpoint,
)
from controller.service import PAUSE_RETRY_SECONDS, ControllerService

_endpoints = itertools.count()
TICKERS = ("AAPL", "MSFT")


def acks_of(events: list[tuple[bytes, dict]]) -> dict[str, int]:
    return {body["source"]: body["seq"] for topic, body in events if topic.startswith(b"ack:")}


class Rig:
    """A controller service over inproc on a fake clock, journaling into a real file, with
    a PUSH to feed it and a SUB that is known to be joined."""

    def __init__(self, ctx: zmq.Context, directory: Path, free_space=None) -> None:
        n = next(_endpoints)
        self.inputs, self.events = f"inproc://faults-in-{n}", f"inproc://faults-ev-{n}"
        self.path = directory / "controller.journal"
        self.checkpoint = directory / "controller.journal.checkpoint"
        self.clock = FakeClock()
        self.writer = JournalWriter(self.path)
        self.dead = DeadLetters(directory / "dead.jsonl")
        engine = Engine(Book(TICKERS), self.writer, self.dead)
        self.service = ControllerService(
            ctx,
            engine,
            self.inputs,
            self.events,
            clock=self.clock,
            checkpoint_path=self.checkpoint,
            rebuild=self.rebuild,
            free_space=free_space,
        )
        self.sub = ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(self.events)
        self.push = ctx.socket(zmq.PUSH)
        self.push.connect(self.inputs)
        for _ in range(200):  # end the slow-joiner window before relying on any event
            self.service.publish_snapshot()
            if any(topic == TOPIC_POSITIONS for topic, _ in collect(self.sub, 10)):
                collect(self.sub)
                break
        else:
            raise AssertionError("subscriber never joined")

    def rebuild(self) -> Engine:
        state = recover(self.path, self.checkpoint, TICKERS)
        return Engine.from_recovered(state, self.writer, self.dead)

    def send(self, *messages: dict) -> list[tuple[bytes, dict]]:
        """Send messages and turn the loop until all are read; the events published."""
        for message in messages:
            self.push.send(pack(message))
        read = 0
        while read < len(messages):
            read += self.service.step(50)
        return collect(self.sub, 10)


def fill(source: str, seq: int, quantity: int = 10) -> dict:
    return fill_message(source, seq, "AAPL", 100.0, quantity)


def journaled_fills(path: Path) -> list[tuple[str, int]]:
    return [(r[1], r[2]) for _, r in read_records(path) if r[0] == FILL_RECORD]


# -- fail-stop ----------------------------------------------------------------------------
def test_a_failed_fsync_is_never_acknowledged_nor_retried(ctx, tmp_path, monkeypatch):
    rig = Rig(ctx, tmp_path)
    events = rig.send(split_message("aum", 1, {"a": 60, "b": 40}), fill("desk", 1))
    assert acks_of(events) == {"aum": 1, "desk": 1}

    calls = []

    def failing_sync(fd: int) -> None:
        calls.append(fd)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(journal_module.os, "fdatasync", failing_sync)
    monkeypatch.setattr(journal_module.os, "fsync", failing_sync)
    events = rig.send(fill("desk", 2), fill("desk", 3))
    assert events == []  # no allocation and no ack for the batch whose sync failed
    assert rig.service.failure is not None and "fdatasync failed" in rig.service.failure
    assert len(calls) == 1
    rig.service.close()  # the shutdown path must not commit, sync or acknowledge again
    assert len(calls) == 1, "the sync was retried after it failed"
    assert collect(rig.sub, 50) == []
    with pytest.raises(JournalFailed):
        rig.writer.commit()
    monkeypatch.undo()
    # What the failed sync should have made durable is cut off: no restart reads it back.
    assert journaled_fills(rig.path) == [("desk", 1)]
    assert recover(rig.path, None, TICKERS).last_seq["desk"] == 1


def test_a_failed_fsync_of_preallocated_space_is_fail_stop(tmp_path, monkeypatch):
    """Adding a chunk ends with an fsync (size and extents); its failure is a failed sync
    like any other: the writer is dead, the batch is not written, nothing is retried."""
    writer = JournalWriter(tmp_path / "j", preallocate=PAGE_BYTES)
    writer.append(["F", "s", 1, "AAPL", 1, 1, "buy"])
    end = writer.commit()
    calls = []

    def failing_fsync(fd: int) -> None:
        calls.append(fd)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(journal_module.os, "fsync", failing_fsync)
    writer.append(["R", "s", 2, "x" * PAGE_BYTES])  # needs the next page
    with pytest.raises(JournalFailed, match="fsync failed"):
        writer.commit()
    assert writer.failed and len(calls) == 1
    writer.close()
    assert len(calls) == 1
    monkeypatch.undo()
    assert (tmp_path / "j").stat().st_size == end  # cut back to what was synced
    assert [r[2] for _, r in read_records(tmp_path / "j")] == [1]


def test_a_failed_write_stops_the_service_without_acknowledging(ctx, tmp_path, monkeypatch):
    rig = Rig(ctx, tmp_path)
    rig.send(split_message("aum", 1, {"a": 100}))

    def failing_write(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(journal_module.os, "pwrite", failing_write)
    assert rig.send(fill("desk", 1)) == []
    assert rig.service.failure is not None
    monkeypatch.undo()
    rig.service.close()
    assert collect(rig.sub, 50) == []
    assert journaled_fills(rig.path) == []  # cut back: nothing half-written to replay


def test_a_file_that_is_not_a_journal_is_refused_in_one_line(tmp_path):
    journal = tmp_path / "journal"
    journal.write_bytes(b"NOTAJNL!")  # not a journal: refused at start with exit 2
    running, _, _ = start_controller(tmp_path)
    assert running.wait(30) == 2
    assert "not a journal" in running.stderr
    assert "Traceback" not in running.stderr


# -- a full disk --------------------------------------------------------------------------
def test_a_full_disk_pauses_input_and_resumes_with_nothing_lost(ctx, tmp_path, monkeypatch):
    free = {"bytes": 0}
    rig = Rig(ctx, tmp_path, free_space=lambda: free["bytes"])
    rig.send(split_message("aum", 1, {"a": 50, "b": 50}), fill("desk", 1))
    real_write = os.pwrite

    def full_write(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(journal_module.os, "pwrite", full_write)
    assert rig.send(fill("desk", 2, 7)) == []  # not durable: neither allocated nor acked
    assert rig.service.paused and rig.service.failure is None
    assert rig.service.engine.sequencer.last_seq["desk"] == 1  # rebuilt from the journal
    rig.service.publish_snapshot()
    snapshot = next(body for topic, body in collect(rig.sub, 50) if topic == TOPIC_POSITIONS)
    assert snapshot["paused"] is True
    assert snapshot["counts"]["fills"] == 1

    # While paused the input socket is not read: the sender's resend waits in ZeroMQ.
    rig.push.send(pack(fill("desk", 2, 7)))
    assert rig.service.step(10) == 0
    monkeypatch.setattr(journal_module.os, "pwrite", real_write)
    rig.clock.advance(PAUSE_RETRY_SECONDS)
    assert rig.service.step(10) == 0 and rig.service.paused  # still no room reported
    free["bytes"] = 1 << 30
    rig.clock.advance(PAUSE_RETRY_SECONDS)
    read = 0
    while read < 1:
        read += rig.service.step(50)
    assert not rig.service.paused
    events = collect(rig.sub, 50)
    assert acks_of(events)["desk"] == 2
    assert [b["seq"] for t, b in events if t == TOPIC_ALLOCATION] == [2]
    rig.service.close()
    assert journaled_fills(rig.path) == [("desk", 1), ("desk", 2)]


def test_a_full_disk_while_preallocating_pauses_input_and_resumes(ctx, tmp_path, monkeypatch):
    """The first batch of a new journal needs space allocated: with none to be had, input
    pauses (it never crashes, so never crash-loops) and resumes once there is room."""
    free = {"bytes": 0}
    rig = Rig(ctx, tmp_path, free_space=lambda: free["bytes"])
    real_write = os.pwrite
    refused = []

    def no_room_for_zeros(fd: int, data, offset: int) -> int:
        if not any(data):  # pre-allocating: zeros past the end of the file
            refused.append(len(data))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data, offset)

    monkeypatch.setattr(journal_module.os, "pwrite", no_room_for_zeros)
    assert rig.send(split_message("aum", 1, {"a": 50, "b": 50}), fill("desk", 1)) == []
    assert refused and rig.service.paused and rig.service.failure is None
    assert rig.writer.offset == rig.writer.allocated == rig.path.stat().st_size
    monkeypatch.setattr(journal_module.os, "pwrite", real_write)
    free["bytes"] = 1 << 30
    rig.clock.advance(PAUSE_RETRY_SECONDS)
    events = rig.send(split_message("aum", 1, {"a": 50, "b": 50}), fill("desk", 1))
    assert not rig.service.paused
    assert acks_of(events) == {"aum": 1, "desk": 1}
    assert rig.writer.allocated > rig.writer.offset
    rig.service.close()
    assert journaled_fills(rig.path) == [("desk", 1)]


def test_a_nearly_full_disk_gets_only_the_pages_the_batch_needs(tmp_path, monkeypatch):
    """With less room than a chunk, the writer takes whole pages for the batch instead of
    filling the last of the disk with zeros; with none at all the disk is full."""
    path = tmp_path / "j"
    writer = JournalWriter(path, preallocate=64 * PAGE_BYTES)
    room = {"bytes": 3 * PAGE_BYTES}
    real_write = os.pwrite

    def limited(fd: int, data, offset: int) -> int:
        grows = offset + len(data) - os.fstat(fd).st_size
        if grows > room["bytes"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        room["bytes"] -= max(0, grows)
        return real_write(fd, data, offset)

    monkeypatch.setattr(journal_module.os, "pwrite", limited)
    writer.append(["F", "s", 1, "AAPL", 1, 1, "buy"])
    end = writer.commit()
    assert writer.allocated == PAGE_BYTES == path.stat().st_size  # the chunk did not fit
    reported = types.SimpleNamespace(f_bavail=0, f_frsize=PAGE_BYTES)
    monkeypatch.setattr(journal_module.os, "fstatvfs", lambda fd: reported)
    room["bytes"] = 0
    writer.append(["R", "s", 2, "x" * PAGE_BYTES])
    with pytest.raises(JournalFull):
        writer.commit()
    assert writer.offset == end == path.stat().st_size  # the batch and the zeros cut back
    room["bytes"] = 2 * PAGE_BYTES  # room again, though less than a chunk
    writer.append(["R", "s", 2, "x" * PAGE_BYTES])
    end = writer.commit()
    assert writer.allocated == 2 * PAGE_BYTES >= end
    writer.close()
    assert [r[2] for _, r in read_records(path)] == [1, 2]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_controller_process_on_a_full_tmpfs_pauses_and_resumes(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    ctx = zmq.Context()
    running = None
    try:
        running, inputs, publish = start_controller(mount, "0.2")
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(publish)
        push = ctx.socket(zmq.PUSH)
        push.connect(inputs)
        events: list = []
        wait_for(lambda: events.extend(collect(sub, 50)) or events, 15, "a snapshot")
        filler = mount / "filler"
        push.send(pack(split_message("aum", 1, {"a": 50, "b": 50})))
        def acked(source: str, seq: int) -> bool:
            events.extend(collect(sub, 50))
            return acks_of(events).get(source) == seq

        wait_for(lambda: acked("aum", 1), 15, "the split")
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:  # take every byte the tmpfs has left
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)
        for seq in range(1, 301):
            push.send(pack(fill("desk", seq)))

        def paused() -> bool:
            events.extend(collect(sub, 50))
            return any(t == TOPIC_POSITIONS and b.get("paused") for t, b in events)

        wait_for(paused, 30, "a snapshot saying the controller is paused")
        assert running.process.poll() is None, running.stderr
        filler.unlink()

        # The sender's part (resending what was not acknowledged) is done here by hand.
        resend_at = [0]

        def resend_and_check() -> bool:
            resend_at[0] += 1
            if resend_at[0] % 20 == 0:
                done = acks_of(events).get("desk", 0)
                for seq in range(done + 1, 301):
                    try:  # never block on a controller that is not reading
                        push.send(pack(fill("desk", seq)), zmq.NOBLOCK)
                    except zmq.Again:
                        break
            return acked("desk", 300)

        wait_for(resend_and_check, 60, "every fill acknowledged after space returned")
        running.process.terminate()
        assert running.wait(30) == 0
        assert journaled_fills(mount / "journal") == [("desk", s) for s in range(1, 301)]
        assert "pausing input" in running.stderr and "resuming input" in running.stderr
        assert "Traceback" not in running.stderr
    finally:
        if running is not None:
            running.stop()
        ctx.destroy(linger=0)
        subprocess.run(["umount", "-l", str(mount)], check=False)


# -- one controller per journal -----------------------------------------------------------
def test_a_second_lock_on_a_journal_names_the_holder(tmp_path):
    first = JournalLock(tmp_path / "j")
    with pytest.raises(JournalLocked, match=rf"in use by another controller \(pid {os.getpid()}\)"):
        JournalLock(tmp_path / "j")
    first.release()
    JournalLock(tmp_path / "j").release()  # free again once released


def test_a_second_controller_on_the_same_journal_exits_at_once(tmp_path):
    running, _, _ = start_controller(tmp_path)
    try:
        wait_for(lambda: "inputs bound" in running.stderr, 20, "the first controller")
        second = Running(
            python_module(
                "controller",
                "--inputs",
                f"ipc://{tmp_path}/in2",
                "--publish",
                f"ipc://{tmp_path}/pub2",
                "--journal",
                str(tmp_path / "journal"),
            )
        )
        assert second.wait(30) == 2
        assert f"in use by another controller (pid {running.process.pid})" in second.stderr
    finally:
        running.process.terminate()
        running.wait(30)


# -- a checkpoint belongs to one journal --------------------------------------------------
def write_inputs(path: Path, *messages: dict) -> Engine:
    writer = JournalWriter(path)
    engine = Engine(Book(TICKERS), writer)
    for message in messages:
        engine.receive(pack(message))
    engine.commit()
    return engine


def test_a_checkpoint_of_another_journal_is_ignored(tmp_path, caplog):
    old = write_inputs(
        tmp_path / "old", split_message("aum", 1, {"a": 100}), fill("desk", 1, 500)
    )
    old.checkpoint(tmp_path / "ckpt")
    old.journal.close()
    new = write_inputs(tmp_path / "new", split_message("aum", 1, {"b": 100}), fill("desk", 1, 3))
    new.journal.close()
    recovered = recover(tmp_path / "new", tmp_path / "ckpt", TICKERS)
    assert recovered.book == recover(tmp_path / "new", None, TICKERS).book
    assert recovered.book.positions == [{"AAPL": 3}]
    assert "belongs to journal" in caplog.text


# -- a journal with a zero tail (the controller died with space pre-allocated) ---------------
def crashed_with_a_zero_tail(path: Path) -> Engine:
    """A journal of a split and fills with a checkpoint, whose controller died: the zeros
    it had pre-allocated stay after the last record."""
    engine = write_inputs(path, split_message("aum", 1, {"a": 60, "b": 40}),
                          *[fill("desk", seq, 10 * seq) for seq in range(1, 4)])
    engine.checkpoint(path.with_name(path.name + ".checkpoint"))
    for seq in range(4, 6):
        engine.receive(pack(fill("desk", seq, 10 * seq)))
        engine.commit()
    engine.journal.abandon()
    assert path.stat().st_size > engine.journal.offset and not any(
        path.read_bytes()[engine.journal.offset :]
    )
    return engine


def test_a_restarted_controller_goes_on_after_the_last_record(tmp_path):
    path = tmp_path / "j"
    before = crashed_with_a_zero_tail(path)
    checkpoint = path.with_name("j.checkpoint")
    state = recover(path, checkpoint, TICKERS)  # what the CLI does: recover, then write
    assert state.book == before.book and state.last_seq == {"aum": 1, "desk": 5}
    assert state.replayed == 2  # the checkpoint was used, and the zeros were no records
    assert path.stat().st_size == state.end == before.journal.offset  # zeros given back
    engine = Engine.from_recovered(state, JournalWriter(path))
    engine.receive(pack(fill("desk", 6, 60)))
    engine.commit()
    engine.journal.close()
    assert journaled_fills(path) == [("desk", seq) for seq in range(1, 7)]
    assert recover(path, checkpoint, TICKERS).book == recover(path, None, TICKERS).book


def test_the_tools_read_a_journal_with_a_zero_tail_as_its_records(tmp_path, capsys):
    """audit (its listing and --verify, through trail and verify) stops where the zeros
    start, and finds what it finds in the same journal without them."""
    from controller.tools import audit

    zeroed = tmp_path / "zeroed" / "controller.journal"
    zeroed.parent.mkdir()
    engine = crashed_with_a_zero_tail(zeroed)
    plain = tmp_path / "plain" / "controller.journal"
    plain.parent.mkdir()
    plain.write_bytes(zeroed.read_bytes()[: engine.journal.offset])
    for suffix in (".checkpoint",):
        source = zeroed.with_name(zeroed.name + suffix)
        plain.with_name(plain.name + suffix).write_bytes(source.read_bytes())

    outputs = []
    for journal in (zeroed, plain):
        assert audit.main(["--journal", str(journal), "--csv"]) == 0
        assert audit.main(["--journal", str(journal), "--verify"]) == 0
        outputs.append(capsys.readouterr().out.replace(str(journal.parent), "DIR"))
    assert outputs[0] == outputs[1]
    assert "audit verify: OK" in outputs[0] and outputs[0].count("desk") >= 5
    assert zeroed.stat().st_size > engine.journal.offset  # a reader leaves the file alone


def test_a_checkpoint_inside_the_zero_tail_is_ahead_of_the_journal(tmp_path, caplog):
    """The file's size no longer says where the records end: a checkpoint whose offset
    falls among the zeros (its records were lost) is ignored, as one past the end was."""
    path = tmp_path / "j"
    engine = crashed_with_a_zero_tail(path)
    checkpoint = path.with_name("j.checkpoint")
    empty = {"book": Book(TICKERS).to_state(), "last_seq": {}}  # were it used: no fills
    write_checkpoint(checkpoint, engine.journal.header.journal_id, engine.journal.offset + 64,
                     empty)
    recovered = recover(path, checkpoint, TICKERS)
    assert "checkpoint is ahead of the journal" in caplog.text
    assert recovered.book == engine.book and recovered.last_seq == {"aum": 1, "desk": 5}


# -- a journal says what it means -----------------------------------------------------------
def test_a_journal_written_under_other_rules_is_refused(tmp_path):
    path = tmp_path / "j"
    header = JournalHeader("id", 1, "book", "2026-01-01T00:00:00+00:00")
    path.write_bytes(HEADER + frame(msgpack.packb(header.to_map())))
    with pytest.raises(JournalUnsupported, match="allocation rules version 1"):
        recover(path, None, TICKERS)


def test_a_format_1_journal_is_refused_with_a_reason(tmp_path):
    path = tmp_path / "j"
    path.write_bytes(b"FILLJNL\x01")
    with pytest.raises(JournalUnsupported, match="format 1 journal"):
        recover(path, None, TICKERS)


def test_a_journal_of_another_valuation_is_refused(tmp_path):
    path = tmp_path / "j"
    JournalWriter(path, header=JournalHeader.new("market")).close()
    with pytest.raises(JournalCorrupt, match="valuation 'market'"):
        recover(path, None, TICKERS)
    assert recover(path, None, TICKERS, "market").book.valuation == "market"


def test_the_header_names_rules_valuation_and_identity(tmp_path):
    writer = JournalWriter(tmp_path / "j", header=JournalHeader.new("book"))
    writer.close()
    again = JournalWriter(tmp_path / "j")
    assert again.header == writer.header and len(writer.header.journal_id) == 32
    again.close()


def test_a_full_disk_cuts_the_batch_back_and_the_writer_stays_usable(tmp_path, monkeypatch):
    writer = JournalWriter(tmp_path / "j")
    writer.append(["F", "s", 1, "AAPL", 1, 1])
    writer.commit()
    end = writer.offset
    writer.append(["F", "s", 2, "AAPL", 1, 1])
    real = os.pwrite
    calls = iter([10, None])

    def partial_then_full(fd: int, data, offset: int) -> int:
        size = next(calls)
        if size is None:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, bytes(data[:size]), offset)

    monkeypatch.setattr(journal_module.os, "pwrite", partial_then_full)
    with pytest.raises(JournalFull):
        writer.commit()
    monkeypatch.undo()
    assert (tmp_path / "j").stat().st_size == end == writer.offset
    writer.append(["F", "s", 2, "AAPL", 1, 1])
    writer.commit()
    writer.close()
    assert [r[2] for _, r in read_records(tmp_path / "j")] == [1, 2]


def test_dead_letters_stay_within_their_budget(tmp_path):
    dead = DeadLetters(tmp_path / "dead.jsonl", max_file_bytes=64 * 1024, max_stored_bytes=256)
    for n in range(200):
        dead.write(os.urandom(1 << 20) if n % 2 else b"\xc1", "garbage", None, None)
    dead.close()
    files = [tmp_path / "dead.jsonl", tmp_path / "dead.jsonl.1"]
    total = sum(f.stat().st_size for f in files if f.exists())
    assert total < 3 * 64 * 1024
    assert dead.rotations > 0
    assert shutil.disk_usage(tmp_path).free > 0


def test_a_dead_letter_that_cannot_be_written_is_counted_never_fatal(tmp_path, monkeypatch):
    dead = DeadLetters(tmp_path / "dead.jsonl")

    class FullFile:
        def write(self, text: str) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        flush = close = lambda self: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full"))

        def tell(self) -> int:
            return 0

    dead._file.close()
    monkeypatch.setattr(dead, "_file", FullFile())
    for _ in range(3):
        dead.write(b"\xc1", "not valid msgpack", None, None)
    dead.flush()
    dead.close()
    assert dead.lost == 5


def test_a_split_of_the_most_accounts_with_the_longest_names_is_journaled_and_replayed(
    tmp_path,
):
    """A split at the documented limits is one record the journal reads back (and so is a
    rejection quoting a huge value: reasons are bounded)."""
    from common.protocol import MAX_ACCOUNTS, MAX_NAME_LENGTH, MAX_REASON_CHARS

    names = [f"{n:0{MAX_NAME_LENGTH}d}" for n in range(MAX_ACCOUNTS)]
    engine = write_inputs(
        tmp_path / "j",
        split_message("aum", 1, dict.fromkeys(names, 100 / MAX_ACCOUNTS)),
        split_message("aum", 2, {"a": "x" * 1_500_000}),  # rejected, quoting the value
        fill("desk", 1, 10_000),
    )
    engine.journal.close()
    recovered = recover(tmp_path / "j", None, TICKERS)
    assert recovered.book == engine.book and len(recovered.book.accounts) == MAX_ACCOUNTS
    assert recovered.last_seq == {"aum": 2, "desk": 1}
    (rejected,) = [
        step.item for step in read_steps(tmp_path / "j") if type(step.item).__name__ == "Rejected"
    ]
    assert len(rejected.reason) <= MAX_REASON_CHARS


def test_a_failed_fsync_before_recovery_drops_the_cached_pages_and_fails(tmp_path, monkeypatch):
    """The kernel reports a failed fsync once: a retried start must not trust what the
    cache shows, so the first failure drops the file's pages before failing the start."""
    from controller.journal import settle

    write_inputs(tmp_path / "j", split_message("aum", 1, {"a": 100})).journal.close()
    advised = []

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(journal_module.os, "fsync", failing_fsync)
    monkeypatch.setattr(
        journal_module.os, "posix_fadvise", lambda fd, start, length, advice: advised.append(advice)
    )
    with pytest.raises(JournalFailed, match="fsync before recovery failed"):
        settle(tmp_path / "j")
    assert advised == [os.POSIX_FADV_DONTNEED]
    monkeypatch.undo()
    settle(tmp_path / "j")  # a disk that answers: nothing to say
    settle(tmp_path / "absent")  # no journal yet: nothing to settle


def test_a_writer_that_cannot_open_a_journal_leaves_no_descriptor(tmp_path, monkeypatch):
    write_inputs(tmp_path / "j", split_message("aum", 1, {"a": 100})).journal.close()
    before = len(os.listdir("/proc/self/fd"))

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(journal_module.os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        JournalWriter(tmp_path / "j")
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_new_journal_whose_header_fsync_fails_is_removed(tmp_path, monkeypatch):
    """Nothing in it was acknowledged; left behind, the next start's fsync (a failed one is
    reported once) would trust a header the disk may never have received."""
    path = tmp_path / "journal"

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(journal_module.os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        JournalWriter(path)
    assert not path.exists()
    monkeypatch.undo()
    writer = JournalWriter(path)  # the next start makes a new journal
    writer.close()
    assert read_header(path) is not None
