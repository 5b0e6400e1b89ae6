"""`python -m positions report`: each account's weight against its target over time.

The history comes from the position server's SQLite record (x axis: time) or from the
controller's journal replayed through a fresh Book (x axis: fills allocated). Output: a PNG
chart (one solid line per account for its weight, dashed for its target, dotted vertical
lines at the first fill or snapshot under a new split) and a table of tracking error per account.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from rich.console import Console
from rich.table import Table

from common import config, logs
from common.history import JournalCorrupt, replay_journal
from common.protocol import Allocated, Split, SplitApplied
from positions.desk import BPS_PER_PERCENT_POINT
from positions.record import (
    DEFAULT_RECORD,
    RecordError,
    Run,
    choose_run,
    open_for_reading,
    read_runs,
    read_snapshots,
)

if TYPE_CHECKING:  # matplotlib is imported only when a chart is drawn
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

FILLS_AXIS = "fills allocated"
TIME_AXIS = "time"
FIGURE_SIZE = (12, 6)  # inches
FIGURE_DPI = 100
MARKER_LIMIT = 50  # series shorter than this get a dot per point, so single points show
LEGEND_LIMIT = 20  # accounts beyond this are not listed in the legend
SPLIT_LINE_COLOUR = "grey"
SPLIT_LINE_STYLE: Final = ":"
SPLIT_LINE_WIDTH = 1.0
PIPE_WIDTH = 200  # table width when stdout is not a terminal


class SourceError(ValueError):
    """The history source is missing, unreadable or has nothing to report."""


@dataclass(frozen=True, slots=True)
class Point:
    """Every account's weight and target (percent) at one x: a fill number or a time."""

    x: float | datetime
    weights: dict[str, float]
    targets: dict[str, float]


@dataclass(slots=True)
class History:
    """Weights and targets at successive points, where the split changed, and the x axis."""

    axis: str
    source: str
    points: list[Point] = field(default_factory=list)
    split_changes: list[float | datetime] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)

    def accounts(self) -> list[str]:
        """Every account that appears anywhere, sorted."""
        return sorted({a for point in self.points for a in point.weights})

    def series(self, account: str) -> tuple[list[Any], list[float], list[float]]:
        """x, weight and target of `account` at the points where it exists."""
        present = [p for p in self.points if account in p.weights]
        return (
            [p.x for p in present],
            [p.weights[account] for p in present],
            [p.targets.get(account, 0.0) for p in present],
        )


@dataclass(frozen=True, slots=True)
class TrackingError:
    """How far one account's weight strayed from its target, in basis points."""

    samples: int
    mean_bps: float
    max_bps: float
    weight: float
    target: float


# -- histories -----------------------------------------------------------------------------
def history_from_journal(path: str | Path) -> History:
    """Replay a controller journal (common.history): one point per fill allocated."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"journal {path} does not exist")
    history = History(FILLS_AXIS, f"journal {path}")
    split: Split | None = None
    try:
        for _, decisions, book in replay_journal(path):
            allocated = sum(type(d) is Allocated for d in decisions)
            for decision in decisions:
                if type(decision) is SplitApplied:
                    if split is not None and split_key(split) != split_key(decision.split):
                        # the first fill under the new split
                        history.split_changes.append(book.fills_allocated - allocated + 1)
                    split = decision.split
            if allocated:
                history.points.append(  # weights in the valuation the journal tracks
                    book_point(book.fills_allocated, book.accounts, book.valued(), split)
                )
    except JournalCorrupt as exc:
        raise SourceError(str(exc)) from None
    return history


def split_key(split: Split) -> tuple[str, int]:
    """A split's identity, as the record keeps it: its source and sequence number."""
    return split.source, split.seq


def book_point(
    fills: int, accounts: list[str], values: list[int], split: Split | None
) -> Point:
    """Weights (from book values) and targets (from the split) after a fill."""
    total = sum(values)
    targets = split.target_percent() if split else {}
    weights = {
        account: 100 * value / total if total else 0.0
        for account, value in zip(accounts, values, strict=True)
    }
    return Point(fills, weights, {a: targets.get(a, 0.0) for a in weights})


def history_from_record(path: str | Path, run: str | None = None) -> History:
    """Recorded snapshots (of one controller run, or all): one point per snapshot with fills."""
    db = open_for_reading(path)
    try:
        runs = read_runs(db)
        instance = choose_run(runs, run) if run else None
        snapshots = read_snapshots(db, instance)
    finally:
        db.close()
    source = f"record {path}" + (f", run {instance}" if instance else "")
    history = History(TIME_AXIS, source, runs=runs)
    previous_split = None
    for snapshot in snapshots:
        if snapshot.fills == 0:  # nothing held yet: weights are not defined
            continue
        when = datetime.fromtimestamp(snapshot.time)
        if previous_split is not None and snapshot.split != previous_split:
            history.split_changes.append(when)
        previous_split = snapshot.split
        history.points.append(Point(when, snapshot.weights, snapshot.targets))
    return history


def load_history(args: argparse.Namespace) -> History:
    """The history the arguments name; SourceError if there is nothing to report."""
    try:
        if args.journal:
            history = history_from_journal(args.journal)
        else:
            history = history_from_record(args.record or DEFAULT_RECORD, args.run)
    except RecordError as exc:
        raise SourceError(str(exc)) from None
    if not history.points:
        raise SourceError(f"{history.source} has no allocated fills to report")
    return history


# -- summary -------------------------------------------------------------------------------
def tracking_errors(history: History) -> dict[str, TrackingError]:
    """Per account: samples, mean and max |weight - target| in bps, final weight and target."""
    errors = {}
    for account in history.accounts():
        _, weights, targets = history.series(account)
        gaps = [abs(w - t) * BPS_PER_PERCENT_POINT for w, t in zip(weights, targets, strict=True)]
        errors[account] = TrackingError(
            len(gaps), sum(gaps) / len(gaps), max(gaps), weights[-1], targets[-1]
        )
    return errors


def summary_table(history: History, errors: dict[str, TrackingError]) -> Table:
    """Tracking error per account as a rich table."""
    table = Table(title=f"Tracking error, {history.source} ({len(history.points):,} points)")
    table.add_column("Account", style="bold")
    for heading in ("Samples", "Mean |dev| (bp)", "Max |dev| (bp)", "Weight %", "Target %"):
        table.add_column(heading, justify="right")
    for account, error in errors.items():
        table.add_row(
            account,
            f"{error.samples:,}",
            f"{error.mean_bps:,.1f}",
            f"{error.max_bps:,.1f}",
            f"{error.weight:.3f}",
            f"{error.target:.3f}",
        )
    table.caption = f"{len(history.split_changes)} split change(s)"
    return table


def runs_table(runs: list[Run]) -> Table:
    """The controller runs in a record, for choosing one with --run."""
    table = Table(title="Controller runs in the record (choose one with --run)")
    for heading in ("Instance", "First snapshot", "Last snapshot", "Snapshots"):
        table.add_column(heading)
    for run in runs:
        table.add_row(
            run.instance,
            datetime.fromtimestamp(run.first).strftime("%Y-%m-%d %H:%M:%S"),
            datetime.fromtimestamp(run.last).strftime("%Y-%m-%d %H:%M:%S"),
            f"{run.snapshots:,}",
        )
    return table


# -- chart ---------------------------------------------------------------------------------
def build_figure(history: History) -> Figure:
    """The drift chart: per account a solid weight line and a dashed target line, in one
    colour, and a dotted vertical line at each split change."""
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, date2num
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    figure = Figure(figsize=FIGURE_SIZE, dpi=FIGURE_DPI, layout="constrained")
    ax = figure.add_subplot()
    accounts = history.accounts()
    for index, account in enumerate(accounts):
        colour = f"C{index % 10}"
        xs, weights, targets = history.series(account)
        marker = "." if len(xs) < MARKER_LIMIT else None
        ax.plot(xs, weights, color=colour, marker=marker, label=account)
        ax.plot(xs, targets, color=colour, linestyle="--", linewidth=1, drawstyle="steps-post")
    for x in history.split_changes:
        ax.axvline(
            date2num(x) if isinstance(x, datetime) else x,
            color=SPLIT_LINE_COLOUR,
            linestyle=SPLIT_LINE_STYLE,
            linewidth=SPLIT_LINE_WIDTH,
        )
    if history.axis == TIME_AXIS:
        locator = AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.set_xlabel(history.axis)
    ax.set_ylabel("weight (% of book value)")
    ax.set_title(f"Account weights against targets, {history.source}")
    ax.grid(True, alpha=0.3)
    if len(accounts) <= LEGEND_LIMIT:
        handles, _ = ax.get_legend_handles_labels()
        handles += [
            Line2D([], [], color="black", linestyle="--", linewidth=1, label="target"),
            Line2D(
                [],
                [],
                color=SPLIT_LINE_COLOUR,
                linestyle=SPLIT_LINE_STYLE,
                linewidth=SPLIT_LINE_WIDTH,
                label="split changed",
            ),
        ]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    return figure


def write_chart(history: History, output: str | Path) -> None:
    """Draw the chart and save it as a PNG at `output`."""
    figure = build_figure(history)
    try:
        figure.savefig(output, format="png")
    except OSError as exc:
        raise SourceError(f"cannot write {output}: {exc.strerror or exc}") from None


# -- shell ---------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    """The report's flags: one source (--record or --journal), --run, --output."""
    p = argparse.ArgumentParser(
        prog="positions report",
        allow_abbrev=False,
        description="Chart each account's weight against its target; print tracking error.",
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--record", metavar="PATH", help=f"position server record (default {DEFAULT_RECORD})"
    )
    source.add_argument("--journal", metavar="PATH", help="controller journal to replay instead")
    p.add_argument("--run", metavar="INSTANCE", help="one controller run of the record")
    p.add_argument("--output", metavar="FILE.png", required=True, help="PNG file to write")
    config.add_log_level(p, default="INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    """Write the chart and print the summary; 0, or 2 with a message for a bad source."""
    p = parser()
    args = p.parse_args(argv)
    if args.run and args.journal:
        p.error("--run chooses a controller run of a --record; a journal holds one run")
    logs.setup("positions-report", args.log_level)
    try:
        history = load_history(args)
        write_chart(history, args.output)
    except SourceError as exc:
        print(f"positions report: {exc}", file=sys.stderr)
        return 2
    console = Console(width=None if sys.stdout.isatty() else PIPE_WIDTH)
    if len(history.runs) > 1 and not args.run:
        console.print(runs_table(history.runs))
    console.print(summary_table(history, tracking_errors(history)))
    log.info("wrote %s", args.output)
    return 0
