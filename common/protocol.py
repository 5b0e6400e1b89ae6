"""The wire protocol: every message shape, limit, validation rule and encoding in one place.

Inputs (PUSH -> controller PULL) are single msgpack maps with string keys:
    fill:  {"type": "fill", "source", "seq", "ticker", "price", "quantity"}
    split: {"type": "split", "source", "seq", "splits": {account: percent}}
Outputs (controller PUB) are two frames [topic, msgpack map]; see docs/protocol.md.

The typed shapes, in the order a message meets them:
- inputs: `Fill`, `Split` and `Rejected` (a message that failed validation but whose
  source and seq could be read: it is sequenced and journaled like the others), plus
  `Unreadable` (no identity: answered, never sequenced);
- decisions, what the book did with an input: `Allocated`, `Held`, `SplitApplied`, and the
  `Rejected` record itself;
- outputs, what the controller publishes: `Ack`, `RejectedNotice`, `Allocated` (as an
  allocation event) and the positions snapshot, each encoded by one function here.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import msgpack

# -- message types and topics ------------------------------------------------------------
FILL = "fill"
SPLIT = "split"
BUY = "buy"
SELL = "sell"
SIDES = (BUY, SELL)
TOPIC_ALLOCATION = b"allocation"
TOPIC_REJECTED = b"rejected"  # rejections with no readable source; b"rejected:" + source else
TOPIC_POSITIONS = b"positions"
TOPIC_ACK = b"ack:"  # + source: each sender subscribes to its own acks only

# -- the universe and the limits ---------------------------------------------------------
DEFAULT_TICKERS = ("AAPL", "MSFT", "AMZN", "GOOGL", "META", "NVDA", "TSLA", "JPM", "V", "XOM")
PRICE_DECIMALS = 6
PRICE_SCALE = 10**PRICE_DECIMALS  # prices and values are kept as integer micro-units
MAX_PRICE = 1_000_000  # per share; anything above is a fat finger
MAX_QUANTITY = 10_000_000_000  # shares in one fill
MAX_FLOAT_QUANTITY = 2**24  # a quantity sent as a float: every whole number is exact below
MAX_SEQ = 2**63 - 1
MAX_MESSAGE_BYTES = 64 * 1024  # any message but a split
MAX_SPLIT_MESSAGE_BYTES = 2 * 1024 * 1024  # MAX_ACCOUNTS ASCII names of MAX_NAME_LENGTH fit
MAX_NAME_LENGTH = 128  # source and account names
MAX_ACCOUNTS = 10_000
SPLIT_TOTAL = 100
SPLIT_TOLERANCE = 0.01  # percentage points; splits within it are normalised exactly
PERCENT_DECIMALS = 6
PERCENT_SCALE = 10**PERCENT_DECIMALS

#: What inputs mean and how they are allocated, as one number recorded in every journal
#: header: a journal replays to the same book only under the rules that wrote it. Bump it
#: whenever any of these changes (docs/architecture.md keeps the history):
#: prices are decimals of at most PRICE_DECIMALS places kept as integer micro-units; split
#: percents mean their decimals (33.33 is 3333/100), each on its own, and are normalised
#: exactly; the allocation rule is the exact optimum of controller/allocator.py, ties by
#: account name; a fill is a buy unless its side says "sell", and a sell never takes an
#: account short.
RULES_VERSION = 4


class Invalid(ValueError):
    """Raised by validation: a message that cannot be accepted, with a sentence saying why
    and whatever of its identity (source, seq) could be read."""

    def __init__(self, reason: str, source: str | None = None, seq: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.source = source
        self.seq = seq
        self.kind: Any = None  # the message's "type" field, when it could be read


@dataclass(frozen=True, slots=True)
class Fill:
    """A validated fill; the price is kept exactly, in integer units of 1/PRICE_SCALE."""

    source: str
    seq: int
    ticker: str
    price_units: int
    quantity: int
    side: str = BUY

    @property
    def price(self) -> float:
        return self.price_units / PRICE_SCALE

    @property
    def is_sell(self) -> bool:
        return self.side == SELL


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

    def percent_map(self) -> dict[str, float]:
        """The percents as the sender wrote them (what the journal keeps)."""
        return dict(zip(self.accounts, self.percents, strict=True))


@dataclass(frozen=True, slots=True)
class Rejected:
    """An input that failed validation but names its source and seq: it uses up that seq,
    is journaled, and is answered on the source's rejection topic. `kind` (the type field
    as sent, if any) is not journaled: it only tells whose permission the message needs."""

    source: str
    seq: int
    reason: str
    kind: Any = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Unreadable:
    """An input whose source or seq cannot be read: answered on the bare rejection topic,
    dead-lettered, never sequenced or journaled."""

    reason: str
    source: str | None = None  # readable source with an unreadable seq, for the log


#: What the sequencer orders, the journal keeps and the book applies.
Input = Fill | Split | Rejected


# -- decisions: what the book did with an input ------------------------------------------
@dataclass(frozen=True, slots=True)
class Allocated:
    """`fill` was split across accounts: shares per account, zeros left out.

    `released` is true for a fill that had waited for the first split."""

    fill: Fill
    shares: dict[str, int]
    released: bool = False


@dataclass(frozen=True, slots=True)
class Held:
    """`fill` arrived before any split and waits for the first one."""

    fill: Fill


@dataclass(frozen=True, slots=True)
class SplitApplied:
    """`split` is now in force; `released` waiting fills were allocated under it."""

    split: Split
    released: int


Decision = Allocated | Held | SplitApplied | Rejected


# -- outputs: what the controller publishes ---------------------------------------------
@dataclass(frozen=True, slots=True)
class Ack:
    """Everything from `source` up to `seq` is durable (0: nothing yet)."""

    source: str
    seq: int


@dataclass(frozen=True, slots=True)
class RejectedNotice:
    """A rejection to publish: of a message with identity, or of an unreadable one."""

    reason: str
    source: str | None = None
    seq: int | None = None


#: An event already encoded as its two frames (topic, body) by the engine's compiled path:
#: byte for byte what `encode_output` makes of the Allocated the Python path would queue.
EncodedEvent = tuple[bytes, bytes]

Output = Allocated | Ack | RejectedNotice | EncodedEvent


@dataclass(frozen=True, slots=True)
class AccountRow:
    """One account in a snapshot; money in dollars, weights and targets in percent."""

    positions: dict[str, int]
    value: float  # book value: net cash invested
    market_value: float  # holdings at last prices
    weight: float  # share of the total book value, percent
    target: float  # target of the split in force, percent
    deviation: float  # weight - target, percentage points

    def to_body(self) -> dict[str, Any]:
        return {
            "positions": self.positions,
            "value": self.value,
            "market_value": self.market_value,
            "weight": self.weight,
            "target": self.target,
            "deviation": self.deviation,
        }


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The full state a position server shows; published every interval on `positions`."""

    accounts: dict[str, AccountRow]
    prices: dict[str, float]
    totals: dict[str, Any]  # positions per ticker, value, market_value
    counts: dict[str, int]  # fills, splits, rejected, pending, duplicates, gaps, held, ...
    split: dict[str, Any] | None  # source and seq of the split in force
    sources: dict[str, int]  # last applied seq per source
    seq: int  # the snapshot's own number, per controller run
    instance: str  # the controller process that sent it
    time: float  # wall-clock seconds since the epoch
    interval: float  # seconds between snapshots
    journal: str | None = None  # the journal identity the state belongs to
    paused: bool = False  # input paused: the journal's disk is full

    def to_body(self) -> dict[str, Any]:
        return {
            "accounts": {name: row.to_body() for name, row in self.accounts.items()},
            "prices": self.prices,
            "totals": self.totals,
            "counts": self.counts,
            "split": self.split,
            "sources": self.sources,
            "seq": self.seq,
            "instance": self.instance,
            "time": self.time,
            "interval": self.interval,
            "journal": self.journal,
            "paused": self.paused,
        }

    def frames(self) -> list[bytes]:
        return [TOPIC_POSITIONS, _packer.pack(self.to_body())]


# -- encoding ----------------------------------------------------------------------------
_packer = msgpack.Packer(use_bin_type=True)


def pack(body: dict[str, Any]) -> bytes:
    """Encode one map as msgpack."""
    return _packer.pack(body)


def unpack(raw: bytes) -> Any:
    return msgpack.unpackb(raw, raw=False)


def fill_message(
    source: str, seq: int, ticker: str, price: float, quantity: int, side: str | None = None
) -> dict:
    """A fill as sent on the wire; `side` is left out for a plain buy (it defaults to buy)."""
    body = {
        "type": FILL,
        "source": source,
        "seq": seq,
        "ticker": ticker,
        "price": price,
        "quantity": quantity,
    }
    if side is not None:
        body["side"] = side
    return body


def wire_fill(fill: Fill) -> dict:
    """A validated fill back in its wire form (side written out only for a sell)."""
    side = fill.side if fill.is_sell else None
    return fill_message(fill.source, fill.seq, fill.ticker, fill.price, fill.quantity, side)


def split_message(source: str, seq: int, splits: dict[str, float]) -> dict:
    return {"type": SPLIT, "source": source, "seq": seq, "splits": splits}


def event(topic: bytes, body: dict[str, Any]) -> list[bytes]:
    """The two frames of a PUB event."""
    return [topic, _packer.pack(body)]


def read_event(frames: list[bytes]) -> tuple[bytes, dict[str, Any]]:
    topic, payload = frames
    return topic, msgpack.unpackb(payload, raw=False, strict_map_key=False)


def ack_topic(source: str) -> bytes:
    """The topic of `source`'s acks (ZeroMQ filters by prefix: check the body's source too)."""
    return TOPIC_ACK + source.encode()


def rejected_topic(source: str) -> bytes:
    """The topic of rejections of `source`'s messages."""
    return TOPIC_REJECTED + b":" + source.encode()


def encode_output(output: Output, instance: str) -> list[bytes]:
    """The two frames that publish one output; `instance` names the controller process."""
    if type(output) is tuple:  # encoded by the compiled path
        return list(output)
    if type(output) is Allocated:
        return allocation_frames(output)
    if type(output) is Ack:
        body = {"source": output.source, "seq": output.seq, "instance": instance}
        return [ack_topic(output.source), _packer.pack(body)]
    assert type(output) is RejectedNotice
    if output.source is None or output.seq is None:
        return [TOPIC_REJECTED, _packer.pack({"reason": output.reason, "instance": instance})]
    body = {
        "reason": output.reason,
        "source": output.source,
        "seq": output.seq,
        "instance": instance,
    }
    return [rejected_topic(output.source), _packer.pack(body)]


def allocation_frames(allocated: Allocated) -> list[bytes]:
    """The per-fill `allocation` event: the fill and the shares each account received."""
    fill = allocated.fill
    body = {
        "source": fill.source,
        "seq": fill.seq,
        "ticker": fill.ticker,
        "price": fill.price,
        "quantity": fill.quantity,
        "side": fill.side,
        "allocations": allocated.shares,
    }
    return [TOPIC_ALLOCATION, _packer.pack(body)]


# -- validation --------------------------------------------------------------------------
def decode_input(raw: bytes, tickers: frozenset[str] | set[str]) -> Input | Unreadable:
    """Decode and validate one input message into what the controller sequences: a Fill or
    Split, a Rejected record (invalid, identity readable), or Unreadable. Never raises."""
    try:
        return validate(raw, tickers)
    except Invalid as invalid:
        reason = _bounded(invalid.reason)
        if invalid.source is not None and invalid.seq is not None:
            return Rejected(invalid.source, invalid.seq, reason, invalid.kind)
        return Unreadable(reason, invalid.source)


MAX_REASON_CHARS = 500  # a reason quotes wire values: keep journal records and events small


def _bounded(reason: str) -> str:
    """`reason`, cut to MAX_REASON_CHARS with a note when a quoted value made it longer."""
    if len(reason) <= MAX_REASON_CHARS:
        return reason
    note = f"... ({len(reason):,} characters in all)"
    return reason[: MAX_REASON_CHARS - len(note)] + note


def validate(raw: bytes, tickers: frozenset[str] | set[str]) -> Fill | Split:
    """Decode and validate one input message; raise Invalid with a specific reason.

    Map keys sent as msgpack bin (UTF-8) are read as text too, but only on the slow path: a
    message that fails with str keys is read again with its bin keys decoded (a str key of
    the same name wins), so a well-formed message costs nothing extra.
    """
    # An oversize message is still read for its source and seq, so that its seq is consumed.
    if len(raw) > MAX_SPLIT_MESSAGE_BYTES:  # too big for anything: not even decoded
        raise Invalid(_size_reason(raw, MAX_SPLIT_MESSAGE_BYTES))
    oversize = len(raw) > MAX_MESSAGE_BYTES
    try:
        body = msgpack.unpackb(raw, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types for bad bytes
        reason = _decode_reason(exc) if raw else "not valid msgpack: the message is empty"
        raise Invalid(_size_reason(raw) if oversize else reason) from None
    if not isinstance(body, dict):
        reason = f"message must be a msgpack map, got {_shown(body)}"
        raise Invalid(_size_reason(raw) if oversize else reason)
    try:
        return _validate_map(body, raw, tickers)
    except Invalid:
        texts = _text_keys(body)
        if texts is None:
            raise
    return _validate_map(texts, raw, tickers)


def _validate_map(body: dict, raw: bytes, tickers: frozenset[str] | set[str]) -> Fill | Split:
    """Validate a decoded map: identity first (so that a rejection can name it), then size,
    then the fields of its type."""
    kind = body.get("type")
    if type(kind) is bytes:  # a bin type: read as text (the slow path only)
        kind = _text(kind) or kind
    oversize = len(raw) > size_limit(kind)
    try:
        source, seq = _read_identity(body)
    except RecursionError:
        raise Invalid(_NESTED) from None
    except Invalid as rejection:
        if oversize:
            raise Invalid(_size_reason(raw), rejection.source) from None
        raise
    if oversize:
        raise Invalid(_size_reason(raw, size_limit(kind)), source, seq)
    try:
        if kind == FILL:
            return _fill(body, source, seq, tickers)
        if kind == SPLIT:
            return _split(body, source, seq)
        if "type" not in body:
            raise Invalid("missing field 'type'")
        if type(kind) is str:
            raise Invalid(f"unknown message type {kind!r} (expected 'fill' or 'split')")
        raise Invalid(f"type must be the string 'fill' or 'split', got {_shown(kind)}")
    except RecursionError:
        raise Invalid(_NESTED, source, seq) from None
    except Invalid as rejection:
        rejection.source, rejection.seq, rejection.kind = source, seq, kind
        raise


def _text_keys(body: dict) -> dict | None:
    """`body` with its bin keys read as UTF-8 text, or None if it has none. A str key wins
    over a bin key of the same text (the bin one is then an ignored extra field), and a bin
    key that is not UTF-8 stays as it is (an extra field too)."""
    if not any(type(key) is bytes for key in body):
        return None
    texts = {key: value for key, value in body.items() if type(key) is str}
    for key, value in body.items():
        name = _text(key) if type(key) is bytes else None
        if name is not None and name not in texts:
            texts[name] = value
    return texts


def _text(value: Any) -> str | None:
    """A str as it is, a bin value as its UTF-8 text; None for anything else."""
    if type(value) is str:
        return value
    if type(value) is bytes:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


def _shown(value: Any) -> str:
    """A value from the wire in a reason: text quoted (as data, escaped), anything else named
    by its msgpack type, never as a Python repr such as `NoneType None` or `b'...'`."""
    if value is None:
        return "nil"
    if value is True or value is False:
        return "true" if value else "false"
    kind = type(value)
    if kind is str:
        return repr(value) if value else "an empty string"
    if kind is int:
        return str(value)
    if kind is float:
        return f"the float {value!r}"
    if kind is bytes:
        text = _text(value)
        if text is None:
            return f"bin data that is not UTF-8 text ({_plural(len(value), 'byte')})"
        return f"the bin string {text!r}" if text else "an empty string"
    if kind is list:
        return f"an array of {_plural(len(value), 'item')}"
    if kind is dict:
        return f"a map of {_plural(len(value), 'entry').replace('entrys', 'entries')}"
    return "a msgpack extension value"


#: What msgpack's refusal to use a key type names, in msgpack's own words.
_KEY_KINDS = {
    "int": "an integer",
    "float": "a float",
    "NoneType": "nil",
    "bool": "a boolean",
    "list": "an array",
    "tuple": "an array",
    "dict": "a map",
    "ExtType": "an extension value",
    "Timestamp": "an extension value",
}


def _decode_reason(exc: Exception) -> str:
    """Why bytes are not one msgpack map, as a sentence (msgpack's exceptions are terse)."""
    if isinstance(exc, msgpack.StackError | RecursionError):
        return _NESTED
    if isinstance(exc, msgpack.ExtraData):
        return "not valid msgpack: there are bytes after the first object (one map per message)"
    if isinstance(exc, msgpack.FormatError):
        return "not valid msgpack: it uses a reserved type byte (0xc1)"
    if isinstance(exc, UnicodeDecodeError):
        return "not valid msgpack: a str holds bytes that are not UTF-8 text"
    text = str(exc)
    if "is not allowed for map key" in text:
        found = _KEY_KINDS.get(text.split(" ", 1)[0], "a value that is not a string")
        return f"not valid msgpack: map keys must be strings (str or bin), one is {found}"
    if "incomplete input" in text:
        return "not valid msgpack: the message ends in the middle of an object"
    return "not valid msgpack: it cannot be decoded"


def percent_value(percent: int | float) -> Fraction:
    """What a percent in a split means, exactly: the decimal it was written as when it has at
    most PERCENT_DECIMALS places (23.34 is 2334/100), else its exact binary value."""
    if type(percent) is float and round(percent * PERCENT_SCALE) / PERCENT_SCALE == percent:
        return Fraction(round(percent * PERCENT_SCALE), PERCENT_SCALE)
    return Fraction(percent)


def _exact_percents(percents: list[int | float]) -> tuple[list[int], int]:
    """Percentages as integer numerators over one denominator, without rounding anything.

    Each percent means what `percent_value` says, on its own: its decimal when it has at
    most PERCENT_DECIMALS places (23.34 is 2334/100), else its exact binary value. (Before
    rules version 4, one percent with more places made every percent binary.)
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
    else:  # the common case: every percent has at most PERCENT_DECIMALS places
        return units, PERCENT_SCALE
    values = [percent_value(percent) for percent in percents]
    denominator = math.lcm(*(value.denominator for value in values))
    return [value.numerator * (denominator // value.denominator) for value in values], denominator


_NESTED = "message is nested too deeply to read"


def size_limit(kind: Any) -> int:
    """The largest encoded message of type `kind` the controller accepts."""
    return MAX_SPLIT_MESSAGE_BYTES if kind == SPLIT else MAX_MESSAGE_BYTES


def _size_reason(raw: bytes, limit: int = MAX_MESSAGE_BYTES) -> str:
    return f"message is {len(raw):,} bytes, over the {limit:,}-byte limit"


def _read_identity(body: dict) -> tuple[str, int]:
    source = body.get("source")
    if type(source) is not str:  # the slow path: missing, nil, bin or not text at all
        if "source" not in body:
            raise Invalid("missing field 'source'")
        source = _text(source) or source
    source = _check_name("source", source)
    seq = body.get("seq")
    if type(seq) is not int or not 1 <= seq <= MAX_SEQ:
        if "seq" not in body:
            raise Invalid("missing field 'seq'", source)
        shown = seq if type(seq) is int else _shown(seq)
        raise Invalid(f"seq must be an integer from 1 to {MAX_SEQ}, got {shown}", source)
    return source, seq


def _check_name(what: str, name: Any) -> str:
    """`name` if it is a usable source or account name; Invalid saying why not."""
    if type(name) is not str or not name:
        raise Invalid(f"{what} must be a non-empty string, got {_shown(name)}")
    if len(name) > MAX_NAME_LENGTH:
        raise Invalid(f"{what} is {len(name)} characters, over the {MAX_NAME_LENGTH} limit")
    return name


def _require(body: dict, field: str) -> Any:
    try:
        return body[field]
    except KeyError:
        raise Invalid(f"missing field {field!r}") from None


def _fill(body: dict, source: str, seq: int, tickers: frozenset[str] | set[str]) -> Fill:
    ticker = _require(body, "ticker")
    price = _require(body, "price")
    quantity = _require(body, "quantity")
    if type(ticker) is not str or ticker not in tickers:
        ticker = _ticker(ticker, tickers)
    side = body.get("side", BUY)
    if side is BUY:  # absent (the default object itself): a bin "side" key is read too
        if b"side" in body:
            side = _side(body[b"side"])
    elif side not in SIDES:
        side = _side(side)
    return Fill(source, seq, ticker, price_units(price), _quantity(quantity), side)


def _ticker(ticker: Any, tickers: frozenset[str] | set[str]) -> str:
    """The slow path of the ticker check: a bin ticker read as text, else the reason."""
    text = _text(ticker)
    if text is None:
        raise Invalid(f"ticker must be a string, got {_shown(ticker)}")
    if text not in tickers:
        raise Invalid(f"unknown ticker {text!r} (not in the universe of {len(tickers)})")
    return text


def _side(side: Any) -> str:
    """The slow path of the side check: a bin side read as text, else the reason."""
    text = _text(side)
    for known in SIDES:
        if text == known:
            return known
    raise Invalid(f"side must be 'buy' or 'sell', got {_shown(side)}")


def price_units(price: Any) -> int:
    """The price in integer units of 1/PRICE_SCALE; Invalid unless it is exactly that."""
    kind = type(price)
    if kind is int:
        units = price * PRICE_SCALE
    elif kind is float:
        if not math.isfinite(price):
            raise Invalid(f"price must be a finite number, got {price!r}")
        if price <= 0:
            raise Invalid(f"price must be > 0, got {price!r}")
        if price > MAX_PRICE:
            raise Invalid(f"price {price!r} is over the {MAX_PRICE:,} limit per share")
        units = round(price * PRICE_SCALE)
        if units / PRICE_SCALE != price:
            raise Invalid(_decimals_reason(price))
    else:
        raise Invalid(f"price must be a number, got {_shown(price)}")
    if units <= 0:
        raise Invalid(f"price must be > 0, got {price!r}")
    if units > MAX_PRICE * PRICE_SCALE:
        raise Invalid(f"price {price!r} is over the {MAX_PRICE:,} limit per share")
    return units


def _decimals_reason(price: float) -> str:
    """Why a float price is refused, naming the usual cause: a 32-bit float (10.01 as a
    float32 is 10.0100002288818359375), which the protocol never rounds for the sender."""
    reason = f"price {price!r} has more than {PRICE_DECIMALS} decimal places"
    as_float32 = struct.pack(">f", price)
    if struct.unpack(">f", as_float32)[0] != price:
        return reason
    for places in range(PRICE_DECIMALS + 1):
        decimal = f"{price:.{places}f}"
        if struct.pack(">f", float(decimal)) == as_float32:
            hint = f"it is the 32-bit float nearest {decimal}; send prices as 64-bit floats"
            return f"{reason}: {hint}"
    return reason


def _quantity(quantity: Any) -> int:
    if type(quantity) is not int:
        quantity = _whole(quantity)
    if quantity <= 0:
        raise Invalid(f"quantity must be > 0, got {quantity}")
    if quantity > MAX_QUANTITY:
        raise Invalid(f"quantity {quantity:,} is over the {MAX_QUANTITY:,} limit per fill")
    return quantity


def _whole(quantity: Any) -> int:
    """The slow path of the quantity check: a float with a whole value (100.0) is that many
    shares, up to MAX_FLOAT_QUANTITY, below which a 32-bit float holds every whole number
    exactly (msgpack does not say which width was sent); nothing else is."""
    if type(quantity) is float and math.isfinite(quantity) and quantity.is_integer():
        if abs(quantity) > MAX_FLOAT_QUANTITY:
            raise Invalid(
                f"quantity {quantity:,.0f} sent as a float is over {MAX_FLOAT_QUANTITY:,}, "
                "where a 32-bit float no longer holds every whole number: send an integer"
            )
        return int(quantity)
    raise Invalid(f"quantity must be a whole number of shares, got {_shown(quantity)}")


def _split(body: dict, source: str, seq: int) -> Split:
    return build_split(source, seq, _require(body, "splits"))


def _text_accounts(splits: dict) -> dict:
    """The split's map with bin account names read as UTF-8 text; a name sent twice (as a
    str and as a bin, or as two bins) is refused rather than one of them silently kept."""
    texts: dict[Any, Any] = {}
    for account, percent in splits.items():
        name = _text(account) if type(account) is bytes else account
        if name is None:
            name = account  # not UTF-8: refused with its description below
        elif name in texts:
            raise Invalid(f"account {name!r} appears twice in splits")
        texts[name] = percent
    return texts


def build_split(source: str, seq: int, splits: Any) -> Split:
    """Validate a map of account -> percent into an exactly normalised Split. Account names
    sent as bin (UTF-8) are read as text, on the slow path only: after a first failure."""
    try:
        return _build_split(source, seq, splits)
    except Invalid:
        if not isinstance(splits, dict) or not any(type(a) is bytes for a in splits):
            raise
    return _build_split(source, seq, _text_accounts(splits))


def _build_split(source: str, seq: int, splits: Any) -> Split:
    if not isinstance(splits, dict):
        raise Invalid(f"splits must be a map of account to percent, got {_shown(splits)}")
    if not splits:
        raise Invalid("splits is empty: at least one account is needed")
    if len(splits) > MAX_ACCOUNTS:
        raise Invalid(f"splits has {len(splits)} accounts, over the {MAX_ACCOUNTS} limit")
    for account, percent in splits.items():
        _check_name("account name", account)
        if type(percent) not in (int, float):
            raise Invalid(
                f"percent for account {account!r} must be a number, got {_shown(percent)}"
            )
        if not math.isfinite(percent):
            raise Invalid(f"percent for account {account!r} must be finite, got {percent!r}")
        if percent < 0:
            raise Invalid(f"percent for account {account!r} is negative ({percent!r})")
        if percent > SPLIT_TOTAL + SPLIT_TOLERANCE:
            raise Invalid(f"percent for account {account!r} is over {SPLIT_TOTAL} ({percent!r})")
    numerators, denominator = _exact_percents(list(splits.values()))
    total = sum(numerators)
    # |total/denominator - 100| <= SPLIT_TOLERANCE, exactly (tolerance is 1/100).
    if abs(100 * total - 100 * SPLIT_TOTAL * denominator) > denominator:
        shown = sum(float(p) for p in splits.values())
        raise Invalid(f"percentages sum to {shown:.6g}, not 100 (tolerance {SPLIT_TOLERANCE})")
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
