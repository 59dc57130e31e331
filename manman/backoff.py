"""One exponential backoff for every retry loop (joining a host, heartbeats, an actor's
restart after a fault, a console client's reconnect): pure, the caller sleeps."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class Backoff:
    """Delays that start at `initial`, double after each failure up to `maximum`, and start
    again after `reset()`. `jitter` spreads the delay over [1 - jitter, 1] of itself so many
    clients that lost one peer do not come back in step."""

    initial: float
    maximum: float
    jitter: float = 0.0
    _next: float = 0.0

    def __post_init__(self) -> None:
        self._next = self.initial

    def next(self) -> float:
        """The delay to sleep now; the one after it is twice as long (up to the maximum)."""
        delay = self._next
        self._next = min(self._next * 2, self.maximum)
        if self.jitter:
            delay *= 1 - self.jitter * random.random()
        return delay

    def reset(self) -> None:
        self._next = self.initial
