"""`python -m aumsim`: an AUM server that PUSHes the account split to the controller."""

from __future__ import annotations

import argparse
import logging

import zmq

from aumsim.service import AumSimulator
from aumsim.splits import BASIS_POINTS, DEFAULT_DRIFT, INDEPENDENT, account_names
from common import config, security
from common.lifecycle import StopFlag
from common.sender import sender_from_settings

log = logging.getLogger("aumsim")

DEFAULTS = {
    "controller": "tcp://127.0.0.1:5555",
    "acks": "tcp://127.0.0.1:5556",
    "source": None,
    "interval": 30.0,
    "accounts": 5,
    "count": None,
    "seed": None,
    "drift": DEFAULT_DRIFT,
    "independent": False,
    "log_level": "INFO",
    **security.CLIENT_DEFAULTS,
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="aumsim", description="Send simulated AUM splits.", allow_abbrev=False
    )
    config.add_common_flags(p)
    p.add_argument("--controller", metavar="ENDPOINT", help="controller inputs to connect to")
    p.add_argument("--acks", metavar="ENDPOINT", help="controller PUB endpoint (for acks)")
    p.add_argument("--source", metavar="NAME", help="this AUM server's name")
    p.add_argument("--interval", type=float, metavar="SECONDS", help="seconds between splits")
    p.add_argument("--accounts", type=int, metavar="N", help="number of accounts (default 5)")
    p.add_argument("--count", type=int, metavar="N", help="stop after N acknowledged splits")
    p.add_argument("--seed", type=int, metavar="N", help="seed for reproducible splits")
    walk = p.add_mutually_exclusive_group()
    walk.add_argument(
        "--drift",
        type=float,
        metavar="FRACTION",
        help=f"each split moves this share of the way towards a fresh random one "
        f"(more than 0, at most 1; default {DEFAULT_DRIFT})",
    )
    walk.add_argument(
        "--independent",
        action="store_true",
        default=None,
        help="every split a fresh random one, independent of the last (--drift 1)",
    )
    security.add_flags(p, server=False)
    return p


def main(argv: list[str] | None = None) -> int:
    args = config.settings(parser(), argv, DEFAULTS, "aumsim")
    if args.interval <= 0 or not 1 <= args.accounts <= BASIS_POINTS:
        log.error("--interval must be > 0 and --accounts from 1 to %d", BASIS_POINTS)
        return 2
    drift = INDEPENDENT if args.independent else args.drift
    if isinstance(drift, bool) or not isinstance(drift, int | float) or not 0 < drift <= 1:
        log.error("--drift must be more than 0 and at most 1, got %s", drift)
        return 2
    stop = StopFlag().install()
    ctx = zmq.Context()
    try:
        sender = sender_from_settings(ctx, args, "aumsim")
    except (security.SecurityError, ValueError) as exc:
        log.error("cannot start: %s", exc)
        ctx.term()
        return 2
    source = sender.source
    simulator = AumSimulator(
        sender, account_names(args.accounts), args.interval, args.count, args.seed, drift=drift
    )
    log.info(
        "AUM server %s started: %d accounts every %.1f s, %s",
        source,
        args.accounts,
        args.interval,
        "independent splits" if drift == INDEPENDENT else f"drifting {drift:g} of the way",
    )
    try:
        simulator.run(stop)
    finally:
        sender.close()
        ctx.term()
    return 0
