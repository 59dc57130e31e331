"""Every server's disk use, kept up to date incrementally, and its `limits.disk_mb` enforced
(docs/spec.md, "Disk limit").

One inotify instance for the whole worker (fs.inotify.max_user_instances is 128 by default:
one per server would not do for 200) watches every directory of every files directory. Its
events only mark directories dirty; every `interval` one pass, in one thread, reads again
just the marked directories of every server (manman.worker.disk.usage), then each server's
total is judged against its limit. The file manager and restores ask for a fresh total
before they write, which costs the same: only what changed since is read.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

import trio

from manman import errors
from manman.worker.disk import inotify
from manman.worker.disk.usage import Batch, TreeUsage

if TYPE_CHECKING:
    from manman.worker.actor import ServerActor
    from manman.worker.agent import WorkerAgent

log = logging.getLogger("manman.worker.disk")

MIB = 1024 * 1024
READ_PAUSE = 0.1  # between two reads of the events: a busy game's writes are read in batches


class Watches:
    """The shared inotify instance, as one tree sees it: it knows which tree a wd is of."""

    def __init__(self, ino: inotify.Inotify, owner: dict[int, TreeUsage]) -> None:
        self.ino = ino
        self.owner = owner
        self.tree: TreeUsage | None = None

    def add(self, path: str) -> int:
        wd = self.ino.add(path)
        assert self.tree is not None
        self.owner[wd] = self.tree
        return wd

    def remove(self, wd: int) -> None:
        if self.owner.get(wd) is self.tree:
            del self.owner[wd]
        self.ino.remove(wd)


class DiskWatch:
    def __init__(self, agent: WorkerAgent, interval: float = 60.0) -> None:
        self.agent = agent
        self.interval = interval
        self.trees: dict[str, TreeUsage] = {}
        self.passes = 0
        self._ino: inotify.Inotify | None = None
        self._owner: dict[int, TreeUsage] = {}
        self._limits: dict[str, int | None] = {}  # the limit each server was last judged by
        self._wake = trio.Event()
        self._blind = False  # the events could not be read: every check walks

    # -- the service ---------------------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            self._ino = inotify.Inotify()
        except OSError as e:  # e.g. max_user_instances reached: walks, as before
            log.warning("no inotify (%s): every disk check walks each files directory", e)
        try:
            async with trio.open_nursery() as nursery:
                if self._ino is not None:
                    nursery.start_soon(self._reader, self._ino)
                task_status.started()
                while True:
                    try:
                        await self.check()
                    except Exception:  # one bad pass must not end the checks
                        log.exception("disk check failed")
                    with trio.move_on_after(self.interval):
                        await self._wake.wait()
                    self._wake = trio.Event()
        finally:
            if self._ino is not None:
                trio.lowlevel.notify_closing(self._ino.fd)
                self._ino.close()

    def server_changed(self, actor: ServerActor) -> None:
        """(an agent observer) A new server is measured, and a changed limit judged, at
        once, not at the next check."""
        limit = actor.spec.limits.disk_mb
        if actor.id not in self.trees or self._limits.get(actor.id, limit) != limit:
            self._limits[actor.id] = limit
            self._wake.set()

    async def _reader(self, ino: inotify.Inotify) -> None:
        while not self._blind:
            await trio.lowlevel.wait_readable(ino.fd)
            self._drain()
            await trio.sleep(READ_PAUSE)

    def _drain(self) -> None:
        """Mark what the queued events name (called in trio's thread only)."""
        if self._ino is None or self._blind:
            return
        try:
            events = self._ino.read()
        except OSError:  # (never seen) events can no longer be read: walks from now on
            log.exception("inotify events cannot be read: every disk check walks each "
                          "files directory from now on")
            self._blind = True
            return
        mark(events, self._owner, self.trees.values())

    def _tree(self, actor: ServerActor) -> TreeUsage:
        tree = self.trees.get(actor.id)
        if tree is None:
            watches = Watches(self._ino, self._owner) if self._ino is not None else None
            tree = TreeUsage(str(actor.files_dir), watches)
            if watches is not None:
                watches.tree = tree
            self.trees[actor.id] = tree
        return tree

    def _sync(self) -> list[TreeUsage]:
        """A tree for every server; those of deleted servers are dropped (returned)."""
        for actor in self.agent.actors.values():
            self._tree(actor)
        gone = [self.trees.pop(sid) for sid in self.trees.keys() - self.agent.actors.keys()]
        for sid in self._limits.keys() - self.agent.actors.keys():
            del self._limits[sid]
        return gone

    async def check(self) -> None:
        """One pass: every server's total brought up to date, then judged."""
        gone = self._sync()
        self._drain()
        if self._blind:
            for tree in self.trees.values():
                tree.pending.walk = True
        batches = [(sid, tree, tree.take()) for sid, tree in self.trees.items()]
        await trio.to_thread.run_sync(self._refresh_all, batches, gone, abandon_on_cancel=True)
        self.passes += 1
        for sid, tree, _ in batches:
            actor = self.agent.actors.get(sid)
            if actor is not None and tree.measured:
                self._judge(actor, tree.total)

    @staticmethod
    def _refresh_all(batches: list[tuple[str, TreeUsage, Batch]], gone: list[TreeUsage]
                     ) -> None:
        for tree in gone:
            tree.close()
        for sid, tree, batch in batches:
            try:
                tree.refresh(batch)
            except Exception:
                log.exception("disk of server %s: cannot be measured", sid)

    def _judge(self, actor: ServerActor, used: int) -> None:
        limit = actor.spec.limits.disk_mb
        self._limits[actor.id] = limit
        actor.disk_measured(used, limit * MIB if limit is not None else None)

    # -- answers ---------------------------------------------------------------------------

    def used(self, server_id: str) -> int | None:
        """Bytes as of the last check (None before the first)."""
        tree = self.trees.get(server_id)
        return tree.total if tree is not None and tree.measured else None

    async def measure(self, actor: ServerActor, whole: bool = False) -> int:
        """Bytes now: what changed since the last check is read (not the whole tree), or,
        `whole`, the whole tree walked again."""
        tree = self._tree(actor)
        self._drain()
        tree.pending.walk |= self._blind or whole
        batch = tree.take()
        used = await trio.to_thread.run_sync(tree.refresh, batch)
        self._judge(actor, used)
        return used

    async def limit_and_use(self, actor: ServerActor) -> tuple[int, int] | None:
        """(the limit in bytes, bytes used now), or None when the server has no limit."""
        limit = actor.spec.limits.disk_mb
        if limit is None:
            return None
        # before a write a user asked for, exact over cheap: one walk of this one server (an
        # upload was once let through on a count the events had not brought up to date)
        return limit * MIB, await self.measure(actor, whole=True)

    async def room(self, server_id: str) -> int | None:
        """Bytes the server's limit leaves now (None: no limit); NotFound: no such server."""
        got = await self.limit_and_use(self.agent.get(server_id))
        return None if got is None else got[0] - got[1]

    async def freed(self, server_id: str) -> None:
        """Files were deleted: the limit is judged now, not at the next check."""
        actor = self.agent.actors.get(server_id)
        if actor is not None and actor.status.disk_full is not None:
            await self.measure(actor)

    async def check_room(self, actor: ServerActor, adding: int, what: str,
                         replacing: bool = False) -> None:
        """Refuse (DiskLimit) to write `adding` bytes that would take the server's files
        over its limit; `replacing`: they replace all there is (a restore with truncate)."""
        got = await self.limit_and_use(actor)
        if got is None:
            return
        limit, used = got
        after = adding if replacing else used + adding
        if after > limit:
            raise errors.DiskLimit(f"{what} needs {_mib(adding)}; the files use {_mib(used)} "
                                   f"of the server's disk limit of {_mib(limit)} "
                                   "(limits.disk_mb): refused, nothing was written")


def mark(events: list[tuple[int, int]], owner: dict[int, TreeUsage],
         trees: Iterable[TreeUsage]) -> None:
    """Each event marks its tree's directory dirty (and, for an entry added or removed, the
    directory's parent: its own size may change); a lost event walks every tree again."""
    for wd, mask in events:
        if wd == -1:
            if mask & inotify.IN_Q_OVERFLOW:
                log.warning("inotify queue overflowed: every files directory is walked again")
                for tree in trees:
                    tree.pending.walk = True
            continue
        got = owner.get(wd)
        if got is None:
            continue
        p = got.pending
        if mask & inotify.IN_IGNORED:
            p.ignored.add(wd)
            continue
        p.dirty.add(wd)
        if mask & inotify.ENTRIES:
            p.parents.add(wd)
        if mask & inotify.SELF_GONE and wd == got.top_wd():  # moved away: look again
            p.walk = True


def _mib(n: int) -> str:
    return f"{n / MIB:.1f} MiB"
