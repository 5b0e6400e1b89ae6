"""The engine's compiled path against the pure Python engine, the reference: the same random
streams of raw messages (buys, sells, splits that add and drop accounts, duplicates, gaps,
odd encodings, invalid fields, over-sells, numbers beyond int64) through both, and the same
journal bytes, the same published frames, the same books and sequencers after every batch.

Skipped when the extension is not built, unless FILLALLOC_EXPECT_NATIVE=1 (CI), where a
missing extension fails."""

from __future__ import annotations

import random
import struct

import msgpack
from engine_pair import TICKERS, EnginePair
from helpers import require_compiled
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.protocol import (
    fill_message,
    pack,
    split_message,
)
from controller import native
from controller.book import MARKET

require_compiled(native.hotpath, "the compiled hot path")

ASCII_NAMES = [f"acct-{i:03d}" for i in range(40)]
ODD_NAMES = ["Zoë", "账户-7", "a" * 31, "b" * 32, "c" * 100, "[bold]x[/]"]
SOURCES = ["desk-1", "desk-2", "désk-3"]  # the last is not ASCII: always the Python path


def percents(rng: random.Random, names: list[str]) -> dict[str, float]:
    """A split summing to exactly 100 in hundredths, some accounts at 0."""
    cents = [rng.choice([0, 1, 5, 50, 100, 333, 1000]) for _ in names]
    if not any(cents):
        cents[0] = 1
    total = sum(cents)
    scaled = [c * 10_000 // total for c in cents]
    scaled[0] += 10_000 - sum(scaled)
    return {name: s / 100 for name, s in zip(names, scaled, strict=True)}


def odd_encoding(body: dict, rng: random.Random) -> bytes:
    """The same fill as another sender might encode it: reordered keys, wide ints, float32
    prices, a map16 header, an extra field, a repeated key, bin keys or trailing bytes."""
    choice = rng.randrange(8)
    if choice == 0:
        items = list(body.items())
        rng.shuffle(items)
        return pack(dict(items))
    quantity = body["quantity"]
    if choice == 1 and type(quantity) is int and abs(quantity) < 2**31:
        # seq as a uint64, quantity as an int32: still valid
        head = pack({k: v for k, v in body.items() if k not in ("seq", "quantity")})
        count = len(body)
        tail = b"\xa3seq\xcf" + struct.pack(">Q", body["seq"])
        tail += b"\xa8quantity\xd2" + struct.pack(">i", body["quantity"])
        return bytes([0x80 | count]) + head[1:] + tail
    if choice == 2:  # a float32 price: valid only when it is exactly a 6-decimal price
        packer = msgpack.Packer(use_single_float=True, use_bin_type=True)
        return packer.pack(body)
    if choice == 3:  # a map16 header
        raw = pack(body)
        return b"\xde" + struct.pack(">H", len(body)) + raw[1:]
    if choice == 4:
        return pack(dict(body, note="hello"))
    if choice == 5:  # "seq" twice: msgpack keeps the last
        raw = pack(body)
        extra = b"\xa3seq" + pack(body["seq"] + rng.choice([0, 1]))
        return bytes([raw[0] + 1]) + raw[1:] + extra
    if choice == 6:
        return msgpack.packb(body, use_bin_type=False)  # str keys as raw: still str
    return pack(body) + b"\xc0"  # trailing bytes


def fill_raw(rng: random.Random, source: str, seq: int) -> bytes:
    """A fill, mostly well formed, sometimes not."""
    ticker = rng.choice(TICKERS)
    price = rng.choice(
        [rng.randrange(1, 50_000) / 100, rng.randrange(1, 3), 123.456789, 0.000001, 1e6]
    )
    quantity = rng.choice([rng.randrange(1, 300), rng.randrange(1, 5), 10**rng.randrange(1, 7)])
    side = rng.choice([None, None, "buy", "sell", "sell"])
    body = fill_message(source, seq, ticker, price, quantity, side)
    roll = rng.random()
    if roll < 0.04:
        body["price"] = rng.choice([-1.0, 0, 10.0000001, 2e6, float("nan"), "12"])
    elif roll < 0.06:
        body["quantity"] = rng.choice([0, -5, 1.5, 100.0, 10**11, True])
    elif roll < 0.08:
        body["side"] = rng.choice(["SELL", "", 1, None])
    elif roll < 0.10:
        body["ticker"] = rng.choice(["ZZZZ", "aapl", b"AAPL"])
    elif roll < 0.11:
        body["quantity"] = 10**10  # the most a fill may carry: beyond int64 book values
        body["price"] = 999_999.0
    if rng.random() < 0.12:
        return odd_encoding(body, rng)
    return pack(body)


def run_stream(pair: EnginePair, rng: random.Random, messages: int, names: list[str]) -> None:
    seqs = dict.fromkeys([*SOURCES, "aum"], 0)
    delayed: list[bytes] = []
    for count in range(messages):
        if rng.random() < 0.04 or count == 1:
            seqs["aum"] += 1
            chosen = rng.sample(names, rng.randrange(1, len(names) + 1))
            pair.receive(pack(split_message("aum", seqs["aum"], percents(rng, chosen))))
        else:
            source = rng.choices(SOURCES, weights=[10, 5, 1])[0]
            roll = rng.random()
            if roll < 0.03 and seqs[source]:  # a duplicate
                pair.receive(fill_raw(rng, source, rng.randrange(1, seqs[source] + 1)))
            elif roll < 0.05:  # a gap: this one arrives later
                seqs[source] += 1
                delayed.append(fill_raw(rng, source, seqs[source]))
            else:
                seqs[source] += 1
                pair.receive(fill_raw(rng, source, seqs[source]))
        if delayed and rng.random() < 0.1:
            pair.receive(delayed.pop(0))
        if rng.random() < 0.05:
            pair.receive(bytes(rng.randrange(256) for _ in range(rng.randrange(12))))
        if rng.random() < 0.15:
            pair.compare()
    for raw in delayed:
        pair.receive(raw)
    pair.compare()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(seed=st.integers(0, 2**32 - 1))
def test_random_streams_give_the_same_journal_events_and_book(tmp_path_factory, seed):
    rng = random.Random(seed)
    names = rng.sample(ASCII_NAMES, rng.randrange(1, 15)) + rng.sample(ODD_NAMES, 2)
    pair = EnginePair(tmp_path_factory.mktemp("pair"))
    run_stream(pair, rng, 400, names)


def test_the_compiled_path_takes_the_common_case(tmp_path):
    """Not a vacuous comparison: plain fills really go through the compiled path."""
    pair = EnginePair(tmp_path)
    pair.receive(pack(split_message("aum", 1, {"a": 60.0, "b": 40.0})))
    for seq in range(1, 201):
        side = "sell" if seq % 3 == 0 else None
        pair.receive(pack(fill_message("desk-1", seq, "AAPL", 10.25, 7, side)))
    pair.compare()
    assert pair.handled == 200


def test_a_large_book_with_many_recipients(tmp_path):
    rng = random.Random(7)
    names = [f"acct-{i:05d}" for i in range(3_000)]
    pair = EnginePair(tmp_path)
    pair.receive(pack(split_message("aum", 1, percents(rng, names))))
    for seq in range(1, 301):
        quantity = rng.choice([1, 100, 2_500, 40_000])
        side = "sell" if seq % 4 == 0 else None
        price = rng.randrange(100, 90_000) / 100
        pair.receive(pack(fill_message("desk-1", seq, rng.choice(TICKERS), price, quantity, side)))
        if seq % 50 == 0:
            pair.compare()
    assert pair.handled > 250


def test_market_valuation_stays_on_the_python_path(tmp_path):
    rng = random.Random(3)
    pair = EnginePair(tmp_path, valuation=MARKET)
    run_stream(pair, rng, 200, ASCII_NAMES[:6])
    assert pair.handled == 0


def test_values_beyond_int64_fall_back_and_still_agree(tmp_path):
    pair = EnginePair(tmp_path)
    pair.receive(pack(split_message("aum", 1, {"a": 50.0, "b": 50.0})))
    pair.receive(pack(fill_message("desk-1", 1, "AAPL", 999_999.0, 10**10)))  # ~1e22 units
    for seq in range(2, 40):
        side = "sell" if seq % 2 else None
        pair.receive(pack(fill_message("desk-1", seq, "MSFT", 12.5, 3, side)))
    pair.compare()
    assert pair.handled == 0
