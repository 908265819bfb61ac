"""The long-running worker process: pool, queue worker, stalled-job sweeper.

procrastinate's workers send heartbeats; a worker that dies (``kill -9``,
machine loss) stops sending them. The sweeper, running in every worker
process, finds jobs still marked running by such a worker and puts them back
in the queue, where the stage resumes from its checkpoints.

A database that goes away (a restart, a failover) is waited for with backoff,
never fatal. procrastinate's own worker stops at the first failed heartbeat,
listener reconnection or job fetch, and may lose a job's final status;
:class:`ResilientWorker` keeps it running through the outage instead (see
there), and the sweeper gives every worker time to heartbeat again after a
server restart before it calls anyone dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Iterable
from typing import Any

import procrastinate
import psycopg
from procrastinate import exceptions as pexc
from procrastinate import job_context
from procrastinate import jobs as pjobs
from procrastinate import sql as psql
from procrastinate import worker as pworker
from procrastinate.manager import get_channel_for_queues
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from worker import maintenance, queries, runner, search, tasks
from worker.db import Conn, resolve_dsn
from worker.llm import make_provider
from worker.redact import error_text, register_secrets
from worker.settings import Settings
from worker.stages import QUEUE

logger = logging.getLogger("fullpass.worker")

#: How long a fenced worker lets its jobs stop by themselves before cancelling them.
FENCE_GRACE_SECONDS = 5.0


async def _autocommit(conn: Conn) -> None:
    await conn.set_autocommit(True)


async def _keep_reconnecting(pool: AsyncConnectionPool[Conn]) -> None:
    """Start reconnecting again when the pool gives up.

    psycopg_pool then waits for a *new* request to try again, while the
    requests already waiting (the heartbeat, the job fetch, the sweeper: every
    periodic task) wait out their 30 s timeout: the worker would sit idle,
    unseen, long after the database is back.
    """
    with contextlib.suppress(Exception):
        await pool.check()  # grows the pool again when it has no connection


def make_pool(dsn: str, *, max_size: int) -> AsyncConnectionPool[Conn]:
    return AsyncConnectionPool(
        dsn,
        min_size=1,
        max_size=max_size,
        kwargs={"row_factory": dict_row},
        configure=_autocommit,
        check=AsyncConnectionPool.check_connection,
        # A reconnection retries with backoff (1, 2, 4 s ...) for this long,
        # then starts over (see _keep_reconnecting): the delay between tries
        # stays short, so a restarted server is found again within ~2 s.
        reconnect_timeout=5.0,
        reconnect_failed=_keep_reconnecting,
        open=False,
        name="fullpass",
    )


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
        await conn.execute(psql.queries["update_heartbeat"], params)
        cur = await conn.execute(
            "SELECT EXISTS (SELECT 1 FROM procrastinate_workers WHERE id = %(worker_id)s)",
            params,
        )
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
        delay = 0.5
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
            if time.monotonic() - started > 30:
                delay = 0.5
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, 10.0)

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
            self._new_job_event.set()

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

    async def _persist_job_status(
        self,
        job: pjobs.Job,
        status: pjobs.Status,
        retry_decision: Any,
        context: job_context.JobContext,
        job_result: job_context.JobResult | None,
    ) -> None:
        deadline = time.monotonic() + self.persist_retry_seconds
        delay = 0.25
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
                return
            except Exception as exc:
                if not is_database_error(exc) or time.monotonic() > deadline:
                    # The sweeper requeues a job left ``doing`` by this worker.
                    logger.error("could not record the end of job %s: %s", job.id, error_text(exc))
                    return
                self._db_warning(f"recording the end of job {job.id}", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

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
        self._new_job_event.set()

    def running_job_ids(self) -> set[int]:
        return {ctx.job.id for ctx in self._running_jobs.values() if ctx.job.id is not None}


async def _server_uptime(app: procrastinate.App) -> float:
    row = await app.connector.execute_query_one_async(
        "SELECT extract(epoch FROM now() - pg_postmaster_start_time())::float8 AS uptime"
    )
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


async def _sweeper(
    app: procrastinate.App, settings: Settings, worker: ResilientWorker | None = None
) -> None:
    interval = max(1.0, settings.stalled_seconds / 3)
    while True:
        await asyncio.sleep(interval * random.uniform(0.8, 1.2))
        try:
            await sweep_stalled_jobs(app, settings, worker)
        except Exception as exc:
            logger.warning("stalled-job sweep failed: %s", error_text(exc))


async def run_worker(
    settings: Settings,
    *,
    concurrency: int | None = None,
    queues: Iterable[str] | None = None,
    install_signal_handlers: bool = True,
    shutdown_graceful_timeout: float = 30.0,
    dsn: str | None = None,
) -> None:
    """Serve import jobs until SIGTERM/SIGINT (or cancellation)."""
    register_secrets(settings.secrets())
    dsn = dsn or resolve_dsn(settings)
    concurrency = concurrency or settings.worker_concurrency
    # Each running stage may hold a connection per in-flight LLM call's checkpoint.
    pool = make_pool(dsn, max_size=concurrency * 2 + settings.options.concurrency + 4)
    await _open_with_backoff(pool)
    llm = make_provider(settings)
    app = tasks.build_app()
    tasks.install(runner.Deps(settings=settings, pool=pool, llm=llm))
    logger.info(
        "worker starting: concurrency=%s queues=%s llm=%s",
        concurrency,
        ",".join(queues or [QUEUE]),
        llm.model,
    )
    worker = ResilientWorker(
        app=app,
        queues=list(queues or [QUEUE]),
        concurrency=concurrency,
        wait=True,
        install_signal_handlers=install_signal_handlers,
        # procrastinate stops heartbeating as soon as a shutdown begins: jobs
        # still running after the stalled timeout would be requeued elsewhere
        # while they run here. Abort them (to be retried at once) before that.
        shutdown_graceful_timeout=min(shutdown_graceful_timeout, settings.stalled_seconds / 2),
        update_heartbeat_interval=settings.heartbeat_seconds,
        # Only used by procrastinate to prune dead workers when one starts, with
        # no regard for a server that just restarted (nobody could heartbeat):
        # leave that to the sweeper, and prune only the long dead at start.
        stalled_worker_timeout=max(10 * settings.stalled_seconds, 300.0),
        fetch_job_polling_interval=2.0,
        abort_job_polling_interval=2.0,
        heartbeat_dsn=dsn,
        persist_retry_seconds=max(60.0, 2 * settings.stalled_seconds),
    )
    try:
        await search.check_embedding_column(pool)  # a model that does not fit: refuse to start
        async with app.open_async(pool):
            background = [
                asyncio.create_task(_sweeper(app, settings, worker), name="stalled-job sweeper"),
                asyncio.create_task(maintenance.loop(pool, settings), name="maintenance"),
            ]
            try:
                await _run_with_backoff(worker)
            finally:
                for task in background:
                    task.cancel()
    finally:
        await llm.aclose()
        await pool.close()
        logger.info("worker stopped")


async def _open_with_backoff(pool: AsyncConnectionPool[Conn]) -> None:
    await pool.open(wait=False)
    timeout = 5.0
    while True:
        try:
            await pool.wait(timeout=timeout)
            return
        except Exception as exc:
            logger.warning("database unavailable (%s); still trying", error_text(exc))
            timeout = min(timeout * 2, 60.0)


async def _run_with_backoff(worker: ResilientWorker) -> None:
    """Run the queue worker; if the database is down at start (registration), wait for it."""
    delay = 1.0
    while True:
        try:
            await worker.run()  # type: ignore[no-untyped-call]
            return
        except Exception as exc:
            if worker.worker_id is not None or not is_database_error(exc):
                raise
            logger.warning("database unavailable (%s); still trying", error_text(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
