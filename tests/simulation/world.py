"""One simulated run: the production controller, fill servers, an AUM server and a
position watcher on one simulated clock, network and disk, with faults drawn from a seed.

What runs is production code: `ControllerService` (its batch loop, pause on a full disk,
fail-stop), `Engine`, `Sequencer`, `Book`, `JournalWriter`, checkpoints, recovery through
`common.history.recover`, and `ReliableSender` for every sender. The simulator supplies
only what reaches the world: sockets (`network`), the device calls of the journal (`disk`)
and the clocks (`kernel`). A run has a chaos phase (faults on) then a quiet phase (faults
off) in which every fill must end acknowledged or rejected.
"""

from __future__ import annotations

import logging
import random
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import zmq

import common.sender as sender_module
import controller.service as service_module
from aumsim.splits import account_names, drifted_split, random_split
from common.history import read_steps, recover
from common.protocol import RULES_VERSION, TOPIC_POSITIONS, fill_message, split_message, unpack
from common.sender import ReliableSender
from controller.book import BOOK, MARKET, Book
from controller.engine import Engine
from controller.journal import (
    JournalCorrupt,
    JournalFailed,
    JournalHeader,
    JournalWriter,
    read_records,
    settle,
    write_checkpoint,
)
from controller.sequencer import MAX_HELD_TOTAL
from controller.service import ControllerService
from simulation.checks import INVALID_MARK, CheckedRule, Ledger
from simulation.disk import SimDisk, mounted
from simulation.kernel import Scheduler, SimCrash, Violation, stable_rng
from simulation.network import ENDPOINT, FakeContext, FakePoller, FakeSub, Network

log = logging.getLogger(__name__)

TICKERS = ("AAPL", "MSFT", "NVDA", "XOM")
EPOCH = 1_800_000_000.0  # the simulated wall clock starts here
BIG_DISK = 1 << 40
FAST_DISK = Path("/dev/shm")  # memory-backed storage for the simulated disk, if any
PUMP_EVERY = 0.5  # seconds between a sender's timer pumps (its resend timer needs them)
JOURNAL_CHECK_EVERY = 5.0  # seconds between incremental journal-vs-book checks
QUIET_LIMIT = 900.0  # simulated seconds the quiet phase may take before liveness fails
RESTART_AFTER_FAILED_START = 1.0  # seconds before the launcher tries again
STEP_WINDOW = 0.001  # arrivals within this share one controller batch
WATCHER_MEMORY = 1000  # published snapshots kept to compare with what the watcher reads
PREALLOCATE_BYTES = 4 * 4096  # the journal's chunks, small: crossed often, cheap to check


@dataclass
class Options:
    """Everything a seed decides; printed at the start of a run."""

    seed: int
    minutes: float
    fill_servers: int
    accounts: int
    fill_gap: float  # mean seconds between one server's fills
    sell_share: float
    invalid_share: float
    split_interval: float
    snapshot_interval: float
    checkpoint_interval: float
    delay_max: float
    long_delay: float
    drop: float
    duplicate: float
    partition_every: float
    partition_max: float
    crash_every: float
    power_cut_share: float
    clean_stop_share: float
    restart_max: float
    corrupt_share: float
    sender_crash_every: float
    full_every: float
    full_max: float
    write_error: float
    fsync_error: float
    crash_in_write: float
    crash_before_fsync: float
    fsync_latency: float
    watcher_read_every: float  # inf: a subscriber that never reads
    valuation: str
    bad_checkpoint_share: float  # of controller stops: a damaged or foreign checkpoint

    @classmethod
    def from_seed(cls, seed: int, minutes: float) -> Options:
        rng = stable_rng("options", seed)

        def often(low: float, high: float) -> float:
            return rng.uniform(low, high)

        def maybe(chance: float, low: float, high: float) -> float:
            return rng.uniform(low, high) if rng.random() < chance else 0.0

        return cls(
            seed=seed,
            minutes=minutes,
            fill_servers=rng.randint(1, 4),
            accounts=rng.choice([2, 3, 3, 5, 8, 20]),
            fill_gap=often(0.2, 3.0),
            sell_share=often(0.1, 0.5),
            invalid_share=maybe(0.5, 0.001, 0.02),
            split_interval=30.0,
            snapshot_interval=10.0,
            checkpoint_interval=rng.choice([5.0, 30.0, 60.0]),
            delay_max=often(0.0005, 0.3),
            long_delay=maybe(0.6, 0.0, 0.1),
            drop=maybe(0.6, 0.0, 0.1),
            duplicate=maybe(0.6, 0.0, 0.1),
            partition_every=rng.choice([float("inf"), 60.0, 300.0]),
            partition_max=often(1.0, 60.0),
            crash_every=rng.choice([float("inf"), 30.0, 120.0, 600.0]),
            power_cut_share=often(0.2, 0.8),
            clean_stop_share=often(0.0, 0.3),
            restart_max=often(0.1, 10.0),
            corrupt_share=maybe(0.4, 0.05, 0.3),
            sender_crash_every=rng.choice([float("inf"), 120.0, 600.0]),
            full_every=rng.choice([float("inf"), 120.0, 600.0]),
            full_max=often(5.0, 120.0),
            write_error=maybe(0.3, 0.0, 0.003),
            fsync_error=maybe(0.4, 0.0, 0.003),
            crash_in_write=maybe(0.4, 0.0, 0.003),
            crash_before_fsync=maybe(0.4, 0.0, 0.003),
            fsync_latency=often(0.0, 0.01),
            watcher_read_every=rng.choice([0.1, 1.0, 30.0, float("inf")]),
            valuation=rng.choice([BOOK, MARKET]),
            bad_checkpoint_share=maybe(0.4, 0.05, 0.3),
        )

    def describe(self) -> str:
        return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in asdict(self).items())


@dataclass
class Outcome:
    """What a run covered."""

    seed: int
    simulated: float  # seconds
    events: int
    real: float  # seconds
    fingerprint: str
    fills_sent: int
    acked: int
    rejected: int
    crashes: int
    allocations_checked: int
    brute_forced: int
    failed_starts: int  # journal could not be opened (I/O error): the launcher retries
    died_of: list[str] = field(default_factory=list)  # exceptions that ended a controller
    disk: dict[str, int] = field(default_factory=dict)
    net: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"seed {self.seed}: {self.simulated / 3600:.2f} simulated hours in {self.real:.1f} s"
            f" ({self.events} events, {self.events / max(self.real, 1e-9):,.0f}/s);"
            f" {self.fills_sent} messages sent, {self.acked} acknowledged, {self.rejected}"
            f" rejected; {self.crashes} controller stops ({len(self.died_of)} of an exception,"
            f" {self.failed_starts} failed starts); {self.allocations_checked}"
            f" allocations certified ({self.brute_forced} by brute force);"
            f" disk {self.disk}; net {self.net}; fingerprint {self.fingerprint}"
        )


class Run:
    """The world of one seed."""

    def __init__(self, options: Options, directory: Path) -> None:
        self.options = options
        self.seed = options.seed
        self.rng = stable_rng("world", options.seed)
        self.scheduler = Scheduler()
        self.network = Network(self.scheduler, options.seed)
        self.disk = SimDisk(directory, self.scheduler, stable_rng("disk", options.seed),
                            BIG_DISK)
        self.chaos = True
        self.sent: dict[tuple[str, int], dict[str, Any]] = {}
        self.acked_high: dict[str, int] = {}
        self.controller = ControllerNode(self)
        self.senders = [SenderNode(self, f"fill-{i}", self._fill) for i in
                        range(options.fill_servers)]
        self.senders.append(SenderNode(self, "aum", self._split))
        self.watcher = Watcher(self)
        self.accounts = account_names(options.accounts)
        self.last_split: dict[str, float] | None = None
        self.prices = dict.fromkeys(TICKERS, 100.0)

    # -- failing -----------------------------------------------------------------------------
    def fail(self, what: str) -> None:
        raise Violation(
            f"seed {self.seed}, step {self.scheduler.steps}, simulated time "
            f"{self.scheduler.now:.3f} s: {what} (replay: python tests/simulation/run.py "
            f"--seed {self.seed} --minutes {self.options.minutes:g})"
        )

    # -- the run -----------------------------------------------------------------------------
    def run(self) -> Outcome:
        started = time.perf_counter()
        opts, sched = self.options, self.scheduler
        self.network.faults.delay_max = opts.delay_max
        self.network.faults.long_delay = opts.long_delay
        self.network.faults.drop = opts.drop
        self.network.faults.duplicate = opts.duplicate
        faults = self.disk.faults
        faults.write_error, faults.fsync_error = opts.write_error, opts.fsync_error
        faults.crash_in_write, faults.crash_before_fsync = (opts.crash_in_write,
                                                            opts.crash_before_fsync)
        faults.fsync_latency = opts.fsync_latency
        self.controller.start()
        for node in self.senders:
            node.start()
        self.watcher.start()
        self._schedule_faults()
        sched.after(JOURNAL_CHECK_EVERY, self._journal_tick)
        chaos_end = opts.minutes * 60
        sched.run_until(chaos_end, self.check_continuous)
        self._quiet()
        deadline = chaos_end + QUIET_LIMIT
        while sched.now < deadline and not self._settled():
            sched.run_until(min(deadline, sched.now + 10.0), self.check_continuous)
        if not self._settled():
            self.fail(f"liveness: faults stopped at {chaos_end:.0f} s, yet after "
                      f"{QUIET_LIMIT:.0f} s {self._unsettled()}")
        self.check_journal()
        self.check_rejections()
        return Outcome(
            seed=self.seed,
            simulated=sched.now,
            events=sched.steps,
            real=time.perf_counter() - started,
            fingerprint=sched.fingerprint,
            fills_sent=len(self.sent),
            acked=sum(self.acked_high.values()),
            rejected=len(self.network.counts.rejections),
            crashes=self.controller.stops,
            allocations_checked=self.controller.certified(0),
            brute_forced=self.controller.certified(1),
            failed_starts=self.controller.start_failures,
            died_of=list(self.controller.died_of),
            disk={k: v for k, v in vars(self.disk.counts).items() if v},
            net={k: v for k, v in vars(self.network.counts).items()
                 if isinstance(v, int) and v},
        )

    def _quiet(self) -> None:
        """Faults stop: the network heals, the disk has room and works, nothing crashes."""
        self.chaos = False
        self.network.faults.drop = self.network.faults.duplicate = 0.0
        self.network.faults.long_delay = 0.0
        for name in sorted(self.network.cut):
            self.network.heal(name)
        faults = self.disk.faults
        faults.write_error = faults.fsync_error = 0.0
        faults.crash_in_write = faults.crash_before_fsync = 0.0
        self.disk.capacity = BIG_DISK
        for node in self.senders:
            node.generating = False
        self.controller.ensure_running()

    def _settled(self) -> bool:
        return (self.controller.service is not None
                and not self.controller.service.paused
                and all(node.idle() for node in self.senders))

    def _unsettled(self) -> str:
        if self.controller.service is None:
            return "the controller is not running"
        if self.controller.service.paused:
            return "the controller is still paused"
        waiting = [f"{n.sender.source}: {n.sender.pending} unacknowledged from seq "
                   f"{n.sender.acked + 1}" for n in self.senders if not n.idle()
                   and n.sender is not None]
        return "; ".join(waiting) or "a sender is down"

    # -- continuous invariants -----------------------------------------------------------
    def check_continuous(self) -> None:
        """After every event: acknowledged inputs are still applied; nothing is short;
        bounds hold; no half batch is left in the journal."""
        service = self.controller.service
        for node in self.senders:
            sender = node.sender
            if sender is not None and sender.pending > sender.outbox_max:
                self.fail(f"{sender.source} keeps {sender.pending} messages, over its bound")
        if service is None or not self.controller.changed:
            return
        self.controller.changed = False
        engine = service.engine
        last_seq = engine.sequencer.last_seq
        for source, acked in self.acked_high.items():
            if last_seq.get(source, 0) < acked:
                self.fail(f"{source} saw seq {acked} acknowledged, but the controller has "
                          f"applied only up to {last_seq.get(source, 0)}")
        if engine.sequencer.held > MAX_HELD_TOTAL:
            self.fail(f"{engine.sequencer.held} messages held, over {MAX_HELD_TOTAL}")
        for account, held in zip(engine.book.accounts, engine.book.positions, strict=True):
            for ticker, count in held.items():
                if count <= 0:
                    self.fail(f"account {account} holds {count} {ticker}: short or zero kept")
        journal = engine.journal
        if journal is not None and journal.buffered_bytes == 0 and not journal.failed:
            size = journal.path.stat().st_size
            if size < journal.offset:
                self.fail(f"the journal is {size} bytes, shorter than what its writer "
                          f"acknowledges ({journal.offset})")
            with journal.path.open("rb") as handle:
                handle.seek(journal.offset)
                after = handle.read()
            if size != journal.allocated or any(after):
                self.fail(f"the journal's {size - journal.offset} bytes after its writer's "
                          f"offset {journal.offset} are not the zeros it allocated up to "
                          f"{journal.allocated}: a half batch, or space it does not know of")

    def note_acks(self, source: str, acked: int) -> None:
        if acked > self.acked_high.get(source, 0):
            self.acked_high[source] = acked
            self.controller.changed = True  # check it against the controller at once

    # -- the journal replays to the live book ---------------------------------------------
    def _journal_tick(self) -> None:
        self.check_journal()
        self.scheduler.after(JOURNAL_CHECK_EVERY, self._journal_tick)

    def check_journal(self) -> None:
        """Replay the journal's new records into a shadow book and an independent ledger;
        both must match the live book exactly."""
        node = self.controller
        service = node.service
        if service is None or service.paused or service.engine.journal is None:
            return
        shadow = node.shadow
        try:
            for step in read_steps(node.journal_path, shadow.offset, shadow.last_seq):
                shadow.book.apply(step.item)
                shadow.ledger.take(step.item)
                shadow.last_seq[step.item.source] = step.item.seq
                shadow.offset = step.offset
        except JournalCorrupt as exc:
            self.fail(f"the journal no longer replays: {exc}")
        engine = service.engine
        if shadow.book != engine.book:
            self.fail("the journal replays to a different book than the live one")
        if shadow.last_seq != engine.sequencer.last_seq:
            self.fail("the journal replays to different per-source seqs than the live ones")
        live = {t: n for t, n in engine.book.total_shares().items() if n}
        expected = {t: n for t, n in shadow.ledger.totals.items() if n}
        if live != expected:
            self.fail(f"shares not conserved: the book holds {live}, the inputs make "
                      f"{expected}")

    def check_rejections(self) -> None:
        for source, seq, reason in self.network.counts.rejections:
            if not isinstance(reason, str) or not reason.strip():
                self.fail(f"{source}#{seq} was rejected without a reason")

    # -- inputs ------------------------------------------------------------------------------
    def _fill(self, node: SenderNode) -> dict[str, Any]:
        rng = node.rng
        ticker = rng.choice(TICKERS)
        price = max(1.0, round(self.prices[ticker] * rng.uniform(0.98, 1.02), 2))
        self.prices[ticker] = price
        small = rng.random() < 0.3
        quantity = rng.randint(1, 12) if small else rng.randint(1, 3000)
        side = "sell" if rng.random() < self.options.sell_share else None
        body = fill_message("", 0, ticker, price, quantity, side)
        if rng.random() < self.options.invalid_share:
            body["ticker"] = "NOPE"  # validation rejects it, with a reason
            body[INVALID_MARK] = True
        return body

    def _split(self, node: SenderNode) -> dict[str, Any]:
        rng = node.rng
        if rng.random() < 0.15:  # an account joins or leaves
            pool = account_names(self.options.accounts + 2)
            if rng.random() < 0.5 and len(self.accounts) > 1:
                self.accounts.remove(rng.choice(self.accounts))
            else:
                spare = [a for a in pool if a not in self.accounts]
                if spare:
                    self.accounts.append(rng.choice(spare))
        fresh = random_split(rng, list(self.accounts))
        split = fresh if self.last_split is None else drifted_split(self.last_split, fresh, 0.3)
        self.last_split = split
        return split_message("", 0, split)

    # -- faults ------------------------------------------------------------------------------
    def _schedule_faults(self) -> None:
        opts = self.options
        self._every(opts.crash_every, self._crash_controller)
        self._every(opts.partition_every, self._partition)
        self._every(opts.sender_crash_every, self._crash_sender)
        self._every(opts.full_every, self._fill_disk)

    def _every(self, mean: float, action: Callable[[], None]) -> None:
        if mean == float("inf"):
            return

        def fire() -> None:
            if not self.chaos:
                return
            action()
            self.scheduler.after(self.rng.expovariate(1 / mean), fire)

        fire.__name__ = action.__name__
        self.scheduler.after(self.rng.expovariate(1 / mean), fire)

    def _crash_controller(self) -> None:
        opts, rng = self.options, self.rng
        roll = rng.random()
        if roll < opts.clean_stop_share:
            self.controller.stop("a clean stop", clean=True)
        elif roll < opts.clean_stop_share + (1 - opts.clean_stop_share) * opts.power_cut_share:
            self.controller.stop("a power cut", power_cut=True)
        else:
            self.controller.stop("a kill")
        if rng.random() < opts.corrupt_share:
            self.controller.corrupt_middle()
        if rng.random() < opts.bad_checkpoint_share:
            self.controller.spoil_checkpoint()

    def _partition(self) -> None:
        nodes = [n.name for n in self.senders] + ["watcher"]
        node = self.rng.choice(nodes)
        self.network.partition(node)
        self.scheduler.after(self.rng.uniform(0.5, self.options.partition_max),
                             lambda: self.network.heal(node))

    def _crash_sender(self) -> None:
        """A fill server, the AUM server or the position watcher dies and comes back."""
        nodes: list[SenderNode | Watcher] = [*self.senders, self.watcher]
        node = self.rng.choice(nodes)
        node.crash()
        self.scheduler.after(self.rng.uniform(0.1, 10.0), node.start)

    def _fill_disk(self) -> None:
        disk = self.disk
        disk.capacity = disk.used() + self.rng.randrange(0, 4096)

        def room_again() -> None:
            disk.capacity = BIG_DISK

        self.scheduler.after(self.rng.uniform(1.0, self.options.full_max), room_again)


@dataclass
class Shadow:
    """The journal as replayed so far by the checker (reset at each controller start)."""

    book: Book
    ledger: Ledger
    offset: int = 0
    last_seq: dict[str, int] = field(default_factory=dict)


class ControllerNode:
    """The controller process: recovery, the production service, crashes and restarts."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.journal_path = run.disk.root / "journal"
        self.checkpoint_path = run.disk.root / "journal.checkpoint"
        self.journal_id = stable_rng("journal", run.seed).getrandbits(128).to_bytes(16, "big").hex()
        self.service: ControllerService | None = None
        self.generation = 0
        self.stops = 0
        self.step_pending = False
        self.timer_at = float("inf")
        self.corruption: tuple[int, int] | None = None  # (offset, record start) injected
        self.checkers: list[CheckedRule] = []
        self.shadow = self._fresh_shadow()
        self.restart_pending = False
        self.changed = False  # the service ran since the last continuous check
        self.start_failures = 0
        self.died_of: list[str] = []  # exceptions that escaped the service

    def certified(self, which: int) -> int:
        return sum(c.checked if which == 0 else c.brute_forced for c in self.checkers)

    def _fresh_shadow(self) -> Shadow:
        book = Book(TICKERS, valuation=self.run.options.valuation)
        return Shadow(book, Ledger(self.run.sent, self.run.fail))

    def _checked(self, engine: Engine) -> Engine:
        checker = CheckedRule(engine.book.rule, self.run.fail)
        self.checkers.append(checker)
        engine.book.rule = checker.rule()
        return engine

    def _recovered(self, journal: JournalWriter | None) -> Engine:
        state = recover(self.journal_path, self.checkpoint_path, TICKERS,
                        self.run.options.valuation)
        return self._checked(Engine.from_recovered(state, journal))

    def start(self) -> None:
        run = self.run
        self.restart_pending = False
        if self.corruption is not None:
            self._check_corruption_found()
        header = JournalHeader(self.journal_id, RULES_VERSION, run.options.valuation,
                               "simulated")
        try:
            settle(self.journal_path)  # as the CLI: what recovery reads is what the disk holds
            engine = self._recovered(None)
            engine.journal = JournalWriter(self.journal_path, header=header,
                                           preallocate=PREALLOCATE_BYTES)
        except SimCrash as crash:  # the machine died during recovery or the journal's open
            if crash.power_cut:
                run.disk.power_cut()
            self._gone(f"{crash} while starting")
            return
        except JournalCorrupt as exc:
            run.fail(f"the controller cannot start: {exc}")
        except (OSError, JournalFailed) as exc:  # the CLI exits (2, 3); the launcher retries
            log.info("t=%.3f controller cannot open its journal: %s", run.scheduler.now, exc)
            self.start_failures += 1
            self.restart_pending = True
            run.scheduler.after(RESTART_AFTER_FAILED_START, self.start)
            return
        journal = engine.journal
        self.generation += 1
        generation = self.generation
        ctx = FakeContext(run.network, "controller", lambda: self._arrived(generation))
        opts = run.options
        service = ControllerService(
            ctx,  # type: ignore[arg-type]
            engine,
            ENDPOINT,
            ENDPOINT,
            snapshot_interval=opts.snapshot_interval,
            checkpoint_path=self.checkpoint_path,
            checkpoint_interval=opts.checkpoint_interval,
            clock=run.scheduler.clock,
            wall_clock=lambda: EPOCH + run.scheduler.now,
            rebuild=lambda: self._recovered(journal),
            free_space=run.disk.free,
        )
        service.instance = f"ctl-{generation}"
        self.service = service
        self.shadow = self._fresh_shadow()
        self.timer_at = float("inf")
        run.network.controller_up(service.pull, service.pub)  # type: ignore[arg-type]
        run.network.on_snapshot = self._snapshot_published
        self.changed = True
        run.check_continuous()  # acknowledged inputs survived the restart?
        run.check_journal()
        self._schedule_timer()

    def ensure_running(self) -> None:
        if self.service is None and not self.restart_pending:
            self.start()

    # -- driving the service -------------------------------------------------------------
    def _arrived(self, generation: int) -> None:
        if generation == self.generation and not self.step_pending:
            self.step_pending = True
            self.run.scheduler.after(STEP_WINDOW, lambda: self._step(generation))

    def _timer(self, generation: int) -> None:
        if generation == self.generation:
            self.timer_at = float("inf")
            self._step(generation)

    def _step(self, generation: int) -> None:
        service = self.service
        if generation != self.generation or service is None:
            return
        self.step_pending = False
        self.changed = True
        try:
            service.step(0)
        except SimCrash as crash:
            self._down(str(crash), crash.power_cut)
            return
        except Violation:
            raise
        except Exception as exc:  # the process dies of it; the launcher starts it again
            self.died_of.append(f"{type(exc).__name__}: {exc}")
            self._down(f"died of {type(exc).__name__}: {exc}", power_cut=False)
            return
        if service.failure is not None:
            self._exit(f"fail-stop ({service.failure})")
            return
        if service.pull.poll(0) and not service.paused:
            self._arrived(generation)
        self._schedule_timer()

    def _schedule_timer(self) -> None:
        service = self.service
        if service is None:
            return
        if service.paused:  # no checkpoints while paused; the space check instead
            due = min(service.next_snapshot, service.next_space_check)
        else:
            due = min(service.next_snapshot, service.next_checkpoint)
        if due < self.timer_at:
            self.timer_at = due
            generation = self.generation
            self.run.scheduler.at(due, lambda: self._timer(generation))

    # -- stopping ----------------------------------------------------------------------------
    def stop(self, why: str, clean: bool = False, power_cut: bool = False) -> None:
        service = self.service
        if service is None:
            return
        if clean:
            try:
                service.close()
            except SimCrash as crash:
                self._down(str(crash), crash.power_cut)
                return
            self._exit(why)
        else:
            self._down(why, power_cut)

    def _exit(self, why: str) -> None:
        """The process ends by itself (a clean stop or fail-stop): the page cache stays."""
        service = self.service
        assert service is not None
        service.close()
        self._gone(why)

    def _down(self, why: str, power_cut: bool) -> None:
        """The process dies where it stands; with a power cut the disk loses its cache."""
        service = self.service
        if service is not None and service.engine.journal is not None:
            service.engine.journal.abandon()  # the kernel closes a dead process's files
        if power_cut:
            self.run.disk.power_cut()
        self._gone(why)

    def _gone(self, why: str) -> None:
        run = self.run
        log.info("t=%.3f controller stops: %s", run.scheduler.now, why)
        self.service = None
        self.stops += 1
        self.generation += 1
        run.network.controller_down()
        run.disk.settle()
        self.restart_pending = True
        delay = run.rng.uniform(0.05, run.options.restart_max) if run.chaos else 0.05
        run.scheduler.after(delay, self.start)

    # -- a corrupt byte in the middle ------------------------------------------------------
    def corrupt_middle(self) -> None:
        """While it is down, damage one byte of a record that has good records after it."""
        if self.service is not None or self.corruption is not None:
            return
        try:
            ends = [end for end, _ in read_records(self.journal_path)]
        except JournalCorrupt:
            return
        if len(ends) < 3:
            return
        k = self.run.rng.randrange(len(ends) - 2)
        start, end = ends[k], ends[k + 1]
        offset = self.run.rng.randrange(start + 8, end)
        self.run.disk.flip_byte(self.journal_path, offset)
        self.corruption = (offset, start)

    def spoil_checkpoint(self) -> None:
        """While it is down, leave a damaged checkpoint, or one of another journal (with a
        state that is not this journal's): recovery must not apply either; the journal
        check at start shows whether it did."""
        path, disk = self.checkpoint_path, self.run.disk
        if self.service is not None:
            return
        if path.exists() and path.stat().st_size > 20 and self.run.rng.random() < 0.5:
            disk.flip_byte(path, self.run.rng.randrange(12, path.stat().st_size))
            disk.counts.corrupted -= 1
            disk.counts.bad_checkpoints += 1
            return
        stranger = Book(TICKERS, valuation=self.run.options.valuation)
        state = {"book": stranger.to_state(), "last_seq": {"stranger@1": 1}}
        write_checkpoint(path, "f" * 32, 0, state)
        disk.counts.bad_checkpoints += 1

    def _check_corruption_found(self) -> None:
        """Recovery must refuse the damaged journal, naming the damaged record's offset;
        then the operator puts the byte back (from a replica) and the start goes on."""
        assert self.corruption is not None
        offset, start = self.corruption
        self.corruption = None
        try:
            recover(self.journal_path, None, TICKERS, self.run.options.valuation,
                    repair=False)
        except JournalCorrupt as exc:
            if f"offset {start}" not in str(exc):
                self.run.fail(f"damage at byte {offset} reported elsewhere: {exc}")
        else:
            self.run.fail(f"a damaged byte at offset {offset} of the journal went unnoticed")
        self.run.disk.flip_byte(self.journal_path, offset)  # flipping again restores it
        self.run.disk.counts.corrupted -= 1

    # -- snapshots equal the book ----------------------------------------------------------
    def _snapshot_published(self, payload: bytes) -> None:
        service = self.service
        if service is None:
            return
        self.run.watcher.note_published(payload)
        book = service.engine.book
        body = unpack(payload)
        shown = {a: {t: n for t, n in row["positions"].items() if n}
                 for a, row in body["accounts"].items()}
        actual = {a: dict(held) for a, held in zip(book.accounts, book.positions, strict=True)}
        if shown != actual:
            self.run.fail("a snapshot's positions differ from the book's")
        totals: dict[str, int] = {}
        for held in actual.values():
            for ticker, count in held.items():
                totals[ticker] = totals.get(ticker, 0) + count
        if {t: n for t, n in body["totals"]["positions"].items() if n} != totals:
            self.run.fail("a snapshot's totals are not the sum of its accounts")
        if body["paused"] != service.paused:
            self.run.fail("a snapshot misreports whether input is paused")


class SenderNode:
    """A fill server or the AUM server: the production ReliableSender and a message source."""

    def __init__(self, run: Run, name: str, make: Callable[[SenderNode], dict[str, Any]]):
        self.run = run
        self.name = name
        self.make = make
        self.rng = stable_rng("sender", run.seed, name)
        self.sender: ReliableSender | None = None
        self.session = 0
        self.generating = True
        self.pump_pending = False

    def start(self) -> None:
        run = self.run
        if self.sender is not None:
            return
        self.session += 1
        session = self.session
        source = f"{self.name}@{self.rng.getrandbits(32):08x}"
        ctx = FakeContext(run.network, self.name, lambda: self._readable(session))
        sender = ReliableSender(ctx, source, ENDPOINT, ENDPOINT,  # type: ignore[arg-type]
                                clock=run.scheduler.clock)
        poller = FakePoller()
        poller.register(sender.sub)  # type: ignore[arg-type]
        poller.register(sender._monitor)  # type: ignore[arg-type]
        sender.poller = poller  # type: ignore[assignment]
        self.sender = sender
        if run.network.reachable(self.name):
            sender._monitor.post(1)  # type: ignore[attr-defined]  # zmq.EVENT_CONNECTED
        gap = run.options.split_interval if self.name == "aum" else run.options.fill_gap
        self._next_message(session, gap, first=True)
        run.scheduler.after(PUMP_EVERY, lambda: self._tick(session))

    def crash(self) -> None:
        if self.sender is not None:
            self.sender.close()
            self.sender = None

    def idle(self) -> bool:
        return self.sender is not None and self.sender.pending == 0

    def _next_message(self, session: int, gap: float, first: bool = False) -> None:
        aum = self.name == "aum"
        delay = (0.5 if first else gap) if aum else self.rng.expovariate(1 / gap)
        self.run.scheduler.after(delay, lambda: self._send(session, gap))

    def _send(self, session: int, gap: float) -> None:
        sender = self.sender
        if session != self.session or sender is None or not self.generating:
            return
        if sender.room:
            body = self.make(self)
            seq = sender.send({k: v for k, v in body.items() if k != INVALID_MARK})
            body["source"], body["seq"] = sender.source, seq
            self.run.sent[(sender.source, seq)] = body
        self._next_message(session, gap)

    def _readable(self, session: int) -> None:
        if session == self.session and not self.pump_pending:
            self.pump_pending = True
            self.run.scheduler.after(0.0, lambda: self._pump(session))

    def _pump(self, session: int) -> None:
        self.pump_pending = False
        sender = self.sender
        if session != self.session or sender is None:
            return
        sender.pump(0)
        self.run.note_acks(sender.source, sender.acked)

    def _tick(self, session: int) -> None:
        if session != self.session or self.sender is None:
            return
        self._pump(session)
        self.run.scheduler.after(PUMP_EVERY, lambda: self._tick(session))


class Watcher:
    """The position watcher: a subscriber to snapshots, perhaps slow, perhaps never reading.
    Whatever it reads must be a snapshot exactly as the controller published it (the
    network may delay, drop, repeat or reorder them, never alter them)."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.sub: FakeSub | None = None
        self.published: dict[tuple[str, int], bytes] = {}
        self.read = 0
        self.session = 0

    def start(self) -> None:
        if self.sub is not None:
            return
        self.session += 1
        session = self.session
        self.sub = FakeSub(self.run.network, "watcher", lambda: None)
        self.sub.setsockopt(zmq.SUBSCRIBE, TOPIC_POSITIONS)
        every = self.run.options.watcher_read_every
        if every != float("inf"):
            self.run.scheduler.after(every, lambda: self._read(session))

    def crash(self) -> None:
        """What it had queued is gone with it; a restart subscribes afresh."""
        if self.sub is not None:
            self.sub.close()
            self.sub = None

    def note_published(self, payload: bytes) -> None:
        body = unpack(payload)
        if len(self.published) >= WATCHER_MEMORY:
            self.published.pop(next(iter(self.published)))
        self.published[(body["instance"], body["seq"])] = payload

    def _read(self, session: int) -> None:
        if session != self.session or self.sub is None:
            return
        while self.sub.inbox:
            _, payload = self.sub.recv_multipart()
            body = unpack(payload)
            key = (body["instance"], body["seq"])
            original = self.published.get(key)
            if original is not None and original != payload:
                self.run.fail(f"the watcher read snapshot {key} unlike the one published")
            self.read += 1
        self.run.scheduler.after(self.run.options.watcher_read_every,
                                 lambda: self._read(session))


@contextmanager
def simulated_process(run: Run) -> Iterator[None]:
    """What the process around the production code provides, simulated for one run: the
    journal's device calls, the batch timer, and session names that do not use uuid4."""
    with ExitStack() as stack:
        stack.enter_context(mounted(run.disk))
        real_time = service_module.time
        service_module.time = types.SimpleNamespace(  # type: ignore[assignment]
            perf_counter=run.scheduler.clock, monotonic=run.scheduler.clock,
            time=lambda: EPOCH + run.scheduler.now,
        )
        stack.callback(setattr, service_module, "time", real_time)
        real_session = sender_module.session_source
        names = random.Random(run.seed)
        sender_module.session_source = (  # type: ignore[assignment]
            lambda name, role: f"{name or role}@{names.getrandbits(32):08x}"
        )
        stack.callback(setattr, sender_module, "session_source", real_session)
        yield


def run_seed(seed: int, minutes: float = 10.0, directory: Path | None = None,
             announce: Callable[[str], None] | None = None) -> Outcome:
    """Run one seed for `minutes` of simulated chaos, then the quiet phase; raises
    Violation (naming the seed and step) when an invariant breaks."""
    options = Options.from_seed(seed, minutes)
    if announce is not None:
        announce(f"seed {seed}: {options.describe()}")
    if directory is None and FAST_DISK.is_dir():
        directory = FAST_DISK
    with tempfile.TemporaryDirectory(prefix=f"sim-{seed}-", dir=directory) as tmp:
        run = Run(options, Path(tmp) / "disk")
        with simulated_process(run):
            return run.run()
