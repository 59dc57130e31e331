"""One exponential backoff for every retry: joining and registering with a host, an actor's
restart after a fault, a console client's reconnect (`Backoff`), and a crashed game's restart,
which the server machine works out from its crash count (`exponential`). Pure: callers sleep."""

from __future__ import annotations

import random
from dataclasses import dataclass


def exponential(initial: float, maximum: float, attempt: int) -> float:
    """The delay before retry number `attempt` (1-based): initial, doubling, capped."""
    if attempt <= 0:
        return 0.0
    return min(initial * (2.0 ** min(attempt - 1, 64)), maximum)


@dataclass
class Backoff:
    """Delays that start at `initial`, double after each failure up to `maximum`, and start
    again after `reset()`. `jitter` spreads the delay over [1 - jitter, 1] of itself so many
    clients that lost one peer do not come back in step."""

    initial: float
    maximum: float
    jitter: float = 0.0
    _attempt: int = 0

    def next(self) -> float:
        """The delay to sleep now; the one after it is twice as long (up to the maximum)."""
        self._attempt += 1
        delay = exponential(self.initial, self.maximum, self._attempt)
        if self.jitter:
            delay *= 1 - self.jitter * random.random()
        return delay

    def reset(self) -> None:
        self._attempt = 0
