"""A client flooding the controller with garbage does not stop good fills."""

from __future__ import annotations

import signal
import statistics
import subprocess
import sys
import time
from subprocess import PIPE

import pytest
import zmq
from helpers import Running, collect, start_controller, wait_for

from common.protocol import TOPIC_ALLOCATION, TOPIC_POSITIONS, fill_message, pack, split_message

GOOD_FILLS = 300
FLOOD = """
import os, random, sys, time, zmq
ctx = zmq.Context(); push = ctx.socket(zmq.PUSH); push.connect(sys.argv[1])
rng = random.Random(1); deadline = time.monotonic() + 60; sent = 0
print("flooding", flush=True)
while sent < 2_000_000 and time.monotonic() < deadline:
    push.send(rng.randbytes(rng.randint(1, 200)) if sent % 3 else b"\\x81\\xa4type\\xa4fill")
    sent += 1
"""


@pytest.mark.timeout(180)
def test_garbage_flood_does_not_stop_good_fills(ctx, tmp_path):
    controller, inputs, publish = start_controller(tmp_path)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(publish)
    wait_for(lambda: any(t == TOPIC_POSITIONS for t, _ in collect(sub, 50)), 20, "a snapshot")
    good = ctx.socket(zmq.PUSH)
    good.connect(inputs)
    good.send(pack(split_message("aum", 1, {"A": 50, "B": 50})))
    flood = Running(
        subprocess.Popen([sys.executable, "-c", FLOOD, inputs], stdout=PIPE, stderr=PIPE)
    )
    try:
        wait_for(lambda: "flooding" in flood.stdout, 20, "the flood to start")
        latencies = []
        for seq in range(1, GOOD_FILLS + 1):
            started = time.perf_counter()
            good.send(pack(fill_message("desk", seq, "AAPL", 100.0, 10)))

            def allocated(seq=seq):
                return any(
                    t == TOPIC_ALLOCATION and b["seq"] == seq and b["source"] == "desk"
                    for t, b in collect(sub, 100)
                )

            wait_for(allocated, 30, f"fill {seq} to be allocated during the flood")
            latencies.append(time.perf_counter() - started)
        assert flood.process.poll() is None, "the flood ended before the good fills did"
        wait_for(
            lambda: flood.process.poll() is None and "rejected a message" in controller.stderr,
            5,
            "rejections of the flood",
        )
    finally:
        flood.stop()
        controller.process.send_signal(signal.SIGTERM)
        assert controller.wait(30) == 0
    latencies.sort()
    p50, p99 = statistics.median(latencies), latencies[int(0.99 * len(latencies))]
    print(
        f"good-fill latency during the flood: p50 {p50 * 1e3:.2f} ms, "
        f"p99 {p99 * 1e3:.2f} ms, max {latencies[-1] * 1e3:.2f} ms"
    )
    lines = controller.stderr.count("rejected a message")
    assert 20 <= lines < 2000, "rejections are logged in full at first, then one per thousand"
