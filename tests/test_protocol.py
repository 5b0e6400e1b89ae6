"""Tests for common.protocol.validate: every validation rule, and the valid shapes."""

from __future__ import annotations

import math
import re
from fractions import Fraction
from pathlib import Path

import msgpack
import pytest
from helpers import ROOT, meant
from hypothesis import given, settings
from hypothesis import strategies as st

from common.protocol import (
    DEFAULT_TICKERS,
    FILL,
    MAX_ACCOUNTS,
    MAX_MESSAGE_BYTES,
    MAX_NAME_LENGTH,
    MAX_PRICE,
    MAX_QUANTITY,
    MAX_SEQ,
    PRICE_DECIMALS,
    PRICE_SCALE,
    SPLIT,
    SPLIT_TOLERANCE,
    Fill,
    Invalid,
    Split,
    build_split,
    fill_message,
    pack,
    split_message,
    unpack,
    validate,
)

TICKERS = frozenset(DEFAULT_TICKERS)
SOURCE = "fillsim-1"
SEQ = 42


def fill_body(**overrides) -> dict:
    body = fill_message(SOURCE, SEQ, "AAPL", 101.23, 500)
    body.update(overrides)
    return body


def split_body(splits) -> dict:
    return split_message(SOURCE, SEQ, splits)


def without(body: dict, field: str) -> dict:
    return {k: v for k, v in body.items() if k != field}


def rejected(raw: bytes, reason: str) -> Invalid:
    """Decode, expecting a Invalid whose reason is exactly `reason`."""
    with pytest.raises(Invalid) as info:
        validate(raw, TICKERS)
    assert info.value.reason == reason
    assert str(info.value) == reason
    return info.value


def rejected_with_identity(body: dict, reason: str) -> Invalid:
    """A body whose source and seq are valid: the Invalid must carry both."""
    rejection = rejected(pack(body), reason)
    assert rejection.source == SOURCE
    assert rejection.seq == SEQ
    return rejection


# -- unreadable messages: no identity --------------------------------------------------


def test_rejection_is_a_value_error():
    assert issubclass(Invalid, ValueError)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xc1", "not valid msgpack: it uses a reserved type byte (0xc1)"),
        (b"", "not valid msgpack: the message is empty"),
        (b"\x92\x01", "not valid msgpack: the message ends in the middle of an object"),
        (
            pack({"type": FILL}) + b"\x00",
            "not valid msgpack: there are bytes after the first object (one map per message)",
        ),
        (
            b"\x81\xa4type\xa2\xff\xfe",
            "not valid msgpack: a str holds bytes that are not UTF-8 text",
        ),
    ],
    ids=["reserved-byte", "empty", "truncated", "trailing-data", "str-not-utf8"],
)
def test_not_msgpack(raw, reason):
    rejection = rejected(raw, reason)
    assert (rejection.source, rejection.seq) == (None, None)


@pytest.mark.parametrize(
    ("key", "kind"),
    [(1, "an integer"), (1.5, "a float"), (None, "nil"), ((1, 2), "an array")],
)
def test_non_string_map_keys_are_not_valid_msgpack_input(key, kind):
    reason = f"not valid msgpack: map keys must be strings (str or bin), one is {kind}"
    rejection = rejected(pack({key: "fill"}), reason)
    assert (rejection.source, rejection.seq) == (None, None)
    # A nested map counts too: the whole message is unreadable.
    rejected(pack(split_body({"a": 50}) | {"splits": {key: 100}}), reason)


@pytest.mark.parametrize(
    ("body", "kind"),
    [([1, 2, 3], "an array of 3 items"), ("fill", "'fill'"), (7, "7"), (None, "nil")],
)
def test_not_a_map(body, kind):
    rejection = rejected(pack(body), f"message must be a msgpack map, got {kind}")
    assert (rejection.source, rejection.seq) == (None, None)


def test_oversize_message():
    raw = b"\x00" * (MAX_MESSAGE_BYTES + 1)
    rejection = rejected(
        raw,
        f"message is {MAX_MESSAGE_BYTES + 1:,} bytes, over the {MAX_MESSAGE_BYTES:,}-byte limit",
    )
    assert (rejection.source, rejection.seq) == (None, None)


def test_oversize_valid_msgpack_is_rejected_with_its_identity():
    body = fill_body(padding="x" * MAX_MESSAGE_BYTES)
    raw = pack(body)
    assert len(raw) > MAX_MESSAGE_BYTES
    rejection = rejected(
        raw, f"message is {len(raw):,} bytes, over the {MAX_MESSAGE_BYTES:,}-byte limit"
    )
    # Its seq is consumed, so the sender's later messages are not held up behind it.
    assert (rejection.source, rejection.seq) == (body["source"], body["seq"])


def test_message_at_the_size_limit_is_accepted():
    body = fill_body(padding="")
    padding = MAX_MESSAGE_BYTES - len(pack(body)) - 2  # str8 -> str16 header grows by 2
    body["padding"] = "x" * padding
    raw = pack(body)
    assert len(raw) == MAX_MESSAGE_BYTES
    assert isinstance(validate(raw, TICKERS), Fill)


# -- identity: source and seq ----------------------------------------------------------


def test_missing_source():
    rejection = rejected(pack(without(fill_body(), "source")), "missing field 'source'")
    assert (rejection.source, rejection.seq) == (None, None)


def test_missing_seq_carries_the_source():
    rejection = rejected(pack(without(fill_body(), "seq")), "missing field 'seq'")
    assert (rejection.source, rejection.seq) == (SOURCE, None)


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("", "source must be a non-empty string, got an empty string"),
        (17, "source must be a non-empty string, got 17"),
        (None, "source must be a non-empty string, got nil"),
        (
            b"\xff",
            "source must be a non-empty string, got bin data that is not UTF-8 text (1 byte)",
        ),
        (["a"], "source must be a non-empty string, got an array of 1 item"),
        (
            "s" * (MAX_NAME_LENGTH + 1),
            f"source is {MAX_NAME_LENGTH + 1} characters, over the {MAX_NAME_LENGTH} limit",
        ),
    ],
    ids=["empty", "int", "nil", "bin-not-utf8", "list", "too-long"],
)
def test_bad_source(source, reason):
    rejection = rejected(pack(fill_body(source=source)), reason)
    assert (rejection.source, rejection.seq) == (None, None)


def test_source_at_the_length_limit_is_accepted():
    source = "s" * MAX_NAME_LENGTH
    fill = validate(pack(fill_body(source=source)), TICKERS)
    assert fill.source == source


@pytest.mark.parametrize(
    ("seq", "shown"),
    [
        (0, "0"),
        (-1, "-1"),
        (True, "true"),
        (False, "false"),
        ("7", "'7'"),
        (7.0, "the float 7.0"),
        (MAX_SEQ + 1, str(MAX_SEQ + 1)),
        ([1], "an array of 1 item"),
        (None, "nil"),
    ],
    ids=["zero", "negative", "true", "false", "str", "float", "too-big", "list", "nil"],
)
def test_bad_seq_carries_the_source(seq, shown):
    rejection = rejected(
        pack(fill_body(seq=seq)), f"seq must be an integer from 1 to {MAX_SEQ}, got {shown}"
    )
    assert (rejection.source, rejection.seq) == (SOURCE, None)


@pytest.mark.parametrize("seq", [1, MAX_SEQ])
def test_seq_limits_are_accepted(seq):
    assert validate(pack(fill_body(seq=seq)), TICKERS).seq == seq


# -- type --------------------------------------------------------------------------------


def test_missing_type():
    rejected_with_identity(without(fill_body(), "type"), "missing field 'type'")


@pytest.mark.parametrize("kind", ["order", "FILL", ""])
def test_unknown_type(kind):
    rejected_with_identity(
        fill_body(type=kind), f"unknown message type {kind!r} (expected 'fill' or 'split')"
    )


@pytest.mark.parametrize(("kind", "shown"), [(3, "3"), (None, "nil"), (b"\xff", "bin data")])
def test_type_that_is_not_text(kind, shown):
    with pytest.raises(Invalid) as info:
        validate(pack(fill_body(type=kind)), TICKERS)
    assert info.value.reason.startswith(f"type must be the string 'fill' or 'split', got {shown}")
    assert (info.value.source, info.value.seq) == (SOURCE, SEQ)


# -- fills -------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["ticker", "price", "quantity"])
def test_fill_missing_field(field):
    rejected_with_identity(without(fill_body(), field), f"missing field {field!r}")


@pytest.mark.parametrize("ticker", ["IBM", "aapl", "", b"IBM"])
def test_unknown_ticker(ticker):
    text = ticker.decode() if isinstance(ticker, bytes) else ticker
    rejected_with_identity(
        fill_body(ticker=ticker),
        f"unknown ticker {text!r} (not in the universe of {len(TICKERS)})",
    )


@pytest.mark.parametrize(
    ("ticker", "shown"),
    [(None, "nil"), (5, "5"), (["AAPL"], "an array of 1 item"), ({"AAPL": 1}, "a map of 1 entry")],
    ids=["nil", "int", "list", "map"],
)
def test_ticker_that_is_not_text(ticker, shown):
    rejected_with_identity(fill_body(ticker=ticker), f"ticker must be a string, got {shown}")


def test_ticker_universe_is_the_one_passed_in():
    raw = pack(fill_body(ticker="IBM"))
    assert validate(raw, {"IBM"}).ticker == "IBM"
    with pytest.raises(Invalid, match=re.escape("(not in the universe of 1)")):
        validate(pack(fill_body()), {"IBM"})


@pytest.mark.parametrize(
    ("price", "reason"),
    [
        (float("nan"), "price must be a finite number, got nan"),
        (float("inf"), "price must be a finite number, got inf"),
        (float("-inf"), "price must be a finite number, got -inf"),
        (0, "price must be > 0, got 0"),
        (0.0, "price must be > 0, got 0.0"),
        (-0.0, "price must be > 0, got -0.0"),
        (-5, "price must be > 0, got -5"),
        (-1.25, "price must be > 0, got -1.25"),
        (True, "price must be a number, got true"),
        ("101.23", "price must be a number, got '101.23'"),
        (None, "price must be a number, got nil"),
        ([1], "price must be a number, got an array of 1 item"),
        (1.0000001, f"price 1.0000001 has more than {PRICE_DECIMALS} decimal places"),
        (1e-7, f"price 1e-07 has more than {PRICE_DECIMALS} decimal places"),
        (0.1 + 0.2, f"price {0.1 + 0.2!r} has more than {PRICE_DECIMALS} decimal places"),
        (MAX_PRICE + 1, f"price {MAX_PRICE + 1} is over the {MAX_PRICE:,} limit per share"),
        (
            MAX_PRICE + 0.01,
            f"price {MAX_PRICE + 0.01!r} is over the {MAX_PRICE:,} limit per share",
        ),
        (1e12, f"price 1000000000000.0 is over the {MAX_PRICE:,} limit per share"),
    ],
)
def test_bad_price(price, reason):
    rejected_with_identity(fill_body(price=price), reason)


@pytest.mark.parametrize("price", [1e303, 1.7976931348623157e308, -1e303])
def test_huge_finite_price_is_rejected(price):
    reason = (
        f"price {price!r} is over the {MAX_PRICE:,} limit per share"
        if price > 0
        else f"price must be > 0, got {price!r}"
    )
    rejected_with_identity(fill_body(price=price), reason)


@pytest.mark.parametrize(
    ("quantity", "reason"),
    [
        (3.5, "quantity must be a whole number of shares, got the float 3.5"),
        (float("nan"), "quantity must be a whole number of shares, got the float nan"),
        (float("inf"), "quantity must be a whole number of shares, got the float inf"),
        (True, "quantity must be a whole number of shares, got true"),
        ("3", "quantity must be a whole number of shares, got '3'"),
        (None, "quantity must be a whole number of shares, got nil"),
        (0.0, "quantity must be > 0, got 0"),
        (-10.0, "quantity must be > 0, got -10"),
        (
            1e11,
            "quantity 100,000,000,000 sent as a float is over 16,777,216, where a 32-bit "
            "float no longer holds every whole number: send an integer",
        ),
        (0, "quantity must be > 0, got 0"),
        (-10, "quantity must be > 0, got -10"),
        (
            MAX_QUANTITY + 1,
            f"quantity {MAX_QUANTITY + 1:,} is over the {MAX_QUANTITY:,} limit per fill",
        ),
    ],
)
def test_bad_quantity(quantity, reason):
    rejected_with_identity(fill_body(quantity=quantity), reason)


def test_valid_fill_with_int_price():
    fill = validate(pack(fill_message(SOURCE, SEQ, "MSFT", 250, 1000)), TICKERS)
    assert fill == Fill(SOURCE, SEQ, "MSFT", 250 * PRICE_SCALE, 1000)
    assert type(fill.price_units) is int
    assert fill.price == 250.0


def test_valid_fill_with_two_decimal_price():
    fill = validate(pack(fill_body(price=101.23)), TICKERS)
    assert fill.price_units == 101_230_000
    assert fill.price == 101.23
    assert fill == Fill(SOURCE, SEQ, "AAPL", 101_230_000, 500)


@pytest.mark.parametrize(
    ("price", "units"),
    [
        (1e-6, 1),
        (0.000001, 1),
        (0.1, 100_000),
        (123.456789, 123_456_789),
        (MAX_PRICE, MAX_PRICE * PRICE_SCALE),
        (float(MAX_PRICE), MAX_PRICE * PRICE_SCALE),
        (999_999.999999, MAX_PRICE * PRICE_SCALE - 1),
    ],
)
def test_price_units_are_exact(price, units):
    assert validate(pack(fill_body(price=price)), TICKERS).price_units == units


def test_quantity_limits_are_accepted():
    assert validate(pack(fill_body(quantity=1)), TICKERS).quantity == 1
    fill = validate(pack(fill_body(quantity=MAX_QUANTITY)), TICKERS)
    assert fill.quantity == MAX_QUANTITY


def test_extra_fields_are_ignored():
    fill = validate(pack(fill_body(note="hello")), TICKERS)
    assert fill == Fill(SOURCE, SEQ, "AAPL", 101_230_000, 500)


@settings(max_examples=200, deadline=None)
@given(
    source=st.text(min_size=1, max_size=MAX_NAME_LENGTH),
    seq=st.integers(1, MAX_SEQ),
    ticker=st.sampled_from(sorted(TICKERS)),
    units=st.integers(1, MAX_PRICE * PRICE_SCALE),
    quantity=st.integers(1, MAX_QUANTITY),
)
def test_fill_round_trip(source, seq, ticker, units, quantity):
    price = units / PRICE_SCALE
    raw = pack(fill_message(source, seq, ticker, price, quantity))
    assert unpack(raw)["type"] == FILL
    fill = validate(raw, TICKERS)
    assert fill == Fill(source, seq, ticker, units, quantity)
    assert fill.price == price


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=1e-6, max_value=MAX_PRICE))
def test_arbitrary_float_prices_are_exact_or_rejected(price):
    raw = pack(fill_body(price=price))
    try:
        fill = validate(raw, TICKERS)
    except Invalid as rejection:
        assert rejection.reason.startswith(
            f"price {price!r} has more than {PRICE_DECIMALS} decimal places"
        )
        assert round(price, PRICE_DECIMALS) != price
    else:
        assert fill.price_units / PRICE_SCALE == price
        assert fill.price == price


# -- splits ------------------------------------------------------------------------------


def test_split_missing_splits():
    rejected_with_identity(without(split_body({"a": 100}), "splits"), "missing field 'splits'")


@pytest.mark.parametrize(
    ("splits", "reason"),
    [
        ({}, "splits is empty: at least one account is needed"),
        ([["a", 100]], "splits must be a map of account to percent, got an array of 1 item"),
        ("a=100", "splits must be a map of account to percent, got 'a=100'"),
        (100, "splits must be a map of account to percent, got 100"),
        (None, "splits must be a map of account to percent, got nil"),
        ({"b": -10, "a": 110}, "percent for account 'b' is negative (-10)"),
        ({"a": 110, "b": -10}, "percent for account 'a' is over 100 (110)"),
        ({"a": 1e303}, "percent for account 'a' is over 100 (1e+303)"),
        ({"b": -0.5, "a": 100.5}, "percent for account 'b' is negative (-0.5)"),
        ({"a": 50, "b": float("nan")}, "percent for account 'b' must be finite, got nan"),
        ({"a": 50, "b": float("inf")}, "percent for account 'b' must be finite, got inf"),
        ({"a": 50, "b": "50"}, "percent for account 'b' must be a number, got '50'"),
        ({"a": 50, "b": None}, "percent for account 'b' must be a number, got nil"),
        ({"a": 99, "b": True}, "percent for account 'b' must be a number, got true"),
        ({"a": 50, "b": 49}, f"percentages sum to 99, not 100 (tolerance {SPLIT_TOLERANCE})"),
        (
            {"a": 50, "b": 50.02},
            f"percentages sum to 100.02, not 100 (tolerance {SPLIT_TOLERANCE})",
        ),
        ({"a": 60, "b": 60}, f"percentages sum to 120, not 100 (tolerance {SPLIT_TOLERANCE})"),
        ({"a": 0, "b": 0.0}, f"percentages sum to 0, not 100 (tolerance {SPLIT_TOLERANCE})"),
        ({"": 100}, "account name must be a non-empty string, got an empty string"),
        (
            {"a": 50, b"\xff": 50},
            "account name must be a non-empty string, got bin data that is not UTF-8 text (1 byte)",
        ),
        ({"a": 50, b"a": 50}, "account 'a' appears twice in splits"),
        (
            {"a" * (MAX_NAME_LENGTH + 1): 100},
            f"account name is {MAX_NAME_LENGTH + 1} characters, over the {MAX_NAME_LENGTH} limit",
        ),
    ],
)
def test_bad_split(splits, reason):
    rejected_with_identity(split_body(splits), reason)


def test_split_account_name_not_a_string_via_build_split():
    # msgpack input only allows str/bytes keys; build_split is also used directly
    with pytest.raises(Invalid, match=re.escape("account name must be a non-empty string, got 7")):
        build_split(SOURCE, SEQ, {7: 100})


def test_split_with_too_many_accounts():
    splits = {f"a{i}": 100 / (MAX_ACCOUNTS + 1) for i in range(MAX_ACCOUNTS + 1)}
    with pytest.raises(Invalid) as info:
        build_split(SOURCE, SEQ, splits)
    assert info.value.reason == (
        f"splits has {MAX_ACCOUNTS + 1} accounts, over the {MAX_ACCOUNTS} limit"
    )


def test_split_is_sorted_by_account_name():
    raw = pack(split_body({"zed": 25, "Alpha": 25.5, "mid": 49.5}))
    split = validate(raw, TICKERS)
    assert isinstance(split, Split)
    assert (split.source, split.seq) == (SOURCE, SEQ)
    assert split.accounts == ("Alpha", "mid", "zed")
    assert split.percents == (25.5, 49.5, 25.0)
    assert all(type(p) is float for p in split.percents)
    assert split.target_percent() == {"Alpha": 25.5, "mid": 49.5, "zed": 25.0}
    # weights are the exact percentages over a common denominator
    assert split.weights == (51, 99, 50)


def test_split_single_account():
    split = validate(pack(split_body({"only": 100})), TICKERS)
    assert split.accounts == ("only",)
    assert split.target_percent() == {"only": 100.0}


def test_split_with_zero_percent_account_is_kept():
    split = validate(pack(split_body({"a": 100, "b": 0})), TICKERS)
    assert split.accounts == ("a", "b")
    assert split.target_percent() == {"a": 100.0, "b": 0.0}


def assert_exactly_normalised(split: Split, splits: dict) -> None:
    """Each weight share is exactly the given percent over the exact given total."""
    total = sum(split.weights)
    exact_total = sum(meant(p) for p in splits.values())
    for account, weight in zip(split.accounts, split.weights, strict=True):
        assert Fraction(weight, total) == meant(splits[account]) / exact_total
    assert math.isclose(sum(split.target_percent().values()), 100, rel_tol=0, abs_tol=1e-9)


def test_split_summing_to_99_995_is_accepted_and_normalised_exactly():
    splits = {"a": 33.33, "b": 33.33, "c": 33.335}
    assert math.isclose(sum(splits.values()), 99.995)
    split = validate(pack(split_body(splits)), TICKERS)
    assert_exactly_normalised(split, splits)


def test_split_of_thirds_at_two_decimals_is_accepted():
    # 33.33 means 33.33: the sum is 99.99, inside the tolerance (its binary value is not).
    splits = {"a": 33.33, "b": 33.33, "c": 33.33}
    split = validate(pack(split_body(splits)), TICKERS)
    assert split.weights == (1, 1, 1)


def test_percent_with_more_decimals_is_used_at_its_exact_value():
    splits = {"a": 100 / 3, "b": 100 / 3, "c": 100 - 200 / 3}
    assert_exactly_normalised(validate(pack(split_body(splits)), TICKERS), splits)


def test_split_50_49_995_is_accepted_and_normalised_exactly():
    splits = {"a": 50, "b": 49.995}
    split = validate(pack(split_body(splits)), TICKERS)
    assert_exactly_normalised(split, splits)


@pytest.mark.parametrize("total", [99.995, 100.005, 99.991, 100.009])
def test_split_inside_tolerance_accepted(total):
    splits = {"a": 50, "b": total - 50}
    assert_exactly_normalised(validate(pack(split_body(splits)), TICKERS), splits)


@pytest.mark.parametrize("total", [99.98, 100.02, 99.9, 100.1])
def test_split_outside_tolerance_rejected(total):
    with pytest.raises(Invalid, match=r"^percentages sum to .*, not 100 \(tolerance"):
        validate(pack(split_body({"a": 50, "b": total - 50})), TICKERS)


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=20),
        st.integers(1, 1000),
        min_size=1,
        max_size=30,
    )
)
def test_split_round_trip_normalises_any_positive_integers(raw):
    total = sum(raw.values())
    splits = {account: 100 * k / total for account, k in raw.items()}
    split = validate(pack(split_message(SOURCE, SEQ, splits)), TICKERS)
    assert unpack(pack(split_message(SOURCE, SEQ, splits)))["type"] == SPLIT
    assert split.accounts == tuple(sorted(raw))
    assert split.percents == tuple(splits[a] for a in split.accounts)
    assert math.isclose(sum(split.target_percent().values()), 100, rel_tol=0, abs_tol=1e-9)


def test_a_split_of_the_most_accounts_with_long_names_is_one_message():
    """The documented account limit fits the split size limit, whatever the names."""
    from common.protocol import MAX_ACCOUNTS, MAX_NAME_LENGTH, MAX_SPLIT_MESSAGE_BYTES

    names = [f"{n:0{MAX_NAME_LENGTH}d}" for n in range(MAX_ACCOUNTS)]
    splits = dict.fromkeys(names, 100 / MAX_ACCOUNTS)
    raw = pack(split_body(splits))
    assert MAX_MESSAGE_BYTES < len(raw) <= MAX_SPLIT_MESSAGE_BYTES
    split = validate(raw, TICKERS)
    assert len(split.accounts) == MAX_ACCOUNTS


def test_a_fill_over_the_fill_limit_is_refused_though_a_split_that_size_is_not():
    big = "x" * (MAX_MESSAGE_BYTES + 10)
    with pytest.raises(Invalid, match=r"over the 65,536-byte limit"):
        validate(pack(fill_body(note=big)), TICKERS)
    with pytest.raises(Invalid, match=r"over the 2,097,152-byte limit") as info:
        validate(pack(split_body({"a": 100}) | {"note": "x" * (3 << 20)}), TICKERS)
    assert info.value.source is None  # too big to be read at all


# -- encodings: what a sender in another language may send (docs/protocol.md) -----------


def packed_bin(body: dict) -> bytes:
    """`body` with every key and every text value sent as msgpack bin, as a sender whose
    strings are bytes (or an old msgpack library) would."""

    def as_bin(value):
        if isinstance(value, str):
            return value.encode()
        if isinstance(value, dict):
            return {as_bin(k): as_bin(v) for k, v in value.items()}
        return value

    return msgpack.packb(as_bin(body), use_bin_type=True)


def test_a_fill_all_in_bin_strings_means_the_same_fill():
    body = fill_body(side="sell")
    assert validate(packed_bin(body), TICKERS) == validate(pack(body), TICKERS)


def test_a_split_all_in_bin_strings_means_the_same_split():
    body = split_body({"acct-a": 60.0, "acct-b": 39.995})
    assert validate(packed_bin(body), TICKERS) == validate(pack(body), TICKERS)


def test_a_bin_source_that_is_utf8_keeps_the_rejections_identity():
    body = fill_body(source="desk-ü".encode(), ticker="IBM")
    rejection = rejected(
        pack(body), f"unknown ticker 'IBM' (not in the universe of {len(TICKERS)})"
    )
    assert (rejection.source, rejection.seq) == ("desk-ü", SEQ)


def test_a_str_key_wins_over_a_bin_key_of_the_same_name():
    body = fill_body() | {b"quantity": 7, b"price": "oops"}
    assert validate(pack(body), TICKERS).quantity == 500
    # ... also when the message is read again for its bin keys (here: a bin ticker key).
    body = without(fill_body(), "ticker") | {b"ticker": "AAPL", b"quantity": 7}
    assert validate(pack(body), TICKERS).quantity == 500


def test_a_bin_side_key_is_not_silently_a_buy():
    assert validate(pack(fill_body() | {b"side": "sell"}), TICKERS).side == "sell"


def test_float32_prices_are_exact_or_rejected_naming_the_cause():
    exact = msgpack.packb(fill_body(price=187.25), use_single_float=True)
    assert validate(exact, TICKERS).price_units == 187_250_000
    inexact = msgpack.packb(fill_body(price=10.01), use_single_float=True)
    rejection = rejected(
        inexact,
        "price 10.010000228881836 has more than 6 decimal places: it is the 32-bit float "
        "nearest 10.01; send prices as 64-bit floats",
    )
    assert (rejection.source, rejection.seq) == (SOURCE, SEQ)


def test_a_sum_of_floats_is_not_rounded_for_the_sender():
    rejected_with_identity(
        fill_body(price=0.1 + 0.2), "price 0.30000000000000004 has more than 6 decimal places"
    )


@pytest.mark.parametrize("quantity", [100.0, 1.0, float(2**24)])
def test_a_whole_float_quantity_is_that_many_shares(quantity):
    fill = validate(pack(fill_body(quantity=quantity)), TICKERS)
    assert fill.quantity == int(quantity) and type(fill.quantity) is int


def map_of(*pairs: tuple[bytes, bytes]) -> bytes:
    """A msgpack map built by hand from already-encoded keys and values."""
    assert len(pairs) < 16
    return bytes([0x80 | len(pairs)]) + b"".join(k + v for k, v in pairs)


def text(value: str) -> bytes:
    return pack(value)


@pytest.mark.parametrize(
    ("seq", "quantity"),
    [
        (b"\x2a", b"\xcd\x01\xf4"),  # fixint, uint16
        (b"\xcc\x2a", b"\xce\x00\x00\x01\xf4"),  # uint8, uint32
        (b"\xd0\x2a", b"\xcf" + (500).to_bytes(8, "big")),  # int8, uint64
        (b"\xd3" + (42).to_bytes(8, "big"), b"\xd2\x00\x00\x01\xf4"),  # int64, int32
    ],
    ids=["fixint", "uint8", "int8", "int64"],
)
def test_every_integer_width_is_accepted(seq, quantity):
    raw = map_of(
        (text("type"), text("fill")),
        (text("source"), text(SOURCE)),
        (text("seq"), seq),
        (text("ticker"), text("AAPL")),
        (text("price"), b"\xd1\x00\xbb"),  # int16 187
        (text("quantity"), quantity),
    )
    assert validate(raw, TICKERS) == Fill(SOURCE, SEQ, "AAPL", 187 * PRICE_SCALE, 500)


def test_a_duplicate_key_takes_its_last_value():
    raw = map_of(
        (text("type"), text("fill")),
        (text("source"), text(SOURCE)),
        (text("seq"), pack(SEQ)),
        (text("ticker"), text("AAPL")),
        (text("price"), pack(10)),
        (text("quantity"), pack(1)),
        (text("quantity"), pack(2)),
    )
    assert validate(raw, TICKERS).quantity == 2


def test_each_percent_means_its_own_decimal_in_a_mixed_split():
    """Rules version 4: 33.3 means 333/10 even beside a percent with more places (here the
    remainder computed in binary, 33.400000000000006); before, all three counted binary."""
    splits = {"a": 33.3, "b": 33.3, "c": 100 - 33.3 - 33.3}
    assert repr(splits["c"]) == "33.400000000000006"
    split = validate(pack(split_body(splits)), TICKERS)
    assert_exactly_normalised(split, splits)
    total = sum(split.weights)
    exact_total = Fraction(666, 10) + Fraction(splits["c"])
    assert Fraction(split.weights[0], total) == Fraction(333, 10) / exact_total
    binary_total = sum(Fraction(p) for p in splits.values())
    assert Fraction(split.weights[0], total) != Fraction(33.3) / binary_total


# -- every reason is a plain sentence that docs/protocol.md lists ------------------------

DOC = ROOT / "docs" / "protocol.md"


def documented_reasons() -> list[re.Pattern[str]]:
    """The reason templates of docs/protocol.md's *Rejection reasons* table, as patterns:
    each `{...}` field stands for any text."""
    section = DOC.read_text().split("### Rejection reasons", 1)[1].split("\n## ", 1)[0]
    patterns = []
    for row in section.splitlines():
        if not row.startswith("|") or row.startswith("|---"):
            continue
        for template in re.findall(r"`([^`]+)`", row.split("|")[2]):
            parts = re.split(r"\{[^}]*\}", template)
            patterns.append(re.compile(".+".join(re.escape(p) for p in parts) + r"\Z", re.S))
    return patterns


#: What Python reprs leave in a sentence once its quoted text (data) is taken out: type
#: names, or the `b` of a bytes literal such as b'raw'.
PYTHON_REPRS = re.compile(
    r"NoneType|<class|\bbool\b|\bdict\b|\blist\b|\btuple\b|Error|\bb(?=\s|$|\))|\bstr\s*$"
)
QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")

# Values that msgpack can carry, in every place a field can take them.
WIRE_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=8)
    | st.binary(max_size=8)
    | st.sampled_from(["fill", "split", "buy", "sell", "AAPL", SOURCE]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
FIELDS = ("type", "source", "seq", "ticker", "price", "quantity", "side", "splits")


@settings(max_examples=400, deadline=None)
@given(
    kind=st.sampled_from(["fill", "split"]),
    changes=st.dictionaries(st.sampled_from(FIELDS), WIRE_VALUES, max_size=3),
    dropped=st.sets(st.sampled_from(FIELDS), max_size=2),
)
def test_every_reason_is_documented_and_plain(kind, changes, dropped):
    base = fill_body() if kind == "fill" else split_body({"a": 60, "b": 40})
    body = {k: v for k, v in (base | changes).items() if k not in dropped}
    try:
        validate(pack(body), TICKERS)
    except Invalid as rejection:
        reason = rejection.reason
        assert any(p.match(reason) for p in documented_reasons()), reason
        assert not PYTHON_REPRS.search(QUOTED.sub("", reason)), reason


def test_every_reason_this_file_expects_is_documented():
    """Every literal reason in this file's tests matches a template of the doc."""
    patterns = documented_reasons()
    source = Path(__file__).read_text()
    literals = re.findall(
        r'"((?:price|quantity|seq|source|account|splits|percent|side|ticker'
        r'|type|message|missing|unknown|not valid)[^"\n]*)"',
        source,
    )
    # (a literal ending in a space is the first half of two adjacent literals)
    checked = [s for s in literals if "{" not in s and len(s) > 20 and not s.endswith(" ")]
    assert len(checked) > 40
    missing = [s for s in checked if not any(p.match(s) for p in patterns)]
    assert missing == []


@pytest.mark.parametrize(
    "raw",
    [b"\xc1", b"", b"\x92\x01", b"\x81\x01\x01", pack([1]), b"\xa2\xff\xfe", b"\x91" * 5000],
)
def test_unreadable_reasons_are_documented(raw):
    with pytest.raises(Invalid) as info:
        validate(raw, TICKERS)
    reason = info.value.reason
    assert any(p.match(reason) for p in documented_reasons()), reason
    assert not PYTHON_REPRS.search(QUOTED.sub("", reason)), reason


def test_the_plain_sentence_check_catches_python_reprs():
    for repr_reason in ("got NoneType None", "got b'raw'", "got str 'x'", "got bool True"):
        assert PYTHON_REPRS.search(QUOTED.sub("", repr_reason)), repr_reason


def test_a_long_quoted_value_is_cut_as_the_doc_says():
    from common.protocol import MAX_REASON_CHARS, Rejected, decode_input

    item = decode_input(pack(fill_body(ticker="Z" * 2000)), TICKERS)
    assert type(item) is Rejected
    assert len(item.reason) == MAX_REASON_CHARS
    assert item.reason.startswith("unknown ticker 'ZZZ")
    full = f"unknown ticker '{'Z' * 2000}' (not in the universe of {len(TICKERS)})"
    assert item.reason.endswith(f"... ({len(full):,} characters in all)")
    assert any(p.match(item.reason) for p in documented_reasons())


def test_a_float_quantity_above_what_a_float32_holds_exactly_is_refused():
    """msgpack decodes a float32 16777217.0 as 16777216.0: a float quantity is only taken
    while every whole number is exact in both widths."""
    assert validate(pack(fill_body(quantity=16_777_216.0)), TICKERS).quantity == 16_777_216
    with pytest.raises(Invalid, match=r"^quantity 16,777,218 sent as a float is over 16,777,216"):
        validate(pack(fill_body(quantity=16_777_218.0)), TICKERS)
    assert validate(pack(fill_body(quantity=16_777_218)), TICKERS).quantity == 16_777_218
