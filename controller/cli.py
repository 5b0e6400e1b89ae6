"""`python -m controller`: recover from the journal, then serve until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import gc
import logging
import time
from pathlib import Path

import zmq

from common import config, security
from common.history import recover
from common.lifecycle import StopFlag
from common.protocol import DEFAULT_TICKERS
from controller.book import VALUATIONS
from controller.deadletter import DeadLetters
from controller.engine import Engine
from controller.journal import (
    FSYNC_POLICIES,
    JournalCorrupt,
    JournalFailed,
    JournalHeader,
    JournalLock,
    JournalLocked,
    JournalWriter,
    settle,
)
from controller.service import ControllerService

log = logging.getLogger("controller")

EXIT_BAD_SETTINGS = 2
EXIT_JOURNAL_FAILED = 3  # a journal write or fsync failed: restart, recovery decides
ENGINE_COMPILED = "compiled"  # common-case fills through the compiled path, when it is built
ENGINE_PYTHON = "python"  # the pure Python engine only (the reference)
ENGINES = (ENGINE_COMPILED, ENGINE_PYTHON)

DEFAULTS = {
    "inputs": "tcp://127.0.0.1:5555",
    "publish": "tcp://127.0.0.1:5556",
    "snapshot_interval": 10.0,
    "journal": "data/controller.journal",
    "tickers": list(DEFAULT_TICKERS),
    "fsync": "always",
    "fsync_interval": 1.0,
    "checkpoint_interval": 60.0,
    "source_retire_after": 3600.0,
    "valuation": "book",
    "engine": ENGINE_COMPILED,
    "log_level": "INFO",
    **security.SERVER_DEFAULTS,
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="controller",
        allow_abbrev=False,
        description="Allocate fills across accounts by AUM split.",
        epilog="Tools: python -m controller {audit,replay,keys} --help",
    )
    config.add_common_flags(p)
    p.add_argument(
        "--inputs", metavar="ENDPOINT", help="PULL endpoint to bind for fills and splits"
    )
    p.add_argument("--publish", metavar="ENDPOINT", help="PUB endpoint to bind for events")
    p.add_argument("--snapshot-interval", type=float, metavar="SECONDS")
    p.add_argument(
        "--journal", metavar="PATH", help="journal file (checkpoint and dead letters beside it)"
    )
    p.add_argument("--tickers", type=config.ticker_list, metavar="T1,T2,...")
    p.add_argument("--fsync", choices=FSYNC_POLICIES, help="journal sync policy (default always)")
    p.add_argument("--fsync-interval", type=float, metavar="SECONDS")
    p.add_argument("--checkpoint-interval", type=float, metavar="SECONDS")
    p.add_argument(
        "--source-retire-after",
        type=float,
        metavar="SECONDS",
        help="stop repeating acks of a source idle and fully acknowledged this long",
    )
    p.add_argument(
        "--valuation", choices=VALUATIONS, help="account value: book (cash in) or market"
    )
    p.add_argument(
        "--engine",
        choices=ENGINES,
        help="compiled (default: the compiled path for common-case fills when it is built, "
        "same results) or python (the reference engine only)",
    )
    security.add_flags(p, server=True)
    return p


#: `python -m controller NAME ...` runs a tool instead of the controller; each module has main().
TOOLS = {
    "audit": "controller.tools.audit",
    "replay": "controller.tools.replay",
    "keys": "controller.tools.keys",
}


def setting_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the settings, checked before the journal is touched."""
    for name in (
        "snapshot_interval",
        "fsync_interval",
        "checkpoint_interval",
        "source_retire_after",
    ):
        if not getattr(args, name) > 0:
            return f"{name} must be > 0, got {getattr(args, name)}"
    if args.fsync not in FSYNC_POLICIES:
        return f"fsync must be one of {', '.join(FSYNC_POLICIES)}, got {args.fsync!r}"
    if not args.tickers:
        return "tickers must name at least one ticker"
    if args.valuation not in VALUATIONS:
        return f"valuation must be one of {', '.join(VALUATIONS)}, got {args.valuation!r}"
    if args.engine not in ENGINES:
        return f"engine must be one of {', '.join(ENGINES)}, got {args.engine!r}"
    return None


def main(argv: list[str] | None = None) -> int:
    return config.run_tool_or(argv, TOOLS, serve)


def serve(argv: list[str]) -> int:
    """Run the controller until SIGINT/SIGTERM; the exit code says why it stopped."""
    args = config.settings(parser(), argv, DEFAULTS, "controller")
    problem = setting_problem(args)
    if problem:
        log.error("%s", problem)
        return EXIT_BAD_SETTINGS
    journal_path = Path(args.journal)
    stop = StopFlag().install()
    try:
        lock = JournalLock(journal_path)  # before recovery, which may cut a torn tail
    except JournalLocked as exc:
        log.error("cannot start: %s", exc)
        return EXIT_BAD_SETTINGS
    except OSError as exc:
        log.error("cannot start: cannot use journal location %s: %s", journal_path, exc.strerror)
        return EXIT_BAD_SETTINGS
    try:
        return serve_locked(args, journal_path, stop)
    finally:
        lock.release()


def serve_locked(args: argparse.Namespace, journal_path: Path, stop: StopFlag) -> int:
    """Recover, then serve; the journal lock is held by the caller."""
    checkpoint_path = journal_path.with_name(journal_path.name + ".checkpoint")
    started = time.monotonic()

    def recovered_engine(journal: JournalWriter | None, dead: DeadLetters | None) -> Engine:
        state = recover(journal_path, checkpoint_path, args.tickers, args.valuation)
        return Engine.from_recovered(state, journal, dead, compiled)

    compiled = args.engine == ENGINE_COMPILED

    try:
        settle(journal_path)  # what recovery reads must be what the disk holds
    except JournalFailed as exc:
        log.error("cannot start: %s", exc)
        return EXIT_JOURNAL_FAILED
    try:
        engine = recovered_engine(None, None)
        engine.journal = JournalWriter(
            journal_path,
            args.fsync,
            args.fsync_interval,
            header=JournalHeader.new(args.valuation),
        )
        engine.deadletters = DeadLetters(
            journal_path.with_name(journal_path.name + ".rejected.jsonl")
        )
    except JournalCorrupt as exc:
        log.error("cannot start: %s", exc)
        return EXIT_BAD_SETTINGS
    except OSError as exc:
        log.error("cannot start: cannot write journal %s: %s", journal_path, exc.strerror)
        return EXIT_BAD_SETTINGS
    log.info(
        "recovered %s in %.3f s: %d fills allocated, %d pending, %d sources; %s engine",
        journal_path,
        time.monotonic() - started,
        engine.book.fills_allocated,
        len(engine.book.pending),
        len(engine.sequencer.last_seq),
        "compiled" if engine.fast is not None else "pure Python",
    )
    journal, dead = engine.journal, engine.deadletters
    # The recovered book (a dict per account) lives as long as the process: out of the
    # collector's sight, a full collection costs a few ms instead of 40-100 ms at 10,000
    # accounts, time a fill would otherwise wait.
    gc.freeze()
    ctx = zmq.Context()
    try:
        guard = security.server_security(ctx, args, [args.inputs, args.publish], "controller")
    except security.SecurityError as exc:
        log.error("cannot start: %s", exc)
        journal.close()
        ctx.term()
        return EXIT_BAD_SETTINGS
    try:
        service = ControllerService(
            ctx,
            engine,
            args.inputs,
            args.publish,
            snapshot_interval=args.snapshot_interval,
            checkpoint_path=checkpoint_path,
            checkpoint_interval=args.checkpoint_interval,
            source_retire_after=args.source_retire_after,
            security=guard,
            rebuild=lambda: recovered_engine(journal, dead),
            snapshot_worker=True,
            sync_thread=True,
        )
    except zmq.ZMQError as exc:
        log.error("cannot bind: %s", exc)
        journal.close()
        if guard is not None:
            guard.stop()
        ctx.destroy(linger=0)
        return 1
    try:
        service.run(stop)
    finally:
        service.close()
        if guard is not None:
            guard.stop()
        ctx.destroy(linger=0)
    return EXIT_JOURNAL_FAILED if service.failure else 0
