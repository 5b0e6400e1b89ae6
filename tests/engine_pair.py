"""Two engines fed the same inputs, the pure Python one (the reference) and the compiled one,
for the tests that hold the compiled path to the reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.protocol import DEFAULT_TICKERS, encode_output
from controller.book import BOOK, Book
from controller.engine import Engine
from controller.journal import JournalHeader, JournalWriter

TICKERS = DEFAULT_TICKERS[:4]
PAGE = 4096  # the journals pre-allocate a page at a time: small files to compare


class EnginePair:
    """The same inputs into a Python engine and a compiled one, compared after each batch."""

    def __init__(
        self,
        directory: Path,
        books: tuple[Book, Book] | None = None,
        valuation: str = BOOK,
        **engine: Any,
    ) -> None:
        header = JournalHeader.new(valuation)
        self.paths = [directory / "python.jnl", directory / "compiled.jnl"]
        made = books or (Book(TICKERS, valuation=valuation), Book(TICKERS, valuation=valuation))
        self.engines = [
            Engine(
                book,
                JournalWriter(path, "interval", 3600.0, header=header, preallocate=PAGE),
                compiled=compiled,
                **engine,
            )
            for book, path, compiled in zip(made, self.paths, (False, True), strict=True)
        ]
        assert self.engines[0].fast is None and self.engines[1].fast is not None

    def receive(self, raw: bytes, sender: str | None = None) -> None:
        for engine in self.engines:
            engine.receive(raw, sender)

    def compare(self) -> None:
        """The same frames, journal bytes, book (as a state), sequencer and counts."""
        python, compiled = (
            [encode_output(o, "instance") for o in engine.commit()] for engine in self.engines
        )
        assert compiled == python
        reference, fast = self.engines
        assert fast.book.to_state() == reference.book.to_state()
        assert fast.sequencer.last_seq == reference.sequencer.last_seq
        assert fast.delivery() == reference.delivery()
        assert fast.refused == reference.refused
        assert self.paths[1].read_bytes() == self.paths[0].read_bytes()

    @property
    def handled(self) -> int:
        fast = self.engines[1].fast
        assert fast is not None
        return int(fast.counts()["handled"])
