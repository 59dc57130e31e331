"""Sending events to webhooks: a time-out on each attempt, retries with backoff for up to a
day, `Retry-After` honoured on 429, at most 5 attempts in flight per hook.

Events the host derives come from the heartbeat path (`emit`, no I/O, never blocks) through
a bounded queue. Each (hook, event) pair is written to the `webhook_outbox` table before its
first attempt and deleted when it is done, so a host that stops or crashes resumes the
deliveries it had not finished at its next start; while PostgreSQL is away, deliveries go
on from memory. The events workers send are written to the outbox by their intake
(manman.host.webhooks.service) before the worker is told they were taken, then handed here
(`deliver_stored`).
"""

from __future__ import annotations

import email.utils
import logging
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
import trio

from manman import errors
from manman.backoff import Backoff
from manman.host.store import HostStore
from manman.host.webhooks import payloads
from manman.host.webhooks.model import HookRec, OwnApi, check_url
from manman.host.webhooks.payloads import Event
from manman.host.webhooks.pinned import checked_client

log = logging.getLogger("manman.host.webhooks")

IN_FLIGHT = 5  # attempts at once per hook
LOG_SIZE = 100  # attempts kept per hook for GET /webhook/{id}/deliveries
QUEUE = 10000  # events waiting to be fanned out to hooks
PENDING_PER_HOOK = 10000  # deliveries a hook may have waiting (a dead receiver's backlog)
DROP_LOG_EVERY = 60.0
LOG_WRITE_EVERY = 1.0  # the attempts' log goes to PostgreSQL in batches
RETRIED = frozenset({408, 425, 429, 500, 502, 503, 504})
ORDER_WAIT = 2.0  # an ordered delivery waits at most this for the one before it


class Attempt(msgspec.Struct):
    event_id: str
    event: str
    at: float  # when the attempt started
    attempt: int  # 1 for the first
    ok: bool
    status: int | None  # the receiver's HTTP status; null: no answer (error says why)
    latency_ms: float
    error: str | None = None
    next_attempt_at: float | None = None  # null: no retry (done, refused, or out of time)


class AttemptList(msgspec.Struct):
    deliveries: list[Attempt]


@dataclass
class Policy:
    timeout: float = 10.0  # one attempt, all in
    retry_initial: float = 10.0
    retry_max: float = 3600.0
    give_up_after: float = 86400.0


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds a `Retry-After` header asks to wait: a number of seconds, or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


class Turns:
    """First attempts in the order their deliveries were started: the next one's begins
    when the one before has had its first answer (or ORDER_WAIT passed: a hung receiver
    does not hold the rest for its whole time-out)."""

    def __init__(self) -> None:
        self._next = 0  # the ticket the next delivery gets
        self._serving = 0  # tickets below are done
        self._done: set[int] = set()
        # the tickets waiting, each woken alone when its turn comes (waking every waiter at
        # each answer cost time in the square of the deliveries waiting)
        self._waiting: dict[int, trio.Event] = {}

    def take(self) -> int:
        self._next += 1
        return self._next - 1

    async def wait(self, ticket: int) -> None:
        if self._serving >= ticket:
            return
        event = self._waiting.setdefault(ticket, trio.Event())
        try:
            with trio.move_on_after(ORDER_WAIT):
                await event.wait()
        finally:
            self._waiting.pop(ticket, None)

    def done(self, ticket: int) -> None:
        self._done.add(ticket)
        while self._serving in self._done:
            self._done.discard(self._serving)
            self._serving += 1
        event = self._waiting.get(self._serving)
        if event is not None:
            event.set()


class _Hook:
    def __init__(self, rec: HookRec) -> None:
        self.rec = rec
        self.limiter = trio.CapacityLimiter(IN_FLIGHT)
        self.log: deque[Attempt] = deque(maxlen=LOG_SIZE)
        self.pending = 0
        self.turns = Turns()  # the events workers send, and those resumed, go in order


class Dispatcher:
    def __init__(self, store: HostStore, policy: Policy | None = None) -> None:
        self.store = store
        self.policy = policy or Policy()
        self.own = OwnApi()
        self.hooks: dict[str, _Hook] = {}
        self._send, self._receive = trio.open_memory_channel[Event](QUEUE)
        self._nursery: trio.Nursery | None = None
        self._http = checked_client(lambda: self.own, self.policy.timeout)
        self.dropped = 0
        self._drop_logged = -DROP_LOG_EVERY
        self.delivered = 0
        self.attempts: Counter[str] = Counter()  # by outcome: ok, failed (an answer), error
        self._unwritten: list[tuple[str, Attempt]] = []  # (hook id, attempt) for the log

    # -- the hooks, as the API changes them ------------------------------------------------

    def put(self, rec: HookRec) -> None:
        hook = self.hooks.get(rec.id)
        if hook is None:
            self.hooks[rec.id] = _Hook(rec)
        else:
            hook.rec = rec  # deliveries under way see the change at their next attempt

    def remove(self, hook_id: str) -> None:
        self.hooks.pop(hook_id, None)

    # -- events in ---------------------------------------------------------------------------

    def emit(self, event: str, data: dict[str, Any], *, server: dict[str, Any] | None = None,
             worker: dict[str, Any] | None = None) -> None:
        """Queue an event (no I/O: the heartbeat path calls this)."""
        server_id = server.get("id") if server else None
        if not any(h.rec.wants(event, server_id) for h in self.hooks.values()):
            return
        ev = Event(uuid.uuid4().hex, event, time.time(), data, server, worker)
        try:
            self._send.send_nowait(ev)
        except trio.WouldBlock:
            self._dropped(1)

    def wanting(self, event: str, server_id: str | None) -> list[_Hook]:
        return [h for h in self.hooks.values() if h.rec.wants(event, server_id)]

    async def resume_worker(self, worker_id: str, after: int, upto: int) -> int:
        """The outbox rows of a worker's events `after` < seq <= `upto`, written by a commit
        whose answer was lost: delivered now, not at the next start. Their number."""
        rows = await self.store.fetch(
            "SELECT hook_id, event, created_at FROM webhook_outbox WHERE id LIKE $1 "
            "ORDER BY created_at", f"%/{worker_id}-%")
        n = 0
        for r in rows:
            event_id = str(r["event"]["id"])
            if not event_id.startswith(f"{worker_id}-"):  # (LIKE's _ matches any character)
                continue
            seq = int(event_id.rsplit("-", 1)[1])
            hook = self.hooks.get(r["hook_id"])
            if after < seq <= upto and hook is not None and self._nursery is not None:
                self._start(self._nursery, hook, msgspec.convert(r["event"], Event),
                            r["created_at"], stored=True, ordered=True)
                n += 1
        return n

    def deliver_stored(self, hook: _Hook, ev: Event, since: float) -> None:
        """A delivery whose outbox row is written: from now (no I/O); a host not running
        its deliveries yet resumes it from the outbox at its next start."""
        if self._nursery is not None and self.hooks.get(hook.rec.id) is hook:
            self._start(self._nursery, hook, ev, since, stored=True, ordered=True)

    def _dropped(self, n: int) -> None:
        self.dropped += n
        now = time.monotonic()
        if now - self._drop_logged >= DROP_LOG_EVERY:
            self._drop_logged = now
            log.error("webhook events dropped: the queue is full (%d so far)", self.dropped)

    # -- the loop ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await self._load_logs()
                await self._resume(nursery)
                nursery.start_soon(self._log_writer)
                task_status.started()
                async for ev in self._receive:
                    server_id = ev.server.get("id") if ev.server else None
                    for hook in list(self.hooks.values()):
                        if hook.rec.wants(ev.event, server_id):
                            self._start(nursery, hook, ev, time.time(), stored=False)
        finally:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(5):
                    await self.write_logs()  # the last second's attempts
                await self._http.aclose()

    async def _resume(self, nursery: trio.Nursery) -> None:
        """The deliveries a previous run of the host left unfinished."""
        try:
            rows = await self.store.fetch(
                "SELECT hook_id, event, created_at FROM webhook_outbox ORDER BY created_at")
        except errors.DatabaseUnavailable:
            return  # a database away at the start was refused earlier already
        for r in rows:
            hook = self.hooks.get(r["hook_id"])
            if hook is not None:
                self._start(nursery, hook, msgspec.convert(r["event"], Event),
                            r["created_at"], stored=True, ordered=True)
        if rows:
            log.info("resuming %d webhook deliveries from before the last stop", len(rows))

    async def _load_logs(self) -> None:
        try:
            rows = await self.store.fetch(
                "SELECT hook_id, attempt FROM (SELECT hook_id, attempt, seq, row_number() OVER "
                "(PARTITION BY hook_id ORDER BY seq DESC) AS n FROM webhook_deliveries) t "
                f"WHERE n <= {LOG_SIZE} ORDER BY seq")
        except errors.DatabaseUnavailable:
            return
        for r in rows:
            hook = self.hooks.get(r["hook_id"])
            if hook is not None:
                hook.log.append(msgspec.convert(r["attempt"], Attempt))

    async def _log_writer(self) -> None:
        """Every LOG_WRITE_EVERY: the new attempts in one transaction, and each hook's log cut
        to its last LOG_SIZE. While PostgreSQL is away they wait (the newest LOG_SIZE a
        hook)."""
        while True:
            await trio.sleep(LOG_WRITE_EVERY)
            await self.write_logs()

    async def write_logs(self) -> None:
        batch, self._unwritten = self._unwritten, []
        batch = [(h, a) for h, a in batch if h in self.hooks]
        if not batch:
            return
        hooks = sorted({h for h, _ in batch})

        async def body(conn: Any) -> None:
            await conn.executemany(
                "INSERT INTO webhook_deliveries (hook_id, attempt) VALUES ($1, $2)",
                [(h, msgspec.to_builtins(a)) for h, a in batch])
            await conn.execute(
                "DELETE FROM webhook_deliveries d USING (SELECT seq, row_number() OVER "
                "(PARTITION BY hook_id ORDER BY seq DESC) AS n FROM webhook_deliveries "
                "WHERE hook_id = ANY($1::text[])) t WHERE d.seq = t.seq AND t.n > $2",
                hooks, LOG_SIZE)

        try:
            await self.store.write_batch(body)
        except errors.DatabaseUnavailable:
            keep: dict[str, int] = {}
            for h, a in reversed(batch + self._unwritten):
                keep[h] = keep.get(h, 0) + 1
                if keep[h] <= LOG_SIZE:
                    self._unwritten.insert(0, (h, a))
        except Exception as e:
            log.warning("webhook deliveries log: %s: %s", type(e).__name__, e)

    def _start(self, nursery: trio.Nursery, hook: _Hook, ev: Event, since: float,
               stored: bool, ordered: bool = False) -> None:
        if hook.pending >= PENDING_PER_HOOK:
            self._dropped(1)
            if stored:  # its outbox row goes too: a dead receiver's backlog stays bounded
                nursery.start_soon(self._quiet, "DELETE FROM webhook_outbox WHERE id = $1",
                                   f"{hook.rec.id}/{ev.id}")
            return
        hook.pending += 1
        nursery.start_soon(self._deliver, hook, ev, since, stored,
                           hook.turns.take() if ordered else None)

    async def _quiet(self, sql: str, *args: Any) -> bool:
        try:
            await self.store.write_quietly(sql, *args)
        except errors.DatabaseUnavailable:
            return False
        except Exception as e:  # never stops a delivery: it goes on from memory
            log.warning("webhook outbox: %s: %s", type(e).__name__, e)
            return False
        return True

    async def _deliver(self, hook: _Hook, ev: Event, since: float, stored: bool,
                       turn: int | None = None) -> None:
        key = f"{hook.rec.id}/{ev.id}"
        finished = False  # cancelled (the host stops): the outbox row stays for the next run
        try:
            if turn is not None:
                await hook.turns.wait(turn)
            if not stored:
                stored = await self._quiet(
                    "INSERT INTO webhook_outbox (id, hook_id, event, created_at) VALUES "
                    "($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING", key, hook.rec.id,
                    msgspec.to_builtins(ev), since)
            policy = self.policy
            backoff = Backoff(policy.retry_initial, policy.retry_max, jitter=0.1)
            deadline = since + policy.give_up_after
            n = 0
            while self.hooks.get(hook.rec.id) is hook and hook.rec.enabled:
                n += 1
                attempt, wait = await self.attempt(hook, ev, n)
                if turn is not None:  # the next one's first attempt may go
                    hook.turns.done(turn)
                    turn = None
                if attempt.ok or wait is None:
                    break
                delay = wait if wait > 0 else backoff.next()
                if time.time() + delay > deadline:
                    break  # out of time: the attempt shows no next one
                attempt.next_attempt_at = time.time() + delay
                await trio.sleep(delay)
            finished = True
        finally:
            if turn is not None:  # no attempt made (the hook went, or the host stops)
                hook.turns.done(turn)
            hook.pending -= 1
            if stored and finished:
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    await self._quiet("DELETE FROM webhook_outbox WHERE id = $1", key)

    async def attempt(self, hook: _Hook, ev: Event, n: int = 1) -> tuple[Attempt, float | None]:
        """One attempt, within the hook's limit of attempts in flight; recorded in its log.
        Returns it and when to retry: None never, 0 by the backoff, else that many
        seconds (a 429's Retry-After)."""
        async with hook.limiter:
            rec = hook.rec
            started, t0 = time.time(), time.perf_counter()
            status: int | None = None
            error: str | None = None
            headers: httpx.Headers | None = None
            try:
                await check_url(rec.url, self.own)  # a name may resolve elsewhere now
                body, head = payloads.render(rec.kind, ev, rec.secret)
                with trio.fail_after(self.policy.timeout):
                    # the answer's body is not read: a receiver could send gigabytes
                    # within the time-out, all held in memory
                    async with self._http.stream("POST", rec.url, content=body,
                                                 headers=head) as r:
                        status, headers = r.status_code, r.headers
            except errors.Invalid as e:
                error = e.message
            except trio.TooSlowError:
                error = f"no answer within {self.policy.timeout:g} s"
            except (httpx.HTTPError, OSError) as e:
                error = f"{type(e).__name__}: {str(e)[:200]}".rstrip(": ")
            ok = status is not None and 200 <= status < 300
            attempt = Attempt(ev.id, ev.event, started, n, ok, status,
                              round((time.perf_counter() - t0) * 1000, 3), error)
            hook.log.append(attempt)
            self.attempts["ok" if ok else "failed" if status is not None else "error"] += 1
            # the same object: a retry's next_attempt_at set meanwhile is written with it
            self._unwritten.append((rec.id, attempt))
        if ok:
            self.delivered += 1
            return attempt, None
        if status is None:
            return attempt, (None if error and error.startswith("url:") else 0.0)
        if status == 429:
            after = retry_after(headers.get("Retry-After") if headers else None, time.time())
            return attempt, after if after is not None else 0.0
        return attempt, 0.0 if status in RETRIED else None

    async def test(self, hook_id: str) -> Attempt:
        """A `webhook.test` event now, one attempt, no retry."""
        hook = self.hooks[hook_id]
        ev = Event(uuid.uuid4().hex, "webhook.test", time.time(),
                   {"message": "a test of this webhook from manman"})
        attempt, _ = await self.attempt(hook, ev)
        return attempt

    def pending(self) -> int:
        """Deliveries under way: an attempt in flight or a retry waited for."""
        return sum(h.pending for h in self.hooks.values())

    def deliveries(self, hook_id: str) -> list[Attempt]:
        """The last attempts, newest first."""
        return list(reversed(self.hooks[hook_id].log))
