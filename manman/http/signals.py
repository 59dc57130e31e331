"""SIGINT/SIGTERM for the services: while one starts, a signal cancels its start-up (its
clean-up still runs: no embedded PostgreSQL or game process is left behind); once it is up,
a signal asks for the graceful stop."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable

import trio

log = logging.getLogger("manman")


class Stopper:
    def __init__(self, on_stop: Callable[[], None] | None = None) -> None:
        self.on_stop = on_stop  # the graceful stop, once up
        self.starting = trio.CancelScope()  # wraps the start-up
        self.up = False
        self.requested = trio.Event()

    async def watch(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                if not self.up:
                    log.info("signal received while starting: giving up the start")
                    self.starting.cancel()
                else:
                    log.info("signal received: stopping")
                self.requested.set()
                if self.up and self.on_stop is not None:
                    self.on_stop()

    def started(self) -> None:
        self.up = True
        if self.requested.is_set() and self.on_stop is not None:
            self.on_stop()  # a signal in the last instant of the start-up
