"""`python -m positions`: show (and record) the controller's positions on every snapshot.

`python -m positions report ...` runs the drift report instead (see positions/report.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq
from rich.console import Console

from common import config, security
from common.lifecycle import StopFlag
from positions.desk import desk_json
from positions.live import LiveDisplay
from positions.record import (
    DEFAULT_RECORD,
    Recorder,
    RecordError,
    open_for_reading,
    read_recent,
)
from positions.service import PositionServer, Update
from positions.view import DEVIATION_ALERT_BPS, desk_view
from positions.web import HISTORY_POINTS, WebError, WebView, parse_address, recorded_points

log = logging.getLogger("positions")

DEFAULTS = {
    "controller": "tcp://127.0.0.1:5556",
    "format": "table",
    "live": False,
    "alert_bps": DEVIATION_ALERT_BPS,
    "record": DEFAULT_RECORD,
    "http": "",
    "http_public": False,
    "log_level": "INFO",
    **security.CLIENT_DEFAULTS,
}
FORMATS = ("table", "json")

#: `python -m positions NAME ...` runs a tool instead of the server; each module has main().
TOOLS = {"report": "positions.report"}

Show = Callable[[Update], None]


def parser() -> argparse.ArgumentParser:
    """The server's flags; all default to None so config.resolve can tell what was given."""
    p = argparse.ArgumentParser(
        prog="positions",
        allow_abbrev=False,
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
    p.add_argument(
        "--http",
        metavar="HOST:PORT",
        help='serve the web view, /api/snapshot and /metrics there (default: off; "" for off)',
    )
    p.add_argument(
        "--http-public",
        action="store_true",
        default=None,
        help="allow --http on an address other hosts can reach (no authentication)",
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
    if not isinstance(args.http, str):
        raise config.ConfigError(f'http must be "HOST:PORT" (or "" for off): {args.http!r}')
    if not isinstance(args.http_public, bool):
        raise config.ConfigError(f"http_public must be true or false, got {args.http_public!r}")
    if args.live and args.format != "table":
        raise config.ConfigError("--live shows a table; it cannot be used with --format json")


def main(argv: list[str] | None = None) -> int:
    """Run a tool (`report`) if named first, else the position server."""
    return config.run_tool_or(argv, TOOLS, serve)


def serve(argv: list[str]) -> int:
    """Run the position server until SIGINT/SIGTERM.

    Exit codes: 0 when stopped, 2 for bad settings, a record file or web address that
    cannot be used, 1 when anything fails while running (a view that cannot draw, the web
    server dying): the process ends rather than staying alive and silent, so the launcher
    restarts it. Sockets are closed before the context is terminated, so exit never blocks.
    """
    args = config.settings(parser(), argv, DEFAULTS, "positions", check_settings)
    terminal = sys.stdout.isatty()
    live = wants_live(args.live, terminal)
    console = Console(highlight=False)  # COLUMNS when set, else the terminal's width, else 80
    try:
        configure = security.client_security(args, [args.controller], "positions")
        recorder = Recorder(args.record) if args.record else None
    except (security.SecurityError, RecordError) as exc:
        log.error("cannot start: %s", exc)
        return 2
    try:
        web_view = start_web(args.http, args.http_public, args.record)
    except WebError as exc:
        log.error("cannot start: %s", exc)
        if recorder is not None:
            recorder.close()
        return 2
    display = LiveDisplay(console, args.alert_bps) if live else None
    views = [display.show if display else plain_show(args.format, console, args.alert_bps)]
    if web_view is not None:
        views.append(web_view.show)
    checks = tuple(v.check for v in (display, web_view) if v is not None)

    stop = StopFlag().install()
    ctx = zmq.Context()
    server = PositionServer(
        ctx,
        args.controller,
        fan_out(views),
        configure=configure,
        record=recorder.write if recorder else None,
    )
    code = 0
    try:
        with display or contextlib.nullcontext():
            server.run(stop, checks)
    except Exception:
        log.exception("position server failed; exiting")
        code = 1
    finally:
        server.close()
        if web_view is not None:
            web_view.close()
        if recorder is not None:
            recorder.close()
        ctx.term()
    return code


def start_web(address: str, public: bool, record: str = "") -> WebView | None:
    """The web view on `address` (HOST:PORT), started, or None when `address` is empty.

    Its drift chart starts with the newest snapshots of the `record` file, if there is one.
    """
    if not address:
        return None
    host, port = parse_address(address)
    web_view = WebView(host, port, public=public)
    web_view.seed(recorded_history(record))
    url = web_view.start()
    print(f"positions: web view at {url}", file=sys.stderr, flush=True)
    return web_view


def recorded_history(record: str) -> list[dict[str, Any]]:
    """Chart points from the record file, or none (logged) when it cannot be read."""
    if not record or not Path(record).is_file():
        return []
    try:
        db = open_for_reading(record)
        try:
            return recorded_points(read_recent(db, HISTORY_POINTS))
        finally:
            db.close()
    except (RecordError, sqlite3.Error) as exc:
        log.warning("web view chart starts empty: %s", exc)
        return []


def fan_out(views: list[Show]) -> Show:
    """One PositionServer callback that updates every view in turn."""

    def show(update: Update) -> None:
        for view in views:
            view(update)

    return show


def wants_live(asked: bool, terminal: bool) -> bool:
    """Live only when asked and stdout is a terminal; otherwise say why it is plain."""
    if asked and not terminal:
        log.warning("--live needs a terminal; printing one table per snapshot instead")
    return asked and terminal


def plain_show(format_: str, console: Console, alert_bps: float) -> Show:
    """One set of tables (or one JSON line) per snapshot, scrolling."""

    def show(update: Update) -> None:
        if format_ == "json":
            document = desk_json(update.desk, update.notices, update.restarts, update.missed)
            print(json.dumps(document, sort_keys=True), flush=True)
        else:
            console.print(desk_view(update.desk, update.notices, console.width, alert_bps))
            console.print()
            sys.stdout.flush()

    return show
