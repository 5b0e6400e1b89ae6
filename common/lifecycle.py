"""Signals only set a flag; each process's poll loop checks it and shuts down cleanly."""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)

#: Longest a poll loop waits before looking at the stop flag again, in milliseconds.
POLL_SLICE_MS = 100


class StopFlag:
    """Set by SIGINT/SIGTERM (once installed) or by `set()`; true once stopping."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal_name: str | None = None

    def install(self) -> StopFlag:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._on_signal)
        return self

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.signal_name = signal.Signals(signum).name
        self._event.set()

    def set(self) -> None:
        self._event.set()

    def __bool__(self) -> bool:
        return self._event.is_set()
