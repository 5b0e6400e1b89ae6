"""The position server's terminal views: tables that fit, names shown literally, one set of
units, defensive reading of snapshots, and a process that fails loudly instead of hanging."""

from __future__ import annotations

import io
import json
import signal
import threading

import pytest
import zmq
from desk_snapshots import START, TICKERS, TRICKY_NAMES, busy_snapshot, snapshot
from helpers import Running, python_module, wait_for
from rich.console import Console

from common.protocol import TOPIC_POSITIONS, event
from positions import cli
from positions.desk import MalformedSnapshot, desk_json, local_time, read_snapshot
from positions.live import LiveDisplay
from positions.service import PositionServer, Update
from positions.view import NEVER_MOVE, desk_view

WIDTHS = (80, 120, 200)


def screen(renderable, width: int, styles: bool = False) -> str:
    console = Console(record=True, width=width, file=io.StringIO(), force_terminal=styles)
    console.print(renderable)
    return console.export_text(styles=styles)


def every_number(raw: dict) -> list[str]:
    """Each number of the snapshot as the tables print it."""
    desk = read_snapshot(raw)
    numbers = [f"{desk.total_book_value:,.2f}", f"{desk.total_market_value:,.2f}"]
    numbers += [f"{p:,.2f}" for p in desk.prices.values()]
    numbers += [f"{n:,}" for n in desk.total_positions.values()]
    for row in desk.accounts:
        numbers += [f"{row.book_value:,.2f}", f"{row.market_value:,.2f}"]
        numbers += [f"{row.weight_pct:.3f}", f"{row.target_pct:.3f}"]
        numbers += [f"{row.deviation_bp:+,.1f}", f"{row.deviation_value:+,.2f}"]
        numbers += [f"{n:,}" for n in row.positions.values()]
    return numbers


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("live", [False, True], ids=["plain", "live"])
def test_tables_fit_the_width_and_show_every_name_and_number_in_full(width, live):
    raw = busy_snapshot()
    desk = read_snapshot(raw)
    now = START + 5 if live else None
    text = screen(desk_view(desk, [], width, now=now), width)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width
    assert "…" not in text
    cells = {cell for line in lines for cell in line.split("  ") if cell.strip()}
    cells = {cell.strip() for cell in cells}
    for name in TRICKY_NAMES + ("ACC-01", "ACC-02"):
        assert name in cells, name
    for ticker in TICKERS:
        assert ticker in text
    for number in every_number(raw):
        assert number in cells, number


def test_the_header_says_split_time_zone_counts_and_the_rows_say_prices():
    raw = busy_snapshot()
    desk = read_snapshot(raw, first_seen=START - 30)
    text = screen(desk_view(desk, [], 120), 120)
    assert "Positions #1" in text
    assert local_time(START) in text  # date, time and zone
    assert local_time(START, "%Z") in text
    assert f"Split in force: aum#1, first seen {local_time(START - 30, '%H:%M:%S %Z')}" in text
    assert "1,234 fills allocated" in text and "4,321 rejected" in text
    assert "8,765 duplicates, 6 accounts" in text
    assert "Last price" in text
    received = {**raw, "split": {"source": "aum", "seq": 1, "received": START - 5}}
    text = screen(desk_view(read_snapshot(received), [], 120), 120)
    assert f"aum#1, received {local_time(START - 5, '%H:%M:%S %Z')}" in text
    no_split = screen(desk_view(read_snapshot(snapshot({}, split=None)), [], 80), 80)
    assert "none yet" in no_split


def test_why_a_deviation_persists_is_said_only_when_an_account_is_beyond_the_alert():
    beyond = screen(desk_view(read_snapshot(busy_snapshot()), [], 200), 200)
    assert NEVER_MOVE in beyond.replace("\n", " ")
    on_target = snapshot({"A": 50.0, "B": 50.0}, {"A": {"AAPL": 10}, "B": {"AAPL": 10}})
    assert "never move" not in screen(desk_view(read_snapshot(on_target), [], 200), 200)


@pytest.mark.parametrize("live", [False, True], ids=["plain", "live"])
def test_markup_like_names_are_shown_literally(live):
    raw = busy_snapshot(instance="[/]", split=("[bold red]aum", 3))
    notice = "controller restarted ([/] -> [red]x)"
    view = desk_view(read_snapshot(raw), [notice], 120, now=START if live else None)
    for styles in (False, True):
        text = screen(view, 120, styles=styles)
        for name in TRICKY_NAMES:
            assert name in text
        assert notice in text and "[bold red]aum#3" in text


def test_json_and_tables_share_units_named_in_the_fields():
    raw = snapshot({"A": 75.0, "B": 25.0}, {"A": {"AAPL": 1}, "B": {"AAPL": 1}})
    document = desk_json(read_snapshot(raw), ["a notice"], restarts=1, missed=2)
    a = document["accounts"]["A"]
    assert a["weight_pct"] == pytest.approx(50.0)
    assert a["target_pct"] == pytest.approx(75.0)
    assert a["deviation_bp"] == pytest.approx(-2500.0)  # the tables' unit, not percent points
    assert a["deviation_value"] == pytest.approx(100.0 - 0.75 * 200.0)
    assert a["book_value"] == pytest.approx(100.0) and "deviation" not in a
    assert document["totals"]["book_value"] == pytest.approx(200.0)
    assert document["counts"]["fills"] == 1234 and document["notices"] == ["a notice"]
    assert (document["controller_restarts"], document["snapshots_missed"]) == (1, 2)
    json.dumps(document)  # plain JSON
    text = screen(desk_view(read_snapshot(raw), [], 120), 120)
    assert "-2,500.0" in text and "-50.00" in text


@pytest.mark.parametrize(
    "broken, says",
    [
        ([1, 2], "a snapshot must be a map"),
        ({"accounts": []}, "accounts must be a map"),
        ({"accounts": {"A": {"weight": "lots"}}}, "A.weight must be a number"),
        ({"totals": {"positions": {"AAPL": 1.5}}}, "totals.positions[AAPL] must be an integer"),
        ({"split": "aum#1"}, "split must be a map or nil"),
    ],
)
def test_a_malformed_snapshot_is_refused_with_a_plain_reason(broken, says):
    with pytest.raises(MalformedSnapshot, match=says.replace("[", r"\[").replace("]", r"\]")):
        read_snapshot(broken)


def test_extra_and_missing_optional_keys_are_tolerated():
    raw = snapshot({"A": 100.0}, {"A": {"AAPL": 3}})
    raw["accounts"]["A"]["colour"] = "blue"  # fields other engineers may add
    raw["paused"] = True
    raw["future"] = {"anything": [1, 2]}
    del raw["sources"], raw["interval"]
    desk = read_snapshot(raw)
    assert desk.paused is True and desk.interval == 10.0
    assert "PAUSED" in screen(desk_view(desk, [], 80), 80)


def test_a_short_live_terminal_shows_the_summary_and_says_where_positions_are():
    desk = read_snapshot(busy_snapshot(names=("ACC-01", "ACC-02", "ACC-03")))
    text = screen(desk_view(desk, [], 80, now=START, height=24), 80)
    assert len(text.splitlines()) <= 24
    assert "ACC-03" in text and "Positions per ticker: " in text
    tall = screen(desk_view(desk, [], 80, now=START, height=200), 80)
    assert "Positions (shares)" in tall


def test_a_drawing_error_in_the_live_view_is_raised_in_the_loop(monkeypatch):
    display = LiveDisplay(Console(file=io.StringIO(), width=80, force_terminal=True))
    update = Update(read_snapshot(busy_snapshot()), [], 0, 0)

    def broken(*_args, **_kwargs):
        raise RuntimeError("cannot draw")

    monkeypatch.setattr("positions.live.desk_view", broken)
    with pytest.raises(RuntimeError, match="live view failed"), display:
        display.show(update)


def publish_until(pub, condition, snapshots, timeout=15.0):
    """Publish snapshots (seq 1, 2, ...) until `condition()`: the subscriber may not have
    joined yet, so one message alone could be lost."""
    seq = 0

    def sent_and_true():
        nonlocal seq
        seq += 1
        pub.send_multipart(event(TOPIC_POSITIONS, snapshots(seq)))
        return condition()

    return wait_for(sent_and_true, timeout, "the subscriber to act on a snapshot")


def test_the_server_skips_malformed_messages_and_shows_only_the_newest(ctx):
    pub = ctx.socket(zmq.PUB)
    pub.bind("tcp://127.0.0.1:*")
    endpoint = pub.getsockopt(zmq.LAST_ENDPOINT).decode()
    shown: list[Update] = []
    recorded: list[dict] = []
    server = PositionServer(ctx, endpoint, shown.append, record=recorded.append)
    try:
        publish_until(pub, lambda: server.step(10) and shown, lambda s: busy_snapshot(seq=s))
        joined = server.received
        pub.send_multipart([TOPIC_POSITIONS, b"\xc1 not msgpack"])
        pub.send_multipart(event(TOPIC_POSITIONS, {"accounts": "none"}))
        for seq in range(joined + 1, joined + 4):
            pub.send_multipart(event(TOPIC_POSITIONS, busy_snapshot(seq=seq)))
        wait_for(lambda: server.step(10) and server.received == joined + 3, 10, "three more")
        assert server.ignored == 2
        assert shown[-1].desk.seq == joined + 3
        assert len(recorded) == server.received  # every snapshot recorded, newest shown
    finally:
        server.close()
        pub.close()


def test_a_display_error_ends_the_server_with_exit_1(ctx, monkeypatch, capsys):
    pub = ctx.socket(zmq.PUB)
    pub.bind("tcp://127.0.0.1:*")
    endpoint = pub.getsockopt(zmq.LAST_ENDPOINT).decode()
    done = threading.Event()

    def publish():  # paces the publisher; the test waits on cli.main returning
        seq = 0
        while not done.wait(0.05):
            seq += 1
            pub.send_multipart(event(TOPIC_POSITIONS, busy_snapshot(seq=seq)))

    def broken(*_args, **_kwargs):
        raise RuntimeError("cannot draw")

    monkeypatch.setattr(cli, "desk_view", broken)
    publisher = threading.Thread(target=publish)
    publisher.start()
    try:
        assert cli.main(["--controller", endpoint, "--no-record"]) == 1
    finally:
        done.set()
        publisher.join()
        pub.close()
    assert "position server failed; exiting" in capsys.readouterr().err


@pytest.mark.timeout(60)
def test_the_process_shows_markup_names_in_80_columns_and_stops_on_sigterm(ctx, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # what the launcher or a terminal would say
    pub = ctx.socket(zmq.PUB)
    pub.bind("tcp://127.0.0.1:*")
    endpoint = pub.getsockopt(zmq.LAST_ENDPOINT).decode()
    server = Running(python_module("positions", "--controller", endpoint, "--no-record"))
    try:
        publish_until(
            pub, lambda: "Total" in server.stdout, lambda s: busy_snapshot(seq=s), timeout=30
        )
        server.process.send_signal(signal.SIGTERM)
        assert server.wait(15) == 0
    finally:
        server.stop()
        pub.close()
    out = server.stdout
    for name in TRICKY_NAMES:
        assert name in out
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "…" not in out and "Traceback" not in server.stderr
