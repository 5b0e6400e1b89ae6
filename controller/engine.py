"""The controller's core, LMAX style: validate, sequence, journal, apply; nothing published yet.

One thread owns the engine. `receive` takes raw input bytes; each input that is its
source's next is journaled, then applied to the book (`Book.apply`, the one mutator).
`commit` makes the batch durable and only then hands back its outputs (typed, from
common.protocol: allocations, rejection notices, acks last); the service alone turns them
into frames. `from_recovered` rebuilds an engine from what the journal says (common.history),
which reaches exactly the state the engine had, since allocation is deterministic.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.history import Recovered
from common.protocol import (
    FILL,
    MAX_MESSAGE_BYTES,
    MAX_NAME_LENGTH,
    MAX_PRICE,
    MAX_QUANTITY,
    MAX_SEQ,
    PRICE_SCALE,
    SPLIT,
    TOPIC_ALLOCATION,
    Ack,
    Allocated,
    Fill,
    Input,
    Output,
    Rejected,
    RejectedNotice,
    Split,
    SplitApplied,
    Unreadable,
    decode_input,
    pack,
    wire_fill,
)
from controller import native
from controller.book import Book
from controller.deadletter import DeadLetters
from controller.journal import JournalWriter, encode_input, write_checkpoint
from controller.sequencer import Sequencer

log = logging.getLogger(__name__)

REJECTIONS_LOGGED_IN_FULL = 20
REJECTION_LOG_EVERY = 1000

#: (sender's key identity, message kind, source) -> None if allowed, else why not.
Authorize = Callable[[str | None, str, str], str | None]


@dataclass(frozen=True, slots=True)
class DeliveryCounts:
    """What the engine saw of delivery, since it started: for the snapshot's counts."""

    unreadable: int
    refused: int  # messages from a key not allowed to send them
    duplicates: int
    gaps: int
    held: int
    dropped: int


class Engine:
    """Book + sequencer + journal: the whole controller minus sockets and clocks."""

    def __init__(
        self,
        book: Book,
        journal: JournalWriter | None = None,
        deadletters: DeadLetters | None = None,
        sequencer: Sequencer[Input] | None = None,
        authorize: Authorize | None = None,
        compiled: bool = False,
    ) -> None:
        """`authorize`, when given, decides per message whether its sender's key may speak
        for its source (CURVE identities); without it every sender may. `compiled` takes
        common-case fills through the compiled path when it is built (controller/native.py):
        the same journal records, events and book as the Python path, which stays the
        reference and takes everything else."""
        self.tickers = frozenset(book.tickers)
        self.authorize = authorize
        self.refused = 0
        self._book = book
        self.sequencer: Sequencer[Input] = sequencer if sequencer is not None else Sequencer()
        self.journal = journal
        self.deadletters = deadletters
        self.unreadable = 0
        self._rejections_logged = 0
        self._outbox: list[Output] = []
        self._touched: set[str] = set()
        self.fast = self._compiled_path() if compiled else None

    def _compiled_path(self) -> Any:
        """The compiled path bound to this engine's state, or None when it is not built."""
        if native.hotpath is None:
            return None
        return native.hotpath.HotPath(
            engine=self,
            book=self._book,
            tickers=self.tickers,
            last_seq=self.sequencer.last_seq,
            waiting=self.sequencer.waiting,
            touched=self._touched,
            outbox=self._outbox,  # never replaced: commit empties it in place
            topic=TOPIC_ALLOCATION,
            max_message=MAX_MESSAGE_BYTES,
            max_name=MAX_NAME_LENGTH,
            price_scale=PRICE_SCALE,
            max_price=MAX_PRICE,
            max_quantity=MAX_QUANTITY,
            max_seq=MAX_SEQ,
        )

    @property
    def book(self) -> Book:
        """The book, with every fill the compiled path took written back into it."""
        if self.fast is not None:
            self.fast.flush()
        return self._book

    @classmethod
    def from_recovered(
        cls,
        recovered: Recovered,
        journal: JournalWriter | None = None,
        deadletters: DeadLetters | None = None,
        compiled: bool = False,
    ) -> Engine:
        """An engine carrying on from a recovered book and per-source seqs."""
        sequencer: Sequencer[Input] = Sequencer(recovered.last_seq)
        return cls(recovered.book, journal, deadletters, sequencer, compiled=compiled)

    # -- the hot path --------------------------------------------------------------------
    def receive(self, raw: bytes, sender: str | None = None) -> None:
        """Take one raw input message (from the key `sender`, when keys are in use); its
        effects wait in the batch until `commit`."""
        if self.fast is None or not self.fast.receive(raw, sender):
            self.receive_in_python(raw, sender)

    def receive_in_python(self, raw: bytes, sender: str | None = None) -> None:
        """`receive` on the Python path only: for a message the compiled path declined
        (having changed nothing), or for every message when it is not in use."""
        try:
            item = decode_input(raw, self.tickers)
        except Exception as exc:  # a validation bug must cost one message, never the process
            log.exception("could not validate a message")
            item = Unreadable(f"could not be validated ({type(exc).__name__})")
        if isinstance(item, Unreadable):
            self._unreadable(raw, item)
        elif self.authorize is not None and (refusal := self._refusal(sender, item)):
            self._refuse(raw, item, refusal)
        else:
            self._sequence(raw, item)

    def _refusal(self, sender: str | None, item: Input) -> str | None:
        """Why `sender` may not send `item`, or None. An invalid message needs the right to
        send its declared kind, or either kind when it declared none we know."""
        assert self.authorize is not None
        if type(item) is Fill:
            kinds: tuple[str, ...] = (FILL,)
        elif type(item) is Split:
            kinds = (SPLIT,)
        else:
            assert isinstance(item, Rejected)
            kinds = (item.kind,) if item.kind in (FILL, SPLIT) else (FILL, SPLIT)
        reasons = [self.authorize(sender, kind, item.source) for kind in kinds]
        return None if None in reasons else reasons[0]

    def _refuse(self, raw: bytes, item: Input, reason: str) -> None:
        """A message whose key may not speak for its source: dead-lettered, counted and
        answered without identity, so it never touches that source's sequence, and its
        notice cannot make the real sender drop a message of its own."""
        self._dead_letter(raw, reason, item.source, item.seq)
        self.refused += 1
        self._log_rejection("refused %r#%d: %s", item.source, item.seq, reason)
        self._outbox.append(RejectedNotice(reason))

    def _unreadable(self, raw: bytes, item: Unreadable) -> None:
        """A message with no usable identity: dead-lettered and answered, never sequenced."""
        self._dead_letter(raw, item.reason, item.source, None)
        self.unreadable += 1
        self._log_rejection("rejected a message: %s", item.reason)
        self._outbox.append(RejectedNotice(item.reason))

    def _sequence(self, raw: bytes, item: Input) -> None:
        """Journal and apply `item` (and whatever it releases) if it is its source's next."""
        ready = self.sequencer.offer(item.source, item.seq, item)
        self._touched.add(item.source)
        if ready is not None and type(item) is Rejected:
            self._dead_letter(raw, item.reason, item.source, item.seq)  # once, not per resend
        if ready:
            for each in ready:
                if self.journal is not None:
                    self.journal.append(encode_input(each))
                self._apply(each)

    def _apply(self, item: Input) -> None:
        """Apply one input to the book and queue what it means for subscribers."""
        waiting = self.book.pending  # the fills a split may release (the book swaps it out)
        for decision in self.book.apply(item):
            if type(decision) is Allocated:
                self._outbox.append(decision)
            elif type(decision) is Rejected:
                if decision is not item:  # the book refused a fill (an over-sell)
                    fills = [item] if type(item) is Fill else waiting
                    self._dead_letter_refused_fill(decision, fills)
                self._log_rejection(
                    "rejected %s#%d: %s", decision.source, decision.seq, decision.reason
                )
                self._outbox.append(
                    RejectedNotice(decision.reason, decision.source, decision.seq)
                )
            elif type(decision) is SplitApplied:
                split = decision.split
                log.info(
                    "split %s#%d applied: %d accounts%s",
                    split.source,
                    split.seq,
                    len(split.accounts),
                    f", {decision.released} waiting fills allocated" if decision.released else "",
                )

    def commit(self) -> list[Output]:
        """Make the batch durable, then hand back its outputs (acks last) to publish.

        A journal error propagates and the batch's outputs are never returned."""
        if self.journal is not None:
            self.journal.commit()
        return self._take_outputs()

    def write(self) -> tuple[int, list[Output]]:
        """Write the batch into the journal without waiting for it to be durable; returns
        the journal's end offset and the batch's outputs, which must not be published
        before a sync through that offset has succeeded (controller/syncer.py)."""
        end = self.journal.write() if self.journal is not None else 0
        return end, self._take_outputs()

    def _take_outputs(self) -> list[Output]:
        """The batch's outputs, acks last; the batch is over."""
        if self.deadletters is not None:
            self.deadletters.flush()
        last_seq = self.sequencer.last_seq
        outputs = self._outbox.copy()
        self._outbox.clear()  # the same list: the compiled path appends to it
        # 0 for a source seen only behind a gap: "nothing yet"
        outputs.extend(Ack(source, last_seq.get(source, 0)) for source in self._touched)
        self._touched.clear()
        return outputs

    def acks(self) -> list[Ack]:
        """An ack for every known source (sent with snapshots, for late joiners)."""
        return [Ack(source, seq) for source, seq in self.sequencer.last_seq.items()]

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

    def _dead_letter_refused_fill(self, rejected: Rejected, candidates: Iterable[Fill]) -> None:
        """Dead-letter a fill the book refused (an over-sell), re-encoded as it was sent: a
        fill released by a split has left the receive path long before."""
        key = (rejected.source, rejected.seq)
        fill = next((f for f in candidates if (f.source, f.seq) == key), None)
        raw = b"" if fill is None else pack(wire_fill(fill))
        self._dead_letter(raw, rejected.reason, rejected.source, rejected.seq)

    def _dead_letter(self, raw: bytes, reason: str, source: str | None, seq: int | None) -> None:
        if self.deadletters is not None:
            self.deadletters.write(raw, reason, source, seq)

    # -- state ---------------------------------------------------------------------------
    def delivery(self) -> DeliveryCounts:
        sequencer = self.sequencer
        return DeliveryCounts(
            self.unreadable,
            self.refused,
            sequencer.duplicates,
            sequencer.gaps,
            sequencer.held,
            sequencer.dropped,
        )

    def state(self) -> dict:
        return {"book": self.book.to_state(), "last_seq": self.sequencer.last_seq}

    def checkpoint(self, path: str | Path) -> int:
        """Save state with the journal offset it reflects; returns that offset."""
        if self.journal is None:
            raise RuntimeError("checkpoints need a journal")
        self.journal.commit()
        self.journal.sync()
        write_checkpoint(path, self.journal.header.journal_id, self.journal.offset, self.state())
        return self.journal.offset
