"""`audit --verify`: every allocation against an independent allocate(), the checkpoint and a
blotter exported earlier; kept apart from the listing, which needs none of this.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from pathlib import Path
from typing import Any

from common.history import Step
from common.protocol import BUY, PRICE_SCALE, SELL, Fill, Input, percent_value
from controller.allocator import allocate, allocate_sell
from controller.book import Book
from controller.journal import JournalCorrupt, read_checkpoint, read_header, records_start
from controller.tools.trail import (
    AuditEntry,
    AuditError,
    JournalReplay,
    decimal_text,
    money_text,
    reference,
)

log = logging.getLogger(__name__)

LOCATE_BUDGET = 5_000_000  # fill applications the search for an edited fill may spend
BLOTTER_KEYS = (
    "FillSource",
    "FillSeq",
    "Symbol",
    "Side",
    "Quantity",
    "AvgPx",
    "AllocAccount",
    "AllocQty",
)
SIDE_OF_FIX = {"1": BUY, "2": SELL}  # FIX tag 54's values


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
    if entry.fill.is_sell:
        held = {account: entry.held.get(account, 0) for account in values}
        shares = allocate_sell(values, weights, price, entry.fill.quantity, held)
    else:
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
    side: str
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
    side = SIDE_OF_FIX.get(row["Side"])
    if side is None:
        raise ValueError(f"Side must be 1 (buy) or 2 (sell), got {row['Side']!r}")
    fill = fills.setdefault(key, BlotterFill(line, row["Symbol"], side, price, quantity))
    said = (fill.symbol, fill.side, fill.price_units, fill.quantity)
    if said != (row["Symbol"], side, price, quantity):
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
    said = (recorded.symbol, recorded.side, recorded.price_units, recorded.quantity)
    if said != (fill.ticker, fill.side, fill.price_units, fill.quantity):
        return (
            f"{fill_text(entry.number, fill)}: the blotter (line {recorded.line}) has "
            f"{recorded.side} {recorded.symbol} {recorded.quantity:,} @ "
            f"{decimal_text(recorded.price_units)}"
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
    journal_id: str
    journal_start: int  # where the journal's first record begins


class CheckpointUnusable(ValueError):
    """The checkpoint file exists but cannot be read or understood."""


def load_checkpoint(path: Path, journal: Path) -> Checkpoint | None:
    """The checkpoint at `path`, None if there is none; CheckpointUnusable if it is bad."""
    if not path.exists():
        return None
    saved = read_checkpoint(path)
    if saved is None:
        raise CheckpointUnusable(f"checkpoint {path} is damaged (bad header or checksum)")
    state = saved.state
    try:
        header = read_header(journal)
    except JournalCorrupt as exc:
        raise AuditError(str(exc)) from None
    if header is None or header.journal_id != saved.journal_id:
        raise CheckpointUnusable(
            f"checkpoint {path} belongs to journal {saved.journal_id}, not to {journal} "
            f"({header.journal_id if header else 'no header'})"
        )
    try:
        return Checkpoint(
            saved.offset,
            Book.from_state(state["book"]),
            dict(state["last_seq"]),
            saved.journal_id,
            records_start(journal),
        )
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
        book.apply(item)
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
    totals per ticker and total book value are from the checkpoint's; None if impossible.
    A buy adds its shares and cash, a sell takes them away (sign -1)."""
    sign = -1 if fill.is_sell else 1
    others = share_gap.keys() - {fill.ticker}
    if len(others) > 1:
        return None
    if others:  # its ticker was edited: all its shares moved from the original ticker
        (ticker,) = others
        if share_gap.get(fill.ticker, 0) != sign * fill.quantity:
            return None
        quantity = -sign * share_gap[ticker]
    else:
        ticker = fill.ticker
        quantity = fill.quantity - sign * share_gap.get(ticker, 0)
    paid = fill.price_units * fill.quantity - sign * value_gap
    if quantity < 1 or paid <= 0 or paid % quantity:
        return None
    original = Fill(fill.source, fill.seq, ticker, paid // quantity, quantity, fill.side)
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
            fill_text(numbers[index], fill_at(items, index)),
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


def fill_at(items: list[Input], index: int) -> Fill:
    """The fill at `index` (edits are only ever found on fills)."""
    item = items[index]
    assert type(item) is Fill
    return item


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
    end = steps[prefix - 1].offset if prefix else checkpoint.journal_start
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
