"""The AUM simulator's loop: a split every interval (drifting by default), delivered reliably."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from aumsim.splits import DEFAULT_DRIFT, SplitWalk
from common.lifecycle import POLL_SLICE_MS, StopFlag
from common.protocol import split_message
from common.sender import STOP_FLUSH, MessageTooLarge, ReliableSender, worth_logging

log = logging.getLogger(__name__)


class AumSimulator:
    """Sends a split at start and then every `interval` seconds (at most `count` of them);
    at the end logs how many the controller accepted and rejected."""

    def __init__(
        self,
        sender: ReliableSender,
        accounts: list[str],
        interval: float = 30.0,
        count: int | None = None,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        drift: float = DEFAULT_DRIFT,
    ) -> None:
        self.sender = sender
        self.accounts = accounts
        self.interval = interval
        self.count = count
        self.clock = clock
        self.sent = 0
        self.refused = 0  # too large to send (never queued)
        self.splits = SplitWalk(accounts, drift, seed)

    def done(self) -> bool:
        return self.count is not None and self.sent + self.refused >= self.count

    def run(self, stop: StopFlag) -> None:
        due = self.clock()
        while not stop:
            if not self.done() and self.clock() >= due:
                self.send_one()
                due += self.interval
            if self.done() and not self.sender.pending:
                self._log_finished()
                return
            wait = (due - self.clock()) * 1000
            self.sender.pump(max(0, min(POLL_SLICE_MS, int(wait))))
        self.sender.flush(STOP_FLUSH)
        log.info(
            "%s: stopping after %d splits (%d unacknowledged): %s",
            self.sender.source,
            self.sent,
            self.sender.pending,
            self.sender.summary(),
        )

    def _log_finished(self) -> None:
        """Every split is answered: say "all acknowledged" only if none was turned down."""
        sender = self.sender
        if sender.all_accepted:
            log.info("%s: all %d splits sent and acknowledged", sender.source, self.sent)
        else:
            log.warning("%s: %d splits sent: %s", sender.source, self.sent, sender.summary())

    def send_one(self) -> None:
        split = self.splits.next()
        try:
            seq = self.sender.send(split_message(self.sender.source, 0, split))
        except MessageTooLarge as exc:
            self.refused += 1
            if worth_logging(self.refused):
                log.error(
                    "%s: split over %d accounts refused (%d so far): %s",
                    self.sender.source,
                    len(split),
                    self.refused,
                    exc,
                )
            return
        self.sent += 1
        log.info("%s: sent split #%d over %d accounts", self.sender.source, seq, len(split))
