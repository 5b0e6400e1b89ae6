"""The position server's web view: /api/snapshot, /metrics, server-sent events, the page in
a real headless Chromium, loopback only, and a real process that stops on SIGTERM."""

from __future__ import annotations

import http.client
import json
import re
import signal
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import zmq
from desk_snapshots import START, TRICKY_NAMES, busy_snapshot, snapshot
from helpers import FakeClock, Running, python_module, wait_for
from prometheus_client.parser import text_string_to_metric_families

from common.protocol import TOPIC_POSITIONS, event
from positions import cli
from positions.desk import desk_json, read_snapshot
from positions.record import Recorder
from positions.service import Update
from positions.web import WebError, WebView, parse_address

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = Path("/tmp/positions-web.png")  # kept for people to look at after a run


def update_of(raw: dict, notices=(), restarts: int = 0, missed: int = 0) -> Update:
    return Update(read_snapshot(raw), list(notices), restarts, missed)


@pytest.fixture
def clock():
    return FakeClock(start=START + 12)


@pytest.fixture
def web(clock):
    view = WebView("127.0.0.1", 0, clock=clock)
    view.start()
    yield view
    view.close()


def get(url: str) -> tuple[int, dict, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def metrics(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics by (name, labels)."""
    status, headers, body = get(url + "metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def test_addresses_are_host_and_port_and_other_hosts_need_public():
    assert parse_address("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_address("[::1]:0") == ("::1", 0)
    for bad in ("8080", "localhost:", ":80", "host:99999", "host:http"):
        with pytest.raises(WebError, match="HOST:PORT"):
            parse_address(bad)
    with pytest.raises(WebError, match="--http-public"):
        WebView("0.0.0.0", 0)
    WebView("0.0.0.0", 0, public=True)  # allowed when asked for (not started here)
    WebView("localhost", 0)


def test_snapshot_api_serves_the_documented_document(web):
    status, _, body = get(web.url + "api/snapshot")
    assert status == 503 and json.loads(body) == {"error": "no snapshot received yet"}
    raw = busy_snapshot()
    update = update_of(raw, ["controller restarted (a -> b)"], restarts=1)
    web.show(update)

    def served():
        status, headers, body = get(web.url + "api/snapshot")
        return status == 200 and (headers, json.loads(body))

    headers, document = wait_for(served, 10, "the snapshot served")
    assert headers["Content-Type"].startswith("application/json")
    assert document == json.loads(json.dumps(desk_json(update.desk, update.notices, 1, 0)))
    assert set(document["accounts"]) == set(raw["accounts"])


def test_metrics_are_scraped_in_prometheus_text(web, clock):
    assert metrics(web.url)[("fillalloc_positions_snapshot_received", ())] == 0
    raw = busy_snapshot()
    raw["counts"].update(pending=3, held=2)
    web.show(update_of(raw, restarts=2, missed=5))
    clock.advance(3)
    samples = metrics(web.url)
    assert samples[("fillalloc_positions_snapshot_received", ())] == 1
    assert samples[("fillalloc_fills_allocated_total", ())] == 1234
    assert samples[("fillalloc_rejected_total", ())] == 4321
    assert samples[("fillalloc_duplicates_total", ())] == 8765
    assert samples[("fillalloc_pending_fills", ())] == 3
    assert samples[("fillalloc_held_messages", ())] == 2
    assert samples[("fillalloc_snapshot_age_seconds", ())] == pytest.approx(15.0)
    assert samples[("fillalloc_controller_restarts_total", ())] == 2
    assert samples[("fillalloc_snapshots_missed_total", ())] == 5
    for name, row in raw["accounts"].items():  # label values come back exactly
        labels = (("account", name),)
        assert samples[("fillalloc_account_weight_percent", labels)] == pytest.approx(row["weight"])
        assert samples[("fillalloc_account_target_percent", labels)] == pytest.approx(row["target"])
        bp = samples[("fillalloc_account_deviation_bp", labels)]
        assert bp == pytest.approx(100 * row["deviation"])


def read_event(stream) -> tuple[str, str]:
    """The next server-sent event (name, data), skipping heartbeat comments."""
    name = data = ""
    while True:
        line = stream.readline().decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            data = line[len("data: ") :]
        elif line == "" and name:
            return name, data


def test_events_stream_history_then_every_new_snapshot(web):
    web.show(update_of(busy_snapshot(seq=1)))
    wait_for(lambda: get(web.url + "api/snapshot")[0] == 200, 10, "the first snapshot")
    host, port = parse_address(web.url.removeprefix("http://").rstrip("/"))
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request("GET", "/events")
        response = connection.getresponse()
        assert response.headers["Content-Type"] == "text/event-stream"
        name, data = read_event(response)  # sent once this stream is registered
        assert name == "history" and [p["time"] for p in json.loads(data)] == [START]
        assert read_event(response)[0] == "snapshot"
        web.show(update_of(busy_snapshot(seq=2, when=START + 10)))
        name, data = read_event(response)
        assert name == "snapshot" and json.loads(data)["seq"] == 2
        web.close()  # ends open streams promptly
        assert response.read() == b""
    finally:
        connection.close()


def test_the_page_is_static_with_a_strict_content_policy(web):
    status, headers, body = get(web.url)
    assert status == 200 and headers["Content-Security-Policy"] == "default-src 'self'"
    page = body.decode()
    assert "<script>" not in page  # no inline code: names could never become code
    status, _, script = get(web.url + "static/app.js")
    assert status == 200 and b"innerHTML" not in script


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium; .ci/run does)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.mark.timeout(120)
def test_the_page_shows_every_account_literally_and_updates_live(web, browser):
    first = busy_snapshot(seq=1)
    web.show(update_of(first, ["controller restarted (<b>old</b> -> [/])"]))
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(web.url)
    page.wait_for_selector("body[data-seq='1']", timeout=20_000)
    for table in ("#accounts", "#positions"):
        names = page.locator(f"{table} tr[data-account] td:first-child").all_text_contents()
        assert names == sorted(first["accounts"])
    assert page.locator("#accounts script, #positions script").count() == 0
    assert "<b>old</b> -> [/]" in page.locator("#notices").text_content()
    assert page.locator("#chart svg polyline").count() == 2 * len(first["accounts"])

    names = (*TRICKY_NAMES, "ACC-01", "ACC-02", "ACC-03 new")
    second = busy_snapshot(names=names, seq=2, when=START + 10)
    web.show(update_of(second))  # the page subscribed before it showed seq 1
    page.wait_for_selector("body[data-seq='2']", timeout=20_000)
    shown = page.locator("#accounts tr[data-account] td:first-child").all_text_contents()
    assert shown == sorted(names)
    assert page.locator("#title").text_content() == "Positions #2"
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert dialogs == []  # <script>alert(1)</script> stayed text
    page.close()


@pytest.mark.timeout(90)
def test_the_process_serves_the_web_view_and_stops_on_sigterm(ctx):
    pub = ctx.socket(zmq.PUB)
    pub.bind("tcp://127.0.0.1:*")
    endpoint = pub.getsockopt(zmq.LAST_ENDPOINT).decode()
    server = Running(
        python_module("positions", "--controller", endpoint, "--no-record", "--http", "127.0.0.1:0")
    )
    try:
        found = wait_for(
            lambda: re.search(r"web view at (http://\S+/)", server.stderr), 30, "the address"
        )
        url = found.group(1)
        seq = 0

        def served() -> bool:
            nonlocal seq
            seq += 1  # keep publishing until the subscriber has joined
            pub.send_multipart(event(TOPIC_POSITIONS, snapshot({"A": 60.0, "B": 40.0}, seq=seq)))
            return get(url + "api/snapshot")[0] == 200

        wait_for(served, 30, "a snapshot on /api/snapshot")
        assert ("fillalloc_fills_allocated_total", ()) in metrics(url)
        server.process.send_signal(signal.SIGTERM)
        assert server.wait(15) == 0
    finally:
        server.stop()
        pub.close()
    assert "Traceback" not in server.stderr


def test_an_address_in_use_exits_2_with_one_line(ctx):
    taken = WebView("127.0.0.1", 0)
    taken.start()
    try:
        port = taken.url.rstrip("/").rsplit(":", 1)[1]
        server = Running(
            python_module(
                "positions",
                "--no-record",
                "--http",
                f"127.0.0.1:{port}",
                "--controller",
                "tcp://127.0.0.1:1",
            )
        )
        assert server.wait(30) == 2
    finally:
        taken.close()
    assert "cannot start" in server.stderr and "Traceback" not in server.stderr


def test_the_chart_starts_with_the_newest_recorded_snapshots(tmp_path, clock):
    path = tmp_path / "positions.sqlite"
    recorder = Recorder(path)
    before = snapshot({"A": 60.0, "B": 40.0}, seq=1, when=START)
    before["counts"]["fills"] = 0
    recorder.write(before)  # no fills yet: not a chart point
    for seq in range(2, 6):
        held = {"A": {"AAPL": seq}, "B": {"AAPL": 10 - seq}}
        recorder.write(snapshot({"A": 60.0, "B": 40.0}, held, seq=seq, when=START + seq))
    recorder.close()
    points = cli.recorded_history(str(path))
    assert [p["time"] for p in points] == [START + seq for seq in range(2, 6)]
    assert points[-1]["weights"]["A"] == pytest.approx(50.0)
    assert points[-1]["targets"] == {"A": 60.0, "B": 40.0}
    assert cli.recorded_history(str(tmp_path / "missing.sqlite")) == []
    (tmp_path / "junk.sqlite").write_text("not a database")
    assert cli.recorded_history(str(tmp_path / "junk.sqlite")) == []

    view = WebView("127.0.0.1", 0, clock=clock)
    view.seed(points)
    view.start()
    try:
        host, port = parse_address(view.url.removeprefix("http://").rstrip("/"))
        connection = http.client.HTTPConnection(host, port, timeout=10)
        connection.request("GET", "/events")
        name, data = read_event(connection.getresponse())
        assert name == "history" and json.loads(data) == points
        connection.close()
    finally:
        view.close()
