"""Helpers shared by the database and pipeline tests."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tests.conftest import REPO, query
from tests.gen_export import Options, write_export
from worker import runner
from worker.errors import StaleJob
from worker.service import run_worker
from worker.settings import Settings
from worker.stages import LANE_TASK, STAGES

SAMPLE = REPO / "worker" / "samples" / "sample-export.zip"


def gen_export(out: Path, *, zipped: bool = False, shards: int = 0, **options: Any) -> Path:
    """Write a generated export (:mod:`tests.gen_export`, ``options`` as in its ``Options``)."""
    write_export(out, Options(**options), zipped=zipped, shards=shards)
    return out


def place_export(
    settings: Settings, user_id: uuid.UUID, source: Path, name: str | None = None
) -> str:
    """Copy an export into the local storage dir; return its storage_path."""
    storage_path = f"user-imports/{user_id}/{name or source.name}"
    target = settings.resolved_storage_dir / storage_path
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return storage_path


def insert_import(
    dsn: str,
    user_id: uuid.UUID,
    storage_path: str | None,
    options: str = "{}",
    *,
    source: str = "export",
) -> uuid.UUID:
    rows = query(
        dsn,
        "insert into public.imports (user_id, storage_path, options, source)"
        " values (%s, %s, %s::jsonb, %s) returning id",
        (user_id, storage_path, options, source),
    )
    return uuid.UUID(str(rows[0]["id"]))


def submit(
    settings: Settings, user_id: uuid.UUID, source: Path = SAMPLE, options: str = "{}"
) -> uuid.UUID:
    assert settings.database_url
    return insert_import(
        settings.database_url, user_id, place_export(settings, user_id, source), options
    )


def import_row(dsn: str, import_id: uuid.UUID) -> dict[str, Any]:
    """The import's row (``options`` as text: a test may have written anything there)."""
    columns = query(
        dsn,
        "select string_agg(case when column_name = 'options' then 'options::text'"
        " else quote_ident(column_name) end, ', ') as c from information_schema.columns"
        " where table_schema = 'public' and table_name = 'imports'",
    )[0]["c"]
    return query(dsn, f"select {columns} from public.imports where id = %s", (import_id,))[0]


def progress_row(dsn: str, import_id: uuid.UUID) -> dict[str, Any]:
    return query(dsn, "select * from public.import_progress where import_id = %s", (import_id,))[0]


def stage_rows(dsn: str, import_id: uuid.UUID) -> dict[str, dict[str, Any]]:
    rows = query(
        dsn,
        "select * from public.import_stages where import_id = %s order by position",
        (import_id,),
    )
    return {r["stage"]: r for r in rows}


def jobs_of(dsn: str, import_id: uuid.UUID) -> list[dict[str, Any]]:
    return query(
        dsn,
        "select id, task_name, status, args, attempts from procrastinate_jobs"
        " where args ->> 'import_id' = %s order by id",
        (str(import_id),),
    )


@contextlib.asynccontextmanager
async def running_worker(
    settings: Settings, concurrency: int = 2, poll_seconds: float = 2.0
) -> AsyncIterator[asyncio.Task[None]]:
    """A real worker (procrastinate, LISTEN/NOTIFY, sweeper) in this event loop."""
    task = asyncio.create_task(
        run_worker(
            settings,
            concurrency=concurrency,
            install_signal_handlers=False,
            shutdown_graceful_timeout=2.0,
            poll_seconds=poll_seconds,
        )
    )
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def wait_status(
    dsn: str,
    import_id: uuid.UUID,
    statuses: tuple[str, ...],
    timeout: float = 60.0,
    worker: asyncio.Task[None] | None = None,
) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        row = import_row(dsn, import_id)
        if row["status"] in statuses:
            return row
        if worker is not None and worker.done():
            worker.result()
            raise AssertionError("worker stopped")
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(
                f"import {import_id} still {row['status']} at {row['stage']}: {row['error']}"
            )
        await asyncio.sleep(0.1)


async def drive(
    deps: runner.Deps, dsn: str, import_id: uuid.UUID, *, until: str | None = None
) -> None:
    """Run the import's queued jobs one by one in this process, the way a worker would.

    ``until``: jobs of stages after it (in ``STAGES`` order) are left queued.
    """

    def stage_of(job: dict[str, Any]) -> str:
        if job["task_name"] == LANE_TASK:
            return str(job["args"]["stage"])
        return str(job["task_name"]).removeprefix("fullpass.")

    while True:
        queued = query(
            dsn,
            "select id, task_name, args from procrastinate_jobs where args ->> 'import_id' = %s"
            " and status = 'todo' and (scheduled_at is null or scheduled_at <= now())"
            " order by priority desc, id",
            (str(import_id),),
        )
        allowed = [
            j for j in queued if until is None or STAGES.index(stage_of(j)) <= STAGES.index(until)
        ]
        if not allowed:
            return
        job = allowed[0]
        query(dsn, "update procrastinate_jobs set status = 'doing' where id = %s", (job["id"],))
        args = job["args"]
        lane = job["task_name"] == LANE_TASK
        stage = stage_of(job)
        try:
            if lane:
                await runner.run_lane(
                    deps, stage, import_id, args["generation"], args["lane"], job_id=job["id"]
                )
            else:
                await runner.run_stage(deps, stage, import_id, args["generation"], job_id=job["id"])
        except runner.StageRetry as retry:
            query(
                dsn,
                "update procrastinate_jobs set status = 'todo', attempts = attempts + 1,"
                " scheduled_at = now() + %s * interval '1 second' where id = %s",
                (retry.delay, job["id"]),
            )
            continue
        except runner.StageFailed:
            query(
                dsn, "update procrastinate_jobs set status = 'failed' where id = %s", (job["id"],)
            )
            return
        query(dsn, "update procrastinate_jobs set status = 'succeeded' where id = %s", (job["id"],))


class Lease:
    """A job's lease check, as ``llm_scope``'s guard: raises StaleJob once ``lost``."""

    def __init__(self) -> None:
        self.lost = False
        self.checks = 0

    async def __call__(self) -> None:
        self.checks += 1
        if self.lost:
            raise StaleJob()
