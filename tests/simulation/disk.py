"""A simulated disk under the production journal and checkpoints.

Storage is a real directory (what reads see: the page cache), so the production read side
(`common.history`, `read_records`, `read_checkpoint`) runs untouched. Only the calls that
reach the device go through `SimOs`, which stands in for the `os` module inside
`controller.journal`: `write` (EIO, a full disk, a crash half-way through), `fsync`
(latency, EIO, a crash before it), `ftruncate` and `replace`. The disk keeps, per file,
the image that is durable: what the last successful fsync made so.

- A process crash keeps the page cache (the files as they are).
- A machine crash (power cut) puts back each durable image, plus a torn prefix of what was
  written after it; a file never synced disappears.
- A failed fsync marks what it should have made durable as lost (Linux marks the pages
  clean): the page cache still shows it, a later fsync succeeds without writing it, and a
  power cut leaves zeros (a hole) or nothing there.
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

    def write(self, fd: int, data: Any) -> int:
        path = self._mine(fd)
        if path is None:
            return os.write(fd, data)
        self.counts.writes += 1
        data = bytes(data)
        faults, rng = self.faults, self.rng
        if rng.random() < faults.crash_in_write:
            os.write(fd, data[: rng.randrange(len(data) + 1)])
            power_cut = rng.random() < 0.5
            raise SimCrash("crash in the middle of a journal write", power_cut)
        if rng.random() < faults.write_error:
            self.counts.write_errors += 1
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        room = self.free()
        if room <= 0:
            self.counts.full += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = os.write(fd, data[:room])
        self.high_water = max(self.high_water, self.used())
        return written

    def fsync(self, fd: int) -> None:
        path = self._mine(fd)
        if path is None:
            return None  # a directory: renames and creations are durable at once here
        self.counts.fsyncs += 1
        self.scheduler.advance(self.faults.fsync_latency)
        faults, rng = self.faults, self.rng
        if rng.random() < faults.crash_before_fsync:
            power_cut = rng.random() < 0.5
            raise SimCrash("crash between a journal write and its fsync", power_cut)
        old = self.durable.get(path, b"")
        if rng.random() < faults.fsync_error:
            self.counts.fsync_errors += 1
            size = path.stat().st_size
            if size > len(old):
                self.lost.setdefault(path, []).append((len(old), size))
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        image = bytearray(path.read_bytes())
        for start, end in self.lost.get(path, []):
            for i in range(start, min(end, len(image))):
                image[i] = old[i] if i < len(old) else 0
        self.durable[path] = bytes(image)

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
        """Each file goes back to its durable image plus a torn prefix of the rest."""
        self.counts.power_cuts += 1
        for path in sorted(p for p in self.root.iterdir() if p.is_file()):
            image = self.durable.get(path)
            if image is None:
                path.unlink()
                continue
            cache = path.read_bytes()
            tail = cache[len(image) :] if cache[: len(image)] == image else b""
            keep = self.rng.randrange(len(tail) + 1) if tail else 0
            if keep:
                self.counts.torn += 1
            path.write_bytes(image + tail[:keep])
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


class SimOs:
    """The `os` module as `controller.journal` sees it: the device calls go to the disk."""

    def __init__(self, disk: SimDisk) -> None:
        self._disk = disk

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def write(self, fd: int, data: Any) -> int:
        return self._disk.write(fd, data)

    def fsync(self, fd: int) -> None:
        self._disk.fsync(fd)

    def ftruncate(self, fd: int, length: int) -> None:
        self._disk.ftruncate(fd, length)

    def replace(self, src: Any, dst: Any) -> None:
        self._disk.replace(src, dst)


@contextmanager
def mounted(disk: SimDisk) -> Iterator[None]:
    """Put the simulated disk under `controller.journal` for the length of a run."""
    real = journal_module.os
    journal_module.os = SimOs(disk)  # type: ignore[assignment]
    try:
        yield
    finally:
        journal_module.os = real
