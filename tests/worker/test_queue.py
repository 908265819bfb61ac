"""The queue worker's own rules, through real PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

from procrastinate import jobs as pjobs
from psycopg_pool import AsyncConnectionPool

from tests.conftest import USER_A, query
from tests.helpers import submit
from worker import tasks
from worker.queue import ResilientWorker
from worker.settings import Settings


async def test_a_wake_up_during_a_fetch_that_found_nothing_is_not_lost(
    settings: Settings, pool: AsyncConnectionPool[Any], db_dsn: str
) -> None:
    """A job that ends (or is inserted) while the worker's fetch runs: the fetch
    cannot see it yet, and the worker must look again rather than wait for its
    next poll."""
    import_id = submit(settings, USER_A)
    query(
        db_dsn, "delete from procrastinate_jobs where args ->> 'import_id' = %s", (str(import_id),)
    )
    app = tasks.build_app()
    worker = ResilientWorker(
        app=app, queues=["imports"], concurrency=2, wait=False, heartbeat_dsn=db_dsn
    )
    manager = app.job_manager
    fetch = manager.fetch_job
    fetched: list[pjobs.Job | None] = []

    async def fetch_while_a_job_ends(queues: Any, worker_id: int) -> pjobs.Job | None:
        job = await fetch(queues, worker_id)
        # What a job's end does once its status is written, as this fetch's query runs.
        worker.wake()
        fetched.append(job)
        return job

    async with app.open_async(pool):
        worker.worker_id = await manager.register_worker()
        manager.fetch_job = fetch_while_a_job_ends  # type: ignore[method-assign]
        worker._job_semaphore = asyncio.Semaphore(worker.concurrency)
        worker._running_jobs = {}
        await worker._fetch_and_process_jobs()
        assert fetched == [None]
        assert worker._new_job_event.is_set()
        # A fetch nothing woke during leaves the worker waiting for a reason to look.
        manager.fetch_job = fetch  # type: ignore[method-assign]
        worker._new_job_event.clear()
        await worker._fetch_and_process_jobs()
        assert not worker._new_job_event.is_set()
