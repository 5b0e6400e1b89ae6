"""Reading a controller journal and replaying it into audit entries, one per allocation.

Shared by the audit listing and its verification, so both see the journal the same way.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from common.history import Step, header_of, read_steps
from common.protocol import PRICE_DECIMALS, PRICE_SCALE, Allocated, Fill, Input, Rejected, Split
from controller.book import BOOK, Book
from controller.journal import JournalCorrupt

MIN_DECIMALS = 2  # prices and money are written with at least this many decimals


class AuditError(ValueError):
    """The journal or a blotter cannot be read or used (exit 2)."""


# -- reading the journal -------------------------------------------------------------------
def read_journal(path: Path) -> list[Step]:
    """Every record of the journal, parsed; AuditError if it is missing or unusable.

    Reads without repair, so it is safe on the journal of a running controller (a record
    being written at the end is left out).
    """
    if not path.is_file():
        raise AuditError(f"journal {path} does not exist")
    try:
        header = header_of(path)
        if header is not None and header.valuation != BOOK:
            raise AuditError(
                f"journal {path} was written with {header.valuation} valuation; the audit "
                "explains book-valuation journals only (replay it with `controller replay "
                "--valuation market` instead)"
            )
        return list(read_steps(path))
    except JournalCorrupt as exc:
        raise AuditError(str(exc)) from None
    except OSError as exc:
        raise AuditError(f"cannot read journal {path}: {exc.strerror or exc}") from None


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
    shares: dict[str, int]  # what the book allocated (bought or sold), zeros left out
    held: dict[str, int] = field(default_factory=dict)  # the fill's ticker held before it

    @property
    def signed_price(self) -> int:
        """The change in book value per share: +price for a buy, -price for a sell."""
        return -self.fill.price_units if self.fill.is_sell else self.fill.price_units

    def after(self) -> dict[str, int]:
        """Every account's book value after the fill."""
        after = dict(self.before)
        for account, count in self.shares.items():
            after[account] = after.get(account, 0) + count * self.signed_price
        return after

    def lines(self) -> list[AccountLine]:
        """Accounts in the split or receiving shares, by name: before, target, shares, after."""
        split, price = self.split, self.signed_price
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


class JournalReplay:
    """A fresh Book and per-source last seq, fed journal inputs through `Book.apply`."""

    def __init__(self, tickers: Iterable[str] = ()) -> None:
        self.book = Book(tuple(tickers))
        self.last_seq: dict[str, int] = {}
        self.fills_read = 0
        self._waiting: deque[int] = deque()  # numbers of fills not yet allocated

    def apply(self, item: Input) -> list[AuditEntry]:
        """Apply one input; an entry for each allocation it caused."""
        self.last_seq[item.source] = item.seq
        before = dict(zip(self.book.accounts, self.book.values, strict=True))
        held = self._holdings()
        if type(item) is Fill:
            self.fills_read += 1
            self._waiting.append(self.fills_read)
        entries = []
        for decision in self.book.apply(item):
            if type(decision) is Rejected and type(item) is not Rejected:
                self._waiting.popleft()  # an over-sell: that fill is answered, not allocated
                continue
            if type(decision) is not Allocated:
                continue
            split = self.book.split
            assert split is not None  # an allocation happens only under a split
            fill = decision.fill
            ticker_held = held.setdefault(fill.ticker, {})
            entry = AuditEntry(
                self._waiting.popleft(), fill, split, before, decision.shares, dict(ticker_held)
            )
            entries.append(entry)
            before = entry.after()
            sign = -1 if fill.is_sell else 1  # what the next released fill starts from
            for account, count in decision.shares.items():
                ticker_held[account] = ticker_held.get(account, 0) + sign * count
        return entries

    def _holdings(self) -> dict[str, dict[str, int]]:
        """Per ticker, each account's shares now (what a sell may take from)."""
        holdings: dict[str, dict[str, int]] = {}
        for account, positions in zip(self.book.accounts, self.book.positions, strict=True):
            for ticker, count in positions.items():
                holdings.setdefault(ticker, {})[account] = count
        return holdings


def audit_trail(steps: Iterable[Step]) -> Iterator[AuditEntry]:
    """Every allocation the journal's inputs lead to, in order."""
    replay = JournalReplay()
    for step in steps:
        yield from replay.apply(step.item)


# -- text for people -----------------------------------------------------------------------
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
