"""The host's operations on servers and workers: desired state to PostgreSQL first, then
memory, then a push to the worker (fast path). A push that fails is not an error: the next
heartbeat carries what the worker lacks (slow path)."""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from typing import Any

import msgspec
import trio

from manman import models
from manman.host.fleet import Fleet, ServerRec, WorkerRec
from manman.host.relay import Relay, Unreachable
from manman.host.store import HostStore, NameTaken
from manman.http.app import ApiError

log = logging.getLogger("manman.host")


def _spec_body(s: ServerRec) -> dict[str, Any]:
    """What the worker's PUT takes: every updatable field of the spec, and the generation."""
    body = msgspec.to_builtins(s.spec)
    for fixed in ("worker_id", "game_id"):
        body.pop(fixed, None)
    body["generation"] = s.generation
    return body


def _worker_error(r: Any) -> ApiError:
    """A worker's refusal for the caller: its 404/409/422/503 mean the same to the caller; its
    401/403/5xx are the worker's trouble, not the caller's (502: a 401 would tell a valid
    admin their token is wrong)."""
    try:
        err = r.json()["error"]
        message, code = str(err["message"]), str(err["code"])
    except (ValueError, KeyError, TypeError):
        return ApiError(502, f"worker answered {r.status_code}", "worker_error")
    if r.status_code in (401, 403) or r.status_code < 400 or \
            (r.status_code >= 500 and r.status_code != 503):  # 503: busy, try again
        return ApiError(502, f"worker answered {r.status_code}: {message[:200]}",
                        "worker_error")
    return ApiError(r.status_code, message, code)


class Control:
    def __init__(self, store: HostStore, fleet: Fleet, relay: Relay) -> None:
        self.store = store
        self.fleet = fleet
        self.relay = relay
        self.finished_deletes: list[str] = []
        self._spec_locks: dict[str, trio.Lock] = {}

    # -- lookups with the SPEC's errors ------------------------------------------------------

    def server(self, key: str) -> ServerRec:
        s = self.fleet.server(key)
        if s is None or s.deleting:
            raise ApiError(404, f"server {key[:100]} not found", "not_found")
        return s

    def worker(self, worker_id: str) -> WorkerRec:
        w = self.fleet.workers.get(worker_id)
        if w is None:
            raise ApiError(404, f"worker {worker_id[:100]} not found", "not_found")
        return w

    def _writable(self, w: WorkerRec) -> None:
        if w.status == "shutdown":
            raise ApiError(409, f"worker {w.name} is shut down", "worker_shutdown")
        if w.status == "frozen":
            raise ApiError(409, f"worker {w.name} is frozen: it accepts no changes", "frozen")

    def _need_reachable(self, w: WorkerRec) -> None:
        if not self.fleet.reachable(w):
            raise ApiError(503, f"worker {w.name} is {self.fleet.worker_status(w)}",
                           "unavailable")

    async def _push(self, w: WorkerRec, method: str, path: str, json: Any = None,
                    params: dict[str, str] | None = None) -> bool:
        """A best-effort call; True when the worker took it."""
        if not self.fleet.reachable(w):
            return False
        try:
            r = await self.relay.call(w, method, path, json=json, params=params)
        except Unreachable as e:
            log.info("push to %s failed: %s", w.name, e)
            return False
        return r.status_code < 400

    # -- servers ---------------------------------------------------------------------------

    async def create_server(self, spec: models.ServerSpec) -> ServerRec:
        if spec.worker_id is None:
            live = [w for w in self.fleet.workers.values() if w.status != "shutdown"]
            if len(live) != 1:
                raise ApiError(422, "worker_id is required (more than one worker)", "invalid")
            spec = msgspec.structs.replace(spec, worker_id=live[0].id)
        assert spec.worker_id is not None
        w = self.worker(spec.worker_id)
        self._writable(w)
        if self.fleet.name_taken(spec.name):
            raise ApiError(409, f"a server named {spec.name} exists", "exists")
        now = time.time()
        s = ServerRec(id=secrets.token_hex(6), name=spec.name, worker_id=w.id, spec=spec,
                      generation=1, created_at=now, updated_at=now)
        try:
            await self.store.insert_server(s.id, s.name, w.id, spec, now)
        except NameTaken:  # another request won the race
            raise ApiError(409, f"a server named {spec.name} exists", "exists") from None
        self.fleet.add_server(s)
        body = msgspec.to_builtins(spec)
        body.update(id=s.id, generation=s.generation)
        await self._push(w, "POST", "/server", json=body)
        return s

    async def update_server(self, s: ServerRec, update: models.ServerUpdate) -> ServerRec:
        w = self.worker(s.worker_id)
        self._writable(w)

        def change(spec: models.ServerSpec) -> models.ServerSpec:
            try:
                new = models.apply_update(spec, update)
            except ValueError as e:
                raise ApiError(422, str(e), "invalid") from None
            if new.name != s.name and self.fleet.name_taken(new.name, but=s.id):
                raise ApiError(409, f"a server named {new.name} exists", "exists")
            return new

        body = await self._change_spec(s, change, restart=update.restart_on_change)
        body["restart_on_change"] = update.restart_on_change
        await self._push(w, "PUT", f"/server/{s.id}", json=body)
        return s

    async def _change_spec(self, s: ServerRec, change: Any, restart: bool = False
                           ) -> dict[str, Any]:
        """Read, change and write a spec as one step: concurrent changes of one server queue
        instead of overwriting each other. Returns what the worker's PUT takes. restart:
        the change asks for a restart, also when the worker only gets it by heartbeat."""
        lock = self._spec_locks.setdefault(s.id, trio.Lock())
        async with lock:
            spec = change(s.spec)
            generation, now = s.generation + 1, time.time()
            restart_generation = generation if restart else s.restart_generation
            try:
                await self.store.update_server_spec(s.id, spec.name, spec, generation, now,
                                                    restart_generation)
            except NameTaken:  # another rename won the race
                raise ApiError(409, f"a server named {spec.name} exists", "exists") from None
            if spec.name != s.name:
                self.fleet.rename(s, spec.name)
            s.spec, s.generation, s.updated_at = spec, generation, now
            s.restart_generation = restart_generation
            return _spec_body(s)

    async def set_desired(self, s: ServerRec, desired: str) -> bool:
        """start/stop: a new generation with that desired state, pushed to the worker."""
        body = await self._change_spec(
            s, lambda spec: msgspec.structs.replace(spec, desired_state=desired))
        return await self._push(self.worker(s.worker_id), "PUT", f"/server/{s.id}", json=body)

    async def delete_server(self, s: ServerRec, purge: bool) -> bool:
        """True when gone now; False when it goes later: a running server stops gracefully
        first (up to its stop_timeout, not while the client waits), and a worker that is
        away removes it when it is back."""
        w = self.worker(s.worker_id)
        if w.status == "frozen":
            raise ApiError(409, f"worker {w.name} is frozen: it accepts no changes", "frozen")
        await self.store.mark_deleting(s.id, purge)
        s.deleting, s.purge = True, purge
        if w.status == "shutdown":
            await self.forget(s.id)
            return True
        if not self.fleet.reachable(w):
            return False
        try:
            # a live server stops first on the worker (202): the heartbeat tells when it went
            r = await self.relay.call(w, "DELETE", f"/server/{s.id}",
                                      params={"stop": "true",
                                              "purge": "true" if purge else "false"})
        except Unreachable:
            return False  # the heartbeat's `remove` list finishes it
        if r.status_code in (200, 404):
            await self.forget(s.id)
            return True
        return False

    async def forget(self, server_id: str) -> None:
        await self.store.delete_server(server_id)
        self.fleet.remove_server(server_id)
        self._spec_locks.pop(server_id, None)

    async def command(self, s: ServerRec, cmd: models.Command, actor: str
                      ) -> models.CommandAccepted:
        w = self.worker(s.worker_id)
        if cmd.type not in ("command", "health"):
            self._writable(w)
        delivered = False
        result: Any = None
        try:
            if cmd.type in ("start", "stop"):
                delivered = await self.set_desired(s, "running" if cmd.type == "start"
                                                   else "stopped")
            elif cmd.type == "restart":
                if s.spec.desired_state != "running":
                    # starting it is the restart: a second one would stop what just started
                    delivered = await self.set_desired(s, "running")
                else:
                    delivered = await self._push(w, "POST", f"/server/{s.id}/restart")
            else:
                delivered, result = await self._direct(w, s, cmd)
        except ApiError as e:
            self._audit(actor, s, cmd, False, f"{e.status} {e.code}")
            raise
        accepted = models.CommandAccepted(command_id=uuid.uuid4().hex, delivered=delivered)
        self._audit(actor, s, cmd, delivered, msgspec.json.encode(result).decode()
                    if result is not None else ("delivered" if delivered else "pending"),
                    accepted.command_id)
        if result is not None:
            return models.CommandAccepted(command_id=accepted.command_id, delivered=True,
                                          result=result)
        return accepted

    async def _direct(self, w: WorkerRec, s: ServerRec, cmd: models.Command
                      ) -> tuple[bool, Any]:
        """kill, install, health, command: they need the worker now."""
        if cmd.type == "command":
            if not cmd.data:
                raise ApiError(422, "a console command needs `data`", "invalid")
            try:
                models.check_console_line(cmd.data)
            except ValueError as e:
                raise ApiError(422, str(e), "invalid") from None
        self._need_reachable(w)
        method, path, body = {
            "kill": ("POST", f"/server/{s.id}/kill", None),
            "install": ("POST", f"/server/{s.id}/install", None),
            "health": ("GET", f"/server/{s.id}/health", None),
            "command": ("POST", f"/server/{s.id}/command", {"data": cmd.data}),
        }[cmd.type]
        try:
            r = await self.relay.call(w, method, path, json=body)
        except Unreachable as e:
            raise ApiError(503, str(e), "unavailable") from None
        if r.status_code >= 400:
            raise _worker_error(r)
        if cmd.type == "kill":
            # the worker now holds `stopped` as desired: so does the host, in a new generation
            await self.set_desired(s, "stopped")
        if cmd.type != "health":
            return True, None
        try:
            return True, r.json()
        except ValueError:
            raise ApiError(502, f"worker {w.name} answered a health probe with no JSON",
                           "worker_error") from None

    def _audit(self, actor: str, s: ServerRec, cmd: models.Command, delivered: bool,
               result: str, command_id: str | None = None) -> None:
        data = cmd.data.replace("\x00", "\ufffd") if cmd.data else cmd.data
        self.fleet.record_command((command_id or uuid.uuid4().hex, time.time(), actor, s.id,
                                   s.worker_id, cmd.type, data, delivered,
                                   result[:1000].replace("\x00", "\ufffd")))

    # -- workers ---------------------------------------------------------------------------

    async def join(self, name: str | None) -> WorkerRec:
        now = time.time()
        w = WorkerRec(id=secrets.token_hex(8), name=name or "worker", status="alive",
                      created_at=now)
        await self.store.insert_worker(w.id, w.name, now)
        self.fleet.workers[w.id] = w
        return w

    async def register(self, w: WorkerRec, reg: models.WorkerRegister) -> WorkerRec:
        if w.status == "shutdown":
            raise ApiError(410, "this worker was shut down by its host", "gone")
        await self.store.update_worker(w.id, name=reg.name, api_url=reg.api_url.rstrip("/"),
                                       address=reg.address, version=reg.version,
                                       capacity=reg.capacity, registered=True)
        w.name, w.api_url, w.address = reg.name, reg.api_url.rstrip("/"), reg.address
        w.version, w.capacity, w.registered = reg.version, reg.capacity, True
        self.fleet.touch(w)
        return w

    async def update_worker(self, w: WorkerRec, update: models.WorkerUpdate) -> WorkerRec:
        if w.status == "shutdown":
            raise ApiError(409, f"worker {w.name} is shut down", "worker_shutdown")
        fields: dict[str, Any] = {}
        if update.name is not msgspec.UNSET:
            fields["name"] = update.name
        if update.status is not msgspec.UNSET:
            fields["status"] = update.status
        if fields:
            await self.store.update_worker(w.id, **fields)
            for k, v in fields.items():
                setattr(w, k, v)
        if update.status is not msgspec.UNSET:
            await self._push(w, "POST", "/freeze" if update.status == "frozen" else "/unfreeze")
        return w

    async def retire_worker(self, w: WorkerRec, reason: str) -> None:
        """Ask it to shut down (its servers stop gracefully), then mark it shut down: its
        later calls get 410."""
        if w.status != "shutdown" and w.api_url:
            try:
                with trio.move_on_after(3):
                    await self.relay.call(w, "POST", "/shutdown", params={"retire": "true"},
                                          timeout=3)
            except Unreachable:
                pass  # retired all the same: its token stops working now
        await self.store.update_worker(w.id, status="shutdown")
        w.status = "shutdown"
        log.info("worker %s (%s) shut down: %s", w.name, w.id, reason)
        await self.forget_deleted_on_retired()

    async def forget_deleted_on_retired(self) -> None:
        """Deletes waiting for a worker that will never come back are done now: otherwise
        they could never finish, and their names would stay taken."""
        for s in self.fleet.deleting_on_retired():
            await self.forget(s.id)
