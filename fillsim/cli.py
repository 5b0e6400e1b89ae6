"""`python -m fillsim`: a fill server that PUSHes simulated fills to the controller."""

from __future__ import annotations

import argparse
import logging

import zmq

from common import config, security
from common.lifecycle import StopFlag
from common.protocol import DEFAULT_TICKERS
from common.sender import sender_from_settings
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
    "log_level": "INFO",
    **security.CLIENT_DEFAULTS,
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fillsim", description="Send simulated fills.")
    config.add_common_flags(p)
    p.add_argument("--controller", metavar="ENDPOINT", help="controller inputs to connect to")
    p.add_argument("--acks", metavar="ENDPOINT", help="controller PUB endpoint (for acks)")
    p.add_argument("--source", metavar="NAME", help="this fill server's name")
    p.add_argument("--interval", type=float, metavar="SECONDS", help="mean gap between fills")
    p.add_argument("--rate", type=float, metavar="PER_SECOND", help="steady rate (load tests)")
    p.add_argument("--count", type=int, metavar="N", help="stop after N acknowledged fills")
    p.add_argument("--seed", type=int, metavar="N", help="seed for a reproducible stream")
    p.add_argument("--tickers", type=config.ticker_list, metavar="T1,...")
    security.add_flags(p, server=False)
    return p


def main(argv: list[str] | None = None) -> int:
    args = config.settings(parser(), argv, DEFAULTS, "fillsim")
    if args.interval <= 0 or (args.rate is not None and args.rate <= 0):
        log.error("--interval and --rate must be > 0")
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
    simulator = FillSimulator(
        sender, Market(args.tickers, args.seed), args.interval, args.rate, args.count, args.seed
    )
    log.info("fill server %s started (seed %s)", source, args.seed)
    try:
        simulator.run(stop)
    finally:
        sender.close()
        ctx.term()
    return 0
