"""The live display: the newest snapshot redrawn in place, its age ticking between snapshots."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console, RenderableType
from rich.live import Live

from positions.service import SILENCE_INTERVALS, SnapshotWatcher
from positions.view import DEVIATION_ALERT_BPS, live_view

REFRESH_PER_SECOND = 2  # redraws a second, so the snapshot age keeps moving
DEFAULT_INTERVAL = 10.0  # snapshot interval assumed until a snapshot states its own


class LiveDisplay:
    """Shows each snapshot handed to `show` in one table that rich.live redraws in place.

    Use it as a context manager around the position server's loop; `attach` the server's
    SnapshotWatcher so the header can count controller restarts and missed snapshots.
    """

    def __init__(
        self,
        console: Console,
        alert_bps: float = DEVIATION_ALERT_BPS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.alert_bps = alert_bps
        self.clock = clock
        self.watcher: SnapshotWatcher | None = None
        self._latest: tuple[dict[str, Any] | None, list[str]] = (None, [])
        self._reroute_logs = sys.stderr.isatty()
        self._saved_streams: list[tuple[logging.StreamHandler, Any]] = []
        self.live = Live(
            console=console,
            refresh_per_second=REFRESH_PER_SECOND,
            redirect_stderr=self._reroute_logs,
            get_renderable=self.render,
        )

    def attach(self, watcher: SnapshotWatcher) -> None:
        """Count restarts and missed snapshots as `watcher` sees them."""
        self.watcher = watcher

    def show(self, snapshot: dict[str, Any], notices: list[str]) -> None:
        """Make `snapshot` the one on screen (the PositionServer's `show` callback)."""
        self._latest = (snapshot, notices)  # one assignment: the refresh thread reads it
        self.live.refresh()

    def render(self) -> RenderableType:
        """The screen as of now: called by rich on every refresh."""
        snapshot, notices = self._latest
        interval = (snapshot or {}).get("interval", DEFAULT_INTERVAL)
        return live_view(
            snapshot,
            notices,
            now=self.clock(),
            restarts=self.watcher.restarts if self.watcher else 0,
            missed=self.watcher.missed if self.watcher else 0,
            alert_bps=self.alert_bps,
            stale_after=SILENCE_INTERVALS * interval,
        )

    def __enter__(self) -> LiveDisplay:
        self.live.start(refresh=True)
        if self._reroute_logs:
            self._logs_through_live()
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handler, stream in self._saved_streams:
            handler.setStream(stream)
        self._saved_streams.clear()
        self.live.stop()

    def _logs_through_live(self) -> None:
        """Send log lines through rich's stderr proxy so they print above the table
        instead of tearing it (the handlers captured the real stderr at start-up)."""
        for handler in logging.getLogger().handlers:
            if type(handler) is logging.StreamHandler and handler.stream is sys.__stderr__:
                self._saved_streams.append((handler, handler.stream))
                handler.setStream(sys.stderr)
