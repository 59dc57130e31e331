"""The host API of docs/spec.md: admins manage servers and workers, workers join, register and
heartbeat, console viewers watch through the host's websocket proxy."""

from __future__ import annotations

import time
from typing import Any

import msgspec
import trio
from quart import Response, g, request, websocket

from manman import errors, models
from manman.host import audit
from manman.host.backups import add_backup_routes
from manman.host.control import HostControl
from manman.host.files import add_file_routes
from manman.host.fleet import Fleet
from manman.host.relay import HostSecrets, Relay, Unreachable
from manman.host.schedules import add_schedule_routes
from manman.host.webhooks.delivery import Dispatcher
from manman.http import auth
from manman.http.app import (
    LIMIT,
    SINCE,
    TAIL,
    Api,
    bearer_token,
    json_response,
    query_bool,
    query_int,
    same_secret,
)
from manman.http.auth import Principal
from manman.http.metrics import CONTENT_TYPE, host_metrics
from manman.presets import PresetCatalog
from manman.presets import routes as preset_routes
from manman.worker.console.viewer import error_frame
from manman.worker.stats.history import parse_since

_WEB_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
              ".css": "text/css; charset=utf-8"}


def _static(name: str) -> Response:
    """A file of manman/web by its plain name (no path can be built from the request)."""
    from importlib import resources

    suffix = name[name.rfind("."):] if "." in name else ""
    files = {p.name: p for p in resources.files("manman.web").iterdir()}
    if suffix not in _WEB_TYPES or name not in files:
        raise errors.NotFound("no such file")
    resp = Response(files[name].read_bytes(), content_type=_WEB_TYPES[suffix])
    resp.headers["Cache-Control"] = "no-cache"
    resp.headers["Content-Security-Policy"] = (
        "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
        "frame-ancestors 'none'")
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp


class WorkerList(msgspec.Struct):
    workers: list[models.Worker]


class DeleteResult(msgspec.Struct):
    id: str
    deleted: bool  # false: the worker removes it when it is reachable again


class Ack(msgspec.Struct):
    ok: bool


PROXY_SESSION_TTL = 24 * 3600.0  # an admin's proxied console: reconnects once a day


def _query_in(name: str, schema: dict[str, object]) -> int | None:
    """An optional integer query parameter, within the bounds its schema documents."""
    lo, hi = schema["minimum"], schema["maximum"]
    assert isinstance(lo, int) and isinstance(hi, int)
    return query_int(name, None, lo=lo, hi=hi)


def _not_allowed() -> errors.Forbidden:
    return errors.Forbidden("this token does not allow that")


def build_host_api(control: HostControl, secrets: HostSecrets, console_ttl: float,
                   catalog: PresetCatalog | None = None,
                   dispatcher: Dispatcher | None = None) -> Api:
    api = Api("manman.host", "manman host API", "1")
    fleet: Fleet = control.fleet
    metrics = host_metrics(fleet, control.last_backups, dispatcher)
    # the metrics, and the audit (a POST to a path that also answers GET creates)
    api.requests = audit.AuditingObserver(metrics, fleet, lambda: frozenset(
        d.path for d in api.docs if d.method == "GET"))
    relay: Relay = control.relay

    def identify(token: str | None, server_key: str | None) -> Principal:
        """Who holds this token; 401 when nobody."""
        if same_secret(token, secrets.admin_token):
            return Principal("admin")
        if same_secret(token, secrets.join_token):
            return Principal("join")
        if token and token.startswith("mmw_"):
            _, _, rest = token.partition("_")
            worker_id, _, _ = rest.partition("_")
            w = fleet.workers.get(worker_id)
            if w is not None and same_secret(token, secrets.worker_token(w.id, w.token_version)):
                control.check_not_retired(w)
                return Principal("worker", worker_id=w.id)
        if token and token.count(".") == 2:
            # checked with the key of the worker of the server it names; a valid one for
            # another server, or on a route that is not a console's, is 403
            claimed = auth.claimed_server(token)
            s = fleet.servers.get(claimed) if claimed else None
            w = fleet.workers.get(s.worker_id) if s else None
            if s is not None and w is not None:
                claims = auth.verify_console_token(secrets.console_key(w), token)
                if claims["sub"] != s.id or not server_key or fleet.server(server_key) is not s:
                    raise _not_allowed()
                return Principal("console", server_id=s.id,
                                 scopes=frozenset(claims["scope"].split()),
                                 expires_at=float(claims["exp"]))
        raise errors.Unauthorized("a valid token is required")

    async def authenticate(role: str, params: dict[str, str]) -> Principal:
        who = identify(bearer_token(), params.get("server_id"))
        g.audit_who = who
        allowed = {
            "admin": who.admin,
            "join": who.kind == "join",
            "worker": who.kind == "worker" and who.worker_id == params.get("worker_id",
                                                                           who.worker_id),
            "console": who.kind in ("admin", "console") and (
                who.admin or auth.READ in who.scopes),
            "report": who.kind == "worker",
        }[role]
        if not allowed:
            raise _not_allowed()
        return who

    api.authenticate = authenticate

    # -- the web console: static files shipped in the package ------------------------------

    @api.route("GET", "/", auth="none", media="text/html", summary="The web console")
    async def web_index() -> Response:
        return _static("index.html")

    @api.route("GET", "/static/{name}", auth="none", media="text/plain",
               summary="The web console's scripts and styles")
    async def web_static(name: str) -> Response:
        return _static(name)

    # -- liveness ----------------------------------------------------------------------------

    @api.route("GET", "/healthz", auth="none", response=dict, summary="Liveness")
    async def healthz() -> Response:
        return json_response({"ok": True})

    @api.route("GET", "/metrics", auth="none", media="text/plain",
               summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), content_type=CONTENT_TYPE)

    # -- servers ---------------------------------------------------------------------------

    @api.route("GET", "/server", response=models.ServerList, summary="List servers",
               query={"worker_id": "string", "game_id": "string", "state": "string"})
    async def list_servers(who: Principal) -> Response:
        wid, game, state = (request.args.get(k) for k in ("worker_id", "game_id", "state"))
        out = []
        for s in fleet.servers.values():
            if s.deleting or (wid and s.worker_id != wid) or (game and s.spec.game_id != game):
                continue
            view = fleet.server_view(s)
            if state and view.state != state:
                continue
            out.append(view)
        return json_response(models.ServerList(out))

    presets = catalog if catalog is not None else PresetCatalog({})
    preset_routes.add_routes(api, presets)

    @api.route("POST", "/server", body=dict[str, Any],
               body_doc=(models.ServerSpec, preset_routes.PresetCreate), response=models.Server,
               status=201, errors=(409,),
               summary="Create a server, from a spec or a preset; it is pushed to its worker "
                       "at once")
    async def create_server(who: Principal, body: dict[str, Any]) -> Response:
        s = await control.create_server(preset_routes.create_spec(body, presets, models.ServerSpec))
        g.audit = {"server_id": s.id}
        return json_response(fleet.server_view(s), 201)

    @api.route("GET", "/server/{server_id}", response=models.Server,
               summary="One server (by id or name)")
    async def get_server(who: Principal, server_id: str) -> Response:
        return json_response(fleet.server_view(control.server(server_id)))

    @api.route("PUT", "/server/{server_id}", body=models.ServerUpdate, response=models.Server,
               errors=(409,), summary="Replace the spec fields given (generation + 1)")
    async def update_server(who: Principal, server_id: str,
                            body: models.ServerUpdate) -> Response:
        s = await control.update_server(control.server(server_id), body)
        return json_response(fleet.server_view(s))

    @api.route("DELETE", "/server/{server_id}", response=DeleteResult, errors=(202, 409),
               query={"purge": "boolean"},
               summary="Stop gracefully, remove from the worker, then delete")
    async def delete_server(who: Principal, server_id: str) -> Response:
        s = control.server(server_id)
        gone = await control.delete_server(s, query_bool("purge"))
        return json_response(DeleteResult(s.id, gone), 200 if gone else 202)

    @api.route("POST", "/server/{server_id}/command", body=models.Command,
               response=models.CommandAccepted, status=202, errors=(409, 502, 503),
               summary="start | stop | restart | kill | install | health | command")
    async def command(who: Principal, server_id: str, body: models.Command) -> Response:
        s = control.server(server_id)
        # a command may quote a preset's secret: the audit masks it as the console does
        hidden = s.spec.secret_values
        g.audit = {"action": f"server.{body.type}", "detail": models.redact(body.data, hidden)}
        done = await control.command(s, body)
        g.audit["result"] = (models.redact(msgspec.json.encode(done.result).decode(), hidden)
                             if done.result is not None
                             else "delivered" if done.delivered else "pending")
        return json_response(done, 202)

    @api.route("GET", "/server/{server_id}/log", auth="console", response=models.LogPage,
               query={"since": SINCE, "limit": LIMIT,
                      "scope": {"type": "string", "enum": ["read", "write"]}},
               errors=(502, 503),
               summary="Stored console lines, and a websocket URL and token to watch live")
    async def log_history(who: Principal, server_id: str) -> Response:
        s = control.server(server_id)
        params = {k: str(v) for k, rng in (("since", SINCE), ("limit", LIMIT))
                  if (v := _query_in(k, rng)) is not None}
        w, page = await control.log_page(s, params)
        scopes = [auth.READ, auth.WRITE] if who.admin else sorted(who.scopes)
        wanted = request.args.get("scope")
        if wanted not in (None, "read", "write"):
            raise errors.Invalid("scope must be read or write")
        if wanted == "read":  # a token to hand to someone who may only watch
            scopes = [auth.READ]
        now = time.time()
        # a console token never buys a longer-lived one: it cannot renew itself forever
        ttl = console_ttl if who.expires_at is None else min(console_ttl,
                                                              who.expires_at - now)
        page.token = auth.sign_console_token(secrets.console_key(w), s.id, scopes, ttl, now)
        page.websocket_url = relay.console_url(w, s.id, {})
        return json_response(page)

    @api.route("GET", "/server/{server_id}/stats", auth="console", response=models.StatsHistory,
               query={"since": {"type": "number"}}, errors=(502, 503),
               summary="The server's stats history, relayed from its worker")
    async def stats_history(who: Principal, server_id: str) -> Response:
        s = control.server(server_id)
        since = parse_since(request.args.get("since"))
        w = control.reachable_worker(s)
        content = await relay.call(w, "GET", f"/server/{s.id}/stats",
                                   params={"since": repr(since)})
        return Response(content, content_type="application/json")

    @api.websocket("/server/{server_id}/log/ws", auth="console",
                   query={"since": SINCE, "tail": TAIL, "token": "string", "stats": "boolean"},
                   summary="The live console, proxied from the worker")
    async def log_ws(who: Principal, server_id: str) -> None:
        s = control.server(server_id)
        w = control.reachable_worker(s)
        query = {k: _query_in(k, rng) for k, rng in (("since", SINCE), ("tail", TAIL))}
        if websocket.args.get("stats") in ("1", "true"):  # the live stats frames too
            query["stats"] = 1
        scopes = [auth.READ, auth.WRITE] if who.admin else sorted(who.scopes)
        # the upstream token never leaves the host: an admin's session (its token does not
        # expire) is not cut every console_token_ttl; a console token's ends with it
        ttl = PROXY_SESSION_TTL if who.expires_at is None else who.expires_at - time.time()
        token = auth.sign_console_token(secrets.console_key(w), s.id, scopes, ttl, time.time())
        source = websocket.remote_addr or ""

        async def receive() -> Any:
            message = await websocket.receive()
            if who.can_write():  # a read-only viewer's commands are refused by the worker
                audit.console_input(fleet, who.label, source, s.id, w.id, message,
                                    s.spec.secret_values)
            return message

        await websocket.accept()
        try:
            await relay.proxy_console(w, s.id, query, token, websocket.send, receive)
        except Unreachable as e:
            await websocket.send(error_frame("unavailable", str(e)))
        with trio.move_on_after(1):
            await websocket.close(1000)

    @api.route("POST", "/server/{server_id}/health", auth="report", body=models.ObservedServer,
               response=Ack, summary="A worker's status report for one of its servers")
    async def server_report(who: Principal, server_id: str,
                            body: models.ObservedServer) -> Response:
        control.report(who.worker_id or "", server_id, body)
        return json_response(Ack(True))

    # -- workers ---------------------------------------------------------------------------

    @api.route("GET", "/worker", response=WorkerList, summary="List workers")
    async def list_workers(who: Principal) -> Response:
        return json_response(WorkerList([fleet.worker_view(w) for w in fleet.workers.values()]))

    @api.route("POST", "/worker", auth="join", body=models.WorkerJoin,
               response=models.WorkerCredentials, status=201,
               summary="Join: a worker id and the token it uses from now on")
    async def join(who: Principal, body: models.WorkerJoin) -> Response:
        w = await control.join(body.name)
        return json_response(models.WorkerCredentials(
            w.id, secrets.worker_token(w.id, w.token_version)), 201)

    @api.route("POST", "/worker/{worker_id}", auth="worker", body=models.WorkerRegister,
               response=models.Worker, errors=(410,),
               summary="Register: where the host reaches the worker, and what it is")
    async def register(who: Principal, worker_id: str, body: models.WorkerRegister
                       ) -> Response:
        w = await control.register(control.worker(worker_id), body)
        return json_response(fleet.worker_view(w))

    @api.route("GET", "/worker/{worker_id}", response=models.Worker, summary="One worker")
    async def get_worker(who: Principal, worker_id: str) -> Response:
        return json_response(fleet.worker_view(control.worker(worker_id)))

    @api.route("PUT", "/worker/{worker_id}", body=models.WorkerUpdate, response=models.Worker,
               errors=(409,), summary="Update a worker (freeze / unfreeze, rename)")
    async def update_worker(who: Principal, worker_id: str,
                            body: models.WorkerUpdate) -> Response:
        w = await control.update_worker(control.worker(worker_id), body)
        return json_response(fleet.worker_view(w))

    @api.route("DELETE", "/worker/{worker_id}", response=models.Worker,
               summary="Ask the worker to shut down (servers stop gracefully); mark it shut down")
    async def delete_worker(who: Principal, worker_id: str) -> Response:
        w = control.worker(worker_id)
        await control.retire_worker(w, "asked by an admin")
        return json_response(fleet.worker_view(w))

    @api.route("POST", "/worker/{worker_id}/health", auth="worker", body=models.Heartbeat,
               response=models.HeartbeatReply, errors=(410,),
               summary="Heartbeat with observed states; the reply carries missing specs")
    async def heartbeat(who: Principal, worker_id: str, body: models.Heartbeat) -> Response:
        reply = control.heartbeat(worker_id, body)
        if body.events is not None:  # (a list, empty most of the time: no I/O then)
            reply.events_acked = await control.take_events(worker_id, body.events)
        if body.schedule_runs:  # runs that ended: the one database write a heartbeat may make
            reply.runs_taken = await control.take_runs(worker_id, body.schedule_runs)
        return json_response(reply)

    # -- the audit trail ----------------------------------------------------------------

    @api.route("GET", "/audit", response=audit.AuditPage, summary="The audit trail, newest first",
               query={"server_id": "string", "action": "string", "since": "number",
                      "until": "number", "cursor": "string",
                      "limit": {"type": "integer", "minimum": 1, "maximum": 1000}})
    async def audit_trail(who: Principal) -> Response:
        for name in ("server_id", "action"):  # (a NUL is refused for every route)
            value = request.args.get(name)
            if value is not None and len(value) > 200:
                raise errors.Invalid(f"{name}: at most 200 characters")
        key = request.args.get("server_id")
        s = fleet.server(key) if key else None
        cursor = request.args.get("cursor")
        if cursor is not None and not (cursor.isascii() and cursor.isdigit()
                                       and len(cursor) < 19):
            raise errors.Invalid("cursor: not one this API gave")
        await control.flush()  # what was just recorded shows
        return json_response(await audit.query(
            control.store, server_id=s.id if s else key, action=request.args.get("action"),
            since=audit.query_time("since"), until=audit.query_time("until"),
            cursor=int(cursor) if cursor is not None else None,
            limit=query_int("limit", 100, lo=1, hi=1000) or 100))

    add_file_routes(api, control)
    add_schedule_routes(api, control)
    add_backup_routes(api, control)
    return api
