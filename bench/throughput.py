"""Throughput: the controller's sustained fill rate against the bare limit measured just
before it in the same run (a PULL that only msgpack-decodes, bench/bare.py), at 10, 100,
1,000 and 10,000 accounts (the split sent as one message), for each engine; then where the
controller's time goes (py-spy on the controller process if installed, else cProfile on an
in-process Engine).

    python bench/throughput.py [--quick] [--engine native|python|both]
        [--accounts 10 100 1000 10000] [--seconds S] [--fills MAX]

What is measured, per accounts and engine: a fresh controller (journal with --fsync always,
one fill per message, the per-fill allocation events published) gets its split, then a
warm-up from another source that also sizes the run (batches of growing size until one
takes --warmup-seconds; the rate it shows times --seconds gives the number of fills, at
least MIN_FILLS and at most --fills). The timed run is one PUSH sending those fills,
pre-packed, as fast as the controller takes them; it ends when the ack covering the last
fill arrives (the controller publishes `ack:<source>` once per committed batch, after the
batch's allocation events and its fsync), so the rate is fills / (first send -> that ack)
and no snapshot is decoded on the way. Afterwards, untimed, the next positions snapshot is
checked: every fill allocated, none rejected, every account present, the shares sent.

The controller still builds its snapshots on its own schedule during the run, which is
part of its cost: by default every 0.2 s up to 1,000 accounts and proportionally longer
above (2 s at 10,000 accounts, where one snapshot is large), so snapshots stay a few per cent
of the run. The bare sink times itself from its first message to its last decode over all
the pre-packed fills. On a shared machine both also report their CPU time, and the table
shows the ratio in fills per CPU-second beside the wall-clock one. Targets (issue 13):
controller / bare >= 0.5 at 10 accounts, 0.10 at 1,000, 0.05 at 10,000.
"""

from __future__ import annotations

import _paths  # type: ignore[import-not-found]  # noqa: F401  (first: the root on sys.path)

# isort: split
import cProfile
import math
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
    PYTHON,
    SPLIT_SOURCE,
    Bare,
    Client,
    Controller,
    Deadline,
    Frames,
    Run,
    ack_for,
    add_engine_option,
    connect_with_split,
    console,
    drain,
    engines,
    fill_fields,
    fill_raws,
    make_split,
    parser,
    print_table,
    resolve,
    wait_positions,
    wait_until,
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
WARMUP_SOURCE = "bench-warmup"
MIN_FILLS = 20  # a timed run has at least this many fills, however slow the controller
WARMUP_GROWTH = 16  # a warm-up batch is at most this many times the one before
#: controller / bare rate wanted, by accounts (issue 13's targets)
TARGETS = {10: 0.5, 1_000: 0.10, 10_000: 0.05}
SNAPSHOT_INTERVAL = 0.2  # seconds, up to SNAPSHOT_SCALE_ACCOUNTS accounts
SNAPSHOT_SCALE_ACCOUNTS = 1_000  # above this the interval grows with the book


def snapshot_interval(accounts: int, given: float | None) -> float:
    """The controller's snapshot interval: `given`, else SNAPSHOT_INTERVAL scaled up with
    the book above SNAPSHOT_SCALE_ACCOUNTS (a snapshot's cost grows with the accounts)."""
    if given is not None:
        return given
    return SNAPSHOT_INTERVAL * max(1.0, accounts / SNAPSHOT_SCALE_ACCOUNTS)


def shares_of(count: int) -> int:
    """Shares in the first `count` fills of fill_fields (the same for every source)."""
    return sum(quantity for _, _, quantity in fill_fields(count))


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
    """The sink decodes every message; its own clock, first message to last."""
    with workdir() as directory, Bare(directory, "sink", len(raws)) as sink, Client() as client:
        sink.wait_ready()
        push = client.push(sink.inputs)
        started = send_all(push, raws)
        sent = time.perf_counter() - started
        result = sink.result(seconds=60 + len(raws) / 1000)
    seconds, cpu = result["seconds"], result["cpu_seconds"]
    return {
        "fills": len(raws),
        "seconds": seconds,
        "rate": len(raws) / seconds,
        "cpu_seconds": cpu,
        "cpu_rate": len(raws) / cpu,
        "sender_seconds": sent,
    }


class Progress:
    """Watches the timed run: when the ack covering seq `last` arrives, how many acks of the
    fill source came (one per committed batch holding its fills, plus one after each
    snapshot) and how many snapshots (their frames only: none is decoded)."""

    topic = ack_topic(FILL_SOURCE)

    def __init__(self, last: int) -> None:
        self.last = last
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
                    if self.ack_time is None and body["seq"] >= self.last:
                        self.ack_time = arrived


def warm_up(
    push: zmq.Socket, sub: zmq.Socket, controller: Controller, seconds: float, most: int
) -> dict[str, Any]:
    """Send WARMUP_SOURCE fills in batches of growing size, each acked before the next,
    until a batch takes `seconds` (or reaches `most` fills); its rate sizes the timed run."""
    size, seq, fills, shares = 1, 1, 0, 0
    limit = 300.0  # seconds for the first batch: one fill, however big the book
    while True:
        last = seq + size - 1
        raws = list(fill_raws(size, WARMUP_SOURCE, seq))
        deadline = Deadline(limit, f"the ack of warm-up fill {last:,}", [controller])
        started = send_all(push, raws)
        took = wait_until(sub, ack_for(WARMUP_SOURCE, last), deadline) - started
        seq, fills, shares = last + 1, fills + size, shares + shares_of(size)
        rate = size / took
        if took >= seconds or size >= most:
            return {"fills": fills, "shares": shares, "rate": rate, "last_batch": size}
        growth = max(2.0, min(WARMUP_GROWTH, 1.25 * seconds / took))
        size = min(most, math.ceil(size * growth))
        limit = 60 + 20 * size / rate


def measure_controller(
    directory: Path,
    raws: list[bytes],
    accounts: int,
    engine: str,
    interval: float,
    seconds: float,
    warmup_seconds: float,
    wrapper: list[str] | None = None,
) -> dict[str, Any]:
    """A controller with `accounts` accounts: warm-up, then the timed run (see the module
    docstring), then the untimed check of the book."""
    with (
        Controller(directory, interval, wrapper=wrapper or (), engine=engine) as controller,
        Client() as client,
    ):
        push, sub = connect_with_split(
            client,
            controller,
            accounts,
            ack_topic(WARMUP_SOURCE),
            Progress.topic,
            TOPIC_POSITIONS,
        )
        warm = warm_up(push, sub, controller, warmup_seconds, len(raws))
        compiled = controller.check_engine()  # loaded by now, if the engine loads it at all
        n = max(MIN_FILLS, min(len(raws), round(warm["rate"] * seconds)))
        rss_before = controller.status_kb("VmRSS")
        cpu_before = controller.cpu_seconds()
        progress = Progress(n)
        started = send_all(push, raws[:n], sub, progress)
        sent = time.perf_counter() - started
        deadline = Deadline(60 + 20 * n / warm["rate"], f"the ack of fill {n:,}", [controller])
        while progress.ack_time is None:
            if sub.poll(deadline.ms()):
                progress(drain(sub), time.perf_counter())
        done = progress.ack_time
        cpu = controller.cpu_seconds() - cpu_before
        rss_after = controller.status_kb("VmRSS")
        hwm = controller.status_kb("VmHWM")
        total = warm["fills"] + n
        check = Deadline(60 + 3 * interval, f"a snapshot with {total:,} fills", [controller])
        _, snapshot = wait_positions(sub, total, check)
    counts = snapshot["counts"]
    shares = sum(snapshot["totals"]["positions"].values())
    expected = warm["shares"] + shares_of(n)
    held = len(snapshot["accounts"])
    if counts["fills"] != total or counts["rejected"] or shares != expected or held != accounts:
        raise RuntimeError(
            f"wrong book: counts {counts}, {shares:,} shares (expected {expected:,}), "
            f"{held:,} accounts (expected {accounts:,})"
        )
    seconds = done - started
    # Acks after snapshots are not fill commits; approximate (the snapshot may fall between).
    commits = max(1, progress.fill_acks - progress.snapshots)
    return {
        "engine": engine,
        "compiled_modules": compiled,
        "fills": n,
        "seconds": seconds,
        "rate": n / seconds,
        "cpu_seconds": cpu,
        "cpu_share": cpu / seconds,
        "cpu_rate": n / cpu if cpu else None,
        "sender_seconds": sent,
        "warmup": warm,
        "snapshot_interval": interval,
        "snapshots_during_run": progress.snapshots,
        "commits_approx": commits,
        "mean_batch_approx": n / commits,
        "rss_kb_before": rss_before,
        "rss_kb_after": rss_after,
        "vmhwm_kb": hwm,
        "snapshot_counts": counts,
    }


def verdict(ratio: float, target: float | None) -> list[str]:
    """[the verdict, how much of the target the ratio reaches], "-" where none applies."""
    if target is None:
        return ["-", "-"]
    return ["met" if ratio >= target else "not met", f"{100 * ratio / target:.3g}%"]


# -- where the time goes -------------------------------------------------------------------
def find_pyspy() -> str | None:
    return shutil.which(
        "py-spy",
        path=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]),
    )


def pyspy_profile(
    pyspy: str,
    raws: list[bytes],
    accounts: int,
    engine: str,
    interval: float,
    seconds: float,
    warmup_seconds: float,
) -> dict[str, Any]:
    """The real controller under `py-spy record` (idle samples included, so waits in poll
    and fsync show), the same run as measure_controller; top functions by own samples."""
    with workdir() as directory:
        out = directory / "pyspy.txt"
        wrapper = [pyspy, "record", "--idle", "--function", "--format", "raw", "--rate", "250"]
        wrapper += ["--output", str(out), "--"]
        run = measure_controller(
            directory, raws, accounts, engine, interval, seconds, warmup_seconds, wrapper
        )
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
        "tool": f"py-spy (--idle, 250 Hz, whole controller process, {engine} engine)",
        "samples": total,
        "rate_under_profiler": run["rate"],
        "top": rows,
    }


def cprofile_profile(raws: list[bytes], accounts: int) -> dict[str, Any]:
    """Fallback: cProfile on an in-process Python Engine (journal, fsync always, BATCH_MAX
    batches)."""
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
    return {"tool": "cProfile (in-process Python Engine)", "seconds": total, "top": rows}


def main() -> int:
    p = parser(__doc__)
    add_engine_option(p)
    p.add_argument("--accounts", type=int, nargs="+", default=[10, 100, 1_000, 10_000])
    p.add_argument("--seconds", type=float, help="timed run per controller (5; quick 1)")
    p.add_argument("--warmup-seconds", type=float, help="last warm-up batch (1; quick 0.3)")
    p.add_argument("--fills", type=int, help="most fills per run (1,000,000; quick 100,000)")
    p.add_argument(
        "--snapshot-interval",
        type=float,
        help=f"seconds (default {SNAPSHOT_INTERVAL} x max(1, accounts / "
        f"{SNAPSHOT_SCALE_ACCOUNTS:,}))",
    )
    p.add_argument("--profile-accounts", type=int, nargs="+", default=[10, 100])
    p.add_argument("--profile-fills", type=int, help="fills for cProfile (20,000; quick 5,000)")
    p.add_argument("--no-profile", action="store_true")
    args = resolve(
        p.parse_args(),
        seconds=(1.0, 5.0),
        warmup_seconds=(0.3, 1.0),
        fills=(100_000, 1_000_000),
        profile_fills=(5_000, 20_000),
    )
    chosen = engines(args.engine)
    run = Run("throughput", args)
    raws = list(fill_raws(args.fills))
    console.print(
        f"{len(raws):,} fills pre-packed ({sum(map(len, raws)) / len(raws):.0f} B each); "
        f"engines: {', '.join(chosen)}"
    )

    results: dict[str, Any] = {"engines": chosen, "runs": []}
    rows = []
    for accounts in args.accounts:
        interval = snapshot_interval(accounts, args.snapshot_interval)
        target = TARGETS.get(accounts)
        python_rate: float | None = None
        measured = []
        for engine in chosen:
            bare = measure_bare(raws)
            with workdir() as directory:
                controller = measure_controller(
                    directory,
                    raws,
                    accounts,
                    engine,
                    interval,
                    args.seconds,
                    args.warmup_seconds,
                )
            ratio = controller["rate"] / bare["rate"]
            cpu_ratio = (
                controller["cpu_rate"] / bare["cpu_rate"] if controller["cpu_rate"] else None
            )
            results["runs"].append(
                {
                    "accounts": accounts,
                    "engine": engine,
                    "bare": bare,
                    "controller": controller,
                    "ratio": ratio,
                    "cpu_ratio": cpu_ratio,
                    "target": target,
                    "met": None if target is None else ratio >= target,
                }
            )
            measured.append((engine, bare, controller, ratio, cpu_ratio))
            if engine == PYTHON:
                python_rate = controller["rate"]
            console.print(
                f"  {accounts:,} accounts, {engine}: {controller['rate']:,.0f} fills/s "
                f"over {controller['fills']:,} fills, ratio {ratio:.3g}"
            )
        for engine, bare, controller, ratio, cpu_ratio in measured:
            speedup = controller["rate"] / python_rate if python_rate else None
            rows.append(
                [
                    accounts,
                    engine,
                    controller["fills"],
                    bare["rate"],
                    controller["rate"],
                    ratio,
                    "-" if target is None else f">= {target:g}",
                    *verdict(ratio, target),
                    "-" if speedup is None or engine == PYTHON else speedup,
                    f"{100 * controller['cpu_share']:.0f}%",
                    "-" if cpu_ratio is None else cpu_ratio,
                    controller["mean_batch_approx"],
                    controller["rss_kb_after"] / 1024,
                ]
            )
    print_table(
        f"Throughput, one PUSH, ipc://, about {args.seconds:g} s per controller run",
        [
            "accounts",
            "engine",
            "fills",
            "bare /s",
            "controller /s",
            "ctl / bare",
            "target",
            "verdict",
            "of target",
            "x python",
            "ctl CPU",
            "ratio by CPU",
            "fills/fsync",
            "RSS MB after",
        ],
        rows,
        caption="bare: PULL + msgpack decode; controller: --fsync always, one fill per "
        "message, split as one message; "
        "rate = fills / (first send -> ack of the last fill); snapshots every "
        + (
            f"{args.snapshot_interval:g} s"
            if args.snapshot_interval is not None
            else f"{SNAPSHOT_INTERVAL:g} s x max(1, accounts / {SNAPSHOT_SCALE_ACCOUNTS:,})"
        )
        + "; bare measured just before each controller run; ctl CPU: the controller's CPU time / "
        "wall time over the run (all threads; fsync waits and a busy machine keep it under "
        "100%); ratio by CPU: fills per CPU-second, controller / bare (less sensitive to load; "
        "the verdict is on the wall-clock ratio)",
    )

    pyspy = None if args.no_profile else find_pyspy()
    results["profiles"] = []
    for accounts in [] if args.no_profile else args.profile_accounts:
        if pyspy:
            profile = pyspy_profile(
                pyspy,
                raws,
                accounts,
                chosen[0],
                snapshot_interval(accounts, args.snapshot_interval),
                args.seconds,
                args.warmup_seconds,
            )
        else:
            profile = cprofile_profile(raws[: args.profile_fills], accounts)
        profile["accounts"] = accounts
        results["profiles"].append(profile)
        print_table(
            f"Where the time goes: {profile['tool']}, {accounts} accounts",
            ["function", "self %", "incl. %"],
            [[r["function"], 100 * r["self"], 100 * r["total"]] for r in profile["top"]],
        )
    run.finish(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
