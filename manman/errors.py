"""manman's domain errors: one tree, each error carrying the code and message of the error JSON.

Domain code (the worker's agent and actor, the host's control, the relay) raises these and
knows nothing of HTTP; `manman.http.errors` turns each kind into a status in one table, and
the CLI turns a `StartupError` into one line on stderr.
"""

from __future__ import annotations


class ManmanError(Exception):
    """Base of every error manman means to report: `code` is the error JSON's `code`."""

    code = "error"
    retry_after: int | None = None  # seconds worth waiting before a retry (HTTP Retry-After)

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class BadRequest(ManmanError):
    """The request cannot be read at all (not JSON, nested too deeply)."""

    code = "bad_request"


class Invalid(ManmanError):
    """The request is readable but a value in it is not acceptable."""

    code = "invalid"


class Unauthorized(ManmanError):
    """No valid credentials."""

    code = "unauthorized"


class Forbidden(ManmanError):
    """Valid credentials that do not allow this."""

    code = "forbidden"


class NotFound(ManmanError):
    """No such server, worker, file …"""

    code = "not_found"


class Conflict(ManmanError):
    """The request does not fit the current state; nothing was changed. Codes: `conflict`,
    `invalid_state` (a command the server's state does not accept), `exists`, `frozen` and
    `worker_shutdown` (host: the worker takes no power commands), `shutting_down` and
    `deleting` (worker: it or the server is going away), `stale_generation` (worker: a spec
    older than the one it holds)."""

    code = "conflict"


class Exists(Conflict):
    """A name that must be unique is taken."""

    code = "exists"

    @classmethod
    def server(cls, name: str) -> Exists:
        return cls(f"a server named {name} exists")


class Gone(ManmanError):
    """The thing asked for was here and is not any more (a retired worker)."""

    code = "gone"


class Busy(ManmanError):
    """It cannot take this now; the same request may succeed shortly (a full console queue)."""

    code = "busy"


class Unavailable(ManmanError):
    """Something this needs is away (a worker that misses heartbeats, the database)."""

    code = "unavailable"


class DatabaseUnavailable(Unavailable):
    """PostgreSQL did not answer a write in time, or refused the connection: the change was
    not made (or, for a commit whose fate is not known yet, the message says so)."""

    retry_after = 5

    def __init__(self, message: str = "the database is unavailable; nothing was changed"
                 ) -> None:
        super().__init__(message)


class InsufficientStorage(ManmanError):
    """The change cannot be saved (a full disk), so it was not made; it may succeed once
    there is space again."""

    code = "insufficient_storage"


class DiskLimit(InsufficientStorage):
    """(worker) A write the server's `limits.disk_mb` has no room for: nothing was written."""

    code = "disk_limit"


class WorkerError(ManmanError):
    """A worker answered, but with a failure the host passes on (HTTP 502)."""

    code = "worker_error"


class Relayed(ManmanError):
    """A worker's refusal that no other error names (405, 413, 415, 429 …), passed on to the
    host's caller with the worker's own status, code and message."""

    def __init__(self, message: str, code: str, status: int) -> None:
        super().__init__(message, code)
        self.status = status


class TooLarge(ManmanError):
    """A body declared larger than the route accepts (an upload over files_max_upload)."""

    code = "body_too_large"


class LengthRequired(ManmanError):
    """A streamed upload must declare its size (Content-Length) before any byte is taken."""

    code = "length_required"


class StartupError(ManmanError):
    """A service cannot start for a reason its operator can fix; the CLI prints the message
    as one line and exits 1."""

    code = "startup"
