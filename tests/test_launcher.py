"""The launcher with real processes and real signals: the whole system, its restarts, its
stop, no orphans however it dies, one launcher per configuration, output relaying.

The restart and stop logic itself is tested on a fake clock in test_supervisor.py.
"""

from __future__ import annotations

import io
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, Running, pid_alive, wait_for

import launcher

SYSTEM = ("controller", "positions", "aumsim", "fillsim-1", "fillsim-2")
STARTED = 30  # seconds allowed for the whole system to start on a loaded machine
STOPPED = 30  # seconds allowed for a launcher to stop (its grace period is far less)


STARTED_HERE: list[Running] = []  # launchers this test started, to show their logs


@pytest.fixture(autouse=True)
def show_launcher_logs():
    """Print the logs of the launchers a test started: pytest shows them if it fails."""
    yield
    for running in STARTED_HERE:
        print(f"--- stderr of pid {running.process.pid}:\n{running.stderr}")
    STARTED_HERE.clear()


def started(process: subprocess.Popen) -> Running:
    running = Running(process)
    STARTED_HERE.append(running)
    return running


def start_launcher(tmp_path: Path) -> Running:
    """`python launcher.py` on ipc:// endpoints and a journal in `tmp_path`, fast intervals."""
    return started(
        subprocess.Popen(
            [sys.executable, str(ROOT / "launcher.py"), *launcher_flags(tmp_path)],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    )


def launcher_flags(tmp_path: Path) -> list[str]:
    return [
        "--inputs",
        f"ipc://{tmp_path}/in",
        "--publish",
        f"ipc://{tmp_path}/pub",
        "--snapshot-interval",
        "0.5",
        "--split-interval",
        "2",
        "--fill-interval",
        "0.02",
        "--journal",
        str(tmp_path / "journal"),
        "--http",
        "",  # no web view: tests bind no fixed port
    ]


def child_pids(text: str) -> dict[str, int]:
    """The pid of every child the launcher's log says it started (the latest of each)."""
    return {name: int(pid) for name, pid in re.findall(r"started (\S+) \(pid (\d+)\)", text)}


def all_started(running: Running) -> dict[str, int]:
    """Wait until the launcher has started every child; their pids."""
    wait_for(lambda: child_pids(running.stderr).keys() == set(SYSTEM), STARTED, "every start")
    return child_pids(running.stderr)


def sigterm_order(text: str) -> list[str]:
    """The launcher's SIGTERM lines in order, each the names it signalled at once."""
    return re.findall(r"sending SIGTERM to (.+)", text)


def kill_leftovers(pids) -> None:
    """Test clean-up: whatever a failing test left behind does not outlive it."""
    for pid in pids:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_launcher_runs_the_system_and_stops_cleanly(tmp_path, signum):
    running = start_launcher(tmp_path)
    pids = {}
    try:
        wait_for(
            lambda: running.stdout.count("Positions #") >= 2 and "ACC-01" in running.stdout,
            STARTED,
            "position tables",
        )
        pids = child_pids(running.stderr)
        assert set(pids) == set(SYSTEM)
        running.process.send_signal(signum)
        assert running.wait(STOPPED) == 0
    finally:
        running.stop()
        kill_leftovers(pids.values())
    assert not [name for name, pid in pids.items() if pid_alive(pid)]
    assert f"stopping ({signal.Signals(signum).name})" in running.stderr
    # Senders together, then the position server, then the controller; all clean.
    assert sigterm_order(running.stderr) == [
        "aumsim, fillsim-1, fillsim-2",
        "positions",
        "controller",
    ]
    stopped = dict(re.findall(r"(\S+) stopped \(exit (\S+)\)", running.stderr))
    assert stopped == {name: "0" for name in SYSTEM}
    assert "SIGKILL" not in running.stderr


def test_launcher_restarts_a_process_that_dies(tmp_path):
    running = start_launcher(tmp_path)
    pids = {}
    try:
        wait_for(lambda: "Positions #" in running.stdout, STARTED, "a position table")
        pids = child_pids(running.stderr)
        os.kill(pids["controller"], signal.SIGKILL)
        wait_for(
            lambda: len(re.findall(r"started controller", running.stderr)) == 2,
            20,
            "the controller to be restarted",
        )
        assert "controller exited with code -9; restarting" in running.stderr
        wait_for(
            lambda: "controller restarted" in running.stdout + running.stderr,
            20,
            "the position server to notice the restart",
        )
        # Nothing else was touched.
        assert {n: p for n, p in child_pids(running.stderr).items() if n != "controller"} == {
            n: p for n, p in pids.items() if n != "controller"
        }
        pids = child_pids(running.stderr)
        running.process.send_signal(signal.SIGINT)
        assert running.wait(STOPPED) == 0
    finally:
        running.stop()
        kill_leftovers(pids.values())


def test_no_child_outlives_a_launcher_killed_with_sigkill(tmp_path):
    running = start_launcher(tmp_path)
    pids = {}
    try:
        pids = all_started(running)
        assert all(pid_alive(pid) for pid in pids.values())
        running.process.kill()
        assert running.wait(STOPPED) == -signal.SIGKILL
        wait_for(
            lambda: not [pid for pid in pids.values() if pid_alive(pid)],
            STOPPED,
            "every child to die with the launcher",
        )
    finally:
        running.stop()
        kill_leftovers(pids.values())


def test_a_second_launcher_on_the_same_configuration_refuses_to_start(tmp_path):
    first = start_launcher(tmp_path)
    pids = {}
    try:
        pids = all_started(first)
        second = start_launcher(tmp_path)
        try:
            assert second.wait(STOPPED) == launcher.EXIT_CANNOT_START
        finally:
            second.stop()
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert f"another launcher (pid {first.process.pid})" in lines[0]
        assert "journal.launcher.lock" in lines[0]
        # It started nothing and disturbed nothing.
        assert "started" not in second.stderr
        assert all(pid_alive(pid) for pid in pids.values())
        assert child_pids(first.stderr) == pids
        first.process.send_signal(signal.SIGTERM)
        assert first.wait(STOPPED) == 0
    finally:
        first.stop()
        kill_leftovers(pids.values())


def test_the_launcher_carries_on_when_its_stdout_is_closed(tmp_path):
    # Its stdout is a pipe nobody reads (the read end closed at once); its log goes to a file.
    read_end, write_end = os.pipe()
    os.close(read_end)
    log_path = tmp_path / "launcher.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "launcher.py"), *launcher_flags(tmp_path)],
            cwd=tmp_path,
            stdout=write_end,
            stderr=log_file,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    os.close(write_end)
    pids = {}
    try:
        wait_for(lambda: "output closed" in log_path.read_text(), STARTED, "the relay to notice")
        pids = child_pids(log_path.read_text())
        assert set(pids) == set(SYSTEM)
        process.send_signal(signal.SIGTERM)
        assert process.wait(STOPPED) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        kill_leftovers(pids.values())
    log = log_path.read_text()
    assert child_pids(log) == pids  # nothing was restarted because of it
    stopped = dict(re.findall(r"(\S+) stopped \(exit (\S+)\)", log))
    assert stopped == {name: "0" for name in SYSTEM}


# --- The Supervisor over real processes that are not the system -------------------------

#: Runs a Supervisor (real processes, real signals) over five copies of a child script,
#: named and grouped like the system; argv: grace period, child script.
DRIVER = """
import sys
import launcher
from common import logs

logs.setup("launcher", "INFO")
grace, script = float(sys.argv[1]), sys.argv[2]
groups = {"controller": launcher.CORE, "positions": launcher.VIEWERS}
children = [
    launcher.Child(name, [sys.executable, "-c", script], groups.get(name, launcher.SENDERS))
    for name in ("controller", "positions", "aumsim", "fillsim-1", "fillsim-2")
]
stop = launcher.install_stop_signals(launcher.StopFlag())
supervisor = launcher.Supervisor(children, launcher.Subprocesses(), grace=grace)
sys.exit(supervisor.run(stop))
"""

#: A child that says it is ready, and answers SIGTERM by saying so and carrying on.
STUBBORN = """
import signal, time
signal.signal(signal.SIGTERM, lambda *_: print("got SIGTERM", flush=True))
print("ready", flush=True)
while True:
    time.sleep(60)
"""

#: A child that prints the width it was given, then waits to be stopped.
SHOW_COLUMNS = """
import os, time
print("columns", os.environ.get("COLUMNS"), flush=True)
while True:
    time.sleep(60)
"""


def start_driver(grace: float, script: str, **env: str) -> Running:
    return started(
        subprocess.Popen(
            [sys.executable, "-c", DRIVER, str(grace), script],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), **env},
        )
    )


def test_stopping_stubborn_children_takes_one_grace_period_then_one_sigkill(tmp_path):
    running = start_driver(1.5, STUBBORN)
    pids = {}
    try:
        wait_for(lambda: running.stdout.count("ready") == 5, STARTED, "five ready children")
        pids = child_pids(running.stderr)
        running.process.send_signal(signal.SIGTERM)
        assert running.wait(STOPPED) == 0
    finally:
        running.stop()
        kill_leftovers(pids.values())
    # Every child got exactly one SIGTERM, by group in order, and ignored it ...
    assert sigterm_order(running.stderr) == [
        "aumsim, fillsim-1, fillsim-2",
        "positions",
        "controller",
    ]
    got = re.findall(r"(\S+) +\| got SIGTERM", running.stdout)
    assert sorted(got) == sorted(SYSTEM)
    # ... then one SIGKILL for all of them at once, at the end of the one grace period.
    log = running.stderr
    kills = re.findall(r"WARNING (.+) did not stop within the 1.5 s grace period", log)
    assert kills == ["controller, positions, aumsim, fillsim-1, fillsim-2"]
    assert log.index("sending SIGTERM to controller") < log.index("SIGKILL")
    stopped = dict(re.findall(r"(\S+) stopped \(exit (\S+)\)", log))
    assert stopped == {name: str(-signal.SIGKILL) for name in SYSTEM}
    assert not [name for name, pid in pids.items() if pid_alive(pid)]


def test_children_get_the_terminal_width_less_the_prefix():
    running = start_driver(1.5, SHOW_COLUMNS, COLUMNS="100")
    pids = {}
    try:
        wait_for(lambda: running.stdout.count("columns") == 5, STARTED, "five widths")
        pids = child_pids(running.stderr)
        running.process.send_signal(signal.SIGTERM)
        assert running.wait(STOPPED) == 0
    finally:
        running.stop()
        kill_leftovers(pids.values())
    prefix = "controller | "  # the longest name sets every prefix's width
    lines = [line for line in running.stdout.splitlines() if "columns" in line]
    assert all(len(line.split("columns")[0]) == len(prefix) for line in lines)
    assert {line.split()[-1] for line in lines} == {str(100 - len(prefix))}


# --- Output relaying (the real ProcessControl, in this process) --------------------------


def finished(control: launcher.Subprocesses, pid: int) -> int:
    """Relay until `pid` has exited; its exit code."""
    codes: list[int] = []

    def done() -> bool:
        control.pause(0.05)
        code = control.exit_code(pid)
        if code is not None:
            codes.append(code)
        return bool(codes)

    wait_for(done, STOPPED, f"pid {pid} to exit")
    return codes[0]


def test_relay_prefixes_every_line_and_keeps_an_unfinished_last_one():
    out, err = io.StringIO(), io.StringIO()
    control = launcher.Subprocesses(out, err)
    script = "import sys; print('one'); print('two', file=sys.stderr); sys.stdout.write('three')"
    pid = control.start("x", [sys.executable, "-c", script], os.environ, "x  | ")
    assert finished(control, pid) == 0
    assert out.getvalue() == "x  | one\nx  | three\n"
    assert err.getvalue() == "x  | two\n"
    assert not control.selector.get_map()  # nothing left to watch


def test_relay_stops_watching_a_pipe_its_child_closed():
    out = io.StringIO()
    control = launcher.Subprocesses(out, io.StringIO())
    script = "import os, sys, time\nprint('bye', flush=True)\nos.close(1)\ntime.sleep(60)"
    pid = control.start("x", [sys.executable, "-c", script], os.environ, "x | ")
    try:
        wait_for(lambda: control.pause(0.05) or len(control.selector.get_map()) == 1, STOPPED)
        assert out.getvalue() == "x | bye\n"
        assert control.exit_code(pid) is None  # still running, only its stdout is gone
    finally:
        control.signal(pid, signal.SIGKILL)
    assert finished(control, pid) == -signal.SIGKILL


class ClosedOutput(io.StringIO):
    """An output whose reader has gone."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_relay_drops_output_that_cannot_be_written_and_carries_on(caplog):
    err = io.StringIO()
    control = launcher.Subprocesses(ClosedOutput(), err)
    script = (
        "import sys\nfor n in range(3): print(n, flush=True)\nprint('still here', file=sys.stderr)"
    )
    caplog.set_level(logging.WARNING, "launcher")
    pid = control.start("x", [sys.executable, "-c", script], os.environ, "x | ")
    assert finished(control, pid) == 0
    assert err.getvalue() == "x | still here\n"
    assert caplog.text.count("output closed") == 1


def test_a_childs_process_group_dies_with_it():
    out = io.StringIO()
    control = launcher.Subprocesses(out, io.StringIO())
    # The child starts a grandchild in its own process group, says its pid, then exits.
    script = (
        "import subprocess, sys\n"
        "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(g.pid, flush=True)"
    )
    pid = control.start("x", [sys.executable, "-c", script], os.environ, "x | ")
    assert finished(control, pid) == 0
    grandchild = int(out.getvalue().split()[-1])
    try:
        wait_for(lambda: not pid_alive(grandchild), STOPPED, "the grandchild to be killed")
    finally:
        kill_leftovers([grandchild])


# --- The configuration lock -------------------------------------------------------------


def test_the_lock_names_its_holder_and_is_free_again_once_released(tmp_path):
    path = tmp_path / "data" / "journal.launcher.lock"
    with launcher.configuration_lock(path):
        assert path.read_text() == f"{os.getpid()}\n"
        with (
            pytest.raises(launcher.LockedError, match=f"pid {os.getpid()}"),
            launcher.configuration_lock(path),
        ):
            pass
    with launcher.configuration_lock(path):  # a left-over file does not block
        pass


def test_a_stale_lock_file_from_a_dead_launcher_does_not_block(tmp_path):
    path = tmp_path / "journal.launcher.lock"
    path.write_text("999999999\n")
    with launcher.configuration_lock(path):
        assert path.read_text() == f"{os.getpid()}\n"
