"""Code shared by the benchmarks: machine info, results, tables, deadlines, subprocesses
(the controller and the bare PULL in bench/bare.py) on ipc:// endpoints, and messages.

Every wait here ends on a message, a poll or a deadline; none is a fixed sleep.

What the project already has is imported, not copied. Splits are aumsim's own
(aumsim.splits), children start through the tests' `python_module` (tests/helpers.py: from
the root, unbuffered, the root on PYTHONPATH; tests/ has no __init__, and with the root first
on sys.path, which bench/_paths.py sees to, `tests.helpers` imports as a namespace package),
events decode with common.protocol.read_event. Kept here, as the tests have no use for them:
logs in files rather than reader threads in the measuring process, a SIGTERM stop (a clean
stop writes the checkpoint), a py-spy wrapper, deadlines that fail early when a child dies,
and raw frames, so that only the snapshots that matter are decoded.

The controller runs its compiled hot path when that is built (controller.native) and its
pure Python engine otherwise; --engine picks one or both, and the Python engine is forced
with FILLALLOC_NATIVE=0 in the controller's environment. Which one ran is checked in the
controller process itself (Controller.check_engine: its compiled modules in /proc/PID/maps),
as the bench process's own import of controller.native can differ from the controller's.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import platform
import random
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import msgpack
import zmq
from rich.console import Console
from rich.table import Table

from aumsim.splits import account_names, random_split
from common.protocol import (
    DEFAULT_TICKERS,
    TOPIC_POSITIONS,
    ack_topic,
    fill_message,
    pack,
    read_event,
    split_message,
)
from tests.helpers import ROOT, python_module

BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
SPLIT_SOURCE = "bench-aum"
FILL_SOURCE = "bench-fills"
NATIVE_SWITCH = "FILLALLOC_NATIVE"  # "0" in the controller's environment: pure Python engine
NATIVE, PYTHON = "native", "python"
BOTH = "both"

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # /proc/PID/stat counts CPU time in these
COMPILED_MODULE = re.compile(r"/controller/[^/]+\.so$")  # the hot path's extensions

# Wide enough for the tables when the output is a file or a pipe (rich assumes 80 then).
console = Console(width=None if sys.stdout.isatty() else 160)

Frames = list[bytes]


# -- command line, machine, results, tables ------------------------------------------------
def parser(description: str | None) -> argparse.ArgumentParser:
    """The common options; the description is the first paragraph of `description` (a
    script passes its __doc__, whose usage lines --help shows anyway)."""
    p = argparse.ArgumentParser(description=(description or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a fast smoke run (small sizes)")
    p.add_argument("--note", action="append", default=[], help="a remark kept in the result")
    return p


def resolve(args: argparse.Namespace, **sizes: tuple[Any, Any]) -> argparse.Namespace:
    """Fill each option left at None with its (quick, full) default."""
    for name, (quick, full) in sizes.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    return args


def native_built() -> bool:
    """Whether the compiled hot path can run here: controller.native exists and its
    available() says so (a module without available() does not count)."""
    try:
        native = importlib.import_module("controller.native")
    except ImportError:
        return False
    available = getattr(native, "available", None)
    return callable(available) and bool(available())


def add_engine_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--engine",
        choices=[NATIVE, PYTHON, BOTH],
        help="the controller's engine (default: both when the compiled hot path is built, "
        "else python)",
    )


def engines(choice: str | None) -> list[str]:
    """The engines to run for --engine `choice`; exits if it asks for an unbuilt one."""
    built = native_built()
    if choice is None:
        return [NATIVE, PYTHON] if built else [PYTHON]
    if choice != PYTHON and not built:
        raise SystemExit(
            f"--engine {choice}: the compiled hot path is not built here "
            "(controller.native missing or not available; `pip install -e .` builds it)"
        )
    return [NATIVE, PYTHON] if choice == BOTH else [choice]


def engine_env(engine: str) -> dict[str, str | None]:
    """The controller's environment changes for `engine` (None removes a variable)."""
    return {NATIVE_SWITCH: "0" if engine == PYTHON else None}


def machine_info() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpuinfo_field("model name"),
        "memory_mb": _meminfo_kb("MemTotal") // 1024,
        "loadavg": list(os.getloadavg()),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "msgpack": ".".join(map(str, msgpack.version)),
        "tmp_filesystem": filesystem_of(tempfile.gettempdir()),
        "git": _git_revision(),
    }


def _cpuinfo_field(field: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == field:
                return value.strip()
    except OSError:
        pass
    return None


def _meminfo_kb(field: str) -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def filesystem_of(path: str | Path) -> str | None:
    """The filesystem type of the mount holding `path` (fsync is free on tmpfs)."""
    path = os.path.realpath(path)
    best, kind = "", None
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mount, fstype, *_ = line.split()
            if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) > len(
                best
            ):
                best, kind = mount, fstype
    except OSError:
        pass
    return kind


def _git_revision() -> str | None:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return None
    return f"{head}{'+dirty' if dirty else ''}" if head else None


class Run:
    """One benchmark run: machine info at the start, the JSON result file at the end."""

    def __init__(self, name: str, args: argparse.Namespace) -> None:
        self.name = name
        self.params = {k: v for k, v in vars(args).items()}
        self.machine = machine_info()
        self.started = datetime.now(UTC)
        self.clock = time.perf_counter()
        console.print(
            f"[bold]{name}[/] {'(quick) ' if args.quick else ''}on {self.machine['cpu_model']} "
            f"x{self.machine['cpu_count']}, Python {self.machine['python']}, "
            f"load {self.machine['loadavg'][0]:.2f}"
        )

    def finish(self, results: dict[str, Any]) -> Path:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{self.name}-{self.started.strftime('%Y%m%dT%H%M%SZ')}.json"
        revision = _git_revision()
        if revision != self.machine["git"]:
            console.print(
                f"[red]the code changed during the run: {self.machine['git']} -> {revision}"
            )
        body = {
            "benchmark": self.name,
            "started_utc": self.started.isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - self.clock, 3),
            "machine": self.machine,
            "loadavg_end": list(os.getloadavg()),
            "git_end": revision,
            "params": self.params,
            "results": results,
        }
        path.write_text(json.dumps(body, indent=2) + "\n")
        console.print(f"result written to {path.relative_to(ROOT)}")
        return path


def fmt(value: Any, digits: int = 3) -> str:
    """Numbers for tables: thousands separators, `digits` significant-ish decimals."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0 or abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:,.1f}"
        return f"{value:.{digits}g}"
    return str(value)


def print_table(
    title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], caption: str | None = None
) -> None:
    widest = max(len(title), len(caption or ""))
    table = Table(
        title=title,
        caption=caption,
        title_justify="left",
        caption_justify="left",
        min_width=min(widest, console.width),
    )
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(fmt(cell) for cell in row))
    console.print(table)


def percentiles(values: Sequence[float], points: Sequence[float]) -> list[float]:
    """Nearest-rank percentiles (points in 0..100) of `values`."""
    ordered = sorted(values)
    n = len(ordered)
    return [ordered[min(n - 1, max(0, math.ceil(p * n / 100) - 1))] for p in points]


# -- deadlines and processes ---------------------------------------------------------------
class Deadline:
    """A time limit for a wait; also fails early if a watched process has died."""

    def __init__(self, seconds: float, what: str, watch: Iterable[Proc] = ()) -> None:
        self.end = time.monotonic() + seconds
        self.seconds = seconds
        self.what = what
        self.watch = list(watch)

    def ms(self, cap: int = 100) -> int:
        """Milliseconds to wait next (at most `cap`); raises once time is up."""
        for proc in self.watch:
            proc.check()
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"timed out after {self.seconds} s waiting for {self.what}")
        return max(1, min(cap, int(left * 1000)))


class Proc:
    """`python -m module args`, started as the tests start one (tests.helpers.python_module);
    stderr, and stdout unless piped, go to a log file in `workdir`."""

    def __init__(
        self,
        module: str,
        args: Sequence[str],
        workdir: Path,
        name: str,
        pipe_stdout: bool = False,
        wrapper: Sequence[str] = (),
        env: dict[str, str | None] | None = None,
    ) -> None:
        """`wrapper` (e.g. py-spy record ... --) runs the same command under that program;
        `env` sets (or, with None, removes) variables of the child's environment."""
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.spawned = time.perf_counter()
        stdout = subprocess.PIPE if pipe_stdout else self._log
        if wrapper or env:  # python_module takes neither: the same command, by hand
            environment = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
            for key, value in (env or {}).items():
                if value is None:
                    environment.pop(key, None)
                else:
                    environment[key] = value
            self.process = subprocess.Popen(
                [*wrapper, sys.executable, "-m", module, *args],
                cwd=ROOT,
                stdout=stdout,
                stderr=self._log,
                env=environment,
            )
        else:
            self.process = python_module(module, *args, stdout=stdout, stderr=self._log)

    @property
    def pid(self) -> int:
        """The process measured: the child itself, unless it only wraps it (see Controller)."""
        return self.process.pid

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def check(self) -> None:
        code = self.process.poll()
        if code is not None:
            tail = "\n".join(self.log_text().splitlines()[-20:])
            raise RuntimeError(f"{self.name} exited with code {code}:\n{tail}")

    def read_line(self, deadline: Deadline) -> str:
        """The next line of the child's stdout (started with pipe_stdout)."""
        stream = self.process.stdout
        if stream is None:
            raise RuntimeError(f"{self.name} was not started with pipe_stdout")
        while not select.select([stream], [], [], deadline.ms() / 1000)[0]:
            pass
        line = stream.readline().decode()
        if not line:
            self.check()
            raise RuntimeError(f"{self.name} closed its stdout")
        return line.strip()

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far, all its threads (/proc/PID/stat)."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()  # the name may hold spaces
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime

    def status_kb(self, field: str = "VmRSS") -> int:
        """A memory figure (VmRSS, VmHWM, ...) from /proc/PID/status, in kB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise KeyError(field)

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (a clean stop for the controller), then SIGKILL if it does not go."""
        if self.process.poll() is None:
            try:
                pid = self.pid
            except (OSError, RuntimeError):  # a wrapper whose child is already gone
                pid = self.process.pid
            os.kill(pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()
        return self.process.returncode

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def workdir() -> Iterator[Path]:
    """A temporary directory for sockets, journals and logs, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="fillbench-") as path:
        yield Path(path)


def endpoint(directory: Path, name: str) -> str:
    return f"ipc://{directory}/{name}"


class Controller(Proc):
    """`python -m controller` on ipc:// endpoints in `directory`, journal there by default;
    `engine` None leaves the controller's own choice (native when built), else NATIVE or
    PYTHON; `fsync_interval` None leaves the controller's default."""

    def __init__(
        self,
        directory: Path,
        snapshot_interval: float,
        fsync: str = "always",
        checkpoint_interval: float = 60.0,
        journal: Path | None = None,
        name: str = "controller",
        wrapper: Sequence[str] = (),
        engine: str | None = None,
        fsync_interval: float | None = None,
    ) -> None:
        self.wrapped = bool(wrapper)
        self.engine = engine
        self._pid: int | None = None
        self.inputs = endpoint(directory, f"{name}-in")
        self.publish = endpoint(directory, f"{name}-pub")
        self.journal = journal or directory / f"{name}.journal"
        args = [
            "--inputs",
            self.inputs,
            "--publish",
            self.publish,
            "--snapshot-interval",
            str(snapshot_interval),
            "--journal",
            str(self.journal),
            "--fsync",
            fsync,
            "--checkpoint-interval",
            str(checkpoint_interval),
        ]
        if fsync_interval is not None:
            args += ["--fsync-interval", str(fsync_interval)]
        env = engine_env(engine) if engine is not None else None
        super().__init__("controller", args, directory, name, wrapper=wrapper, env=env)

    def compiled_modules(self) -> list[str]:
        """The controller package's compiled extensions (controller/*.so) that the process
        has loaded, from /proc/PID/maps: the hot path is in use only if it is loaded."""
        found = set()
        for line in Path(f"/proc/{self.pid}/maps").read_text().splitlines():
            parts = line.split(maxsplit=5)  # address perms offset dev inode [path]
            if len(parts) == 6 and COMPILED_MODULE.search(parts[5]):
                found.add(parts[5])
        return sorted(found)

    def check_engine(self) -> list[str]:
        """Fail if the native engine was asked for and no compiled module is loaded; warn if
        the Python one was and one is. Returns the compiled modules loaded."""
        loaded = self.compiled_modules()
        if self.engine == NATIVE and not loaded:
            raise RuntimeError(
                f"{self.name}: asked for the native engine, but the controller loaded no "
                "compiled module of its package (controller/*.so): it runs pure Python"
            )
        if self.engine == PYTHON and loaded:
            console.print(
                f"[red]{self.name}: {NATIVE_SWITCH}=0, yet the controller loaded {loaded}"
            )
        return loaded

    @property
    def pid(self) -> int:
        """The controller's pid, also when a wrapper (py-spy record --) started it."""
        if not self.wrapped:
            return self.process.pid
        if self._pid is None:
            tasks = Path(f"/proc/{self.process.pid}/task")
            children = [
                int(c) for t in tasks.iterdir() for c in (t / "children").read_text().split()
            ]
            if len(children) != 1:
                raise RuntimeError(f"{self.name}: wrapper has children {children}, expected one")
            self._pid = children[0]
        return self._pid


class Bare(Proc):
    """bench/bare.py: a sink (PULL + decode N) or a forwarder (PULL -> PUB as-is)."""

    def __init__(self, directory: Path, mode: str, count: int = 0) -> None:
        self.inputs = endpoint(directory, f"{mode}-in")
        self.publish = endpoint(directory, f"{mode}-pub")
        args = [mode, "--inputs", self.inputs]
        args += ["--publish", self.publish] if mode == "forward" else ["--count", str(count)]
        super().__init__("bench.bare", args, directory, mode, pipe_stdout=True)

    def wait_ready(self, seconds: float = 30.0) -> None:
        line = self.read_line(Deadline(seconds, f"{self.name} to bind", [self]))
        if line != "ready":
            raise RuntimeError(f"{self.name} said {line!r}, expected 'ready'")

    def result(self, seconds: float) -> dict[str, Any]:
        return json.loads(self.read_line(Deadline(seconds, f"{self.name}'s result", [self])))


# -- sockets and events --------------------------------------------------------------------
class Client:
    """The benchmark's own ZeroMQ context and sockets (closed with linger 0)."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()

    def push(self, address: str) -> zmq.Socket:
        sock = self.ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.RECONNECT_IVL, 5)  # an endpoint bound later is found quickly
        sock.connect(address)
        return sock

    def sub(self, address: str, *topics: bytes) -> zmq.Socket:
        sock = self.ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.RECONNECT_IVL, 5)
        sock.setsockopt(zmq.RCVHWM, 0)  # keep everything: the bench decides what is stale
        for topic in topics:
            sock.setsockopt(zmq.SUBSCRIBE, topic)
        sock.connect(address)
        return sock

    def close(self) -> None:
        self.ctx.destroy(linger=0)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def drain(sock: zmq.Socket, timeout_ms: int = 0) -> list[Frames]:
    """Every multipart message waiting on `sock`, waiting up to `timeout_ms` for the first."""
    batch: list[Frames] = []
    if sock.poll(timeout_ms):
        recv = sock.recv_multipart
        try:
            while True:
                batch.append(recv(zmq.NOBLOCK))
        except zmq.Again:
            pass
    return batch


def ack_for(source: str, seq: int) -> Callable[[Frames], bool]:
    """Matches an ack covering `seq` from `source` (on ack_topic(source); the body's source
    is checked too, since another source's topic may start with this one's)."""
    topic = ack_topic(source)

    def match(frames: Frames) -> bool:
        if frames[0] != topic:
            return False
        body = read_event(frames)[1]
        return body["source"] == source and body["seq"] >= seq

    return match


def wait_until(
    sub: zmq.Socket,
    match: Callable[[Frames], bool],
    deadline: Deadline,
    observe: Callable[[list[Frames], float], None] | None = None,
) -> float:
    """Wait for an event matching `match`; returns its perf_counter arrival time.
    `observe(batch, arrived)` sees every drained batch."""
    while True:
        if not sub.poll(deadline.ms()):
            continue
        arrived = time.perf_counter()
        batch = drain(sub)
        if observe is not None:
            observe(batch, arrived)
        if any(match(frames) for frames in batch):
            return arrived


def send_until(
    push: zmq.Socket,
    sub: zmq.Socket,
    raw: bytes,
    match: Callable[[Frames], bool],
    deadline: Deadline,
    every_ms: int = 10,
    observe: Callable[[list[Frames], float], None] | None = None,
) -> float:
    """Send `raw` (again every `every_ms`: it must be harmless to repeat, e.g. a duplicate
    seq) until an event matching `match` arrives; returns its perf_counter arrival time.
    `observe(batch, arrived)` sees every drained batch.

    Resending covers the SUB's slow join: an answer published before our subscription
    reached the publisher is lost, the next one is not.
    """
    while True:
        with contextlib.suppress(zmq.Again):  # not connected yet and the queue is full
            push.send(raw, zmq.NOBLOCK)
        if sub.poll(deadline.ms(every_ms)):
            arrived = time.perf_counter()
            batch = drain(sub)
            if observe is not None:
                observe(batch, arrived)
            if any(match(frames) for frames in batch):
                return arrived


def wait_positions(
    sub: zmq.Socket,
    fills: int,
    deadline: Deadline,
    observe: Callable[[list[Frames], float], None] | None = None,
) -> tuple[float, dict[str, Any]]:
    """Wait for a positions snapshot counting at least `fills` allocated fills.

    Returns its arrival time (perf_counter) and the snapshot; `observe(batch, arrived)` sees
    every drained batch first. Only the newest snapshot of a batch is decoded (counts only
    grow), so a backlog of big snapshots does not delay the answer.
    """
    while True:
        if not sub.poll(deadline.ms()):
            continue
        arrived = time.perf_counter()
        batch = drain(sub)
        if observe is not None:
            observe(batch, arrived)
        snapshots = [frames for frames in batch if frames[0] == TOPIC_POSITIONS]
        if snapshots:
            snapshot = read_event(snapshots[-1])[1]
            if snapshot["counts"]["fills"] >= fills:
                return arrived, snapshot


def connect_with_split(
    client: Client, controller: Controller, accounts: int, *topics: bytes
) -> tuple[zmq.Socket, zmq.Socket]:
    """PUSH + SUB (the split source's acks and `topics`) to `controller`, with a split of
    `accounts` (one message, up to 10,000 accounts) applied."""
    push = client.push(controller.inputs)
    sub = client.sub(controller.publish, ack_topic(SPLIT_SOURCE), *topics)
    raw = pack(split_message(SPLIT_SOURCE, 1, make_split(accounts)))
    deadline = Deadline(60, f"the controller to ack a {accounts}-account split", [controller])
    send_until(push, sub, raw, ack_for(SPLIT_SOURCE, 1), deadline)
    return push, sub


# -- messages ------------------------------------------------------------------------------
def make_split(accounts: int, seed: int = 1) -> dict[str, float]:
    """A split as aumsim sends one (its own generator): `accounts` accounts ACC-..., percents
    > 0 with two decimals summing to exactly 100; the same for the same seed."""
    return random_split(random.Random(seed), account_names(accounts))


def fill_fields(count: int, seed: int = 7) -> Iterator[tuple[str, int, int]]:
    """(ticker, price in cents, quantity) for `count` fills: block sizes up to 10,000."""
    rng = random.Random(seed)
    tickers = DEFAULT_TICKERS
    for _ in range(count):
        yield rng.choice(tickers), rng.randint(1_000, 50_000), rng.randint(1, 10_000)


def fill_raws(count: int, source: str = FILL_SOURCE, first_seq: int = 1) -> Iterator[bytes]:
    """Packed fill messages with seq first_seq, first_seq + 1, ... (lazily; list() to pre-pack)."""
    for seq, (ticker, cents, quantity) in enumerate(fill_fields(count), first_seq):
        yield pack(fill_message(source, seq, ticker, cents / 100, quantity))
