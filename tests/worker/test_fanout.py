"""A long map step (and embedding) spread over lanes that any worker runs.

Through real PostgreSQL: the stage splits its work list into pages and queues
lanes; lanes take pages, checkpoint as the stage does, and the last one out
queues the stage, which finishes with the figures of every lane. Failures of
a lane follow the stage's policy; a worker runs one lane of an import at a time.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from jobs.domain.facts import Facts
from tests.conftest import USER_A, make_settings, query
from tests.helpers import drive, import_row, jobs_of, running_worker, stage_rows, submit
from worker import maintenance, runner, tasks
from worker.embeddings import make_embedder
from worker.llm.base import ExtractionInput, LLMResult, ModelUnavailable
from worker.llm.offline import OfflineProvider
from worker.queue import ResilientWorker
from worker.settings import Settings
from worker.stages import LANE_TASK
from worker.store import Store

SPREAD = '{"page_chunks": 10, "fanout": 3, "pack_tokens": 400}'


class CountingProvider(OfflineProvider):
    """Offline answers; counts how often each chunk is sent."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: Counter[str] = Counter()

    async def extract_facts(self, item: ExtractionInput) -> LLMResult[Facts]:
        self.sent[item.chunk_id] += 1
        return await super().extract_facts(item)


@pytest.fixture
def settings(db_dsn: str, tmp_path: Path) -> Settings:
    return make_settings(db_dsn, tmp_path, FULLPASS_EMBEDDINGS="none")


def deps_with(settings: Settings, pool: AsyncConnectionPool[Any], llm: Any) -> runner.Deps:
    return runner.Deps(
        settings=settings, store=Store(pool), llm=llm, embedder=make_embedder(settings.embeddings)
    )


def lane_jobs(dsn: str, import_id: uuid.UUID) -> list[dict[str, Any]]:
    return [j for j in jobs_of(dsn, import_id) if j["task_name"] == LANE_TASK]


async def test_a_long_map_step_is_spread_over_lanes_and_finishes_once(
    settings: Settings, pool: AsyncConnectionPool[Any], db_dsn: str
) -> None:
    llm = CountingProvider()
    deps = deps_with(settings, pool, llm)
    import_id = submit(settings, USER_A, options=SPREAD)
    await drive(deps, db_dsn, import_id, until="chunk")
    await drive(deps, db_dsn, import_id, until="extract")

    row = import_row(db_dsn, import_id)
    assert (
        row["status"] == "complete" or stage_rows(db_dsn, import_id)["extract"]["status"] == "done"
    )
    pages = query(
        db_dsn,
        "select page, status, lane, attempts, cardinality(chunk_ids) as n from import_pages"
        " where import_id = %s and stage = 'extract' order by page",
        (import_id,),
    )
    chunks = stage_rows(db_dsn, import_id)["extract"]["output"]["chunks"]
    assert len(pages) == -(-chunks // 10) > 3
    assert {p["status"] for p in pages} == {"done"}
    assert sum(p["n"] for p in pages) == chunks
    assert all(p["attempts"] == 1 for p in pages)
    lanes = lane_jobs(db_dsn, import_id)
    assert [j["args"]["lane"] for j in lanes] == [1, 2, 3]
    # Run one after the other, the first lane took every page; the last one
    # out, it cancelled the jobs of the others, which were not needed.
    assert [j["status"] for j in lanes] == ["succeeded", "cancelled", "cancelled"]

    # Every chunk was sent once, and the stage's figures sum up its lanes'.
    assert max(llm.sent.values()) == 1
    extract = stage_rows(db_dsn, import_id)["extract"]
    assert extract["status"] == "done" and extract["attempts"] == 1
    assert extract["output"]["calls"] == sum(llm.sent.values()) > 0
    assert extract["items_done"] == extract["items_total"] == chunks
    checkpoints = query(
        db_dsn, "select count(*) as n from chunk_facts where import_id = %s", (import_id,)
    )
    assert checkpoints == [{"n": chunks}]
    # The pages' chunks were prepared for full-text search on the way: the
    # publish copies their entries, as the chunks' title and content give them.
    staged = query(
        db_dsn,
        "select count(*) filter (where fullpass_fts is null) as missing,"
        " count(*) filter (where fullpass_fts = fullpass_chunk_fts(title, content)) as right"
        " from import_chunks where import_id = %s and chunk_tier = 'medium'",
        (import_id,),
    )
    assert staged == [{"missing": 0, "right": chunks}]

    await drive(deps, db_dsn, import_id)
    assert import_row(db_dsn, import_id)["status"] == "complete"


async def test_a_short_work_list_is_not_spread(
    settings: Settings, pool: AsyncConnectionPool[Any], db_dsn: str
) -> None:
    deps = deps_with(settings, pool, OfflineProvider())
    import_id = submit(settings, USER_A, options='{"page_chunks": 100000}')
    await drive(deps, db_dsn, import_id)
    assert import_row(db_dsn, import_id)["status"] == "complete"
    assert lane_jobs(db_dsn, import_id) == []


class FlakyProvider(CountingProvider):
    """Fails the first ``failures`` calls as an overloaded service would."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def extract_facts(self, item: ExtractionInput) -> LLMResult[Facts]:
        if self.failures > 0:
            self.failures -= 1
            self.sent[item.chunk_id] += 1
            raise ModelUnavailable("Anthropic API 529 overloaded_error: Overloaded")
        return await super().extract_facts(item)


async def test_a_lane_that_fails_is_retried_and_takes_its_page_back(
    settings: Settings, pool: AsyncConnectionPool[Any], db_dsn: str
) -> None:
    llm = FlakyProvider(failures=1)
    deps = deps_with(settings, pool, llm)
    import_id = submit(settings, USER_A, options=SPREAD)
    await drive(deps, db_dsn, import_id, until="extract")

    extract = stage_rows(db_dsn, import_id)["extract"]
    assert extract["status"] == "done", extract["error"]
    lanes = lane_jobs(db_dsn, import_id)
    assert max(j["attempts"] for j in lanes) == 1  # one lane was retried once
    pages = query(
        db_dsn,
        "select attempts from import_pages where import_id = %s and stage = 'extract'",
        (import_id,),
    )
    assert sorted(p["attempts"] for p in pages)[-1] == 2  # its page, taken back
    # Only the chunks of the failed call were sent again.
    assert sum(1 for n in llm.sent.values() if n > 1) <= 40


async def test_a_lane_that_keeps_failing_fails_the_import_and_stops_the_others(
    settings: Settings, pool: AsyncConnectionPool[Any], db_dsn: str
) -> None:
    deps = deps_with(settings, pool, FlakyProvider(failures=10**6))
    import_id = submit(settings, USER_A, options=SPREAD)
    await drive(deps, db_dsn, import_id)
    row = import_row(db_dsn, import_id)
    assert row["status"] == "failed"
    assert row["stage"] == "extract" and "model service kept failing" in row["error"]
    assert stage_rows(db_dsn, import_id)["extract"]["status"] == "failed"
    assert [j for j in jobs_of(db_dsn, import_id) if j["status"] in ("todo", "doing")] == []
    profile = query(db_dsn, "select full_pass_status from user_profiles")
    assert profile == [{"full_pass_status": "failed"}]


async def test_a_requeue_while_lanes_run_fences_them(
    settings: Settings, pool: AsyncConnectionPool[Any], db_dsn: str
) -> None:
    llm = CountingProvider()
    deps = deps_with(settings, pool, llm)
    import_id = submit(settings, USER_A, options=SPREAD)
    await drive(deps, db_dsn, import_id, until="chunk")
    await drive_one(deps, db_dsn, import_id)  # extract fans out
    (lane,) = [j for j in lane_jobs(db_dsn, import_id) if j["args"]["lane"] == 1]
    query(db_dsn, "select public.requeue_import(%s, 'extract')", (import_id,))
    # The old generation's lane finds nothing to do.
    await runner.run_lane(deps, "extract", import_id, 1, 1, job_id=lane["id"])
    assert llm.sent == Counter()
    await drive(deps, db_dsn, import_id)
    assert import_row(db_dsn, import_id)["status"] == "complete"
    assert max(llm.sent.values()) == 1


async def fanned_out(deps: runner.Deps, settings: Settings, dsn: str) -> uuid.UUID:
    """An import whose map step has fanned out (and whose embed stage was skipped)."""
    import_id = submit(settings, USER_A, options=SPREAD)
    await drive(deps, dsn, import_id, until="chunk")
    await drive_one(deps, dsn, import_id)  # extract fans out
    await drive_one(deps, dsn, import_id)  # embed (skipped: embeddings are off)
    return import_id


async def drive_one(deps: runner.Deps, dsn: str, import_id: uuid.UUID) -> None:
    """Run the import's first queued stage job (not a lane)."""
    (job,) = query(
        dsn,
        "update procrastinate_jobs set status = 'doing' where id = ("
        " select id from procrastinate_jobs where args ->> 'import_id' = %s and status = 'todo'"
        " and task_name <> %s order by id limit 1) returning id, task_name, args",
        (str(import_id), LANE_TASK),
    )
    stage = job["task_name"].removeprefix("fullpass.")
    await runner.run_stage(deps, stage, import_id, job["args"]["generation"], job_id=job["id"])
    query(dsn, "update procrastinate_jobs set status = 'succeeded' where id = %s", (job["id"],))


async def test_a_fanned_out_stage_whose_lanes_are_lost_is_planned_again(
    settings: Settings, pool: AsyncConnectionPool[Any], db_dsn: str
) -> None:
    llm = CountingProvider()
    deps = deps_with(settings, pool, llm)
    import_id = submit(settings, USER_A, options=SPREAD)
    await drive(deps, db_dsn, import_id, until="chunk")
    await drive_one(deps, db_dsn, import_id)
    # One lane ran a page, then every lane job vanished (deleted by hand, say).
    lane = lane_jobs(db_dsn, import_id)[0]
    pages = deps.store.pages(
        await deps.store.claim_lane(import_id, 1, "extract", lane["args"]["lane"])  # type: ignore[arg-type]
    )
    first = await pages.next()
    assert first is not None
    query(dsn := db_dsn, "delete from procrastinate_jobs where task_name = %s", (LANE_TASK,))
    query(
        dsn,
        "update import_stages set updated_at = now() - interval '1 minute' where import_id = %s",
        (import_id,),
    )
    assert await maintenance.repair_orphans(pool) == [(import_id, "extract")]
    await drive(deps, db_dsn, import_id)
    assert import_row(db_dsn, import_id)["status"] == "complete"
    assert max(llm.sent.values()) == 1


async def test_a_lane_starting_after_the_last_one_out_leaves_the_stage_to_its_run(
    settings: Settings,
    pool: AsyncConnectionPool[Any],
    db_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One lane took every page and queued the stage; the stage's run has begun
    when another lane's job starts (it waited for a slot): that lane has nothing
    to do, and neither queues the stage again nor keeps it from finishing."""
    deps = deps_with(settings, pool, CountingProvider())
    import_id = await fanned_out(deps, settings, db_dsn)
    first, second = lane_jobs(db_dsn, import_id)[:2]
    query(db_dsn, "update procrastinate_jobs set status = 'doing' where id = %s", (first["id"],))
    await runner.run_lane(deps, "extract", import_id, 1, first["args"]["lane"], job_id=first["id"])
    assert stage_rows(db_dsn, import_id)["extract"]["status"] == "queued"  # the last one out
    # The lanes still queued are not needed: their jobs are cancelled at once
    # (they would each have waited for a slot, or a worker's next look).
    statuses = {j["args"]["lane"]: j["status"] for j in lane_jobs(db_dsn, import_id)}
    assert statuses == {1: "doing", 2: "cancelled", 3: "cancelled"}

    claim = deps.store.claim

    async def claim_then_second_lane(*args: Any, **kwargs: Any) -> Any:
        claimed = await claim(*args, **kwargs)
        await runner.run_lane(
            deps, "extract", import_id, 1, second["args"]["lane"], job_id=second["id"]
        )
        return claimed

    monkeypatch.setattr(deps.store, "claim", claim_then_second_lane)
    await drive_one(deps, db_dsn, import_id)  # the stage's run

    extract = stage_rows(db_dsn, import_id)["extract"]
    assert extract["status"] == "done", extract["error"]
    assert extract["attempts"] == 1
    todo = [j["task_name"] for j in jobs_of(db_dsn, import_id) if j["status"] == "todo"]
    assert "fullpass.extract" not in todo and "fullpass.reduce" in todo


async def test_a_lane_still_running_when_the_stage_runs_again_does_not_queue_it_twice(
    settings: Settings, pool: AsyncConnectionPool[Any], db_dsn: str
) -> None:
    deps = deps_with(settings, pool, CountingProvider())
    import_id = await fanned_out(deps, settings, db_dsn)
    first, second = lane_jobs(db_dsn, import_id)[:2]
    late = await deps.store.claim_lane(import_id, 1, "extract", second["args"]["lane"])
    assert late is not None  # running, between two pages
    await runner.run_lane(deps, "extract", import_id, 1, first["args"]["lane"], job_id=first["id"])
    # The stage's run: its job fetched, the stage claimed.
    query(
        db_dsn,
        "update procrastinate_jobs set status = 'doing' where task_name = 'fullpass.extract'"
        " and status = 'todo' and args ->> 'import_id' = %s",
        (str(import_id),),
    )
    assert await deps.store.claim(import_id, 1, "extract") is not None
    assert await deps.store.lane_finished(late, {"calls": 0}) is False
    todo = [j["task_name"] for j in jobs_of(db_dsn, import_id) if j["status"] == "todo"]
    assert "fullpass.extract" not in todo
    assert stage_rows(db_dsn, import_id)["extract"]["status"] == "running"


async def test_a_worker_runs_one_lane_of_each_stage_of_an_import_at_a_time(
    settings: Settings, pool: AsyncConnectionPool[Any], db_dsn: str
) -> None:
    deps = deps_with(settings, pool, OfflineProvider())
    import_id = await fanned_out(deps, settings, db_dsn)

    def register_worker_row() -> int:
        return int(
            query(
                db_dsn,
                "insert into procrastinate_workers (last_heartbeat) values (now()) returning id",
            )[0]["id"]
        )

    workers = [register_worker_row() for _ in range(3)]

    def fetch(worker: int, spare: int = 3) -> dict[str, Any] | None:
        """A fetch by ``worker``, ``spare`` of whose slots stay free once the job runs."""
        row = query(
            db_dsn,
            "select id, task_name, args from public.fullpass_fetch_job(array['imports'], %s, %s)",
            (worker, spare),
        )[0]
        return row if row["id"] is not None else None

    first = fetch(workers[0])
    assert first is not None and first["task_name"] == LANE_TASK
    assert fetch(workers[0]) is None  # its other lanes wait for another worker
    second = fetch(workers[1])
    assert second is not None and second["args"]["lane"] != first["args"]["lane"]
    assert fetch(workers[1]) is None
    # A lane of another stage of the same import is fetched: it shares nothing
    # with the first (one lane of each stage), and the map step's lanes go
    # before the embed stage's, whatever their order in the queue.
    query(db_dsn, "select public.fullpass_defer_lanes(%s, 'embed', 1, 2)", (import_id,))
    query(db_dsn, "select public.fullpass_defer_lanes(%s, 'extract', 1, 1)", (import_id,))
    third = fetch(workers[2])
    assert third is not None and third["args"]["stage"] == "extract"
    # ...but not into a worker's last free slot: an import never takes them all.
    assert fetch(workers[0], spare=0) is None
    embed = fetch(workers[0], spare=1)
    assert embed is not None and embed["args"]["stage"] == "embed"
    assert fetch(workers[0]) is None  # its second embed lane waits for another worker
    # Nor the other way round: a worker running an embed lane keeps its last
    # free slot from the same import's map step too.
    embed_only = register_worker_row()
    query(db_dsn, "select public.fullpass_defer_lanes(%s, 'embed', 1, 1)", (import_id,))
    query(db_dsn, "select public.fullpass_defer_lanes(%s, 'extract', 1, 1)", (import_id,))
    query(
        db_dsn,
        "update procrastinate_jobs set status = 'doing', worker_id = %s where id = ("
        " select max(id) - 1 from procrastinate_jobs where task_name = %s)",
        (embed_only, LANE_TASK),
    )
    assert fetch(embed_only, spare=0) is None
    mapping = fetch(embed_only, spare=1)
    assert mapping is not None and mapping["args"]["stage"] == "extract"
    # Another import's stage job is still fetched by a worker busy with a lane.
    other = submit(settings, uuid.UUID(int=7), options=SPREAD)
    job = fetch(workers[0])
    assert job is not None and job["args"]["import_id"] == str(other)


async def test_a_worker_asks_for_a_second_stage_s_lane_only_with_a_slot_to_spare(
    settings: Settings, pool: AsyncConnectionPool[Any], db_dsn: str
) -> None:
    """The worker's own fetch says how many of its slots stay free."""
    import_id = submit(settings, USER_A, options=SPREAD)
    query(
        db_dsn, "delete from procrastinate_jobs where args ->> 'import_id' = %s", (str(import_id),)
    )
    query(db_dsn, "select public.fullpass_defer_lanes(%s, 'extract', 1, 1)", (import_id,))
    query(db_dsn, "select public.fullpass_defer_lanes(%s, 'embed', 1, 1)", (import_id,))
    app = tasks.build_app()
    worker = ResilientWorker(
        app=app, queues=["imports"], concurrency=2, wait=False, heartbeat_dsn=db_dsn
    )
    async with app.open_async(pool):
        worker_id = await app.job_manager.register_worker()
        first = await app.job_manager.fetch_job(["imports"], worker_id)
        assert first is not None and first.task_kwargs["stage"] == "extract"
        # The lane runs: of the worker's two slots, the next job's would be the last.
        worker._running_jobs[asyncio.Future()] = None  # type: ignore[index]
        assert worker.spare_slots() == 0
        assert await app.job_manager.fetch_job(["imports"], worker_id) is None
        worker.concurrency = 3
        second = await app.job_manager.fetch_job(["imports"], worker_id)
        assert second is not None and second.task_kwargs["stage"] == "embed"


async def test_a_lane_held_back_is_taken_as_soon_as_the_one_before_it_ends(
    settings: Settings, db_dsn: str
) -> None:
    """A worker runs one lane of a stage of an import at a time: the next one
    waits for the first to end, and is taken then, not at the worker's next poll."""
    import_id = submit(settings, USER_A, options=SPREAD)
    query(
        db_dsn, "delete from procrastinate_jobs where args ->> 'import_id' = %s", (str(import_id),)
    )
    query(db_dsn, "select public.fullpass_defer_lanes(%s, 'extract', 1, 3)", (import_id,))
    loop = asyncio.get_running_loop()
    async with running_worker(settings, concurrency=3, poll_seconds=60.0) as worker:
        deadline = loop.time() + 20
        while {j["status"] for j in lane_jobs(db_dsn, import_id)} != {"succeeded"}:
            assert not worker.done()
            assert loop.time() < deadline, lane_jobs(db_dsn, import_id)
            await asyncio.sleep(0.05)


async def test_embedding_is_spread_too(
    db_dsn: str, tmp_path: Path, pool: AsyncConnectionPool[Any]
) -> None:
    settings = make_settings(db_dsn, tmp_path)
    deps = deps_with(settings, pool, OfflineProvider())
    import_id = submit(settings, USER_A, options=SPREAD)
    await drive(deps, db_dsn, import_id)
    assert import_row(db_dsn, import_id)["status"] == "complete"
    embed = stage_rows(db_dsn, import_id)["embed"]
    if embed["status"] == "skipped":
        assert "pgvector" in embed["output"]["skipped"]
        return
    chunks = import_row(db_dsn, import_id)["chunk_count"]
    assert embed["output"]["embedded_now"] == chunks
    embed_lanes = [
        j["status"] for j in lane_jobs(db_dsn, import_id) if j["args"]["stage"] == "embed"
    ]
    assert embed_lanes[0] == "succeeded" and set(embed_lanes[1:]) == {"cancelled"}
    missing = query(
        db_dsn,
        "select count(*) as n from conversation_chunks where user_id = %s"
        " and (embedding is null or embedding_model is null)",
        (USER_A,),
    )
    assert missing == [{"n": 0}]
    await asyncio.sleep(0)


def test_two_finishers_at_once_queue_the_next_stage_once(settings: Settings, db_dsn: str) -> None:
    """The last lane out and the stage's own job may end together: one job for what follows."""
    import_id = submit(settings, USER_A)
    query(
        db_dsn, "delete from procrastinate_jobs where args ->> 'import_id' = %s", (str(import_id),)
    )
    query(
        db_dsn,
        "update import_stages set status = case when position < 4 or stage = 'embed'"
        " then 'done' else 'pending' end where import_id = %s",
        (import_id,),
    )
    generation = import_row(db_dsn, import_id)["generation"]
    first = psycopg.connect(db_dsn)
    try:
        # The first finisher queues `reduce` and has not committed yet...
        ready = first.execute(
            "select public.fullpass_queue_ready(%s, %s)", (import_id, generation)
        ).fetchone()
        assert ready == (["reduce"],)
        # ...while the second, which saw `reduce` pending too, waits for its row.
        with ThreadPoolExecutor(1) as pool:
            second = pool.submit(
                query,
                db_dsn,
                "select public.fullpass_queue_ready(%s, %s) as ready",
                (import_id, generation),
            )
            time.sleep(0.3)
            first.commit()
            assert second.result(timeout=10) == [{"ready": []}]
    finally:
        first.close()
    todo = [j["task_name"] for j in jobs_of(db_dsn, import_id) if j["status"] == "todo"]
    assert todo == ["fullpass.reduce"]
