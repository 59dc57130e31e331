"""The backups of a worker's servers: made one at a time per server, around the spec's hooks,
kept in `backup_dir/<server id>/<backup id>.tar.zst`, recorded in the worker's SQLite,
pruned by the spec's limits after each success, restored into a stopped server.

A backup goes `pending → running → ok | failed` (with the reason). The archive is written in
a thread (manman.worker.backups.writer) so the worker's loop stays responsive; a worker that
stops during a backup leaves it `running` on disk, and the next start calls it failed and
removes its partial file.
"""

from __future__ import annotations

import errno
import logging
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import msgspec
import trio

from manman import errors
from manman.models import BackupHook
from manman.worker.actor import ServerActor
from manman.worker.agent import Action, WorkerAgent
from manman.worker.backups.model import Backup, BackupCreate
from manman.worker.backups.restore import Corrupt, remove_quietly, restore_backup, unpacked_size
from manman.worker.backups.retention import failed_to_forget, to_prune
from manman.worker.backups.writer import Progress, Written, write_backup

log = logging.getLogger("manman.worker.backups")

STOPPED = ("created", "stopped", "crashed", "failed")
# a crashed server may be restarted by its policy at any moment: not restored into
RESTORABLE = ("created", "stopped", "failed")
LIVE = ("starting", "running")
GAME_STREAMS = ("stdout", "stderr")  # a hook waits for the game's words, not manman's
STATE_RECHECK = 1.0  # a state is waited for on the console's wakeups, rechecked anyway
STOP_GRACE = 30.0  # beyond the spec's stop_timeout, for the kill and the exit


class BackupFailed(Exception):
    """Why a backup failed, in words for its `error`."""


class BackupManager:
    def __init__(self, agent: WorkerAgent, backup_dir: Path) -> None:
        self.agent = agent
        self.dir = backup_dir
        self.records: dict[str, Backup] = {}
        self._progress: dict[str, Progress] = {}  # backup id: how far its writing thread is
        self.busy: dict[str, str] = {}  # server id → "backup" | "restore" under way
        self._cancel = threading.Event()  # the worker stops: threads end their work
        self._nursery: trio.Nursery | None = None
        # told the server id of each change (the host's reports)
        self.listeners: list[Callable[[str], None]] = []
        agent.purgers.append(self.purge)
        self._ended: dict[str, trio.Event] = {}  # backups someone waits for (schedules)
        self.outcomes: dict[str, Counter[str]] = {}  # server id → backups ended, by state

    # -- life --------------------------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Load the records (after the agent's store is open), then host the backups'
        tasks until cancelled."""
        store = self.agent.store
        assert store is not None
        for raw in await store.load_backups():
            b = msgspec.json.decode(raw, type=Backup)
            if b.state in ("pending", "running"):
                b.state, b.error = "failed", "the worker stopped during the backup"
                b.finished_at = time.time()
                await trio.to_thread.run_sync(remove_quietly, self._partial(b))
                await self._save(b)
            self.records[b.id] = b
        self.agent.guards.append(self._guard)
        self.agent.holds.append(self._hold)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._cancel.set()

    def _guard(self, actor: ServerActor, action: Action) -> None:
        """The agent asks before a power action: none starts a server being restored."""
        if self.busy.get(actor.id) == "restore" and action != "stop":
            raise errors.Conflict("a restore of this server is under way", "restoring")

    def _hold(self, actor: ServerActor) -> str | None:
        """A start the host asked for (a desired state) waits for the restore to end."""
        if self.busy.get(actor.id) == "restore":
            return "waiting for the restore of its files to end"
        return None

    # -- records -----------------------------------------------------------------------

    def path(self, b: Backup) -> Path:
        return self.dir / b.server_id / f"{b.id}.tar.zst"

    def _partial(self, b: Backup) -> Path:
        p = self.path(b)
        return p.with_name(f".{p.name}.partial")

    def of_server(self, server_id: str) -> list[Backup]:
        return sorted((self._current(b) for b in self.records.values()
                       if b.server_id == server_id), key=lambda b: b.created_at)

    def _current(self, b: Backup) -> Backup:
        """The record, with the bytes read so far when it is being written."""
        if (progress := self._progress.get(b.id)) is not None:
            b.read_bytes = progress.read
        return b

    def last_ok(self, server_id: str) -> Backup | None:
        """The server's newest good backup (/metrics)."""
        good = [b for b in self.records.values() if b.server_id == server_id
                and b.state == "ok" and b.finished_at is not None]
        return max(good, key=lambda b: b.finished_at or 0.0, default=None)

    def get(self, server_id: str, backup_id: str) -> Backup:
        b = self.records.get(backup_id)
        if b is None or b.server_id != server_id:
            raise errors.NotFound(f"no backup {backup_id[:64]} of this server")
        return self._current(b)

    async def _save(self, b: Backup) -> None:
        assert self.agent.store is not None
        await self.agent.store.save_backup(b.id, b.server_id, msgspec.json.encode(b))
        self._tell(b.server_id)

    def _tell(self, server_id: str) -> None:
        for listener in self.listeners:
            listener(server_id)

    async def _save_quietly(self, b: Backup) -> None:
        try:
            await self._save(b)
        except errors.InsufficientStorage as e:  # the record is right in memory
            log.warning("backup %s of %s: %s", b.id, b.server_id, e.message)

    # -- making one ---------------------------------------------------------------------

    async def create(self, actor: ServerActor, body: BackupCreate) -> Backup:
        sid = actor.id
        self.agent.check_writable(actor)
        if sid in self.busy:
            raise errors.Conflict(f"a {self.busy[sid]} of this server is under way",
                                  "backup_running")
        now = time.time()
        b = Backup(id=secrets.token_hex(8), server_id=sid,
                   name=body.name or time.strftime("%Y-%m-%dT%H-%M-%SZ", time.gmtime(now)),
                   state="pending", locked=body.locked, created_at=now)
        self.busy[sid] = "backup"
        try:
            await self._save(b)  # a backup that cannot be recorded is not made (507)
        except BaseException:
            self.busy.pop(sid, None)
            raise
        self.records[b.id] = b
        assert self._nursery is not None
        self._nursery.start_soon(self._run, b)
        return b

    async def wait_ended(self, b: Backup) -> None:
        """Until `b` is ok or failed (a schedule's backup task awaiting `done`)."""
        if b.state in ("ok", "failed"):
            return
        await self._ended.setdefault(b.id, trio.Event()).wait()

    def _actor(self, server_id: str) -> ServerActor:
        actor = self.agent.actors.get(server_id)  # a faulted actor is rebuilt: ask each time
        if actor is None:
            raise BackupFailed("the server was deleted")
        return actor

    async def _run(self, b: Backup) -> None:
        sid = b.server_id
        try:
            b.state = "running"
            await self._save_quietly(b)
            spec = self._actor(sid).spec.backup
            stopped_it = False
            try:
                await self._hooks(sid, spec.before, "before")
                if spec.stop_during:
                    stopped_it = await self._stop(sid)
                written = await self._write(b)
            finally:
                # `after` runs whatever happened (a hook's timeout too); a server stopped
                # for the backup starts afresh and needs none
                if stopped_it:
                    await self._start(sid)
                elif spec.after:
                    try:
                        await self._hooks(sid, spec.after, "after")
                    except BackupFailed as e:
                        self._note(sid, f"backup {b.name}: {e}")
            b.bytes, b.sha256, b.read_bytes = written.bytes, written.sha256, written.read
            b.state = "ok"
            if written.skipped:
                self._note(sid, f"backup {b.name}: {written.skipped} entries left out (hard "
                                "links, links out of the files, fifos, sockets, devices)")
        except BackupFailed as e:
            b.state, b.error = "failed", str(e)
        except errors.ManmanError as e:
            b.state, b.error = "failed", e.message
        except OSError as e:
            full = e.errno in (errno.ENOSPC, errno.EDQUOT)
            b.state = "failed"
            b.error = (f"disk full in backup_dir ({e.strerror}); the partial archive was "
                       "removed") if full else f"cannot write the archive: {e}"
        except BaseException:  # cancelled: the worker stops (the next start calls it failed)
            self.busy.pop(sid, None)
            raise
        b.finished_at = time.time()
        self.busy.pop(sid, None)
        self.outcomes.setdefault(sid, Counter())[b.state] += 1
        if (ended := self._ended.pop(b.id, None)) is not None:
            ended.set()
        await self._save_quietly(b)
        if b.state == "ok":
            await self._prune(sid)
        else:
            self._note(sid, f"backup {b.name} failed: {b.error}")
            for old in failed_to_forget(self.of_server(sid)):
                try:
                    await self._remove(old)
                except errors.ManmanError as e:
                    log.warning("failed backup %s not forgotten: %s", old.id, e.message)

    def _note(self, server_id: str, text: str) -> None:
        actor = self.agent.actors.get(server_id)
        if actor is not None:
            actor.broker.note(text)

    async def _write(self, b: Backup) -> Written:
        actor = self._actor(b.server_id)
        spec = actor.spec.backup
        progress = self._progress[b.id] = Progress()
        if self.agent.disk is not None:  # incremental: what changed since the last check
            b.total_bytes = await self.agent.disk.measure(actor)
        try:
            return await trio.to_thread.run_sync(
                write_backup, actor.files_dir, self.path(b), spec.paths, spec.write_limit,
                self._cancel, progress, abandon_on_cancel=True)
        finally:
            del self._progress[b.id]
            b.total_bytes = None

    async def _hooks(self, sid: str, hooks: list[BackupHook], kind: str) -> None:
        """Each command to the console, each waiting for its line; nothing for a server
        that is not running (a stopped game has nothing to save)."""
        for i, hook in enumerate(hooks):
            actor = self._actor(sid)
            if actor.status.state != "running":
                return
            broker = actor.broker
            cursor = broker.next_seq
            try:
                self.agent.send_console(actor, hook.command)
            except errors.ManmanError as e:
                raise BackupFailed(f"backup.{kind}[{i}] {hook.command!r}: {e.message}"
                                   ) from None
            if hook.wait_for is None:
                continue
            pattern = re.compile(hook.wait_for)
            with trio.move_on_after(hook.timeout):
                while True:
                    lines = broker.ring_lines_from(cursor, 10000)
                    if any(line.stream in GAME_STREAMS and pattern.search(line.text)
                           for line in lines):
                        break
                    if lines:
                        cursor = lines[-1].seq + 1
                    if broker.closed is not None:
                        raise BackupFailed("the server was deleted")
                    await broker.wait(cursor, broker.state_version)
                continue
            raise BackupFailed(f"backup.{kind}[{i}]: no console line matched "
                               f"{hook.wait_for!r} within {hook.timeout:g}s of "
                               f"{hook.command!r}")

    async def _stop(self, sid: str) -> bool:
        """Stop the server for the backup; True when it was live (to start it again)."""
        actor = self._actor(sid)
        if actor.status.state not in LIVE:
            return False
        await self.agent.act(actor, "stop")
        with trio.move_on_after(actor.spec.stop_timeout + STOP_GRACE):
            while (now := self._actor(sid)).status.state not in STOPPED:
                with trio.move_on_after(STATE_RECHECK):
                    await now.broker.wait(now.broker.next_seq, now.broker.state_version)
            return True
        raise BackupFailed("the server did not stop for the backup")

    async def _start(self, sid: str) -> None:
        actor = self.agent.actors.get(sid)
        if actor is None:
            return
        try:
            await self.agent.act(actor, "start")
        except errors.ManmanError as e:
            log.warning("server %s not started again after its backup: %s", sid, e.message)
            actor.broker.note(f"not started again after the backup: {e.message}")

    async def _prune(self, sid: str) -> None:
        actor = self.agent.actors.get(sid)
        if actor is None:
            return
        for b in to_prune(self.of_server(sid), actor.spec.backup, time.time()):
            try:
                await self._remove(b)
            except errors.ManmanError as e:
                log.warning("backup %s not pruned: %s", b.id, e.message)

    async def purge(self, server_id: str) -> None:
        """The server was deleted with purge: its backups go, locked ones too."""
        self.outcomes.pop(server_id, None)
        for b in self.of_server(server_id):
            try:
                await self._remove(b)
            except errors.ManmanError as e:  # a full disk: the rows stay, found at a start
                log.warning("backup %s of a purged server not removed: %s", b.id, e.message)
        await trio.to_thread.run_sync(_remove_empty_dir, self.dir / server_id)

    async def _remove(self, b: Backup) -> None:
        await trio.to_thread.run_sync(remove_quietly, self.path(b))
        assert self.agent.store is not None
        await self.agent.store.delete_backup(b.id)
        self.records.pop(b.id, None)
        self._tell(b.server_id)

    # -- the other routes ---------------------------------------------------------------

    async def set_locked(self, server_id: str, backup_id: str, locked: bool) -> Backup:
        b = self.get(server_id, backup_id)
        changed = msgspec.structs.replace(b, locked=locked)
        await self._save(changed)  # saved first: a lock the disk cannot hold is refused
        b.locked = locked
        return b

    async def delete(self, server_id: str, backup_id: str) -> None:
        b = self.get(server_id, backup_id)
        if b.state in ("pending", "running"):
            raise errors.Conflict("the backup is under way", "backup_running")
        if b.locked:
            raise errors.Conflict("the backup is locked: unlock it first", "locked")
        if self.busy.get(server_id) == "restore":
            raise errors.Conflict("a restore of this server is under way", "restoring")
        await self._remove(b)

    def open_archive(self, server_id: str, backup_id: str) -> Path:
        b = self.get(server_id, backup_id)
        if b.state != "ok":
            raise errors.Conflict(f"the backup is {b.state}: there is no archive to send",
                                  "backup_not_ok")
        return self.path(b)

    async def restore(self, actor: ServerActor, backup_id: str, truncate: bool) -> Backup:
        sid = actor.id
        b = self.get(sid, backup_id)
        self.agent.check_writable(actor)
        if b.state != "ok" or b.sha256 is None:
            raise errors.Conflict(f"the backup is {b.state}: it cannot be restored",
                                  "backup_not_ok")
        if sid in self.busy:
            raise errors.Conflict(f"a {self.busy[sid]} of this server is under way",
                                  "backup_running")
        if actor.status.state not in RESTORABLE:
            raise errors.Conflict(f"the server is {actor.status.state}: restore only while "
                                  "it is stopped", "invalid_state")
        self.busy[sid] = "restore"
        try:
            disk = self.agent.disk
            if disk is not None and actor.spec.limits.disk_mb is not None:
                size = await trio.to_thread.run_sync(unpacked_size, self.path(b))
                await disk.check_room(actor, size, f"restoring backup {b.name!r}",
                                      replacing=truncate)
            # not abandoned on a cancel: the files must not change under a later start
            await trio.to_thread.run_sync(restore_backup, self.path(b), b.sha256,
                                          actor.files_dir, truncate, self._cancel)
        except Corrupt as e:
            if e.message.startswith("the archive's sha256"):
                b.state, b.error = "failed", e.message
                await self._save_quietly(b)
            raise
        finally:
            self.busy.pop(sid, None)
            actor.wake_launch()  # a start that waited for the restore goes on now
        actor.broker.note(f"restored backup {b.name}" + (" (truncated first)" if truncate
                                                         else ""))
        if self.agent.disk is not None:  # a truncate may have freed room: judged now
            await self.agent.disk.freed(sid)
        return b


def _remove_empty_dir(path: Path) -> None:
    with suppress(OSError):  # gone already, or a backup still being written in it
        path.rmdir()
