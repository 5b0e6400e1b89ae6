"""The simulated clock and event queue: time jumps to the next event, nothing sleeps.

Events are ordered by (time, key, insertion order). Deliveries carry a key derived from
their content, so their order never depends on the order in which the production code
happened to hand them over (the controller's acks come out of a set).
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import random
from collections.abc import Callable


class Violation(AssertionError):
    """An invariant broke; the message names the seed, the step and the simulated time."""


class SimCrash(BaseException):  # noqa: N818 (a crash, not an error to handle)
    """The simulated machine dies here: unwinds through production code, which must not
    catch it (a BaseException passes every `except Exception`/`except OSError`).
    `power_cut`: the machine loses its page cache too; else only the process dies."""

    def __init__(self, why: str, power_cut: bool = True) -> None:
        super().__init__(why)
        self.power_cut = power_cut


def stable_rng(*parts: object) -> random.Random:
    """A random stream that depends only on `parts` (never on Python's hash seed)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=16).digest()
    return random.Random(int.from_bytes(digest, "big"))


def uniforms(*parts: object) -> list[float]:
    """Eight numbers in [0, 1) that depend only on `parts`: cheaper than seeding a Random
    for each message."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=32).digest()
    return [int.from_bytes(digest[i : i + 4], "big") / 2**32 for i in range(0, 32, 4)]


def content_key(*parts: bytes | str | int) -> str:
    """A short stable digest of a message, to order simultaneous deliveries."""
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        h.update(part if isinstance(part, bytes) else str(part).encode())
        h.update(b"\0")
    return h.hexdigest()


class Scheduler:
    """A priority queue of actions on a simulated clock."""

    def __init__(self) -> None:
        self.now = 0.0
        self.steps = 0  # events run so far: "the step" of a violation message
        self._queue: list[tuple[float, str, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self.trace = hashlib.blake2b(digest_size=16)  # what ran, when: replay fingerprint

    def clock(self) -> float:
        """The simulated monotonic clock (seconds), injected into production code."""
        return self.now

    def at(self, when: float, action: Callable[[], None], key: str = "") -> None:
        heapq.heappush(self._queue, (max(when, self.now), key, next(self._order), action))

    def after(self, delay: float, action: Callable[[], None], key: str = "") -> None:
        self.at(self.now + delay, action, key)

    def advance(self, seconds: float) -> None:
        """Time spent inside an action (disk latency): later events are simply late."""
        self.now += seconds

    def run_until(self, end: float, after_each: Callable[[], None]) -> None:
        """Run events up to simulated time `end`, checking `after_each` after every one."""
        queue = self._queue
        while queue and queue[0][0] <= end:
            when, key, _, action = heapq.heappop(queue)
            self.now = max(self.now, when)
            self.steps += 1
            self.trace.update(f"{self.now:.9f}|{key}|{getattr(action, '__name__', '')};".encode())
            action()
            after_each()
        self.now = max(self.now, end)

    @property
    def fingerprint(self) -> str:
        return self.trace.hexdigest()
