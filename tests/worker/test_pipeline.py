"""The stage chain end to end, through real PostgreSQL and a real procrastinate worker."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

import jobs.chunk
from jobs import registry
from jobs.chunk import ReadSpec, staged_chunks
from jobs.context import StageContext, StageResult
from jobs.domain.facts import Facts
from jobs.ingest.reader import ReadStats
from tests.conftest import USER_A, USER_B, make_settings, query
from tests.helpers import (
    drive,
    import_row,
    jobs_of,
    progress_row,
    running_worker,
    stage_rows,
    submit,
    wait_status,
)
from worker import runner
from worker.embeddings import make_embedder
from worker.llm.base import ExtractionInput, LLMResult
from worker.llm.offline import OfflineProvider
from worker.settings import Settings
from worker.stages import AFTER, STAGES
from worker.store import StagedChunk, Store

WEIGHTS = {
    "download": 3,
    "chunk": 12,
    "extract": 47,
    "reduce": 5,
    "memory": 8,
    "regenerate": 14,
    "embed": 8,
    "finalize": 3,
}


@pytest.fixture
def deps(settings: Settings, pool: AsyncConnectionPool[Any]) -> runner.Deps:
    return runner.Deps(
        settings=settings,
        store=Store(pool),
        llm=OfflineProvider(),
        embedder=make_embedder(settings.embeddings),
    )


def _embedding_column(dsn: str) -> bool:
    return bool(
        query(
            dsn,
            "select 1 from pg_attribute where attrelid = 'public.import_chunks'::regclass"
            " and attname = 'embedding' and not attisdropped",
        )
    )


#: How a stage ends when it is not ``done``: embed is skipped without pgvector.
_FINISHED: dict[str, str] = {}


@pytest.fixture(autouse=True)
def _finished(db_dsn: str) -> None:
    _FINISHED.clear()
    if not _embedding_column(db_dsn):
        _FINISHED["embed"] = "skipped"


def _assert_complete(dsn: str, import_id: uuid.UUID) -> None:
    row = import_row(dsn, import_id)
    assert row["status"] == "complete", row["error"]
    assert row["error"] is None
    assert row["conversation_count"] == 40
    assert row["chunk_count"] > 40
    assert row["fact_count"] > 0
    assert row["input_tokens"] > 0 and row["output_tokens"] > 0
    stages = stage_rows(dsn, import_id)
    assert all(s["status"] == _FINISHED.get(name, "done") for name, s in stages.items())
    chunks = query(
        dsn,
        "select count(*) as n, count(distinct (conversation_id, chunk_index)) as d"
        " from conversation_chunks where import_id = %s",
        (import_id,),
    )[0]
    assert chunks["n"] == chunks["d"] == row["chunk_count"]
    facts = query(dsn, "select count(*) as n from chunk_facts where import_id = %s", (import_id,))
    assert facts[0]["n"] == row["chunk_count"]
    profile = query(dsn, "select * from user_profiles where user_id = %s", (row["user_id"],))[0]
    assert profile["full_pass_status"] == "complete"
    memory = profile["memory_md"]
    headings = [line for line in memory.splitlines() if line.startswith("## ")]
    assert headings == [
        "## Preferences",
        "## Projects",
        "## Important Dates",
        "## Beliefs & Values",
        "## Decisions & Context",
    ]
    for column in ("soul_md", "identity_md", "user_md", "agents_md", "tools_md", "soulprint_text"):
        assert profile[column], column
    assert memory.strip() in profile["soulprint_text"]
    p = progress_row(dsn, import_id)
    assert float(p["progress"]) == 100.0
    assert p["eta"] == row["completed_at"]


async def test_full_import_through_a_real_worker(settings: Settings, db_dsn: str) -> None:
    import_id = submit(settings, USER_A)
    async with running_worker(settings) as worker:
        await wait_status(db_dsn, import_id, ("complete", "failed"), worker=worker)
    _assert_complete(db_dsn, import_id)
    assert [j["status"] for j in jobs_of(db_dsn, import_id)] == ["succeeded"] * len(STAGES)


async def test_progress_figures_at_each_stage(
    deps: runner.Deps, settings: Settings, db_dsn: str
) -> None:
    import_id = submit(settings, USER_A)
    done_weight = 0
    for i, stage in enumerate(STAGES):
        p = progress_row(db_dsn, import_id)
        assert (p["stage"], p["stage_index"], p["stage_count"]) == (stage, i + 1, len(STAGES))
        assert float(p["progress"]) == pytest.approx(done_weight, abs=0.1)
        await drive(deps, db_dsn, import_id, until=stage)
        done_weight += WEIGHTS[stage]
        p = progress_row(db_dsn, import_id)
        assert float(p["progress"]) == pytest.approx(done_weight, abs=0.1)
        s = stage_rows(db_dsn, import_id)[stage]
        assert s["status"] == _FINISHED.get(stage, "done") and s["attempts"] == 1
        assert s["items_total"] is None or s["items_done"] == s["items_total"]
        if stage != STAGES[-1]:
            assert p["status"] == "processing"
            assert p["eta"] is not None
    _assert_complete(db_dsn, import_id)


async def test_extract_reports_items_while_running(settings: Settings, db_dsn: str) -> None:
    import_id = submit(settings, USER_A)
    async with running_worker(settings):
        seen: set[tuple[int, int]] = set()
        while import_row(db_dsn, import_id)["status"] not in ("complete", "failed"):
            p = progress_row(db_dsn, import_id)
            if p["stage"] == "extract" and p["items_total"]:
                seen.add((p["items_done"], p["items_total"]))
            await asyncio.sleep(0.02)
    _assert_complete(db_dsn, import_id)
    assert seen, "extract progress was never visible"


def descendants(stage: str) -> set[str]:
    """Every stage that comes, directly or not, after ``stage`` in the graph."""
    out: set[str] = set()
    for later, afters in AFTER.items():
        if stage in afters:
            out |= {later} | descendants(later)
    return out


@pytest.mark.parametrize("from_stage", STAGES)
async def test_requeue_from_each_stage(
    deps: runner.Deps, settings: Settings, db_dsn: str, from_stage: str
) -> None:
    import_id = submit(settings, USER_A)
    await drive(deps, db_dsn, import_id)
    _assert_complete(db_dsn, import_id)
    before = stage_rows(db_dsn, import_id)
    chunk_ids = query(db_dsn, "select id from conversation_chunks order by id")

    query(db_dsn, "select public.requeue_import(%s, %s)", (import_id, from_stage))
    row = import_row(db_dsn, import_id)
    assert (row["status"], row["stage"], row["generation"]) == ("pending", from_stage, 2)
    after = stage_rows(db_dsn, import_id)
    redone = {from_stage} | descendants(from_stage)
    for stage in STAGES:
        if stage in redone:
            assert after[stage]["status"] in ("pending", "queued"), stage
        else:
            assert after[stage]["status"] == _FINISHED.get(stage, "done"), stage
            assert after[stage]["finished_at"] == before[stage]["finished_at"]  # kept
    # Queued: the stage named, and whatever else became ready with it.
    todo = [j for j in jobs_of(db_dsn, import_id) if j["status"] == "todo"]
    assert f"fullpass.{from_stage}" in [j["task_name"] for j in todo]
    assert {s for s, r in after.items() if r["status"] == "queued"} == {
        j["task_name"].removeprefix("fullpass.") for j in todo
    }

    await drive(deps, db_dsn, import_id)
    _assert_complete(db_dsn, import_id)
    final = stage_rows(db_dsn, import_id)
    for stage in redone:
        assert final[stage]["finished_at"] > before[stage]["finished_at"]
    # Chunk ids are deterministic: a re-chunk writes the same rows, never duplicates.
    assert query(db_dsn, "select id from conversation_chunks order by id") == chunk_ids


class HandOverProvider(OfflineProvider):
    """Offline answers; during its first call the stage is claimed by another job."""

    def __init__(self, dsn: str) -> None:
        super().__init__()
        self.dsn = dsn
        self.calls = 0
        self.billed = 0

    async def extract_facts(self, item: ExtractionInput) -> LLMResult[Facts]:
        self.calls += 1
        if self.calls == 1:
            # What a second claim does (the sweeper handed the job to another worker).
            await asyncio.to_thread(
                query,
                self.dsn,
                "update public.import_stages set lease = gen_random_uuid() where stage = 'extract'",
            )
        await asyncio.sleep(0.05)
        result = await super().extract_facts(item)
        self.billed += result.usage.input_tokens
        return result


async def test_a_job_that_lost_its_lease_stops_and_books_what_it_spent(
    settings: Settings, pool: AsyncConnectionPool[Any], db_dsn: str
) -> None:
    provider = HandOverProvider(db_dsn)
    deps = runner.Deps(settings=settings, store=Store(pool), llm=provider)
    import_id = submit(settings, USER_A, options='{"concurrency": 3, "pack_tokens": 500}')
    await drive(deps, db_dsn, import_id, until="extract")
    # The calls already in flight finished; none started after the hand-over.
    assert provider.calls <= 3
    assert query(db_dsn, "select count(*) as n from chunk_facts") == [{"n": 0}]
    extract = stage_rows(db_dsn, import_id)["extract"]
    assert extract["status"] == "running" and extract["input_tokens"] == 0
    row = import_row(db_dsn, import_id)
    assert row["spent_input_tokens"] == provider.billed > 0


async def test_a_requeue_keeps_the_whole_spend_of_the_import(
    deps: runner.Deps, settings: Settings, db_dsn: str
) -> None:
    import_id = submit(settings, USER_A)
    await drive(deps, db_dsn, import_id)
    first = import_row(db_dsn, import_id)
    assert first["input_tokens"] > 0
    assert (first["spent_input_tokens"], first["spent_output_tokens"]) == (
        first["input_tokens"],
        first["output_tokens"],
    )

    query(db_dsn, "select public.requeue_import(%s, 'extract')", (import_id,))
    requeued = import_row(db_dsn, import_id)
    # This generation's figures start again from what the kept stages cost...
    assert requeued["input_tokens"] == 0
    # ...while the whole spend of the import never goes back.
    assert requeued["spent_input_tokens"] == first["spent_input_tokens"]

    await drive(deps, db_dsn, import_id)
    second = import_row(db_dsn, import_id)
    assert second["input_tokens"] > 0
    assert second["spent_input_tokens"] == first["spent_input_tokens"] + second["input_tokens"]
    assert second["spent_output_tokens"] == first["spent_output_tokens"] + second["output_tokens"]
    progress = progress_row(db_dsn, import_id)
    assert progress["spent_input_tokens"] == second["spent_input_tokens"]
    assert progress["generation"] == 2


async def test_requeue_of_a_failed_import_resumes_at_the_failed_stage(
    deps: runner.Deps, settings: Settings, db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    async def broken_reduce(ctx: StageContext) -> StageResult:
        calls.append(ctx.attempt)
        raise RuntimeError("reduce exploded")

    monkeypatch.setitem(registry.STAGE_FUNCTIONS, "reduce", broken_reduce)
    import_id = submit(settings, USER_A)
    async with running_worker(settings) as worker:
        row = await wait_status(db_dsn, import_id, ("complete", "failed"), worker=worker)
    assert row["status"] == "failed"
    assert calls == [1, 2, 3]  # FULLPASS_MAX_ATTEMPTS=3, with backoff in between
    assert row["error"] == "reduce: RuntimeError: reduce exploded"
    assert row["stage"] == "reduce"
    stages = stage_rows(db_dsn, import_id)
    assert stages["reduce"]["status"] == "failed" and stages["reduce"]["attempts"] == 3
    assert all(stages[s]["status"] == "done" for s in ("download", "chunk", "extract"))
    profile = query(
        db_dsn, "select full_pass_status, full_pass_error, memory_md from user_profiles"
    )
    assert profile == [
        {
            "full_pass_status": "failed",
            "full_pass_error": "reduce: RuntimeError: reduce exploded",
            "memory_md": None,
        }
    ]
    extracted_at = query(db_dsn, "select max(created_at) as t from chunk_facts")[0]["t"]

    monkeypatch.undo()
    query(db_dsn, "select public.requeue_import(%s)", (import_id,))
    assert import_row(db_dsn, import_id)["stage"] == "reduce"
    async with running_worker(settings) as worker:
        await wait_status(db_dsn, import_id, ("complete", "failed"), worker=worker)
    _assert_complete(db_dsn, import_id)
    # Extraction was not redone.
    assert query(db_dsn, "select max(created_at) as t from chunk_facts")[0]["t"] == extracted_at


async def test_bad_input_fails_at_once_with_a_clear_error(settings: Settings, db_dsn: str) -> None:
    from tests.helpers import insert_import

    import_id = insert_import(db_dsn, USER_A, f"user-imports/{USER_A}/missing.zip")
    other = submit(settings, USER_B)
    async with running_worker(settings) as worker:
        row = await wait_status(db_dsn, import_id, ("complete", "failed"), worker=worker)
        await wait_status(db_dsn, other, ("complete", "failed"), worker=worker)
    assert row["status"] == "failed"
    assert row["stage"] == "download"
    assert "not found" in row["error"] and "missing.zip" in row["error"]
    assert stage_rows(db_dsn, import_id)["download"]["attempts"] == 1  # not retried
    _assert_complete(db_dsn, other)  # the worker carried on


def _reader_that_dies(read: ReadSpec, stats: ReadStats) -> Iterator[StagedChunk]:
    """The real reader, killed (as the kernel's OOM killer would be) after its first chunks."""
    for i, row in enumerate(staged_chunks(read, stats)):
        if i == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        yield row


async def test_an_export_reader_that_dies_is_retried_then_fails_the_import_saying_why(
    settings: Settings, db_dsn: str, deps: runner.Deps, monkeypatch: pytest.MonkeyPatch
) -> None:
    import_id = submit(settings, USER_A)
    monkeypatch.setattr(jobs.chunk, "staged_chunks", _reader_that_dies)
    await drive(deps, db_dsn, import_id)
    row = import_row(db_dsn, import_id)
    assert (row["status"], row["stage"]) == ("failed", "chunk")
    assert "export reader stopped unexpectedly (killed by SIGKILL, out of memory?)" in row["error"]
    chunk = stage_rows(db_dsn, import_id)["chunk"]
    assert chunk["attempts"] == settings.max_attempts
    assert query(
        db_dsn, "select count(*) as n from import_chunks where import_id = %s", (import_id,)
    ) == [{"n": 0}]  # nothing half-written

    # Once the reader lives, a requeue carries the import through.
    monkeypatch.undo()
    query(db_dsn, "select public.requeue_import(%s)", (import_id,))
    await drive(deps, db_dsn, import_id)
    assert import_row(db_dsn, import_id)["status"] == "complete"


class SlowProvider(OfflineProvider):
    """The offline provider with a delay per extraction call."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.calls = 0

    async def extract_facts(self, item: ExtractionInput) -> LLMResult[Facts]:
        self.calls += 1
        await asyncio.sleep(self.delay)
        return await super().extract_facts(item)


async def test_cancel_of_a_running_import(
    settings: Settings, db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = SlowProvider(0.05)
    monkeypatch.setattr("worker.service.make_provider", lambda s, budget=None: slow)
    import_id = submit(settings, USER_A, options='{"concurrency": 2}')
    async with running_worker(settings):
        await wait_status(db_dsn, import_id, ("processing",))
        while import_row(db_dsn, import_id)["stage"] != "extract" or slow.calls < 3:
            await asyncio.sleep(0.02)
        # From a thread: the worker shares this event loop and must keep running.
        cancelled = await asyncio.to_thread(
            query, db_dsn, "select public.cancel_import(%s) as c", (import_id,)
        )
        assert cancelled == [{"c": True}]
        # The running job is aborted: no more extraction calls after a short while.
        await asyncio.sleep(1.0)
        calls = slow.calls
        await asyncio.sleep(1.0)
        assert slow.calls == calls
    row = import_row(db_dsn, import_id)
    assert row["status"] == "cancelled"
    assert stage_rows(db_dsn, import_id)["extract"]["status"] == "failed"
    assert not [j for j in jobs_of(db_dsn, import_id) if j["status"] in ("todo", "doing")]


async def test_alert_webhook_and_completion_callback(
    db_dsn: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.conftest import wait_for
    from tests.webhooks import WebhookReceiver

    with WebhookReceiver() as hooks:
        settings = make_settings(
            db_dsn,
            tmp_path,
            FULLPASS_ALERT_WEBHOOK=hooks.url + "/alert",
            FULLPASS_CALLBACK_URL=hooks.url + "/done",
            FULLPASS_MAX_ATTEMPTS=1,
        )
        ok = submit(settings, USER_A)

        async def broken(ctx: StageContext) -> StageResult:
            raise RuntimeError("boom")

        async with running_worker(settings) as worker:
            await wait_status(db_dsn, ok, ("complete",), worker=worker)
            monkeypatch.setitem(registry.STAGE_FUNCTIONS, "memory", broken)
            bad = submit(settings, USER_B)
            await wait_status(db_dsn, bad, ("failed",), worker=worker)
            await wait_for(lambda: len([p for p, _ in hooks.received if p == "/done"]) == 2)
        done = {body["import_id"]: body["event"] for p, body in hooks.received if p == "/done"}
        alerts = [body for p, body in hooks.received if p == "/alert"]
    assert done == {str(ok): "import.completed", str(bad): "import.failed"}
    assert alerts == [
        {
            "event": "import_failed",
            "import_id": str(bad),
            "user_id": str(USER_B),
            "stage": "memory",
            "attempts": 1,
            "error": "RuntimeError: boom",
        }
    ]
