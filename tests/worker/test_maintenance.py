"""Housekeeping: imports left without a job are repaired, scratch files removed.

Also: whatever goes wrong while a stage is claimed ends as a recorded failure
or retry, never as an import silently stuck in ``pending``.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest

from tests.conftest import USER_A, USER_B, make_settings, query
from tests.helpers import (
    import_row,
    insert_import,
    jobs_of,
    running_worker,
    stage_rows,
    submit,
    wait_status,
)
from worker import health, maintenance
from worker.service import make_pool
from worker.settings import Settings


def _orphan(dsn: str, import_id: uuid.UUID, *, how: str) -> None:
    """Take away the import's job the way it happens in the field, and age the import."""
    if how == "deleted":
        query(
            dsn,
            "delete from procrastinate_jobs where args ->> 'import_id' = %s",
            (str(import_id),),
        )
    else:  # what a spoofed abort did to a running job
        query(
            dsn,
            "update procrastinate_jobs set status = 'aborted' where args ->> 'import_id' = %s",
            (str(import_id),),
        )
    query(
        dsn,
        "update public.imports set updated_at = now() - interval '1 minute' where id = %s",
        (import_id,),
    )
    query(
        dsn,
        "update public.import_stages set updated_at = now() - interval '1 minute'"
        " where import_id = %s",
        (import_id,),
    )


@pytest.mark.parametrize("how", ["deleted", "aborted"])
async def test_an_import_without_a_job_is_reported_and_repaired(
    db_dsn: str, tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(db_dsn, tmp_path, FULLPASS_MAINTENANCE_SECONDS=0.5)
    import_id = submit(settings, USER_A)
    _orphan(db_dsn, import_id, how=how)

    report = await health.check(settings)
    assert not report.ok
    assert [r["import_id"] for r in report.orphaned_imports] == [import_id]
    assert any("no job queued or running" in p for p in report.problems)

    with caplog.at_level(logging.WARNING, logger="fullpass.maintenance"):
        async with running_worker(settings) as worker:
            row = await wait_status(db_dsn, import_id, ("complete", "failed"), worker=worker)
    assert row["status"] == "complete", row["error"]
    assert row["repairs"] == 1
    assert any("re-deferred stage download" in r.getMessage() for r in caplog.records)
    assert (await health.check(settings)).orphaned_imports == []


async def test_an_import_that_keeps_losing_its_job_fails_instead_of_looping(
    db_dsn: str, settings: Settings
) -> None:
    import_id = submit(settings, USER_A)
    pool = make_pool(db_dsn, max_size=2)
    await pool.open()
    try:
        for _ in range(maintenance.MAX_REPAIRS):
            _orphan(db_dsn, import_id, how="deleted")
            assert await maintenance.repair_orphans(pool) == [(import_id, "download")]
        _orphan(db_dsn, import_id, how="deleted")
        assert await maintenance.repair_orphans(pool) == [(import_id, "failed")]
    finally:
        await pool.close()
    row = import_row(db_dsn, import_id)
    assert row["status"] == "failed"
    assert "left without a job" in row["error"]
    profile = query(
        db_dsn, "select full_pass_status from user_profiles where user_id = %s", (USER_A,)
    )
    assert profile == [{"full_pass_status": "failed"}]


async def test_repair_leaves_imports_with_a_job_alone(db_dsn: str, settings: Settings) -> None:
    import_id = submit(settings, USER_A)
    query(
        db_dsn,
        "update public.imports set updated_at = now() - interval '1 hour' where id = %s",
        (import_id,),
    )
    pool = make_pool(db_dsn, max_size=2)
    await pool.open()
    try:
        assert await maintenance.repair_orphans(pool) == []
    finally:
        await pool.close()
    assert len(jobs_of(db_dsn, import_id)) == 1


async def test_scratch_files_of_finished_imports_are_removed(
    db_dsn: str, settings: Settings
) -> None:
    live = submit(settings, USER_A)
    done = submit(settings, USER_B)
    query(db_dsn, "select public.cancel_import(%s)", (done,))
    gone = uuid.uuid4()  # an import deleted since
    for import_id in (live, done, gone):
        work = maintenance.workdir_for(settings, import_id)
        work.mkdir(parents=True)
        (work / "export-x.download").write_bytes(b"x" * 1024)
    other = maintenance.scratch_root(settings) / "not-an-import"
    other.mkdir()
    pool = make_pool(db_dsn, max_size=2)
    await pool.open()
    try:
        removed = await maintenance.clean_scratch(pool, settings)
    finally:
        await pool.close()
    assert set(removed) == {done, gone}
    assert maintenance.workdir_for(settings, live).exists()
    assert not maintenance.workdir_for(settings, done).exists()
    assert other.exists()


def _staged(dsn: str, user: uuid.UUID, status: str, chunks: int = 3) -> uuid.UUID:
    """An import of ``status`` with ``chunks`` staged chunks, finished two minutes ago."""
    import_id = insert_import(dsn, user, f"user-imports/{user}/x.zip")
    query(
        dsn,
        "insert into public.import_chunks (id, import_id, user_id, conversation_id, content,"
        "                                  chunk_index, chunk_tier, content_hash)"
        " select gen_random_uuid(), %s, %s, 'c' || g, 'text ' || g, 0, 'medium', md5(g::text)"
        "   from generate_series(1, %s) g",
        (import_id, user, chunks),
    )
    query(
        dsn,
        "update public.imports set status = %s,"
        " completed_at = case when %s = 'complete' then now() - interval '2 minutes' end"
        " where id = %s",
        (status, status, import_id),
    )
    return import_id


def _staged_count(dsn: str, import_id: uuid.UUID) -> int:
    rows = query(
        dsn, "select count(*) as n from public.import_chunks where import_id = %s", (import_id,)
    )
    return int(rows[0]["n"])


async def test_staged_chunks_left_after_a_publish_are_dropped(db_dsn: str) -> None:
    """A worker drops a pass's staged chunks once it has published them; if it
    stopped in between, the housekeeping drops them. The staged chunks of a
    failed pass (kept for its requeue) or of one still running are left alone."""
    left = _staged(db_dsn, USER_A, "complete", chunks=5)
    failed = _staged(db_dsn, USER_B, "failed")
    running = _staged(db_dsn, uuid.uuid4(), "processing")
    just_done = _staged(db_dsn, uuid.uuid4(), "complete")
    query(db_dsn, "update public.imports set completed_at = now() where id = %s", (just_done,))
    pool = make_pool(db_dsn, max_size=2)
    await pool.open()
    try:
        assert await maintenance.drop_leftover_staging(pool) == [left]
        assert await maintenance.drop_leftover_staging(pool) == []
    finally:
        await pool.close()
    assert _staged_count(db_dsn, left) == 0
    # Left to the worker that published it, for a minute.
    assert _staged_count(db_dsn, just_done) == 3
    assert _staged_count(db_dsn, failed) == 3
    assert _staged_count(db_dsn, running) == 3


async def test_a_failed_import_leaves_no_scratch_files(settings: Settings, db_dsn: str) -> None:
    storage_path = f"user-imports/{USER_A}/broken.json"
    target = settings.resolved_storage_dir / storage_path
    target.parent.mkdir(parents=True)
    target.write_text("[{]")  # fetched, then refused by the parser
    import_id = insert_import(db_dsn, USER_A, storage_path)
    async with running_worker(settings) as worker:
        row = await wait_status(db_dsn, import_id, ("failed", "complete"), worker=worker)
    assert row["status"] == "failed" and row["stage"] == "chunk"
    assert not maintenance.workdir_for(settings, import_id).exists()


def _deep(levels: int) -> str:
    return '{"a":' * levels + "{}" + "}" * levels


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ('{"batch": "no"}', "options.batch: Input should be a valid boolean"),
        (_deep(3000), "download: RecursionError"),
    ],
    ids=["wrong-type", "nested-3000"],
)
async def test_options_the_worker_cannot_use_fail_the_import_clearly(
    settings: Settings, db_dsn: str, options: str, expected: str
) -> None:
    # Written behind the insert check's back (an operator's UPDATE, an old row).
    import_id = submit(settings, USER_A)
    query(
        db_dsn, "update public.imports set options = %s::jsonb where id = %s", (options, import_id)
    )
    async with running_worker(settings) as worker:
        row = await wait_status(db_dsn, import_id, ("failed", "complete"), worker=worker)
    assert row["status"] == "failed"
    assert expected in row["error"]
    assert stage_rows(db_dsn, import_id)["download"]["status"] == "failed"
