"""`python launcher.py`: start the whole system, keep it running, stop it cleanly.

Starts the controller, the position server, the AUM simulator and N fill simulators as
separate processes (each in its own process group), relays their output with a short
prefix per process, restarts a process that dies (capped exponential backoff; gives up
after repeated fast failures) and on SIGINT/SIGTERM stops them in reverse start order:
SIGTERM to the group, a grace period, then SIGKILL. Signal handlers only set a flag.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

from common import config
from common.lifecycle import StopFlag

log = logging.getLogger("launcher")

STARTED_AFTER = 5.0  # seconds up before a start counts as good
BACKOFF_FIRST = 0.5  # seconds before the first restart
BACKOFF_MAX = 30.0
MAX_FAST_FAILURES = 5  # fast failures in a row before giving up
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
LOOP_SLICE = 0.1

DEFAULTS = {
    "inputs": "tcp://127.0.0.1:5555",
    "publish": "tcp://127.0.0.1:5556",
    "snapshot_interval": 10.0,
    "split_interval": 30.0,
    "fill_interval": 0.5,
    "fill_servers": 2,
    "accounts": 5,
    "journal": "data/controller.journal",
    "log_level": "INFO",
}


@dataclass
class Child:
    """One supervised process and its restart state (stopped, running, backoff, failed)."""

    name: str
    argv: list[str]
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    fast_failures: int = 0
    restart_at: float | None = None
    stopped: bool = False  # set when the launcher stops it: not restarted
    restarts: int = 0
    partial: dict[int, bytes] = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Supervisor:
    """Runs children in order and keeps them up; `run` returns the launcher's exit code."""

    def __init__(
        self, children: list[Child], out: TextIO = sys.stdout, err: TextIO = sys.stderr
    ) -> None:
        self.children = children
        self.out = out
        self.err = err
        self.selector = selectors.DefaultSelector()
        self.closed_outputs: set[TextIO] = set()
        self.width = max(len(c.name) for c in children)

    def run(self, stop: StopFlag) -> int:
        code = 0
        try:
            for child in self.children:
                self.start(child)
            while not stop:
                self.relay(LOOP_SLICE)
                if not self.supervise():
                    code = 1
                    break
            if stop:
                log.info("stopping (%s)", stop.signal_name or "asked")
        finally:  # whatever happened here, no child outlives the launcher
            self.stop_all()
        return code

    def start(self, child: Child) -> None:
        process = subprocess.Popen(
            child.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        child.process, child.started_at, child.restart_at = process, time.monotonic(), None
        for stream, target in ((process.stdout, self.out), (process.stderr, self.err)):
            os.set_blocking(stream.fileno(), False)
            self.selector.register(stream, selectors.EVENT_READ, (child, target))
        log.info("started %s (pid %d)", child.name, process.pid)

    def supervise(self) -> bool:
        """Notice exits and restart what is due; False when a child keeps failing."""
        now = time.monotonic()
        for child in self.children:
            if child.stopped:
                continue
            if child.process is None:
                if child.restart_at is not None and now >= child.restart_at:
                    child.restarts += 1
                    self.start(child)
                continue
            code = child.process.poll()
            if code is None:
                if now - child.started_at >= STARTED_AFTER:
                    child.fast_failures = 0
                continue
            self.reap(child)
            # Every process here is a service: any exit, even a clean one, is restarted.
            if now - child.started_at < STARTED_AFTER:
                child.fast_failures += 1
            if child.fast_failures >= MAX_FAST_FAILURES:
                log.error("%s failed %d times in a row; giving up", child.name, child.fast_failures)
                return False
            delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** max(0, child.fast_failures - 1))
            child.restart_at = now + delay
            log.warning("%s exited with code %s; restarting in %.1f s", child.name, code, delay)
        return True

    def reap(self, child: Child) -> None:
        """Forget a dead child's pipes after relaying what is left in them."""
        process = child.process
        assert process is not None
        for stream in (process.stdout, process.stderr):
            self._read(stream, child, self.out if stream is process.stdout else self.err)
            self._flush_partial(stream, child, self.out if stream is process.stdout else self.err)
            self.selector.unregister(stream)
            stream.close()
        process.wait()
        child.process = None

    def stop_all(self) -> None:
        """Reverse start order: SIGTERM the group, wait a grace period, then SIGKILL."""
        for child in reversed(self.children):
            child.stopped = True
            if child.process is None:
                continue
            self._signal(child, signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE
            while child.alive and time.monotonic() < deadline:
                self.relay(0.05)
            if child.alive:
                log.warning("%s did not stop within %.0f s; killing it", child.name, STOP_GRACE)
                self._signal(child, signal.SIGKILL)
            code = child.process.wait()
            # The group may hold grandchildren; make sure none outlive us.
            self._signal(child, signal.SIGKILL)
            self.reap(child)
            log.info("%s stopped (exit %s)", child.name, code)

    def relay(self, timeout: float) -> None:
        """Copy whole lines of child output to ours, prefixed with the child's name."""
        for key, _ in self.selector.select(timeout):
            child, target = key.data
            self._read(key.fileobj, child, target)

    def _read(self, stream, child: Child, target: TextIO) -> None:
        try:
            data = os.read(stream.fileno(), 65536)
        except BlockingIOError:
            return
        while data:
            lines = (child.partial.pop(stream.fileno(), b"") + data).split(b"\n")
            child.partial[stream.fileno()] = lines.pop()
            prefix = f"{child.name:<{self.width}} | "
            self._write(
                target, "".join(f"{prefix}{line.decode(errors='replace')}\n" for line in lines)
            )
            try:
                data = os.read(stream.fileno(), 65536)
            except BlockingIOError:
                return

    def _flush_partial(self, stream, child: Child, target: TextIO) -> None:
        rest = child.partial.pop(stream.fileno(), b"")
        if rest:
            self._write(target, f"{child.name:<{self.width}} | {rest.decode(errors='replace')}\n")

    def _write(self, target: TextIO, text: str) -> None:
        """Relay output; if our own output is gone (a closed pipe), drop it and carry on."""
        if target in self.closed_outputs:
            return
        try:
            target.write(text)
            target.flush()
        except (BrokenPipeError, ValueError, OSError):
            self.closed_outputs.add(target)
            log.warning("output closed; children's output is no longer shown")

    @staticmethod
    def _signal(child: Child, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.process.pid, signum)


def build_children(args: argparse.Namespace) -> list[Child]:
    """The system in start order: controller, positions, AUM server, fill servers."""
    python = [sys.executable, "-m"]
    shared = ["--log-level", args.log_level] + (["--config", args.config] if args.config else [])
    connect = ["--controller", args.inputs, "--acks", args.publish]
    children = [
        Child(
            "controller",
            python
            + [
                "controller",
                *shared,
                "--inputs",
                args.inputs,
                "--publish",
                args.publish,
                "--snapshot-interval",
                str(args.snapshot_interval),
                "--journal",
                args.journal,
            ],
        ),
        Child("positions", python + ["positions", *shared, "--controller", args.publish]),
        Child(
            "aumsim",
            python
            + [
                "aumsim",
                *shared,
                *connect,
                "--interval",
                str(args.split_interval),
                "--accounts",
                str(args.accounts),
                "--source",
                "aumsim",
            ],
        ),
    ]
    for n in range(1, args.fill_servers + 1):
        children.append(
            Child(
                f"fillsim-{n}",
                python
                + [
                    "fillsim",
                    *shared,
                    *connect,
                    "--interval",
                    str(args.fill_interval),
                    "--source",
                    f"fillsim-{n}",
                ],
            )
        )
    return children


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="launcher", description="Run the whole allocation system.")
    config.add_common_flags(p)
    p.add_argument("--inputs", metavar="ENDPOINT", help="controller input endpoint")
    p.add_argument("--publish", metavar="ENDPOINT", help="controller publish endpoint")
    p.add_argument("--snapshot-interval", type=float, metavar="S", help="default 10")
    p.add_argument("--split-interval", type=float, metavar="S", help="default 30")
    p.add_argument("--fill-interval", type=float, metavar="S", help="mean gap, default 0.5")
    p.add_argument("--fill-servers", type=int, metavar="N", help="fill simulators, default 2")
    p.add_argument("--accounts", type=int, metavar="N", help="accounts in the split, default 5")
    p.add_argument("--journal", metavar="PATH", help="controller journal")
    return p


def main(argv: list[str] | None = None) -> int:
    args = config.settings(parser(), argv, DEFAULTS, "launcher")
    if args.fill_servers < 1:
        log.error("--fill-servers must be at least 1")
        return 2
    stop = StopFlag().install()
    code = Supervisor(build_children(args)).run(stop)
    log.info("launcher exiting with code %d", code)
    return code


if __name__ == "__main__":
    sys.exit(main())
