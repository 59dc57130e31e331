"""The worker API of docs/spec.md: for its host (worker token), or for people when standalone
(its api_token), and for console viewers with a host-signed console token."""

from __future__ import annotations

import time
import uuid
from typing import Any

import msgspec
import trio
from quart import Response, request, websocket

from manman import errors, models
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
from manman.http.metrics import CONTENT_TYPE, WorkerMetrics
from manman.presets import PresetCatalog
from manman.presets import routes as preset_routes
from manman.worker.actor import ServerActor
from manman.worker.agent import Action, WorkerAgent
from manman.worker.backups.manager import BackupManager
from manman.worker.backups.routes import add_backup_routes
from manman.worker.console.viewer import Disconnect, run_viewer
from manman.worker.events import EventQueue
from manman.worker.files.denylist import Denylist
from manman.worker.files.routes import add_file_routes
from manman.worker.files.safe import FilesTree
from manman.worker.schedules.routes import add_schedule_routes
from manman.worker.schedules.service import WorkerSchedules
from manman.worker.stats.history import parse_since
from manman.worker.stats.sampler import StatsSampler


class WorkerServerCreate(models.ServerSpec, kw_only=True):
    """A create on the worker: a spec, and from a host also its id and generation."""

    id: str | None = None
    generation: models.Generation = 1


class WorkerServerUpdate(models.ServerUpdate, kw_only=True):
    generation: models.Generation | msgspec.UnsetType = msgspec.UNSET


class Deleted(msgspec.Struct):
    id: str
    deleted: bool


class StatusReply(msgspec.Struct):
    status: str


class WorkerSecrets:
    """Who may call this worker: one admin secret (its host's worker token, or its own
    api_token when standalone); console tokens are signed with a key derived from it."""

    def __init__(self, admin_secret: str) -> None:
        self.admin_secret = admin_secret
        self.console_key = auth.console_key(admin_secret)


# a history page holds at most about this much text; next_seq says where to go on
LOG_PAGE_CHARS = 8 << 20


def build_worker_api(agent: WorkerAgent, secrets: WorkerSecrets, metrics: WorkerMetrics,
                     catalog: PresetCatalog | None = None,
                     schedules: WorkerSchedules | None = None,
                     backups: BackupManager | None = None,
                     sampler: StatsSampler | None = None,
                     events: EventQueue | None = None) -> Api:
    async def authenticate(role: str, params: dict[str, str]) -> Principal:
        token = bearer_token()
        if same_secret(token, secrets.admin_secret):
            return Principal("admin")
        if token and token.count(".") == 2:  # a console token (JWT)
            claims = auth.verify_console_token(secrets.console_key, token)  # or Unauthorized
            if role != "console":
                raise errors.Forbidden("this token does not allow that")
            scopes = frozenset(str(claims["scope"]).split())
            server = params.get("server_id")
            try:
                actor_id = agent.get(server).id if server else None
            except errors.NotFound:
                actor_id = None
            if auth.READ not in scopes or claims["sub"] not in (server, actor_id):
                raise errors.Forbidden("this token does not allow that")
            return Principal("console", server_id=claims["sub"], scopes=scopes,
                             expires_at=float(claims["exp"]))
        raise errors.Unauthorized("a valid token is required")

    api = Api("manman.worker", "manman worker API", "1", authenticate=authenticate,
              requests=metrics)

    def view(actor: ServerActor) -> models.Server:
        server = models.server_view(actor.id, actor.spec, actor.status,
                                    generation=actor.generation,
                                    observed_generation=actor.generation,
                                    worker_status=agent.status,
                                    log_url=f"/server/{actor.id}/log/ws")
        server.desired_state = actor.desired_state  # a clean exit or a stop changes it locally
        return server

    # -- the worker itself ---------------------------------------------------------------

    @api.route("GET", "/status", response=models.WorkerRuntimeStatus,
               summary="The worker's status, server count and resources")
    async def status(who: Principal) -> Response:
        resources = agent.resources()
        if sampler is not None:
            resources.update(sampler.totals())
        return json_response(models.WorkerRuntimeStatus(
            status=agent.status, servers=len(agent.actors), resources=resources,
            events=events.status() if events is not None else None,
            limits=agent.limits.mode, limits_setting=agent.limits.setting))

    @api.route("GET", "/healthz", auth="none", response=dict, summary="Liveness")
    async def healthz() -> Response:
        return json_response({"ok": True})

    @api.route("GET", "/metrics", auth="none", media="text/plain",
               summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), content_type=CONTENT_TYPE)

    @api.route("POST", "/freeze", response=StatusReply, errors=(409, 507),
               summary="Stop applying changes")
    async def freeze(who: Principal) -> Response:
        await agent.set_frozen(True)
        return json_response(StatusReply(agent.status))

    @api.route("POST", "/unfreeze", response=StatusReply, errors=(409, 507),
               summary="Resume applying changes")
    async def unfreeze(who: Principal) -> Response:
        await agent.set_frozen(False)
        return json_response(StatusReply(agent.status))

    @api.route("POST", "/shutdown", response=StatusReply, status=202,
               query={"retire": "boolean"},
               summary="Stop every server gracefully, then exit (?retire=true: for good, "
                       "nothing runs again at the next start)")
    async def shutdown(who: Principal) -> Response:
        agent.request_shutdown(keep_desired=not query_bool("retire"))
        return json_response(StatusReply("shutdown"), 202)

    # -- servers -------------------------------------------------------------------------

    @api.route("GET", "/server", response=models.ServerList, summary="List servers",
               query={"game_id": "string", "state": "string"})
    async def list_servers(who: Principal) -> Response:
        from quart import request

        game_id, state = request.args.get("game_id"), request.args.get("state")
        out = [view(a) for a in agent.actors.values()
               if (not game_id or a.spec.game_id == game_id)
               and (not state or a.status.state == state)]
        return json_response(models.ServerList(out))

    presets = catalog if catalog is not None else PresetCatalog({})
    preset_routes.add_routes(api, presets)

    @api.route("POST", "/server", body=dict[str, Any],
               body_doc=(WorkerServerCreate, preset_routes.PresetCreate), response=models.Server,
               status=201, errors=(409, 507),
               summary="Create a server, from a spec or (standalone) a preset; a host passes "
                       "its own id")
    async def create(who: Principal, body: dict[str, Any]) -> Response:
        made = preset_routes.create_spec(body, presets, WorkerServerCreate)
        spec = models.ServerSpec(**{f: getattr(made, f)
                                    for f in models.ServerSpec.__struct_fields__})
        actor = await agent.create(spec, made.id, made.generation)
        return json_response(view(actor), 201)

    @api.route("GET", "/server/{server_id}", response=models.Server, summary="One server")
    async def get_server(who: Principal, server_id: str) -> Response:
        return json_response(view(agent.get(server_id)))

    @api.route("PUT", "/server/{server_id}", body=WorkerServerUpdate, response=models.Server,
               errors=(409, 507), summary="Change a server's spec")
    async def update(who: Principal, server_id: str, body: WorkerServerUpdate) -> Response:
        actor = agent.get(server_id)
        await agent.update(actor, body,
                           None if body.generation is msgspec.UNSET else body.generation)
        return json_response(view(actor))

    @api.route("DELETE", "/server/{server_id}", response=Deleted, errors=(202, 409, 507),
               query={"purge": "boolean", "stop": "boolean"},
               summary="Remove a stopped server (?stop=true stops it first; ?purge=true "
                       "also deletes its files)")
    async def delete(who: Principal, server_id: str) -> Response:
        actor = agent.get(server_id)
        if await agent.remove(actor, stop=query_bool("stop"), purge=query_bool("purge")):
            return json_response(Deleted(actor.id, True))
        return json_response(Deleted(actor.id, False), 202)

    def power(path: str, action: Action, summary: str) -> None:
        @api.route("POST", f"/server/{{server_id}}/{path}", response=models.Server,
                   status=202, errors=(409, 507), summary=summary)
        async def handler(who: Principal, server_id: str) -> Response:
            actor = agent.get(server_id)
            await agent.act(actor, action)
            return json_response(view(actor), 202)

        handler.__name__ = f"power_{path}"

    power("start", "start", "Start the server")
    power("shutdown", "stop", "Stop the server gracefully")
    power("kill", "kill", "Kill the server's processes now")
    power("restart", "restart", "Stop, then start the server")
    power("install", "install",
          "Install or update the game (stops and restarts a running server)")

    @api.route("POST", "/server/{server_id}/command", body=models.ConsoleInput,
               response=models.CommandAccepted, status=202, errors=(409, 503),
               summary="One console line to the game's stdin")
    async def command(who: Principal, server_id: str, body: models.ConsoleInput) -> Response:
        agent.send_console(agent.get(server_id), body.data)
        return json_response(models.CommandAccepted(uuid.uuid4().hex, True), 202)

    @api.route("GET", "/server/{server_id}/health", response=dict,
               summary="Probe the server now (process alive; tcp port when configured)")
    async def health(who: Principal, server_id: str) -> Response:
        return json_response(await agent.get(server_id).probe())

    @api.route("GET", "/server/{server_id}/stats", auth="console", response=models.StatsHistory,
               query={"since": {"type": "number"}},
               summary="The server's stats, a point a minute for up to 24 h")
    async def stats_history(who: Principal, server_id: str) -> Response:
        actor = agent.get(server_id)
        since = parse_since(request.args.get("since"))
        points = sampler.points(actor.id, since) if sampler is not None else []
        return json_response(models.StatsHistory(
            id=actor.id, interval=60, points=points))

    @api.route("GET", "/server/{server_id}/log", auth="console", response=models.LogPage,
               query={"since": SINCE, "limit": LIMIT},
               summary="Stored console lines")
    async def log_history(who: Principal, server_id: str) -> Response:
        actor = agent.get(server_id)
        limit = query_int("limit", 100, lo=1, hi=10000)
        assert limit is not None
        since = query_int("since", None)
        broker = actor.broker
        if since is None:
            lines = await broker.tail(limit, LOG_PAGE_CHARS)
        else:
            lines = await broker.history(since, limit, LOG_PAGE_CHARS)
        if lines:
            next_seq = lines[-1].seq + 1
        elif since is None:
            next_seq = broker.next_seq
        else:
            next_seq = min(max(since, broker.first_seq), broker.next_seq)
        return json_response(models.LogPage(lines=lines, next_seq=next_seq,
                                            first_seq=broker.first_seq))

    @api.websocket("/server/{server_id}/log/ws", auth="console",
                   query={"since": SINCE, "tail": TAIL, "token": "string", "stats": "boolean"},
                   summary="The live console (the console websocket protocol of docs/spec.md)")
    async def log_ws(who: Principal, server_id: str) -> None:
        actor = agent.get(server_id)
        since = query_int("since", None)
        tail = query_int("tail", 100, lo=0, hi=100000)
        assert tail is not None
        await websocket.accept()

        def current() -> ServerActor:
            # a faulted actor is rebuilt around the same console: commands go to the new one
            return agent.actors.get(actor.id, actor)

        async def on_command(line: str) -> None:
            agent.send_console(actor, line)

        try:
            await run_viewer(actor.broker, websocket.send, websocket.receive,
                             server_id=actor.id, state=lambda: current().status.state,
                             since=since, tail=tail,
                             on_command=on_command if who.can_write() else None,
                             expires_at=who.expires_at,
                             stats=sampler.feed(actor.id) if sampler is not None
                             and websocket.args.get("stats") in ("1", "true") else None)
        except Disconnect as e:
            await websocket.close(1008, str(e)[:120])
        else:
            with trio.move_on_after(1):
                await websocket.close(1000)

    def files_of(server_id: str) -> FilesTree:
        actor = agent.get(server_id)
        return FilesTree(actor.files_dir, Denylist(actor.spec.file_denylist))

    add_file_routes(api, files_of, agent.cfg.files_max_upload, agent.cfg.files_max_extract,
                    agent.disk)
    if schedules is not None:
        add_schedule_routes(api, agent, schedules)
    if backups is not None:
        add_backup_routes(api, agent, backups)
    return api


def issue_console_token(secrets: WorkerSecrets, server_id: str, write: bool,
                        ttl: float = 600) -> str:
    scopes = [auth.READ, auth.WRITE] if write else [auth.READ]
    return auth.sign_console_token(secrets.console_key, server_id, scopes, ttl, time.time())
