"""Exactly-once, in-order application per source over at-least-once delivery.

Each source numbers its messages 1, 2, 3, ...; the sequencer lets a message through only
when it is the next one for its source. Earlier numbers are duplicates (already applied);
later ones wait, a bounded number per source, until the gap before them is filled by the
sender's resend. Nothing is ever skipped, so a resent predecessor is never mistaken for a
duplicate.
"""

from __future__ import annotations

import logging
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

Item = TypeVar("Item")

MAX_HELD_PER_SOURCE = 10_000
MAX_HELD_TOTAL = 100_000  # over all sources: many gapped sources cannot grow memory either


class Sequencer(Generic[Item]):
    """Tracks the last applied seq per source and holds messages that arrive early."""

    def __init__(
        self,
        last_seq: dict[str, int] | None = None,
        max_held: int = MAX_HELD_PER_SOURCE,
        max_held_total: int = MAX_HELD_TOTAL,
    ) -> None:
        self.last_seq: dict[str, int] = dict(last_seq or {})
        self.max_held = max_held
        self.max_held_total = max_held_total
        self._held: dict[str, dict[int, Item]] = {}
        self._held_count = 0
        self.duplicates = 0
        self.gaps = 0
        self.dropped = 0

    def offer(self, source: str, seq: int, item: Item) -> list[Item] | None:
        """The items now ready, in seq order ([] if `item` waits), or None for a duplicate."""
        last = self.last_seq.get(source, 0)
        if seq <= last:
            self.duplicates += 1
            return None
        if seq > last + 1:
            return self._hold(source, seq, item, last)
        ready = [item]
        held = self._held.get(source)
        if held:
            while seq + 1 in held:
                seq += 1
                ready.append(held.pop(seq))
                self._held_count -= 1
            if not held:
                del self._held[source]
                log.info("gap closed for source %s at seq %d", source, seq)
        self.last_seq[source] = seq
        return ready

    def mark_applied(self, source: str, seq: int) -> None:
        """Record a seq as applied without offering it (journal replay)."""
        self.last_seq[source] = seq

    @property
    def held(self) -> int:
        return self._held_count

    @property
    def waiting(self) -> dict[str, dict[int, Item]]:
        """Sources with messages held behind a gap (read-only: the compiled path checks it)."""
        return self._held

    def is_waiting(self, source: str) -> bool:
        """Whether messages of `source` wait behind a gap (it is not fully acknowledged)."""
        return source in self._held

    def _hold(self, source: str, seq: int, item: Item, last: int) -> list[Item] | None:
        held = self._held.setdefault(source, {})
        if seq in held:
            self.duplicates += 1
            return None
        if len(held) >= self.max_held or self._held_count >= self.max_held_total:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning(
                    "source %s: %d messages already wait behind seq %d (%d over all "
                    "sources); dropping seq %d for the sender to resend (%d dropped so far)",
                    source,
                    len(held),
                    last + 1,
                    self._held_count,
                    seq,
                    self.dropped,
                )
            if not held:
                del self._held[source]
            return []
        if not held:
            self.gaps += 1
            log.warning(
                "gap for source %s: expected seq %d, got %d; holding", source, last + 1, seq
            )
        held[seq] = item
        self._held_count += 1
        return []
