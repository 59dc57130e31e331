"""The host's webhooks: kept in PostgreSQL (the `webhooks` table) and memory, told of the
fleet's changes (as its Watcher), the intake of the events workers send, and their routes.

A worker that sends its events (every worker of this version: manman.worker.events) has none
derived from its reports; for an older one the host derives them (manman.events)."""

from __future__ import annotations

import logging
import secrets
import time
from functools import partial
from typing import Any

import msgspec
import trio
from quart import Response

from manman import errors, models
from manman.host import audit
from manman.host.fleet import Fleet, ServerRec, WorkerRec
from manman.host.store import HostStore
from manman.host.webhooks import events
from manman.host.webhooks.delivery import Attempt, AttemptList, Dispatcher
from manman.host.webhooks.model import (
    HookRec,
    Webhook,
    WebhookIn,
    WebhookList,
    WebhookUpdate,
    check_fields,
    check_url,
    hook_of,
    shown_url,
)
from manman.host.webhooks.payloads import Event
from manman.http.app import Api, json_response
from manman.http.auth import Principal

log = logging.getLogger("manman.host.webhooks")

MAX_HOOKS = 1000


class DeleteResult(msgspec.Struct):
    id: str
    deleted: bool


class Webhooks:
    def __init__(self, store: HostStore, fleet: Fleet, dispatcher: Dispatcher) -> None:
        self.store = store
        self.fleet = fleet
        self.dispatcher = dispatcher
        self._intake: dict[str, trio.Lock] = {}  # by worker: its events in seq order
        # workers whose last write's outcome is not known: their seq is read back first
        self._unsure: set[str] = set()

    async def load(self) -> None:
        for r in await self.store.fetch("SELECT * FROM webhooks ORDER BY created_at"):
            self.dispatcher.put(hook_of(dict(r)))

    def get(self, hook_id: str) -> HookRec:
        hook = self.dispatcher.hooks.get(hook_id)
        if hook is None:
            raise errors.NotFound(f"webhook {hook_id[:100]} not found")
        return hook.rec

    def _server_id(self, key: str | None) -> str | None:
        if key is None:
            return None
        s = self.fleet.server(key)
        if s is None or s.deleting:
            raise errors.Invalid(f"server_id: no server {key[:100]}")
        return s.id

    async def create(self, body: WebhookIn) -> HookRec:
        if len(self.dispatcher.hooks) >= MAX_HOOKS:
            raise errors.Conflict(f"at most {MAX_HOOKS} webhooks", "too_many")
        check_fields(body.kind, body.events, body.secret)
        server_id = self._server_id(body.server_id)
        await check_url(body.url, self.dispatcher.own)
        now = time.time()
        rec = HookRec(secrets.token_hex(6), body.url, body.kind, sorted(set(body.events)),
                      server_id, body.secret, body.enabled, now, now)
        await self.store.execute(
            "INSERT INTO webhooks (id, url, kind, events, server_id, secret, enabled, "
            "created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)", rec.id,
            rec.url, rec.kind, rec.events, rec.server_id, rec.secret, rec.enabled, now,
            what=f"create of webhook {rec.id}")
        self.dispatcher.put(rec)
        return rec

    async def update(self, hook_id: str, body: WebhookUpdate) -> HookRec:
        old = self.get(hook_id)
        new = HookRec(**{f: getattr(old, f) for f in HookRec.__dataclass_fields__})
        for f in ("url", "kind", "events", "secret", "enabled"):
            value = getattr(body, f)
            if value is not msgspec.UNSET:
                setattr(new, f, value)
        if body.server_id is not msgspec.UNSET:
            new.server_id = self._server_id(body.server_id)
        if new.kind != "generic" and body.secret is msgspec.UNSET:
            new.secret = None  # a secret signs generic bodies only
        new.events = sorted(set(new.events))
        check_fields(new.kind, new.events, new.secret)
        if new.url != old.url:
            await check_url(new.url, self.dispatcher.own)
        new.updated_at = time.time()
        await self.store.execute(
            "UPDATE webhooks SET url = $2, kind = $3, events = $4, server_id = $5, "
            "secret = $6, enabled = $7, updated_at = $8 WHERE id = $1", new.id, new.url,
            new.kind, new.events, new.server_id, new.secret, new.enabled, new.updated_at,
            what=f"update of webhook {new.id}")
        self.dispatcher.put(new)
        return new

    async def delete(self, hook_id: str) -> None:
        self.get(hook_id)
        await self.store.execute("DELETE FROM webhooks WHERE id = $1", hook_id,
                                 what=f"delete of webhook {hook_id}")
        self.dispatcher.remove(hook_id)

    # -- the fleet's Watcher: the heartbeat path, no I/O -------------------------------------

    def derives(self, s: ServerRec) -> bool:
        """Its events are derived from its worker's reports: some hook listens, and the
        worker sends none itself (an older one)."""
        w = self.fleet.workers.get(s.worker_id)
        return bool(self.dispatcher.hooks) and not (w is not None and w.sends_events)

    def server_changed(self, s: ServerRec, before: models.ObservedServer | None,
                       after: models.ObservedServer) -> None:
        if self.derives(s):
            self._emit(s, events.server_events(before, after))

    def backups_changed(self, s: ServerRec, before: dict[str, str],
                        after: list[dict[str, Any]]) -> None:
        if self.derives(s):
            self._emit(s, events.backup_events(before, after))

    def _emit(self, s: ServerRec, derived: list[events.Derived]) -> None:
        for event, data in derived:
            # an error may quote the command line: a preset's secret never leaves in a body
            data = models.redact(data, s.spec.secret_values)
            self.dispatcher.emit(event, data, server={"id": s.id, "name": s.name,
                                                      "worker_id": s.worker_id})

    # -- the events workers send with their heartbeats --------------------------------------

    async def take_events(self, w: WorkerRec, sent: list[models.WorkerEvent]) -> int:
        """Write each (hook, event) a hook wants to the outbox and the worker's highest seq,
        in one transaction; then deliver them. Returns the highest seq taken: the worker
        forgets those. An event sent again (its seq taken already) is skipped, and its
        outbox rows are keyed by (hook, worker, seq): none is delivered twice. PostgreSQL
        away: nothing is taken, the worker keeps them and sends them again."""
        lock = self._intake.setdefault(w.id, trio.Lock())
        async with lock:
            if w.id in self._unsure:
                if not self.store.health.up:
                    return w.events_acked or 0
                try:
                    held = await self.store.fetch(
                        "SELECT events_acked FROM workers WHERE id = $1", w.id)
                except errors.DatabaseUnavailable:
                    return w.events_acked or 0
                before = w.events_acked or 0
                if held and held[0]["events_acked"] is not None:
                    w.events_acked = max(before, held[0]["events_acked"])
                if (w.events_acked or 0) > before:  # the commit went through unanswered:
                    try:  # its rows are in the outbox, and nothing delivers them yet
                        await self.dispatcher.resume_worker(w.id, before, w.events_acked or 0)
                    except errors.DatabaseUnavailable:
                        w.events_acked = before  # (read again at the next heartbeat)
                        return before
                self._unsure.discard(w.id)
            acked = w.events_acked or 0
            fresh = sorted((e for e in sent if e.seq > acked), key=lambda e: e.seq)
            if not fresh and w.events_acked is not None:
                return acked
            top = max([acked, *(e.seq for e in fresh)])
            now = time.time()
            rows: list[tuple[str, str, Any, float]] = []
            starts: list[tuple[Any, Event, float]] = []
            for i, e in enumerate(fresh):
                s = self.fleet.servers.get(e.server_id)
                if s is None or s.worker_id != w.id or e.event not in events.SERVER_SIDE:
                    continue  # a server deleted since, or an event this host does not know
                hooks = self.dispatcher.wanting(e.event, s.id)
                if not hooks:
                    continue
                # an error may quote the command line: a preset's secret never leaves
                ev = Event(f"{w.id}-{e.seq}", e.event, e.at,
                           models.redact(e.data, s.spec.secret_values),
                           server={"id": s.id, "name": s.name, "worker_id": w.id})
                since = now + i * 1e-6  # the outbox resumes them in this order
                body = msgspec.to_builtins(ev)
                for hook in hooks:
                    rows.append((f"{hook.rec.id}/{ev.id}", hook.rec.id, body, since))
                    starts.append((hook, ev, since))
            if rows or w.events_acked is None:
                if not self.store.health.up:
                    return acked  # no heartbeat waits for a database known to be away
                self._unsure.add(w.id)  # (a COMMIT without an answer, or a cancel)
                try:
                    try:
                        await self.store.write_batch(
                            lambda conn: self._outbox(conn, w.id, top, rows))
                    except errors.DatabaseUnavailable:
                        raise
                    except Exception:  # one row PostgreSQL refuses must not hold the rest
                        log.exception("PostgreSQL refused worker %s's events; writing them "
                                      "one by one", w.id)
                        refused = await self._one_by_one(w.id, top, rows)
                        starts = [t for t in starts if f"{t[0].rec.id}/{t[1].id}" not in refused]
                except errors.DatabaseUnavailable:
                    return acked
                self._unsure.discard(w.id)
            # without a hook that wants them, PostgreSQL keeps only the last seq written: a
            # host that restarts is sent them again and hands them to the hooks it has then
            w.events_acked = top
            for hook, ev, since in starts:
                self.dispatcher.deliver_stored(hook, ev, since)
            return top

    async def _one_by_one(self, worker_id: str, top: int,
                          rows: list[tuple[str, str, Any, float]]) -> set[str]:
        """Each row in its own transaction, then the seq; the ids of those refused (dropped,
        logged: a hook deleted meanwhile, a body PostgreSQL cannot hold)."""
        refused = set()
        for row in rows:
            try:
                await self.store.write_batch(partial(self._outbox, worker_id=worker_id, top=0,
                                                     rows=[row]))
            except errors.DatabaseUnavailable:
                raise
            except Exception as e:
                refused.add(row[0])
                log.error("webhook delivery %s dropped: PostgreSQL refused it: %s: %s",
                          row[0], type(e).__name__, e)
        await self.store.write_batch(lambda conn: self._outbox(conn, worker_id, top, []))
        return refused

    @staticmethod
    async def _outbox(conn: Any, worker_id: str, top: int,
                      rows: list[tuple[str, str, Any, float]]) -> None:
        if rows:
            await conn.executemany(
                "INSERT INTO webhook_outbox (id, hook_id, event, created_at) VALUES "
                "($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING", rows)
        await conn.execute(
            "UPDATE workers SET events_acked = GREATEST(COALESCE(events_acked, 0), $2) "
            "WHERE id = $1", worker_id, top)

    def worker_changed(self, w: WorkerRec, before: str | None, now: str) -> None:
        event = events.worker_event(before, now)
        if event is not None and self.dispatcher.hooks:
            self.dispatcher.emit(event, {"status": now}, worker={"id": w.id, "name": w.name})


def _changed(body: WebhookUpdate, hooks: Webhooks, hook_id: str) -> dict[str, Any]:
    """What a PUT changes, for the audit: the fields given; the URL as shown_url shows it
    (a hook not found: as a discord one, path hidden)."""
    given = [f for f in body.__struct_fields__ if getattr(body, f) is not msgspec.UNSET]
    out: dict[str, Any] = {"fields": given}
    if isinstance(body.url, str):
        hook = hooks.dispatcher.hooks.get(hook_id)
        kind = body.kind if isinstance(body.kind, str) else \
            hook.rec.kind if hook is not None else "discord"
        out["url"] = shown_url(body.url, kind)
    return out


def add_webhook_routes(api: Api, hooks: Webhooks) -> None:
    def view(rec: HookRec) -> Webhook:
        return rec.view()

    @api.route("GET", "/webhook", response=WebhookList, summary="List webhooks")
    async def list_hooks(who: Principal) -> Response:
        return json_response(WebhookList([view(h.rec) for h in
                                          hooks.dispatcher.hooks.values()]))

    @api.route("POST", "/webhook", body=WebhookIn, response=Webhook, status=201,
               summary="Add a webhook (422: an unknown event, a URL it may not call)")
    async def create_hook(who: Principal, body: WebhookIn) -> Response:
        shown = {"url": shown_url(body.url, body.kind), "kind": body.kind}
        audit.note(detail=audit.detail_of(shown))
        rec = await hooks.create(body)
        audit.note(detail=audit.detail_of({"webhook": rec.id, **shown}))
        return json_response(view(rec), 201)

    @api.route("GET", "/webhook/{hook_id}", response=Webhook, summary="One webhook")
    async def get_hook(who: Principal, hook_id: str) -> Response:
        return json_response(view(hooks.get(hook_id)))

    @api.route("PUT", "/webhook/{hook_id}", body=WebhookUpdate, response=Webhook,
               summary="Change the fields given")
    async def update_hook(who: Principal, hook_id: str, body: WebhookUpdate) -> Response:
        audit.note(detail=audit.detail_of({"webhook": hook_id,
                                           **_changed(body, hooks, hook_id)}))
        return json_response(view(await hooks.update(hook_id, body)))

    @api.route("DELETE", "/webhook/{hook_id}", response=DeleteResult,
               summary="Delete a webhook (its pending deliveries stop)")
    async def delete_hook(who: Principal, hook_id: str) -> Response:
        await hooks.delete(hook_id)
        return json_response(DeleteResult(hook_id, True))

    @api.route("POST", "/webhook/{hook_id}/test", response=Attempt,
               summary="Send a `webhook.test` event now: one attempt, its outcome")
    async def test_hook(who: Principal, hook_id: str) -> Response:
        hooks.get(hook_id)
        return json_response(await hooks.dispatcher.test(hook_id))

    @api.route("GET", "/webhook/{hook_id}/deliveries", response=AttemptList,
               summary="The last 100 delivery attempts, newest first")
    async def hook_deliveries(who: Principal, hook_id: str) -> Response:
        hooks.get(hook_id)
        return json_response(AttemptList(hooks.dispatcher.deliveries(hook_id)))
