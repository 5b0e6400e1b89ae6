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
import logging
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.table import Table

from common import config, logs
from controller.tools.trail import (
    AccountLine,
    AuditEntry,
    AuditError,
    audit_trail,
    decimal_text,
    money_text,
    read_journal,
    reference,
)
from controller.tools.verify import CheckpointUnusable, load_checkpoint, read_blotter, verify

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1  # verification found a difference
EXIT_BAD_INPUT = 2
CHECKPOINT_SUFFIX = ".checkpoint"  # the controller keeps its checkpoint beside the journal
PIPE_WIDTH = 200  # table width when stdout is not a terminal

#: The CSV blotter's columns; the FIX AllocationInstruction (35=J) tag each maps onto.
BLOTTER_COLUMNS = {
    "AllocID": 70,  # source#seq of the fill: one allocation instruction per fill
    "Symbol": 55,
    "Side": 54,  # FIX values: 1 buy, 2 sell
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
FIX_SIDE = {"buy": "1", "sell": "2"}


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
            and (not self.sources or source_name(fill.source) & self.sources != set())
        )

    def lines(self, entry: AuditEntry) -> list[AccountLine]:
        """The entry's account lines that are listed (--account)."""
        return [ln for ln in entry.lines() if not self.accounts or ln.account in self.accounts]


def source_name(source: str) -> set[str]:
    """The names a source answers to: itself and, for a session `name@hex`, its name."""
    return {source, source.split("@", 1)[0]}


def audit_table(journal: Path, entries: list[AuditEntry], filters: Filters, total: int) -> Table:
    """One row per account per listed fill: the allocation and what it was decided from."""
    table = Table(title=f"Allocations in {journal}: {len(entries):,} of {total:,} fills listed")
    for heading in ("#", "Fill", "Side", "Ticker", "Qty", "Price", "Split", "Account"):
        table.add_column(heading, justify="right" if heading in ("#", "Qty", "Price") else "left")
    for heading in ("Target %", "Value before", "Target value", "Shortfall", "Shares", "After"):
        table.add_column(heading, justify="right")
    for entry in entries:
        fill = entry.fill
        head = [
            str(entry.number),
            reference(fill),
            fill.side,
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
                        FIX_SIDE[fill.side],
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


#: The processes whose settings say which journal the controller writes: itself, and the
#: launcher, which passes its own setting to the controller it starts.
JOURNAL_READERS = ("controller", "launcher")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="controller audit",
        allow_abbrev=False,
        description="List every allocation in a journal and what it was decided from, "
        "or verify them.",
    )
    p.add_argument(
        "--journal",
        metavar="PATH",
        help="controller journal (default: the one the controller uses with --config, "
        "else data/controller.journal)",
    )
    p.add_argument("--config", metavar="FILE", help="the system's TOML configuration file")
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
    try:
        journal = Path(args.journal) if args.journal else default_journal(args.config)
        if args.verify:
            return run_verify(journal, Path(args.against) if args.against else None)
        return run_listing(journal, args)
    except AuditError as exc:
        print(f"audit: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def default_journal(path: str | None) -> Path:
    """The journal the controller writes under configuration `path`. The controller alone
    reads its [controller] table (else the top level); under the launcher it gets the
    launcher's setting as a flag. When these differ, the one that exists is meant; if both
    or neither exist the choice is the operator's, and AuditError says so."""
    try:
        candidates = {
            Path(config.setting_of(process, "journal", path)) for process in JOURNAL_READERS
        }
    except config.ConfigError as exc:
        raise AuditError(str(exc)) from None
    if len(candidates) == 1:
        return candidates.pop()
    existing = [journal for journal in sorted(candidates) if journal.exists()]
    if len(existing) == 1:
        return existing[0]
    shown = " and ".join(str(journal) for journal in sorted(candidates))
    raise AuditError(
        f"the configuration names two journals ({shown}: the controller's own and the "
        "launcher's); say which with --journal"
    )


def run_verify(journal: Path, against: Path | None) -> int:
    """Verify and print one line: OK and what was checked, or FAILED and the first problem."""
    checkpoint_path = journal.with_name(journal.name + CHECKPOINT_SUFFIX)
    try:  # read before the journal, so it never reflects records we did not read
        checkpoint = load_checkpoint(checkpoint_path, journal)
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
