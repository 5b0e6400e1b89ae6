"""One log format for every process: time, process, level, message, one line per event."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s.%(msecs)03d %(process_name)s %(levelname)s %(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"


def setup(process_name: str, level: str | None = "INFO") -> None:
    """Send this process's logs to stderr in the shared format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
    handler.addFilter(_Named(process_name))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level or "INFO")


class _Named(logging.Filter):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.process_name = name

    def filter(self, record: logging.LogRecord) -> bool:
        record.process_name = self.process_name
        return True
