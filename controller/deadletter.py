"""Dead letters: every rejected input, with its reason and raw bytes, kept beside the journal."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from common.protocol import Rejection


class DeadLetters:
    """Appends one JSON line per rejected message; flushed with each journal batch."""

    def __init__(self, path: str | os.PathLike, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (lives with us)
        self._clock = clock

    def write(self, raw: bytes, rejection: Rejection) -> None:
        when = datetime.fromtimestamp(self._clock(), UTC).isoformat(timespec="milliseconds")
        line = {
            "time": when,
            "reason": rejection.reason,
            "source": rejection.source,
            "seq": rejection.seq,
            "raw_hex": raw.hex(),
        }
        self._file.write(json.dumps(line) + "\n")

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()
