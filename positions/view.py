"""Rendering a desk snapshot for terminals: tables that fit the width, never cut.

Two tables under a header. The summary has one row per account (book value, market value,
weight, target, deviation in basis points and in money); the positions table has one row
per account and one column per ticker, with the total and the last price under them. A
table that is wider than the terminal is split into blocks of columns, each repeating the
account column, so no number or name is ever cut or abbreviated: rich would otherwise
shrink columns and put `…` in them. Every cell is a `rich.text.Text`, so names from the
wire (`[/]`, `[bold red]x`) are shown literally and never parsed as markup.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

from rich import box
from rich.console import Console, Group, RenderableType
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from positions.desk import BPS_PER_PERCENT_POINT as BPS_PER_PERCENT_POINT  # for report.py
from positions.desk import CLOCK_FORMAT, Desk, local_time

DEVIATION_ALERT_BPS = 50  # deviations beyond this many basis points are highlighted
BAR_WIDTH = 20  # cells in the live view's weight bar
BAR_BLOCKS = " ▏▎▍▌▋▊▉█"  # a cell filled in eighths, empty to full
BAR_STYLE = "cyan"
TARGET_MARK = "┆"  # drawn where the target falls when the bar does not reach it
TARGET_STYLE = "bold yellow"
ALERT_STYLE = "bold red"
STALE_STYLE = "bold red"
NOTICE_STYLE = "yellow"
TITLE_STYLE = "bold"
MIN_WIDTH = 20  # narrower terminals are treated as this wide
MEASURE_WIDTH = 100_000  # room given to a table when measuring its natural width
NEVER_MOVE = (
    "Allocations already made never move: after a change of split, a gap to target closes "
    "only as new fills arrive."
)

#: No vertical lines; a rule under the headings and above the total rows (the section).
TABLE_BOX = box.Box("    \n    \n ── \n    \n ── \n    \n    \n    \n")

_measurer = Console(width=MEASURE_WIDTH, file=io.StringIO(), color_system=None)


@dataclass(frozen=True)
class Column:
    """One column of a table: its heading, a cell per account, and its total row cells."""

    heading: str
    cells: Sequence[Text]
    footer: Sequence[Text] = ()
    justify: str = "right"


# -- the header ----------------------------------------------------------------------------
def header(
    desk: Desk,
    now: float | None = None,
    restarts: int = 0,
    missed: int = 0,
    stale_after: float | None = None,
) -> Text:
    """Snapshot number, date and time with zone, the split in force and when it arrived,
    counts; in the live view (`now` given) the snapshot's age, restarts and misses."""
    text = Text()
    text.append(f"Positions #{desk.seq}", style=TITLE_STYLE)
    text.append(f"  {local_time(desk.time)}  controller ")
    text.append(desk.instance)
    text.append("\nSplit in force: ")
    split = desk.split
    if split is None:
        text.append("none yet (fills wait for the first split)")
    else:
        text.append(split.name)
        if split.received is not None:
            text.append(f", received {local_time(split.received, CLOCK_FORMAT)}")
        elif split.first_seen is not None:
            text.append(f", first seen {local_time(split.first_seen, CLOCK_FORMAT)}")
    if desk.paused:
        text.append("  PAUSED", style=ALERT_STYLE)
    text.append(
        f"\n{desk.count('fills'):,} fills allocated, {desk.count('pending'):,} pending, "
        f"{desk.count('rejected'):,} rejected, {desk.count('duplicates'):,} duplicates, "
        f"{len(desk.accounts):,} accounts"
    )
    if now is not None:
        age = max(0.0, now - desk.time)
        stale = stale_after is not None and age > stale_after
        text.append("\n")
        text.append(f"age {age:.0f} s", style=STALE_STYLE if stale else "")
        text.append(f", {restarts} controller restart(s), {missed} snapshot(s) missed")
    return text


# -- the tables ----------------------------------------------------------------------------
def summary_columns(desk: Desk, alert_bps: float, bars: bool) -> list[Column]:
    """Per account: book value, market value, weight, target, (bar,) deviation bp and money."""
    rows = desk.accounts
    largest = max((max(r.weight_pct, r.target_pct) for r in rows), default=0.0)
    columns = [
        Column(
            "Book value",
            [Text(f"{r.book_value:,.2f}") for r in rows],
            [Text(f"{desk.total_book_value:,.2f}")],
        ),
        Column(
            "Market value",
            [Text(f"{r.market_value:,.2f}") for r in rows],
            [Text(f"{desk.total_market_value:,.2f}")],
        ),
        Column(
            "Weight %",
            [Text(f"{r.weight_pct:.3f}") for r in rows],
            [Text("100.000" if rows else "")],
        ),
        Column("Target %", [Text(f"{r.target_pct:.3f}") for r in rows], [Text("")]),
    ]
    if bars:
        columns.append(
            Column(
                f"Weight ({TARGET_MARK} target)",
                [weight_bar(r.weight_pct, r.target_pct, largest) for r in rows],
                [Text("")],
                justify="left",
            )
        )
    columns += [
        Column("Dev bp", [deviation_text(r.deviation_bp, alert_bps) for r in rows], [Text("")]),
        Column(
            "Dev value",
            [deviation_text(r.deviation_bp, alert_bps, r.deviation_value, ",.2f") for r in rows],
            [Text("")],
        ),
    ]
    return columns


def positions_columns(desk: Desk) -> list[Column]:
    """Shares per ticker per account, the total, and the ticker's last price."""
    return [
        Column(
            ticker,
            [Text(f"{r.positions.get(ticker, 0):,}") for r in desk.accounts],
            [
                Text(f"{desk.total_positions.get(ticker, 0):,}"),
                Text(f"{desk.prices[ticker]:,.2f}" if ticker in desk.prices else "none"),
            ],
        )
        for ticker in desk.tickers
    ]


def fitted_tables(
    title: str,
    names: Sequence[str],
    columns: Sequence[Column],
    footers: Sequence[str],
    width: int,
) -> list[RenderableType]:
    """`columns` beside an account column, split into as few blocks as fit in `width`,
    each under its title: [title, table, title, table, ...].

    Columns keep their order; each block repeats the account column, and the blocks are
    as even as fits. A single column too wide even alone gets a block of its own, where
    the account names fold onto more lines rather than being cut.
    """
    blocks = column_blocks(names, columns, footers, max(width, MIN_WIDTH))
    parts: list[RenderableType] = []
    for n, block in enumerate(blocks, 1):
        heading = f"{title} ({n}/{len(blocks)})" if len(blocks) > 1 else title
        parts += [Text(heading, style=TITLE_STYLE), block_table(names, block, footers)]
    return parts


def column_blocks(
    names: Sequence[str], columns: Sequence[Column], footers: Sequence[str], width: int
) -> list[list[Column]]:
    """The fewest blocks of consecutive columns that each fit in `width`, as even as fits."""

    def fits(block: Sequence[Column]) -> bool:
        return natural_width(block_table(names, block, footers)) <= width

    greedy: list[list[Column]] = []
    for column in columns:
        if greedy and fits([*greedy[-1], column]):
            greedy[-1].append(column)
        else:
            greedy.append([column])
    if len(greedy) < 2:
        return greedy or [[]]
    size = -(-len(columns) // len(greedy))  # ceiling: the most even split into as many
    even = [list(columns[i : i + size]) for i in range(0, len(columns), size)]
    if len(even) == len(greedy) and all(fits(block) for block in even):
        return even
    return greedy


def block_table(names: Sequence[str], columns: Sequence[Column], footers: Sequence[str]) -> Table:
    """One table: the account column, then `columns`, then a section of footer rows."""
    table = Table(
        box=TABLE_BOX, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0), expand=False
    )
    table.add_column("Account", overflow="fold", style="bold")
    for column in columns:
        table.add_column(column.heading, justify=column.justify, no_wrap=True)  # type: ignore[arg-type]
    for i, name in enumerate(names):
        table.add_row(Text(name), *(column.cells[i] for column in columns))
    if any(cell.plain for column in columns for cell in column.footer):  # else no total row
        table.add_section()
        for j, footer in enumerate(footers):
            cells = [c.footer[j] if j < len(c.footer) else Text("") for c in columns]
            table.add_row(Text(footer, style="bold"), *cells)
    return table


def natural_width(table: Table) -> int:
    """The width `table` takes when nothing is shrunk."""
    return Measurement.get(_measurer, _measurer.options, table).maximum


def desk_view(
    desk: Desk,
    notices: Sequence[str] = (),
    width: int = 80,
    alert_bps: float = DEVIATION_ALERT_BPS,
    now: float | None = None,
    restarts: int = 0,
    missed: int = 0,
    stale_after: float | None = None,
    height: int | None = None,
) -> Group:
    """The header, any notices, the summary and the positions, all within `width`.

    With `now` it is the live screen: the header shows the snapshot's age, the summary a
    weight bar per account when that still fits in one block, and when `height` rows
    cannot hold everything the positions give way to a line saying where to see them
    (a screen redrawn in place cannot scroll; rich would crop the bottom).
    """
    names = [row.name for row in desk.accounts]
    live = now is not None
    parts: list[RenderableType] = [header(desk, now, restarts, missed, stale_after)]
    if notices:
        parts.append(Text(" | ".join(notices), style=NOTICE_STYLE))
    summary = summary_columns(desk, alert_bps, bars=live)
    if live and len(column_blocks(names, summary, ["Total"], max(width, MIN_WIDTH))) > 1:
        summary = summary_columns(desk, alert_bps, bars=False)
    parts += fitted_tables("Accounts", names, summary, ["Total"], width)
    positions = fitted_tables(
        "Positions (shares)", names, positions_columns(desk), ["Total", "Last price"], width
    )
    beyond = sum(abs(row.deviation_bp) > alert_bps for row in desk.accounts)
    ending = (
        [Text(f"{beyond} account(s) beyond ±{alert_bps:g} bp. {NEVER_MOVE}", style="dim")]
        if beyond
        else []
    )
    if height is not None and lines_needed([*parts, *positions, *ending], width) > height:
        needed = lines_needed(positions, width)
        positions = [
            Text(
                f"Positions per ticker: {needed} more rows needed (web view, or without --live)",
                style="dim",
            )
        ]
        if lines_needed([*parts, *positions, *ending], width) > height:
            positions = []  # the accounts come first
    return Group(*parts, *positions, *ending)
    return Group(*parts, *positions, *ending)


def lines_needed(parts: Sequence[RenderableType], width: int) -> int:
    """Rows that `parts` take on a screen `width` columns wide."""
    options = _measurer.options.update(width=max(width, MIN_WIDTH))
    return sum(len(_measurer.render_lines(part, options, pad=False)) for part in parts)


def waiting_view() -> Text:
    return Text("Waiting for the first positions snapshot...", style="dim")


# -- cells ---------------------------------------------------------------------------------
def deviation_text(
    bps: float, alert_bps: float, value: float | None = None, fmt: str = ",.1f"
) -> Text:
    """A signed deviation (`value`, else `bps`), in the alert style when `bps` is beyond
    `alert_bps`."""
    shown = bps if value is None else value
    return Text(f"{shown:+{fmt}}", style=ALERT_STYLE if abs(bps) > alert_bps else "")


def weight_bar(weight: float, target: float, largest: float, width: int = BAR_WIDTH) -> Text:
    """A block bar of `weight` (`largest` fills `width` cells) with the target's cell marked."""
    if largest <= 0:
        return Text(" " * width)
    eighths = max(0, min(round(weight / largest * width * 8), width * 8))
    full, part = divmod(eighths, 8)
    cells = list(("█" * full + (BAR_BLOCKS[part] if part else "")).ljust(width))
    mark = max(0, min(int(target / largest * width), width - 1))
    if cells[mark] == " ":
        cells[mark] = TARGET_MARK
    text = Text("".join(cells), style=BAR_STYLE)
    text.stylize(TARGET_STYLE, mark, mark + 1)
    return text
