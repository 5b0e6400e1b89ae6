"""`python -m controller audit`: listing, the CSV blotter and --verify, on real journals."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import zlib
from pathlib import Path

import msgpack
import pytest

from common.protocol import (
    TOPIC_ALLOCATION,
    encode_output,
    fill_message,
    pack,
    read_event,
    split_message,
)
from controller import book as book_module
from controller import cli
from controller.allocator import allocate_sell_integral
from controller.book import Book
from controller.engine import Engine
from controller.journal import RECORD_HEADER, JournalWriter, read_records, records_start
from controller.tools.audit import BLOTTER_COLUMNS
from fillsim.market import Market

TICKERS = ("AAPL", "MSFT", "XOM")
FIRST_SPLIT = {"acct-a": 50.0, "acct-b": 30.0, "acct-c": 20.0}
SECOND_SPLIT = {"acct-a": 20.0, "acct-b": 30.0, "acct-c": 30.0, "acct-d": 20.0}
FILLS_BEFORE_CHECKPOINT = 30
FILLS_AFTER_CHECKPOINT = 10
SECOND_SPLIT_AFTER = 20  # fills
ROOT = Path(__file__).resolve().parent.parent


class Journal:
    """A controller journal and checkpoint made by a real Engine, with what it published."""

    def __init__(self, directory) -> None:
        self.path = directory / "controller.journal"
        self.checkpoint = directory / "controller.journal.checkpoint"
        self.allocations: dict[tuple[str, int], dict[str, int]] = {}
        self.fills: list[tuple[str, int, str]] = []  # (source, seq, ticker) in journal order
        self._seq: dict[str, int] = {}
        writer = JournalWriter(self.path)
        self.engine = Engine(Book(TICKERS), journal=writer)
        market = Market(TICKERS, seed=3)
        self.fill("desk-1", *market.next_fill())  # waits for the first split
        self.split(FIRST_SPLIT)
        self.send(fill_message("desk-2", self.next_seq("desk-2"), "NOPE", 1.0, 1))  # rejected
        for n in range(2, FILLS_BEFORE_CHECKPOINT + FILLS_AFTER_CHECKPOINT + 1):
            if n == SECOND_SPLIT_AFTER + 1:
                self.split(SECOND_SPLIT)
            self.fill(f"desk-{n % 2 + 1}", *market.next_fill())
            if n == FILLS_BEFORE_CHECKPOINT:
                self.engine.checkpoint(self.checkpoint)
        writer.close()

    def next_seq(self, source: str) -> int:
        self._seq[source] = self._seq.get(source, 0) + 1
        return self._seq[source]

    def fill(self, source: str, ticker: str, price: float, quantity: int) -> None:
        seq = self.next_seq(source)
        self.fills.append((source, seq, ticker))
        self.send(fill_message(source, seq, ticker, price, quantity))

    def split(self, splits: dict[str, float]) -> None:
        self.send(split_message("aum", self.next_seq("aum"), splits))

    def send(self, message: dict) -> None:
        self.engine.receive(pack(message))
        for output in self.engine.commit():
            topic, body = read_event(encode_output(output, "test"))
            if topic == TOPIC_ALLOCATION:
                self.allocations[(body["source"], body["seq"])] = body["allocations"]

    def edit_fill(self, source: str, seq: int, price_units=None, quantity=None) -> None:
        """Change one fill record and recompute its CRC, so the journal still reads."""
        out = bytearray(self.path.read_bytes()[: records_start(self.path)])
        for _, record in read_records(self.path):
            if record[:3] == ["F", source, seq]:
                record[4] = record[4] if price_units is None else price_units
                record[5] = record[5] if quantity is None else quantity
            payload = msgpack.packb(record, use_bin_type=True)
            out += RECORD_HEADER.pack(len(payload), zlib.crc32(payload)) + payload
        self.path.write_bytes(bytes(out))

    def fill_record(self, number: int) -> list:
        """The journal record of the `number`-th fill (from 1)."""
        fills = [r for _, r in read_records(self.path) if r[0] == "F"]
        return fills[number - 1]


@pytest.fixture
def journal(tmp_path) -> Journal:
    return Journal(tmp_path)


def audit(*args: str) -> int:
    return cli.main(["audit", *map(str, args)])


def blotter_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


# -- listing -------------------------------------------------------------------------------
def test_the_table_lists_every_allocation_with_its_inputs(journal, capsys):
    assert audit("--journal", journal.path) == 0
    out = capsys.readouterr().out
    total = len(journal.allocations)
    assert f"{total} of {total} fills listed" in out
    for source, seq, _ in journal.fills:
        assert f"{source}#{seq}" in out
    for heading in ("Value before", "Target value", "Shortfall", "Shares", "After", "aum#2"):
        assert heading in out


def test_the_table_filters_by_account_and_ticker(journal, capsys):
    assert audit("--journal", journal.path, "--account", "acct-d", "--ticker", "XOM") == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if "acct-" in line]
    assert rows and all("acct-d" in row for row in rows)
    xom_after_second_split = [
        (s, q) for n, (s, q, t) in enumerate(journal.fills, 1) if t == "XOM" and n > 20
    ]
    assert f"{len(xom_after_second_split)} of {len(journal.allocations)} fills listed" in out
    assert "AAPL" not in out and "MSFT" not in out


def test_the_csv_blotter_has_the_fix_header_and_a_row_per_fill_and_account(journal, capsys):
    assert audit("--journal", journal.path, "--csv") == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0] == (
        "AllocID,Symbol,Side,Quantity,AvgPx,AllocAccount,AllocQty,AllocNetMoney,"
        "FillSource,FillSeq,FillNo,SplitID"
    )
    assert tuple(text.splitlines()[0].split(",")) == tuple(BLOTTER_COLUMNS)
    rows = blotter_rows(text)
    published = {
        (source, seq, account): count
        for (source, seq), shares in journal.allocations.items()
        for account, count in shares.items()
        if count
    }
    assert len(rows) == len(published)
    for row in rows:
        key = (row["FillSource"], int(row["FillSeq"]), row["AllocAccount"])
        assert published[key] == int(row["AllocQty"])
        assert row["AllocID"] == f"{row['FillSource']}#{row['FillSeq']}"
        net = int(row["AllocQty"]) * round(float(row["AvgPx"]) * 100)
        assert round(float(row["AllocNetMoney"]) * 100) == net


def test_since_source_and_output_select_what_the_blotter_holds(journal, tmp_path, capsys):
    output = tmp_path / "blotter.csv"
    args = ("--csv", "--since", 25, "--source", "desk-1", "--output", output)
    assert audit("--journal", journal.path, *args) == 0
    assert capsys.readouterr().out == ""
    rows = blotter_rows(output.read_text())
    assert rows and {row["FillSource"] for row in rows} == {"desk-1"}
    assert min(int(row["FillNo"]) for row in rows) >= 25
    expected = {(s, q) for n, (s, q, _) in enumerate(journal.fills, 1) if n >= 25 and s == "desk-1"}
    assert {(row["FillSource"], int(row["FillSeq"])) for row in rows} == expected


# -- verify --------------------------------------------------------------------------------
def test_verify_passes_on_a_good_journal_with_its_checkpoint(journal, capsys):
    assert audit("--journal", journal.path, "--verify") == 0
    out = capsys.readouterr().out
    assert out.startswith("audit verify: OK:")
    fills = FILLS_BEFORE_CHECKPOINT + FILLS_AFTER_CHECKPOINT
    assert f"{fills} allocations of {fills} fills match" in out
    assert "1 rejections" in out and "checkpoint" in out and "recovers the same book" in out


def test_verify_through_the_module_entry_point(journal):
    done = subprocess.run(
        [sys.executable, "-m", "controller", "audit", "--journal", str(journal.path), "--verify"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("audit verify: OK:") and done.stderr == ""


@pytest.mark.parametrize("edit", ["quantity", "quantity-longer", "price"])
def test_verify_names_a_fill_edited_before_the_checkpoint(journal, capsys, edit):
    source, seq, ticker, price, quantity, _ = journal.fill_record(12)[1:]
    if edit == "quantity":
        journal.edit_fill(source, seq, quantity=quantity + 1)
    elif edit == "quantity-longer":  # a bigger number: the record changes length
        journal.edit_fill(source, seq, quantity=quantity + 100_000)
    else:
        journal.edit_fill(source, seq, price_units=price + 10_000)
    assert audit("--journal", journal.path, "--verify") == 1
    err = capsys.readouterr().err
    assert err.startswith("audit verify: FAILED: ")
    # A price edit may have twins the checkpoint cannot tell apart; all are named.
    assert f"fill {source}#{seq} (fill #12, {ticker} " in err
    original = f"{ticker} {quantity:,} @ {price // 10_000 / 100:.2f}"
    assert original in err  # what the controller applied, recovered from the checkpoint


def test_an_edit_after_the_checkpoint_needs_a_blotter_to_be_seen(journal, tmp_path, capsys):
    blotter = tmp_path / "blotter.csv"
    assert audit("--journal", journal.path, "--csv", "--output", blotter) == 0
    source, seq, *_ = journal.fill_record(FILLS_BEFORE_CHECKPOINT + 5)[1:]
    journal.edit_fill(source, seq, quantity=7)
    assert audit("--journal", journal.path, "--verify") == 0  # inputs after it: no trace
    capsys.readouterr()
    assert audit("--journal", journal.path, "--verify", "--against", blotter) == 1
    err = capsys.readouterr().err
    assert f"FAILED: fill {source}#{seq} (fill #{FILLS_BEFORE_CHECKPOINT + 5}" in err
    assert "the blotter (line" in err


def test_verify_against_a_matching_blotter_counts_its_fills(journal, tmp_path, capsys):
    blotter = tmp_path / "blotter.csv"
    assert audit("--journal", journal.path, "--csv", "--output", blotter) == 0
    assert audit("--journal", journal.path, "--verify", "--against", blotter) == 0
    fills = FILLS_BEFORE_CHECKPOINT + FILLS_AFTER_CHECKPOINT
    assert f"{fills} blotter fills match" in capsys.readouterr().out


def test_verify_checks_the_book_against_an_independent_allocate(journal, capsys, monkeypatch):
    def first_account_takes_all(accounts, values, weights, price, quantity, ranks=None):
        return [quantity] + [0] * (len(accounts) - 1)

    broken = book_module.Rule("broken", first_account_takes_all, allocate_sell_integral)
    monkeypatch.setattr(book_module, "exact_rule", lambda: broken)
    assert audit("--journal", journal.path, "--verify") == 1
    err = capsys.readouterr().err
    source, seq, _ = journal.fills[0]
    assert f"FAILED: fill {source}#{seq} (fill #1, " in err
    assert "allocate() on exact fractions gives" in err


def test_a_damaged_checkpoint_fails_verification(journal, capsys):
    journal.checkpoint.write_bytes(b"not a checkpoint")
    assert audit("--journal", journal.path, "--verify") == 1
    assert "checkpoint" in capsys.readouterr().err


def test_without_a_checkpoint_verify_checks_the_allocations_only(journal, capsys):
    journal.checkpoint.unlink()
    assert audit("--journal", journal.path, "--verify") == 0
    assert "no checkpoint to compare with" in capsys.readouterr().out


# -- bad input -----------------------------------------------------------------------------
def test_a_missing_journal_is_exit_2_with_a_message(tmp_path, capsys):
    assert audit("--journal", tmp_path / "nope.journal") == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_corrupt_journal_is_exit_2_naming_the_offset(journal, capsys):
    data = bytearray(journal.path.read_bytes())
    first = records_start(journal.path)
    data[first + RECORD_HEADER.size + 2] ^= 0xFF  # first record's payload, CRC kept
    journal.path.write_bytes(bytes(data))
    assert audit("--journal", journal.path, "--verify") == 2
    assert f"corrupt record at offset {records_start(journal.path)}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--since", "2024-06-01T09:30"], "takes a fill number"),
        (["--since", "0"], "fill numbers start at 1"),
        (["--verify", "--account", "acct-a"], "--verify checks the whole journal"),
        (["--against", "x.csv"], "add --verify"),
        (["--output", "x.csv"], "add --csv"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(journal, capsys, args, message):
    with pytest.raises(SystemExit) as stopped:
        audit("--journal", journal.path, *args)
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err
