"""How fast an idle worker starts an inserted import, and what that may not cost.

The job fetch commits without waiting for its WAL flush (the stage claim that
follows it does wait, and flushes the fetch with it); the claim is one
statement. Through real PostgreSQL.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from tests.conftest import USER_A, make_settings, query
from tests.helpers import import_row, stage_rows, submit
from worker import queries
from worker.settings import Settings
from worker.store import Store


@pytest.fixture
def settings(db_dsn: str, tmp_path: Path) -> Settings:
    return make_settings(db_dsn, tmp_path, FULLPASS_EMBEDDINGS="none")


def register_worker(dsn: str) -> int:
    return int(
        query(
            dsn, "insert into procrastinate_workers (last_heartbeat) values (now()) returning id"
        )[0]["id"]
    )


def test_the_fetch_does_not_wait_for_the_wal_flush(settings: Settings, db_dsn: str) -> None:
    submit(settings, USER_A)
    worker_id = register_worker(db_dsn)
    with psycopg.connect(db_dsn) as conn:  # one transaction, as the fetch's own
        row = conn.execute(
            queries.FETCH_JOB, {"queues": ["imports"], "worker_id": worker_id, "spare_slots": 1}
        )
        assert row.fetchone() is not None
        setting = conn.execute("select current_setting('synchronous_commit')").fetchone()
        assert setting == ("off",)


def test_the_fetch_leaves_the_connection_synchronous(settings: Settings, db_dsn: str) -> None:
    submit(settings, USER_A)
    worker_id = register_worker(db_dsn)
    with psycopg.connect(db_dsn, autocommit=True) as conn:  # as the pool's connections
        job = conn.execute(
            queries.FETCH_JOB, {"queues": ["imports"], "worker_id": worker_id, "spare_slots": 1}
        )
        assert job.fetchone()[0] is not None  # type: ignore[index]
        setting = conn.execute("select current_setting('synchronous_commit')").fetchone()
        assert setting == ("on",)


def test_the_fetch_still_takes_a_job_once(settings: Settings, db_dsn: str) -> None:
    import_id = submit(settings, USER_A)
    workers = [register_worker(db_dsn) for _ in range(2)]
    fetched = [
        query(
            db_dsn,
            "select id, status, worker_id from public.fullpass_fetch_job(array['imports'], %s)",
            (w,),
        )[0]
        for w in workers
    ]
    assert fetched[0]["id"] is not None and fetched[0]["worker_id"] == workers[0]
    assert fetched[1]["id"] is None
    job = query(
        db_dsn,
        "select status, worker_id from procrastinate_jobs where id = %s",
        (fetched[0]["id"],),
    )[0]
    assert job == {"status": "doing", "worker_id": workers[0]}
    assert import_row(db_dsn, import_id)["status"] == "pending"


async def test_the_stage_claim_is_one_statement(settings: Settings, db_dsn: str) -> None:
    import_id = submit(settings, USER_A)
    statements: list[str] = []

    class Counting(psycopg.AsyncCursor[Any]):
        async def execute(self, query: Any, params: Any = None, **kw: Any) -> Any:
            statements.append(str(query))
            return await super().execute(query, params, **kw)

    kwargs = {"row_factory": dict_row, "cursor_factory": Counting, "autocommit": True}
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        db_dsn, min_size=1, max_size=1, kwargs=kwargs, open=False
    )
    async with pool:
        claim = await Store(pool).claim(import_id, 1, "download")
    assert claim is not None and claim.attempt == 1
    assert len(statements) == 1
    stage = stage_rows(db_dsn, import_id)["download"]
    assert stage["status"] == "running" and stage["started_at"] is not None
    assert stage["lease"] == claim.fence.lease
    assert import_row(db_dsn, import_id)["status"] == "processing"
    profile = query(
        db_dsn, "select full_pass_status from user_profiles where user_id = %s", (USER_A,)
    )
    assert profile == [{"full_pass_status": "processing"}]


def test_no_job_no_write(db_dsn: str) -> None:
    worker_id = register_worker(db_dsn)
    row = query(
        db_dsn, "select id from public.fullpass_fetch_job(array['imports'], %s)", (worker_id,)
    )
    assert row == [{"id": None}]


async def test_the_pool_tests_a_connection_only_after_it_sat_idle(
    db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker import service

    checked: list[object] = []
    real = AsyncConnectionPool.check_connection

    async def counting(conn: Any) -> None:
        checked.append(conn)
        await real(conn)

    monkeypatch.setattr(AsyncConnectionPool, "check_connection", staticmethod(counting))
    monkeypatch.setattr(service, "CHECK_IDLE_SECONDS", 0.2)
    pool = service.make_pool(db_dsn, max_size=1)
    await pool.open(wait=True)
    try:
        async with pool.connection() as conn:  # never lent before: tested
            await conn.execute("select 1")
        assert len(checked) == 1
        for _ in range(3):  # just returned: lent as it is
            async with pool.connection() as conn:
                await conn.execute("select 1")
        assert len(checked) == 1
        await asyncio.sleep(0.3)
        async with pool.connection() as conn:  # idle for a while: tested again
            await conn.execute("select 1")
        assert len(checked) == 2
    finally:
        await pool.close()
