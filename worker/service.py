"""The long-running worker process: pool, queue worker, stalled-job sweeper.

procrastinate's workers send heartbeats; a worker that dies (``kill -9``,
machine loss) stops sending them. The sweeper, running in every worker
process, finds jobs still marked running by such a worker and puts them back
in the queue, where the stage resumes from its checkpoints. A database that
goes away is waited for with backoff, never fatal.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterable

import procrastinate
from procrastinate import exceptions as pexc
from procrastinate.jobs import Status
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from worker import runner, tasks
from worker.db import Conn, resolve_dsn
from worker.llm import make_provider
from worker.redact import error_text, register_secrets
from worker.settings import Settings
from worker.stages import QUEUE

logger = logging.getLogger("fullpass.worker")


async def _autocommit(conn: Conn) -> None:
    await conn.set_autocommit(True)


def make_pool(dsn: str, *, max_size: int) -> AsyncConnectionPool[Conn]:
    return AsyncConnectionPool(
        dsn,
        min_size=1,
        max_size=max_size,
        kwargs={"row_factory": dict_row},
        configure=_autocommit,
        check=AsyncConnectionPool.check_connection,
        reconnect_timeout=0,  # keep trying: a database restart must not kill the worker
        open=False,
        name="fullpass",
    )


async def sweep_stalled_jobs(app: procrastinate.App, settings: Settings) -> int:
    """Requeue jobs of workers whose heartbeat is older than the stalled timeout."""
    jobs = await app.job_manager.get_stalled_jobs(seconds_since_heartbeat=settings.stalled_seconds)
    n = 0
    for job in jobs:
        try:
            await app.job_manager.retry_job(job)
            n += 1
            logger.warning(
                "requeued a stalled job (its worker stopped sending heartbeats)",
                extra={"job_id": job.id, "import_id": job.task_kwargs.get("import_id")},
            )
        except pexc.ConnectorException:
            # Another job of this import is already queued (a requeue happened):
            # this one is superseded.
            await app.job_manager.finish_job(job, status=Status.FAILED, delete_job=False)
    await app.job_manager.prune_stalled_workers(settings.stalled_seconds)
    return n


async def _sweeper(app: procrastinate.App, settings: Settings) -> None:
    interval = max(1.0, settings.stalled_seconds / 3)
    while True:
        await asyncio.sleep(interval * random.uniform(0.8, 1.2))
        try:
            await sweep_stalled_jobs(app, settings)
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
    pool = make_pool(dsn, max_size=concurrency * 2 + 4)
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
    try:
        async with app.open_async(pool):
            sweeper = asyncio.create_task(_sweeper(app, settings), name="stalled-job sweeper")
            try:
                await app.run_worker_async(
                    queues=list(queues or [QUEUE]),
                    concurrency=concurrency,
                    wait=True,
                    install_signal_handlers=install_signal_handlers,
                    shutdown_graceful_timeout=shutdown_graceful_timeout,
                    update_heartbeat_interval=settings.heartbeat_seconds,
                    stalled_worker_timeout=settings.stalled_seconds,
                    fetch_job_polling_interval=2.0,
                    abort_job_polling_interval=2.0,
                )
            finally:
                sweeper.cancel()
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
