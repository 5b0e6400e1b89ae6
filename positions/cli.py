"""`python -m positions`: print the controller's positions on every snapshot."""

from __future__ import annotations

import argparse
import sys

import zmq
from rich.console import Console

from common import config, logs
from common.lifecycle import StopFlag
from positions.service import PositionServer
from positions.view import positions_table, snapshot_json

DEFAULTS = {"controller": "tcp://127.0.0.1:5556", "format": "table", "log_level": "INFO"}
PIPE_WIDTH = 200  # table width when stdout is not a terminal (e.g. under the launcher)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="positions", description="Print positions and values.")
    config.add_common_flags(p)
    p.add_argument("--controller", metavar="ENDPOINT", help="controller PUB endpoint")
    p.add_argument("--format", choices=["table", "json"], help="table (default) or JSON lines")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        config.resolve(args, DEFAULTS, "positions")
    except config.ConfigError as exc:
        print(f"positions: {exc}", file=sys.stderr)
        return 2
    logs.setup("positions", args.log_level)
    console = Console(width=None if sys.stdout.isatty() else PIPE_WIDTH)

    def show(snapshot: dict, notices: list[str]) -> None:
        if args.format == "json":
            print(snapshot_json(snapshot, notices), flush=True)
        else:
            console.print(positions_table(snapshot, notices))
            sys.stdout.flush()

    stop = StopFlag().install()
    ctx = zmq.Context()
    server = PositionServer(ctx, args.controller, show)
    try:
        server.run(stop)
    finally:
        ctx.term()
    return 0
