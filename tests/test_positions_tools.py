"""The position server's tools: the live view, the SQLite record and the drift report."""

from __future__ import annotations

import io
import logging
import re
import signal
import sqlite3

import pytest
import zmq
from helpers import FakeClock, Running, python_module, wait_for
from rich.console import Console

from common.protocol import (
    DEFAULT_TICKERS,
    TOPIC_POSITIONS,
    Fill,
    build_split,
    event,
    fill_message,
    pack,
    split_message,
)
from controller.book import Book
from controller.engine import Engine
from controller.journal import JournalWriter, encode_input
from controller.snapshot import SnapshotMeta, build_snapshot
from positions import cli, report
from positions.desk import read_snapshot
from positions.live import LiveDisplay
from positions.record import Recorder, open_for_reading, read_runs, read_snapshots
from positions.service import SnapshotWatcher, Update
from positions.view import BAR_WIDTH, TARGET_MARK, desk_view, waiting_view, weight_bar

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
START = 1_700_000_000.0  # a wall-clock time for recorded snapshots


def engine_snapshot(
    fills: list[tuple[str, float, int]],
    splits: list[dict[str, float]],
    seq: int = 1,
    instance: str = "run-a",
    when: float = START,
) -> dict:
    """A real controller snapshot after the given splits, then fills, went through an Engine."""
    engine = Engine(Book(DEFAULT_TICKERS))
    for n, split in enumerate(splits, 1):
        engine.receive(pack(split_message("aum", n, split)))
    for n, (ticker, price, quantity) in enumerate(fills, 1):
        engine.receive(pack(fill_message("desk", n, ticker, price, quantity)))
    engine.commit()
    meta = SnapshotMeta(seq=seq, instance=instance, time=when, interval=10.0)
    return build_snapshot(engine.book, engine.delivery(), meta, engine.sequencer.last_seq).to_body()


SPLIT = {"acct-alpha": 50.0, "acct-beta": 30.0, "acct-gamma": 20.0}
FILLS = [(ticker, 100.0 + i, 1_000 + 7 * i) for i, ticker in enumerate(DEFAULT_TICKERS)]


@pytest.fixture(autouse=True)
def keep_logging():
    """main() sets up logging on the stderr of the moment; put the test's back after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def snapshot():
    snap = engine_snapshot(FILLS, [SPLIT])
    snap["counts"].update(rejected=4321, pending=0, duplicates=8765)
    return snap


def rendered(renderable) -> str:
    console = Console(record=True, width=250, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


# -- the live view -------------------------------------------------------------------------
def live_view(snapshot, notices, now, restarts=0, missed=0, alert_bps=50):
    desk = read_snapshot(snapshot)
    return desk_view(desk, notices, 250, alert_bps, now=now, restarts=restarts, missed=missed)


def test_live_view_shows_every_account_ticker_and_the_header_counts(snapshot):
    text = rendered(live_view(snapshot, [], now=START + 7, restarts=2, missed=1))
    for account in SPLIT:
        assert account in text
    for ticker in DEFAULT_TICKERS:
        assert ticker in text
    assert f"{len(FILLS)} fills allocated" in text
    assert "4,321 rejected" in text
    assert "0 pending" in text
    assert "8,765 duplicates" in text
    assert "age 7 s" in text
    assert "2 controller restart(s)" in text
    assert "1 snapshot(s) missed" in text
    assert "aum#1" in text  # the split in force


def test_live_view_before_any_snapshot_says_it_is_waiting():
    assert "Waiting for the first positions snapshot" in rendered(waiting_view())


def test_deviation_beyond_the_alert_threshold_is_coloured(snapshot):
    row = snapshot["accounts"]["acct-alpha"]
    row["weight"] = row["target"] + 0.75  # percentage points: 75 bp
    strict = Console(record=True, width=250, file=io.StringIO(), force_terminal=True)
    strict.print(live_view(snapshot, [], now=START, alert_bps=50))
    lenient = Console(record=True, width=250, file=io.StringIO(), force_terminal=True)
    lenient.print(live_view(snapshot, [], now=START, alert_bps=100))
    red = re.compile(r"\x1b\[1;31m *\+75\.0")
    assert red.search(strict.export_text(styles=True))
    plain = lenient.export_text(styles=True)
    assert "+75.0" in plain and not red.search(plain)


def test_weight_bar_fills_for_the_largest_and_marks_the_target():
    assert weight_bar(40.0, 40.0, 40.0).plain == "█" * BAR_WIDTH
    half = weight_bar(20.0, 40.0, 40.0).plain
    assert half == "█" * (BAR_WIDTH // 2) + " " * (BAR_WIDTH // 2 - 1) + TARGET_MARK
    assert weight_bar(0.0, 0.0, 0.0).plain == " " * BAR_WIDTH


def test_live_display_redraws_in_place_and_ages_without_new_snapshots(snapshot):
    out = io.StringIO()
    console = Console(file=out, width=250, force_terminal=True)
    clock = FakeClock(start=START + 3)
    display = LiveDisplay(console, clock=clock)
    watcher = SnapshotWatcher()
    watcher.observe({"instance": "old", "seq": 9})
    notices = watcher.observe(snapshot)
    with display:
        display.show(Update(read_snapshot(snapshot), notices, watcher.restarts, watcher.missed))
        assert "age 3 s" in rendered(display.render())
        clock.advance(40)  # no new snapshot: the age still moves, and turns stale
        assert "age 43 s" in rendered(display.render())
    screen = out.getvalue()
    assert "acct-gamma" in screen and "1 controller restart(s)" in screen
    assert "\x1b[" in screen  # cursor control: redrawn, not appended


# -- the record ----------------------------------------------------------------------------
def test_recorder_writes_rows_and_keeps_them_across_reopening(tmp_path, snapshot):
    path = tmp_path / "sub" / "positions.sqlite"
    recorder = Recorder(path, clock=lambda: START + 1)
    assert recorder.write(snapshot)
    assert not recorder.write(snapshot)  # the same instance and seq once only
    recorder.close()

    again = Recorder(path)
    later = {**snapshot, "seq": 2, "time": START + 10}
    assert again.write(later)
    assert not again.write({"seq": 3})  # malformed: logged, not recorded, no crash
    again.close()

    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT COUNT(*) FROM snapshots").fetchone()[0] == 2
    assert db.execute("SELECT COUNT(*) FROM account_rows").fetchone()[0] == 2 * len(SPLIT)
    first = db.execute("SELECT fills, duplicates, split_seq FROM snapshots WHERE seq = 1")
    assert first.fetchone() == (len(FILLS), 8765, 1)
    db.close()

    reader = open_for_reading(path)
    recorded = read_snapshots(reader)
    assert [(s.instance, s.seq) for s in recorded] == [("run-a", 1), ("run-a", 2)]
    row = snapshot["accounts"]["acct-beta"]
    assert recorded[0].weights["acct-beta"] == pytest.approx(row["weight"])
    assert recorded[0].targets["acct-beta"] == pytest.approx(30.0)
    assert [run.snapshots for run in read_runs(reader)] == [2]
    reader.close()


# -- the drift report ----------------------------------------------------------------------
def write_journal(path, items) -> None:
    writer = JournalWriter(path)
    for item in items:
        writer.append(encode_input(item))
    writer.commit()
    writer.close()


def fill(seq: int, quantity: int) -> Fill:
    return Fill("desk", seq, "AAPL", 10 * 10**6, quantity)  # $10 a share


@pytest.fixture
def journal(tmp_path):
    """Four fills of $10 shares for A and B: 50/50 for three fills, then 75/25.

    fill 1 (1 share)  -> A         weights 100/0   deviation 5000 bp each
    fill 2 (1 share)  -> B         weights 50/50   0
    fill 3 (2 shares) -> A 1, B 1  weights 50/50   0
    split 75/25
    fill 4 (4 shares) -> A 4       weights 75/25   0 (60 of 80 dollars)
    """
    path = tmp_path / "controller.journal"
    write_journal(
        path,
        [
            build_split("aum", 1, {"A": 50.0, "B": 50.0}),
            fill(1, 1),
            fill(2, 1),
            fill(3, 2),
            build_split("aum", 2, {"A": 75.0, "B": 25.0}),
            fill(4, 4),
        ],
    )
    return path


def test_journal_history_replays_each_fill(journal):
    history = report.history_from_journal(journal)
    assert [p.x for p in history.points] == [1, 2, 3, 4]
    assert [p.weights["A"] for p in history.points] == [100.0, 50.0, 50.0, 75.0]
    assert [p.targets["A"] for p in history.points] == [50.0, 50.0, 50.0, 75.0]
    assert history.split_changes == [4]


def test_tracking_error_for_a_hand_computed_case(journal):
    errors = report.tracking_errors(report.history_from_journal(journal))
    assert set(errors) == {"A", "B"}
    for error in errors.values():
        assert error.samples == 4
        assert error.mean_bps == pytest.approx(5000 / 4)
        assert error.max_bps == pytest.approx(5000)
    assert (errors["B"].weight, errors["B"].target) == pytest.approx((25.0, 25.0))


def test_report_from_a_journal_writes_a_png_with_a_line_per_series(tmp_path, journal, capsys):
    figure = report.build_figure(report.history_from_journal(journal))
    lines = figure.axes[0].get_lines()
    assert len(lines) == 2 * 2 + 1  # weight and target per account, one split change
    assert sum(line.get_linestyle() == "--" for line in lines) == 2

    output = tmp_path / "drift.png"
    assert cli.main(["report", "--journal", str(journal), "--output", str(output)]) == 0
    assert output.read_bytes().startswith(PNG_SIGNATURE)
    summary = capsys.readouterr().out
    assert "1,250.0" in summary and "5,000.0" in summary


def record_two_runs(path) -> None:
    """Run one: a 60/40 split, then 50/50; run two restarts the controller on 50/50."""
    recorder = Recorder(path)
    recorder.write(engine_snapshot([], [{"X": 60.0, "Y": 40.0}], seq=1, when=START))  # no fills
    first = [("AAPL", 10.0, 10)]
    recorder.write(engine_snapshot(first, [{"X": 60.0, "Y": 40.0}], seq=2, when=START + 10))
    both = [{"X": 60.0, "Y": 40.0}, {"X": 50.0, "Y": 50.0}]
    recorder.write(engine_snapshot(first * 2, both, seq=3, when=START + 20))
    recorder.write(engine_snapshot(first * 3, both, seq=1, instance="run-b", when=START + 30))
    recorder.close()


def test_report_from_a_record_charts_time_and_marks_split_changes(tmp_path, capsys):
    path = tmp_path / "positions.sqlite"
    record_two_runs(path)
    history = report.history_from_record(path)
    assert len(history.points) == 3  # the snapshot before any fill is left out
    assert len(history.split_changes) == 1
    assert len(report.build_figure(history).axes[0].get_lines()) == 2 * 2 + 1

    output = tmp_path / "drift.png"
    assert cli.main(["report", "--record", str(path), "--output", str(output)]) == 0
    assert output.read_bytes().startswith(PNG_SIGNATURE)
    out = capsys.readouterr().out
    assert "run-a" in out and "run-b" in out  # several runs: they are listed

    one_run = report.history_from_record(path, run="run-b")
    assert len(one_run.points) == 1 and not one_run.split_changes


@pytest.mark.parametrize(
    "source",
    [
        ["--journal", "{tmp}/missing.journal"],
        ["--record", "{tmp}/missing.sqlite"],
        ["--record", "{tmp}/empty.sqlite"],
        ["--record", "{tmp}/not-sqlite.sqlite"],
        ["--record", "{tmp}/two-runs.sqlite", "--run", "run-z"],
    ],
)
def test_report_exits_2_when_the_source_is_missing_or_empty(tmp_path, capsys, source):
    Recorder(tmp_path / "empty.sqlite").close()
    (tmp_path / "not-sqlite.sqlite").write_text("hello, not a database")
    record_two_runs(tmp_path / "two-runs.sqlite")
    argv = ["report", *(a.format(tmp=tmp_path) for a in source), "--output", "x.png"]
    assert cli.main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("positions report: ") and "Traceback" not in error
    assert not (tmp_path / "x.png").exists()


# -- the command line ----------------------------------------------------------------------
def test_bad_settings_exit_2_with_a_message(tmp_path, capsys):
    settings = tmp_path / "fillalloc.toml"
    settings.write_text('[positions]\nalert_bps = "lots"\n')
    for argv, says in (
        (["--config", str(settings), "--no-record"], "alert_bps must be a number"),
        (["--live", "--format", "json", "--no-record"], "--live"),
    ):
        with pytest.raises(SystemExit) as exited:
            cli.main(argv)
        assert exited.value.code == 2
        assert says in capsys.readouterr().err


def test_live_on_a_pipe_falls_back_to_plain_and_records(tmp_path):
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.bind("tcp://127.0.0.1:*")
    endpoint = pub.getsockopt(zmq.LAST_ENDPOINT).decode()
    path = tmp_path / "positions.sqlite"
    server = Running(
        python_module("positions", "--controller", endpoint, "--live", "--record", str(path))
    )
    try:
        seq = 0

        def recorded() -> bool:
            nonlocal seq
            seq += 1  # keep publishing until the subscriber has joined and recorded one
            pub.send_multipart(event(TOPIC_POSITIONS, engine_snapshot(FILLS, [SPLIT], seq=seq)))
            if not path.exists():
                return False
            try:  # the server may have created the file but not yet its schema
                with sqlite3.connect(path) as db:
                    return db.execute("SELECT COUNT(*) FROM snapshots").fetchone()[0] > 0
            except sqlite3.OperationalError:
                return False

        wait_for(recorded, 15, "a recorded snapshot")
        server.process.send_signal(signal.SIGTERM)
        assert server.wait() == 0
    finally:
        server.stop()
        pub.close(linger=0)
        ctx.term()
    assert "--live needs a terminal" in server.stderr
    assert "acct-alpha" in server.stdout and "Positions #" in server.stdout
