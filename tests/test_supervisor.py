"""The launcher's restart and stop logic on a fake clock: scripted child histories, fake
processes, no sleeps. Real processes and signals are in test_launcher.py."""

from __future__ import annotations

import logging
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pytest
from helpers import FakeClock

import launcher
from launcher import (
    BACKOFF_MAX,
    CORE,
    EXIT_GAVE_UP,
    EXIT_OK,
    FLAPPING_AFTER,
    NEVER_GIVE_UP,
    SENDERS,
    STARTED_AFTER,
    STOP_GRACE,
    VIEWERS,
    Child,
    Policy,
    State,
    Supervisor,
)

T0 = 1000.0  # the fake clock's start
FOREVER = None  # a lifetime: runs until signalled


@dataclass
class FakeProcess:
    name: str
    pid: int
    exit_at: float | None = None  # when it exits by itself (or after a signal)
    code: int | None = None


@dataclass
class FakeProcesses:
    """A ProcessControl whose children follow a script, on a fake clock.

    `lifetimes[name]` lists, per start, how long the child lives and its exit code (or
    FOREVER); `stubborn` children ignore SIGTERM; the others exit `term_delay` seconds
    after it with code 0. Every start and signal is recorded with the time it happened.
    """

    clock: FakeClock
    lifetimes: dict[str, list[tuple[float, int] | None]] = field(default_factory=dict)
    stubborn: set[str] = field(default_factory=set)
    unkillable: set[str] = field(default_factory=set)  # stuck in the kernel: even SIGKILL
    term_delay: float = 0.0
    fail_to_start: dict[str, int] = field(default_factory=dict)  # name: starts that fail
    processes: dict[int, FakeProcess] = field(default_factory=dict)
    events: list[tuple[float, str, str]] = field(default_factory=list)
    envs: dict[str, Mapping[str, str]] = field(default_factory=dict)
    next_pid: int = 100

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str], label: str) -> int:
        if self.fail_to_start.get(name, 0) > 0:
            self.fail_to_start[name] -= 1
            raise FileNotFoundError(2, "No such file or directory", name)
        self.next_pid += 1
        script = self.lifetimes.get(name, [])
        life = script.pop(0) if script else FOREVER
        process = FakeProcess(name, self.next_pid)
        if life is not None:
            process.exit_at, process.code = round(self.clock() + life[0], 9), life[1]
        self.processes[process.pid] = process
        self.envs[name] = env
        self.events.append((self.clock(), "start", name))
        return process.pid

    def exit_code(self, pid: int) -> int | None:
        process = self.processes[pid]
        if process.exit_at is None or process.exit_at > self.clock():
            return None
        del self.processes[pid]
        return process.code

    def signal(self, pid: int, signum: int) -> None:
        process = self.processes.get(pid)
        if process is None:
            return
        self.events.append((self.clock(), signal.Signals(signum).name, process.name))
        if process.name in self.unkillable:
            return
        if signum == signal.SIGKILL:
            process.exit_at, process.code = self.clock(), -signal.SIGKILL
        elif process.name not in self.stubborn:
            exit_at = round(self.clock() + self.term_delay, 9)
            if process.exit_at is None or exit_at < process.exit_at:
                process.exit_at, process.code = exit_at, 0

    def pause(self, seconds: float) -> None:
        """Move the clock on `seconds`, or only as far as the next scripted exit; not at all
        if an exit is waiting to be noticed (as a real child's closing pipes wake the real
        one). Times are kept to the nanosecond, so that slices add up to exact times."""
        now = self.clock()
        exits = [p.exit_at for p in self.processes.values() if p.exit_at is not None]
        if any(t <= now for t in exits):
            return
        self.clock.now = min([round(now + seconds, 9), *exits])

    def times(self, what: str, name: str) -> list[float]:
        """When `what` (start, SIGTERM, SIGKILL) happened to `name`, from T0."""
        return [t - T0 for t, event, who in self.events if event == what and who == name]


class StopAt:
    """A stop flag that is set once the fake clock reaches a time."""

    def __init__(self, clock: FakeClock, at: float) -> None:
        self.clock, self.at = clock, at

    def __bool__(self) -> bool:
        return self.clock() >= self.at


def system(fill_servers: int = 2) -> list[Child]:
    """The launcher's five children with their real policies and stop groups (no argv)."""
    children = [
        Child("controller", [], CORE, NEVER_GIVE_UP),
        Child("positions", [], VIEWERS),
        Child("aumsim", [], SENDERS),
    ]
    children += [Child(f"fillsim-{n}", [], SENDERS) for n in range(1, fill_servers + 1)]
    return children


@pytest.fixture
def clock():
    return FakeClock(T0)


def supervise(clock, fake, until, children=None, columns=lambda: None):
    """Run a supervisor over `fake` until the fake clock reaches T0 + `until`."""
    supervisor = Supervisor(children or system(), fake, clock, columns=columns)
    code = supervisor.run(StopAt(clock, T0 + until))
    return supervisor, code


def gaps(times: list[float]) -> list[float]:
    return [round(b - a, 6) for a, b in zip(times, times[1:], strict=False)]


# --- The state machine alone ------------------------------------------------------------


def test_backoff_doubles_from_the_first_delay_and_is_capped():
    policy = Policy()
    delays = [policy.delay(n) for n in range(12)]
    assert delays == [0.5, 0.5, 1, 2, 4, 8, 16, 30, 30, 30, 30, 30]
    assert policy.delay(10**6) == BACKOFF_MAX


def test_a_child_flaps_after_repeated_fast_failures_and_a_long_run_resets_the_count():
    child = Child("fillsim-1", [])
    now = 0.0
    for n in range(1, FLAPPING_AFTER):
        child.started(1, now)
        assert child.exited(now + 1) is State.BACKOFF
        assert child.fast_failures == n
        now = child.restart_at
    child.started(1, now)
    assert not child.settled(now + STARTED_AFTER - 0.001)
    assert child.settled(now + STARTED_AFTER)  # the start counts: the slate is clean
    assert not child.settled(now + STARTED_AFTER + 1)  # said once
    assert child.exited(now + 60) is State.BACKOFF and child.fast_failures == 0
    for _ in range(FLAPPING_AFTER - 1):
        child.started(1, child.restart_at)
        assert child.exited(child.started_at) is State.BACKOFF
    child.started(1, child.restart_at)
    assert child.exited(child.started_at) is State.FAILED


def test_the_never_give_up_policy_keeps_backing_off():
    child = Child("controller", [], CORE, NEVER_GIVE_UP)
    for _ in range(50):
        child.started(1, child.restart_at)
        assert child.exited(child.started_at) is State.BACKOFF
    assert child.restart_at - child.started_at == BACKOFF_MAX
    assert child.quiet


# --- Restarts ---------------------------------------------------------------------------


def test_a_crashing_child_is_restarted_with_capped_exponential_backoff_and_recovers(clock):
    # fillsim-1 dies 1 s after each of its first four starts, then runs 10 s, then dies.
    fake = FakeProcesses(clock, lifetimes={"fillsim-1": [(1.0, 3)] * 4 + [(10.0, 3)]})
    supervise(clock, fake, until=40)
    starts = fake.times("start", "fillsim-1")
    # 1 s up, then 0.5, 1, 2, 4 s of backoff; after the 10 s run the count starts afresh.
    assert gaps(starts) == [1.5, 2.0, 3.0, 5.0, 10.5]
    assert [fake.times("start", n) for n in ("controller", "positions", "aumsim")] == [
        [0.0],
        [0.0],
        [0.0],
    ]


def test_a_clean_exit_is_restarted_too(clock):
    fake = FakeProcesses(clock, lifetimes={"positions": [(7.0, 0)]})
    supervisor, code = supervise(clock, fake, until=20)
    assert fake.times("start", "positions") == [0.0, 7.5]
    assert code == EXIT_OK


def test_a_flapping_child_is_given_up_on_alone_and_the_exit_code_says_so(clock, caplog):
    fake = FakeProcesses(clock, lifetimes={"fillsim-2": [(0.2, 1)] * 100})
    caplog.set_level(logging.INFO, "launcher")
    supervisor, code = supervise(clock, fake, until=120)
    assert len(fake.times("start", "fillsim-2")) == FLAPPING_AFTER
    states = {c.name: c.state for c in supervisor.children}
    assert states["fillsim-2"] is State.FAILED
    # Nobody else was signalled or restarted before the stop at 120 s.
    early = [(t, e, n) for t, e, n in fake.events if t < T0 + 120 and n != "fillsim-2"]
    assert all(e == "start" and t == T0 for t, e, _ in early)
    assert code == EXIT_GAVE_UP
    assert "giving up on it" in caplog.text and "gave up on fillsim-2" in caplog.text


def test_the_controller_is_retried_forever_and_nothing_else_is_stopped(clock, caplog):
    # Out of disk for ten minutes: the controller dies 0.1 s after every start.
    failures = 40
    fake = FakeProcesses(clock, lifetimes={"controller": [(0.1, 1)] * failures})
    caplog.set_level(logging.DEBUG, "launcher")
    supervisor, code = supervise(clock, fake, until=1500)
    starts = fake.times("start", "controller")
    assert len(starts) == failures + 1  # every failure retried; the last start stays up
    assert set(gaps(starts)[8:]) == {BACKOFF_MAX + 0.1}  # at the cap, forever
    others = [e for _, e, n in fake.events if n != "controller" and e != "start"]
    assert others == ["SIGTERM"] * 4  # only the final stop touched the rest
    assert code == EXIT_OK
    # One line per change of state: a warning per ordinary restart, one error when it
    # starts flapping, one line when it is up again; the rest at DEBUG.
    loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len([m for m in loud if m.startswith("controller")]) == FLAPPING_AFTER
    assert "retrying for as long as the launcher runs" in loud[FLAPPING_AFTER - 1]
    assert sum("running again" in r.getMessage() for r in caplog.records) == 1
    quiet = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(quiet) == 2 * failures - (FLAPPING_AFTER * 2 - 1)


def test_a_child_that_cannot_be_started_is_retried_like_a_crash(clock, caplog):
    fake = FakeProcesses(clock, fail_to_start={"aumsim": 2})
    supervisor, code = supervise(clock, fake, until=10)
    assert fake.times("start", "aumsim") == [1.5]  # after failed starts at 0 and 0.5
    assert caplog.text.count("aumsim could not be started") == 2
    assert "restarting in 1.0 s" in caplog.text
    assert code == EXIT_OK


def test_children_get_the_width_left_after_the_prefix(clock):
    fake = FakeProcesses(clock)
    supervise(clock, fake, until=1, columns=lambda: 120)
    prefix = len("controller | ")  # the longest name sets every prefix's width
    assert {env["COLUMNS"] for env in fake.envs.values()} == {str(120 - prefix)}
    assert all(env["PYTHONUNBUFFERED"] == "1" for env in fake.envs.values())
    supervise(clock, fake, until=2, columns=lambda: 15)
    assert {env["COLUMNS"] for env in fake.envs.values()} == {str(launcher.MIN_COLUMNS)}


def test_without_a_terminal_no_width_is_imposed(clock, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    fake = FakeProcesses(clock)
    supervise(clock, fake, until=1, columns=lambda: None)
    assert not any("COLUMNS" in env for env in fake.envs.values())


# --- Stopping ---------------------------------------------------------------------------


def test_a_full_stop_of_stubborn_children_takes_one_grace_period(clock):
    children = system()
    fake = FakeProcesses(clock, stubborn={c.name for c in children})
    supervise(clock, fake, until=10, children=children)
    terms = {c.name: fake.times("SIGTERM", c.name) for c in children}
    kills = {c.name: fake.times("SIGKILL", c.name) for c in children}
    third = STOP_GRACE / 3
    assert terms == {
        "aumsim": [10.0],
        "fillsim-1": [10.0],
        "fillsim-2": [10.0],
        "positions": [10.0 + third],
        "controller": [10.0 + 2 * third],
    }
    assert kills == {c.name: [10.0 + STOP_GRACE] for c in children}  # one grace, not five
    assert clock() - T0 == 10.0 + STOP_GRACE
    assert all(c.state is State.STOPPED for c in children)


def test_each_stop_group_is_signalled_as_soon_as_the_one_before_is_gone(clock):
    children = system()
    fake = FakeProcesses(clock, term_delay=0.25)
    supervise(clock, fake, until=10, children=children)
    assert {c.name: fake.times("SIGTERM", c.name) for c in children} == {
        "aumsim": [10.0],
        "fillsim-1": [10.0],
        "fillsim-2": [10.0],
        "positions": [10.25],
        "controller": [10.5],
    }
    assert not [e for _, e, _ in fake.events if e == "SIGKILL"]
    assert clock() - T0 == 10.75


def test_a_stuck_sender_delays_the_rest_only_to_their_share_of_the_grace_period(clock):
    children = system()
    fake = FakeProcesses(clock, stubborn={"fillsim-1"})
    supervise(clock, fake, until=10, children=children)
    assert fake.times("SIGTERM", "positions") == [10.0 + STOP_GRACE / 3]
    # The controller waits for the senders too (they flush to it), up to its own share.
    assert fake.times("SIGTERM", "controller") == [10.0 + 2 * STOP_GRACE / 3]
    assert [(t - T0, n) for t, e, n in fake.events if e == "SIGKILL"] == [
        (10.0 + STOP_GRACE, "fillsim-1")
    ]


def test_the_stop_never_hangs_on_a_child_that_even_sigkill_cannot_end(clock, caplog):
    children = system()
    fake = FakeProcesses(clock, unkillable={"positions"})
    supervise(clock, fake, until=10, children=children)
    assert fake.times("SIGKILL", "positions") == [10.0 + STOP_GRACE]
    assert clock() - T0 == 10.0 + STOP_GRACE + launcher.KILL_WAIT
    assert "positions still not gone after SIGKILL" in caplog.text


def test_a_child_waiting_to_restart_is_not_restarted_or_signalled_by_the_stop(clock):
    children = system()
    fake = FakeProcesses(clock, lifetimes={"aumsim": [(9.9, 1)]})
    supervise(clock, fake, until=10, children=children)
    assert fake.times("start", "aumsim") == [0.0]
    assert fake.times("SIGTERM", "aumsim") == []
    assert all(c.state is State.STOPPED for c in children)


def test_the_stop_happens_even_if_supervising_fails(clock):
    class Broken(FakeProcesses):
        def exit_code(self, pid):
            if self.clock() - T0 >= 1 and not getattr(self, "broke", False):
                self.broke = True
                raise RuntimeError("boom")
            return super().exit_code(pid)

    fake = Broken(clock)
    with pytest.raises(RuntimeError):
        supervise(clock, fake, until=10)
    assert len([e for _, e, _ in fake.events if e == "SIGTERM"]) == 5
