"""`python -m controller audit`: every allocation in a journal and what it was decided from.

The journal records inputs (fills, splits, rejections), not allocations. Allocation is
deterministic, so replaying the journal through a fresh Book (the controller's own state
code) reproduces every allocation exactly. The audit lists them: per fill, the split in
force and, per account, its value before, its target value, its shortfall, the shares it
got and its value after; as a table, or as a CSV blotter whose columns are FIX
AllocationInstruction fields.

`--verify` checks the journal instead: every allocation against an independent allocate()
on exact fractions; the replay against the controller's checkpoint, naming a fill whose
price or quantity was edited before it; the checkpoint plus the records after it against
the full replay; and, with --against, every fill against a blotter exported earlier.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import os
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

from common import config, logs
from common.protocol import PRICE_DECIMALS, PRICE_SCALE, Fill, Split, percent_value
from controller.allocator import allocate
from controller.book import Allocation, Book
from controller.engine import Input, from_record
from controller.journal import HEADER, JournalCorrupt, read_checkpoint, read_records

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1  # verification found a difference
EXIT_BAD_INPUT = 2
CHECKPOINT_SUFFIX = ".checkpoint"  # the controller keeps its checkpoint beside the journal
LOCATE_BUDGET = 5_000_000  # fill applications the search for an edited fill may spend
MIN_DECIMALS = 2  # prices and money are written with at least this many decimals
PIPE_WIDTH = 200  # table width when stdout is not a terminal

#: The CSV blotter's columns; the FIX AllocationInstruction (35=J) tag each maps onto.
BLOTTER_COLUMNS = {
    "AllocID": 70,  # source#seq of the fill: one allocation instruction per fill
    "Symbol": 55,
    "Quantity": 53,  # the fill's quantity, the instruction's total
    "AvgPx": 6,  # the fill price (one fill per instruction, so also its LastPx, 31)
    "AllocAccount": 79,
    "AllocQty": 80,
    "AllocNetMoney": 154,  # AllocQty x AvgPx, no commissions
    "FillSource": None,  # no FIX tag: the fill server's source name
    "FillSeq": None,  # no FIX tag: the fill's seq from that source
    "FillNo": None,  # no FIX tag: the fill's position in the journal (what --since takes)
    "SplitID": None,  # no FIX tag: source#seq of the split in force
}
BLOTTER_KEYS = ("FillSource", "FillSeq", "Symbol", "Quantity", "AvgPx", "AllocAccount", "AllocQty")


class AuditError(ValueError):
    """The journal or a blotter cannot be read or used (exit 2)."""


# -- reading the journal -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Step:
    """One journal record: where it ends and the input it holds."""

    offset: int
    item: Input


def read_journal(path: Path) -> list[Step]:
    """Every record of the journal, parsed; AuditError if it is missing or unusable.

    Reads without repair, so it is safe on the journal of a running controller (a record
    being written at the end is left out).
    """
    if not path.is_file():
        raise AuditError(f"journal {path} does not exist")
    try:
        return [Step(end, parse_record(end, record)) for end, record in read_records(path)]
    except JournalCorrupt as exc:
        raise AuditError(str(exc)) from None
    except OSError as exc:
        raise AuditError(f"cannot read journal {path}: {exc.strerror or exc}") from None


def parse_record(end: int, record: Any) -> Input:
    """The input a journal record holds; AuditError naming its offset if it is malformed."""
    try:
        item = from_record(record)
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        raise AuditError(f"journal record ending at offset {end} is unusable: {exc}") from None
    problem = identity_problem(item) or (fill_problem(item) if type(item) is Fill else None)
    if problem:
        raise AuditError(f"journal record ending at offset {end} is unusable: {problem}")
    return item


def identity_problem(item: Input) -> str | None:
    """Why a record's source or seq is unusable, or None."""
    if not isinstance(item.source, str) or type(item.seq) is not int:
        return f"source and seq must be a string and an integer, got {item.source!r}, {item.seq!r}"
    return None


def fill_problem(fill: Fill) -> str | None:
    """Why a fill record's ticker, price or quantity is unusable, or None."""
    if not isinstance(fill.ticker, str):
        return f"ticker must be a string, got {fill.ticker!r}"
    for name in ("price_units", "quantity"):
        number = getattr(fill, name)
        if type(number) is not int or number <= 0:
            return f"{name} must be a positive integer, got {number!r}"
    return None


# -- replaying it --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AccountLine:
    """One account's part in one allocation; money in micro-units."""

    account: str
    target_percent: float
    before: int
    target: Fraction  # target fraction x total value after the fill
    shares: int
    after: int

    @property
    def shortfall(self) -> Fraction:
        """How far below its target value the account was before the fill."""
        return self.target - self.before


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One allocation and what it was decided from."""

    number: int  # the fill's position among the journal's fill records, from 1
    fill: Fill
    split: Split
    before: dict[str, int]  # every account's book value before the fill, micro-units
    shares: dict[str, int]  # what the book allocated, zeros left out

    def after(self) -> dict[str, int]:
        """Every account's book value after the fill."""
        after = dict(self.before)
        for account, count in self.shares.items():
            after[account] = after.get(account, 0) + count * self.fill.price_units
        return after

    def lines(self) -> list[AccountLine]:
        """Accounts in the split or receiving shares, by name: before, target, shares, after."""
        split, price = self.split, self.fill.price_units
        total_after = sum(self.before.values()) + price * self.fill.quantity
        weights = dict(zip(split.accounts, split.weights, strict=True))
        percents = split.target_percent()
        weight_total = sum(split.weights)
        lines = []
        for account in sorted(weights.keys() | self.shares.keys()):
            before = self.before.get(account, 0)
            shares = self.shares.get(account, 0)
            lines.append(
                AccountLine(
                    account,
                    percents.get(account, 0.0),
                    before,
                    Fraction(weights.get(account, 0) * total_after, weight_total),
                    shares,
                    before + shares * price,
                )
            )
        return lines


def apply_item(book: Book, item: Input) -> list[Allocation]:
    """Apply one journal input to `book` as the engine does; the allocations it made."""
    if type(item) is Fill:
        allocation = book.apply_fill(item)
        return [] if allocation is None else [allocation]
    if type(item) is Split:
        return book.apply_split(item)
    book.count_rejection()
    return []


class JournalReplay:
    """A fresh Book and per-source last seq, fed journal inputs as the controller does."""

    def __init__(self, tickers: Iterable[str] = ()) -> None:
        self.book = Book(tuple(tickers))
        self.last_seq: dict[str, int] = {}
        self.fills_read = 0
        self._waiting: deque[int] = deque()  # numbers of fills not yet allocated

    def apply(self, item: Input) -> list[AuditEntry]:
        """Apply one input; an entry for each allocation it caused."""
        self.last_seq[item.source] = item.seq
        before = dict(zip(self.book.accounts, self.book.values, strict=True))
        if type(item) is Fill:
            self.fills_read += 1
            self._waiting.append(self.fills_read)
        entries = []
        for allocation in apply_item(self.book, item):
            entry = AuditEntry(
                self._waiting.popleft(), allocation.fill, self.book.split, before, allocation.shares
            )
            entries.append(entry)
            before = entry.after()
        return entries


def audit_trail(steps: Iterable[Step]) -> Iterator[AuditEntry]:
    """Every allocation the journal's inputs lead to, in order."""
    replay = JournalReplay()
    for step in steps:
        yield from replay.apply(step.item)


# -- listing -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Filters:
    """Which fills and accounts to list; empty sets mean all."""

    accounts: frozenset[str] = frozenset()
    tickers: frozenset[str] = frozenset()
    sources: frozenset[str] = frozenset()
    since: int = 1

    def keeps(self, entry: AuditEntry) -> bool:
        """Whether the entry's fill is listed (--since, --ticker, --source)."""
        fill = entry.fill
        return (
            entry.number >= self.since
            and (not self.tickers or fill.ticker in self.tickers)
            and (not self.sources or fill.source in self.sources)
        )

    def lines(self, entry: AuditEntry) -> list[AccountLine]:
        """The entry's account lines that are listed (--account)."""
        return [ln for ln in entry.lines() if not self.accounts or ln.account in self.accounts]


def reference(item: Fill | Split | None) -> str:
    """source#seq, the way the controller names an input."""
    return "-" if item is None else f"{item.source}#{item.seq}"


def decimal_text(units: int) -> str:
    """Micro-units as an exact decimal with 2 to 6 places: 187250000 -> '187.25'."""
    whole, fraction = divmod(units, PRICE_SCALE)
    digits = f"{fraction:0{PRICE_DECIMALS}d}".rstrip("0").ljust(MIN_DECIMALS, "0")
    return f"{whole}.{digits}"


def money_text(units: int | Fraction) -> str:
    """Micro-units as money for people: thousands separators, two decimals."""
    return f"{float(units / PRICE_SCALE):,.2f}"


def audit_table(journal: Path, entries: list[AuditEntry], filters: Filters, total: int) -> Table:
    """One row per account per listed fill: the allocation and what it was decided from."""
    table = Table(title=f"Allocations in {journal}: {len(entries):,} of {total:,} fills listed")
    for heading in ("#", "Fill", "Ticker", "Qty", "Price", "Split", "Account"):
        table.add_column(heading, justify="right" if heading in ("#", "Qty", "Price") else "left")
    for heading in ("Target %", "Value before", "Target value", "Shortfall", "Shares", "After"):
        table.add_column(heading, justify="right")
    for entry in entries:
        fill = entry.fill
        head = [
            str(entry.number),
            reference(fill),
            fill.ticker,
            f"{fill.quantity:,}",
            decimal_text(fill.price_units),
            reference(entry.split),
        ]
        lines = filters.lines(entry)
        for index, line in enumerate(lines):
            table.add_row(
                *(head if index == 0 else [""] * len(head)),
                line.account,
                f"{line.target_percent:.3f}",
                money_text(line.before),
                money_text(line.target),
                money_text(line.shortfall),
                f"{line.shares:,}",
                money_text(line.after),
                end_section=index == len(lines) - 1,
            )
    table.caption = (
        "Target value = target % x book value of all accounts after the fill; "
        "shortfall = target value - value before"
    )
    return table


def write_blotter(out: TextIO, entries: Iterable[AuditEntry], filters: Filters) -> int:
    """The CSV allocation blotter: one row per fill and account given shares; rows written."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(BLOTTER_COLUMNS)
    rows = 0
    for entry in entries:
        fill = entry.fill
        for line in filters.lines(entry):
            if line.shares:
                writer.writerow(
                    [
                        reference(fill),
                        fill.ticker,
                        fill.quantity,
                        decimal_text(fill.price_units),
                        line.account,
                        line.shares,
                        decimal_text(line.shares * fill.price_units),
                        fill.source,
                        fill.seq,
                        entry.number,
                        reference(entry.split),
                    ]
                )
                rows += 1
    return rows


# -- verification: allocations -------------------------------------------------------------
def independent_allocation(entry: AuditEntry) -> dict[str, int]:
    """The fill re-allocated with the public allocate() on exact fractions, zeros left out."""
    percents = [percent_value(percent) for percent in entry.split.percents]
    percent_total = sum(percents)
    weights = {
        account: percent / percent_total
        for account, percent in zip(entry.split.accounts, percents, strict=True)
    }
    values = {account: Fraction(units, PRICE_SCALE) for account, units in entry.before.items()}
    price = Fraction(entry.fill.price_units, PRICE_SCALE)
    shares = allocate(values, weights, price, entry.fill.quantity)
    return {account: count for account, count in shares.items() if count}


def fill_text(entry_number: int, fill: Fill) -> str:
    """A fill named for people: source#seq, its number in the journal, what it was."""
    return (
        f"fill {reference(fill)} (fill #{entry_number}, {fill.ticker} "
        f"{fill.quantity:,} @ {decimal_text(fill.price_units)})"
    )


def shares_text(shares: dict[str, int]) -> str:
    """Shares per account, sorted by account: {A: 60, B: 40}."""
    return "{" + ", ".join(f"{a}: {n:,}" for a, n in sorted(shares.items())) + "}"


def allocation_problem(entry: AuditEntry) -> str | None:
    """What differs between the book's allocation and the independent one, if anything."""
    expected = independent_allocation(entry)
    if expected == entry.shares:
        return None
    return (
        f"{fill_text(entry.number, entry.fill)}: the book allocated {shares_text(entry.shares)}, "
        f"allocate() on exact fractions gives {shares_text(expected)}"
    )


# -- verification: a blotter exported earlier ----------------------------------------------
@dataclass(slots=True)
class BlotterFill:
    """One fill as an earlier blotter recorded it."""

    line: int
    symbol: str
    price_units: int
    quantity: int
    shares: dict[str, int] = field(default_factory=dict)
    seen: bool = False


def read_blotter(path: Path) -> dict[tuple[str, int], BlotterFill]:
    """The fills of a blotter written by `audit --csv`, by (source, seq); AuditError if bad."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise AuditError(f"blotter {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AuditError(f"cannot read blotter {path}: {exc}") from None
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in BLOTTER_KEYS if c not in (reader.fieldnames or [])]
    if missing:
        raise AuditError(f"blotter {path} lacks column(s) {', '.join(missing)}")
    fills: dict[tuple[str, int], BlotterFill] = {}
    for row in reader:
        try:
            add_blotter_row(fills, row, reader.line_num)
        except ValueError as exc:
            raise AuditError(f"blotter {path} line {reader.line_num}: {exc}") from None
    return fills


def add_blotter_row(fills: dict[tuple[str, int], BlotterFill], row: dict, line: int) -> None:
    """Add one blotter row to its fill; ValueError if it is malformed or contradicts it."""
    key = (row["FillSource"], whole_number("FillSeq", row["FillSeq"]))
    price = price_in_units(row["AvgPx"])
    quantity = whole_number("Quantity", row["Quantity"])
    account = row["AllocAccount"]
    fill = fills.setdefault(key, BlotterFill(line, row["Symbol"], price, quantity))
    if (fill.symbol, fill.price_units, fill.quantity) != (row["Symbol"], price, quantity):
        raise ValueError(f"fill {key[0]}#{key[1]} differs from its row on line {fill.line}")
    if account in fill.shares:
        raise ValueError(f"account {account!r} appears twice for fill {key[0]}#{key[1]}")
    fill.shares[account] = whole_number("AllocQty", row["AllocQty"])


def whole_number(column: str, text: str | None) -> int:
    """A blotter cell as an int; ValueError naming the column."""
    try:
        return int(text or "")
    except ValueError:
        raise ValueError(f"{column} must be a whole number, got {text!r}") from None


def price_in_units(text: str | None) -> int:
    """A decimal price as exact micro-units; ValueError unless it is a positive one."""
    try:
        units = Decimal(text or "") * PRICE_SCALE
    except InvalidOperation:
        raise ValueError(f"AvgPx must be a decimal number, got {text!r}") from None
    if not units.is_finite() or units <= 0 or units != units.to_integral_value():
        raise ValueError(f"AvgPx must be a positive price of at most 6 decimals, got {text!r}")
    return int(units)


def blotter_problem(entry: AuditEntry, blotter: dict[tuple[str, int], BlotterFill]) -> str | None:
    """What differs between the replayed allocation and the blotter's, if it has the fill."""
    fill = entry.fill
    recorded = blotter.get((fill.source, fill.seq))
    if recorded is None:
        return None
    recorded.seen = True
    said = (recorded.symbol, recorded.price_units, recorded.quantity)
    if said != (fill.ticker, fill.price_units, fill.quantity):
        return (
            f"{fill_text(entry.number, fill)}: the blotter (line {recorded.line}) has "
            f"{recorded.symbol} {recorded.quantity:,} @ {decimal_text(recorded.price_units)}"
        )
    if recorded.shares != entry.shares:
        return (
            f"{fill_text(entry.number, fill)}: the replay allocates {shares_text(entry.shares)}, "
            f"the blotter (line {recorded.line}) has {shares_text(recorded.shares)}"
        )
    return None


def unseen_problem(blotter: dict[tuple[str, int], BlotterFill]) -> str | None:
    """A blotter fill the journal never allocated, if there is one."""
    for (source, seq), recorded in blotter.items():
        if not recorded.seen:
            return (
                f"fill {source}#{seq} is in the blotter (line {recorded.line}) but the journal "
                "never allocates it"
            )
    return None


# -- verification: the checkpoint ----------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The controller's saved state: the journal offset it reflects, book and last seqs."""

    offset: int
    book: Book
    last_seq: dict[str, int]


class CheckpointUnusable(ValueError):
    """The checkpoint file exists but cannot be read or understood."""


def load_checkpoint(path: Path) -> Checkpoint | None:
    """The checkpoint at `path`, None if there is none; CheckpointUnusable if it is bad."""
    if not path.exists():
        return None
    saved = read_checkpoint(path)
    if saved is None:
        raise CheckpointUnusable(f"checkpoint {path} is damaged (bad header or checksum)")
    offset, state = saved
    try:
        return Checkpoint(offset, Book.from_state(state["book"]), dict(state["last_seq"]))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointUnusable(f"checkpoint {path} is unusable: {exc!r}") from None


def covered_prefix(steps: list[Step], last_seq: dict[str, int]) -> int:
    """How many leading records the checkpoint reflects: those within its per-source seqs.

    Found by seq rather than by byte offset, so that an edited record of another length
    does not hide which records the checkpoint covers.
    """
    for index, step in enumerate(steps):
        if step.item.seq > last_seq.get(step.item.source, 0):
            return index
    return len(steps)


def replay_items(items: Iterable[Input], book: Book) -> Book:
    """Apply `items` to `book` in order; the book."""
    for item in items:
        apply_item(book, item)
    return book


def share_totals(book: Book) -> dict[str, int]:
    """Shares allocated per ticker over all accounts."""
    totals: dict[str, int] = {}
    for held in book.positions:
        for ticker, count in held.items():
            totals[ticker] = totals.get(ticker, 0) + count
    return totals


def differing_keys(mine: dict, theirs: dict) -> set:
    """Keys whose values differ between two maps (a missing key counts as 0)."""
    return {key for key in mine.keys() | theirs.keys() if mine.get(key, 0) != theirs.get(key, 0)}


def implied_original(fill: Fill, share_gap: dict[str, int], value_gap: int) -> Fill | None:
    """The fill as it must have been if only it was edited, given how far the replay's share
    totals per ticker and total book value are from the checkpoint's; None if impossible."""
    others = share_gap.keys() - {fill.ticker}
    if len(others) > 1:
        return None
    if others:  # its ticker was edited: all its shares moved from the original ticker
        (ticker,) = others
        if share_gap.get(fill.ticker, 0) != fill.quantity:
            return None
        quantity = -share_gap[ticker]
    else:
        ticker = fill.ticker
        quantity = fill.quantity - share_gap.get(ticker, 0)
    paid = fill.price_units * fill.quantity - value_gap
    if quantity < 1 or paid <= 0 or paid % quantity:
        return None
    original = Fill(fill.source, fill.seq, ticker, paid // quantity, quantity)
    return None if original == fill else original


def edit_candidates(items: list[Input], replayed: Book, saved: Book) -> list[tuple[int, Fill]]:
    """Allocated fills whose edit alone could explain the difference, each with the
    original that edit implies (index into `items`, original fill).

    A fill's inputs leave exact traces whatever the allocation: shares per ticker add up to
    the quantities allocated, book values to price x quantity, and a ticker's last price is
    its last fill's. So the gaps in share totals and total value give each fill's implied
    original (price, quantity and, if two share totals moved, ticker), and the last prices
    rule out most fills.
    """
    mine, theirs = share_totals(replayed), share_totals(saved)
    share_gap = {t: mine.get(t, 0) - theirs.get(t, 0) for t in differing_keys(mine, theirs)}
    value_gap = sum(replayed.values) - sum(saved.values)
    price_gap = differing_keys(replayed.last_price, saved.last_price)
    fills = [(index, item) for index, item in enumerate(items) if type(item) is Fill]
    allocated = fills[: len(fills) - len(replayed.pending)]
    last_of = {item.ticker: index for index, item in fills}
    candidates = []
    for index, fill in allocated:
        original = implied_original(fill, share_gap, value_gap)
        if original is None or price_gap - {fill.ticker, original.ticker}:
            continue
        if original.ticker == fill.ticker:
            if last_of[fill.ticker] == index:
                if saved.last_price.get(fill.ticker) != original.price_units:
                    continue
            elif fill.ticker in price_gap:
                continue
        candidates.append((index, original))
    return candidates


def confirmed_edits(
    items: list[Input], candidates: list[tuple[int, Fill]], saved: Book
) -> list[tuple[int, Fill]]:
    """The candidates whose original, put back alone, reproduces `saved` exactly.

    One base book advances through the records; each trial copies it at the candidate and
    replays the rest, within LOCATE_BUDGET fill applications in all. Usually one candidate
    is confirmed; a small price edit can have twins (another fill whose allocation was
    proportional to it), which the checkpoint cannot tell apart, so all are returned.
    """
    base = Book(saved.tickers)
    position = 0
    spent = 0
    confirmed = []
    for tried, (index, original) in enumerate(candidates, 1):
        replay_items(items[position:index], base)
        position = index
        trial = replay_items([original, *items[index + 1 :]], Book.from_state(base.to_state()))
        if trial == saved:
            confirmed.append((index, original))
        spent += len(items) - index
        if spent > LOCATE_BUDGET:
            log.warning("search for the edited fill stopped after %d candidates", tried)
            break
    return confirmed


def locate_edit(items: list[Input], replayed: Book, saved: Book, offset: int) -> str | None:
    """Name the fill whose edit explains why the replay differs from the checkpoint."""
    for mine, theirs in zip(replayed.pending, saved.pending, strict=False):
        if mine != theirs:
            return (
                f"fill {reference(mine)} waits for a split: the journal has {mine.ticker} "
                f"{mine.quantity:,} @ {decimal_text(mine.price_units)}, the checkpoint "
                f"{theirs.ticker} {theirs.quantity:,} @ {decimal_text(theirs.price_units)}"
            )
    counts = (replayed.fills_allocated, replayed.splits_applied, replayed.rejected)
    if counts != (saved.fills_allocated, saved.splits_applied, saved.rejected):
        return None
    found = confirmed_edits(items, edit_candidates(items, replayed, saved), saved)
    numbers = fill_numbers(items)
    edits = [
        (
            fill_text(numbers[index], items[index]),
            f"{original.ticker} {original.quantity:,} @ {decimal_text(original.price_units)}",
        )
        for index, original in found
    ]
    if len(edits) == 1:
        ((edited, original),) = edits
        return (
            f"{edited} is not what the controller applied: the checkpoint (offset "
            f"{offset:,}) is reproduced exactly with {original} instead"
        )
    if edits:
        alternatives = "; ".join(f"{edited} as {original}" for edited, original in edits)
        return (
            f"the journal does not reproduce the checkpoint (offset {offset:,}); putting back "
            f"any one of these fills reproduces it exactly: {alternatives}"
        )
    return None


def fill_numbers(items: list[Input]) -> dict[int, int]:
    """Each fill's number among the fills (from 1), by its index in `items`."""
    fills = (index for index, item in enumerate(items) if type(item) is Fill)
    return {index: number for number, index in enumerate(fills, 1)}


def first_difference(mine: Book, theirs: Book) -> str:
    """The first way two books differ, for people."""
    checks: list[tuple[str, Any, Any]] = [
        ("fills allocated", mine.fills_allocated, theirs.fills_allocated),
        ("splits applied", mine.splits_applied, theirs.splits_applied),
        ("rejections", mine.rejected, theirs.rejected),
        ("fills waiting for a split", len(mine.pending), len(theirs.pending)),
        ("split in force", reference(mine.split), reference(theirs.split)),
        ("accounts", mine.accounts, theirs.accounts),
    ]
    for ticker in sorted(mine.last_price.keys() | theirs.last_price.keys()):
        checks.append(
            (f"last price of {ticker}", mine.last_price.get(ticker), theirs.last_price.get(ticker))
        )
    for index, account in enumerate(mine.accounts[: len(theirs.accounts)]):
        checks.append(
            (
                f"book value of {account}",
                money_text(mine.values[index]),
                money_text(theirs.values[index]),
            )
        )
        checks.append((f"shares of {account}", mine.positions[index], theirs.positions[index]))
    for what, a, b in checks:
        if a != b:
            return f"{what} is {a} in the replay, {b} in the checkpoint"
    return "the books differ"


def checkpoint_problem(steps: list[Step], checkpoint: Checkpoint, full: Book) -> str | None:
    """Whether the journal reproduces the checkpoint and the checkpoint recovers `full`."""
    prefix = covered_prefix(steps, checkpoint.last_seq)
    items = [step.item for step in steps]
    replay = JournalReplay(checkpoint.book.tickers)
    for item in items[:prefix]:
        replay.apply(item)
    if replay.book != checkpoint.book:
        named = locate_edit(items[:prefix], replay.book, checkpoint.book, checkpoint.offset)
        return named or (
            f"the journal's first {prefix:,} records (those the checkpoint at offset "
            f"{checkpoint.offset:,} reflects) do not reproduce its book: "
            f"{first_difference(replay.book, checkpoint.book)}; no single edited fill price "
            "or quantity explains it"
        )
    if replay.last_seq != checkpoint.last_seq:
        return (
            f"the checkpoint's last seqs {checkpoint.last_seq} differ from the journal's "
            f"{replay.last_seq} at the same point"
        )
    end = steps[prefix - 1].offset if prefix else len(HEADER)
    if end != checkpoint.offset:
        return (
            f"the records the checkpoint reflects end at offset {end:,} in the journal, but "
            f"the checkpoint was taken at offset {checkpoint.offset:,}: records before it "
            "changed size"
        )
    recovered = replay_items(items[prefix:], Book.from_state(checkpoint.book.to_state()))
    if recovered != full:
        return (
            "the checkpoint plus the records after it does not give the full replay's book: "
            f"{first_difference(recovered, full)}"
        )
    return None


# -- verification: all of it ---------------------------------------------------------------
def verify(
    steps: list[Step],
    checkpoint: Checkpoint | None,
    blotter: dict[tuple[str, int], BlotterFill] | None,
) -> tuple[str | None, str]:
    """(the first problem or None, a one-line account of what was checked)."""
    replay = JournalReplay(checkpoint.book.tickers if checkpoint else ())
    allocations = 0
    for step in steps:
        for entry in replay.apply(step.item):
            allocations += 1
            problem = allocation_problem(entry)
            if problem is None and blotter is not None:
                problem = blotter_problem(entry, blotter)
            if problem:
                return problem, ""
    book = replay.book
    if blotter is not None and (problem := unseen_problem(blotter)):
        return problem, ""
    done = [
        f"{allocations:,} allocations of {replay.fills_read:,} fills match allocate() on exact "
        f"fractions ({len(steps):,} records, {book.splits_applied:,} splits, "
        f"{book.rejected:,} rejections, {len(book.pending):,} fills waiting for a split)"
    ]
    if checkpoint is None:
        done.append("no checkpoint to compare with")
    else:
        if problem := checkpoint_problem(steps, checkpoint, book):
            return problem, ""
        done.append(
            f"the checkpoint (offset {checkpoint.offset:,}) is reproduced and recovers the "
            "same book"
        )
    if blotter is not None:
        done.append(f"{len(blotter):,} blotter fills match")
    return None, "; ".join(done)


# -- shell ---------------------------------------------------------------------------------
def fill_number(text: str) -> int:
    """--since: a fill's position in the journal, from 1 (the journal has no timestamps)."""
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"takes a fill number (the N-th fill in the journal, from 1), not {text!r}: "
            "the journal records no times"
        ) from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"fill numbers start at 1, got {number}")
    return number


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="controller audit",
        description="List every allocation in a journal and what it was decided from, "
        "or verify them.",
    )
    p.add_argument("--journal", required=True, metavar="PATH", help="controller journal")
    p.add_argument("--account", action="append", default=[], help="only this account (repeat)")
    p.add_argument("--ticker", action="append", default=[], help="only this ticker (repeat)")
    p.add_argument("--source", action="append", default=[], help="only this fill source (repeat)")
    p.add_argument(
        "--since", type=fill_number, default=1, metavar="N", help="from the N-th fill (from 1)"
    )
    p.add_argument("--csv", action="store_true", help="write the CSV allocation blotter")
    p.add_argument("--output", metavar="FILE", help="write the --csv blotter here, not stdout")
    p.add_argument(
        "--verify", action="store_true", help="check every allocation; exit 1 if any differs"
    )
    p.add_argument(
        "--against", metavar="BLOTTER", help="with --verify: also compare with this blotter"
    )
    config.add_log_level(p, default="WARNING")
    return p


def check_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse combinations that make no sense (argparse exits 2 with the message)."""
    listing = args.account or args.ticker or args.source or args.since != 1 or args.csv
    if args.verify and (listing or args.output):
        p.error("--verify checks the whole journal; it takes no filters, --csv or --output")
    if args.against and not args.verify:
        p.error("--against compares with a blotter during --verify; add --verify")
    if args.output and not args.csv:
        p.error("--output writes the CSV blotter; add --csv")


def main(argv: list[str] | None = None) -> int:
    """List or verify the journal's allocations; 0 ok, 1 verification failed, 2 bad input."""
    p = parser()
    args = p.parse_args(argv)
    check_arguments(p, args)
    logs.setup("controller-audit", args.log_level)
    journal = Path(args.journal)
    try:
        if args.verify:
            return run_verify(journal, Path(args.against) if args.against else None)
        return run_listing(journal, args)
    except AuditError as exc:
        print(f"audit: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def run_verify(journal: Path, against: Path | None) -> int:
    """Verify and print one line: OK and what was checked, or FAILED and the first problem."""
    checkpoint_path = journal.with_name(journal.name + CHECKPOINT_SUFFIX)
    try:  # read before the journal, so it never reflects records we did not read
        checkpoint = load_checkpoint(checkpoint_path)
    except CheckpointUnusable as exc:
        print(f"audit verify: FAILED: {exc}", file=sys.stderr)
        return EXIT_FAILED
    steps = read_journal(journal)
    blotter = read_blotter(against) if against else None
    problem, done = verify(steps, checkpoint, blotter)
    if problem:
        print(f"audit verify: FAILED: {problem}", file=sys.stderr)
        return EXIT_FAILED
    print(f"audit verify: OK: {done}")
    return EXIT_OK


def run_listing(journal: Path, args: argparse.Namespace) -> int:
    """Print the allocation table, or write the CSV blotter."""
    filters = Filters(
        frozenset(args.account), frozenset(args.ticker), frozenset(args.source), args.since
    )
    entries = audit_trail(read_journal(journal))
    if args.csv:  # streamed: a long journal's blotter is never held in memory
        return write_csv((e for e in entries if filters.keeps(e)), filters, args.output)
    listed, total = [], 0
    for entry in entries:
        total += 1
        if filters.keeps(entry) and filters.lines(entry):
            listed.append(entry)
    console = Console(width=None if sys.stdout.isatty() else PIPE_WIDTH)
    console.print(audit_table(journal, listed, filters, total))
    return EXIT_OK


def write_csv(entries: Iterable[AuditEntry], filters: Filters, output: str | None) -> int:
    """Write the blotter to `output` or stdout."""
    if output is None:
        write_blotter(sys.stdout, entries, filters)
        return EXIT_OK
    try:
        with open(output, "w", encoding="utf-8", newline="") as handle:
            rows = write_blotter(handle, entries, filters)
    except OSError as exc:
        raise AuditError(f"cannot write {output}: {exc.strerror or exc}") from None
    log.info("wrote %d blotter rows to %s", rows, output)
    return EXIT_OK
