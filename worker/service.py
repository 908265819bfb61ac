"""The long-running worker process: pool, queue worker, sweeper, housekeeping.

procrastinate's workers send heartbeats; a worker that dies (``kill -9``,
machine loss) stops sending them. The sweeper, running in every worker
process, finds jobs still marked running by such a worker and puts them back
in the queue, where the stage resumes from its checkpoints
(:mod:`worker.queue`). The housekeeping loop repairs imports left without a
job and removes scratch files (:mod:`worker.maintenance`).

A database that goes away (a restart, a failover) is waited for with backoff,
never fatal: the queue worker rides out the outage
(:class:`~worker.queue.ResilientWorker`), and the sweeper gives every worker
time to heartbeat again after a server restart before it calls anyone dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Iterable
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from jobs.chunk import start_reader
from worker import maintenance, outbox, runner, search, tasks
from worker.db import Conn, resolve_dsn
from worker.embeddings import make_embedder
from worker.llm import make_provider
from worker.llm.budget import FleetBudget
from worker.queue import ResilientWorker, is_database_error, sweeper
from worker.redact import error_text, register_secrets
from worker.retry import backoff
from worker.settings import Settings
from worker.stages import QUEUE
from worker.store import Store

logger = logging.getLogger("fullpass.worker")


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


#: A pooled connection idle for longer than this is tested before it is lent.
CHECK_IDLE_SECONDS = 10.0


class Pool(AsyncConnectionPool[Conn]):
    """The pool, remembering when each connection came back (see :func:`_check_if_idle`)."""

    def __init__(self, dsn: str, **kwargs: Any) -> None:
        self._returned: weakref.WeakKeyDictionary[Conn, float] = weakref.WeakKeyDictionary()
        super().__init__(dsn, check=self._check_if_idle, **kwargs)

    async def putconn(self, conn: Conn) -> None:
        self._returned[conn] = time.monotonic()
        await super().putconn(conn)

    async def _check_if_idle(self, conn: Conn) -> None:
        """Test a connection before lending it, unless it was in use moments ago.

        The test is a round trip on every job fetch and every claim, whose
        latency it adds to the pickup of every import. A connection that
        worked seconds ago is as likely to have died since as one in use: a
        query on a dead connection fails like any lost connection (a stage is
        retried; a job fetch tries again), and the listener and the heartbeat,
        which notice a restarted server first, renew the whole pool.
        """
        returned = self._returned.get(conn)
        if returned is None or time.monotonic() - returned > CHECK_IDLE_SECONDS:
            await AsyncConnectionPool.check_connection(conn)


def make_pool(dsn: str, *, max_size: int) -> AsyncConnectionPool[Conn]:
    return Pool(
        dsn,
        min_size=1,
        max_size=max_size,
        kwargs={"row_factory": dict_row},
        configure=_autocommit,
        # A reconnection retries with backoff (1, 2, 4 s ...) for this long,
        # then starts over (see _keep_reconnecting): the delay between tries
        # stays short, so a restarted server is found again within ~2 s.
        reconnect_timeout=5.0,
        reconnect_failed=_keep_reconnecting,
        open=False,
        name="fullpass",
    )


async def run_worker(
    settings: Settings,
    *,
    concurrency: int | None = None,
    queues: Iterable[str] | None = None,
    install_signal_handlers: bool = True,
    shutdown_graceful_timeout: float = 30.0,
    dsn: str | None = None,
    poll_seconds: float = 2.0,
) -> None:
    """Serve import jobs until SIGTERM/SIGINT (or cancellation).

    ``poll_seconds``: how often an idle worker looks for jobs besides the
    queue's notifications (a job scheduled for later, a missed notification).
    """
    register_secrets(settings.secrets())
    dsn = dsn or resolve_dsn(settings)
    concurrency = concurrency or settings.worker_concurrency
    # Each running stage may hold a connection per in-flight LLM call's checkpoint.
    pool = make_pool(dsn, max_size=concurrency * 2 + settings.options.concurrency + 4)
    await _open_with_backoff(pool)
    try:
        # A model whose vectors do not fit the column: refuse to start.
        await search.check_embedding_column(pool, settings.embeddings)
    except BaseException:
        await pool.close()
        raise
    store = Store(pool)
    llm = make_provider(settings, FleetBudget.from_settings(settings, store))
    if settings.llm == "anthropic" and (unpriced := settings.unpriced_models()):
        logger.warning(
            "no list price known for %s: their cost is recorded as unknown "
            "(give it with FULLPASS_MODEL_PRICES)",
            ", ".join(unpriced),
        )
    try:
        embedder = make_embedder(settings.embeddings)
    except BaseException:
        await llm.aclose()
        await pool.close()
        raise
    try:
        await asyncio.to_thread(start_reader)
    except Exception as exc:
        logger.warning("export reader not started ahead: %s", error_text(exc))
    app = tasks.build_app()
    tasks.install(runner.Deps(settings=settings, store=store, llm=llm, embedder=embedder))
    logger.info(
        "worker starting: concurrency=%s queues=%s llm=%s rate budget=%s",
        concurrency,
        ",".join(queues or [QUEUE]),
        llm.model,
        f"{settings.rate_budget} (rpm={settings.rate_rpm}, itpm={settings.rate_itpm})"
        if settings.rate_rpm or settings.rate_itpm
        else "none",
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
        fetch_job_polling_interval=poll_seconds,
        abort_job_polling_interval=2.0,
        heartbeat_dsn=dsn,
        persist_retry_seconds=max(60.0, 2 * settings.stalled_seconds),
    )
    try:
        outbox.check(settings)  # a callback secret no receiver could check: refuse to start
        async with app.open_async(pool):
            background = [
                asyncio.create_task(sweeper(app, settings, worker), name="stalled-job sweeper"),
                asyncio.create_task(maintenance.loop(pool, settings), name="maintenance"),
                asyncio.create_task(outbox.loop(pool, settings, dsn), name="callback sender"),
            ]
            try:
                await _run_with_backoff(worker)
            finally:
                for task in background:
                    task.cancel()
    finally:
        await llm.aclose()
        if embedder is not None:
            await embedder.aclose()
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
    failures = 0
    while True:
        try:
            await worker.run()  # type: ignore[no-untyped-call]
            return
        except Exception as exc:
            if worker.worker_id is not None or not is_database_error(exc):
                raise
            logger.warning("database unavailable (%s); still trying", error_text(exc))
            failures += 1
            await asyncio.sleep(backoff(failures, base=1.0, cap=30.0))
