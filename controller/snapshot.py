"""The positions snapshot, assembled in one place from the book and the delivery counts.

A snapshot is made in two steps so that a large book does not stall the engine's thread:
`capture` copies exactly what a snapshot shows (on the engine's thread, between batches,
about 1.5 ms at 10,000 accounts, the per-account positions dicts being most of it), and
`build` then `encode` turn that copy into the published frames anywhere, in pieces
(`SnapshotWorker` does it on a thread of its own). `build_snapshot` is both steps at once,
for callers that have the book to themselves (tools, tests, the service without a worker).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import msgpack

from common.protocol import PRICE_SCALE, TOPIC_POSITIONS, AccountRow, Snapshot, Split
from controller.book import MARKET, Book
from controller.engine import DeliveryCounts

log = logging.getLogger(__name__)

#: Accounts built or encoded between two chances for the engine's thread to take the GIL:
#: about 0.3 ms of work, so the worker never holds the interpreter for long (msgpack holds
#: it for a whole call: 10 ms for a 10,000-account map in one piece; Python code holds it
#: up to the 5 ms switch interval while another thread waits).
ROWS_PER_PIECE = 100
#: How long the worker sleeps between pieces, without the GIL, so a waiting engine thread
#: gets it. Smaller pieces or longer pauses did not shorten the engine's waits measurably
#: and made a snapshot take seconds on a busy loop (slots skipped).
PIECE_PAUSE_SECONDS = 0.00005
ACCOUNTS = "accounts"  # the snapshot body's key that holds the rows (encoded in pieces)


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """What only the service knows: the snapshot's number, the process, the time."""

    seq: int = 0
    instance: str = ""
    time: float = 0.0
    interval: float = 0.0
    peers_rejected: int = 0
    journal: str | None = None
    paused: bool = False


NO_DELIVERY = DeliveryCounts(0, 0, 0, 0, 0, 0)


@dataclass(frozen=True, slots=True)
class SnapshotState:
    """Everything a snapshot shows, as of one moment. From `capture` nothing in it is shared
    with the live book (its lists and dicts are copies; the rest is immutable), so it can be
    built on another thread while the engine goes on."""

    tickers: tuple[str, ...]
    valuation: str
    accounts: list[str]
    values: list[int]  # book value per account, micro-units
    positions: list[dict[str, int]]  # shares per ticker per account
    last_price: dict[str, int]  # micro-units
    split: Split | None
    fills: int
    splits: int
    rejected: int
    pending: int
    delivery: DeliveryCounts
    meta: SnapshotMeta
    sources: dict[str, int]


def _state(
    book: Book,
    delivery: DeliveryCounts,
    meta: SnapshotMeta,
    sources: dict[str, int] | None,
    copy: bool,
) -> SnapshotState:
    """The book's snapshot state: copied, or sharing the book's lists when built at once."""
    return SnapshotState(
        tickers=book.tickers,
        valuation=book.valuation,
        accounts=list(book.accounts) if copy else book.accounts,
        values=list(book.values) if copy else book.values,
        positions=list(map(dict.copy, book.positions)) if copy else book.positions,
        last_price=dict(book.last_price) if copy else book.last_price,
        split=book.split,
        fills=book.fills_allocated,
        splits=book.splits_applied,
        rejected=book.rejected,
        pending=len(book.pending),
        delivery=delivery,
        meta=meta,
        sources=dict(sources or {}) if copy else sources or {},
    )


def capture(
    book: Book,
    delivery: DeliveryCounts = NO_DELIVERY,
    meta: SnapshotMeta = SnapshotMeta(),  # noqa: B008 (frozen, shared safely)
    sources: dict[str, int] | None = None,
) -> SnapshotState:
    """A consistent copy of what a snapshot of `book` shows: the engine's thread's share."""
    return _state(book, delivery, meta, sources, copy=True)


def build_snapshot(
    book: Book,
    delivery: DeliveryCounts = NO_DELIVERY,
    meta: SnapshotMeta = SnapshotMeta(),  # noqa: B008 (frozen, shared safely)
    sources: dict[str, int] | None = None,
) -> Snapshot:
    """Every account's positions, values, weight against target; prices, totals, counts."""
    return build(_state(book, delivery, meta, sources, copy=False))


def _no_pause() -> None:
    """Building on the caller's thread: nobody to give the GIL to."""


#: One piece of a snapshot's rows: (account, row), in the book's order.
Rows = list[tuple[str, AccountRow]]


def build(state: SnapshotState) -> Snapshot:
    """The snapshot of `state`, all at once."""
    accounts: dict[str, AccountRow] = {}
    rest = _assemble(state, accounts.update, _no_pause)
    return replace(rest, accounts=accounts)


def encode(
    state: SnapshotState, packer: msgpack.Packer, pause: Callable[[], None] = _no_pause
) -> list[bytes]:
    """`build(state).frames()`, byte for byte, made ROWS_PER_PIECE accounts at a time with
    `pause` between pieces; each piece of rows is packed and dropped as it is made, so the
    rows never all exist at once (fewer objects for the garbage collector to promote and
    then traverse while holding the GIL). A msgpack map is its header, then each key and
    value in order, so the pieces joined are the bytes of the whole map.
    `packer` must be the caller's own (a Packer keeps a buffer: one per thread)."""
    pack = packer.pack
    packed: list[bytes] = []

    def pack_rows(rows: Rows) -> None:
        packed.append(b"".join(pack(name) + pack(row.to_body()) for name, row in rows))

    body = _assemble(state, pack_rows, pause).to_body()  # no rows: the rest, in key order
    pieces = [packer.pack_map_header(len(body))]
    for key, value in body.items():
        pieces.append(pack(key))
        if key == ACCOUNTS:
            pieces.append(packer.pack_map_header(len(state.accounts)))
            pieces.extend(packed)
        else:
            pieces.append(pack(value))
    return [TOPIC_POSITIONS, b"".join(pieces)]


def _assemble(
    state: SnapshotState, take_rows: Callable[[Rows], None], pause: Callable[[], None]
) -> Snapshot:
    """The snapshot of `state` without its rows, which go to `take_rows` ROWS_PER_PIECE
    accounts at a time, `pause` after each piece (the worker lets the engine's thread run)."""
    prices = state.last_price
    positions = state.positions
    markets: list[int] = []  # each account's holdings at last prices, as Book.market_values()
    for start in range(0, len(positions), ROWS_PER_PIECE):
        markets.extend(
            sum(count * prices[t] for t, count in held.items())
            for held in positions[start : start + ROWS_PER_PIECE]
        )
        pause()
    values = state.values
    targets = state.split.target_percent() if state.split else {}
    valued = markets if state.valuation == MARKET else values  # what the rule tracks
    valued_total = sum(valued)
    no_shares = dict.fromkeys(state.tickers, 0)
    totals = no_shares.copy()  # shares per ticker over all accounts, as Book.total_shares()
    names = state.accounts
    for start in range(0, len(names), ROWS_PER_PIECE):
        rows = []
        for i in range(start, min(start + ROWS_PER_PIECE, len(names))):
            account, held = names[i], positions[i]
            for ticker, count in held.items():
                totals[ticker] = totals.get(ticker, 0) + count
            row = no_shares.copy()
            row.update(held)
            weight = 100 * valued[i] / valued_total if valued_total else 0.0
            target = targets.get(account, 0.0)
            rows.append(
                (
                    account,
                    AccountRow(
                        positions=row,
                        value=values[i] / PRICE_SCALE,
                        market_value=markets[i] / PRICE_SCALE,
                        weight=weight,
                        target=target,
                        deviation=weight - target,
                    ),
                )
            )
        take_rows(rows)
        pause()
    split = state.split
    delivery, meta = state.delivery, state.meta
    return Snapshot(
        accounts={},
        prices={t: p / PRICE_SCALE for t, p in prices.items()},
        totals={
            "positions": totals,
            "value": sum(values) / PRICE_SCALE,
            "market_value": sum(markets) / PRICE_SCALE,
        },
        counts={
            "fills": state.fills,
            "splits": state.splits,
            "rejected": state.rejected + delivery.unreadable + delivery.refused,
            "refused": delivery.refused,
            "pending": state.pending,
            "duplicates": delivery.duplicates,
            "gaps": delivery.gaps,
            "held": delivery.held,
            "dropped": delivery.dropped,
            "peers_rejected": meta.peers_rejected,
        },
        split=None if split is None else {"source": split.source, "seq": split.seq},
        sources=dict(state.sources),
        seq=meta.seq,
        instance=meta.instance,
        time=meta.time,
        interval=meta.interval,
        journal=meta.journal,
        paused=meta.paused,
    )


def snapshot_packer() -> msgpack.Packer:
    """A packer set like common.protocol's (whose one Packer belongs to the engine's thread)."""
    return msgpack.Packer(use_bin_type=True)


def give_way() -> None:
    """Release the GIL for a moment, so a thread waiting for it gets it."""
    time.sleep(PIECE_PAUSE_SECONDS)


@dataclass(frozen=True, slots=True)
class Built:
    """A finished job: the snapshot's number and its frames, or None if building failed."""

    seq: int
    frames: list[bytes] | None


class SnapshotWorker:
    """Builds and encodes captured snapshots on a thread of its own, one at a time.

    Only the engine's thread calls `submit`, `take`, `wait` and `close`; it never blocks on
    the worker except in `wait` and `close`. The worker touches no socket and nothing live:
    it gets a captured state and hands back bytes. A build that raises is logged and yields
    no frames: it costs that snapshot, never the process.
    """

    def __init__(
        self,
        close_wait: float,
        make: Callable[[SnapshotState], list[bytes]] | None = None,
        pause: Callable[[], None] = give_way,
    ) -> None:
        """`close_wait`: seconds `close` waits for a build in hand before it gives up on it;
        `make` turns a state into frames (`encode`, in pieces, unless given)."""
        self._close_wait = close_wait
        self._make = make if make is not None else self._build_and_encode
        self._pause = pause
        self._packer = snapshot_packer()
        self._jobs: queue.SimpleQueue[SnapshotState | None] = queue.SimpleQueue()
        self._done = threading.Event()
        self._result: Built | None = None
        self._in_hand = False  # a job handed over whose result is not yet taken
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="snapshots", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        """A job was handed over and its result not yet taken."""
        return self._in_hand

    def submit(self, state: SnapshotState) -> bool:
        """Hand `state` over to be built; False (and nothing done) while a job is in hand."""
        if self.busy or self._closed or not self._thread.is_alive():
            return False
        self._in_hand = True
        self._done.clear()
        self._jobs.put(state)
        return True

    def take(self) -> Built | None:
        """The finished job, once (None while it is still being built, or if none)."""
        if not self.busy or not self._done.is_set():
            return None
        result, self._result, self._in_hand = self._result, None, False
        return result

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job in hand is finished (or `timeout`); True if it is."""
        return not self.busy or self._done.wait(timeout)

    def close(self) -> None:
        """End the thread once the job in hand is done (its result is dropped). Waits
        `close_wait` at most: a daemon thread still building never holds up the exit."""
        self._closed = True
        self._jobs.put(None)
        self._thread.join(self._close_wait)
        if self._thread.is_alive():
            log.warning("snapshot worker still busy after %g s; not waiting", self._close_wait)
        self._in_hand = False

    def _build_and_encode(self, state: SnapshotState) -> list[bytes]:
        return encode(state, self._packer, self._pause)

    def _serve(self) -> None:
        while (state := self._jobs.get()) is not None:
            frames: list[bytes] | None = None
            try:
                frames = self._make(state)
            except Exception:  # a bug in a snapshot must cost that snapshot, not the process
                log.exception("could not build snapshot #%d; it is skipped", state.meta.seq)
                self._packer = snapshot_packer()  # its buffer may hold half a snapshot
            self._result = Built(state.meta.seq, frames)
            self._done.set()
