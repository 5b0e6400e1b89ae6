"""Shared test helpers: a fake clock, deadline polling, subscriber sync, process control."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import pytest
import zmq

from common.protocol import DEFAULT_TICKERS, read_event
from controller.journal import FILL_RECORD, read_records
from fillsim.market import Market

ROOT = Path(__file__).resolve().parent.parent


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def wait_for(condition: Callable[[], object], timeout: float = 10.0, what: str = "") -> object:
    """Poll `condition` until it is truthy or `timeout` passes (then fail)."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(0.01)


def collect(sub: zmq.Socket, timeout_ms: int = 0) -> list[tuple[bytes, dict]]:
    """Every event waiting on `sub` (waiting up to `timeout_ms` for the first)."""
    events = []
    if sub.poll(timeout_ms):
        try:
            while True:
                events.append(read_event(sub.recv_multipart(zmq.NOBLOCK)))
        except zmq.Again:
            pass
    return events


def python_module(module: str, *args: str, **kwargs) -> subprocess.Popen:
    """Start `python -m module args` from the project root, output captured."""
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=kwargs.pop("cwd", ROOT),
        stdout=kwargs.pop("stdout", subprocess.PIPE),
        stderr=kwargs.pop("stderr", subprocess.PIPE),
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)},
        **kwargs,
    )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); look at its state.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


class Running:
    """A child process whose stdout and stderr are collected by reader threads."""

    def __init__(self, process: subprocess.Popen) -> None:
        import threading

        self.process = process
        self.out: list[str] = []
        self.err: list[str] = []
        self._threads = [
            threading.Thread(target=self._read, args=(process.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(process.stderr, self.err), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _read(stream, sink: list[str]) -> None:
        for line in iter(stream.readline, b""):
            sink.append(line.decode(errors="replace"))

    @property
    def stdout(self) -> str:
        return "".join(self.out)

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def wait(self, timeout: float = 30.0) -> int:
        code = self.process.wait(timeout)
        for thread in self._threads:
            thread.join(5)
        return code

    def stop(self) -> None:
        """Make sure the process is gone (test clean-up)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def expected_shares(seeds: list[int], count: int) -> dict[str, int]:
    """The shares the fill servers send: their streams are reproducible from the seed."""
    totals = Counter()
    for seed in seeds:
        market = Market(DEFAULT_TICKERS, seed)
        for _ in range(count):
            ticker, _, quantity = market.next_fill()
            totals[ticker] += quantity
    return {t: totals[t] for t in DEFAULT_TICKERS}


def journal_fills(path) -> list[tuple[str, int]]:
    return [(r[1], r[2]) for _, r in read_records(path) if r[0] == FILL_RECORD]


def meant(percent) -> Fraction:
    """What a split percent means: its decimal when it has at most 6 places, else its
    exact binary value (written independently of common.protocol, to check it)."""
    if isinstance(percent, float) and round(percent * 10**6) / 10**6 == percent:
        return Fraction(repr(percent))
    return Fraction(percent)


def start_controller(directory: Path, snapshot_interval: str = "0.2", *extra: str):
    """A controller process on ipc:// endpoints in `directory`, journal there too.

    Returns (running, inputs endpoint, publish endpoint).
    """
    inputs, publish = f"ipc://{directory}/in", f"ipc://{directory}/pub"
    running = Running(
        python_module(
            "controller",
            "--inputs",
            inputs,
            "--publish",
            publish,
            "--snapshot-interval",
            snapshot_interval,
            "--journal",
            str(directory / "journal"),
            *extra,
        )
    )
    return running, inputs, publish


def require_compiled(module: object, what: str) -> None:
    """Skip the calling test module when the compiled `module` is not loaded, unless CI asks
    for it (FILLALLOC_EXPECT_NATIVE=1) and it was not disabled on purpose (FILLALLOC_NATIVE=0):
    then a missing module is a failure."""
    if module is not None:
        return
    disabled = os.environ.get("FILLALLOC_NATIVE") == "0"
    if os.environ.get("FILLALLOC_EXPECT_NATIVE") == "1" and not disabled:
        pytest.fail(f"{what} is not built (FILLALLOC_EXPECT_NATIVE=1)")
    pytest.skip(f"{what} is not built", allow_module_level=True)
