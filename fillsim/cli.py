"""`python -m fillsim`: a fill server that PUSHes simulated fills to the controller."""

from __future__ import annotations

import argparse
import logging

import zmq

from common import config, security
from common.lifecycle import StopFlag
from common.protocol import DEFAULT_TICKERS
from common.sender import sender_from_settings
from fillsim.holdings import Holdings
from fillsim.market import Market
from fillsim.service import FillSimulator

log = logging.getLogger("fillsim")

DEFAULTS = {
    "controller": "tcp://127.0.0.1:5555",
    "acks": "tcp://127.0.0.1:5556",
    "source": None,
    "interval": 1.0,
    "rate": None,
    "count": None,
    "seed": None,
    "tickers": list(DEFAULT_TICKERS),
    "sell_fraction": 0.33,
    "log_level": "INFO",
    **security.CLIENT_DEFAULTS,
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fillsim", description="Send simulated fills.", allow_abbrev=False
    )
    config.add_common_flags(p)
    p.add_argument("--controller", metavar="ENDPOINT", help="controller inputs to connect to")
    p.add_argument("--acks", metavar="ENDPOINT", help="controller PUB endpoint (for acks)")
    p.add_argument("--source", metavar="NAME", help="this fill server's name")
    p.add_argument("--interval", type=float, metavar="SECONDS", help="mean gap between fills")
    p.add_argument("--rate", type=float, metavar="PER_SECOND", help="steady rate (load tests)")
    p.add_argument("--count", type=int, metavar="N", help="stop after N acknowledged fills")
    p.add_argument("--seed", type=int, metavar="N", help="seed for a reproducible stream")
    p.add_argument("--tickers", type=config.ticker_list, metavar="T1,...")
    p.add_argument(
        "--sell-fraction",
        type=float,
        metavar="F",
        help="share of fills that sell what the accounts hold (default 0.33; 0 buys only)",
    )
    security.add_flags(p, server=False)
    return p


def main(argv: list[str] | None = None) -> int:
    args = config.settings(parser(), argv, DEFAULTS, "fillsim")
    if args.interval <= 0 or (args.rate is not None and args.rate <= 0):
        log.error("--interval and --rate must be > 0")
        return 2
    if not 0 <= args.sell_fraction <= 1:
        log.error("--sell-fraction must be between 0 and 1, got %s", args.sell_fraction)
        return 2
    stop = StopFlag().install()
    ctx = zmq.Context()
    try:
        sender = sender_from_settings(ctx, args, "fillsim")
    except (security.SecurityError, ValueError) as exc:
        log.error("cannot start: %s", exc)
        ctx.term()
        return 2
    source = sender.source
    holdings = None
    if args.sell_fraction > 0:
        configure = security.client_security(args, [args.controller, args.acks], "fillsim")
        holdings = Holdings(ctx, args.acks, configure)
    simulator = FillSimulator(
        sender,
        Market(args.tickers, args.seed),
        args.interval,
        args.rate,
        args.count,
        args.seed,
        holdings=holdings,
        sell_fraction=args.sell_fraction,
    )
    log.info("fill server %s started (seed %s)", source, args.seed)
    try:
        simulator.run(stop)
    finally:
        sender.close()
        if holdings is not None:
            holdings.close()
        ctx.term()
    return 0
