"""How long an HTTP connection may hold its socket while it asks for nothing.

hypercorn gives a new connection `keep_alive_timeout` (75 s here) to send its first request,
and keeps the socket of a client that closed before sending a byte for that long too: 1,100
such connections took a process past 1,024 open files and its accept loop stopped for a
minute. Our connection class differs in two ways:

- a new connection must send its first request's head within `header_timeout` (10 s by
  default); the 75 s keep-alive applies only between requests of a connection that sent one;
- when the client closes its side, an idle connection is closed at once.

hypercorn's own `read_timeout` cannot do the first: it bounds every read, so it would also
cut a quiet websocket or a request whose answer takes long.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import hypercorn.trio.run
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Updated
from hypercorn.trio.tcp_server import TCPServer

HEADER_TIMEOUT = 10.0


class ServeConfig(HypercornConfig):
    """hypercorn's config plus the time a new connection has to send its first request."""

    header_timeout: float = HEADER_TIMEOUT


class Connection(TCPServer):
    """hypercorn's TCP connection with a first-request timeout and a prompt close on EOF."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._asked = False  # a whole request head arrived: keep-alive rules from now on

    async def protocol_send(self, event: Any) -> None:
        if isinstance(event, Updated) and not event.idle:
            self._asked = True
        await super().protocol_send(event)

    async def _idle_timeout(self) -> None:
        if self._asked:
            await super()._idle_timeout()
            return
        timeout = getattr(self.config, "header_timeout", HEADER_TIMEOUT)
        with trio.move_on_after(timeout):
            await self.context.terminated.wait()
        with trio.CancelScope(shield=True):
            await self._initiate_server_close()

    async def _read_data(self) -> None:
        await super()._read_data()
        # the client closed (or the read failed): only an answer in progress may keep the
        # socket, never the idle timer (hypercorn waits it out: 75 s per closed connection)
        await self.idle_task.stop()


# hypercorn's serve builds its connections from this module global (checked: hypercorn 0.18)
if hypercorn.trio.run.TCPServer not in (TCPServer, Connection):
    raise ImportError("hypercorn.trio.run no longer builds connections from TCPServer")
hypercorn.trio.run.TCPServer = Connection  # type: ignore[misc, assignment]


class AcceptErrors(logging.Filter):
    """trio's accept loop logs a traceback every 100 ms while the process is out of file
    descriptors (and sleeps between tries: it neither dies nor spins); one line per
    `every` seconds says the same, with how many were left out."""

    def __init__(self, every: float = 10.0) -> None:
        super().__init__()
        self.every = every
        self._last = -float("inf")
        self._skipped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now - self._last < self.every:
            self._skipped += 1
            return False
        message = record.getMessage()
        if self._skipped:
            message += f" ({self._skipped} more in the last {now - self._last:.0f} s)"
        record.msg, record.args = message, None
        self._last = now
        self._skipped = 0
        record.exc_info = None
        record.exc_text = None
        return True


def quiet_accept_errors() -> None:
    """Rate-limit trio's accept-loop errors (idempotent)."""
    logger = logging.getLogger("trio.serve_listeners")
    if not any(isinstance(f, AcceptErrors) for f in logger.filters):
        logger.addFilter(AcceptErrors())
