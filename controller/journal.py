"""The journal: an append-only file of accepted inputs, and atomic checkpoints beside it.

File layout: an 8-byte header (magic + format version), then records of
    [u32 payload length][u32 CRC-32 of payload][payload: one msgpack array]
written in batches (group commit: one write, one flush and at most one fsync per batch).

At start-up a torn last record (the process died mid-write) is detected and cut off; a bad
record with good data after it is corruption, and start-up stops with the offset named.
"""

from __future__ import annotations

import logging
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack

log = logging.getLogger(__name__)

MAGIC = b"FILLJNL"
FORMAT_VERSION = 1
HEADER = MAGIC + bytes([FORMAT_VERSION])
RECORD_HEADER = struct.Struct("<II")
MAX_RECORD_BYTES = 1 << 20
CHECKPOINT_MAGIC = b"FILLCKP1"

FSYNC_ALWAYS = "always"
FSYNC_INTERVAL = "interval"
FSYNC_POLICIES = (FSYNC_ALWAYS, FSYNC_INTERVAL)


class JournalCorrupt(RuntimeError):
    """A record in the middle of the journal is damaged; refusing to guess."""


class JournalWriter:
    """Appends records in batches: `append` buffers, `commit` writes and syncs them."""

    def __init__(
        self,
        path: str | os.PathLike,
        fsync: str = FSYNC_ALWAYS,
        fsync_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync policy must be one of {FSYNC_POLICIES}, got {fsync!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.offset = os.lseek(self._fd, 0, os.SEEK_END)
        if self.offset == 0:
            os.write(self._fd, HEADER)
            os.fsync(self._fd)
            _fsync_dir(self.path.parent)
            self.offset = len(HEADER)
        self._buffer = bytearray()
        self._packer = msgpack.Packer(use_bin_type=True)
        self._policy = fsync
        self._interval = fsync_interval
        self._clock = clock
        self._last_sync = clock()
        self._unsynced = False

    def append(self, record: list[Any]) -> None:
        payload = self._packer.pack(record)
        self._buffer += RECORD_HEADER.pack(len(payload), zlib.crc32(payload))
        self._buffer += payload

    def commit(self) -> int:
        """Write what was appended, sync by policy; returns the end offset."""
        if self._buffer:
            try:
                written = os.write(self._fd, self._buffer)
                while written < len(self._buffer):  # os.write may be partial on a full disk
                    written += os.write(self._fd, memoryview(self._buffer)[written:])
            except OSError:
                os.ftruncate(self._fd, self.offset)  # no half batch left behind to write twice
                raise
            self.offset += len(self._buffer)
            self._buffer.clear()
            self._unsynced = True
        if self._unsynced and (
            self._policy == FSYNC_ALWAYS or self._clock() - self._last_sync >= self._interval
        ):
            self.sync()
        return self.offset

    def sync(self) -> None:
        os.fsync(self._fd)
        self._last_sync = self._clock()
        self._unsynced = False

    def close(self) -> None:
        if self._fd >= 0:
            self.commit()
            if self._unsynced:
                self.sync()
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
    if not path.exists():
        return
    with open(path, "rb") as handle:
        header = handle.read(len(HEADER))
        _check_header(path, header, repair)
        if len(header) < len(HEADER):
            return
        base = max(start, len(HEADER))  # only what follows the checkpoint is read
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


def _check_header(path: Path, header: bytes, repair: bool) -> None:
    """JournalCorrupt unless `header` is this format's (or a header cut short by a crash)."""
    if len(header) < len(HEADER):
        if HEADER.startswith(header):  # died while writing the header
            if repair:
                _truncate(path, 0, "an incomplete header")
            return
        raise JournalCorrupt(f"{path}: not a journal (bad header)")
    if header[: len(MAGIC)] != MAGIC:
        raise JournalCorrupt(f"{path}: not a journal (bad magic at offset 0)")
    if header[len(MAGIC)] != FORMAT_VERSION:
        raise JournalCorrupt(
            f"{path}: journal format version {header[len(MAGIC)]} is not supported"
        )


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


# -- checkpoints -------------------------------------------------------------------------
def write_checkpoint(path: str | os.PathLike, offset: int, state: dict[str, Any]) -> None:
    """Atomically save `state` as of journal `offset`: temp file, fsync, rename, fsync dir."""
    path = Path(path)
    payload = msgpack.packb({"offset": offset, "state": state}, use_bin_type=True)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        handle.write(CHECKPOINT_MAGIC + RECORD_HEADER.pack(len(payload), zlib.crc32(payload)))
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _fsync_dir(path.parent)


def read_checkpoint(path: str | os.PathLike) -> tuple[int, dict[str, Any]] | None:
    """(journal offset, state) from a checkpoint, or None if there is none or it is damaged."""
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
    return body["offset"], body["state"]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
