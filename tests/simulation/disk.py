"""A simulated disk under the production journal and checkpoints.

Storage is a real directory (what reads see: the page cache), so the production read side
(`common.history`, `read_records`, `read_checkpoint`) runs untouched. Only the calls that
reach the device go through `SimOs`, which stands in for the `os` module inside
`controller.journal`: `pwrite` (EIO, a full disk, a crash half-way through: records written
in place, and the zeros that pre-allocate space), `fsync` and `fdatasync` (latency, EIO, a
crash before it), `ftruncate`, `replace` and `posix_fadvise` (DONTNEED drops the pages a
failed sync lost: the file then reads as the disk holds it); other device calls are
refused (UNMODELLED).
The disk keeps, per file, the image that is durable: what the last successful sync made
so. (fdatasync counts as fsync here: both make the file's data, and its size, durable.)

- A process crash keeps the page cache (the files as they are).
- A machine crash (power cut) puts back each durable image, plus a torn prefix of what was
  written after it, from the first byte that differs (in place or past the end; an
  unsynced truncation is lost); a file never synced disappears.
- A failed sync marks what it should have made durable as lost (Linux marks the pages
  clean): the page cache still shows it, a later sync succeeds without writing it, and a
  power cut leaves what the disk had there (the zeros of pre-allocated space) or nothing.
- A full disk refuses a write that would grow the files past capacity (pre-allocating
  zeros, above all; overwriting space a file already has needs none).
"""

from __future__ import annotations

import errno
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller import journal as journal_module
from simulation.kernel import Scheduler, SimCrash


@dataclass
class DiskFaults:
    """Per-call chances of each fault (the quiet phase sets them to zero)."""

    fsync_latency: float = 0.0005
    write_error: float = 0.0  # EIO on a write
    fsync_error: float = 0.0  # EIO on an fsync
    crash_in_write: float = 0.0  # the process or machine dies half-way through a write
    crash_before_fsync: float = 0.0  # ... or after the write, before its fsync


@dataclass
class DiskCounts:
    writes: int = 0
    fsyncs: int = 0
    fdatasyncs: int = 0
    write_errors: int = 0
    fsync_errors: int = 0
    full: int = 0
    torn: int = 0
    power_cuts: int = 0
    corrupted: int = 0
    bad_checkpoints: int = 0  # damaged or foreign checkpoints left for a restart


class SimDisk:
    """One machine's disk: a directory, its capacity and what of it is durable."""

    def __init__(self, root: Path, scheduler: Scheduler, rng: random.Random, capacity: int):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.scheduler = scheduler
        self.rng = rng
        self.capacity = capacity
        self.faults = DiskFaults()
        self.counts = DiskCounts()
        self.durable: dict[Path, bytes] = {}
        self.lost: dict[Path, list[tuple[int, int]]] = {}  # ranges a failed fsync dropped
        self.high_water = 0  # the most bytes ever used

    # -- space -----------------------------------------------------------------------------
    def used(self) -> int:
        return sum(p.stat().st_size for p in self.root.iterdir() if p.is_file())

    def free(self) -> int:
        return max(0, self.capacity - self.used())

    # -- the calls production code makes ------------------------------------------------
    def _mine(self, fd: int) -> Path | None:
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        return path if path.parent == self.root and path.is_file() else None

    def pwrite(self, fd: int, data: Any, offset: int) -> int:
        """One write of `data` at `offset`: faults, then as much as the disk has room for
        (a write within the file's size needs none)."""
        path = self._mine(fd)
        if path is None:
            return os.pwrite(fd, data, offset)
        self.counts.writes += 1
        data = bytes(data)
        faults, rng = self.faults, self.rng
        if rng.random() < faults.crash_in_write:
            os.pwrite(fd, data[: rng.randrange(len(data) + 1)], offset)
            power_cut = rng.random() < 0.5
            raise SimCrash("crash in the middle of a journal write", power_cut)
        if rng.random() < faults.write_error:
            self.counts.write_errors += 1
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        room = os.fstat(fd).st_size + self.free() - offset  # bytes from `offset` that fit
        if room <= 0:
            self.counts.full += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = os.pwrite(fd, data[:room], offset)
        self.high_water = max(self.high_water, self.used())
        return written

    def fsync(self, fd: int) -> None:
        path = self._mine(fd)
        if path is None:
            return None  # a directory: renames and creations are durable at once here
        self.counts.fsyncs += 1
        self._sync(path)
        return None

    def fdatasync(self, fd: int) -> None:
        path = self._mine(fd)
        if path is None:
            return None
        self.counts.fdatasyncs += 1
        self._sync(path)
        return None

    def _sync(self, path: Path) -> None:
        self.scheduler.advance(self.faults.fsync_latency)
        faults, rng = self.faults, self.rng
        if rng.random() < faults.crash_before_fsync:
            power_cut = rng.random() < 0.5
            raise SimCrash("crash between a journal write and its sync", power_cut)
        old = self.durable.get(path, b"")
        cache = path.read_bytes()
        if rng.random() < faults.fsync_error:
            self.counts.fsync_errors += 1
            dirty = _first_difference(cache, old)
            if dirty < len(cache):
                self.lost.setdefault(path, []).append((dirty, len(cache)))
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        self.durable[path] = self._writeback(path, cache, old)

    def _writeback(self, path: Path, cache: bytes, old: bytes) -> bytes:
        """What the disk holds once `cache` is written back: the ranges a failed sync
        lost keep what the disk had (`old`, or zeros past its end)."""
        image = bytearray(cache)
        for start, end in self.lost.get(path, []):
            for i in range(start, min(end, len(image))):
                image[i] = old[i] if i < len(old) else 0
        return bytes(image)

    def drop_cache(self, fd: int) -> None:
        """posix_fadvise(POSIX_FADV_DONTNEED): clean pages leave the cache, so the next read
        shows what the disk holds. The pages a failed sync lost are clean (Linux marks them
        so): they now read as the disk has them; pages still dirty stay."""
        path = self._mine(fd)
        if path is None or path not in self.lost:
            return
        path.write_bytes(self._writeback(path, path.read_bytes(), self.durable.get(path, b"")))
        del self.lost[path]

    def ftruncate(self, fd: int, length: int) -> None:
        """Cutting a file back also ends what a failed fsync lost beyond the cut."""
        os.ftruncate(fd, length)
        if self._mine(fd) is not None:
            self.settle()

    def replace(self, src: Any, dst: Any) -> None:
        os.replace(src, dst)
        source, target = Path(src), Path(dst)
        if source.parent == self.root:
            image = self.durable.pop(source, None)
            if image is not None:
                self.durable[target] = image
            self.lost.pop(source, None)

    # -- what happens to the files -------------------------------------------------------
    def power_cut(self) -> None:
        """Each file goes back to its durable image plus a torn prefix of the rest: of what
        a full write-back would have given, from its first difference with the image."""
        self.counts.power_cuts += 1
        for path in sorted(p for p in self.root.iterdir() if p.is_file()):
            image = self.durable.get(path)
            if image is None:
                path.unlink()
                continue
            target = self._writeback(path, path.read_bytes(), image)
            if len(target) < len(image):  # an unsynced truncation is lost
                target += image[len(target) :]
            start = _first_difference(target, image)
            if len(target) > len(image):  # it grew: a prefix of the growth may be kept
                end = len(target)
            else:  # written in place: up to the last byte that differs
                end = len(target) - _first_difference(target[::-1], image[::-1])
            keep = self.rng.randrange(end - start + 1) if start < end else 0
            if 0 < keep < end - start:
                self.counts.torn += 1
            path.write_bytes(target[: start + keep] + image[start + keep :])
        self.lost.clear()

    def settle(self) -> None:
        """Forget lost ranges the file no longer has (it was cut back below them)."""
        for path, ranges in list(self.lost.items()):
            size = path.stat().st_size if path.exists() else 0
            kept = [(s, min(e, size)) for s, e in ranges if s < size]
            if kept:
                self.lost[path] = kept
            else:
                del self.lost[path]

    def flip_byte(self, path: Path, offset: int) -> int:
        """Corrupt one byte, in the cache and the durable image alike; returns the old one."""
        data = bytearray(path.read_bytes())
        old = data[offset]
        data[offset] ^= 0xFF
        path.write_bytes(bytes(data))
        if path in self.durable and offset < len(self.durable[path]):
            image = bytearray(self.durable[path])
            image[offset] ^= 0xFF
            self.durable[path] = bytes(image)
        self.counts.corrupted += 1
        return old


#: Calls that reach the device which the model does not simulate: production code that
#: starts using one must be modelled here first, not slip past the simulated disk.
UNMODELLED = frozenset({"write", "writev", "pwritev", "posix_fallocate", "sync",
                        "sync_file_range", "copy_file_range", "sendfile", "truncate"})


class SimOs:
    """The `os` module as `controller.journal` sees it: the device calls go to the disk."""

    def __init__(self, disk: SimDisk) -> None:
        self._disk = disk

    def __getattr__(self, name: str) -> Any:
        if name in UNMODELLED:
            raise AttributeError(f"the simulated disk does not model os.{name}: add it to "
                                 "tests/simulation/disk.py before controller.journal uses it")
        return getattr(os, name)

    def pwrite(self, fd: int, data: Any, offset: int) -> int:
        return self._disk.pwrite(fd, data, offset)

    def posix_fadvise(self, fd: int, offset: int, length: int, advice: int) -> None:
        os.posix_fadvise(fd, offset, length, advice)
        if advice == os.POSIX_FADV_DONTNEED and (offset, length) == (0, 0):
            self._disk.drop_cache(fd)

    def fsync(self, fd: int) -> None:
        self._disk.fsync(fd)

    def fdatasync(self, fd: int) -> None:
        self._disk.fdatasync(fd)

    def ftruncate(self, fd: int, length: int) -> None:
        self._disk.ftruncate(fd, length)

    def replace(self, src: Any, dst: Any) -> None:
        self._disk.replace(src, dst)


def _first_difference(data: bytes, image: bytes) -> int:
    """The first offset at which `data` differs from `image` (their common length when one
    is a prefix of the other, `len(data)` when they are equal)."""
    common = min(len(data), len(image))
    if data[:common] == image[:common]:
        return common if len(data) != len(image) else len(data)
    low, high = 0, common  # the first difference lies in [low, high)
    while high - low > 1:
        middle = (low + high) // 2
        if data[low:middle] == image[low:middle]:
            low = middle
        else:
            high = middle
    return low


@contextmanager
def mounted(disk: SimDisk) -> Iterator[None]:
    """Put the simulated disk under `controller.journal` for the length of a run."""
    real = journal_module.os
    journal_module.os = SimOs(disk)  # type: ignore[assignment]
    try:
        yield
    finally:
        journal_module.os = real
