"""`python -m controller replay FILE`: run fills and splits offline, compare policies.

Reads a JSON-lines or CSV file of fills and splits, validates every row with the wire
protocol's own rules (a bad row stops the replay, naming its line), runs the inputs through
the controller's exact rule and/or per-ticker pro-rata (controller/policies.py) and prints
final positions and tracking error per account, as a table or as JSON.

JSON lines: {"type": "fill", "ticker", "price", "quantity"} or
{"type": "split", "splits": {account: percent}}; CSV: header type,ticker,price,quantity,splits
with splits written ACCOUNT=PERCENT;ACCOUNT=PERCENT. Both may add source and seq; missing
ones are numbered automatically (see docs/operators-audit-replay.md).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from common import config, logs
from common.protocol import (
    DEFAULT_TICKERS,
    FILL,
    PRICE_SCALE,
    SPLIT,
    Fill,
    Invalid,
    Split,
    pack,
    validate,
)
from controller.tools.policies import (
    BOOK,
    POLICIES,
    VALUATIONS,
    Deviation,
    PolicyRun,
    deviations_bps,
    run_policy,
)

log = logging.getLogger(__name__)

BOTH = "both"
POLICY_CHOICES = (*POLICIES, BOTH)
FORMATS = ("table", "json")
DEFAULT_SOURCES = {FILL: "replay-fills", SPLIT: "replay-splits"}
FALLBACK_SOURCE = "replay"  # for rows whose type is missing or unknown (rejected anyway)
CSV_COLUMNS = ("type", "ticker", "price", "quantity", "splits")
CSV_OPTIONAL_COLUMNS = ("source", "seq", "side")
NUMBER_COLUMNS = ("price", "quantity", "seq")
CSV_SUFFIXES = (".csv",)
JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
SPLITS_SEPARATOR = ";"
PERCENT_POINTS = 100  # weights are fractions; tables show percent
PIPE_WIDTH = 200  # table width when stdout is not a terminal


class InputError(ValueError):
    """The input file is missing or unreadable, or a row of it is bad (its line is named)."""


class RowError(ValueError):
    """A bad row: its line number and what is wrong with it."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line = line
        self.reason = reason


# -- reading -------------------------------------------------------------------------------
def read_inputs(path: str | Path, tickers: frozenset[str]) -> list[Fill | Split]:
    """Every fill and split of the file, validated, in order; InputError naming the line."""
    text = read_text(path)
    rows = csv_rows(text) if looks_like_csv(path, text) else json_rows(text)
    numbering = Numbering()
    items: list[Fill | Split] = []
    try:
        for line, message in rows:
            numbering.identify(message)
            item = decode_row(line, message, tickers)
            numbering.accept(line, item)
            items.append(item)
    except RowError as exc:
        raise InputError(f"{path} line {exc.line}: {exc.reason}") from None
    return items


def read_text(path: str | Path) -> str:
    """The file's text (UTF-8, a byte-order mark allowed); InputError saying why not."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a directory, not an input file") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None


def looks_like_csv(path: str | Path, text: str) -> bool:
    """CSV by suffix (.csv), JSON lines by suffix (.jsonl, .ndjson, .json), else by content."""
    suffix = Path(path).suffix.lower()
    if suffix in CSV_SUFFIXES:
        return True
    if suffix in JSON_SUFFIXES:
        return False
    return not text.lstrip().startswith("{")


def json_rows(text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, message) for each non-blank line, which must be one JSON object."""
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            message = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RowError(number, f"not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(message, dict):
            raise RowError(number, f"expected a JSON object, got {type(message).__name__}")
        yield number, message


def csv_rows(text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, message) for each non-empty CSV row under a known header."""
    reader = csv.DictReader(io.StringIO(text))
    check_csv_header(reader.fieldnames)
    for row in reader:
        if None in row:
            raise RowError(reader.line_num, f"more cells than the {len(row) - 1} header columns")
        cells = {column: text.strip() for column, text in row.items() if text and text.strip()}
        if not cells:
            continue
        try:
            yield reader.line_num, csv_message(cells)
        except ValueError as exc:
            raise RowError(reader.line_num, str(exc)) from None


def check_csv_header(header: Sequence[str] | None) -> None:
    """The header must name only known columns and include `type`."""
    if not header:
        raise RowError(1, "empty file: expected a header " + ",".join(CSV_COLUMNS))
    known = CSV_COLUMNS + CSV_OPTIONAL_COLUMNS
    unknown = [column for column in header if column not in known]
    if unknown or "type" not in header:
        problem = f"unknown column(s) {', '.join(map(repr, unknown))}" if unknown else "no type"
        raise RowError(
            1,
            f"{problem}; the header is {','.join(CSV_COLUMNS)} "
            f"(plus optional {','.join(CSV_OPTIONAL_COLUMNS)})",
        )


def csv_message(cells: dict[str, str]) -> dict[str, Any]:
    """A CSV row's cells as a protocol message: numbers parsed, splits as a map."""
    message: dict[str, Any] = {}
    for column, text in cells.items():
        if column == "splits":
            message[column] = parse_splits(text)
        elif column in NUMBER_COLUMNS:
            message[column] = parse_number(text)
        else:
            message[column] = text
    return message


def parse_number(text: str) -> int | float | str:
    """An int if the text is one, else a float, else the text (the protocol rejects it)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_splits(text: str) -> dict[str, int | float | str]:
    """ACCOUNT=PERCENT;ACCOUNT=PERCENT as a map; ValueError for a malformed entry."""
    splits: dict[str, int | float | str] = {}
    for entry in text.split(SPLITS_SEPARATOR):
        if not entry.strip():
            continue
        account, equals, percent = entry.partition("=")
        account = account.strip()
        if not equals:
            raise ValueError(f"splits entry {entry.strip()!r} is not ACCOUNT=PERCENT")
        if account in splits:
            raise ValueError(f"account {account!r} appears twice in splits")
        splits[account] = parse_number(percent.strip())
    return splits


class Numbering:
    """Source and seq per row: given seqs must increase per source; missing ones are added."""

    def __init__(self) -> None:
        self.last: dict[str, int] = {}

    def identify(self, message: dict[str, Any]) -> None:
        """Fill in a missing source (by type) and a missing seq (the source's next)."""
        kind = message.get("type")
        default = DEFAULT_SOURCES.get(kind, FALLBACK_SOURCE) if isinstance(kind, str) else None
        source = message.setdefault("source", default or FALLBACK_SOURCE)
        if isinstance(source, str) and "seq" not in message:
            message["seq"] = self.last.get(source, 0) + 1

    def accept(self, line: int, item: Fill | Split) -> None:
        """Record the row's seq; RowError if it does not follow its source's last one."""
        last = self.last.get(item.source, 0)
        if item.seq <= last:
            raise RowError(
                line,
                f"seq {item.seq} of source {item.source!r} does not follow {last}: "
                "seqs must increase per source (leave seq out to number rows automatically)",
            )
        self.last[item.source] = item.seq


def decode_row(line: int, message: dict[str, Any], tickers: frozenset[str]) -> Fill | Split:
    """Validate one row exactly as the controller validates a message off the wire."""
    try:
        raw = pack(message)
    except (OverflowError, TypeError, ValueError) as exc:
        raise RowError(line, f"cannot be encoded as a message ({exc})") from None
    try:
        return validate(raw, tickers)
    except Invalid as rejection:
        raise RowError(line, rejection.reason) from None


def check_allocatable(path: str | Path, items: list[Fill | Split]) -> None:
    """InputError unless the file has at least one fill and one split to allocate it by."""
    if not any(type(item) is Fill for item in items):
        raise InputError(f"{path} has no fills to replay")
    if not any(type(item) is Split for item in items):
        raise InputError(f"{path} has fills but no split, so nothing can be allocated")


# -- results -------------------------------------------------------------------------------
def traded_tickers(items: list[Fill | Split], universe: tuple[str, ...]) -> list[str]:
    """The tickers that have fills, in the universe's order."""
    traded = {item.ticker for item in items if type(item) is Fill}
    return [ticker for ticker in universe if ticker in traded]


def account_rows(run: PolicyRun) -> dict[str, dict[str, Any]]:
    """Per account, sorted: shares, value, weight, target, deviation and tracking error."""
    values = run.values()
    total = sum(values.values())
    targets = run.targets()
    shares = run.shares()
    deviations = deviations_bps(values, targets)
    rows = {}
    for account in sorted(values):
        tracking = run.by_account.get(account, Deviation())  # none if no fill since it joined
        rows[account] = {
            "positions": shares[account],
            "value": values[account] / PRICE_SCALE,
            "weight": PERCENT_POINTS * values[account] / total,
            "target": PERCENT_POINTS * float(targets.get(account, 0)),
            "deviation_bps": deviations[account],
            "mean_abs_bps": tracking.mean_bps,
            "max_abs_bps": tracking.max_bps,
        }
    return rows


def summary(run: PolicyRun) -> dict[str, Any]:
    """Tracking error over every account after every fill, and where the worst one was."""
    worst = max(run.by_account, key=lambda account: run.by_account[account].max_bps)
    return {
        "samples": run.overall.samples,
        "mean_abs_bps": run.overall.mean_bps,
        "max_abs_bps": run.overall.max_bps,
        "max_account": worst,
        "max_after_fill": run.overall.max_fill,
    }


def report(path: str | Path, runs: list[PolicyRun], tickers: list[str]) -> dict[str, Any]:
    """Everything the replay found, as plain data (the JSON output)."""
    first = runs[0]
    held_shares = first.shares().values()
    shares = {t: sum(held.get(t, 0) for held in held_shares) for t in tickers}
    return {
        "file": str(path),
        "valuation": first.valuation,
        "fills": first.fills,
        "rejected": first.book.rejected,
        "splits": first.splits,
        "totals": {"shares": shares, "value": sum(first.values().values()) / PRICE_SCALE},
        "policies": {
            run.policy: {"accounts": account_rows(run), "summary": summary(run)} for run in runs
        },
    }


# -- rendering -----------------------------------------------------------------------------
def signed_bps(bps: float) -> str:
    """A deviation with its sign, two decimals; 0.00 rather than +0.00 or -0.00."""
    text = f"{bps:+.2f}"
    return text[1:] if text[1:] == "0.00" else text


def title_of(data: dict[str, Any]) -> str:
    """The table title: file, fills, splits, shares and total value."""
    shares = sum(data["totals"]["shares"].values())
    rejected = (
        f" ({data['rejected']:,} sells over what was held, rejected)" if data["rejected"] else ""
    )
    return (
        f"Replay of {data['file']}: {data['fills']:,} fills{rejected}, {data['splits']:,} "
        f"splits, {shares:,} shares, {data['valuation']} value {data['totals']['value']:,.2f}"
    )


def caption_of(policy: str, result: dict[str, Any]) -> str:
    """One policy's tracking error summary in a sentence."""
    s = result["summary"]
    return (
        f"{policy}: |weight - target| after every fill, {s['samples']:,} samples: "
        f"mean {s['mean_abs_bps']:.2f} bp, max {s['max_abs_bps']:.2f} bp "
        f"({s['max_account']} after fill {s['max_after_fill']:,})"
    )


def positions_table(data: dict[str, Any], policy: str, tickers: list[str]) -> Table:
    """One policy: shares per ticker, value, weight against target, tracking error."""
    result = data["policies"][policy]
    table = Table(title=f"{title_of(data)}; {policy} rule")
    table.add_column("Account", style="bold")
    for ticker in tickers:
        table.add_column(ticker, justify="right")
    headings = ("Value", "Weight %", "Target %", "Dev (bp)", "Mean |dev| bp", "Max |dev| bp")
    for heading in headings:
        table.add_column(heading, justify="right")
    for account, row in result["accounts"].items():
        table.add_row(
            account,
            *(f"{row['positions'].get(t, 0):,}" for t in tickers),
            f"{row['value']:,.2f}",
            f"{row['weight']:.3f}",
            f"{row['target']:.3f}",
            signed_bps(row["deviation_bps"]),
            f"{row['mean_abs_bps']:.2f}",
            f"{row['max_abs_bps']:.2f}",
        )
    table.add_section()
    s = result["summary"]
    table.add_row(
        "Total",
        *(f"{data['totals']['shares'][t]:,}" for t in tickers),
        f"{data['totals']['value']:,.2f}",
        "",
        "",
        "",
        f"{s['mean_abs_bps']:.2f}",
        f"{s['max_abs_bps']:.2f}",
    )
    table.caption = caption_of(policy, result)
    return table


def comparison_table(data: dict[str, Any]) -> Table:
    """Every policy side by side: per account weight, deviation and tracking error."""
    policies = list(data["policies"])
    table = Table(title=title_of(data))
    table.add_column("Account", style="bold")
    table.add_column("Target %", justify="right")
    for policy in policies:
        for heading in ("Weight %", "Dev (bp)", "Mean |dev| bp", "Max |dev| bp"):
            table.add_column(f"{policy}\n{heading}", justify="right")
    accounts = data["policies"][policies[0]]["accounts"]
    for account, first in accounts.items():
        cells = [account, f"{first['target']:.3f}"]
        for policy in policies:
            row = data["policies"][policy]["accounts"][account]
            cells += [
                f"{row['weight']:.3f}",
                signed_bps(row["deviation_bps"]),
                f"{row['mean_abs_bps']:.2f}",
                f"{row['max_abs_bps']:.2f}",
            ]
        table.add_row(*cells)
    table.add_section()
    cells = ["All accounts", ""]
    for policy in policies:
        s = data["policies"][policy]["summary"]
        cells += ["", "", f"{s['mean_abs_bps']:.2f}", f"{s['max_abs_bps']:.2f}"]
    table.add_row(*cells)
    table.caption = "\n".join(caption_of(p, data["policies"][p]) for p in policies)
    return table


# -- shell ---------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="controller replay",
        allow_abbrev=False,
        description="Run fills and splits from a file offline; print positions and tracking.",
    )
    p.add_argument("file", help="JSON lines (.jsonl) or CSV (.csv) of fills and splits")
    p.add_argument(
        "--policy",
        choices=POLICY_CHOICES,
        default=POLICIES[0],
        help="exact (the controller's rule, default), pro-rata, or both side by side",
    )
    p.add_argument(
        "--valuation",
        choices=VALUATIONS,
        default=BOOK,
        help="account value: book (price paid, default) or market (last fill prices)",
    )
    p.add_argument("--format", choices=FORMATS, default=FORMATS[0], help="table or JSON")
    p.add_argument(
        "--tickers",
        type=config.ticker_list,
        default=list(DEFAULT_TICKERS),
        metavar="T1,T2,...",
        help="the ticker universe fills are validated against (default: the controller's)",
    )
    config.add_log_level(p, default="WARNING")
    return p


def main(argv: list[str] | None = None) -> int:
    """Replay the file and print the results; 2 (and the reason) for bad input."""
    args = parser().parse_args(argv)
    logs.setup("controller-replay", args.log_level)
    try:
        items = read_inputs(args.file, frozenset(args.tickers))
        check_allocatable(args.file, items)
    except InputError as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return 2
    policies = POLICIES if args.policy == BOTH else (args.policy,)
    runs = [run_policy(items, policy, args.valuation) for policy in policies]
    tickers = traded_tickers(items, tuple(args.tickers))
    try:
        show(report(args.file, runs, tickers), tickers, args.format)
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def show(data: dict[str, Any], tickers: list[str], output_format: str) -> None:
    """Print the results: JSON, one policy's positions table, or the comparison table."""
    if output_format == "json":
        print(json.dumps(data, indent=2))
        return
    console = Console(width=None if sys.stdout.isatty() else PIPE_WIDTH)
    policies = list(data["policies"])
    if len(policies) == 1:
        console.print(positions_table(data, policies[0], tickers))
    else:
        console.print(comparison_table(data))
