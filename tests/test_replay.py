"""`python -m controller replay`: the shipped example's numbers, policies and bad input."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from common.protocol import DEFAULT_TICKERS, Fill, build_split
from controller import cli
from controller.book import Book
from controller.tools.policies import BOOK, EXACT, MARKET, PRO_RATA, pro_rata_shares, run_policy
from controller.tools.replay import read_inputs

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "day.jsonl"
EXAMPLE_CSV = ROOT / "examples" / "day.csv"
UNIVERSE = frozenset(DEFAULT_TICKERS)

# The example's totals and tracking error, as docs/operators-audit-replay.md quotes them.
FILLS, SPLITS, SAMPLES = 400, 4, 2200
SHARES = {
    "AAPL": 375_746,
    "MSFT": 291_505,
    "NVDA": 180_694,
    "TSLA": 197_357,
    "JPM": 258_516,
    "XOM": 174_910,
}
BOOK_VALUE = "336,971,022.68"
MARKET_VALUE = "336,781,219.39"
BOOK_TRACKING = {EXACT: ("16.36", "404.93"), PRO_RATA: ("124.20", "505.68")}
MARKET_TRACKING = {EXACT: ("16.38", "404.94"), PRO_RATA: ("124.24", "505.71")}


def replay(*args: str) -> int:
    return cli.main(["replay", *map(str, args)])


def replay_json(capsys, *args: str) -> dict:
    assert replay(*args, "--format", "json") == 0
    return json.loads(capsys.readouterr().out)


# -- the shipped example -------------------------------------------------------------------
def test_the_example_files_are_what_make_day_writes(tmp_path):
    script = runpy.run_path(str(ROOT / "examples" / "make_day.py"))
    script["write"](tmp_path)
    assert (tmp_path / "day.jsonl").read_bytes() == EXAMPLE.read_bytes()
    assert (tmp_path / "day.csv").read_bytes() == EXAMPLE_CSV.read_bytes()


@pytest.mark.parametrize(
    "valuation, value, tracking",
    [(BOOK, BOOK_VALUE, BOOK_TRACKING), (MARKET, MARKET_VALUE, MARKET_TRACKING)],
)
def test_the_example_gives_the_documented_numbers(capsys, valuation, value, tracking):
    data = replay_json(capsys, EXAMPLE, "--policy", "both", "--valuation", valuation)
    assert (data["fills"], data["splits"]) == (FILLS, SPLITS)
    assert data["totals"]["shares"] == SHARES
    assert f"{data['totals']['value']:,.2f}" == value
    for policy, (mean, worst) in tracking.items():
        summary = data["policies"][policy]["summary"]
        assert summary["samples"] == SAMPLES
        assert (f"{summary['mean_abs_bps']:.2f}", f"{summary['max_abs_bps']:.2f}") == (mean, worst)


def test_the_table_prints_the_documented_numbers(capsys):
    assert replay(EXAMPLE, "--policy", "both") == 0
    out = capsys.readouterr().out
    assert f"400 fills, 4 splits, 1,478,728 shares, book value {BOOK_VALUE}" in out
    for policy, (mean, worst) in BOOK_TRACKING.items():
        assert f"{policy}: |weight - target| after every fill, 2,200 samples: " in out
        assert f"mean {mean} bp, max {worst} bp (ACC-03 after fill 201)" in out


def test_exact_tracks_no_worse_than_pro_rata_on_the_example(capsys):
    for valuation in (BOOK, MARKET):
        policies = replay_json(capsys, EXAMPLE, "--policy", "both", "--valuation", valuation)[
            "policies"
        ]
        exact, pro_rata = policies[EXACT]["summary"], policies[PRO_RATA]["summary"]
        assert exact["max_abs_bps"] <= pro_rata["max_abs_bps"]
        assert exact["mean_abs_bps"] <= pro_rata["mean_abs_bps"]


def test_csv_and_json_lines_give_the_same_replay(capsys):
    from_json = replay_json(capsys, EXAMPLE, "--policy", "both")
    from_csv = replay_json(capsys, EXAMPLE_CSV, "--policy", "both")
    from_json.pop("file"), from_csv.pop("file")
    assert from_json == from_csv


def test_the_exact_book_replay_is_the_controllers_book():
    items = read_inputs(EXAMPLE, UNIVERSE)
    book = Book(DEFAULT_TICKERS)
    for item in items:
        book.apply(item)
    run = run_policy(items, EXACT, BOOK)
    assert run.values() == dict(zip(book.accounts, book.values, strict=True))
    for account, held in zip(book.accounts, book.positions, strict=True):
        assert run.shares()[account] == held


def test_a_single_policy_prints_positions(capsys):
    assert replay(EXAMPLE, "--policy", "pro-rata") == 0
    out = capsys.readouterr().out
    assert "pro-rata rule" in out and "ACC-06" in out and "375,746" in out


# -- the rules -----------------------------------------------------------------------------
def test_pro_rata_gives_leftovers_by_largest_remainder_then_name():
    targets = {"b": Fraction(1, 3), "a": Fraction(1, 3), "c": Fraction(1, 3)}
    assert pro_rata_shares(targets, 2) == {"a": 1, "b": 1, "c": 0}
    targets = {"a": Fraction(1, 2), "b": Fraction(3, 10), "c": Fraction(1, 5), "d": Fraction(0)}
    shares = pro_rata_shares(targets, 7)  # 3.5, 2.1, 1.4, 0
    assert shares == {"a": 4, "b": 2, "c": 1, "d": 0}


def test_fills_before_the_first_split_wait_for_it():
    items = [
        Fill("f", 1, "AAPL", 100_000_000, 10),
        build_split("aum", 1, {"a": 50.0, "b": 50.0}),
    ]
    for policy in (EXACT, PRO_RATA):
        run = run_policy(items, policy, MARKET)
        assert run.fills == 1 and not run.pending
        assert run.shares() == {"a": {"AAPL": 5}, "b": {"AAPL": 5}}


def test_an_account_that_joins_at_the_last_split_is_reported(tmp_path, capsys):
    path = tmp_path / "late.csv"
    path.write_text(
        "type,ticker,price,quantity,splits\n"
        "split,,,,a=50;b=50\nfill,AAPL,10,4,\nsplit,,,,a=40;b=40;c=20\n"
    )
    accounts = replay_json(capsys, path, "--policy", "both")["policies"][EXACT]["accounts"]
    assert accounts["c"]["weight"] == 0 and accounts["c"]["target"] == 20
    assert accounts["c"]["max_abs_bps"] == 0  # no fill since it joined: no samples yet


# -- bad input -----------------------------------------------------------------------------
SPLIT_LINE = '{"type": "split", "splits": {"a": 60, "b": 40}}'


@pytest.mark.parametrize(
    "name, text, message",
    [
        (
            "bad.jsonl",
            SPLIT_LINE + '\n{"type": "fill", "ticker": "AAPL", "price": 1.0000001, "quantity": 5}',
            "line 2: price 1.0000001 has more than 6 decimal places",
        ),
        ("bad.jsonl", SPLIT_LINE + "\n\n[1, 2]\n", "line 3: expected a JSON object, got list"),
        ("bad.jsonl", '{"type": "split"', "line 1: not valid JSON"),
        (
            "bad.jsonl",
            SPLIT_LINE + '\n{"type": "fill", "ticker": "ZZZ", "price": 1, "quantity": 5}',
            "line 2: unknown ticker 'ZZZ'",
        ),
        (
            "bad.csv",
            "type,ticker,price,quantity,splits\nsplit,,,,a=60;b=40\nfill,AAPL,abc,10,\n",
            "line 3: price must be a number, got 'abc'",
        ),
        (
            "bad.csv",
            "type,ticker,price,quantity,splits\nsplit,,,,a=60;b=30\n",
            "line 2: percentages sum to 90, not 100",
        ),
        (
            "bad.csv",
            "type,ticker,price,quantity,splits\nsplit,,,,a=60;b\n",
            "line 2: splits entry 'b' is not ACCOUNT=PERCENT",
        ),
        ("bad.csv", "type,ticker,price,qty,splits\n", "line 1: unknown column(s) 'qty'"),
        (
            "bad.csv",
            "type,ticker,price,quantity,splits,source,seq\n"
            "split,,,,a=60;b=40,aum,5\nsplit,,,,a=60;b=40,aum,5\n",
            "line 3: seq 5 of source 'aum' does not follow 5",
        ),
        ("bad.jsonl", '{"type": "fill", "ticker": "AAPL", "price": 1, "quantity": 5}', "no split"),
        ("bad.jsonl", SPLIT_LINE, "has no fills"),
    ],
)
def test_bad_input_stops_with_exit_2_naming_the_line(tmp_path, capsys, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    assert replay(path) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"replay: {path}")
    assert message in captured.err


def test_a_missing_file_is_exit_2(tmp_path, capsys):
    assert replay(tmp_path / "nope.jsonl") == 2
    assert "does not exist" in capsys.readouterr().err


def test_the_module_entry_point_reports_bad_input_without_a_traceback(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(SPLIT_LINE + "\n[1]\n")
    done = subprocess.run(
        [sys.executable, "-m", "controller", "replay", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr == f"replay: {path} line 2: expected a JSON object, got list\n"


def test_the_example_day_with_sells_is_tracked_closer_by_the_exact_rule():
    """A third of the fills sell; the exact rule sells from accounts above target, pro-rata
    by holdings: both keep every account long, the exact rule tracks far closer."""
    items = read_inputs(EXAMPLE.with_name("day-sells.jsonl"), UNIVERSE)
    sells = [item for item in items if type(item) is Fill and item.is_sell]
    assert len(sells) > 100
    runs = {policy: run_policy(items, policy, BOOK) for policy in (EXACT, PRO_RATA)}
    for run in runs.values():
        assert run.fills == 400 and run.pending == 0
        assert all(n > 0 for held in run.shares().values() for n in held.values())
    assert runs[EXACT].shares() != runs[PRO_RATA].shares()
    totals = [
        {t: sum(h.get(t, 0) for h in run.shares().values()) for t in UNIVERSE}
        for run in runs.values()
    ]
    assert totals[0] == totals[1]  # the same shares were bought and sold under both rules
    assert runs[EXACT].overall.mean_bps < runs[PRO_RATA].overall.mean_bps / 5
