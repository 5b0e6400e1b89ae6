"""`python -m positions`: show (and record) the controller's positions on every snapshot.

`python -m positions report ...` runs the drift report instead (see positions/report.py).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Callable
from typing import Any

import zmq
from rich.console import Console

from common import config, security
from common.lifecycle import StopFlag
from positions.live import LiveDisplay
from positions.record import DEFAULT_RECORD, Recorder, RecordError
from positions.service import PositionServer
from positions.view import DEVIATION_ALERT_BPS, positions_table, snapshot_json

log = logging.getLogger("positions")

DEFAULTS = {
    "controller": "tcp://127.0.0.1:5556",
    "format": "table",
    "live": False,
    "alert_bps": DEVIATION_ALERT_BPS,
    "record": DEFAULT_RECORD,
    "log_level": "INFO",
    **security.CLIENT_DEFAULTS,
}
FORMATS = ("table", "json")
PIPE_WIDTH = 200  # table width when stdout is not a terminal (e.g. under the launcher)

#: `python -m positions NAME ...` runs a tool instead of the server; each module has main().
TOOLS = {"report": "positions.report"}

Show = Callable[[dict[str, Any], list[str]], None]


def parser() -> argparse.ArgumentParser:
    """The server's flags; all default to None so config.resolve can tell what was given."""
    p = argparse.ArgumentParser(
        prog="positions",
        description="Print positions and values; record every snapshot.",
        epilog="Tools: python -m positions report --help",
    )
    config.add_common_flags(p)
    p.add_argument("--controller", metavar="ENDPOINT", help="controller PUB endpoint")
    p.add_argument("--format", choices=FORMATS, help="table (default) or JSON lines")
    p.add_argument(
        "--live",
        action="store_true",
        default=None,
        help="redraw one table in place (terminals only; table format)",
    )
    p.add_argument(
        "--alert-bps",
        type=_non_negative,
        metavar="BPS",
        help=f"highlight deviations beyond this (default {DEVIATION_ALERT_BPS})",
    )
    recording = p.add_mutually_exclusive_group()
    recording.add_argument(
        "--record", metavar="PATH", help=f"SQLite file of snapshots (default {DEFAULT_RECORD})"
    )
    recording.add_argument(
        "--no-record", dest="record", action="store_const", const="", help="do not record"
    )
    security.add_flags(p, server=False)
    return p


def _non_negative(text: str) -> float:
    """argparse type: a number of basis points, zero or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be zero or more, got {text}")
    return value


def check_settings(args: argparse.Namespace) -> None:
    """Reject settings a config file can give wrongly (flags are checked by argparse)."""
    if args.format not in FORMATS:
        raise config.ConfigError(f"format must be one of {', '.join(FORMATS)}: {args.format!r}")
    if not isinstance(args.live, bool):
        raise config.ConfigError(f"live must be true or false, got {args.live!r}")
    if (
        isinstance(args.alert_bps, bool)
        or not isinstance(args.alert_bps, int | float)
        or not args.alert_bps >= 0
    ):
        raise config.ConfigError(f"alert_bps must be a number >= 0, got {args.alert_bps!r}")
    if not isinstance(args.record, str):
        raise config.ConfigError(f'record must be a path (or "" for none): {args.record!r}')
    if args.live and args.format != "table":
        raise config.ConfigError("--live shows a table; it cannot be used with --format json")


def main(argv: list[str] | None = None) -> int:
    """Run a tool (`report`) if named first, else the position server."""
    return config.run_tool_or(argv, TOOLS, serve)


def serve(argv: list[str]) -> int:
    """Run the position server until SIGINT/SIGTERM; 2 for bad settings or record file."""
    args = config.settings(parser(), argv, DEFAULTS, "positions", check_settings)
    console = Console(width=None if sys.stdout.isatty() else PIPE_WIDTH)
    live = wants_live(args.live, sys.stdout.isatty())
    try:
        recorder = Recorder(args.record) if args.record else None
    except RecordError as exc:
        print(f"positions: {exc}", file=sys.stderr)
        return 2
    display = LiveDisplay(console, args.alert_bps) if live else None
    show = display.show if display else plain_show(args.format, console, args.alert_bps)
    if recorder is not None:
        show = recording(recorder, show)

    try:
        configure = security.client_security(args, [args.controller], "positions")
    except security.SecurityError as exc:
        log.error("cannot start: %s", exc)
        return 2
    stop = StopFlag().install()
    ctx = zmq.Context()
    server = PositionServer(ctx, args.controller, show, configure=configure)
    if display is not None:
        display.attach(server.watcher)
    try:
        with display or contextlib.nullcontext():
            server.run(stop)
    finally:
        if recorder is not None:
            recorder.close()
        ctx.term()
    return 0


def wants_live(asked: bool, terminal: bool) -> bool:
    """Live only when asked and stdout is a terminal; otherwise say why it is plain."""
    if asked and not terminal:
        log.warning("--live needs a terminal; printing one table per snapshot instead")
    return asked and terminal


def plain_show(format_: str, console: Console, alert_bps: float) -> Show:
    """One table (or one JSON line) per snapshot, scrolling."""

    def show(snapshot: dict[str, Any], notices: list[str]) -> None:
        if format_ == "json":
            print(snapshot_json(snapshot, notices), flush=True)
        else:
            console.print(positions_table(snapshot, notices, alert_bps))
            sys.stdout.flush()

    return show


def recording(recorder: Recorder, show: Show) -> Show:
    """`show` preceded by writing the snapshot to the record."""

    def record_and_show(snapshot: dict[str, Any], notices: list[str]) -> None:
        recorder.write(snapshot)
        show(snapshot, notices)

    return record_and_show
