"""Whether PostgreSQL answers, and what an outage writes to the log: one WARNING when it
starts, a reminder at most every REMIND_EVERY seconds while it lasts, one INFO with its
duration when it ends. Every database call of the store reports here; nothing else logs a
database failure (no traceback per request or per flush)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger("manman.host.store")

REMIND_EVERY = 60.0


class DatabaseHealth:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.up = True
        self.since = 0.0  # when the current outage started
        self._reminded = 0.0
        # how many records wait for PostgreSQL (the fleet sets it): said in each line
        self.waiting: Callable[[], int] = lambda: 0

    def failed(self, reason: str) -> None:
        now = self.clock()
        if self.up:
            self.up, self.since, self._reminded = False, now, now
            log.warning("PostgreSQL is unavailable (%s): writes answer 503 until it is back; "
                        "reads, heartbeats and consoles go on from memory; %d records wait "
                        "for it", reason, self.waiting())
        elif now - self._reminded >= REMIND_EVERY:
            self._reminded = now
            log.warning("PostgreSQL is still unavailable after %.0f s (%s); %d records wait "
                        "for it", now - self.since, reason, self.waiting())

    def ok(self) -> None:
        if not self.up:
            self.up = True
            log.info("PostgreSQL is back after %.1f s unavailable; %d records waiting are "
                     "written now", self.clock() - self.since, self.waiting())
