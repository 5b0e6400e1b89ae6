"""Dead letters: every rejected input, with its reason and (the head of) its raw bytes,
kept beside the journal, within a fixed disk budget so that bad input can never fill it.

They are a courtesy, not the record (the journal is): a dead letter that cannot be written,
say on a full disk, is counted and logged, and never stops the controller."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)

#: Raw bytes kept per rejected message (as hex); the rest is counted, not stored.
MAX_STORED_BYTES = 4096
#: The file is rotated (to `<name>.1`, replacing the previous one) past this size, so dead
#: letters take at most about twice this on disk.
MAX_FILE_BYTES = 16 * 1024 * 1024


class DeadLetters:
    """Appends one JSON line per rejected message; flushed with each journal batch."""

    def __init__(
        self,
        path: str | os.PathLike,
        clock: Callable[[], float] = time.time,
        max_file_bytes: int = MAX_FILE_BYTES,
        max_stored_bytes: int = MAX_STORED_BYTES,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (lives with us)
        self._clock = clock
        self.max_file_bytes = max_file_bytes
        self.max_stored_bytes = max_stored_bytes
        self.rotations = 0
        self.lost = 0  # dead letters that could not be written

    def write(self, raw: bytes, reason: str, source: str | None, seq: int | None) -> None:
        """Record one rejected message: when, why, whose, and its first bytes as hex."""
        when = datetime.fromtimestamp(self._clock(), UTC).isoformat(timespec="milliseconds")
        line = {
            "time": when,
            "reason": reason,
            "source": source,
            "seq": seq,
            "size": len(raw),
            "raw_hex": raw[: self.max_stored_bytes].hex(),
            "truncated": len(raw) > self.max_stored_bytes,
        }
        try:
            self._file.write(json.dumps(line) + "\n")
            if self._file.tell() >= self.max_file_bytes:
                self._rotate()
        except OSError as exc:
            self._lose(exc)

    def _rotate(self) -> None:
        """Keep one previous file; start a new one."""
        self._file.close()
        os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        self.rotations += 1

    def _lose(self, exc: OSError) -> None:
        self.lost += 1
        if self.lost == 1 or self.lost % 1000 == 0:
            log.warning(
                "could not write dead letters to %s (%d lost): %s", self.path, self.lost, exc
            )

    def flush(self) -> None:
        try:
            self._file.flush()
        except OSError as exc:
            self._lose(exc)

    def close(self) -> None:
        try:
            self._file.close()
        except OSError as exc:
            self._lose(exc)
