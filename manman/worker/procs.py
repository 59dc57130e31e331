"""Linux process facts manman relies on to leave no orphan and kill nothing unrelated."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

INSTANCE_ENV = "MANMAN_INSTANCE"
# carried by a worker's helpers (docker CLI, steamcmd): a restarted worker ends its
# predecessor's, which nothing else would (PR_SET_PDEATHSIG fires when the forking *thread*
# ends, and trio forks from worker threads that exit after 10 s idle)
HELPER_ENV = "MANMAN_HELPER"


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # the command name may hold spaces and parentheses: fields start after the last ')'
    fields = raw[raw.rfind(b")") + 2:].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def is_running(pid: int) -> bool:
    """True when pid exists and is not a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    state = raw[raw.rfind(b")") + 2:raw.rfind(b")") + 3]
    return state not in (b"Z", b"X")


def signal_group(pgid: int, sig: int) -> bool:
    """Signal a whole process group; False when it is gone."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return False


def processes_with_instance(token: str) -> list[int]:
    """Pids whose environment carries MANMAN_INSTANCE=token (inherited by the game's
    children), so a leftover game is found even when its leader is gone."""
    return processes_with_env(INSTANCE_ENV, token)


def kill_helpers(owner: str) -> list[int]:
    """SIGKILL the helpers an earlier run of this worker left (it was SIGKILLed). Blocking."""
    return _sigkill(processes_with_env(HELPER_ENV, owner))


def _sigkill(pids: list[int]) -> list[int]:
    """The pids that were still there to kill."""
    killed = []
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
            killed.append(p)
        except ProcessLookupError:
            pass
    return killed


def processes_with_env(name: str, value: str) -> list[int]:
    """Pids whose environment holds name=value exactly."""
    needle = f"{name}={value}".encode()
    found = []
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid == me:
            continue
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0") and is_running(pid):
            found.append(pid)
    return found


def kill_leftover(pid: int | None, pid_start: int | None, token: str | None,
                  wait: float = 5.0) -> list[int]:
    """SIGKILL what remains of a game started by an earlier worker: its process group when
    the recorded pid still has the recorded start time, and every process carrying its
    instance token. Returns the pids killed. Blocking (call from a thread)."""
    killed: list[int] = []
    if (pid and pid_start is not None and start_time(pid) == pid_start
            and signal_group(pid, signal.SIGKILL)):
        killed.append(pid)
    if token:
        killed += _sigkill(processes_with_instance(token))
    deadline = time.monotonic() + wait
    while killed and time.monotonic() < deadline:
        if not any(is_running(p) for p in killed):
            break
        time.sleep(0.02)
    return killed
