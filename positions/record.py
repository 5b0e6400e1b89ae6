"""The position server's record: every snapshot received, kept in SQLite across restarts.

Two tables: `snapshots` (one row per snapshot: controller instance, seq, time, counts, the
split in force) and `account_rows` (per snapshot and account: weight, target, value,
market value, deviation). WAL mode, one transaction per snapshot; the schema is created
when missing and its version kept in PRAGMA user_version.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_RECORD = "data/positions.sqlite"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 5.0  # how long a write waits for another process holding the file
COUNT_FIELDS = ("fills", "splits", "rejected", "pending", "duplicates", "gaps", "held")
ACCOUNT_FIELDS = ("weight", "target", "value", "market_value", "deviation")

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY,
    instance TEXT NOT NULL,
    seq INTEGER NOT NULL,
    time REAL NOT NULL,
    received REAL NOT NULL,
    {", ".join(f"{name} INTEGER NOT NULL DEFAULT 0" for name in COUNT_FIELDS)},
    split_source TEXT,
    split_seq INTEGER,
    total_value REAL NOT NULL,
    total_market_value REAL NOT NULL,
    UNIQUE (instance, seq)
);
CREATE INDEX IF NOT EXISTS snapshots_by_time ON snapshots (time);
CREATE TABLE IF NOT EXISTS account_rows (
    snapshot_id INTEGER NOT NULL REFERENCES snapshots (id),
    account TEXT NOT NULL,
    {", ".join(f"{name} REAL NOT NULL" for name in ACCOUNT_FIELDS)},
    PRIMARY KEY (snapshot_id, account)
);
"""

INSERT_SNAPSHOT = f"""
INSERT OR IGNORE INTO snapshots (instance, seq, time, received, {", ".join(COUNT_FIELDS)},
    split_source, split_seq, total_value, total_market_value)
VALUES ({", ".join("?" * (len(COUNT_FIELDS) + 8))})
"""

INSERT_ACCOUNT = f"""
INSERT INTO account_rows (snapshot_id, account, {", ".join(ACCOUNT_FIELDS)})
VALUES ({", ".join("?" * (len(ACCOUNT_FIELDS) + 2))})
"""


class RecordError(RuntimeError):
    """The record file cannot be opened, is not a positions record, or has no such run."""


@dataclass(frozen=True, slots=True)
class RecordedSnapshot:
    """One recorded snapshot as the drift report needs it."""

    instance: str
    seq: int
    time: float
    fills: int
    split: tuple[str, int] | None
    weights: dict[str, float] = field(default_factory=dict)
    targets: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Run:
    """One controller instance's stretch of the record."""

    instance: str
    first: float
    last: float
    snapshots: int


class Recorder:
    """Appends each snapshot, with its account rows, to the SQLite record at `path`."""

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        self.written = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable across our crashes
            create_schema(self.db, self.path)
        except (OSError, sqlite3.Error) as exc:
            raise RecordError(f"cannot record to {self.path}: {exc}") from None
        log.info("recording snapshots to %s", self.path)

    def write(self, snapshot: dict[str, Any]) -> bool:
        """Record one snapshot in one transaction; False if it was already there or unusable."""
        try:
            snapshot_row = snapshot_values(snapshot, self.clock())
            account_rows = [
                (account, *(float(row[name]) for name in ACCOUNT_FIELDS))
                for account, row in snapshot.get("accounts", {}).items()
            ]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            log.warning("snapshot not recorded: malformed (%s: %s)", type(exc).__name__, exc)
            return False
        try:
            with self.db:
                cursor = self.db.execute(INSERT_SNAPSHOT, snapshot_row)
                if cursor.rowcount == 0:
                    return False
                snapshot_id = cursor.lastrowid
                self.db.executemany(INSERT_ACCOUNT, [(snapshot_id, *r) for r in account_rows])
        except sqlite3.Error as exc:
            log.error("snapshot #%s not recorded in %s: %s", snapshot_row[1], self.path, exc)
            return False
        self.written += 1
        return True

    def close(self) -> None:
        """Close the file (WAL checkpointed by SQLite) and log how much was recorded."""
        self.db.close()
        log.info("recorded %d snapshot(s) to %s", self.written, self.path)


def snapshot_values(snapshot: dict[str, Any], received: float) -> tuple[Any, ...]:
    """The `snapshots` row for `snapshot`, in INSERT_SNAPSHOT's column order."""
    counts = snapshot.get("counts", {})
    split = snapshot.get("split")
    totals = snapshot.get("totals", {})
    return (
        str(snapshot["instance"]),
        int(snapshot["seq"]),
        float(snapshot["time"]),
        received,
        *(int(counts.get(name, 0)) for name in COUNT_FIELDS),
        split["source"] if split else None,
        split["seq"] if split else None,
        float(totals.get("value", 0.0)),
        float(totals.get("market_value", 0.0)),
    )


def create_schema(db: sqlite3.Connection, path: Path) -> None:
    """Create the tables if missing; refuse a record written by another schema version."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version not in (0, SCHEMA_VERSION):
        raise RecordError(f"{path} has record schema version {version}, not {SCHEMA_VERSION}")
    with db:
        db.executescript(SCHEMA)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


# -- reading, for the drift report --------------------------------------------------------
def open_for_reading(path: str | Path) -> sqlite3.Connection:
    """Open an existing record read-only; RecordError if it is missing or not a record."""
    path = Path(path)
    if not path.is_file():
        raise RecordError(f"no record at {path} (the position server writes it with --record)")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    except sqlite3.Error as exc:
        raise RecordError(f"cannot read {path}: {exc}") from None
    if version != SCHEMA_VERSION or not {"snapshots", "account_rows"} <= tables:
        db.close()
        raise RecordError(f"{path} is not a positions record (schema version {version})")
    return db


def read_runs(db: sqlite3.Connection) -> list[Run]:
    """Each controller instance in the record, in the order they first appear."""
    rows = db.execute(
        "SELECT instance, MIN(time), MAX(time), COUNT(*) FROM snapshots"
        " GROUP BY instance ORDER BY MIN(time)"
    )
    return [Run(*row) for row in rows]


def choose_run(runs: list[Run], wanted: str) -> str:
    """The instance named by `wanted` (in full or a unique prefix); RecordError otherwise."""
    matches = [run.instance for run in runs if run.instance.startswith(wanted)]
    if wanted in matches:
        return wanted
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(run.instance for run in runs) or "none"
    why = "is ambiguous" if matches else "is not in the record"
    raise RecordError(f"run {wanted!r} {why}; runs recorded: {known}")


def read_snapshots(db: sqlite3.Connection, instance: str | None = None) -> list[RecordedSnapshot]:
    """Recorded snapshots in time order (one controller run's if `instance` is given)."""
    where, params = ("WHERE s.instance = ?", (instance,)) if instance else ("", ())
    return _fold_rows(
        db.execute(
            "SELECT s.id, s.instance, s.seq, s.time, s.fills, s.split_source, s.split_seq,"
            " a.account, a.weight, a.target"
            f" FROM snapshots s LEFT JOIN account_rows a ON a.snapshot_id = s.id {where}"
            " ORDER BY s.time, s.id, a.account",
            params,
        )
    )


def read_recent(db: sqlite3.Connection, limit: int) -> list[RecordedSnapshot]:
    """The newest `limit` recorded snapshots, in time order (the web view's chart history)."""
    return _fold_rows(
        db.execute(
            "SELECT s.id, s.instance, s.seq, s.time, s.fills, s.split_source, s.split_seq,"
            " a.account, a.weight, a.target"
            " FROM (SELECT * FROM snapshots ORDER BY time DESC, id DESC LIMIT ?) s"
            " LEFT JOIN account_rows a ON a.snapshot_id = s.id"
            " ORDER BY s.time, s.id, a.account",
            (limit,),
        )
    )


def _fold_rows(rows: Iterable[tuple[Any, ...]]) -> list[RecordedSnapshot]:
    """One RecordedSnapshot per snapshot id from rows joined with their account rows."""
    snapshots: list[RecordedSnapshot] = []
    current_id = None
    for sid, inst, seq, when, fills, source, split_seq, account, weight, target in rows:
        if sid != current_id:
            current_id = sid
            split = (source, split_seq) if source is not None else None
            snapshots.append(RecordedSnapshot(inst, seq, when, fills, split))
        if account is not None:
            snapshots[-1].weights[account] = weight
            snapshots[-1].targets[account] = target
    return snapshots
