"""`python launcher.py`: start the whole system, keep it running, stop it cleanly.

Starts the controller, the position server, the AUM simulator and N fill simulators as
separate processes and relays their output, each line prefixed with the process's name.

Design (after honcho's Manager and circus's arbiter):

- **The restart logic is a small state machine per child** (`Child`: running, backoff,
  failed, stopped) driven by an injected clock and an injected `ProcessControl`, so it is
  tested with scripted histories on a fake clock: no real processes, no sleeps.
  `Subprocesses` is the real `ProcessControl` (subprocess, os.killpg, output relaying).
- **Restarts.** Any exit is restarted (these are services: even a clean exit), after a
  capped exponential backoff. A start counts once the child has been up `started_after`
  seconds; until then each exit is a fast failure. After `flapping_after` fast failures in
  a row a child is *flapping*: the controller keeps being retried at the capped backoff for
  as long as the launcher runs (it may be out of disk; nothing else is stopped because it
  is down) and its log goes quiet until it recovers; any other child is given up on alone
  (circus-style flapping), the rest keep running, and the launcher's exit code is then 1.
- **Stopping** (SIGINT, SIGTERM or SIGHUP) takes one grace period in total, however many
  children there are: SIGTERM goes to the senders together (fill and AUM simulators, so
  they can flush to a live controller), then the position server, then the controller.
  Each group is signalled as soon as the groups before it have exited, or at the latest at
  its share of the grace period, so the controller always gets time to checkpoint.
  Whatever is still running at the end of the grace period gets SIGKILL.
- **No orphans.** Each child runs in its own session (process group) and asks the kernel
  (Linux PR_SET_PDEATHSIG) to SIGKILL it when the launcher dies, however it dies; signal
  handlers only set a flag and every exit path stops the children.
- **One launcher per configuration.** An exclusive lock on `<journal>.launcher.lock`
  (holding the pid) is taken before any child starts; a second launcher names the
  holder's pid and exits with code 2.
- **Width.** Children get the launcher's terminal width less the output prefix as
  COLUMNS, so their tables fit once prefixed.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import enum
import fcntl
import logging
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol, TextIO

from common import config
from common.lifecycle import StopFlag

log = logging.getLogger("launcher")

STARTED_AFTER = 5.0  # seconds up before a start counts as good
BACKOFF_FIRST = 0.5  # seconds before the first restart
BACKOFF_MAX = 30.0  # the backoff never grows beyond this
FLAPPING_AFTER = 5  # fast failures in a row before a child is flapping
# One grace period for the whole stop: three stop groups of 3 s each, the senders' own
# flush time (common.sender.STOP_FLUSH), so a sender can flush before the controller stops.
STOP_GRACE = 9.0
KILL_WAIT = 5.0  # seconds to wait for SIGKILLed children to be reaped before giving up
LOOP_SLICE = 0.1  # longest the loop waits before looking at the stop flag again
READ_CHUNK = 65536
PREFIX_SEPARATOR = " | "
MIN_COLUMNS = 20  # never tell a child its terminal is narrower than this
LOCK_SUFFIX = ".launcher.lock"

EXIT_OK = 0
EXIT_GAVE_UP = 1  # a child was given up on
EXIT_CANNOT_START = 2  # bad settings, or another launcher holds the configuration

# Stop groups, stopped in this order: senders first (so they flush), then the position
# server, then the controller.
SENDERS, VIEWERS, CORE = 0, 1, 2

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
EXIT_ORPHANED = 127  # a child whose launcher died before it could ask to follow it

DEFAULTS = {
    "inputs": "tcp://127.0.0.1:5555",
    "publish": "tcp://127.0.0.1:5556",
    "snapshot_interval": 10.0,
    "split_interval": 30.0,
    "fill_interval": 0.5,
    "fill_servers": 2,
    "accounts": 5,
    "journal": "data/controller.journal",
    "http": "127.0.0.1:8080",  # the position server's web view ("" for none)
    "log_level": "INFO",
}


# --- The state machine ------------------------------------------------------------------


class State(enum.Enum):
    """Where a child is in its life under the launcher."""

    RUNNING = "running"  # a process is up (or has exited and not been noticed yet)
    BACKOFF = "backoff"  # exited; restarted at `restart_at`
    FAILED = "failed"  # given up on after flapping; never restarted
    STOPPED = "stopped"  # stopped by the launcher (or not started yet)


@dataclass(frozen=True)
class Policy:
    """How a child is restarted: backoff, when a start counts, and whether to give up."""

    started_after: float = STARTED_AFTER
    backoff_first: float = BACKOFF_FIRST
    backoff_max: float = BACKOFF_MAX
    flapping_after: int = FLAPPING_AFTER
    give_up: bool = True  # False: retried forever, at the capped backoff, even when flapping

    def delay(self, fast_failures: int) -> float:
        """Seconds before the next start: doubling from backoff_first, capped."""
        doublings = min(max(0, fast_failures - 1), 64)  # capped so the power stays small
        return min(self.backoff_max, self.backoff_first * 2**doublings)

    def flapping(self, fast_failures: int) -> bool:
        """Too many fast failures in a row: give up, or (if not allowed to) go quiet."""
        return fast_failures >= self.flapping_after


#: The controller is never abandoned while the rest of the system runs.
NEVER_GIVE_UP = Policy(give_up=False)


@dataclass
class Child:
    """One supervised process: what to run, and its restart state.

    The transition methods take the time and change only this object; the Supervisor
    does the I/O and the logging around them.
    """

    name: str
    argv: list[str]
    stop_group: int = SENDERS
    policy: Policy = Policy()
    state: State = State.STOPPED
    pid: int | None = None
    started_at: float = 0.0
    restart_at: float = 0.0
    fast_failures: int = 0

    def started(self, pid: int | None, now: float) -> None:
        """STOPPED/BACKOFF -> RUNNING (pid None: the start itself failed)."""
        self.state, self.pid, self.started_at = State.RUNNING, pid, now

    def settled(self, now: float) -> bool:
        """While running: True once, when a start after fast failures has come to count."""
        if self.fast_failures and now - self.started_at >= self.policy.started_after:
            self.fast_failures = 0
            return True
        return False

    def exited(self, now: float) -> State:
        """RUNNING -> BACKOFF, or FAILED when it flaps and may be given up on."""
        self.pid = None
        if now - self.started_at >= self.policy.started_after:
            self.fast_failures = 0
        else:
            self.fast_failures += 1
        if self.policy.give_up and self.policy.flapping(self.fast_failures):
            self.state = State.FAILED
        else:
            self.state = State.BACKOFF
            self.restart_at = now + self.policy.delay(self.fast_failures)
        return self.state

    @property
    def quiet(self) -> bool:
        """Flapping but retried anyway: routine restarts are logged at DEBUG only."""
        return self.policy.flapping(self.fast_failures)


# --- Process control --------------------------------------------------------------------


class ProcessControl(Protocol):
    """What the Supervisor needs from the operating system (faked in the tests)."""

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str], label: str) -> int:
        """Start a process in its own process group; return its pid. OSError if it cannot.

        `label` prefixes each line of its output."""

    def exit_code(self, pid: int) -> int | None:
        """None while `pid` runs; once it has exited, its code (and it is forgotten)."""

    def signal(self, pid: int, signum: int) -> None:
        """Send `signum` to the process group of `pid`; nothing if it is gone."""

    def pause(self, seconds: float) -> None:
        """Let up to `seconds` pass (the real one relays child output meanwhile)."""


@dataclass
class Pipe:
    """One output pipe of a child, relayed line by line to one of our outputs."""

    stream: IO[bytes]
    label: str
    target: TextIO
    partial: bytes = b""  # an unfinished last line
    at_end: bool = False


class Subprocesses:
    """ProcessControl over subprocess: sessions, death signals, and output relaying.

    Each child's stdout and stderr are pipes read without blocking; whole lines go to our
    stdout and stderr with the child's label in front. If our own output is closed (a
    pipe reader that went away) its lines are dropped and everything else carries on.
    """

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        self.selector = selectors.DefaultSelector()
        self.processes: dict[int, tuple[subprocess.Popen[bytes], list[Pipe]]] = {}
        self.closed_outputs: set[int] = set()  # ids of our outputs that failed

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str], label: str) -> int:
        process = subprocess.Popen(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=dict(env),
            preexec_fn=die_with_parent(os.getpid()) if sys.platform == "linux" else None,
        )
        assert process.stdout is not None and process.stderr is not None
        pipes = [Pipe(process.stdout, label, self.out), Pipe(process.stderr, label, self.err)]
        for pipe in pipes:
            os.set_blocking(pipe.stream.fileno(), False)
            self.selector.register(pipe.stream, selectors.EVENT_READ, pipe)
        self.processes[process.pid] = (process, pipes)
        return process.pid

    def exit_code(self, pid: int) -> int | None:
        """Look without reaping (WNOWAIT); on exit, SIGKILL what is left of its process
        group while the exited child still holds the id, then reap it and relay the rest
        of its output."""
        process, pipes = self.processes[pid]
        exited = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if exited is None:
            return None
        self.signal(pid, signal.SIGKILL)  # grandchildren do not outlive their parent
        code = process.wait()
        for pipe in pipes:
            if not pipe.at_end:
                self._read(pipe)
            self._end(pipe)
            pipe.stream.close()
        del self.processes[pid]
        return code

    def signal(self, pid: int, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signum)

    def pause(self, seconds: float) -> None:
        for key, _ in self.selector.select(max(0.0, seconds)):
            self._read(key.data)

    def _read(self, pipe: Pipe) -> None:
        """Relay every whole line waiting in the pipe; stop watching it at end of file."""
        while True:
            try:
                data = os.read(pipe.stream.fileno(), READ_CHUNK)
            except BlockingIOError:
                return
            if not data:  # closed by the child: nothing more will come
                self._end(pipe)
                return
            lines = (pipe.partial + data).split(b"\n")
            pipe.partial = lines.pop()
            self._write(pipe.target, "".join(self._line(pipe, line) for line in lines))

    def _end(self, pipe: Pipe) -> None:
        """Relay an unfinished last line, and stop watching the pipe (once)."""
        if pipe.at_end:
            return
        if pipe.partial:
            self._write(pipe.target, self._line(pipe, pipe.partial))
            pipe.partial = b""
        self.selector.unregister(pipe.stream)
        pipe.at_end = True

    @staticmethod
    def _line(pipe: Pipe, line: bytes) -> str:
        return f"{pipe.label}{line.decode(errors='replace')}\n"

    def _write(self, target: TextIO, text: str) -> None:
        """Relay output; if our own output is gone, drop it from then on and carry on."""
        if id(target) in self.closed_outputs or not text:
            return
        try:
            target.write(text)
            target.flush()
        except (OSError, ValueError):
            self.closed_outputs.add(id(target))
            silence(target)
            log.warning("output closed; children's output to it is no longer shown")


def silence(stream: TextIO) -> None:
    """Point a closed output at /dev/null, so flushing what is buffered (at exit too) works."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)


def die_with_parent(parent: int) -> Callable[[], None]:
    """A preexec_fn (run in the child between fork and exec) that makes the kernel SIGKILL
    the child when its parent dies, however the parent dies (Linux PR_SET_PDEATHSIG).

    The death signal follows the parent *thread* that forked: the launcher forks from its
    only thread. If the parent died before the call, getppid() no longer names it: the
    child exits at once instead of running as an orphan.
    """
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork, not in the child
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int

    def preexec() -> None:
        if prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:
            os._exit(EXIT_ORPHANED)

    return preexec


def terminal_columns() -> int | None:
    """Our terminal's width (COLUMNS if set), or None when there is no terminal."""
    return shutil.get_terminal_size(fallback=(0, 0)).columns or None


# --- The supervisor ---------------------------------------------------------------------


class SupportsBool(Protocol):
    def __bool__(self) -> bool: ...


class Supervisor:
    """Starts the children in order, keeps them up, and stops them all in one grace period.

    `run` returns the launcher's exit code: EXIT_GAVE_UP if any child was given up on.
    """

    def __init__(
        self,
        children: list[Child],
        control: ProcessControl,
        clock: Callable[[], float] = time.monotonic,
        grace: float = STOP_GRACE,
        columns: Callable[[], int | None] = terminal_columns,
    ) -> None:
        self.children = children
        self.control = control
        self.clock = clock
        self.grace = grace
        self.columns = columns
        self.name_width = max(len(c.name) for c in children)

    def run(self, stop: SupportsBool) -> int:
        """Start everything, supervise until `stop` is true, then stop everything."""
        try:
            for child in self.children:
                self.start(child)
            while not stop:
                self.control.pause(self.idle_time())
                self.tick()
            log.info("stopping (%s)", getattr(stop, "signal_name", None) or "asked")
        finally:  # whatever happened here, no child outlives the launcher
            self.stop_all()
        failed = [c.name for c in self.children if c.state is State.FAILED]
        if failed:
            log.error("gave up on %s", ", ".join(failed))
            return EXIT_GAVE_UP
        return EXIT_OK

    def label(self, child: Child) -> str:
        """The prefix of each line of `child`'s output."""
        return f"{child.name:<{self.name_width}}{PREFIX_SEPARATOR}"

    def environment(self, child: Child) -> dict[str, str]:
        """Our environment, unbuffered, with the width a prefixed line has left (COLUMNS)."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        columns = self.columns()
        if columns is not None:
            env["COLUMNS"] = str(max(MIN_COLUMNS, columns - len(self.label(child))))
        return env

    def start(self, child: Child) -> None:
        """Start `child` now; a start that fails counts as an immediate exit."""
        now = self.clock()
        try:
            pid = self.control.start(
                child.name, child.argv, self.environment(child), self.label(child)
            )
        except (OSError, subprocess.SubprocessError) as exc:
            child.started(None, now)
            self.exited(child, f"could not be started ({exc})", now)
            return
        child.started(pid, now)
        log.log(
            logging.DEBUG if child.quiet else logging.INFO, "started %s (pid %d)", child.name, pid
        )

    def idle_time(self) -> float:
        """How long the loop may wait: a slice, or less if a restart is due sooner."""
        now = self.clock()
        due = [c.restart_at - now for c in self.children if c.state is State.BACKOFF]
        return max(0.0, min([LOOP_SLICE, *due]))

    def tick(self) -> None:
        """Notice exits, restart what is due, and note starts that have come to count."""
        now = self.clock()
        for child in self.children:
            if child.state is State.RUNNING and child.pid is not None:
                code = self.control.exit_code(child.pid)
                if code is not None:
                    self.exited(child, f"exited with code {code}", now)
                elif child.settled(now):
                    log.info(
                        "%s has stayed up %.0f s: it is running again",
                        child.name,
                        child.policy.started_after,
                    )
            elif child.state is State.BACKOFF and now >= child.restart_at:
                self.start(child)

    def exited(self, child: Child, what: str, now: float) -> None:
        """Move an exited child on (`what` happened to it), logging once per change of
        state; a flapping child that is retried anyway is logged at DEBUG until it recovers.
        """
        was_quiet = child.quiet
        state = child.exited(now)
        failures = f"{child.fast_failures} fast failures in a row"
        if state is State.FAILED:
            log.error(
                "%s %s, %s; giving up on it (the rest keep running)", child.name, what, failures
            )
        elif child.quiet and not was_quiet:
            log.error(
                "%s %s, %s; retrying for as long as the launcher runs, every %.0f s at most "
                "(attempts now logged at DEBUG)",
                child.name,
                what,
                failures,
                child.policy.backoff_max,
            )
        else:
            log.log(
                logging.DEBUG if child.quiet else logging.WARNING,
                "%s %s; restarting in %.1f s",
                child.name,
                what,
                child.restart_at - now,
            )

    def stop_all(self) -> None:
        """Stop every child within one grace period: SIGTERM by stop group, then SIGKILL.

        Group k of n is signalled once the groups before it have all exited, or at the
        latest k/n of the way through the grace period. At its end, whatever still runs
        is killed. Children waiting to restart are simply not restarted.
        """
        start = self.clock()
        deadline = start + self.grace
        groups = [
            [c for c in self.children if c.stop_group == g]
            for g in sorted({c.stop_group for c in self.children})
        ]
        latest = [start + self.grace * k / len(groups) for k in range(len(groups))]
        for child in self.children:
            if child.state is State.BACKOFF:
                child.state = State.STOPPED
        signalled = 0  # groups signalled so far
        while self._reap_stopping():
            now = self.clock()
            if now >= deadline:
                self._kill_stragglers()
                self._await_exits(now + KILL_WAIT)
                return
            while signalled < len(groups) and (
                now >= latest[signalled]
                or not self._running([c for group in groups[:signalled] for c in group])
            ):
                self._terminate(groups[signalled])
                signalled += 1
            self.control.pause(min(LOOP_SLICE, min([deadline, *latest[signalled:]]) - now))

    def _await_exits(self, until: float) -> None:
        """After SIGKILL: wait for the exits, but never hang on a process that will not go."""
        while self._reap_stopping():
            now = self.clock()
            if now >= until:
                names = ", ".join(c.name for c in self._running(self.children))
                log.error("%s still not gone after SIGKILL; leaving them", names)
                return
            self.control.pause(min(LOOP_SLICE, until - now))

    @staticmethod
    def _running(children: list[Child]) -> list[Child]:
        return [c for c in children if c.state is State.RUNNING]

    def _terminate(self, group: list[Child]) -> None:
        running = self._running(group)
        if running:
            log.info("sending SIGTERM to %s", ", ".join(c.name for c in running))
        for child in running:
            self._signal(child, signal.SIGTERM)

    def _kill_stragglers(self) -> None:
        stragglers = self._running(self.children)
        log.warning(
            "%s did not stop within the %.1f s grace period; sending SIGKILL",
            ", ".join(c.name for c in stragglers),
            self.grace,
        )
        for child in stragglers:
            self._signal(child, signal.SIGKILL)

    def _signal(self, child: Child, signum: int) -> None:
        if child.pid is not None:
            self.control.signal(child.pid, signum)

    def _reap_stopping(self) -> bool:
        """While stopping, every exit is final; True while any child still runs."""
        for child in self._running(self.children):
            code = None if child.pid is None else self.control.exit_code(child.pid)
            if child.pid is None or code is not None:
                child.state, child.pid = State.STOPPED, None
                log.info("%s stopped (exit %s)", child.name, code)
        return bool(self._running(self.children))


# --- One launcher per configuration -----------------------------------------------------


class LockedError(RuntimeError):
    """Another launcher holds the configuration's lock."""


@contextlib.contextmanager
def configuration_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive, non-blocking flock on `path` (which records our pid) throughout.

    The lock, not the file, is what counts: the kernel drops it however we die, so a
    left-over file never blocks a later launcher. The file is not inherited by children.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise LockedError(
                f"another launcher (pid {holder}) is running this configuration "
                f"(lock {path}); not starting"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


# --- The system and the command line ----------------------------------------------------


def build_children(args: argparse.Namespace) -> list[Child]:
    """The system in start order: controller, positions, AUM server, fill servers."""
    python = [sys.executable, "-m"]
    shared = ["--log-level", args.log_level] + (["--config", args.config] if args.config else [])
    connect = ["--controller", args.inputs, "--acks", args.publish]
    controller = [
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
    ]
    aumsim = [
        "aumsim",
        *shared,
        *connect,
        "--interval",
        str(args.split_interval),
        "--accounts",
        str(args.accounts),
        "--source",
        "aumsim",
    ]
    children = [
        Child("controller", python + controller, CORE, NEVER_GIVE_UP),
        Child(
            "positions",
            python + ["positions", *shared, "--controller", args.publish, "--http", args.http],
            VIEWERS,
        ),
        Child("aumsim", python + aumsim, SENDERS),
    ]
    for n in range(1, args.fill_servers + 1):
        fillsim = [
            "fillsim",
            *shared,
            *connect,
            "--interval",
            str(args.fill_interval),
            "--source",
            f"fillsim-{n}",
        ]
        children.append(Child(f"fillsim-{n}", python + fillsim, SENDERS))
    return children


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="launcher", description="Run the whole allocation system.", allow_abbrev=False
    )
    config.add_common_flags(p)
    p.add_argument("--inputs", metavar="ENDPOINT", help="controller input endpoint")
    p.add_argument("--publish", metavar="ENDPOINT", help="controller publish endpoint")
    p.add_argument("--snapshot-interval", type=float, metavar="S", help="default 10")
    p.add_argument("--split-interval", type=float, metavar="S", help="default 30")
    p.add_argument("--fill-interval", type=float, metavar="S", help="mean gap, default 0.5")
    p.add_argument("--fill-servers", type=int, metavar="N", help="fill simulators, default 2")
    p.add_argument("--accounts", type=int, metavar="N", help="accounts in the split, default 5")
    p.add_argument("--journal", metavar="PATH", help="controller journal")
    p.add_argument(
        "--http", metavar="HOST:PORT", help='web view, default 127.0.0.1:8080 ("" for none)'
    )
    return p


def install_stop_signals(stop: StopFlag) -> StopFlag:
    """SIGINT and SIGTERM (StopFlag's own) and SIGHUP (a closed terminal) all stop us."""

    def on_hangup(signum: int, _frame: object) -> None:
        stop.signal_name = signal.Signals(signum).name
        stop.set()

    stop.install()
    signal.signal(signal.SIGHUP, on_hangup)
    return stop


def main(argv: list[str] | None = None) -> int:
    args = config.settings(parser(), argv, DEFAULTS, "launcher")
    if args.fill_servers < 1:
        log.error("--fill-servers must be at least 1")
        return EXIT_CANNOT_START
    stop = install_stop_signals(StopFlag())
    try:
        with configuration_lock(Path(args.journal + LOCK_SUFFIX)):
            if args.http:
                log.info("web view (the position server's) at http://%s/", args.http)
            code = Supervisor(build_children(args), Subprocesses()).run(stop)
    except LockedError as exc:
        print(f"launcher: {exc}", file=sys.stderr)
        return EXIT_CANNOT_START
    log.info("launcher exiting with code %d", code)
    return code


if __name__ == "__main__":
    sys.exit(main())
