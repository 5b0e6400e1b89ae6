"""Recovery: `recover()` over a journal of 1,000,000 fills without a checkpoint and with one
taken near the end; the real controller's restart with that checkpoint (spawn until it
answers); and its RSS, sampled from the controller process, while 1,000,000 more fills
arrive; the restart and the RSS run for each engine (--engine).

    python bench/recovery.py [--quick] [--fills N] [--tail N] [--accounts K]
        [--rss-fills N] [--engine native|python|both]

The journal is written with JournalWriter (fsync by interval, to write it quickly): its
header, one split, then fills seq 1..N from one source, as the engine journals them
(controller.journal.encode_input). The checkpoint is the engine's state (Engine.state) of
what `recover()` (common.history) rebuilds from the first N - tail fills, written with
write_checkpoint for that journal's identity at the offset those fills end. Every
controller run starts from the same journal and checkpoint bytes (restored before each).

Targets (issue 13): recovery of the journaled fills with the checkpoint under 2 s, judged on
the controller's restart (median of --restarts, spawn -> ack of a probe; recover() alone is
shown beside it); RSS flat: the controller's VmRSS after all --rss-fills are allocated at
most RSS_FLAT_SLACK_KB above its sample once the first tenth was sent (the first tenth warms
caches and allocator pools up; the first sample, at the start, is shown too).
"""

from __future__ import annotations

import _paths  # type: ignore[import-not-found]  # noqa: F401  (first: the root on sys.path)

# isort: split
import re
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from itertools import islice
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from bench.common import (
    FILL_SOURCE,
    PYTHON,
    SPLIT_SOURCE,
    Client,
    Controller,
    Deadline,
    Frames,
    Run,
    ack_for,
    add_engine_option,
    console,
    engines,
    fill_fields,
    fill_raws,
    fmt,
    make_split,
    parser,
    print_table,
    resolve,
    send_until,
    wait_positions,
    workdir,
)
from common.history import Recovered, recover
from common.protocol import (
    DEFAULT_TICKERS,
    TOPIC_POSITIONS,
    Fill,
    Split,
    ack_topic,
    build_split,
    fill_message,
    pack,
)
from controller.engine import Engine
from controller.journal import (
    JournalWriter,
    encode_input,
    read_header,
    records_start,
    write_checkpoint,
)

P = ParamSpec("P")
R = TypeVar("R")
COMMIT_EVERY = 10_000
RSS_SOURCE = "bench-rss"
RECOVERY_TARGET_S = 2.0  # spawn -> answering, with the checkpoint
RSS_FLAT_SLACK_KB = 1024  # growth allowed after the first tenth (~1 byte a fill at 1M)
RSS_SAMPLES = 10  # VmRSS samples while sending, one per tenth
# the controller's start-up line: "recovered PATH in S s: N fills allocated, ..."
RECOVERED_LOG = re.compile(r"recovered .* in ([0-9.]+) s: (\d+) fills allocated")


def append_fills(
    path: Path, fills: Iterable[tuple[int, tuple[str, int, int]]], split: Split | None = None
) -> int:
    """Append (split and) fills to the journal at `path`; returns its size afterwards."""
    writer = JournalWriter(path, "interval", fsync_interval=1.0)
    if split is not None:
        writer.append(encode_input(split))
    for seq, (ticker, cents, quantity) in fills:
        writer.append(encode_input(Fill(FILL_SOURCE, seq, ticker, cents * 10_000, quantity)))
        if seq % COMMIT_EVERY == 0:
            writer.commit()
    writer.close()
    return path.stat().st_size


def same_state(a: Recovered, b: Recovered) -> bool:
    return a.book == b.book and a.last_seq == b.last_seq and a.end == b.end


def timed(call: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> tuple[float, R]:
    started = time.perf_counter()
    result = call(*args, **kwargs)
    return time.perf_counter() - started, result


def probe(seq: int) -> bytes:
    """A fill with `seq` from the journal's source: resent until acked, it is applied once
    (seq 1 on an empty journal) or is a duplicate that changes nothing (the last seq)."""
    return pack(fill_message(FILL_SOURCE, seq, "AAPL", 1.0, 1))


def restart(
    directory: Path, journal: Path, snapshot_interval: float, seq: int, engine: str | None = None
) -> dict[str, Any]:
    """Spawn the controller on `journal`; time until it acks probe(seq) (resent every 5 ms
    until answered) and until its first positions snapshot arrives."""
    first_snapshot: list[float] = []

    def observe(batch: list[Frames], arrived: float) -> None:
        if not first_snapshot and any(frames[0] == TOPIC_POSITIONS for frames in batch):
            first_snapshot.append(arrived)

    with (
        Controller(
            directory, snapshot_interval, journal=journal, name="restart", engine=engine
        ) as controller,
        Client() as client,
    ):
        push = client.push(controller.inputs)
        sub = client.sub(controller.publish, ack_topic(FILL_SOURCE), TOPIC_POSITIONS)
        deadline = Deadline(600, "the restarted controller to answer", [controller])
        answered = send_until(
            push, sub, probe(seq), ack_for(FILL_SOURCE, seq), deadline, 5, observe
        )
        rss, hwm = controller.status_kb("VmRSS"), controller.status_kb("VmHWM")
        compiled = controller.check_engine()
        if not first_snapshot:
            wait_positions(sub, 0, deadline, observe)
        spawned = controller.spawned
    found = RECOVERED_LOG.search(controller.log_text())
    if found is None:
        raise RuntimeError(f"no recovery line in the controller's log {controller.log_path}")
    return {
        "answer_s": answered - spawned,
        "first_snapshot_s": first_snapshot[0] - spawned,
        "recovery_logged_s": float(found.group(1)),
        "fills_recovered": int(found.group(2)),
        "rss_kb": rss,
        "vmhwm_kb": hwm,
        "compiled_modules": compiled,
    }


def rss_run(
    directory: Path,
    journal: Path,
    snapshot_interval: float,
    fills_before: int,
    count: int,
    engine: str | None = None,
) -> dict[str, Any]:
    """Start the controller on the journal + checkpoint, then send `count` more fills from a
    new source; VmRSS when it answers, every tenth of the fills sent, and once all are
    allocated (a positions snapshot counts them)."""
    with (
        Controller(
            directory, snapshot_interval, journal=journal, name="rss", engine=engine
        ) as controller,
        Client() as client,
    ):
        push = client.push(controller.inputs)
        sub = client.sub(controller.publish, ack_topic(FILL_SOURCE), TOPIC_POSITIONS)
        deadline = Deadline(600, "the controller to answer", [controller])
        send_until(push, sub, probe(fills_before), ack_for(FILL_SOURCE, fills_before), deadline)
        samples = [(0, controller.status_kb("VmRSS"))]
        step = max(1, count // RSS_SAMPLES)
        send = push.send
        started = time.perf_counter()
        for i, raw in enumerate(fill_raws(count, RSS_SOURCE), 1):
            send(raw)
            if i % step == 0:
                samples.append((i, controller.status_kb("VmRSS")))
        total = fills_before + count
        deadline = Deadline(120 + count / 100, f"a snapshot with {total:,} fills", [controller])
        done, snapshot = wait_positions(sub, total, deadline)
        after = controller.status_kb("VmRSS")
        hwm = controller.status_kb("VmHWM")
        compiled = controller.check_engine()
    warm = samples[min(1, len(samples) - 1)][1]  # once the first tenth was sent
    return {
        "fills": count,
        "seconds": done - started,
        "rate": count / (done - started),
        "rss_kb_samples": samples,
        "rss_kb_before": samples[0][1],
        "rss_kb_after": after,
        "rss_kb_after_first_tenth": warm,
        "rss_growth_kb": after - samples[0][1],
        "rss_growth_after_first_tenth_kb": after - warm,
        "flat": after - warm <= RSS_FLAT_SLACK_KB,
        "vmhwm_kb": hwm,
        "compiled_modules": compiled,
        "snapshot_counts": snapshot["counts"],
    }


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--fills", type=int, help="fills in the journal (1,000,000; quick 50,000)")
    p.add_argument("--tail", type=int, help="fills after the checkpoint (10,000; quick 1,000)")
    p.add_argument("--accounts", type=int, default=10)
    p.add_argument("--repeat", type=int, help="timings with the checkpoint (5; quick 2)")
    p.add_argument("--restarts", type=int, help="controller restarts (3; quick 2)")
    p.add_argument("--rss-fills", type=int, help="fills sent for RSS (1,000,000; quick 50,000)")
    p.add_argument("--snapshot-interval", type=float, default=0.2)
    add_engine_option(p)
    args = resolve(
        p.parse_args(),
        fills=(50_000, 1_000_000),
        tail=(1_000, 10_000),
        repeat=(2, 5),
        restarts=(2, 3),
        rss_fills=(50_000, 1_000_000),
    )
    chosen = engines(args.engine)
    run = Run("recovery", args)
    tickers = list(DEFAULT_TICKERS)
    results: dict[str, Any] = {}
    rows = []
    with workdir() as directory:
        journal = directory / "controller.journal"
        checkpoint = journal.with_name(journal.name + ".checkpoint")  # where the controller looks
        split = build_split(SPLIT_SOURCE, 1, make_split(args.accounts))
        fields = enumerate(fill_fields(args.fills), 1)
        head = args.fills - args.tail

        seconds, offset = timed(append_fills, journal, islice(fields, head), split)
        rows.append([f"write journal: split + {head:,} fills", seconds, ""])
        seconds, head_state = timed(recover, journal, None, tickers)
        rows.append(
            [f"recover() {head_state.replayed:,} records (to build the checkpoint)", seconds, ""]
        )
        header = read_header(journal)
        if header is None or head_state.end != offset:
            raise RuntimeError(f"recovered up to {head_state.end}, the journal ends at {offset}")
        state = Engine.from_recovered(head_state).state()  # what the controller saves
        seconds, _ = timed(write_checkpoint, checkpoint, header.journal_id, offset, state)
        rows.append([f"write_checkpoint at offset {offset:,}", seconds, ""])
        seconds, size = timed(append_fills, journal, fields)
        rows.append([f"write journal: {args.tail:,} more fills", seconds, ""])
        saved_checkpoint = checkpoint.read_bytes()
        console.print(
            f"journal {size / 1e6:.1f} MB, checkpoint {len(saved_checkpoint) / 1e3:.1f} kB"
        )

        first = records_start(journal)
        console.print(
            f"journal records from offset {first}: {(size - first) / (args.fills + 1):.1f} B each"
        )
        full_s, full = timed(recover, journal, None, tickers)
        replayed_full = full.replayed
        if full.book.fills_allocated != args.fills or replayed_full != args.fills + 1:
            raise RuntimeError(f"replayed {replayed_full}, {full.book.fills_allocated} fills")
        rows.append(
            [
                f"recover() without checkpoint: {replayed_full:,} records",
                full_s,
                f"{replayed_full / full_s:,.0f} records/s",
            ]
        )
        with_checkpoint = []
        for _ in range(args.repeat):
            seconds, tail = timed(recover, journal, checkpoint, tickers)
            with_checkpoint.append(seconds)
            replayed = tail.replayed
            if replayed != args.tail or not same_state(tail, full):
                raise RuntimeError("recovery from the checkpoint differs from the full replay")
        rows.append(
            [
                f"recover() with checkpoint: {replayed:,} records (best of {args.repeat})",
                min(with_checkpoint),
                f"median {statistics.median(with_checkpoint):.3f} s; same book as full replay",
            ]
        )
        read_s, _ = timed(journal.read_bytes)
        rows.append(
            ["  for scale: reading the whole journal (recovery reads the tail)", read_s, ""]
        )
        results["journal_bytes"] = size
        results["journal_records_start"] = first  # the header's size
        results["checkpoint_bytes"] = len(saved_checkpoint)
        results["recover_without_checkpoint_s"] = full_s
        results["recover_with_checkpoint_s"] = with_checkpoint
        results["records_after_checkpoint"] = replayed
        results["read_journal_file_s"] = read_s
        results["setup"] = [{"step": r[0], "seconds": r[1]} for r in rows[:4]]

        saved_journal = directory / "saved.journal"
        shutil.copyfile(journal, saved_journal)
        results["engines"] = chosen
        results["by_engine"] = {}
        verdict_rows = []
        rss_tables = []
        for engine in chosen:
            empty = directory / f"empty-{engine}"
            empty.mkdir()
            baseline = restart(
                empty, empty / "controller.journal", args.snapshot_interval, 1, engine
            )
            restarts = []
            for _ in range(args.restarts):
                shutil.copyfile(saved_journal, journal)  # every run from the same bytes
                checkpoint.write_bytes(saved_checkpoint)  # a clean stop moves it on
                restarts.append(
                    restart(directory, journal, args.snapshot_interval, args.fills, engine)
                )
            answers = [r["answer_s"] for r in restarts]
            median = statistics.median(answers)
            best = min(restarts, key=lambda r: r["answer_s"])
            rows.append(
                [
                    f"{engine}: controller restart, empty journal: spawn -> ack",
                    baseline["answer_s"],
                    "",
                ]
            )
            rows.append(
                [
                    f"{engine}: controller restart with checkpoint: spawn -> ack "
                    f"(median of {args.restarts})",
                    median,
                    f"best {best['answer_s']:.3f} s; logged recovery "
                    f"{best['recovery_logged_s']:.3f} s ({best['fills_recovered']:,} fills, "
                    f"{replayed:,} records after the checkpoint)",
                ]
            )
            rows.append(
                [
                    "  spawn -> first positions snapshot (best)",
                    best["first_snapshot_s"],
                    f"snapshot interval {args.snapshot_interval:g} s",
                ]
            )

            shutil.copyfile(saved_journal, journal)
            checkpoint.write_bytes(saved_checkpoint)
            rss = rss_run(
                directory, journal, args.snapshot_interval, args.fills, args.rss_fills, engine
            )
            results["by_engine"][engine] = {
                "restart_empty_journal": baseline,
                "restart_with_checkpoint": restarts,
                "restart_median_s": median,
                "recovery_target_met": median < RECOVERY_TARGET_S,
                "rss": rss,
            }
            if engine == PYTHON:  # the keys earlier results had
                results["restart_empty_journal"] = baseline
                results["restart_with_checkpoint"] = restarts
                results["rss"] = rss
            verdict_rows.append(
                [
                    f"{engine}: restart with checkpoint, {args.fills:,} fills journaled "
                    f"(median spawn -> ack)",
                    f"< {RECOVERY_TARGET_S:g} s",
                    f"{median:.3f} s",
                    "met" if median < RECOVERY_TARGET_S else "not met",
                ]
            )
            verdict_rows.append(
                [
                    f"{engine}: RSS flat over {args.rss_fills:,} fills (after the first tenth)",
                    f"<= +{RSS_FLAT_SLACK_KB / 1024:g} MB",
                    f"{rss['rss_growth_after_first_tenth_kb'] / 1024:+.2f} MB "
                    f"(from the start {rss['rss_growth_kb'] / 1024:+.2f} MB)",
                    "met" if rss["flat"] else "not met",
                ]
            )
            rss_tables.append((engine, rss, best))
    print_table(
        f"Recovery: journal of {args.fills:,} fills, {args.accounts} accounts "
        f"({size / 1e6:.1f} MB journal, {len(saved_checkpoint) / 1e3:.1f} kB checkpoint)",
        ["step", "seconds", ""],
        rows,
        caption="recover() runs in this process (common.history); the restarts are the "
        "controller with the engine named",
    )
    for engine, rss, best in rss_tables:
        after = rss["rss_kb_after"]
        print_table(
            f"{engine}: controller RSS while {args.rss_fills:,} more fills arrive "
            f"(started from the checkpoint; {rss['rate']:,.0f} fills/s, --fsync always, "
            f"{args.accounts} accounts)",
            ["fills sent", "VmRSS MB"],
            [*([n, kb / 1024] for n, kb in rss["rss_kb_samples"]), ["all allocated", after / 1024]],
            caption=f"VmRSS {fmt(rss['rss_kb_before'] / 1024)} -> {fmt(after / 1024)}"
            f" MB; peak (VmHWM) {fmt(rss['vmhwm_kb'] / 1024)} MB; after restart the peak was "
            f"{fmt(best['vmhwm_kb'] / 1024)} MB",
        )
    print_table("Targets (issue 13)", ["target", "wanted", "measured", "verdict"], verdict_rows)
    run.finish(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
