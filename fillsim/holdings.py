"""What the accounts hold, as the fill server learns it from the controller's snapshots, so
that it sells only what is there (the controller rejects an over-sell with a reason anyway)."""

from __future__ import annotations

from collections.abc import Callable

import zmq

from common.protocol import TOPIC_POSITIONS, read_event

SNAPSHOT_HWM = 4  # only the latest snapshot matters: never queue many


class Holdings:
    """Shares held per ticker across all accounts: the latest snapshot's totals, less what
    this server has sold since it arrived."""

    def __init__(
        self,
        ctx: zmq.Context,
        endpoint: str,
        configure: Callable[[zmq.Socket], None] | None = None,
    ) -> None:
        self.sub = ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.RCVHWM, SNAPSHOT_HWM)
        self.sub.setsockopt(zmq.LINGER, 0)
        if configure is not None:
            configure(self.sub)
        self.sub.setsockopt(zmq.SUBSCRIBE, TOPIC_POSITIONS)
        self.sub.connect(endpoint)
        self.totals: dict[str, int] = {}
        self.sold_since: dict[str, int] = {}

    def refresh(self) -> None:
        """Take the newest snapshot waiting, if any (older ones are skipped)."""
        latest = None
        try:
            while True:
                latest = self.sub.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            pass
        if latest is None:
            return
        try:
            _, snapshot = read_event(latest)
            totals = snapshot["totals"]["positions"]
            self.totals = {str(t): int(n) for t, n in totals.items()}
        except (ValueError, KeyError, TypeError, AttributeError):
            return  # not a snapshot we understand: keep the last one
        self.sold_since = {}

    def available(self, ticker: str) -> int:
        """Shares of `ticker` the accounts still hold, as far as this server knows."""
        return max(0, self.totals.get(ticker, 0) - self.sold_since.get(ticker, 0))

    def sold(self, ticker: str, quantity: int) -> None:
        self.sold_since[ticker] = self.sold_since.get(ticker, 0) + quantity

    def close(self) -> None:
        self.sub.close(linger=0)
