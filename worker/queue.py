"""Our extension of procrastinate's queue worker, and the stalled-job sweeper.

What procrastinate (3.10) offers publicly was used where it covers the need:
task middleware and retry strategies (:mod:`worker.tasks`), the job manager's
calls (``list_jobs_to_abort_async``, ``get_stalled_jobs``, ``retry_job``,
``prune_stalled_workers``, ``register_worker``). What it does not cover is
here, each override for a reason procrastinate's worker gets wrong for us:

* ``_update_heartbeat``: upstream stops the whole worker at the first failed
  heartbeat. Ours beats on a connection of its own (a heartbeat that queues
  behind the pool's reconnection after a server restart looks like a dead
  worker), waits out outages, renews the pool, and fences the worker when it
  finds its registration gone (it was declared dead while cut off).
* ``_start_side_tasks`` / listener: upstream's listener decodes payloads
  unguarded, so one ``pg_notify(channel, 'x')`` from any role (NOTIFY is
  granted to everyone) stops it, and with it the worker; and it aborts a job
  on a bare ``abort_job_requested`` notification. Ours drops garbage, treats
  notifications as hints and aborts only jobs whose row says so.
* ``_fetch_and_process_jobs``: a failed fetch escapes upstream's run loop; and
  upstream clears its "look for jobs" event after every fetch, so a wake-up
  that arrives while a fetch runs (a job ended, a job was inserted, after the
  fetch's snapshot) is lost until the next poll. Ours looks again.
* ``_persist_job_status``: writing a job's end is retried through an outage,
  and skipped when the row says another worker runs the job now (this one
  froze past the stalled timeout and its job was handed over); once written,
  the worker looks for jobs again (the fetch's rules may have held one back
  for the job that just ended).
* ``JobManager.fetch_job`` (:class:`FullpassJobManager`): jobs are fetched by
  ``public.fullpass_fetch_job``, procrastinate's fetch with one rule more: a
  worker runs at most one lane of each stage of an import at a time, so that
  a stage spread over lanes runs on as many workers as it has lanes, and a
  lane of an import's other stage only with a slot to spare
  (:meth:`ResilientWorker.spare_slots`). It copies
  ``procrastinate_fetch_job_v2``: follow it when the pinned version moves.

The statements involved live in :mod:`worker.queries` ("the queue").
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable, Iterable
from typing import Any

import procrastinate
import psycopg
from procrastinate import exceptions as pexc
from procrastinate import job_context
from procrastinate import jobs as pjobs
from procrastinate import manager as pmanager
from procrastinate import worker as pworker
from procrastinate.manager import get_channel_for_queues
from psycopg_pool import AsyncConnectionPool

from worker import queries
from worker.redact import error_text
from worker.retry import backoff
from worker.settings import Settings

logger = logging.getLogger("fullpass.worker")

#: How long a fenced worker lets its jobs stop by themselves before cancelling them.
FENCE_GRACE_SECONDS = 5.0


class FullpassJobManager(pmanager.JobManager):
    """procrastinate's job manager, fetching with ``public.fullpass_fetch_job``.

    ``spare_slots`` (set by the worker): how many of the worker's slots stay
    free once the job being fetched runs. A worker running a lane of an import
    takes a lane of the import's other stage only if one does (revision 0016).
    ``fetching`` (set by the worker) is called as each fetch starts.
    """

    def __init__(self, connector: Any) -> None:
        super().__init__(connector)
        self.spare_slots: Callable[[], int] = lambda: 0
        self.fetching: Callable[[], None] = lambda: None

    async def fetch_job(self, queues: Iterable[str] | None, worker_id: int) -> pjobs.Job | None:
        self.fetching()
        row = await self.connector.execute_query_one_async(
            query=queries.FETCH_JOB,
            queues=list(queues) if queues is not None else None,
            worker_id=worker_id,
            spare_slots=self.spare_slots(),
        )
        if row["id"] is None:
            return None
        return pjobs.Job.from_row(row)


def is_database_error(exc: BaseException) -> bool:
    """The database could not be reached or dropped the session (not a bad query)."""
    if isinstance(exc, pexc.ConnectorException):
        exc = exc.__cause__ or exc
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


class ResilientWorker(pworker.Worker):
    """procrastinate's worker, made to ride out database outages.

    Upstream (3.10) stops the whole worker when a side task fails — one failed
    heartbeat, or the listener failing to reconnect — and lets a failed job
    fetch escape its run loop; a job whose final status cannot be written stays
    ``doing`` forever under a live worker. Here:

    * the heartbeat, the listener and the job fetch log the error and try
      again (the listener with backoff, then looks for jobs deferred meanwhile);
      the heartbeat has a connection of its own, so that it resumes as soon as
      the server is back, and renews the pool when it loses it;
    * writing a job's final status is retried until the database answers;
    * a worker that finds its registration gone (another worker declared it
      dead and requeued its jobs) fences itself: it abandons its running jobs
      without writing their status — they now belong to the queue — and
      registers again.
    """

    def __init__(
        self,
        *args: Any,
        heartbeat_dsn: str,
        persist_retry_seconds: float = 60.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.heartbeat_dsn = heartbeat_dsn
        self.persist_retry_seconds = persist_retry_seconds
        self._fenced_job_ids: set[int] = set()
        self._db_warned_at = 0.0
        self._abort_check: asyncio.Task[None] | None = None
        self._abort_recheck = False
        self._ignored_notifications = 0
        #: Jobs the sweeper saw marked as ours that we do not run (see the sweeper).
        self.orphans_seen: set[int] = set()
        #: Wake-ups so far, and how many there had been when the last fetch started.
        self._wakes = 0
        self._wakes_at_fetch = 0
        if isinstance(self.app.job_manager, FullpassJobManager):
            self.app.job_manager.spare_slots = self.spare_slots
            self.app.job_manager.fetching = self._fetching

    def spare_slots(self) -> int:
        """Slots left free once the job being fetched runs (its own slot is taken already)."""
        return max(self.concurrency - len(self._running_jobs) - 1, 0)

    def _db_warning(self, what: str, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._db_warned_at > 5.0:  # one line per outage, not one per retry
            self._db_warned_at = now
            logger.warning("database unavailable (%s: %s); still trying", what, error_text(exc))

    async def _renew_pool(self) -> None:
        """Replace every pool connection: they all died with the server.

        The pool tests a connection before lending it, but after each dead one
        it waits 1, 2, 4 ... s before trying the next: with a pool full of
        connections from before a restart, the heartbeat (and everything else)
        would wait for many seconds after the server is back. Connections in
        use now are replaced when they are returned.
        """
        pool = getattr(self.app.connector, "pool", None)
        if isinstance(pool, AsyncConnectionPool):
            try:
                await pool.drain()
            except Exception as exc:
                logger.debug("pool drain failed: %s", error_text(exc))

    async def _update_heartbeat(self) -> None:
        # Its own connection, not the pool's: a heartbeat that queues behind
        # the pool's reconnection after a restart looks like a dead worker.
        conn: psycopg.AsyncConnection[Any] | None = None
        last_ok = time.monotonic()
        try:
            while True:
                await asyncio.sleep(self.update_heartbeat_interval)
                try:
                    if conn is None or conn.closed:
                        conn = await psycopg.AsyncConnection.connect(
                            self.heartbeat_dsn, autocommit=True, connect_timeout=5
                        )
                    async with asyncio.timeout(max(5.0, 2 * self.update_heartbeat_interval)):
                        registered = await self._beat(conn)
                except (
                    psycopg.OperationalError,
                    psycopg.InterfaceError,
                    TimeoutError,
                    OSError,
                ) as exc:
                    self._db_warning("heartbeat", exc)
                    if conn is not None:
                        await conn.close()
                        conn = None
                        # The server went away: so did every pooled connection.
                        await self._renew_pool()
                    continue
                now = time.monotonic()
                if now - last_ok > 3 * self.update_heartbeat_interval + 1:
                    logger.warning("heartbeat resumed after a %.1fs gap", now - last_ok)
                last_ok = now
                if not registered:
                    await self._fence()
        finally:
            if conn is not None:
                await conn.close()

    async def _beat(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        """Send the heartbeat; False when this worker's registration is gone."""
        assert self.worker_id is not None
        params = {"worker_id": self.worker_id}
        await conn.execute(queries.UPDATE_HEARTBEAT, params)
        cur = await conn.execute(queries.WORKER_REGISTERED, params)
        row = await cur.fetchone()
        return bool(row and row[0])

    async def _fence(self) -> None:
        running = {ctx.job.id: task for task, ctx in self._running_jobs.items()}
        logger.error(
            "this worker was declared dead while it was cut off from the database;"
            " abandoning %d running job(s) to the queue and registering again",
            len(running),
        )
        for job_id in running:
            if job_id is not None:
                self._fenced_job_ids.add(job_id)
        # Their leases are gone: a stage stops by itself at its next model call
        # or write, booking what the calls in flight cost. Cancel the rest.
        if running:
            _, pending = await asyncio.wait(running.values(), timeout=FENCE_GRACE_SECONDS)
            for task in pending:
                task.cancel()
        self.worker_id = await self.app.job_manager.register_worker()
        logger.info("registered as queue worker %s", self.worker_id)

    def _start_side_tasks(self) -> list[asyncio.Task[Any]]:
        # Registered by now: the id that procrastinate_jobs.worker_id refers to.
        logger.info("registered as queue worker %s", self.worker_id)
        listen, self.listen_notify = self.listen_notify, False
        try:
            side_tasks = super()._start_side_tasks()
        finally:
            self.listen_notify = listen
        if listen:
            side_tasks.append(asyncio.create_task(self._listen(), name="listener"))
        return side_tasks

    async def _listen(self) -> None:
        failures = 0
        channels = get_channel_for_queues(self.queues)
        while True:
            started = time.monotonic()
            try:
                await self.app.connector.listen_notify(
                    on_notification=self._on_notify, channels=channels
                )
            except Exception as exc:
                if not is_database_error(exc):
                    raise
                self._db_warning("listener", exc)
            # The server went away (the listener is the first to notice): drop
            # the pool's dead connections now rather than one by one later.
            await self._renew_pool()
            # Jobs deferred while nobody listened were never announced: look now.
            self.wake()
            failures = 1 if time.monotonic() - started > 30 else failures + 1
            await asyncio.sleep(backoff(failures, base=0.5, cap=10.0))

    async def _on_notify(self, *, channel: str, payload: str) -> None:
        """Parse a notification leniently: any role may NOTIFY on our channels.

        procrastinate's own listener decodes the payload and reads its fields
        unguarded, so one ``pg_notify(channel, 'x')`` from ``anon`` would stop
        the listener, and with it the worker. Here garbage is dropped.
        """
        try:
            notification = json.loads(payload)
        except ValueError:
            notification = None
        if not isinstance(notification, dict) or not isinstance(notification.get("type"), str):
            self._ignored_notifications += 1
            return
        await self._handle_notification(channel=channel, notification=notification)

    async def _handle_notification(self, *, channel: str, notification: Any) -> None:
        """A notification is a hint to look, never an order.

        ``job_inserted`` costs one job fetch. ``abort_job_requested`` is checked
        against the jobs table: only a job whose row says an abort was
        requested (``cancel_import``/``requeue_import`` write it) is aborted.
        """
        if notification["type"] == "abort_job_requested":
            self._check_aborts_soon()
        elif notification["type"] == "job_inserted":
            self.wake()

    def _check_aborts_soon(self) -> None:
        """One check of the jobs to abort at a time, however many hints arrive."""
        if self._abort_check is not None and not self._abort_check.done():
            self._abort_recheck = True
            return
        self._abort_check = asyncio.create_task(self._check_aborts(), name="abort check")

    async def _check_aborts(self) -> None:
        while True:
            self._abort_recheck = False
            if self._running_jobs:
                try:
                    job_ids = await self.app.job_manager.list_jobs_to_abort_async()
                except Exception as exc:
                    self._db_warning("checking jobs to abort", exc)
                    return  # the periodic abort poll looks again
                self._handle_abort_jobs_requested(job_ids)
            if not self._abort_recheck:
                return

    async def _fetch_and_process_jobs(self) -> None:
        try:
            await super()._fetch_and_process_jobs()  # type: ignore[no-untyped-call]
        except Exception as exc:
            if not is_database_error(exc) and not isinstance(exc, pexc.ConnectorException):
                raise
            # Also a foreign-key error when our registration was pruned: the
            # heartbeat notices and fences. The run loop polls again shortly.
            self._db_warning("fetching a job", exc)
            await asyncio.sleep(random.uniform(0.5, 1.0))
        if self._wakes != self._wakes_at_fetch:
            # Woken while the last fetch ran, which upstream's loop then forgot:
            # what woke us (a job that ended, one inserted) may be what that
            # fetch could not see yet. The run loop looks again now.
            self._new_job_event.set()

    def _fetching(self) -> None:
        self._wakes_at_fetch = self._wakes

    async def _persist_job_status(
        self,
        job: pjobs.Job,
        status: pjobs.Status,
        retry_decision: Any,
        context: job_context.JobContext,
        job_result: job_context.JobResult | None,
    ) -> None:
        deadline = time.monotonic() + self.persist_retry_seconds
        attempt = 0
        while True:
            if job.id in self._fenced_job_ids:
                self._fenced_job_ids.discard(job.id)
                return  # abandoned to the queue: its status is someone else's now
            try:
                if not await self._still_ours(job):
                    logger.warning(
                        "job %s was handed to another worker while this one was stalled;"
                        " leaving its status alone",
                        job.id,
                    )
                    return
                await super()._persist_job_status(
                    job=job,
                    status=status,
                    retry_decision=retry_decision,
                    context=context,
                    job_result=job_result,
                )
                # A job that ends may make another one fetchable here (the next
                # lane of the same stage of an import, held back while this one
                # ran): look now, not at the next poll.
                self.wake()
                return
            except Exception as exc:
                if not is_database_error(exc) or time.monotonic() > deadline:
                    # The sweeper requeues a job left ``doing`` by this worker.
                    logger.error("could not record the end of job %s: %s", job.id, error_text(exc))
                    return
                self._db_warning(f"recording the end of job {job.id}", exc)
                attempt += 1
                await asyncio.sleep(backoff(attempt, base=0.25, cap=5.0))

    async def _still_ours(self, job: pjobs.Job) -> bool:
        """Whether the job's row still says this worker runs it.

        A worker that froze past the stalled timeout (SIGSTOP, a VM pause) has
        its jobs requeued and taken by others; when it wakes up, finishing
        "its" job would overwrite the new runner's status.
        """
        row = await self.app.connector.execute_query_one_async(queries.JOB_OWNER, job_id=job.id)
        return bool(row and row["status"] == "doing" and row["worker_id"] == self.worker_id)

    def wake(self) -> None:
        """Look for jobs now instead of at the next poll."""
        self._wakes += 1
        self._new_job_event.set()

    def running_job_ids(self) -> set[int]:
        return {ctx.job.id for ctx in self._running_jobs.values() if ctx.job.id is not None}


async def _server_uptime(app: procrastinate.App) -> float:
    row = await app.connector.execute_query_one_async(queries.SERVER_UPTIME)
    return float(row["uptime"])


async def sweep_stalled_jobs(
    app: procrastinate.App, settings: Settings, worker: ResilientWorker | None = None
) -> int:
    """Requeue jobs of workers whose heartbeat is older than the stalled timeout.

    Nobody can heartbeat while the server is down: right after a restart every
    worker gets the stalled timeout (plus time to reconnect) to check in again
    before anyone is declared dead. With ``worker``, also requeue jobs marked
    as run by that worker which it does not run (their end could not be
    recorded), once seen on two sweeps in a row.
    """
    reconnect = max(2 * settings.heartbeat_seconds, 5.0)
    if await _server_uptime(app) < settings.stalled_seconds + reconnect:
        return 0
    jobs = list(
        await app.job_manager.get_stalled_jobs(seconds_since_heartbeat=settings.stalled_seconds)
    )
    if worker is not None and worker.worker_id is not None:
        mine = await app.job_manager.list_jobs_async(status="doing", worker_id=worker.worker_id)
        running = worker.running_job_ids()
        orphans = {j.id: j for j in mine if j.id is not None and j.id not in running}
        lost = [j for i, j in orphans.items() if i in worker.orphans_seen]
        worker.orphans_seen = set(orphans)
        jobs.extend(lost)
    n = 0
    for job in jobs:
        try:
            await app.job_manager.retry_job(job)
            n += 1
            logger.warning(
                "requeued a stalled job (its worker stopped sending heartbeats)",
                extra={"job_id": job.id, "import_id": job.task_kwargs.get("import_id")},
            )
        except pexc.ConnectorException as exc:
            if is_database_error(exc):
                raise
            # Another job of this import is queued (queueing lock = import id):
            # e.g. the next stage, or a killed job of a finished stage that was
            # requeued before this one. Never drop this job for it — it may be
            # the one carrying the import; a job superseded by requeue/cancel
            # has an abort request and ends as failed above instead. Try again
            # on a later sweep, once the queued job has started.
            logger.info(
                "stalled job waits for the queued job of its import to start",
                extra={"job_id": job.id, "import_id": job.task_kwargs.get("import_id")},
            )
    await app.job_manager.prune_stalled_workers(settings.stalled_seconds)
    if n and worker is not None:
        worker.wake()  # a retried job is not announced by NOTIFY: look for it now
    return n


async def sweeper(
    app: procrastinate.App, settings: Settings, worker: ResilientWorker | None = None
) -> None:
    interval = max(1.0, settings.stalled_seconds / 3)
    while True:
        await asyncio.sleep(interval * random.uniform(0.8, 1.2))
        try:
            await sweep_stalled_jobs(app, settings, worker)
        except Exception as exc:
            logger.warning("stalled-job sweep failed: %s", error_text(exc))
