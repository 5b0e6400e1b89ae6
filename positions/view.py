"""Rendering a positions snapshot for people (a rich table, or the live view) and pipes (JSON)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

DEVIATION_ALERT_BPS = 50  # deviations beyond this many basis points are highlighted
BPS_PER_PERCENT_POINT = 100  # weights are percentages; deviations are shown in basis points
BAR_WIDTH = 20  # cells in the live view's weight bar
BAR_BLOCKS = " ▏▎▍▌▋▊▉█"  # a cell filled in eighths, empty to full
BAR_STYLE = "cyan"
TARGET_MARK = "┆"  # drawn where the target falls when the bar does not reach it
TARGET_STYLE = "bold yellow"
ALERT_STYLE = "bold red"
STALE_STYLE = "bold red"


def tickers_of(snapshot: dict[str, Any]) -> list[str]:
    """Tickers in the order the controller reports them."""
    return list(snapshot.get("totals", {}).get("positions", {}))


def deviation_bps(row: dict[str, Any]) -> float:
    """An account row's weight minus target, in basis points."""
    return row["deviation"] * BPS_PER_PERCENT_POINT


def positions_table(
    snapshot: dict[str, Any],
    notices: list[str] | None = None,
    alert_bps: float = DEVIATION_ALERT_BPS,
) -> Table:
    """Per account: shares per ticker, book and market value, weight vs target, deviation."""
    counts = snapshot.get("counts", {})
    when = datetime.fromtimestamp(snapshot.get("time", 0)).strftime("%H:%M:%S")
    table = accounts_table(snapshot, alert_bps, bars=False)
    table.title = (
        f"Positions #{snapshot.get('seq')} at {when} (controller {snapshot.get('instance')}): "
        f"{counts.get('fills', 0):,} fills allocated, {counts.get('pending', 0):,} pending, "
        f"{counts.get('rejected', 0):,} rejected, {counts.get('duplicates', 0):,} duplicates"
    )
    table.caption = " | ".join(notices) if notices else None
    return table


def accounts_table(snapshot: dict[str, Any], alert_bps: float, bars: bool) -> Table:
    """The accounts and their total, with a weight bar per account when `bars` is set."""
    tickers = tickers_of(snapshot)
    accounts = snapshot.get("accounts", {})
    table = Table()
    table.add_column("Account", style="bold")
    for ticker in tickers:
        table.add_column(ticker, justify="right")
    for heading in ("Book value", "Market value", "Weight %", "Target %"):
        table.add_column(heading, justify="right")
    if bars:
        table.add_column(f"Weight ({TARGET_MARK} target)", no_wrap=True)
    table.add_column("Dev (bp)", justify="right")
    largest = bar_scale(accounts)
    for account, row in sorted(accounts.items()):
        bar = [weight_bar(row["weight"], row["target"], largest)] if bars else []
        table.add_row(
            account,
            *(f"{row['positions'].get(t, 0):,}" for t in tickers),
            f"{row['value']:,.2f}",
            f"{row['market_value']:,.2f}",
            f"{row['weight']:.3f}",
            f"{row['target']:.3f}",
            *bar,
            deviation_text(deviation_bps(row), alert_bps),
        )
    totals = snapshot.get("totals", {})
    table.add_section()
    table.add_row(
        "Total",
        *(f"{totals.get('positions', {}).get(t, 0):,}" for t in tickers),
        f"{totals.get('value', 0):,.2f}",
        f"{totals.get('market_value', 0):,.2f}",
        "100.000" if accounts else "",
        "",
        *([""] if bars else []),
        "",
        style="bold",
    )
    return table


def deviation_text(bps: float, alert_bps: float) -> Text:
    """A signed deviation in basis points, in the alert style when beyond `alert_bps`."""
    return Text(f"{bps:+.1f}", style=ALERT_STYLE if abs(bps) > alert_bps else "")


def bar_scale(accounts: dict[str, Any]) -> float:
    """The weight that fills a whole bar: the largest weight or target of any account."""
    return max((max(r["weight"], r["target"]) for r in accounts.values()), default=0.0)


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


def live_view(
    snapshot: dict[str, Any] | None,
    notices: list[str],
    now: float,
    restarts: int = 0,
    missed: int = 0,
    alert_bps: float = DEVIATION_ALERT_BPS,
    stale_after: float | None = None,
) -> Group:
    """The live screen: a header of counts and snapshot age over the accounts table."""
    if snapshot is None:
        return Group(Text("Waiting for the first positions snapshot...", style="dim"))
    parts = [live_header(snapshot, now, restarts, missed, stale_after)]
    if notices:
        parts.append(Text(" | ".join(notices), style="yellow"))
    parts.append(accounts_table(snapshot, alert_bps, bars=True))
    return Group(*parts)


def live_header(
    snapshot: dict[str, Any],
    now: float,
    restarts: int,
    missed: int,
    stale_after: float | None = None,
) -> Text:
    """Snapshot number, controller, split, counts, snapshot age and controller restarts."""
    counts = snapshot.get("counts", {})
    split = snapshot.get("split")
    split_name = f"{split['source']}#{split['seq']}" if split else "none yet"
    age = max(0.0, now - snapshot.get("time", now))
    header = Text()
    header.append(f"Positions #{snapshot.get('seq')}", style="bold")
    header.append(f"  controller {snapshot.get('instance')}  split {split_name}\n")
    header.append(
        f"{counts.get('fills', 0):,} fills allocated  {counts.get('rejected', 0):,} rejected  "
        f"{counts.get('pending', 0):,} pending  {counts.get('duplicates', 0):,} duplicates  "
    )
    stale = stale_after is not None and age > stale_after
    header.append(f"age {age:.0f} s", style=STALE_STYLE if stale else "")
    header.append(f"  {restarts} controller restart(s)  {missed} snapshot(s) missed")
    return header


def snapshot_json(snapshot: dict[str, Any], notices: list[str] | None = None) -> str:
    """One line of JSON per snapshot, with any notices about restarts or gaps."""
    return json.dumps({**snapshot, "notices": notices or []}, sort_keys=True)
