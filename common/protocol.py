"""The wire protocol: every message shape, limit, validation rule and encoding in one place.

Inputs (PUSH -> controller PULL) are single msgpack maps with string keys:
    fill:  {"type": "fill", "source", "seq", "ticker", "price", "quantity"}
    split: {"type": "split", "source", "seq", "splits": {account: percent}}
Outputs (controller PUB) are two frames [topic, msgpack map]; see docs/protocol.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import msgpack

# -- message types and topics ------------------------------------------------------------
FILL = "fill"
SPLIT = "split"
TOPIC_ALLOCATION = b"allocation"
TOPIC_REJECTED = b"rejected"
TOPIC_POSITIONS = b"positions"
TOPIC_ACK = b"ack"

# -- the universe and the limits ---------------------------------------------------------
DEFAULT_TICKERS = ("AAPL", "MSFT", "AMZN", "GOOGL", "META", "NVDA", "TSLA", "JPM", "V", "XOM")
PRICE_DECIMALS = 6
PRICE_SCALE = 10**PRICE_DECIMALS  # prices and values are kept as integer micro-units
MAX_PRICE = 1_000_000  # per share; anything above is a fat finger
MAX_QUANTITY = 10_000_000_000  # shares in one fill
MAX_SEQ = 2**63 - 1
MAX_MESSAGE_BYTES = 64 * 1024
MAX_NAME_LENGTH = 128  # source and account names
MAX_ACCOUNTS = 10_000
SPLIT_TOTAL = 100
SPLIT_TOLERANCE = 0.01  # percentage points; splits within it are normalised exactly
PERCENT_DECIMALS = 6
PERCENT_SCALE = 10**PERCENT_DECIMALS


class Rejection(ValueError):
    """A message that cannot be accepted, with a sentence saying why."""

    def __init__(self, reason: str, source: str | None = None, seq: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.source = source
        self.seq = seq


@dataclass(frozen=True, slots=True)
class Fill:
    """A validated fill; the price is kept exactly, in integer units of 1/PRICE_SCALE."""

    source: str
    seq: int
    ticker: str
    price_units: int
    quantity: int

    @property
    def price(self) -> float:
        return self.price_units / PRICE_SCALE


@dataclass(frozen=True, slots=True)
class Split:
    """A validated account split; target fraction of accounts[i] is weights[i] / sum(weights).

    `weights` are the exact percentages over a common denominator, so a split that sums to
    100 within SPLIT_TOLERANCE is normalised with no rounding at all.
    """

    source: str
    seq: int
    accounts: tuple[str, ...]
    weights: tuple[int, ...]
    percents: tuple[float, ...]

    def target_percent(self) -> dict[str, float]:
        total = sum(self.weights)
        return {a: 100 * w / total for a, w in zip(self.accounts, self.weights, strict=True)}


# -- encoding ----------------------------------------------------------------------------
_packer = msgpack.Packer(use_bin_type=True)


def pack(body: dict[str, Any]) -> bytes:
    """Encode one map as msgpack."""
    return _packer.pack(body)


def unpack(raw: bytes) -> Any:
    return msgpack.unpackb(raw, raw=False)


def fill_message(source: str, seq: int, ticker: str, price: float, quantity: int) -> dict:
    return {
        "type": FILL,
        "source": source,
        "seq": seq,
        "ticker": ticker,
        "price": price,
        "quantity": quantity,
    }


def split_message(source: str, seq: int, splits: dict[str, float]) -> dict:
    return {"type": SPLIT, "source": source, "seq": seq, "splits": splits}


def event(topic: bytes, body: dict[str, Any]) -> list[bytes]:
    """The two frames of a PUB event."""
    return [topic, _packer.pack(body)]


def read_event(frames: list[bytes]) -> tuple[bytes, dict[str, Any]]:
    topic, payload = frames
    return topic, msgpack.unpackb(payload, raw=False, strict_map_key=False)


# -- validation --------------------------------------------------------------------------
def decode_input(raw: bytes, tickers: frozenset[str] | set[str]) -> Fill | Split:
    """Decode and validate one input message; raise Rejection with a specific reason."""
    # An oversize message is still read for its source and seq, so that its seq is consumed.
    oversize = len(raw) > MAX_MESSAGE_BYTES
    try:
        body = msgpack.unpackb(raw, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types for bad bytes
        reason = f"not valid msgpack ({type(exc).__name__}: {exc})"
        raise Rejection(_size_reason(raw) if oversize else reason) from None
    if not isinstance(body, dict):
        reason = f"message must be a msgpack map, got {type(body).__name__}"
        raise Rejection(_size_reason(raw) if oversize else reason)
    try:
        source, seq = _read_identity(body)
    except RecursionError:
        raise Rejection(_NESTED) from None
    except Rejection as rejection:
        if oversize:
            raise Rejection(_size_reason(raw), rejection.source) from None
        raise
    if oversize:
        raise Rejection(_size_reason(raw), source, seq)
    try:
        kind = body.get("type")
        if kind == FILL:
            return _fill(body, source, seq, tickers)
        if kind == SPLIT:
            return _split(body, source, seq)
        if kind is None:
            raise Rejection("missing field 'type'")
        raise Rejection(f"unknown message type {kind!r} (expected 'fill' or 'split')")
    except RecursionError:
        raise Rejection(_NESTED, source, seq) from None
    except Rejection as rejection:
        rejection.source, rejection.seq = source, seq
        raise


def percent_value(percent: int | float) -> Fraction:
    """What a percent in a split means, exactly: the decimal it was written as when it has at
    most PERCENT_DECIMALS places (23.34 is 2334/100), else its exact binary value."""
    if type(percent) is float and round(percent * PERCENT_SCALE) / PERCENT_SCALE == percent:
        return Fraction(round(percent * PERCENT_SCALE), PERCENT_SCALE)
    return Fraction(percent)


def _exact_percents(percents: list[int | float]) -> tuple[list[int], int]:
    """Percentages as integer numerators over one denominator, without rounding anything.

    A percent written with at most PERCENT_DECIMALS decimals means that decimal (23.34 is
    2334/100, not the binary float nearest to it); otherwise its exact binary value is used.
    """
    units = []
    for percent in percents:
        if type(percent) is int:
            units.append(percent * PERCENT_SCALE)
            continue
        scaled = round(percent * PERCENT_SCALE)
        if scaled / PERCENT_SCALE != percent:
            break
        units.append(scaled)
    else:
        return units, PERCENT_SCALE
    ratios = [p.as_integer_ratio() for p in percents]
    denominator = math.lcm(*(d for _, d in ratios))
    return [n * (denominator // d) for n, d in ratios], denominator


_NESTED = "message is nested too deeply to read"


def _size_reason(raw: bytes) -> str:
    return f"message is {len(raw)} bytes, over the {MAX_MESSAGE_BYTES}-byte limit"


def _read_identity(body: dict) -> tuple[str, int]:
    source = body.get("source")
    seq = body.get("seq")
    if source is None:
        raise Rejection("missing field 'source'")
    _check_name("source", source)
    if seq is None:
        raise Rejection("missing field 'seq'", source)
    if type(seq) is not int or not 1 <= seq <= MAX_SEQ:
        raise Rejection(f"seq must be an integer from 1 to {MAX_SEQ}, got {seq!r}", source)
    return source, seq


def _check_name(what: str, name: Any) -> None:
    if not isinstance(name, str) or not name:
        raise Rejection(f"{what} must be a non-empty string, got {name!r}")
    if len(name) > MAX_NAME_LENGTH:
        raise Rejection(f"{what} is {len(name)} characters, over the {MAX_NAME_LENGTH} limit")


def _require(body: dict, field: str) -> Any:
    try:
        return body[field]
    except KeyError:
        raise Rejection(f"missing field {field!r}") from None


def _fill(body: dict, source: str, seq: int, tickers: frozenset[str] | set[str]) -> Fill:
    ticker = _require(body, "ticker")
    price = _require(body, "price")
    quantity = _require(body, "quantity")
    if type(ticker) is not str or ticker not in tickers:
        raise Rejection(f"unknown ticker {ticker!r} (not in the universe of {len(tickers)})")
    return Fill(source, seq, ticker, price_units(price), _quantity(quantity))


def price_units(price: Any) -> int:
    """The price in integer units of 1/PRICE_SCALE; Rejection unless it is exactly that."""
    kind = type(price)
    if kind is int:
        units = price * PRICE_SCALE
    elif kind is float:
        if not math.isfinite(price):
            raise Rejection(f"price must be a finite number, got {price!r}")
        if price <= 0:
            raise Rejection(f"price must be > 0, got {price!r}")
        if price > MAX_PRICE:
            raise Rejection(f"price {price!r} is over the {MAX_PRICE:,} limit per share")
        units = round(price * PRICE_SCALE)
        if units / PRICE_SCALE != price:
            raise Rejection(f"price {price!r} has more than {PRICE_DECIMALS} decimal places")
    else:
        raise Rejection(f"price must be a number, got {type(price).__name__} {price!r}")
    if units <= 0:
        raise Rejection(f"price must be > 0, got {price!r}")
    if units > MAX_PRICE * PRICE_SCALE:
        raise Rejection(f"price {price!r} is over the {MAX_PRICE:,} limit per share")
    return units


def _quantity(quantity: Any) -> int:
    if type(quantity) is not int:
        raise Rejection(f"quantity must be a whole number (int), got {quantity!r}")
    if quantity <= 0:
        raise Rejection(f"quantity must be > 0, got {quantity}")
    if quantity > MAX_QUANTITY:
        raise Rejection(f"quantity {quantity:,} is over the {MAX_QUANTITY:,} limit per fill")
    return quantity


def _split(body: dict, source: str, seq: int) -> Split:
    return build_split(source, seq, _require(body, "splits"))


def build_split(source: str, seq: int, splits: Any) -> Split:
    """Validate a map of account -> percent into an exactly normalised Split."""
    if not isinstance(splits, dict):
        raise Rejection(f"splits must be a map of account to percent, got {type(splits).__name__}")
    if not splits:
        raise Rejection("splits is empty: at least one account is needed")
    if len(splits) > MAX_ACCOUNTS:
        raise Rejection(f"splits has {len(splits)} accounts, over the {MAX_ACCOUNTS} limit")
    for account, percent in splits.items():
        _check_name("account name", account)
        if type(percent) not in (int, float):
            raise Rejection(f"percent for account {account!r} must be a number, got {percent!r}")
        if not math.isfinite(percent):
            raise Rejection(f"percent for account {account!r} must be finite, got {percent!r}")
        if percent < 0:
            raise Rejection(f"percent for account {account!r} is negative ({percent!r})")
        if percent > SPLIT_TOTAL + SPLIT_TOLERANCE:
            raise Rejection(f"percent for account {account!r} is over {SPLIT_TOTAL} ({percent!r})")
    numerators, denominator = _exact_percents(list(splits.values()))
    total = sum(numerators)
    # |total/denominator - 100| <= SPLIT_TOLERANCE, exactly (tolerance is 1/100).
    if abs(100 * total - 100 * SPLIT_TOTAL * denominator) > denominator:
        shown = sum(float(p) for p in splits.values())
        raise Rejection(f"percentages sum to {shown:.6g}, not 100 (tolerance {SPLIT_TOLERANCE})")
    common = math.gcd(*numerators)  # smaller weights, same fractions: faster allocation
    numerators = [n // common for n in numerators]
    rows = sorted(zip(splits, numerators, splits.values(), strict=True))
    return Split(
        source,
        seq,
        tuple(account for account, _, _ in rows),
        tuple(weight for _, weight, _ in rows),
        tuple(float(percent) for _, _, percent in rows),
    )
