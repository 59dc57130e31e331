"""Schedule routes of the worker (docs/spec.md, "Schedules"): views over the spec's
`schedules`, changed through the worker's spec update; runs from the worker's runner."""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec
import trio
from quart import Response

from manman import models
from manman.http.app import Api, json_response
from manman.http.auth import Principal
from manman.schedules import edit
from manman.schedules.views import RunList, ScheduleList, ScheduleRun, ScheduleView, view
from manman.worker.agent import WorkerAgent
from manman.worker.schedules.service import WorkerSchedules


class ScheduleDeleted(msgspec.Struct):
    id: str
    deleted: bool


def add_schedule_routes(api: Api, agent: WorkerAgent, service: WorkerSchedules) -> None:
    lock = trio.Lock()  # read, change and write a server's list as one step

    async def change(server_id: str,
                     how: Callable[[list[models.Schedule]], list[models.Schedule]]
                     ) -> list[models.Schedule]:
        async with lock:
            actor = agent.get(server_id)
            new = how(actor.spec.schedules)
            # the desired state as it is now (a start by hand is not in the spec): a schedule
            # change starts or stops nothing
            await agent.update(actor, models.ServerUpdate(
                schedules=new, desired_state=actor.desired_state))
            return actor.spec.schedules

    base = "/server/{server_id}/schedule"

    @api.route("GET", base, response=ScheduleList, summary="A server's schedules")
    async def list_schedules(who: Principal, server_id: str) -> Response:
        now = time.time()
        return json_response(ScheduleList(
            [view(s, now) for s in agent.get(server_id).spec.schedules]))

    @api.route("POST", base, body=models.Schedule, response=ScheduleView, status=201,
               errors=(409, 507), summary="Add a schedule (its id given, or the next `sN`)")
    async def add_schedule(who: Principal, server_id: str, body: models.Schedule
                           ) -> Response:
        schedules = await change(server_id, lambda cur: edit.added(cur, body))
        return json_response(view(schedules[-1], time.time()), 201)

    @api.route("GET", base + "/{sid}", response=ScheduleView, summary="One schedule")
    async def get_schedule(who: Principal, server_id: str, sid: str) -> Response:
        return json_response(view(edit.find(agent.get(server_id).spec.schedules, sid),
                                  time.time()))

    @api.route("PUT", base + "/{sid}", body=models.Schedule, response=ScheduleView,
               errors=(409, 507), summary="Replace a schedule")
    async def put_schedule(who: Principal, server_id: str, sid: str, body: models.Schedule
                           ) -> Response:
        schedules = await change(server_id, lambda cur: edit.replaced(cur, sid, body))
        return json_response(view(edit.find(schedules, sid), time.time()))

    @api.route("DELETE", base + "/{sid}", response=ScheduleDeleted, errors=(409, 507),
               summary="Remove a schedule (a run of it still going is cancelled)")
    async def delete_schedule(who: Principal, server_id: str, sid: str) -> Response:
        await change(server_id, lambda cur: edit.removed(cur, sid))
        return json_response(ScheduleDeleted(sid, True))

    @api.route("POST", base + "/{sid}/run", response=ScheduleRun, status=202,
               errors=(409, 503), summary="Run a schedule now, ignoring only_when")
    async def run_schedule(who: Principal, server_id: str, sid: str) -> Response:
        actor = agent.get(server_id)
        s = edit.find(actor.spec.schedules, sid)
        return json_response(await service.fire_now(actor, s), 202)

    @api.route("GET", base + "/{sid}/runs", response=RunList,
               summary="A schedule's last 50 runs, newest first")
    async def schedule_runs(who: Principal, server_id: str, sid: str) -> Response:
        actor = agent.get(server_id)
        edit.find(actor.spec.schedules, sid)
        ss = service.of(actor)
        return json_response(RunList(ss.history(sid) if ss is not None else []))
