"""Process limits set once at start: every connection, console file and database handle is a
file descriptor, and the usual soft limit of 1,024 is reached by a modest connection flood."""

from __future__ import annotations

import logging
import resource

log = logging.getLogger("manman")

# what raise_open_files did, for the one log line once the service is up (a start-up that
# fails says one line only: its failure)
_raised: tuple[int, int] | None = None
_problem: str | None = None
_reported = False


def raise_open_files() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (an unprivileged process may); returns
    the soft limit now in force. Game servers started later inherit it."""
    global _raised, _problem
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == soft:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as e:  # (not on Linux) a hard limit of "unlimited"
        _problem = f"open files limit stays {soft}: cannot raise it to {hard}: {e}"
        return soft
    _raised = (soft, hard)
    return hard


def report_open_files() -> None:
    """Log the open-files limit in force, once per process (`manman up` starts two APIs)."""
    global _reported
    if _reported:
        return
    _reported = True
    if _problem is not None:
        log.warning("%s", _problem)
    elif _raised is not None:
        log.info("open files limit: %d (raised from %d)", _raised[1], _raised[0])
    else:
        log.info("open files limit: %d", resource.getrlimit(resource.RLIMIT_NOFILE)[0])
