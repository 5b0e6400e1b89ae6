"""Journal: one durable write (a batch written, then synced), timed per call, for the ways a
journal can be written, in the same run and on the same file system:

    python bench/journal.py [--quick] [--rounds N] [--block N] [--batch N] [--dir PATH]

- append+fsync: what the writer did before issue 13 (O_APPEND write, then fsync), the
  baseline every ratio is against;
- append+fdatasync: the same with fdatasync, which must still record the new file size;
- in place+fdatasync (fallocate): pwrite into space reserved with posix_fallocate (unwritten
  extents: the first write to each must still record the extent as written);
- in place+fdatasync (zeros): pwrite into space filled with zeros and fsynced once, so the
  sync has no metadata to write, only the batch's pages;
- JournalWriter: the production writer (commit, fsync "always"), which writes in place
  into zero-filled space; its pre-allocation (a chunk at a time) is inside the timings.

Modes run in blocks of --block writes, taking turns (the order turns round each round), so
that a slow phase of a shared disk falls on all of them; each mode's first block is a
warm-up and is not counted. The in-place modes pre-allocate a chunk at a time as the writer
does (controller.journal.PREALLOCATE_BYTES), inside the timings. A batch is --batch fill
records as the engine journals them. On tmpfs every sync is free, so the run says so.
"""

from __future__ import annotations

import _paths  # type: ignore[import-not-found]  # noqa: F401  (first: the root on sys.path)

# isort: split
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import msgpack

from bench.common import (
    Run,
    console,
    filesystem_of,
    parser,
    percentiles,
    print_table,
    resolve,
)
from common.protocol import Fill
from controller.journal import (
    HEADER,
    PREALLOCATE_BYTES,
    JournalWriter,
    encode_input,
    frame,
)

BASELINE = "append+fsync"
POINTS = (50, 90, 99, 99.9)
ZERO_STEP = 1 << 20  # zeros written per call when a raw mode pre-allocates


class Mode(Protocol):
    """One way of writing: `write(batch)` makes `batch` durable; `close()` ends it."""

    name: str

    def write(self, batch: bytes) -> None: ...

    def close(self) -> None: ...


class Append:
    """O_APPEND write, then fsync or fdatasync."""

    def __init__(self, path: Path, sync: Callable[[int], None], name: str) -> None:
        self.name = name
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o644)
        os.write(self.fd, HEADER)
        os.fsync(self.fd)
        self.sync = sync

    def write(self, batch: bytes) -> None:
        os.write(self.fd, batch)
        self.sync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


class InPlace:
    """pwrite at the offset into pre-allocated space (a chunk at a time), then fdatasync."""

    def __init__(self, path: Path, fallocate: bool, name: str) -> None:
        self.name = name
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self.fallocate = fallocate
        self.offset = self.allocated = 0
        os.pwrite(self.fd, HEADER, 0)
        self.offset = len(HEADER)
        self._reserve(self.offset)

    def _reserve(self, end: int) -> None:
        if end <= self.allocated:
            return
        target = -(-end // PREALLOCATE_BYTES) * PREALLOCATE_BYTES
        if self.fallocate:
            os.posix_fallocate(self.fd, self.allocated, target - self.allocated)
        else:
            zeros = bytes(ZERO_STEP)
            position = self.allocated
            while position < target:
                position += os.pwrite(self.fd, zeros[: target - position], position)
        os.fsync(self.fd)
        self.allocated = target

    def write(self, batch: bytes) -> None:
        self._reserve(self.offset + len(batch))
        os.pwrite(self.fd, batch, self.offset)
        os.fdatasync(self.fd)
        self.offset += len(batch)

    def close(self) -> None:
        os.close(self.fd)


class Writer:
    """The production JournalWriter (fsync "always"): the framed batch goes into its pending
    records as the compiled path puts it there, then commit; encoding is not timed, as it
    is not in the other modes."""

    name = "JournalWriter"

    def __init__(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        self.writer = JournalWriter(path)

    def write(self, batch: bytes) -> None:
        self.writer.pending_records.extend(batch)
        self.writer.commit()

    def close(self) -> None:
        self.writer.close()


def make_modes(directory: Path) -> list[Mode]:
    return [
        Append(directory / "append-fsync", os.fsync, BASELINE),
        Append(directory / "append-fdatasync", os.fdatasync, "append+fdatasync"),
        InPlace(directory / "inplace-fallocate", True, "in place+fdatasync (fallocate)"),
        InPlace(directory / "inplace-zeros", False, "in place+fdatasync (zeros)"),
        Writer(directory / "writer"),
    ]


def measure(modes: list[Mode], batch: bytes, rounds: int, block: int) -> dict[str, list[float]]:
    """Microseconds per durable write, per mode; blocks take turns, the first is warm-up."""
    times: dict[str, list[float]] = {mode.name: [] for mode in modes}
    clock = time.perf_counter_ns
    for round_number in range(rounds + 1):
        turn = round_number % len(modes)
        for mode in modes[turn:] + modes[:turn]:
            taken = []
            for _ in range(block):
                started = clock()
                mode.write(batch)
                taken.append((clock() - started) / 1000)
            if round_number:  # round 0 warms every mode up
                times[mode.name].extend(taken)
    return times


def summarize(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    base = dict(zip(POINTS, percentiles(times[BASELINE], POINTS), strict=True))
    summary = {}
    for name, values in times.items():
        points = dict(zip(POINTS, percentiles(values, POINTS), strict=True))
        summary[name] = {
            "samples": len(values),
            **{f"p{p:g}_us": round(points[p], 1) for p in POINTS},
            "mean_us": round(statistics.fmean(values), 1),
            "p50_ratio": round(points[50] / base[50], 3),
            "p99_ratio": round(points[99] / base[99], 3),
            "p50_saved_us": round(base[50] - points[50], 1),
            "p99_saved_us": round(base[99] - points[99], 1),
        }
    return summary


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--rounds", type=int, help="blocks per mode (default 20; quick 3)")
    p.add_argument("--block", type=int, help="durable writes per block (default 250; quick 50)")
    p.add_argument("--batch", type=int, default=1, help="fill records per durable write")
    p.add_argument("--dir", help="where to write (default: the temporary directory)")
    args = resolve(p.parse_args(), rounds=(3, 20), block=(50, 250))
    run = Run("journal", args)
    fill = Fill("bench-fills", 1, "AAPL", 187_250_000, 100)
    records = [encode_input(fill)] * args.batch
    batch = b"".join(frame(msgpack.packb(r, use_bin_type=True)) for r in records)
    with tempfile.TemporaryDirectory(prefix="bench-journal-", dir=args.dir) as tmp:
        directory = Path(tmp)
        fstype = filesystem_of(directory)
        if fstype == "tmpfs":
            console.print("[red]the directory is on tmpfs: every sync is free, nothing to learn")
        modes = make_modes(directory)
        try:
            times = measure(modes, batch, args.rounds, args.block)
        finally:
            for mode in modes:
                mode.close()
    summary = summarize(times)
    print_table(
        f"one durable write of {len(batch)} bytes ({args.batch} record(s)) on {fstype}, "
        f"{args.rounds} x {args.block} per mode, microseconds",
        ["mode", "p50", "p90", "p99", "p99.9", "mean", "p50 / base", "p99 / base"],
        [
            [
                name,
                s["p50_us"],
                s["p90_us"],
                s["p99_us"],
                s["p99.9_us"],
                s["mean_us"],
                s["p50_ratio"],
                s["p99_ratio"],
            ]
            for name, s in summary.items()
        ],
        caption=f"base: {BASELINE} (the writer before issue 13), measured in the same run",
    )
    run.finish({"filesystem": fstype, "batch_bytes": len(batch), "modes": summary})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
