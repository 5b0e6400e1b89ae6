"""The fill simulator's loop: fills at random (or steady) intervals, delivered reliably."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

from common.lifecycle import POLL_SLICE_MS, StopFlag
from common.protocol import SELL, fill_message
from common.sender import STOP_FLUSH, MessageTooLarge, ReliableSender, worth_logging
from fillsim.holdings import Holdings
from fillsim.market import Market

log = logging.getLogger(__name__)


class FillSimulator:
    """Sends `count` fills (or forever) with exponential gaps of mean `interval`, or at a
    steady `rate` per second; finishes once every fill sent is acknowledged or rejected,
    and logs how many the controller accepted and rejected.

    With `holdings`, about `sell_fraction` of the fills are sells of at most half of what
    the accounts hold of that ticker (as the latest snapshot said); the rest are buys."""

    def __init__(
        self,
        sender: ReliableSender,
        market: Market,
        interval: float = 1.0,
        rate: float | None = None,
        count: int | None = None,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        holdings: Holdings | None = None,
        sell_fraction: float = 0.0,
    ) -> None:
        self.sender = sender
        self.holdings = holdings
        self.sell_fraction = sell_fraction
        self.sells = 0
        self._sides = random.Random(None if seed is None else seed + 2)
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

    def side_for(self, ticker: str, quantity: int) -> tuple[str | None, int]:
        """Sell (of at most half the accounts' holding) about `sell_fraction` of the time
        when there is something to sell; else buy. The market's own stream is untouched."""
        if self.holdings is None or self._sides.random() >= self.sell_fraction:
            return None, quantity
        self.holdings.refresh()
        available = self.holdings.available(ticker)
        if available < 2:
            return None, quantity
        return SELL, min(quantity, available // 2)

    def send_one(self) -> None:
        ticker, price, quantity = self.market.next_fill()
        side, quantity = self.side_for(ticker, quantity)
        message = fill_message(self.sender.source, 0, ticker, price, quantity, side)
        try:
            self.sender.send(message)
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
        if side == SELL:
            self.sells += 1
            assert self.holdings is not None
            self.holdings.sold(ticker, quantity)
        else:
            self.shares_sent[ticker] = self.shares_sent.get(ticker, 0) + quantity
