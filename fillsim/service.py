"""The fill simulator's loop: fills at random (or steady) intervals, delivered reliably."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

from common.lifecycle import POLL_SLICE_MS, StopFlag
from common.protocol import fill_message
from common.sender import STOP_FLUSH, MessageTooLarge, ReliableSender, worth_logging
from fillsim.market import Market

log = logging.getLogger(__name__)


class FillSimulator:
    """Sends `count` fills (or forever) with exponential gaps of mean `interval`, or at a
    steady `rate` per second; finishes once every fill sent is acknowledged or rejected,
    and logs how many the controller accepted and rejected."""

    def __init__(
        self,
        sender: ReliableSender,
        market: Market,
        interval: float = 1.0,
        rate: float | None = None,
        count: int | None = None,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sender = sender
        self.market = market
        self.interval = interval
        self.rate = rate
        self.count = count
        self.clock = clock
        self.sent = 0
        self.refused = 0  # too large to send (never queued)
        self.shares_sent: dict[str, int] = {}
        self._timing = random.Random(None if seed is None else seed + 1)

    def gap(self) -> float:
        if self.rate:
            return 1.0 / self.rate
        return self._timing.expovariate(1.0 / self.interval)

    def done(self) -> bool:
        return self.count is not None and self.sent + self.refused >= self.count

    def run(self, stop: StopFlag) -> None:
        sender = self.sender
        due = self.clock()
        while not stop:
            now = self.clock()
            while due <= now and sender.room and not self.done():
                self.send_one()
                due += self.gap()
            if self.done() and not sender.pending:
                self._log_finished()
                return
            wait = POLL_SLICE_MS if self.done() else (due - self.clock()) * 1000
            sender.pump(max(0, min(POLL_SLICE_MS, int(wait))))
        sender.flush(STOP_FLUSH)
        log.info(
            "%s: stopping after %d fills (%d unacknowledged): %s",
            sender.source,
            self.sent,
            sender.pending,
            sender.summary(),
        )

    def _log_finished(self) -> None:
        """Every fill is answered: say "all acknowledged" only if none was turned down."""
        sender = self.sender
        if sender.all_accepted:
            log.info("%s: all %d fills sent and acknowledged", sender.source, self.sent)
        else:
            log.warning("%s: %d fills sent: %s", sender.source, self.sent, sender.summary())

    def send_one(self) -> None:
        ticker, price, quantity = self.market.next_fill()
        try:
            self.sender.send(fill_message(self.sender.source, 0, ticker, price, quantity))
        except MessageTooLarge as exc:
            self.refused += 1
            if worth_logging(self.refused):
                log.error(
                    "%s: %s fill refused (%d so far): %s",
                    self.sender.source,
                    ticker,
                    self.refused,
                    exc,
                )
            return
        self.sent += 1
        self.shares_sent[ticker] = self.shares_sent.get(ticker, 0) + quantity
