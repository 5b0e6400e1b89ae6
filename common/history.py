"""A controller journal read back as history: its inputs in order, and what the book did.

The one read side of the journal. Recovery, the audit and its verification, the drift
report and any other tool read a journal only through here, so every one of them checks the
header's rules version, parses records the same way and refuses a record that is not its
source's next (a fill is never applied twice), and gets decisions from `Book.apply`, the
controller's own mutator. Reading never repairs the file unless asked (start-up only), so it
is safe beside a running controller.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from common.protocol import Decision, Input
from controller.book import BOOK, Book
from controller.journal import (
    Checkpoint,
    JournalCorrupt,
    JournalHeader,
    decode_record,
    reaches,
    read_checkpoint,
    read_header,
    read_records,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Step:
    """One journal record: the offset where it ends and the input it holds."""

    offset: int
    item: Input


class SeqGuard:
    """Per-source last seq of a replay; refuses a record that is not its source's next."""

    def __init__(self, path: str | Path, last_seq: dict[str, int] | None = None) -> None:
        self.path = path
        self.last_seq: dict[str, int] = dict(last_seq or {})

    def admit(self, step: Step) -> None:
        source, seq = step.item.source, step.item.seq
        expected = self.last_seq.get(source, 0) + 1
        if seq != expected:
            raise JournalCorrupt(
                f"{self.path}: record ending at offset {step.offset} is {source}#{seq}, "
                f"expected {source}#{expected}"
            )
        self.last_seq[source] = seq


def header_of(path: str | Path, repair: bool = False) -> JournalHeader | None:
    """The journal's header, checked to be one whose rules this code implements."""
    header = read_header(path, repair)
    if header is not None:
        header.check_supported(path)
    return header


def read_steps(
    path: str | Path,
    start: int = 0,
    last_seq: dict[str, int] | None = None,
    repair: bool = False,
) -> Iterator[Step]:
    """Every record from `start`, parsed and checked to be consecutive per source (from
    `last_seq`, the seqs already applied before `start`). JournalCorrupt on any problem."""
    header_of(path, repair)
    guard = SeqGuard(path, last_seq)
    for end, record in read_records(path, start, repair):
        step = Step(end, decode_record(path, end, record))
        guard.admit(step)
        yield step


def replay(steps: Iterable[Step], book: Book) -> Iterator[tuple[Step, list[Decision]]]:
    """Apply each step to `book`; each with the decisions it led to."""
    for step in steps:
        yield step, book.apply(step.item)


def replay_journal(
    path: str | Path, tickers: Iterable[str] = ()
) -> Iterator[tuple[Step, list[Decision], Book]]:
    """The whole journal replayed through a fresh book: each step, its decisions, and the
    book right after it (the same object each time: read it, do not keep it)."""
    book = Book(tuple(tickers), valuation=_valuation_of(path))
    for step, decisions in replay(read_steps(path), book):
        yield step, decisions, book


def _valuation_of(path: str | Path) -> str:
    header = header_of(path)
    return header.valuation if header is not None else BOOK


@dataclass(slots=True)
class Recovered:
    """A book rebuilt from checkpoint + journal, with each source's last applied seq."""

    book: Book
    last_seq: dict[str, int]
    header: JournalHeader | None
    replayed: int = 0
    end: int = 0  # the journal offset the state reflects
    notes: list[str] = field(default_factory=list)


def usable_checkpoint(
    checkpoint_path: str | Path | None, header: JournalHeader | None, journal: Path
) -> Checkpoint | None:
    """The checkpoint if it belongs to this journal and is not ahead of it; else None,
    with a warning (it is never applied to another journal)."""
    saved = read_checkpoint(checkpoint_path) if checkpoint_path else None
    if saved is None:
        return None
    if header is None or saved.journal_id != header.journal_id:
        log.warning(
            "checkpoint %s belongs to journal %s, not to %s (%s); ignoring it",
            checkpoint_path,
            saved.journal_id,
            journal,
            header.journal_id if header else "a new journal",
        )
        return None
    if not reaches(journal, saved.offset):  # past the file's end, or in its zero tail
        log.warning(
            "checkpoint is ahead of the journal (offset %d is past its last record); "
            "ignoring it",
            saved.offset,
        )
        return None
    return saved


def recover(
    journal: str | Path,
    checkpoint_path: str | Path | None,
    tickers: Iterable[str],
    valuation: str = BOOK,
    repair: bool = True,
) -> Recovered:
    """Rebuild the state a journal (and a checkpoint of it) describes."""
    journal = Path(journal)
    header = header_of(journal, repair)
    if header is not None and header.valuation != valuation:
        raise JournalUnsupportedValuation(
            f"{journal} was written with valuation {header.valuation!r}, but the controller "
            f"is configured with {valuation!r}; start a new journal to change valuation"
        )
    saved = usable_checkpoint(checkpoint_path, header, journal)
    if saved is None:
        book, last_seq, start = Book(tuple(tickers), valuation=valuation), {}, 0
    else:
        book = Book.from_state(saved.state["book"])
        book.grow_universe(tuple(tickers))
        last_seq, start = dict(saved.state["last_seq"]), saved.offset
    recovered = Recovered(book, dict(last_seq), header, end=start)
    for step, _ in replay(read_steps(journal, start, last_seq, repair), book):
        recovered.last_seq[step.item.source] = step.item.seq
        recovered.replayed += 1
        recovered.end = step.offset
    return recovered


class JournalUnsupportedValuation(JournalCorrupt):
    """The journal was written under another valuation than the one configured."""
