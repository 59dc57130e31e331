"""Schedule routes of the host (docs/spec.md, "Schedules"): views over the spec's
`schedules`, changed through the spec update path; run-now relayed to the worker (away:
503), which holds and fires them; runs from PostgreSQL, where the workers' heartbeats put
them."""

from __future__ import annotations

import time

import msgspec
from quart import Response

from manman import errors, models
from manman.host import audit
from manman.host.control import HostControl
from manman.http.app import Api, json_response
from manman.http.auth import Principal
from manman.schedules import edit
from manman.schedules.views import (
    KEEP_RUNS,
    RunList,
    ScheduleList,
    ScheduleRun,
    ScheduleView,
    view,
)


class ScheduleDeleted(msgspec.Struct):
    id: str
    deleted: bool


def _decode(content: bytes, kind: type[msgspec.Struct]) -> msgspec.Struct:
    try:
        return msgspec.json.decode(content, type=kind)
    except msgspec.MsgspecError:
        raise errors.WorkerError("the worker answered something that is not "
                                 f"a {kind.__name__}") from None


def add_schedule_routes(api: Api, control: HostControl) -> None:
    base = "/server/{server_id}/schedule"

    @api.route("GET", base, response=ScheduleList, summary="A server's schedules")
    async def list_schedules(who: Principal, server_id: str) -> Response:
        now = time.time()
        return json_response(ScheduleList(
            [view(s, now) for s in control.server(server_id).spec.schedules]))

    @api.route("POST", base, body=models.Schedule, response=ScheduleView, status=201,
               errors=(409,), summary="Add a schedule (its id given, or the next `sN`)")
    async def add_schedule(who: Principal, server_id: str, body: models.Schedule
                           ) -> Response:
        audit.note(detail=audit.detail_of({"schedule": body.id, "cron": body.cron}))
        s = await control.change_schedules(control.server(server_id),
                                           lambda cur: edit.added(cur, body))
        made = s.spec.schedules[-1]
        audit.note(detail=audit.detail_of({"schedule": made.id, "cron": made.cron}))
        return json_response(view(made, time.time()), 201)

    @api.route("GET", base + "/{sid}", response=ScheduleView, summary="One schedule")
    async def get_schedule(who: Principal, server_id: str, sid: str) -> Response:
        return json_response(view(edit.find(control.server(server_id).spec.schedules, sid),
                                  time.time()))

    @api.route("PUT", base + "/{sid}", body=models.Schedule, response=ScheduleView,
               errors=(409,), summary="Replace a schedule")
    async def put_schedule(who: Principal, server_id: str, sid: str, body: models.Schedule
                           ) -> Response:
        audit.note(detail=audit.detail_of({"schedule": sid, "cron": body.cron}))
        s = await control.change_schedules(control.server(server_id),
                                           lambda cur: edit.replaced(cur, sid, body))
        return json_response(view(edit.find(s.spec.schedules, sid), time.time()))

    @api.route("DELETE", base + "/{sid}", response=ScheduleDeleted, errors=(409,),
               summary="Remove a schedule (a run of it still going is cancelled)")
    async def delete_schedule(who: Principal, server_id: str, sid: str) -> Response:
        audit.note(detail=audit.detail_of({"schedule": sid}))
        await control.change_schedules(control.server(server_id),
                                       lambda cur: edit.removed(cur, sid))
        return json_response(ScheduleDeleted(sid, True))

    @api.route("POST", base + "/{sid}/run", response=ScheduleRun, status=202,
               errors=(409, 503), summary="Run a schedule now on its worker, ignoring "
                                          "only_when")
    async def run_schedule(who: Principal, server_id: str, sid: str) -> Response:
        s = control.server(server_id)
        edit.find(s.spec.schedules, sid)
        w = control.reachable_worker(s)
        audit.note(detail=audit.detail_of({"schedule": sid}))
        content = await control.relay.call(w, "POST", f"/server/{s.id}/schedule/{sid}/run")
        run = _decode(content, ScheduleRun)
        assert isinstance(run, ScheduleRun)
        audit.note(detail=audit.detail_of({"schedule": sid, "run": run.id}))
        return json_response(run, 202)

    @api.route("GET", base + "/{sid}/runs", response=RunList, errors=(502, 503),
               summary="A schedule's last 50 runs that ended, newest first, as its worker "
                       "reported them")
    async def schedule_runs(who: Principal, server_id: str, sid: str) -> Response:
        s = control.server(server_id)
        edit.find(s.spec.schedules, sid)
        if not control.worker(s.worker_id).sends_events:
            # a worker older than the reports of runs (it sends no events either): asked
            content = await control.relay.call(control.reachable_worker(s), "GET",
                                               f"/server/{s.id}/schedule/{sid}/runs")
            return json_response(_decode(content, RunList))
        records = await control.store.schedule_runs(s.id, sid, KEEP_RUNS)
        return json_response(RunList([msgspec.convert(r, ScheduleRun) for r in records]))
