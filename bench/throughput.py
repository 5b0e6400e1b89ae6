"""Throughput: the bare limit (a PULL that only msgpack-decodes, bench/bare.py), then the real
controller (journal with --fsync always, snapshots every 0.2 s), with the same sender and the
same pre-packed fills, for 10, 100 and 1,000 accounts; then where the controller's time goes
(py-spy on the controller process if installed, else cProfile on an in-process Engine).

    python bench/throughput.py [--quick] [--fills N] [--accounts 10 100 1000]
"""

from __future__ import annotations

import _paths  # type: ignore[import-not-found]  # noqa: F401  (first: the root on sys.path)

# isort: split
import cProfile
import os
import pstats
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from bench.common import (
    FILL_SOURCE,
    SPLIT_SOURCE,
    Bare,
    Client,
    Controller,
    Deadline,
    Frames,
    Run,
    connect_with_split,
    console,
    drain,
    fill_fields,
    fill_raws,
    make_split,
    parser,
    print_table,
    resolve,
    wait_positions,
    workdir,
)
from common.protocol import (
    DEFAULT_TICKERS,
    TOPIC_POSITIONS,
    ack_topic,
    pack,
    read_event,
    split_message,
)
from controller.book import Book
from controller.engine import Engine
from controller.journal import JournalWriter
from controller.service import BATCH_MAX

TOP = 15
DRAIN_EVERY = 4096  # sends between looks at the SUB while sending


def send_all(
    push: zmq.Socket,
    raws: list[bytes],
    sub: zmq.Socket | None = None,
    observe: Callable[[list[Frames], float], None] | None = None,
) -> float:
    """Send every message, blocking at the high-water mark (the receiver sets the pace),
    handing what waits on `sub` to `observe` now and then. Returns the first send's time."""
    send = push.send
    started = time.perf_counter()
    for i, raw in enumerate(raws):
        send(raw)
        if sub is not None and observe is not None and i % DRAIN_EVERY == 0:
            observe(drain(sub), time.perf_counter())
    return started


def measure_bare(raws: list[bytes]) -> dict[str, Any]:
    """(a) The sink decodes every message; its own clock, first message to last."""
    with workdir() as directory, Bare(directory, "sink", len(raws)) as sink, Client() as client:
        sink.wait_ready()
        push = client.push(sink.inputs)
        started = send_all(push, raws)
        sent = time.perf_counter() - started
        result = sink.result(seconds=60 + len(raws) / 1000)
    seconds = result["seconds"]
    return {"seconds": seconds, "rate": len(raws) / seconds, "sender_seconds": sent}


class Progress:
    """Watches the controller's events during a run: the ack of the last fill, and the
    fill acks: one per drained batch (one journal commit and fsync) plus one per snapshot."""

    topic = ack_topic(FILL_SOURCE)

    def __init__(self, fills: int) -> None:
        self.fills = fills
        self.ack_time: float | None = None
        self.fill_acks = 0
        self.snapshots = 0

    def __call__(self, batch: list[Frames], arrived: float) -> None:
        for frames in batch:
            if frames[0] == TOPIC_POSITIONS:
                self.snapshots += 1
            elif frames[0] == self.topic:
                body = read_event(frames)[1]
                if body["source"] == FILL_SOURCE:
                    self.fill_acks += 1
                    if self.ack_time is None and body["seq"] >= self.fills:
                        self.ack_time = arrived


def measure_controller(
    directory: Path,
    raws: list[bytes],
    accounts: int,
    snapshot_interval: float,
    expected_shares: int,
    wrapper: list[str] | None = None,
) -> dict[str, Any]:
    """(b) The controller, split acked first; first send until a snapshot shows all fills."""
    n = len(raws)
    with (
        Controller(directory, snapshot_interval, wrapper=wrapper or ()) as controller,
        Client() as client,
    ):
        push, sub = connect_with_split(
            client, controller, accounts, Progress.topic, TOPIC_POSITIONS
        )
        rss_before = controller.status_kb("VmRSS")
        progress = Progress(n)
        started = send_all(push, raws, sub, progress)
        sent = time.perf_counter() - started
        # a fill costs about accounts / 100 ms on a slow machine (1 s at 10,000 accounts)
        seconds = 120 + n * max(1, accounts / 100) / 100
        deadline = Deadline(seconds, f"a snapshot with {n:,} fills", [controller])
        done, snapshot = wait_positions(sub, n, deadline, progress)
        rss_after = controller.status_kb("VmRSS")
        hwm = controller.status_kb("VmHWM")
    seconds = done - started
    counts = snapshot["counts"]
    shares = sum(snapshot["totals"]["positions"].values())
    if counts["fills"] != n or counts["rejected"] or shares != expected_shares:
        raise RuntimeError(f"wrong book: counts {counts}, {shares:,} shares != {expected_shares:,}")
    # The last snapshot's acks are not read, hence the + 1; approximate (see Progress).
    batches = max(1, progress.fill_acks - progress.snapshots + 1)
    ack_seconds = (progress.ack_time or done) - started
    return {
        "seconds": seconds,
        "rate": n / seconds,
        "ack_seconds": ack_seconds,
        "ack_rate": n / ack_seconds,
        "sender_seconds": sent,
        "commits_approx": batches,
        "mean_batch_approx": n / batches,
        "rss_kb_before": rss_before,
        "rss_kb_after": rss_after,
        "vmhwm_kb": hwm,
        "snapshot_counts": counts,
    }


def mb_change(before_kb: int, after_kb: int) -> str:
    return f"{before_kb / 1024:.1f} -> {after_kb / 1024:.1f}"


# -- where the time goes -------------------------------------------------------------------
def find_pyspy() -> str | None:
    return shutil.which(
        "py-spy",
        path=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]),
    )


def pyspy_profile(
    pyspy: str, raws: list[bytes], accounts: int, snapshot_interval: float, expected: int
) -> dict[str, Any]:
    """The real controller under `py-spy record` (idle samples included, so waits in poll
    and fsync show), the same run as measure_controller; top functions by own samples."""
    with workdir() as directory:
        out = directory / "pyspy.txt"
        wrapper = [pyspy, "record", "--idle", "--function", "--format", "raw", "--rate", "250"]
        wrapper += ["--output", str(out), "--"]
        run = measure_controller(directory, raws, accounts, snapshot_interval, expected, wrapper)
        own: Counter[str] = Counter()
        within: Counter[str] = Counter()
        for line in out.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            frames = stack.split(";") if stack.strip() else ["(no Python frame)"]
            own[frames[-1]] += int(count)
            for frame in set(frames):
                within[frame] += int(count)
    total = sum(own.values())
    rows = [
        {"function": f, "self": own[f] / total, "total": within[f] / total, "samples": own[f]}
        for f, _ in own.most_common(TOP)
    ]
    return {
        "tool": "py-spy (--idle, 250 Hz, whole controller process)",
        "samples": total,
        "rate_under_profiler": run["rate"],
        "top": rows,
    }


def cprofile_profile(raws: list[bytes], accounts: int) -> dict[str, Any]:
    """Fallback: cProfile on an in-process Engine (journal, fsync always, BATCH_MAX batches)."""
    with workdir() as directory:
        journal = JournalWriter(directory / "j", "always")
        engine = Engine(Book(DEFAULT_TICKERS), journal)
        engine.receive(pack(split_message(SPLIT_SOURCE, 1, make_split(accounts))))
        engine.commit()
        profiler = cProfile.Profile()
        profiler.enable()
        for start in range(0, len(raws), BATCH_MAX):
            for raw in raws[start : start + BATCH_MAX]:
                engine.receive(raw)
            engine.commit()
        profiler.disable()
        journal.close()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = sum(row[2] for row in stats.values())
    ranked = sorted(stats.items(), key=lambda item: -item[1][2])[:TOP]
    rows = [
        {
            "function": f"{func} ({Path(file).name}:{line})",
            "self": tt / total,
            "total": ct / total,
            "seconds": tt,
        }
        for (file, line, func), (_, _, tt, ct, _) in ranked
    ]
    return {"tool": "cProfile (in-process Engine)", "seconds": total, "top": rows}


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--fills", type=int, help="fills per run (default 200,000; quick 5,000)")
    p.add_argument("--accounts", type=int, nargs="+", default=[10, 100, 1000])
    p.add_argument("--snapshot-interval", type=float, default=0.2)
    p.add_argument("--profile-accounts", type=int, nargs="+", default=[10, 100])
    p.add_argument("--no-profile", action="store_true")
    args = resolve(p.parse_args(), fills=(5_000, 200_000))
    run = Run("throughput", args)
    raws = list(fill_raws(args.fills))
    expected = sum(quantity for _, _, quantity in fill_fields(args.fills))
    console.print(f"{len(raws):,} fills pre-packed ({sum(map(len, raws)) / len(raws):.0f} B each)")

    results: dict[str, Any] = {"runs": []}
    rows = []
    for accounts in args.accounts:
        bare = measure_bare(raws)
        with workdir() as directory:
            controller = measure_controller(
                directory, raws, accounts, args.snapshot_interval, expected
            )
        results["runs"].append({"accounts": accounts, "bare": bare, "controller": controller})
        rows.append(
            [
                accounts,
                bare["rate"],
                controller["rate"],
                bare["rate"] / controller["rate"],
                controller["ack_rate"],
                controller["seconds"],
                controller["mean_batch_approx"],
                mb_change(controller["rss_kb_before"], controller["rss_kb_after"]),
            ]
        )
        console.print(f"  {accounts} accounts: done")
    print_table(
        f"Throughput, {args.fills:,} fills, one PUSH, ipc://",
        [
            "accounts",
            "bare PULL+decode /s",
            "controller /s",
            "bare / controller",
            "controller to ack /s",
            "controller s",
            "fills per fsync",
            "controller RSS MB",
        ],
        rows,
        caption="controller: --fsync always, snapshots every "
        f"{args.snapshot_interval} s; rate = fills / (first send -> snapshot showing all)",
    )

    pyspy = None if args.no_profile else find_pyspy()
    results["profiles"] = []
    for accounts in [] if args.no_profile else args.profile_accounts:
        if pyspy:
            profile = pyspy_profile(pyspy, raws, accounts, args.snapshot_interval, expected)
        else:
            profile = cprofile_profile(raws, accounts)
        profile["accounts"] = accounts
        results["profiles"].append(profile)
        print_table(
            f"Where the time goes: {profile['tool']}, {accounts} accounts, {args.fills:,} fills",
            ["function", "self %", "incl. %"],
            [[r["function"], 100 * r["self"], 100 * r["total"]] for r in profile["top"]],
        )
    run.finish(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
