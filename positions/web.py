"""The live web view: a page, the snapshot as JSON, server-sent events and /metrics.

`python -m positions --http HOST:PORT` serves, from this module:

- `/` the desk page (static files in positions/static, no build step): the same header and
  tables as the terminal plus a drift chart, updated from `/events` without a reload;
- `/events` server-sent events: `history` once on connecting (the points kept so far),
  then `snapshot` for the current snapshot and every new one (the /api/snapshot document);
- `/api/snapshot` the newest snapshot as JSON (positions.desk.desk_json; 503 before one);
- `/metrics` Prometheus text exposition (positions.metrics).

aiohttp runs in its own thread with its own event loop, so the ZeroMQ loop never waits
for a browser: `show` only hands the new document over with call_soon_threadsafe. Each
event stream has a small queue; a client too slow to take its events loses the oldest
ones (every event is a full snapshot, so it only loses freshness). It binds to loopback
addresses only unless `public` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from positions.desk import desk_json
from positions.metrics import desk_registry, exposition
from positions.record import RecordedSnapshot
from positions.service import Update

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
HISTORY_POINTS = 2_000  # drift chart points kept (one per snapshot; 5.5 h at 10 s)
CLIENT_QUEUE = 8  # events queued per event stream before the oldest are dropped
HEARTBEAT_S = 15.0  # comment lines on idle streams, so dead connections are noticed
START_TIMEOUT_S = 10.0  # longest wait for the server to bind
STOP_TIMEOUT_S = 3.0  # longest wait for the server thread to finish
LOOPBACK_NAMES = ("localhost",)
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class WebError(RuntimeError):
    """The web view cannot start (bad address, not loopback, address in use) or died."""


def parse_address(text: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 as `[::1]:8080`) as (host, port); WebError when malformed."""
    host, sep, port_text = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise WebError(f"--http wants HOST:PORT (for example 127.0.0.1:8080), got {text}")
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def recorded_points(recorded: list[RecordedSnapshot]) -> list[dict[str, Any]]:
    """Chart points for recorded snapshots that had accounts (as `history_point` makes)."""
    return [
        {
            "time": snap.time,
            "split": f"{snap.split[0]}#{snap.split[1]}" if snap.split else None,
            "weights": dict(snap.weights),
            "targets": dict(snap.targets),
        }
        for snap in recorded
        if snap.fills and snap.weights
    ]


def history_point(update: Update) -> dict[str, Any]:
    """One drift chart point: time, and per account weight and target in percent."""
    desk = update.desk
    return {
        "time": desk.time,
        "split": desk.split.name if desk.split else None,
        "weights": {row.name: row.weight_pct for row in desk.accounts},
        "targets": {row.name: row.target_pct for row in desk.accounts},
    }


class WebView:
    """The HTTP server in a thread; `show` is the PositionServer's callback."""

    def __init__(
        self,
        host: str,
        port: int,
        public: bool = False,
        clock: Callable[[], float] = time.time,
        history_points: int = HISTORY_POINTS,
    ) -> None:
        if not public and not is_loopback(host):
            raise WebError(
                f"{host} is not a loopback address: the web view has no authentication, "
                "so it serves other hosts only with --http-public"
            )
        self.host, self.port = host, port
        self.url = ""
        self.clock = clock
        self.failure: BaseException | None = None
        self._latest: Update | None = None
        self._document: str | None = None
        self._history: deque[dict[str, Any]] = deque(maxlen=history_points)
        self._clients: set[asyncio.Queue[str | None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="web-view", daemon=True)
        self.registry = desk_registry(lambda: self._latest, clock)

    # -- the position server's side ------------------------------------------------------
    def seed(self, points: list[dict[str, Any]]) -> None:
        """Chart points from before this process started (from the record); call before
        `start`."""
        self._history.extend(points)

    def start(self) -> str:
        """Bind and serve; returns the page's URL. WebError if it cannot bind."""
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            raise WebError(f"the web view did not start within {START_TIMEOUT_S:.0f} s")
        if self.failure is not None:
            raise WebError(f"cannot serve on {self.host}:{self.port}: {self.failure}")
        return self.url

    def show(self, update: Update) -> None:
        """Publish a new snapshot to the page, the event streams and the metrics."""
        self._latest = update
        document = json.dumps(
            desk_json(update.desk, update.notices, update.restarts, update.missed)
        )
        point = history_point(update)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in between: stopping
                loop.call_soon_threadsafe(self._publish, document, point)

    def check(self) -> None:
        """Raise if the server thread has died (the position server then exits)."""
        if self.failure is not None or (self._ready.is_set() and not self._thread.is_alive()):
            raise WebError(f"the web view stopped: {self.failure or 'its thread ended'}")

    def close(self) -> None:
        """Stop serving: end the event streams, close the sockets, join the thread."""
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stopping.set)
            self._thread.join(STOP_TIMEOUT_S)
            if self._thread.is_alive():
                log.warning("web view did not stop within %.0f s", STOP_TIMEOUT_S)

    # -- the server thread ---------------------------------------------------------------
    def _serve(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported to the main loop by check()
            self.failure = exc
            if self._ready.is_set():
                log.error("web view failed: %s", exc)
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        runner = web.AppRunner(self._app(), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
            host, port = runner.addresses[0][:2]
            shown = f"[{host}]" if ":" in host else host
            self.url = f"http://{shown}:{port}/"
            self._ready.set()
            await self._stopping.wait()
            for queue in self._clients:
                self._offer(queue, None)
        finally:
            await runner.cleanup()

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[_security_headers])
        app.router.add_get("/", self._page)
        app.router.add_get("/events", self._events)
        app.router.add_get("/api/snapshot", self._snapshot)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_static("/static/", STATIC)
        return app

    def _publish(self, document: str, point: dict[str, Any]) -> None:
        """In the loop: keep the document and the point, queue them for every stream."""
        self._document = document
        self._history.append(point)
        for queue in self._clients:
            self._offer(queue, document)

    @staticmethod
    def _offer(queue: asyncio.Queue[str | None], item: str | None) -> None:
        """Queue `item`, dropping the oldest queued event when the client is behind."""
        if queue.full():
            queue.get_nowait()
        queue.put_nowait(item)

    # -- handlers ------------------------------------------------------------------------
    async def _page(self, _request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html")

    async def _snapshot(self, _request: web.Request) -> web.Response:
        if self._document is None:
            return web.json_response({"error": "no snapshot received yet"}, status=503)
        return web.Response(text=self._document, content_type="application/json")

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = exposition(self.registry)
        return web.Response(body=body, headers={"Content-Type": PROMETHEUS_TYPE})

    async def _events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        queue: asyncio.Queue[str | None] = asyncio.Queue(CLIENT_QUEUE)
        self._clients.add(queue)
        try:
            await _send(response, "history", json.dumps(list(self._history)))
            if self._document is not None:
                await _send(response, "snapshot", self._document)
            while True:
                try:
                    document = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
                except TimeoutError:
                    await response.write(b": heartbeat\n\n")
                    continue
                if document is None:
                    break
                await _send(response, "snapshot", document)
        except ConnectionResetError:
            pass  # the browser went away
        finally:
            self._clients.discard(queue)
        return response


async def _send(response: web.StreamResponse, name: str, data: str) -> None:
    """One server-sent event; `data` is one line of JSON (json.dumps never emits newlines)."""
    await response.write(f"event: {name}\ndata: {data}\n\n".encode())


@web.middleware
async def _security_headers(
    request: web.Request, handler: Callable[[web.Request], Any]
) -> web.StreamResponse:
    response: web.StreamResponse = await handler(request)
    if not response.prepared:
        response.headers.update(SECURITY_HEADERS)
    return response
