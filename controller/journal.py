"""The journal: a file of accepted inputs written in place, and atomic checkpoints beside it.

File layout: an 8-byte preamble (magic + format version), a header record saying what the
journal means (its identity, the rules version and the valuation that wrote it), then
records, each framed as
    [u32 payload length][u32 CRC-32 of payload][payload: one msgpack value]
and written in batches (group commit: one write and at most one sync per batch), then
zeros: the writer pre-allocates the file in chunks ahead of its offset, zero-filled and
fsynced once per chunk, and writes each batch in place (pwrite) followed by fdatasync,
which then has no file size or extent to record: only the batch's pages. The records end
where the zeros start (a record never has length 0), and every reader stops there.

Fail-stop: once a write or a sync fails the writer refuses everything after it (after a
failed sync the page cache cannot be trusted, so it is never retried); the process must
exit and let recovery decide what reached the disk. A disk that is merely full (ENOSPC,
EDQUOT while pre-allocating or writing) is reported apart: the batch is cut back and
nothing of it is durable.

At start-up a torn last record (the process died mid-write, or a power cut kept only part
of a batch, leaving zeros after it) is detected and cut off; a bad record with good data
after it is corruption, and start-up stops with the offset named.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import struct
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgpack

from common.protocol import (
    BUY,
    MAX_SPLIT_MESSAGE_BYTES,
    RULES_VERSION,
    SELL,
    SIDES,
    Fill,
    Input,
    Invalid,
    Rejected,
    Split,
    build_split,
)

log = logging.getLogger(__name__)

MAGIC = b"FILLJNL"
FORMAT_VERSION = 2
HEADER = MAGIC + bytes([FORMAT_VERSION])
RECORD_HEADER = struct.Struct("<II")
MAX_RECORD_BYTES = 4 * MAX_SPLIT_MESSAGE_BYTES  # a record holds at most one input, journaled
CHECKPOINT_MAGIC = b"FILLCKP2"
DISK_FULL_ERRORS = (errno.ENOSPC, errno.EDQUOT)
PREALLOCATE_BYTES = 4 << 20  # the writer pre-allocates the journal this much at a time
PAGE_BYTES = 4096  # a nearly full disk gets only what the batch needs, in whole pages
ZERO_BLOCK_BYTES = 1 << 20  # zeros written per call while pre-allocating
TAIL_BLOCK_BYTES = 64 << 10  # read per step when looking back over a zero tail

FSYNC_ALWAYS = "always"
FSYNC_INTERVAL = "interval"
FSYNC_POLICIES = (FSYNC_ALWAYS, FSYNC_INTERVAL)


class JournalCorrupt(RuntimeError):
    """A record in the middle of the journal is damaged; refusing to guess."""


class JournalUnsupported(JournalCorrupt):
    """The journal was written under a format or rules this code does not implement."""


class JournalFailed(RuntimeError):
    """A write or fsync failed: nothing since the last good commit may be acknowledged, and
    this process must not write the journal again (fail-stop)."""


class JournalFull(RuntimeError):
    """The disk is full: the batch was cut back, nothing of it is durable; retry later."""


class JournalLocked(RuntimeError):
    """Another live process holds the journal."""


@dataclass(frozen=True, slots=True)
class JournalHeader:
    """What a journal means: who it is, the rules and valuation its records were written
    under (replaying it under others would build a different book), and when it began."""

    journal_id: str
    rules: int
    valuation: str
    created: str

    @classmethod
    def new(cls, valuation: str) -> JournalHeader:
        created = datetime.now(UTC).isoformat(timespec="seconds")
        return cls(uuid.uuid4().hex, RULES_VERSION, valuation, created)

    def to_map(self) -> dict[str, Any]:
        return {
            "journal": self.journal_id,
            "rules": self.rules,
            "valuation": self.valuation,
            "created": self.created,
        }

    @classmethod
    def from_map(cls, path: Path, body: Any) -> JournalHeader:
        try:
            return cls(body["journal"], body["rules"], body["valuation"], body["created"])
        except (TypeError, KeyError):
            raise JournalCorrupt(f"{path}: the journal header is unreadable") from None

    def check_supported(self, path: str | os.PathLike) -> None:
        """JournalUnsupported unless this code implements the rules the journal was written by."""
        if type(self.rules) is not int or self.rules != RULES_VERSION:
            raise JournalUnsupported(
                f"{path} was written under allocation rules version {self.rules!r}; this "
                f"release implements version {RULES_VERSION} only (see docs/architecture.md), "
                "so replaying it could build a different book than the one published"
            )


def frame(payload: bytes) -> bytes:
    """One record as stored: length, CRC-32, payload."""
    return RECORD_HEADER.pack(len(payload), zlib.crc32(payload)) + payload


class JournalLock:
    """An exclusive OS lock held for as long as a controller uses a journal.

    The lock lives on `<journal>.lock`, which also names the holder's pid for the message a
    second controller prints. flock is released by the kernel when the holder dies."""

    def __init__(self, journal: str | os.PathLike) -> None:
        self.path = Path(f"{journal}.lock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            raise JournalLocked(
                f"journal {journal} is in use by another controller (pid {holder})"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = -1


class JournalWriter:
    """Writes records in batches: `append` buffers, `commit` writes them in place into
    pre-allocated space and syncs them (fdatasync)."""

    def __init__(
        self,
        path: str | os.PathLike,
        fsync: str = FSYNC_ALWAYS,
        fsync_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        header: JournalHeader | None = None,
        preallocate: int = PREALLOCATE_BYTES,
    ) -> None:
        """Open `path`; a new (empty) journal gets `header` (a fresh one for book valuation
        by default), an existing one keeps its own (see `self.header`) and is written from
        the end of its records on, not from the end of the file. `preallocate`: bytes of
        zero-filled space added at a time (whole pages)."""
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync policy must be one of {FSYNC_POLICIES}, got {fsync!r}")
        if preallocate < PAGE_BYTES or preallocate % PAGE_BYTES:
            raise ValueError(f"preallocate must be a positive multiple of {PAGE_BYTES} bytes")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        self.failed = False
        self._chunk = preallocate
        try:
            self.header = self._start(header)
        except BaseException:
            os.close(self._fd)  # never leak the descriptor of a journal we could not open
            raise
        self._synced = self.offset  # the end of what a successful sync made durable
        self._buffer = bytearray()
        self._packer = msgpack.Packer(use_bin_type=True)
        self._policy = fsync
        self._interval = fsync_interval
        self._clock = clock
        self._last_sync = clock()
        self._unsynced = False

    def append(self, record: list[Any]) -> None:
        self._buffer += frame(self._packer.pack(record))

    def _start(self, header: JournalHeader | None) -> JournalHeader:
        """Write the header of a new journal, or read an existing one's, find where its
        records end and make durable what the file shows (a process that died between a
        write and its sync left records in the page cache that recovery has read but no
        disk holds yet). Sets `offset` (the end of the records) and `_allocated` (the end
        of the file: zeros from `offset` on)."""
        size = os.fstat(self._fd).st_size
        if size == 0:
            header = header if header is not None else JournalHeader.new("book")
            start = HEADER + frame(msgpack.packb(header.to_map(), use_bin_type=True))
            try:
                _pwrite_all(self._fd, start, 0)
                os.fsync(self._fd)
                _fsync_dir(self.path.parent)
            except OSError:
                # Nothing in it was acknowledged: gone, the next start makes a new one
                # rather than trust a header a failed fsync may never have written.
                self.path.unlink(missing_ok=True)
                raise
            self.offset = self._allocated = len(start)
            return header
        existing = read_header(self.path)
        if existing is None:
            raise JournalCorrupt(f"{self.path}: the journal header is incomplete")
        self.offset, self._allocated = size, size
        content = _content_end(self._fd, size)
        if content < size:  # a zero tail, or a last record that ends in zero bytes
            self.offset = records_end(self.path)
            if content > self.offset:  # a torn tail that no recovery cut off
                log.warning("journal %s: cutting off a torn tail at offset %d", self.path,
                            self.offset)
                os.ftruncate(self._fd, self.offset)
                self._allocated = self.offset
        os.fsync(self._fd)
        return existing

    @property
    def pending_records(self) -> bytearray:
        """The framed records appended since the last commit; the engine's compiled path
        extends it in place with records framed exactly as `append` frames them."""
        return self._buffer

    @property
    def buffered_bytes(self) -> int:
        """Bytes appended since the last commit (what the next commit must write)."""
        return len(self._buffer)

    @property
    def allocated(self) -> int:
        """The end of the file: zero-filled, durable space from `offset` up to here."""
        return self._allocated

    def commit(self) -> int:
        """Write what was appended, sync by policy; returns the end offset.

        JournalFull: the disk is full; the batch was cut back (drop it, retry later).
        JournalFailed: any other write error or any sync error; the writer is dead."""
        self._check_alive()
        if self._buffer:
            self._write_batch()
        if self._unsynced and (
            self._policy == FSYNC_ALWAYS or self._clock() - self._last_sync >= self._interval
        ):
            self.sync()
        return self.offset

    @property
    def syncs_each_commit(self) -> bool:
        """True under fsync = "always": every commit waits for its records to be durable."""
        return self._policy == FSYNC_ALWAYS

    def write(self) -> int:
        """Write what was appended, without syncing; returns the end offset. The records are
        not durable until a sync through that offset succeeds (`sync_data` on any thread,
        then `synced_through` here, or `sync`). Errors as `commit`."""
        self._check_alive()
        if self._buffer:
            self._write_batch()
        return self.offset

    @property
    def synced_offset(self) -> int:
        """The end of what a successful sync made durable."""
        return self._synced

    def sync_data(self) -> None:
        """fdatasync, and nothing else: safe on another thread while this one goes on
        writing (the caller keeps the file open until it returns). OSError on failure: the
        caller must then call `sync_failed` on the writer's thread, never retry."""
        os.fdatasync(self._fd)

    def synced_through(self, end: int) -> None:
        """A `sync_data` begun when the records ended at `end` succeeded."""
        if end > self._synced:
            self._synced = end
            self._last_sync = self._clock()
        self._unsynced = self.offset > self._synced

    def sync_failed(self, exc: OSError) -> JournalFailed:
        """A `sync_data` failed: the writer is dead, and what it should have made durable
        (and anything written since) is cut off. Returns the error to raise."""
        self.failed = True
        self._cut_unsynced()
        return JournalFailed(f"{self.path}: fdatasync failed: {exc}")

    def discard(self) -> None:
        """Forget records appended since the last commit (their batch will not be written)."""
        self._buffer.clear()

    def _write_batch(self) -> None:
        size = len(self._buffer)
        try:
            self._reserve(self.offset + size)
        except JournalFull:
            self._buffer.clear()
            raise
        try:
            _pwrite_all(self._fd, self._buffer, self.offset)
        except OSError as exc:
            self._buffer.clear()
            self._cut_back(exc, "write failed")  # no half batch left to write twice
            if exc.errno in DISK_FULL_ERRORS:
                raise JournalFull(f"{self.path}: {os.strerror(exc.errno)}") from exc
            self.failed = True
            raise JournalFailed(f"{self.path}: write failed: {exc}") from exc
        self.offset += size
        self._buffer.clear()
        self._unsynced = True

    def _reserve(self, end: int) -> None:
        """Make the file zero-filled and durable up to at least `end`: a chunk past it, or
        on a nearly full disk the whole pages it needs. Its size and extents are synced
        here, once, so that each batch's fdatasync has only data to write.

        JournalFull: no room even for that (the pre-allocated tail is given back).
        JournalFailed: any other error, or a failed fsync (never retried)."""
        if end <= self._allocated:
            return
        pages = _round_up(end, PAGE_BYTES)
        chunk = _round_up(end, self._chunk)
        if _free_bytes(self._fd) < chunk - self._allocated:
            chunk = pages  # do not fill the last of the disk with zeros only to cut them off
        for target in dict.fromkeys((chunk, pages)):
            try:
                _zero_fill(self._fd, self._allocated, target)
            except OSError as exc:
                self._cut_back(exc, "pre-allocating failed")
                if exc.errno in DISK_FULL_ERRORS:
                    continue  # try the smaller size, then report the disk full
                self.failed = True
                raise JournalFailed(f"{self.path}: pre-allocating failed: {exc}") from exc
            break
        else:
            raise JournalFull(f"{self.path}: {os.strerror(errno.ENOSPC)} (pre-allocating "
                              f"{target - self.offset} bytes)")
        try:
            os.fsync(self._fd)
        except OSError as exc:
            self.failed = True
            self._cut_unsynced()
            raise JournalFailed(f"{self.path}: fsync failed: {exc}") from exc
        # Records written before it are durable now too, but only a data sync's success
        # says so: with the sync thread, that sync may just have failed (the kernel reports
        # it once), and its cut-back must still reach back before them.
        self._allocated = target

    def _cut_back(self, exc: OSError, what: str) -> None:
        """After a failed write, cut the file back to the end of the records (which also
        gives back the pre-allocated space); JournalFailed if even that fails."""
        try:
            os.ftruncate(self._fd, self.offset)
        except OSError:
            self.failed = True
            raise JournalFailed(f"{self.path}: {what} ({exc}) and could not be cut back") from exc
        self._allocated = self.offset

    def sync(self) -> None:
        """fdatasync once; a failure kills the writer for good (never retried)."""
        self._check_alive()
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            self.failed = True
            self._cut_unsynced()
            raise JournalFailed(f"{self.path}: fdatasync failed: {exc}") from exc
        self._now_synced()

    def _now_synced(self) -> None:
        self._synced = self.offset
        self._last_sync = self._clock()
        self._unsynced = False

    def _cut_unsynced(self) -> None:
        """After a failed sync, cut off what it should have made durable. The kernel may
        keep showing those bytes (it marks the pages clean, never to be written), so a
        restarted controller would read them back, acknowledge them and lose them at the
        next power cut, or leave a hole in the middle of the journal once later records
        are synced. Cut off, they are read back by no one; their senders resend them."""
        try:
            os.ftruncate(self._fd, self._synced)
        except OSError as exc:
            log.error("%s: could not cut off the unsynced records after a failed sync: %s",
                      self.path, exc)

    def _check_alive(self) -> None:
        if self.failed:
            raise JournalFailed(f"{self.path}: an earlier write or sync failed")

    def close(self) -> None:
        """Commit and sync what is left, give back the pre-allocated tail, then close; after
        a failure, only close."""
        if self._fd < 0:
            return
        try:
            if not self.failed:
                self.commit()
                if self._unsynced:
                    self.sync()
                self._trim()
        finally:
            os.close(self._fd)
            self._fd = -1

    def _trim(self) -> None:
        """Cut the zero tail off a journal whose records are all durable, so that a
        stopped journal ends where its records do (recovery needs no search for the end)."""
        if self._allocated == self.offset:
            return
        try:
            os.ftruncate(self._fd, self.offset)
            self._allocated = self.offset
            os.fsync(self._fd)
        except OSError as exc:  # the records are durable; only the zeros may stay
            log.error("%s: could not cut off the pre-allocated tail: %s", self.path, exc)

    def abandon(self) -> None:
        """Close without writing or syncing anything more (fail-stop, or a full disk)."""
        self._buffer.clear()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def _pwrite_all(fd: int, data: bytes | bytearray, offset: int) -> None:
    """Write all of `data` at `offset` (pwrite may be partial, e.g. on a filling disk). No
    memoryview of `data` is taken: the caller clears its bytearray after a failure."""
    written = os.pwrite(fd, data, offset)
    while written < len(data):  # rare: a copy of the rest is fine
        written += os.pwrite(fd, data[written:], offset + written)


def _zero_fill(fd: int, start: int, end: int) -> None:
    """Write zeros from `start` to `end`: real blocks, not a hole or unwritten extents, so
    that writing records over them later changes no file metadata (bench/journal.py)."""
    zeros = bytes(min(ZERO_BLOCK_BYTES, end - start))
    while start < end:
        step = min(len(zeros), end - start)
        _pwrite_all(fd, zeros if step == len(zeros) else zeros[:step], start)
        start += step


def _free_bytes(fd: int) -> int:
    """Bytes the file system holding `fd` has free for this user (a very large number when
    it cannot say: then pre-allocating is simply tried)."""
    try:
        stats = os.fstatvfs(fd)
    except OSError:
        return 1 << 62
    return stats.f_bavail * stats.f_frsize


def _content_end(fd: int, size: int) -> int:
    """Where the file's trailing zeros begin (0 for a file of zeros), reading back from its
    end a block at a time: the zero tail is at most a chunk or so."""
    end = size
    while end > 0:
        start = max(0, end - TAIL_BLOCK_BYTES)
        kept = len(os.pread(fd, end - start, start).rstrip(b"\0"))
        if kept:
            return start + kept
        end = start
    return 0


def _nonzero_end(data: bytes) -> int:
    """Where the trailing zeros of `data` begin, looking back a block at a time (no copy
    of the whole)."""
    end = len(data)
    while end > 0:
        start = max(0, end - TAIL_BLOCK_BYTES)
        kept = len(data[start:end].rstrip(b"\0"))
        if kept:
            return start + kept
        end = start
    return 0


def read_records(
    path: str | os.PathLike, start: int = 0, repair: bool = False
) -> Iterator[tuple[int, list[Any]]]:
    """Yield (end offset, record) from `start`; the records end where the zeros start (a
    pre-allocated tail) or at a torn tail. With `repair` (start-up only: never on a
    journal another process is writing) both are cut off: the file ends at its last record.

    Raises JournalCorrupt (naming the offset) for damage that is not at the very end.
    """
    path = Path(path)
    found = _header_record(path, repair)
    if found is None:
        return
    base = max(start, found[1])  # only what follows the checkpoint is read
    with open(path, "rb") as handle:
        handle.seek(base)
        data = handle.read()
    for begin, end in _frames(path, data, base, repair):
        yield base + end, msgpack.unpackb(data[begin + RECORD_HEADER.size : end], raw=False)


def records_end(path: str | os.PathLike) -> int:
    """Where the journal's records end (0 for one without a header): the first zero or
    torn byte after them. Walks every record from the first (checksums, no decoding)."""
    path = Path(path)
    found = _header_record(path, repair=False)
    if found is None:
        return 0
    base = found[1]
    with open(path, "rb") as handle:
        handle.seek(base)
        data = handle.read()
    return base + max((end for _, end in _frames(path, data, base, repair=False)), default=0)


def reaches(path: str | os.PathLike, offset: int) -> bool:
    """Whether the journal holds data up to `offset` (a checkpoint taken there is not ahead
    of it): not past the file's end, nor inside its zero tail. Cheap unless only zeros
    follow `offset`, when the records are walked to tell the end of the last record (which
    may itself end in zero bytes) from pre-allocated space."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return offset == 0
    try:
        size = os.fstat(fd).st_size
        content = _content_end(fd, size) if offset <= size else size
    finally:
        os.close(fd)
    if offset > size:
        return False
    return offset <= content or records_end(path) == offset


def _frames(path: Path, data: bytes, base: int, repair: bool) -> Iterator[tuple[int, int]]:
    """(start, end) in `data` (the journal from offset `base`) of each intact record, up
    to the zero tail or a torn tail (cut off with `repair`); JournalCorrupt for damage
    with data after it."""
    size = len(data)
    content = _nonzero_end(data)
    offset = 0
    while offset < content:  # past `content` there are only zeros
        problem = _record_problem(data, offset, size, content)
        if problem is not None:
            torn, why = problem
            if not torn:
                raise JournalCorrupt(f"{path}: corrupt record at offset {base + offset}: {why}")
            if repair:
                log.warning("journal %s: cutting off %s at offset %d (torn write)", path,
                            why, base + offset)
                _truncate(path, base + offset)
            return
        end = offset + RECORD_HEADER.size + RECORD_HEADER.unpack_from(data, offset)[0]
        yield offset, end
        offset = end
    if repair and offset < size:
        log.info("journal %s: giving back %d bytes of zeros after the last record (offset %d)",
                 path, size - offset, base + offset)
        _truncate(path, base + offset)


def read_header(path: str | os.PathLike, repair: bool = False) -> JournalHeader | None:
    """The journal's header; None for a journal that is absent, empty or died while its
    header was being written (cut off with `repair`). JournalCorrupt for anything else."""
    found = _header_record(Path(path), repair)
    return None if found is None else found[0]


def _header_record(path: Path, repair: bool) -> tuple[JournalHeader, int] | None:
    """The header and the offset where the records after it begin; None as `read_header`.

    A sound header is read alone (a few dozen bytes); only a damaged one reads on, as far
    as a record may reach, to tell a torn header from corruption."""
    if not path.exists():
        return None
    with open(path, "rb") as handle:
        preamble = handle.read(len(HEADER))
        _check_preamble(path, preamble, repair)
        if len(preamble) < len(HEADER):
            return None
        data = handle.read(RECORD_HEADER.size)
        if len(data) == RECORD_HEADER.size:
            length = RECORD_HEADER.unpack(data)[0]
            if 0 < length <= MAX_RECORD_BYTES:
                data += handle.read(length)
        if _record_problem(data, 0, len(data), len(data)) is None:  # usually: a sound header
            return _decoded_header(path, data)
        handle.seek(len(HEADER))
        data = handle.read(RECORD_HEADER.size + MAX_RECORD_BYTES)
    problem = _record_problem(data, 0, len(data), _nonzero_end(data))
    if problem is not None:
        torn, _ = problem
        if torn:  # died while writing the header: nothing was ever committed
            if repair:
                log.warning("journal %s: cutting off an incomplete header (torn write)", path)
                _truncate(path, 0)
            return None
        raise JournalCorrupt(f"{path}: the journal header is damaged ({problem[1]})")
    return _decoded_header(path, data)


def _decoded_header(path: Path, data: bytes) -> tuple[JournalHeader, int]:
    """The header in a sound header record at the start of `data`, and where it ends."""
    length = RECORD_HEADER.unpack_from(data, 0)[0]
    body = msgpack.unpackb(data[RECORD_HEADER.size : RECORD_HEADER.size + length], raw=False)
    return JournalHeader.from_map(path, body), len(HEADER) + RECORD_HEADER.size + length


def settle(path: str | os.PathLike) -> None:
    """Before recovery reads a journal, make durable what the file shows. If the disk
    refuses, drop the file's pages from the kernel's cache and fail: after a failed fsync
    the kernel may go on showing pages it will never write, and it reports the failure
    only once, so a retried fsync would succeed and trust them. With the pages dropped,
    the next start reads what the disk really holds (a torn tail is then cut off)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        raise JournalFailed(
            f"{path}: fsync before recovery failed ({exc}); what the file showed was dropped "
            "from the cache, so the next start reads what the disk holds"
        ) from exc
    finally:
        os.close(fd)


def records_start(path: str | os.PathLike) -> int:
    """Where the first record of a journal begins (the end of its header)."""
    found = _header_record(Path(path), repair=False)
    return len(HEADER) if found is None else found[1]


def _check_preamble(path: Path, preamble: bytes, repair: bool) -> None:
    """JournalCorrupt unless `preamble` is this format's (or one cut short by a crash)."""
    if len(preamble) < len(HEADER):
        if HEADER.startswith(preamble):  # died while writing the header
            if repair:
                log.warning("journal %s: cutting off an incomplete header (torn write)", path)
                _truncate(path, 0)
            return
        raise JournalCorrupt(f"{path}: not a journal (bad header)")
    if preamble[: len(MAGIC)] != MAGIC:
        raise JournalCorrupt(f"{path}: not a journal (bad magic at offset 0)")
    version = preamble[len(MAGIC)]
    if version == 1:
        raise JournalUnsupported(
            f"{path} is a format 1 journal, written before journals recorded the rules they "
            "were written under; this release cannot tell how to replay it exactly"
        )
    if version != FORMAT_VERSION:
        raise JournalUnsupported(f"{path}: journal format version {version} is not supported")


def _record_problem(
    data: bytes, offset: int, size: int, content: int
) -> tuple[bool, str] | None:
    """None for a good record at `offset`, else (is it a torn tail?, what is wrong). Only
    zeros follow `content` (<= `size`): a pre-allocated tail, or pages a power cut lost."""
    if offset >= content:
        return True, "zero-filled space"
    if size - offset < RECORD_HEADER.size:
        return True, "a partial record header"
    length, checksum = RECORD_HEADER.unpack_from(data, offset)
    if length == 0 or length > MAX_RECORD_BYTES:
        return False, f"implausible record length {length}"
    end = offset + RECORD_HEADER.size + length
    if end > size:
        if _good_record_after(data, offset + RECORD_HEADER.size, content):
            return False, f"record length {length} runs past the end, yet good records follow"
        return True, f"a record cut short ({size - offset} of {end - offset} bytes)"
    if zlib.crc32(data[offset + RECORD_HEADER.size : end]) != checksum:
        if end >= content:  # nothing but zeros after it: its last pages never reached the disk
            return True, "a last record with a bad checksum"
        return False, "checksum mismatch"
    return None


def _good_record_after(data: bytes, start: int, content: int) -> bool:
    """Whether any intact record starts after `start`: then the damage is not a torn tail.

    A torn write only ever leaves a short tail, so this scan is short in the normal case
    (and never runs into the zeros after `content`, where no record can start).
    """
    size = len(data)
    for position in range(start, content - RECORD_HEADER.size):
        length, checksum = RECORD_HEADER.unpack_from(data, position)
        end = position + RECORD_HEADER.size + length
        if (
            0 < length <= MAX_RECORD_BYTES
            and end <= size
            and zlib.crc32(data[position + RECORD_HEADER.size : end]) == checksum
        ):
            return True
    return False


def _truncate(path: Path, offset: int) -> None:
    """Cut the file at `offset`, durably."""
    with open(path, "r+b") as handle:
        handle.truncate(offset)
        handle.flush()
        os.fsync(handle.fileno())


# -- records: one input each -------------------------------------------------------------
FILL_RECORD = "F"
SPLIT_RECORD = "S"
REJECT_RECORD = "R"


def encode_input(item: Input) -> list[Any]:
    """The journal record of one input (positional, compact)."""
    if type(item) is Fill:
        return [
            FILL_RECORD,
            item.source,
            item.seq,
            item.ticker,
            item.price_units,
            item.quantity,
            item.side,
        ]
    if type(item) is Split:
        return [SPLIT_RECORD, item.source, item.seq, item.percent_map()]
    assert type(item) is Rejected
    return [REJECT_RECORD, item.source, item.seq, item.reason]


def decode_record(path: str | os.PathLike, end: int, record: Any) -> Input:
    """The input a record holds; JournalCorrupt naming its offset if it is malformed."""
    try:
        item = _record_input(record)
    except (Invalid, ValueError, TypeError, IndexError, KeyError) as exc:
        raise JournalCorrupt(
            f"{path}: journal record ending at offset {end} is unusable: {exc}"
        ) from None
    if not isinstance(item.source, str) or type(item.seq) is not int:
        raise JournalCorrupt(
            f"{path}: journal record ending at offset {end} is unusable: source and seq must "
            f"be a string and an integer, got {item.source!r}, {item.seq!r}"
        )
    return item


def _record_input(record: Any) -> Input:
    kind = record[0]
    if kind == FILL_RECORD:
        _, source, seq, ticker, price_units, quantity, side = record
        if not isinstance(ticker, str):
            raise ValueError(f"ticker must be a string, got {ticker!r}")
        for name, number in (("price_units", price_units), ("quantity", quantity)):
            if type(number) is not int or number <= 0:
                raise ValueError(f"{name} must be a positive integer, got {number!r}")
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, got {side!r}")
        return Fill(source, seq, ticker, price_units, quantity, SELL if side == SELL else BUY)
    if kind == SPLIT_RECORD:
        return build_split(record[1], record[2], record[3])
    if kind == REJECT_RECORD:
        _, source, seq, reason = record
        return Rejected(source, seq, str(reason))
    raise ValueError(f"unknown journal record type {kind!r}")


# -- checkpoints -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Saved state as of `offset` in the journal `journal_id`."""

    journal_id: str
    offset: int
    state: dict[str, Any]


def write_checkpoint(
    path: str | os.PathLike, journal_id: str, offset: int, state: dict[str, Any]
) -> None:
    """Atomically save `state` as of journal `offset`: temp file, fsync, rename, fsync dir."""
    path = Path(path)
    body = {"journal": journal_id, "offset": offset, "state": state}
    payload = msgpack.packb(body, use_bin_type=True)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        handle.write(CHECKPOINT_MAGIC + frame(payload))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _fsync_dir(path.parent)


def read_checkpoint(path: str | os.PathLike) -> Checkpoint | None:
    """The checkpoint at `path`, or None if there is none or it is damaged."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    head = len(CHECKPOINT_MAGIC) + RECORD_HEADER.size
    if len(data) < head or not data.startswith(CHECKPOINT_MAGIC):
        log.warning("checkpoint %s is damaged; replaying the whole journal", path)
        return None
    length, checksum = RECORD_HEADER.unpack_from(data, len(CHECKPOINT_MAGIC))
    payload = data[head : head + length]
    if len(payload) != length or zlib.crc32(payload) != checksum:
        log.warning("checkpoint %s fails its checksum; replaying the whole journal", path)
        return None
    body = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    return Checkpoint(body["journal"], body["offset"], body["state"])


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
