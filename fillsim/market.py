"""A small market model: each ticker's price follows its own geometric random walk."""

from __future__ import annotations

import math
import random

# Plausible starting prices; tickers outside this table start at a random level.
START_PRICES = {
    "AAPL": 190.0,
    "MSFT": 420.0,
    "AMZN": 180.0,
    "GOOGL": 170.0,
    "META": 500.0,
    "NVDA": 120.0,
    "TSLA": 250.0,
    "JPM": 200.0,
    "V": 280.0,
    "XOM": 115.0,
}
VOLATILITY = 0.0005  # per-fill log-return standard deviation (a few bp per tick)
TICK = 0.01  # prices are quoted in cents
LOT = 100


class Market:
    """Seeded prices and fill sizes: the same seed gives the same stream everywhere."""

    def __init__(self, tickers: list[str] | tuple[str, ...], seed: int | None = None) -> None:
        self.rng = random.Random(seed)
        self.tickers = list(tickers)
        self._log_price = {
            t: math.log(START_PRICES.get(t) or self.rng.uniform(20, 500)) for t in self.tickers
        }

    def next_fill(self) -> tuple[str, float, int]:
        """(ticker, price, quantity) of the next fill: a step of that ticker's walk."""
        ticker = self.rng.choice(self.tickers)
        self._log_price[ticker] += self.rng.gauss(0.0, VOLATILITY)
        price = max(TICK, round(math.exp(self._log_price[ticker]) / TICK) * TICK)
        return ticker, round(price, 2), self.quantity()

    def quantity(self) -> int:
        """Mostly round lots, sometimes odd lots, occasionally a large block."""
        roll = self.rng.random()
        if roll < 0.15:
            return self.rng.randint(1, 99)
        if roll < 0.97:
            return LOT * self.rng.randint(1, 50)
        return LOT * self.rng.randint(100, 1000)
