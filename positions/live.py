"""The live display: the newest snapshot redrawn in place, its age ticking between snapshots."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console, RenderableType
from rich.live import Live
from rich.text import Text

from positions.service import SILENCE_INTERVALS, Update
from positions.view import DEVIATION_ALERT_BPS, desk_view, waiting_view

log = logging.getLogger(__name__)

REFRESH_PER_SECOND = 2  # redraws a second, so the snapshot age keeps moving


class LiveDisplay:
    """Shows each snapshot handed to `show` in one table that rich.live redraws in place.

    Use it as a context manager around the position server's loop, and call `check` from
    the loop: rich redraws from its own thread, so an error while drawing is kept here and
    raised in the loop, which then ends the process (a display that cannot draw must not
    leave a process that looks alive).
    """

    def __init__(
        self,
        console: Console,
        alert_bps: float = DEVIATION_ALERT_BPS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.alert_bps = alert_bps
        self.clock = clock
        self.console = console
        self.failure: BaseException | None = None
        self._latest: Update | None = None
        self._reroute_logs = sys.stderr.isatty()
        self._saved_streams: list[tuple[logging.StreamHandler, Any]] = []
        self.live = Live(
            console=console,
            refresh_per_second=REFRESH_PER_SECOND,
            redirect_stderr=self._reroute_logs,
            get_renderable=self.render,
        )

    def show(self, update: Update) -> None:
        """Make `update` the one on screen (the PositionServer's `show` callback)."""
        self._latest = update  # one assignment: the refresh thread reads it
        self.live.refresh()
        self.check()

    def check(self) -> None:
        """Raise the error the refresh thread met while drawing, if any."""
        if self.failure is not None:
            raise RuntimeError("the live view failed while drawing") from self.failure

    def render(self) -> RenderableType:
        """The screen as of now: called by rich on every refresh (from its thread)."""
        if self.failure is not None:
            return Text("")
        try:
            return self._render()
        except Exception as exc:  # noqa: BLE001 - any error is reported by check()
            self.failure = exc
            return Text("")

    def _render(self) -> RenderableType:
        update = self._latest
        if update is None:
            return waiting_view()
        return desk_view(
            update.desk,
            update.notices,
            width=self.console.width,
            height=self.console.height,
            alert_bps=self.alert_bps,
            now=self.clock(),
            restarts=update.restarts,
            missed=update.missed,
            stale_after=SILENCE_INTERVALS * update.desk.interval,
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
