"""Adversarial review of the compiled hot path and the sync thread (issue 13).

The compiled path (controller/_native/hotpath.c) promises, for every message it takes, what
the pure Python engine does, byte for byte in the journal and the events, and the same book;
for every message it declines, no change at all. These tests try to break that promise with
inputs test_native_engine.py's random streams rarely reach: every msgpack width and header
of each field, prices on rounding boundaries, seqs and book numbers at the int64 edge,
sources of exactly the longest length, splits that drop accounts, sells that empty them,
outside reads and applies between fills, CURVE refusals; and the breaks the review found,
each now fixed: key order after a flush, a flush over an apply it did not see, acks sent
with a worker snapshot before their sync, a pre-allocation's fsync hiding a failed sync.

Skipped when the extension is not built, unless FILLALLOC_EXPECT_NATIVE=1 (CI)."""

from __future__ import annotations

import math
import random
import struct
import threading
import weakref
from typing import Any

import pytest
import zmq
from engine_pair import PAGE, TICKERS, EnginePair
from helpers import FakeClock, collect, require_compiled, wait_for

from common.protocol import (
    DEFAULT_TICKERS,
    MAX_NAME_LENGTH,
    MAX_QUANTITY,
    MAX_SEQ,
    TOPIC_ACK,
    TOPIC_POSITIONS,
    Fill,
    Invalid,
    build_split,
    fill_message,
    pack,
    price_units,
    split_message,
)
from controller import native
from controller.book import Book
from controller.engine import Engine
from controller.journal import JournalFailed, JournalWriter
from controller.service import ControllerService
from controller.snapshot import SnapshotWorker, build, build_snapshot
from controller.syncer import Syncer

require_compiled(native.hotpath, "the compiled hot path")

INT64_MAX = 2**63 - 1


def split_raw(seq: int, names: list[str], rng: random.Random) -> bytes:
    """A split over `names` summing to exactly 100 in hundredths, some accounts at 0."""
    cents = [rng.choice([0, 1, 1, 2, 7]) for _ in names]
    cents[0] = cents[0] or 1
    total = sum(cents)
    scaled = [c * 10_000 // total for c in cents]
    scaled[0] += 10_000 - sum(scaled)
    return pack(split_message("aum", seq, {n: s / 100 for n, s in zip(names, scaled, strict=True)}))


# -- msgpack, encoded every way the format allows ----------------------------------------
def encode_int(value: int, rng: random.Random) -> bytes:
    """`value` in any msgpack int encoding that holds it (not only the smallest)."""
    forms = []
    if 0 <= value < 128:
        forms.append(bytes([value]))
    if -32 <= value < 0:
        forms.append(struct.pack("b", value))
    for head, fmt, low, high in (
        (0xCC, ">B", 0, 2**8), (0xCD, ">H", 0, 2**16), (0xCE, ">I", 0, 2**32),
        (0xCF, ">Q", 0, 2**64), (0xD0, ">b", -(2**7), 2**7), (0xD1, ">h", -(2**15), 2**15),
        (0xD2, ">i", -(2**31), 2**31), (0xD3, ">q", -(2**63), 2**63),
    ):
        if low <= value < high:
            forms.append(bytes([head]) + struct.pack(fmt, value))
    return rng.choice(forms)


def encode_str(text: str | bytes, rng: random.Random) -> bytes:
    """`text` as fixstr, str8, str16 or str32 (any that holds it), now and then as bin."""
    data = text.encode() if isinstance(text, str) else text
    size = len(data)
    forms = [b"\xdb" + struct.pack(">I", size) + data]
    if size < 32:
        forms.append(bytes([0xA0 | size]) + data)
    if size < 2**8:
        forms.append(b"\xd9" + bytes([size]) + data)
        if rng.random() < 0.05:
            forms.append(b"\xc4" + bytes([size]) + data)
    if size < 2**16:
        forms.append(b"\xda" + struct.pack(">H", size) + data)
    return rng.choice(forms)


def encode_value(value: Any, rng: random.Random) -> bytes:
    if value is None or type(value) is bool:
        return {None: b"\xc0", False: b"\xc2", True: b"\xc3"}[value]
    if type(value) is int:
        return encode_int(value, rng)
    if type(value) is float:
        finite32 = abs(value) < 3e38 or not math.isfinite(value)
        as_float32 = struct.pack(">f", value) if finite32 else b""
        if as_float32 and (struct.unpack(">f", as_float32)[0] == value or rng.random() < 0.1):
            return rng.choice([b"\xcb" + struct.pack(">d", value), b"\xca" + as_float32])
        return b"\xcb" + struct.pack(">d", value)
    return encode_str(value, rng)


def encode_map(items: list[tuple[str | bytes, Any]], rng: random.Random) -> bytes:
    size = len(items)
    heads = [b"\xde" + struct.pack(">H", size)] * 3 + [b"\xdf" + struct.pack(">I", size)]
    if size < 16:
        heads += [bytes([0x80 | size])] * 6
    return rng.choice(heads) + b"".join(
        encode_str(key, rng) + encode_value(value, rng) for key, value in items
    )


def odd_price(rng: random.Random) -> Any:
    """Prices around what is exact and what is not: boundaries, halves, float32s, ints."""
    units = rng.choice([rng.randrange(1, 10**12 + 1), rng.randrange(1, 10**7)])
    exact = units / 10**6
    if rng.random() < 0.5:
        return rng.choice([exact, rng.randrange(1, 10**6 + 1), rng.randrange(1, 10**5) / 100])
    return rng.choice([
        exact, math.nextafter(exact, 0), math.nextafter(exact, math.inf), (units + 0.5) / 10**6,
        struct.unpack(">f", struct.pack(">f", exact))[0], rng.randrange(1, 10**6 + 2),
        1e6, math.nextafter(1e6, math.inf), 5e-7, 1e-6, 0.0, -0.0, -1.0, math.inf, math.nan,
        2**63, -5, 10**6 + 1, rng.randrange(1, 10**5) / 100, rng.randrange(1, 10**5) / 100,
    ])


def odd_fill(rng: random.Random, source: str, seq: int) -> bytes:
    """A fill with its fields encoded any which way, and now and then a field that is
    wrong, missing, repeated, extra, a key that is a prefix of a field's name, NUL bytes,
    bytes that are not UTF-8, a truncation or trailing bytes."""
    items: list[tuple[str | bytes, Any]] = [
        ("type", "fill"),
        ("source", source),
        ("seq", seq),
        ("ticker", rng.choice(TICKERS)),
        ("price", odd_price(rng)),
        ("quantity", rng.choice([rng.randrange(1, 400)] * 6 + [127, 128, 255, 256, 0, -3, 7.0])),
    ]
    side = rng.choice([None, None, "buy", "sell", "sell"])
    if side is not None:
        items.append(("side", side))
    roll = rng.random()
    if roll < 0.03:
        items[0] = ("type", rng.choice(["Fill", "fil", "fill\x00", b"fill", "split"]))
    elif roll < 0.06:
        ticker = rng.choice(["aapl", "AAPL\x00", "AAP", "AAPLX", "", b"AAPL", b"\xff\xfe"])
        items[3] = ("ticker", ticker)
    elif roll < 0.09:
        extra = [("note", 1), ("typ", "x"), ("", 1), ("seq", seq), ("side", "buy")]
        items.append(rng.choice(extra))
    elif roll < 0.12:
        name = rng.choice(["", "x" * 129, "a\x00b", b"desk", b"\xc3\xa9", "\u00e9", b"\xff"])
        items[1] = ("source", name)
    elif roll < 0.14:
        items[2] = ("seq", rng.choice([0, -1, MAX_SEQ + 1, 2**64 - 1, 1.0, True]))
    elif roll < 0.16:
        del items[rng.randrange(len(items))]
    elif roll < 0.18:
        key = rng.choice(["Type", "sourc", "seqq", "tick", "pric", "quantit", "sid", "s\x00eq"])
        items[rng.randrange(len(items))] = (key, 1)
    if rng.random() < 0.3:
        rng.shuffle(items)
    raw = encode_map(items, rng)
    roll = rng.random()
    if roll < 0.03:
        return raw[: rng.randrange(len(raw))]
    if roll < 0.05:
        return raw + rng.choice([b"\xc0", b"\x00", b"\x90"])
    if roll < 0.08:
        flipped = bytearray(raw)
        flipped[rng.randrange(len(raw))] = rng.randrange(256)
        return bytes(flipped)
    return raw


@pytest.mark.parametrize("seed", range(12))
def test_fills_in_every_encoding_agree(tmp_path, seed):
    rng = random.Random(seed)
    pair = EnginePair(tmp_path)
    names = [f"a{i}" for i in range(rng.randrange(1, 8))] + ["Zo\u00eb", "b" * 40]
    pair.receive(split_raw(1, names, rng))
    sources = ["d1", "d2", "x" * MAX_NAME_LENGTH, "n\x00l"]
    applied = pair.engines[0].sequencer.last_seq
    for count in range(250):
        source = rng.choice(sources)
        last = applied.get(source, 0)  # an unreadable message uses up no seq
        seq = last + 1 if rng.random() > 0.05 else rng.randrange(1, last + 3)
        pair.receive(odd_fill(rng, source, seq))
        if count % 25 == 0:
            pair.compare()
    pair.compare()
    assert pair.handled > 20  # not a vacuous comparison


def test_declined_messages_change_nothing(tmp_path):
    """Whatever the compiled path declines leaves the engine exactly as it was."""
    rng = random.Random(99)
    engine = Engine(
        Book(TICKERS),
        JournalWriter(tmp_path / "j", "interval", 3600.0, preallocate=PAGE),
        compiled=True,
    )
    fast = engine.fast
    assert fast is not None and engine.journal is not None
    engine.receive(split_raw(1, ["a", "b", "c"], rng))
    seqs = {"d1": 0, "d2": 0}
    declined = 0
    for _ in range(1500):
        source = rng.choice(list(seqs))
        raw = odd_fill(rng, source, seqs[source] + rng.choice([1, 1, 1, 0, 2]))
        before = (
            engine.book.to_state(),
            bytes(engine.journal.pending_records),
            len(engine._outbox),
            dict(engine.sequencer.last_seq),
            set(engine._touched),
        )
        if fast.receive(raw):
            seqs[source] = engine.sequencer.last_seq.get(source, 0)
            continue
        declined += 1
        after = (
            engine.book.to_state(),
            bytes(engine.journal.pending_records),
            len(engine._outbox),
            dict(engine.sequencer.last_seq),
            set(engine._touched),
        )
        assert after == before, raw.hex()
        engine.receive(raw)  # the Python path then does what it does
        seqs[source] = engine.sequencer.last_seq.get(source, 0)
        if rng.random() < 0.05:
            engine.commit()
    assert declined > 300 and fast.counts()["handled"] > 50


def test_prices_at_rounding_boundaries_are_taken_exactly_as_validated():
    """Each float price the compiled path takes is the micro-units common.protocol reads,
    and each it declines the Python path rejects: 40,000 prices at decimal boundaries, at
    their halves, one ulp either side, as float32."""
    rng = random.Random(5)
    engine = Engine(Book(TICKERS), None, compiled=True)
    fast = engine.fast
    assert fast is not None
    engine.receive(pack(split_message("aum", 1, {"a": 100.0})))
    prices = [1e6, math.nextafter(1e6, 0), math.nextafter(1e6, math.inf), 5e-7, 1e-6, 1.5e-6]
    for _ in range(5_000):
        units = rng.choice([rng.randrange(1, 10**12 + 1), rng.randrange(1, 10**7)])
        exact, half = units / 10**6, (units + 0.5) / 10**6
        prices += [exact, math.nextafter(exact, 0), math.nextafter(exact, math.inf), half]
        prices += [math.nextafter(half, 0), math.nextafter(half, math.inf)]
        prices += [struct.unpack(">f", struct.pack(">f", exact))[0]]
    for seq, price in enumerate(prices, 1):
        try:
            expected: int | None = price_units(price)
        except Invalid:
            expected = None
        raw = pack(fill_message("d", seq, "AAPL", price, 1))
        taken = fast.receive(raw)
        if not taken:
            engine.receive(raw)
        assert taken == (expected is not None), repr(price)
        if taken:
            assert engine.book.last_price["AAPL"] == expected, repr(price)


def test_seqs_at_the_int64_edge(tmp_path):
    for last in (MAX_SEQ - 2, MAX_SEQ - 1, MAX_SEQ):
        pair = EnginePair(tmp_path / str(last))
        for engine in pair.engines:
            engine.sequencer.last_seq["d"] = last
        pair.receive(pack(split_message("aum", 1, {"a": 100.0})))
        for seq in (MAX_SEQ - 1, MAX_SEQ, 1, MAX_SEQ):
            pair.receive(pack(fill_message("d", seq, "AAPL", 1.0, 1)))
        pair.receive(encode_map([("type", "fill"), ("source", "d"), ("seq", 2**64 - 1),
                                 ("ticker", "AAPL"), ("price", 1.0), ("quantity", 1)],
                                random.Random(1)))
        pair.compare()
        assert pair.handled == MAX_SEQ - last  # the ones that were next


def test_book_numbers_at_the_int64_edge(tmp_path):
    """Values and holdings a unit from int64's ends: what fits is taken, what would not
    fit goes to the Python path's big integers, and both agree throughout."""
    book = Book(TICKERS)
    book.apply(build_split("aum", 1, {"a": 50.0, "b": 50.0}))
    handled = 0
    cases = [(INT64_MAX - 10, 0), (INT64_MAX, INT64_MAX), (-INT64_MAX + 5, 7), (-INT64_MAX - 1, 0)]
    for number, (value_a, value_b) in enumerate(cases):
        for held_a, held_b in [(0, 0), (INT64_MAX - 3, 0), (INT64_MAX // 2, INT64_MAX // 2 + 1)]:
            state = book.to_state()
            state["values"] = [str(value_a), str(value_b)]
            state["positions"] = [{"AAPL": n} if n else {} for n in (held_a, held_b)]
            directory = tmp_path / f"{number}-{held_a}-{held_b}"
            directory.mkdir()
            pair = EnginePair(directory, (Book.from_state(state), Book.from_state(state)))
            fills = [
                (0.00001, 1, None), (0.000001, 1, None), (1.0, 2, None), (0.000001, 3, "sell"),
                (1e6, 1, "sell"), (0.000001, MAX_QUANTITY, None), (0.000001, 8, "sell"),
            ]
            for seq, (price, quantity, side) in enumerate(fills, 1):
                pair.receive(pack(fill_message("d", seq, "AAPL", price, quantity, side)))
                pair.compare()
            handled += pair.handled
    assert handled > 10


@pytest.mark.parametrize("seed", range(6))
def test_splits_that_drop_accounts_sells_that_empty_them_and_reads_between(tmp_path, seed):
    """Small holdings, so sells empty accounts exactly and splits drop accounts left with
    nothing; duplicates and gaps interleaved; the book read (flushed) at random points,
    within a batch too, and a tool applying to it through the engine between fills."""
    rng = random.Random(seed)
    pair = EnginePair(tmp_path)
    pool = [f"a{i}" for i in range(8)] + ["Zo\u00eb", "b" * 40, "c\x00d"]
    seqs = {"aum": 1, "d1": 0, "d2": 0}
    pair.receive(split_raw(1, rng.sample(pool, 3), rng))
    late: list[bytes] = []
    for count in range(400):
        if rng.random() < 0.05:
            seqs["aum"] += 1
            raw = split_raw(seqs["aum"], rng.sample(pool, rng.randrange(1, 5)), rng)
        else:
            source = rng.choice(["d1", "d2"])
            seqs[source] += 1
            price = rng.choice([1.0, 1.0, 2.5, 0.000001, 999_999.999999, 7])
            side = rng.choice([None, "sell", "sell"])
            raw = pack(fill_message(source, seqs[source], rng.choice(TICKERS[:2]), price,
                                    rng.choice([1, 1, 2, 3, 5, 10]), side))
            if rng.random() < 0.05:
                late.append(raw)  # a gap: sent later
                continue
            if rng.random() < 0.05:
                pair.receive(raw)  # and a duplicate of it below
        pair.receive(raw)
        if late and rng.random() < 0.15:
            pair.receive(late.pop(rng.randrange(len(late))))
        if rng.random() < 0.1:
            for engine in pair.engines:
                assert engine.book.fills_allocated >= 0  # a read: the compiled one flushes
        if rng.random() < 0.03:
            for engine in pair.engines:
                engine.book.apply(Fill("tool", count + 1, "MSFT", 1_000_000, 3))
        if rng.random() < 0.1:
            pair.compare()
    for raw in late:
        pair.receive(raw)
    pair.compare()
    assert pair.handled > 100


def test_curve_refusals_agree(tmp_path):
    """A key refused for a source: the compiled path declines it and the Python path
    refuses it, without identity, as before."""

    def authorize(sender: str | None, kind: str, source: str) -> str | None:
        if sender == "intruder" and source == "d1":
            return "key intruder may not send for d1"
        return None

    rng = random.Random(4)
    pair = EnginePair(tmp_path, authorize=authorize)
    pair.receive(pack(split_message("aum", 1, {"a": 50.0, "b": 50.0})), "aum")
    seqs = {"d1": 0, "d2": 0}
    for count in range(300):
        source, sender = rng.choice(["d1", "d2"]), rng.choice(["desk", "intruder", None])
        seq = seqs[source] + 1 if rng.random() < 0.9 else rng.randrange(1, seqs[source] + 3)
        side = rng.choice([None, "sell"])
        pair.receive(pack(fill_message(source, seq, "AAPL", 1.5, rng.randrange(1, 20), side)),
                     sender)
        if not (sender == "intruder" and source == "d1") and seq == seqs[source] + 1:
            seqs[source] = seq
        if count % 10 == 0:
            pair.compare()
    pair.compare()
    assert pair.engines[1].refused > 20 and pair.handled > 100


def test_engines_with_a_compiled_path_are_collected():
    """The engine and its compiled path refer to each other: the collector frees both."""
    refs = []
    for _ in range(50):
        engine = Engine(Book(TICKERS), None, compiled=True)
        engine.receive(pack(split_message("aum", 1, {"a": 100.0})))
        engine.receive(pack(fill_message("d", 1, "AAPL", 1.5, 3)))
        refs.append(weakref.ref(engine))
        del engine
    import gc

    gc.collect()
    assert not any(ref() is not None for ref in refs)


# -- breaks found: each reproduces one, marked until it is fixed ---------------------------
def test_snapshot_bytes_agree_when_fills_price_tickers_out_of_order(tmp_path):
    pair = EnginePair(tmp_path)
    pair.receive(pack(split_message("aum", 1, {"a": 60.0, "b": 40.0})))
    pair.receive(pack(fill_message("d", 1, "MSFT", 10.0, 5)))
    pair.receive(pack(fill_message("d", 2, "AAPL", 10.0, 5)))
    pair.compare()  # holds: dicts compare equal in any order
    python, compiled = (build_snapshot(engine.book).frames() for engine in pair.engines)
    assert compiled == python


def test_positions_keep_the_python_key_order_after_a_sell_out_and_rebuy(tmp_path):
    pair = EnginePair(tmp_path)
    pair.receive(pack(split_message("aum", 1, {"a": 100.0})))
    pair.receive(pack(fill_message("d", 1, "AAPL", 10.0, 5)))
    pair.receive(pack(fill_message("d", 2, "MSFT", 10.0, 5)))
    pair.compare()
    pair.receive(pack(fill_message("d", 3, "AAPL", 10.0, 5, "sell")))
    pair.receive(pack(fill_message("d", 4, "AAPL", 10.0, 5)))
    pair.compare()
    python, compiled = ([list(held) for held in engine.book.positions] for engine in pair.engines)
    assert compiled == python


def test_a_flush_never_overwrites_an_apply_it_did_not_see(tmp_path):
    pair = EnginePair(tmp_path)
    pair.receive(pack(split_message("aum", 1, {"a": 50.0, "b": 50.0})))
    held = [engine.book for engine in pair.engines]  # kept across fills: the hazard
    for seq in range(1, 4):
        pair.receive(pack(fill_message("d", seq, "AAPL", 2.0, 3)))
    for book in held:
        book.apply(Fill("tool", 1, "AAPL", 1_000_000, 7))
    reference, fast = pair.engines
    try:
        compiled_state = fast.book.to_state()
    except RuntimeError:
        return  # refusing to write back over a change it did not see is also right
    assert compiled_state == reference.book.to_state()


class HeldJournal(JournalWriter):
    """A journal whose data syncs (on the sync thread) wait for the test, and may fail."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.release = threading.Semaphore(0)
        self.started = threading.Semaphore(0)
        self.fail_next = False

    def sync_data(self) -> None:
        self.started.release()
        self.release.acquire()
        if self.fail_next:
            raise OSError(5, "Input/output error")
        super().sync_data()


def test_acks_sent_with_a_worker_snapshot_are_durable(ctx, tmp_path):
    journal = HeldJournal(tmp_path / "journal")
    engine = Engine(Book(DEFAULT_TICKERS), journal, compiled=True)
    clock = FakeClock()
    service = ControllerService(
        ctx, engine, "inproc://adv-in", "inproc://adv-out", snapshot_interval=10.0,
        clock=clock, sync_thread=True, snapshot_worker=True,
    )
    assert service.worker is not None and service.syncer is not None
    gate = threading.Event()

    def gated(state: Any) -> list[bytes]:
        gate.wait(10)
        return build(state).frames()

    service.worker.close()
    service.worker = worker = SnapshotWorker(5.0, make=gated)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(service.publish)
    push = ctx.socket(zmq.PUSH)
    push.connect(service.inputs)
    try:
        gate.set()

        def joined() -> bool:
            service.publish_snapshot()
            return any(topic == TOPIC_POSITIONS for topic, _ in collect(sub, 10))

        wait_for(joined, 10, "the subscriber to join")
        collect(sub)
        gate.clear()
        clock.advance(10.0)
        service.step(0)  # the snapshot comes due: captured (all durable), being built
        assert worker.busy
        push.send(pack(fill_message("desk", 1, "AAPL", 100.0, 10)))
        wait_for(lambda: service.step(10) is not None and service.syncer.busy, 10, "a sync")
        assert journal.started.acquire(timeout=10)  # desk#1 written, its sync held
        gate.set()
        assert worker.wait(10)
        service.step(0)  # sends the built snapshot, and acks with it
        acks = [(b["source"], b["seq"]) for t, b in collect(sub, 100) if t.startswith(TOPIC_ACK)]
        assert ("desk", 1) not in acks  # not durable yet: its sync has not ended
    finally:
        journal.release.release(100)
        gate.set()
        service.close()
        sub.close()
        push.close()


def test_a_failed_thread_sync_is_cut_off_even_after_a_preallocation(ctx, tmp_path):
    journal = HeldJournal(tmp_path / "journal", preallocate=PAGE)
    syncer = Syncer(ctx, journal)
    try:
        durable = journal.synced_offset
        journal.append(["R", "desk", 1, "first"])
        assert syncer.submit(journal.write(), ["first"]) == []
        assert journal.started.acquire(timeout=10)
        journal.fail_next = True
        journal.release.release()
        assert syncer.socket.poll(10_000)  # the sync failed; the loop has not looked yet
        journal.append(["R", "desk", 2, "x" * PAGE])  # the next batch needs more room
        assert syncer.submit(journal.write(), ["second"]) == []
        with pytest.raises(JournalFailed):
            syncer.collect()
        assert journal.path.stat().st_size == durable
    finally:
        journal.release.release(100)
        syncer.close()
