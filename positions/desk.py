"""The desk's reading of a controller snapshot: checked, with units named, ready to show.

The controller's `positions` snapshot (docs/protocol.md) is wire data: this module reads it
defensively (missing optional keys get defaults, extra keys are ignored, a field of the
wrong type makes the whole snapshot malformed) and derives what a desk reads first: the
deviation in basis points and in money. Every view (terminal tables, the live view, JSON
lines, the web page and /api/snapshot) is built from a `Desk`, so they all show the same
numbers in the same units. Names (accounts, tickers, sources) are kept as plain strings:
they are data and are never interpreted by any view.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

BPS_PER_PERCENT_POINT = 100  # weights are percentages; deviations are shown in basis points
PERCENT = 100.0
DEFAULT_INTERVAL = 10.0  # seconds between snapshots, when a snapshot does not say
TIME_FORMAT = "%Y-%m-%d %H:%M:%S %Z"
CLOCK_FORMAT = "%H:%M:%S %Z"
#: Keys of the split that, when a controller sends one, say when the split was received.
SPLIT_TIME_KEYS = ("received", "time")
#: Counters shown in the header and exported; any other count the controller adds is kept.
COUNT_NAMES = ("fills", "splits", "rejected", "pending", "duplicates", "gaps", "held")


class MalformedSnapshot(ValueError):
    """A snapshot whose fields do not have the documented types."""


@dataclass(frozen=True, slots=True)
class AccountRow:
    """One account: shares per ticker, values in currency, weights in percent."""

    name: str
    positions: dict[str, int]
    book_value: float
    market_value: float
    weight_pct: float
    target_pct: float
    deviation_value: float  # book value minus the target's share of the total book value

    @property
    def deviation_bp(self) -> float:
        return (self.weight_pct - self.target_pct) * BPS_PER_PERCENT_POINT


@dataclass(frozen=True, slots=True)
class SplitInForce:
    """The split the controller allocates by, and when it arrived (None if unknown)."""

    source: str
    seq: int
    received: float | None = None
    first_seen: float | None = None  # time of the first snapshot that showed it

    @property
    def name(self) -> str:
        return f"{self.source}#{self.seq}"


@dataclass(frozen=True, slots=True)
class Desk:
    """A checked snapshot with the derived numbers every view shows."""

    seq: int
    instance: str
    time: float
    interval: float
    split: SplitInForce | None
    tickers: list[str]
    prices: dict[str, float]
    accounts: list[AccountRow]
    total_positions: dict[str, int]
    total_book_value: float
    total_market_value: float
    counts: dict[str, int]
    sources: dict[str, int] = field(default_factory=dict)
    paused: bool | None = None

    def count(self, name: str) -> int:
        return self.counts.get(name, 0)


def read_snapshot(raw: Any, first_seen: float | None = None) -> Desk:
    """A `Desk` from one decoded snapshot; MalformedSnapshot if a field has the wrong type.

    `first_seen` is when the position server first saw the snapshot's split in force.
    """
    if not isinstance(raw, dict):
        raise MalformedSnapshot(f"a snapshot must be a map, not {_kind(raw)}")
    totals = _map(raw, "totals")
    total_positions = {
        _name(t): _int(n, f"totals.positions[{t}]") for t, n in _map(totals, "positions").items()
    }
    tickers = list(total_positions)
    total_book = _number(totals.get("value", 0), "totals.value")
    accounts = [
        _account(_name(name), row, total_book, tickers)
        for name, row in _map(raw, "accounts").items()
    ]
    accounts.sort(key=lambda row: row.name)
    return Desk(
        seq=_int(raw.get("seq", 0), "seq"),
        instance=_name(raw.get("instance", "")),
        time=_number(raw.get("time", 0), "time"),
        interval=_number(raw.get("interval", DEFAULT_INTERVAL), "interval") or DEFAULT_INTERVAL,
        split=_split(raw.get("split"), first_seen),
        tickers=tickers,
        prices={_name(t): _number(p, f"prices[{t}]") for t, p in _map(raw, "prices").items()},
        accounts=accounts,
        total_positions=total_positions,
        total_book_value=total_book,
        total_market_value=_number(totals.get("market_value", 0), "totals.market_value"),
        counts={
            _name(k): _int(v, f"counts.{k}")
            for k, v in _map(raw, "counts").items()
            if isinstance(v, int)
        },
        sources={_name(k): v for k, v in _map(raw, "sources").items() if isinstance(v, int)},
        paused=raw.get("paused") if isinstance(raw.get("paused"), bool) else None,
    )


def _account(name: str, row: Any, total_book: float, tickers: list[str]) -> AccountRow:
    if not isinstance(row, dict):
        raise MalformedSnapshot(f'account "{name}" must be a map, not {_kind(row)}')
    held = {_name(t): _int(n, f"{name}.positions[{t}]") for t, n in _map(row, "positions").items()}
    book = _number(row.get("value", 0), f"{name}.value")
    target = _number(row.get("target", 0), f"{name}.target")
    return AccountRow(
        name=name,
        positions={t: held.get(t, 0) for t in tickers} | held,
        book_value=book,
        market_value=_number(row.get("market_value", 0), f"{name}.market_value"),
        weight_pct=_number(row.get("weight", 0), f"{name}.weight"),
        target_pct=target,
        deviation_value=book - target / PERCENT * total_book,
    )


def _split(raw: Any, first_seen: float | None) -> SplitInForce | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise MalformedSnapshot(f"split must be a map or nil, not {_kind(raw)}")
    received = next(
        (_number(raw[k], f"split.{k}") for k in SPLIT_TIME_KEYS if raw.get(k) is not None), None
    )
    return SplitInForce(
        _name(raw.get("source", "")), _int(raw.get("seq", 0), "split.seq"), received, first_seen
    )


def _map(parent: dict[str, Any], key: str) -> dict[Any, Any]:
    value = parent.get(key, {})
    if not isinstance(value, dict):
        raise MalformedSnapshot(f"{key} must be a map, not {_kind(value)}")
    return value


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedSnapshot(f"{what} must be a number, not {_kind(value)}")
    return float(value)


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedSnapshot(f"{what} must be an integer, not {_kind(value)}")
    return value


def _name(value: Any) -> str:
    """A name from the wire as text: bytes are decoded with replacement, never evaluated."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _kind(value: Any) -> str:
    """A value's kind in words, for messages (never a Python repr of wire data)."""
    kinds = {dict: "a map", list: "a list", str: "text", bytes: "bytes", bool: "a boolean"}
    if value is None:
        return "nil"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    return kinds.get(type(value), "another kind of value")


def local_time(when: float, fmt: str = TIME_FORMAT) -> str:
    """A Unix time as the position server's local date and time, with its zone."""
    return datetime.fromtimestamp(when).astimezone().strftime(fmt)


def desk_json(
    desk: Desk,
    notices: list[str] | None = None,
    restarts: int = 0,
    missed: int = 0,
) -> dict[str, Any]:
    """The JSON document of a snapshot (`--format json` and /api/snapshot): units named in
    the field names, the same numbers as the tables."""
    split = desk.split
    return {
        "seq": desk.seq,
        "instance": desk.instance,
        "time": desk.time,
        "time_local": local_time(desk.time),
        "interval_s": desk.interval,
        "split": None
        if split is None
        else {
            "source": split.source,
            "seq": split.seq,
            "received": split.received,
            "first_seen": split.first_seen,
        },
        "counts": dict(desk.counts),
        "sources": dict(desk.sources),
        "prices": dict(desk.prices),
        "totals": {
            "positions": dict(desk.total_positions),
            "book_value": desk.total_book_value,
            "market_value": desk.total_market_value,
        },
        "accounts": {
            row.name: {
                "positions": dict(row.positions),
                "book_value": row.book_value,
                "market_value": row.market_value,
                "weight_pct": row.weight_pct,
                "target_pct": row.target_pct,
                "deviation_bp": row.deviation_bp,
                "deviation_value": row.deviation_value,
            }
            for row in desk.accounts
        },
        "paused": desk.paused,
        "controller_restarts": restarts,
        "snapshots_missed": missed,
        "notices": list(notices or []),
    }
