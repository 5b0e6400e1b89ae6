"""The journal: an append-only file of accepted inputs, and atomic checkpoints beside it.

File layout: an 8-byte preamble (magic + format version), a header record saying what the
journal means (its identity, the rules version and the valuation that wrote it), then
records, each framed as
    [u32 payload length][u32 CRC-32 of payload][payload: one msgpack value]
and written in batches (group commit: one write and at most one fsync per batch).

Fail-stop: once a write or an fsync fails the writer refuses everything after it (after a
failed fsync the page cache cannot be trusted, so it is never retried); the process must
exit and let recovery decide what reached the disk. A disk that is merely full (ENOSPC,
EDQUOT on write) is reported apart: the batch is cut back and nothing of it is durable.

At start-up a torn last record (the process died mid-write) is detected and cut off; a bad
record with good data after it is corruption, and start-up stops with the offset named.
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
    """Appends records in batches: `append` buffers, `commit` writes and syncs them."""

    def __init__(
        self,
        path: str | os.PathLike,
        fsync: str = FSYNC_ALWAYS,
        fsync_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        header: JournalHeader | None = None,
    ) -> None:
        """Open `path` for appending; a new (empty) journal gets `header` (a fresh one for
        book valuation by default), an existing one keeps its own (see `self.header`)."""
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync policy must be one of {FSYNC_POLICIES}, got {fsync!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.failed = False
        try:
            self.offset = os.lseek(self._fd, 0, os.SEEK_END)
            self.header = self._start(header)
        except BaseException:
            os.close(self._fd)  # never leak the descriptor of a journal we could not open
            raise
        self._synced = self.offset  # the end of what a successful fsync made durable
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
        """Write the header of a new journal, or read an existing one's and make durable
        what the file shows (a process that died between a write and its fsync left
        records in the page cache that recovery has read but no disk holds yet)."""
        if self.offset == 0:
            header = header if header is not None else JournalHeader.new("book")
            start = HEADER + frame(msgpack.packb(header.to_map(), use_bin_type=True))
            os.write(self._fd, start)
            os.fsync(self._fd)
            _fsync_dir(self.path.parent)
            self.offset = len(start)
            return header
        existing = read_header(self.path)
        if existing is None:
            raise JournalCorrupt(f"{self.path}: the journal header is incomplete")
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

    def commit(self) -> int:
        """Write what was appended, sync by policy; returns the end offset.

        JournalFull: the disk is full; the batch was cut back (drop it, retry later).
        JournalFailed: any other write error or any fsync error; the writer is dead."""
        self._check_alive()
        if self._buffer:
            self._write_batch()
        if self._unsynced and (
            self._policy == FSYNC_ALWAYS or self._clock() - self._last_sync >= self._interval
        ):
            self.sync()
        return self.offset

    def discard(self) -> None:
        """Forget records appended since the last commit (their batch will not be written)."""
        self._buffer.clear()

    def _write_batch(self) -> None:
        try:
            written = os.write(self._fd, self._buffer)
            while written < len(self._buffer):  # os.write may be partial on a full disk
                written += os.write(self._fd, self._buffer[written:])  # rare: a copy is fine
        except OSError as exc:
            self._buffer.clear()
            try:
                os.ftruncate(self._fd, self.offset)  # no half batch left to write twice
            except OSError:
                self.failed = True
                raise JournalFailed(f"{self.path}: write failed ({exc}) and could not be "
                                    "cut back") from exc
            if exc.errno in DISK_FULL_ERRORS:
                raise JournalFull(f"{self.path}: {os.strerror(exc.errno)}") from exc
            self.failed = True
            raise JournalFailed(f"{self.path}: write failed: {exc}") from exc
        self.offset += len(self._buffer)
        self._buffer.clear()
        self._unsynced = True

    def sync(self) -> None:
        """fsync once; a failure kills the writer for good (never retried)."""
        self._check_alive()
        try:
            os.fsync(self._fd)
        except OSError as exc:
            self.failed = True
            self._cut_unsynced()
            raise JournalFailed(f"{self.path}: fsync failed: {exc}") from exc
        self._synced = self.offset
        self._last_sync = self._clock()
        self._unsynced = False

    def _cut_unsynced(self) -> None:
        """After a failed fsync, cut off what it should have made durable. The kernel may
        keep showing those bytes (it marks the pages clean, never to be written), so a
        restarted controller would read them back, acknowledge them and lose them at the
        next power cut, or leave a hole in the middle of the journal once later records
        are synced. Cut off, they are read back by no one; their senders resend them."""
        try:
            os.ftruncate(self._fd, self._synced)
        except OSError as exc:
            log.error("%s: could not cut off the unsynced records after a failed fsync: %s",
                      self.path, exc)

    def _check_alive(self) -> None:
        if self.failed:
            raise JournalFailed(f"{self.path}: an earlier write or fsync failed")

    def close(self) -> None:
        """Commit and sync what is left, then close; after a failure, only close."""
        if self._fd < 0:
            return
        try:
            if not self.failed:
                self.commit()
                if self._unsynced:
                    self.sync()
        finally:
            os.close(self._fd)
            self._fd = -1

    def abandon(self) -> None:
        """Close without writing or syncing anything more (fail-stop, or a full disk)."""
        self._buffer.clear()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def read_records(
    path: str | os.PathLike, start: int = 0, repair: bool = False
) -> Iterator[tuple[int, list[Any]]]:
    """Yield (end offset, record) from `start`; a torn tail ends the records and, with
    `repair` (start-up only: never on a journal another process is writing), is cut off.

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
    offset, size = 0, len(data)
    while offset < size:
        problem = _record_problem(data, offset, size)
        if problem is None:
            length = RECORD_HEADER.unpack_from(data, offset)[0]
            end = offset + RECORD_HEADER.size + length
            record = msgpack.unpackb(data[offset + RECORD_HEADER.size : end], raw=False)
            yield base + end, record
            offset = end
            continue
        torn, why = problem
        if torn:
            if repair:
                _truncate(path, base + offset, why)
            return
        raise JournalCorrupt(f"{path}: corrupt record at offset {base + offset}: {why}")


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
        if _record_problem(data, 0, len(data)) is None:  # the usual case: a sound header
            return _decoded_header(path, data)
        handle.seek(len(HEADER))
        data = handle.read(RECORD_HEADER.size + MAX_RECORD_BYTES)
    problem = _record_problem(data, 0, len(data))
    if problem is not None:
        torn, _ = problem
        if torn:  # died while writing the header: nothing was ever committed
            if repair:
                _truncate(path, 0, "an incomplete header")
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
                _truncate(path, 0, "an incomplete header")
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


def _record_problem(data: bytes, offset: int, size: int) -> tuple[bool, str] | None:
    """None for a good record at `offset`, else (is it a torn tail?, what is wrong)."""
    if size - offset < RECORD_HEADER.size:
        return True, "a partial record header"
    length, checksum = RECORD_HEADER.unpack_from(data, offset)
    if length == 0 and not any(data[offset:]):
        return True, "zero-filled space"
    if length == 0 or length > MAX_RECORD_BYTES:
        return False, f"implausible record length {length}"
    end = offset + RECORD_HEADER.size + length
    if end > size:
        if _good_record_after(data, offset + RECORD_HEADER.size, size):
            return False, f"record length {length} runs past the end, yet good records follow"
        return True, f"a record cut short ({size - offset} of {end - offset} bytes)"
    if zlib.crc32(data[offset + RECORD_HEADER.size : end]) != checksum:
        if end == size:
            return True, "a last record with a bad checksum"
        return False, "checksum mismatch"
    return None


def _good_record_after(data: bytes, start: int, size: int) -> bool:
    """Whether any intact record starts after `start`: then the damage is not a torn tail.

    A torn write only ever leaves a short tail, so this scan is short in the normal case.
    """
    for position in range(start, size - RECORD_HEADER.size):
        length, checksum = RECORD_HEADER.unpack_from(data, position)
        end = position + RECORD_HEADER.size + length
        if (
            0 < length <= MAX_RECORD_BYTES
            and end <= size
            and zlib.crc32(data[position + RECORD_HEADER.size : end]) == checksum
        ):
            return True
    return False


def _truncate(path: Path, offset: int, why: str) -> None:
    log.warning("journal %s: cutting off %s at offset %d (torn write)", path, why, offset)
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
