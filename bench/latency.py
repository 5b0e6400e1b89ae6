"""Latency: from a fill's send to its `allocation` event on a SUB, at a steady 1,000 and
10,000 fills/s, for the controller (journal with --fsync always) and, measured the same way,
for a bare forwarder (PUSH -> PULL -> PUB as-is, bench/bare.py).

    python bench/latency.py [--quick] [--rates 1000 10000] [--duration SECONDS]

One process sends (paced on an open-loop schedule, so a slow answer does not slow the
sender) and subscribes (a second thread); send times are kept by seq.
"""

from __future__ import annotations

import _paths  # type: ignore[import-not-found]  # noqa: F401  (first: the root on sys.path)

# isort: split
import contextlib
import ctypes
import sys
import threading
import time
from typing import Any

import zmq

from bench.common import (
    Bare,
    Client,
    Controller,
    Deadline,
    Run,
    connect_with_split,
    console,
    fill_raws,
    parser,
    percentiles,
    print_table,
    resolve,
    send_until,
    workdir,
)
from common.protocol import TOPIC_ALLOCATION, fill_message, pack, read_event

POINTS = (50, 90, 99, 99.9, 100)
LABELS = ("p50", "p90", "p99", "p99.9", "max")
SWITCH_INTERVAL = 50e-6  # the GIL hand-over between the sender and the receiver thread
PR_SET_TIMERSLACK = 29


def precise_sleep() -> None:
    """Ask Linux for 1 us timer slack in this thread (default 50 us), so paced sleeps
    end on time; harmless elsewhere."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_TIMERSLACK, 1000, 0, 0, 0)


def paced_run(
    push: zmq.Socket, sub: zmq.Socket, source: str, rate: int, seconds: float, warmup: int
) -> dict[str, Any]:
    """Send `warmup` + rate * seconds fills at `rate`; latencies of all but the warm-up."""
    count = warmup + int(rate * seconds)
    raws = list(fill_raws(count, source))
    sent = [0] * count
    got = [0] * count
    period = 1e9 / rate
    stop = threading.Event()

    def receive() -> None:
        received, recv, now = 0, sub.recv_multipart, time.perf_counter_ns
        while received < count and not stop.is_set():
            if not sub.poll(100):
                continue
            try:
                while True:
                    frames = recv(zmq.NOBLOCK)
                    arrived = now()
                    if frames[0] != TOPIC_ALLOCATION:
                        continue
                    body = read_event(frames)[1]
                    if body["source"] == source:
                        got[body["seq"] - 1] = arrived
                        received += 1
            except zmq.Again:
                pass

    receiver = threading.Thread(target=receive, name="receiver", daemon=True)
    receiver.start()
    send, now = push.send, time.perf_counter_ns
    start = now() + 10_000_000
    late = 0
    for i, raw in enumerate(raws):
        due = start + int(i * period)
        wait = due - now()
        if wait > 0:
            time.sleep(wait / 1e9)
        sent[i] = now()
        late = max(late, sent[i] - due)
        send(raw)
    receiver.join(timeout=30)
    stop.set()
    receiver.join()
    latencies = [(got[i] - sent[i]) / 1000 for i in range(warmup, count) if got[i]]
    lost = sum(1 for i in range(warmup, count) if not got[i])
    if not latencies:
        raise RuntimeError(f"no {source} fill came back")
    stats = dict(zip(LABELS, percentiles(latencies, POINTS), strict=True))
    return {
        "fills": count - warmup,
        "warmup": warmup,
        "lost": lost,
        "us": stats,
        "mean_us": sum(latencies) / len(latencies),
        "sent_rate": (count - 1) * 1e9 / (sent[-1] - sent[0]),
        "max_send_lateness_us": late / 1000,
    }


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--rates", type=int, nargs="+", default=[1_000, 10_000])
    p.add_argument("--duration", type=float, help="seconds of traffic per rate (5; quick 1)")
    p.add_argument("--warmup", type=float, default=0.2, help="seconds of traffic not counted")
    p.add_argument("--accounts", type=int, default=10)
    p.add_argument("--snapshot-interval", type=float, default=1.0)
    p.add_argument("--fsync", choices=["always", "interval"], default="always")
    args = resolve(p.parse_args(), duration=(1.0, 5.0))
    run = Run("latency", args)
    sys.setswitchinterval(SWITCH_INTERVAL)
    precise_sleep()
    results: dict[str, Any] = {"runs": []}
    rows = []
    with (
        workdir() as directory,
        Bare(directory, "forward") as forwarder,
        Controller(directory, args.snapshot_interval, fsync=args.fsync) as controller,
        Client() as client,
    ):
        forwarder.wait_ready()
        bare_push = client.push(forwarder.inputs)
        bare_sub = client.sub(forwarder.publish, TOPIC_ALLOCATION)
        probe = pack(fill_message("probe", 1, "AAPL", 1.0, 1))
        send_until(
            bare_push,
            bare_sub,
            probe,
            lambda frames: frames[0] == TOPIC_ALLOCATION,
            Deadline(30, "the forwarder to echo a probe", [forwarder]),
        )
        push, sub = connect_with_split(client, controller, args.accounts, TOPIC_ALLOCATION)
        for rate in args.rates:
            warmup = int(rate * args.warmup)
            source = f"latency-{rate}"
            bare = paced_run(bare_push, bare_sub, source, rate, args.duration, warmup)
            forwarder.check()
            ctl = paced_run(push, sub, source, rate, args.duration, warmup)
            controller.check()
            results["runs"].append({"rate": rate, "bare": bare, "controller": ctl})
            for name, r in (("bare forwarder", bare), ("controller", ctl)):
                rows.append(
                    [f"{rate:,}/s {name}", *r["us"].values(), r["mean_us"], r["fills"], r["lost"]]
                )
            ratios = [c / b for c, b in zip(ctl["us"].values(), bare["us"].values(), strict=True)]
            rows.append(
                [f"{rate:,}/s controller / bare", *ratios, ctl["mean_us"] / bare["mean_us"]]
            )
            lateness = max(bare["max_send_lateness_us"], ctl["max_send_lateness_us"])
            console.print(
                f"  {rate:,}/s done (sent at {bare['sent_rate']:,.0f} and {ctl['sent_rate']:,.0f}"
                f"/s; worst send lateness {lateness:,.0f} us)"
            )
    print_table(
        f"Latency, fill send -> allocation event on a SUB, microseconds ({args.duration:g} s "
        f"per rate, {args.accounts} accounts)",
        ["", *(f"{label} us" for label in LABELS), "mean us", "fills", "lost"],
        rows,
        caption=f"controller: --fsync {args.fsync}, snapshots every "
        f"{args.snapshot_interval:g} s; bare: PULL -> PUB of each message as-is; all ipc://",
    )
    run.finish(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
