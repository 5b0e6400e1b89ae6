"""The outside team's client: the C sender of examples/c_client, written from
docs/protocol.md alone, is built and run against a real controller process, and every
allocation and rejection it hears must be exactly what the controller's own rules give for
the same messages sent from Python."""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

import msgpack
import pytest
import zmq
from helpers import ROOT, collect, start_controller, wait_for

from common.protocol import (
    DEFAULT_TICKERS,
    Allocated,
    Rejected,
    Unreadable,
    decode_input,
    fill_message,
    pack,
    split_message,
)
from controller.book import Book

SOURCE_FILE = ROOT / "examples" / "c_client" / "fill_sender.c"
LIBRARIES = ("-lzmq", "-lmsgpackc")
RUN_TIMEOUT = 90  # seconds: the client's own deadline is 60 s
SOURCE = "desk-c@00c0ffee"

#: A small day in the client's input format: fills before the first split wait for it;
#: a bad ticker and an over-sell are rejected with identity; prices with decimals that
#: have no exact binary form (10.01, 0.3) must mean their decimals.
DAY = """\
fill AAPL 187.25 300
fill MSFT 10.01 1000 buy
split ACC-A=50 ACC-B=30 ACC-C=20
fill AAPL 187.3 700
fill IBM 100 10
fill NVDA 0.3 12345
fill AAPL 190 400 sell
split ACC-A=33.33 ACC-B=33.33 ACC-C=33.34 ACC-D=0
fill MSFT 10.02 999 buy
fill AAPL 188.123456 5000 sell
fill TSLA 250.5 77
"""


def build(tmp_path: Path) -> Path:
    """Compile the client, or skip saying what is missing (CI installs both libraries)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler (cc) on this machine")
    binary = tmp_path / "fill_sender"
    result = subprocess.run(
        [compiler, "-O2", "-Wall", "-Werror", "-o", str(binary), str(SOURCE_FILE), *LIBRARIES],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        if "zmq.h" in result.stderr or "msgpack.h" in result.stderr:
            pytest.skip("libzmq3-dev and libmsgpack-dev are not installed (.ci/run installs them)")
        pytest.fail(f"the C client does not build:\n{result.stderr}")
    return binary


def reference_lines(day: str) -> list[str]:
    """What the client must print, from the same messages encoded by Python and put through
    the controller's validation and Book: one line per allocation and rejection."""
    book = Book(list(DEFAULT_TICKERS))
    lines = []
    for seq, line in enumerate(day.splitlines(), start=1):
        words = line.split()
        if words[0] == "split":
            splits = {a: float(p) for a, p in (w.split("=") for w in words[1:])}
            body = split_message(SOURCE, seq, splits)
        else:
            side = words[4] if len(words) == 5 else None
            body = fill_message(SOURCE, seq, words[1], float(words[2]), int(words[3]), side)
        item = decode_input(pack(body), frozenset(DEFAULT_TICKERS))
        assert type(item) is not Unreadable, item
        for decision in book.apply(item):
            if type(decision) is Allocated:
                fill = decision.fill
                shares = " ".join(f"{a}={n}" for a, n in sorted(decision.shares.items()))
                lines.append(
                    f"allocation {fill.seq} {fill.ticker} {fill.side} {fill.quantity} {shares}"
                )
            elif type(decision) is Rejected:
                lines.append(f"rejected {decision.seq} {decision.reason}")
    return lines


def test_the_c_client_gets_exactly_the_controllers_allocations(tmp_path):
    binary = build(tmp_path)
    expected = reference_lines(DAY)
    assert sum(line.startswith("rejected") for line in expected) == 2  # the day tests both
    running, inputs, publish = start_controller(tmp_path)
    try:
        client = subprocess.run(
            [str(binary), inputs, publish, SOURCE],
            input=DAY,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
    finally:
        running.process.send_signal(signal.SIGTERM)
        code = running.wait()
    assert client.returncode == 0, client.stderr + client.stdout
    heard = client.stdout.splitlines()
    assert heard[-1] == f"done {len(DAY.splitlines())}"
    # Allocations and rejections are published in application order, each once (the client
    # waited for its subscription to be live, and duplicates of resends publish nothing).
    assert heard[:-1] == expected
    assert code == 0, running.stderr


def test_the_c_client_refuses_a_line_it_cannot_encode(tmp_path):
    binary = build(tmp_path)
    result = subprocess.run(
        [str(binary), "ipc:///nonexistent/in", "ipc:///nonexistent/pub", SOURCE],
        input="fill AAPL ten 5\n",
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr == "line 1: not a fill or split line\n"


def test_multipart_frames_and_bin_strings_behave_as_the_doc_says(ctx, tmp_path):
    """docs/protocol.md, Encodings: each frame of a multipart message is a message of its
    own, and a message written all in bin strings means the same as in str."""
    running, inputs, publish = start_controller(tmp_path)
    try:
        sub = ctx.socket(zmq.SUB)
        for topic in (b"allocation", b"rejected", b"ack:", b"positions"):
            sub.setsockopt(zmq.SUBSCRIBE, topic)
        sub.connect(publish)
        wait_for(lambda: any(t == b"positions" for t, _ in collect(sub, 100)), what="a snapshot")
        push = ctx.socket(zmq.PUSH)
        push.connect(inputs)
        binary = {
            k.encode(): v.encode() if isinstance(v, str) else v
            for k, v in fill_message("desk", 2, "MSFT", 10.01, 100, "buy").items()
        }
        push.send(pack(split_message("aum", 1, {"A": 60, "B": 40})))
        push.send_multipart([pack(fill_message("desk", 1, "AAPL", 187.25, 10)), b"\xc1"])
        push.send(msgpack.packb(binary, use_bin_type=True))
        events: list[tuple[bytes, dict]] = []

        def acked() -> bool:
            events.extend(collect(sub, 100))
            return any(t == b"ack:desk" and body["seq"] == 2 for t, body in events)

        wait_for(acked, what="desk's two fills acknowledged")
    finally:
        running.process.send_signal(signal.SIGTERM)
        assert running.wait() == 0, running.stderr
    allocations = [
        (b["seq"], b["ticker"], b["allocations"]) for t, b in events if t == b"allocation"
    ]
    assert allocations == [(1, "AAPL", {"A": 6, "B": 4}), (2, "MSFT", {"A": 60, "B": 40})]
    bare = [body["reason"] for topic, body in events if topic == b"rejected"]
    assert bare == ["not valid msgpack: it uses a reserved type byte (0xc1)"]
