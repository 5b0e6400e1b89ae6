"""The controller's core, LMAX style: validate, sequence, journal, apply, then publish.

One thread owns the engine. `receive` takes raw input bytes; `commit` makes the batch durable
and returns the events to publish, so nothing is published before it is in the journal.
`recover` rebuilds the engine from a checkpoint plus the journal after it; since allocation
is deterministic, the replay reaches exactly the state the engine had.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from common.protocol import (
    TOPIC_ACK,
    TOPIC_ALLOCATION,
    TOPIC_REJECTED,
    Fill,
    Rejection,
    Split,
    build_split,
    decode_input,
    event,
)
from controller.book import Allocation, Book
from controller.deadletter import DeadLetters
from controller.journal import (
    JournalCorrupt,
    JournalWriter,
    read_checkpoint,
    read_records,
    write_checkpoint,
)
from controller.sequencer import Sequencer

log = logging.getLogger(__name__)

FILL_RECORD = "F"
SPLIT_RECORD = "S"
REJECT_RECORD = "R"

Input = Fill | Split | Rejection

REJECTIONS_LOGGED_IN_FULL = 20
REJECTION_LOG_EVERY = 1000


class Engine:
    """Book + sequencer + journal: the whole controller minus sockets and clocks."""

    def __init__(
        self,
        tickers: tuple[str, ...] | list[str],
        journal: JournalWriter | None = None,
        deadletters: DeadLetters | None = None,
        book: Book | None = None,
        sequencer: Sequencer[Input] | None = None,
    ) -> None:
        self.tickers = frozenset(tickers)
        self.book = book if book is not None else Book(tickers)
        self.sequencer: Sequencer[Input] = sequencer if sequencer is not None else Sequencer()
        self.journal = journal
        self.deadletters = deadletters
        self.unidentified_rejections = 0
        self._rejections_logged = 0
        self._outbox: list[list[bytes]] = []
        self._touched: set[str] = set()

    # -- the hot path --------------------------------------------------------------------
    def receive(self, raw: bytes) -> None:
        """Take one raw input message; its effects wait in the batch until `commit`."""
        try:
            item: Input = decode_input(raw, self.tickers)
        except Rejection as rejection:
            self._reject(raw, rejection)
            return
        except Exception as exc:  # a validation bug must cost one message, never the process
            log.exception("could not validate a message")
            self._reject(raw, Rejection(f"could not be validated ({type(exc).__name__})"))
            return
        self._sequence(raw, item)

    def _reject(self, raw: bytes, rejection: Rejection) -> None:
        """A message that failed validation: answered and dead-lettered; with a readable
        identity it goes through the sequencer so that its seq is consumed in order."""
        if rejection.source is not None and rejection.seq is not None:
            self._sequence(raw, rejection)
            return
        self._dead_letter(raw, rejection)
        self.unidentified_rejections += 1
        self._log_rejection("rejected a message: %s", rejection.reason)
        self._outbox.append(event(TOPIC_REJECTED, {"reason": rejection.reason}))

    def _sequence(self, raw: bytes, item: Input) -> None:
        """Apply `item` (and whatever it releases) if it is its source's next message."""
        source = item.source
        ready = self.sequencer.offer(source, item.seq, item)
        self._touched.add(source)
        if ready is not None and type(item) is Rejection:
            self._dead_letter(raw, item)  # once, not again for each resend
        if ready:
            for each in ready:
                self._journal(each)
                self._apply(each, publish=True)

    def commit(self) -> list[list[bytes]]:
        """Make the batch durable, then hand back its events (acks last) to publish."""
        if self.journal is not None:
            self.journal.commit()
        if self.deadletters is not None:
            self.deadletters.flush()
        last_seq = self.sequencer.last_seq
        for source in self._touched:  # 0 for a source seen only behind a gap: "nothing yet"
            acked = last_seq.get(source, 0)
            self._outbox.append(event(TOPIC_ACK, {"source": source, "seq": acked}))
        self._touched.clear()
        events, self._outbox = self._outbox, []
        return events

    def acks(self) -> list[list[bytes]]:
        """An ack event for every known source (sent with snapshots, for late joiners)."""
        return [
            event(TOPIC_ACK, {"source": source, "seq": seq})
            for source, seq in self.sequencer.last_seq.items()
        ]

    def _log_rejection(self, message: str, *args: object) -> None:
        """Log the first rejections one by one, then one line per thousand (floods)."""
        self._rejections_logged += 1
        count = self._rejections_logged
        if count <= REJECTIONS_LOGGED_IN_FULL:
            log.warning(message, *args)
        elif count % REJECTION_LOG_EVERY == 0:
            log.warning(
                message + " (%d rejections since start; logging one in %d)",
                *args,
                count,
                REJECTION_LOG_EVERY,
            )

    def _dead_letter(self, raw: bytes, rejection: Rejection) -> None:
        if self.deadletters is not None:
            self.deadletters.write(raw, rejection)

    def _journal(self, item: Input) -> None:
        if self.journal is not None:
            self.journal.append(to_record(item))

    def _apply(self, item: Input, publish: bool) -> None:
        if type(item) is Fill:
            allocation = self.book.apply_fill(item)
            if publish and allocation is not None:
                self._outbox.append(allocation_event(allocation))
        elif type(item) is Split:
            released = self.book.apply_split(item)
            if publish:
                log.info(
                    "split %s#%d applied: %d accounts%s",
                    item.source,
                    item.seq,
                    len(item.accounts),
                    f", {len(released)} waiting fills allocated" if released else "",
                )
                self._outbox.extend(allocation_event(a) for a in released)
        else:
            self.book.count_rejection()
            if publish:
                self._log_rejection("rejected %s#%d: %s", item.source, item.seq, item.reason)
                body = {"reason": item.reason, "source": item.source, "seq": item.seq}
                self._outbox.append(event(TOPIC_REJECTED, body))

    # -- state ---------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The book's snapshot plus the delivery counters."""
        snapshot = self.book.snapshot()
        counts = snapshot["counts"]
        counts["rejected"] += self.unidentified_rejections
        counts["duplicates"] = self.sequencer.duplicates
        counts["gaps"] = self.sequencer.gaps
        counts["held"] = self.sequencer.held
        counts["dropped"] = self.sequencer.dropped
        snapshot["sources"] = dict(self.sequencer.last_seq)
        return snapshot

    def state(self) -> dict[str, Any]:
        return {"book": self.book.to_state(), "last_seq": self.sequencer.last_seq}

    def replay(self, record: list[Any]) -> None:
        """Apply one journal record: same effect as when it was received, nothing published."""
        item = from_record(record)
        self.sequencer.mark_applied(item.source, item.seq)
        self._apply(item, publish=False)

    def checkpoint(self, path: str | Path) -> int:
        """Save state with the journal offset it reflects; returns that offset."""
        if self.journal is None:
            raise RuntimeError("checkpoints need a journal")
        self.journal.commit()
        self.journal.sync()
        write_checkpoint(path, self.journal.offset, self.state())
        return self.journal.offset


def recover(
    journal_path: str | Path,
    checkpoint_path: str | Path | None,
    tickers: tuple[str, ...] | list[str],
) -> tuple[Engine, int]:
    """Rebuild an engine (without writers) from checkpoint + journal; returns it and
    the number of journal records replayed."""
    engine = Engine(tickers)
    start = 0
    saved = read_checkpoint(checkpoint_path) if checkpoint_path else None
    if saved is not None:
        offset, state = saved
        size = Path(journal_path).stat().st_size if Path(journal_path).exists() else 0
        if offset > size:
            log.warning("checkpoint is ahead of the journal (%d > %d); ignoring it", offset, size)
        else:
            book = Book.from_state(state["book"])
            book.tickers = tuple(dict.fromkeys([*tickers, *book.tickers]))  # universe may grow
            engine = Engine(tickers, book=book, sequencer=Sequencer(state["last_seq"]))
            start = offset
    replayed = 0
    offset = start
    for end, record in read_records(journal_path, start, repair=True):
        source, seq = record[1], record[2]
        expected = engine.sequencer.last_seq.get(source, 0) + 1
        if seq != expected:  # every source's records are consecutive; never apply one twice
            raise JournalCorrupt(
                f"{journal_path}: record at offset {offset} is {source}#{seq}, "
                f"expected {source}#{expected}"
            )
        engine.replay(record)
        replayed += 1
        offset = end
    return engine, replayed


def to_record(item: Input) -> list[Any]:
    if type(item) is Fill:
        return [FILL_RECORD, item.source, item.seq, item.ticker, item.price_units, item.quantity]
    if type(item) is Split:
        percents = dict(zip(item.accounts, item.percents, strict=True))
        return [SPLIT_RECORD, item.source, item.seq, percents]
    return [REJECT_RECORD, item.source, item.seq, item.reason]


def from_record(record: list[Any]) -> Input:
    kind = record[0]
    if kind == FILL_RECORD:
        return Fill(*record[1:])
    if kind == SPLIT_RECORD:
        return build_split(record[1], record[2], record[3])
    if kind == REJECT_RECORD:
        return Rejection(record[3], record[1], record[2])
    raise ValueError(f"unknown journal record type {kind!r}")


def allocation_event(allocation: Allocation) -> list[bytes]:
    fill = allocation.fill
    return event(
        TOPIC_ALLOCATION,
        {
            "source": fill.source,
            "seq": fill.seq,
            "ticker": fill.ticker,
            "price": fill.price,
            "quantity": fill.quantity,
            "allocations": allocation.shares,
        },
    )
