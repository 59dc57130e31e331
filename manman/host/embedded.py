"""The default database: a PostgreSQL of our own under the host's data_dir (pgserver).

pgserver's PostgreSQL runs as its own processes and outlives a host killed with SIGKILL; a
later start reuses it. pgserver counts handles per process in a file and stops the server
only when the last one closes, so pids of processes that no longer exist are pruned first.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:  # imported at run time only where the server starts, its warnings silenced
    from pgserver import PostgresServer

log = logging.getLogger("manman.host.embedded")


class EmbeddedPostgres:
    def __init__(self, data_dir: Path) -> None:
        self.pgdata = (data_dir / "postgres").resolve()
        self._server: PostgresServer | None = None
        self.uri = ""

    def _prune_dead_handles(self) -> None:
        path = self.pgdata / ".handle_pids.json"
        try:
            pids = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        alive = [p for p in pids if isinstance(p, int) and _pid_alive(p)]
        if alive != pids:
            path.write_text(json.dumps(alive))

    def _start(self) -> str:
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        self._prune_dead_handles()
        os.environ.setdefault("XDG_RUNTIME_DIR", str(self.pgdata.parent))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver

            server = pgserver.get_server(self.pgdata, cleanup_mode="stop")
        self._server = server
        return server.get_uri()

    async def start(self) -> str:
        """Start (or reuse) the server; returns its URI."""
        self.uri = await trio.to_thread.run_sync(self._start)
        log.info("embedded PostgreSQL at %s", self.pgdata)
        return self.uri

    async def stop(self) -> None:
        server = self._server
        self._server = None
        if server is not None:
            await trio.to_thread.run_sync(server.cleanup)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
