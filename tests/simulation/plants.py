"""Bugs planted on purpose, one at a time, to show the simulator catches each (never
committed into production code: each is a patch that lives only inside `planted`).

- `ack-before-fsync`: a batch's fsync is put off to the next commit, so acks go out first.
- `retried-fsync`: a failed fsync is tried again, and its success believed.
- `skipped-duplicate-check`: the sequencer lets the last applied seq of a source in again.
- `sell-may-go-short`: sells are split by target alone, ignoring what each account holds.
- `failed-fsync-left-in-cache`: the real bug the simulator found (fixed in 02b37a2): after a
  failed fsync the batch stays in the page cache, for a restarted controller to read back.
- `torn-before-zeros-is-corruption`: the reader of the append-only journal, for which a bad
  last record was torn only when nothing at all followed it: a batch torn in place, zeros
  after it, then reads as corruption and the controller cannot start.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from controller import allocator, book, journal, sequencer


def _ack_before_fsync() -> list[tuple[Any, str, Any]]:
    def commit(self: journal.JournalWriter) -> int:
        self._check_alive()
        if self._unsynced:
            self.sync()  # the previous batch, already acknowledged
        if self._buffer:
            self._write_batch()
        return self.offset

    return [(journal.JournalWriter, "commit", commit)]


def _retried_fsync() -> list[tuple[Any, str, Any]]:
    real_sync = journal.JournalWriter.sync

    def sync(self: journal.JournalWriter) -> None:
        try:
            real_sync(self)
        except journal.JournalFailed:
            self.failed = False
            real_sync(self)

    return [(journal.JournalWriter, "sync", sync)]


def _skipped_duplicate_check() -> list[tuple[Any, str, Any]]:
    real_offer = sequencer.Sequencer.offer

    def offer(self: sequencer.Sequencer, source: str, seq: int, item: Any) -> Any:
        if seq == self.last_seq.get(source, 0):
            return [item]
        return real_offer(self, source, seq, item)

    return [(sequencer.Sequencer, "offer", offer)]


def _sell_may_go_short() -> list[tuple[Any, str, Any]]:
    def sell(accounts, values, weights, price, quantity, holdings, ranks):  # noqa: ANN001
        return allocator.allocate_integral(accounts, values, [w + 1 for w in weights], price,
                                           quantity, ranks)

    real_rule = book.exact_rule

    def exact_rule() -> book.Rule:
        return book.Rule("exact", real_rule().buy, sell)

    return [(book, "exact_rule", exact_rule)]


def _failed_fsync_left_in_cache() -> list[tuple[Any, str, Any]]:
    def keep(self: journal.JournalWriter) -> None:
        return None

    return [(journal.JournalWriter, "_cut_unsynced", keep)]


def _torn_before_zeros_is_corruption() -> list[tuple[Any, str, Any]]:
    real_problem = journal._record_problem

    def problem(data: bytes, offset: int, size: int, content: int) -> tuple[bool, str] | None:
        found = real_problem(data, offset, size, content)
        if found == (True, "a last record with a bad checksum"):
            end = offset + journal.RECORD_HEADER.size + journal.RECORD_HEADER.unpack_from(
                data, offset)[0]
            if end != size:
                return False, "checksum mismatch"
        return found

    return [(journal, "_record_problem", problem)]


PLANTS = {
    "ack-before-fsync": _ack_before_fsync,
    "retried-fsync": _retried_fsync,
    "skipped-duplicate-check": _skipped_duplicate_check,
    "sell-may-go-short": _sell_may_go_short,
    "failed-fsync-left-in-cache": _failed_fsync_left_in_cache,
    "torn-before-zeros-is-corruption": _torn_before_zeros_is_corruption,
}


@contextmanager
def planted(name: str | None) -> Iterator[None]:
    """Run with the named bug planted (none for None); the patch is undone on exit."""
    patches = PLANTS[name]() if name else []
    saved = [(owner, attr, getattr(owner, attr)) for owner, attr, _ in patches]
    try:
        for owner, attr, replacement in patches:
            setattr(owner, attr, replacement)
        yield
    finally:
        for owner, attr, original in saved:
            setattr(owner, attr, original)
