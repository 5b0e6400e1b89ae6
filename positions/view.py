"""Rendering a positions snapshot for people (a rich table) and for pipes (JSON)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from rich.table import Table
from rich.text import Text

DEVIATION_ALERT_BPS = 50  # deviations beyond this many basis points are highlighted


def tickers_of(snapshot: dict[str, Any]) -> list[str]:
    """Tickers in the order the controller reports them."""
    return list(snapshot.get("totals", {}).get("positions", {}))


def positions_table(snapshot: dict[str, Any], notices: list[str] | None = None) -> Table:
    """Per account: shares per ticker, book and market value, weight vs target, deviation."""
    tickers = tickers_of(snapshot)
    counts = snapshot.get("counts", {})
    when = datetime.fromtimestamp(snapshot.get("time", 0)).strftime("%H:%M:%S")
    title = (
        f"Positions #{snapshot.get('seq')} at {when} (controller {snapshot.get('instance')}): "
        f"{counts.get('fills', 0):,} fills allocated, {counts.get('pending', 0):,} pending, "
        f"{counts.get('rejected', 0):,} rejected, {counts.get('duplicates', 0):,} duplicates"
    )
    table = Table(title=title, caption=" | ".join(notices) if notices else None)
    table.add_column("Account", style="bold")
    for ticker in tickers:
        table.add_column(ticker, justify="right")
    for heading in ("Book value", "Market value", "Weight %", "Target %", "Dev (bp)"):
        table.add_column(heading, justify="right")
    for account, row in sorted(snapshot.get("accounts", {}).items()):
        deviation_bp = row["deviation"] * 100
        style = "red" if abs(deviation_bp) > DEVIATION_ALERT_BPS else ""
        table.add_row(
            account,
            *(f"{row['positions'].get(t, 0):,}" for t in tickers),
            f"{row['value']:,.2f}",
            f"{row['market_value']:,.2f}",
            f"{row['weight']:.3f}",
            f"{row['target']:.3f}",
            Text(f"{deviation_bp:+.1f}", style=style),
        )
    totals = snapshot.get("totals", {})
    table.add_section()
    table.add_row(
        "Total",
        *(f"{totals.get('positions', {}).get(t, 0):,}" for t in tickers),
        f"{totals.get('value', 0):,.2f}",
        f"{totals.get('market_value', 0):,.2f}",
        "100.000" if snapshot.get("accounts") else "",
        "",
        "",
        style="bold",
    )
    return table


def snapshot_json(snapshot: dict[str, Any], notices: list[str] | None = None) -> str:
    """One line of JSON per snapshot, with any notices about restarts or gaps."""
    return json.dumps({**snapshot, "notices": notices or []}, sort_keys=True)
