"""A re-import pays only for what is new: facts of identical chunks are copied, not asked again."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from tests.conftest import USER_A, USER_B, make_settings, query
from tests.fakes.fake_anthropic import FakeAnthropicServer
from tests.fakes.plugin import anthropic_provider
from tests.helpers import drive, gen_export, insert_import, progress_row, stage_rows, submit
from worker import queries, runner
from worker.errors import StaleJob
from worker.llm.prompts import EXTRACTION_PROMPT_VERSION
from worker.settings import Settings
from worker.store import Fence, Store

SPREAD = '{"page_chunks": 10, "fanout": 3, "pack_tokens": 400}'


def _deps(settings: Settings, pool: AsyncConnectionPool[Any]) -> runner.Deps:
    return runner.Deps(settings=settings, store=Store(pool), llm=anthropic_provider(settings))


def _settings(db_dsn: str, tmp_path: Path, fake: FakeAnthropicServer, **kw: Any) -> Settings:
    return make_settings(db_dsn, tmp_path, **fake.settings_env(), **kw)


def _facts(dsn: str, import_id: uuid.UUID) -> dict[str, Any]:
    """The import's facts by chunk content."""
    rows = query(
        dsn,
        "select content_hash, facts from chunk_facts where import_id = %s and error is null",
        (import_id,),
    )
    return {r["content_hash"]: r["facts"] for r in rows}


def _hashes(dsn: str, import_id: uuid.UUID) -> set[str]:
    rows = query(
        dsn,
        "select c.content_hash from chunk_facts f join import_chunks c on c.id = f.chunk_id"
        " where f.import_id = %s union select content_hash from conversation_chunks"
        " where import_id = %s and chunk_tier = 'medium'",
        (import_id, import_id),
    )
    return {r["content_hash"] for r in rows}


async def _extracted(
    deps: runner.Deps, dsn: str, user: uuid.UUID, source: Path | None = None, options: str = "{}"
) -> uuid.UUID:
    """An import of ``source`` (the sample) driven through its map step."""
    import_id = (
        submit(deps.settings, user, source, options)
        if source
        else submit(deps.settings, user, options=options)
    )
    await drive(deps, dsn, import_id, until="extract")
    assert stage_rows(dsn, import_id)["extract"]["status"] == "done"
    return import_id


async def test_a_second_import_of_the_same_history_reuses_every_chunk(
    db_dsn: str, tmp_path: Path, pool: AsyncConnectionPool[Any], fake_anthropic: FakeAnthropicServer
) -> None:
    deps = _deps(_settings(db_dsn, tmp_path, fake_anthropic), pool)
    first = await _extracted(deps, db_dsn, USER_A)
    await drive(deps, db_dsn, first)
    paid = len(fake_anthropic.calls("extract"))
    assert paid > 0

    second = await _extracted(deps, db_dsn, USER_A)
    assert len(fake_anthropic.calls("extract")) == paid  # not one call
    extract = stage_rows(db_dsn, second)["extract"]
    chunks = extract["output"]["chunks"]
    assert extract["output"]["reused"] == chunks == extract["items_reused"] > 0
    assert extract["output"]["calls"] == 0 and extract["cost_usd"] == 0
    assert progress_row(db_dsn, second)["reused_chunks"] == chunks
    # The same facts, each attributed to the new import's chunk, naming its source.
    assert _facts(db_dsn, second) == _facts(db_dsn, first)
    rows = query(
        db_dsn,
        "select f.reused_from_import, f.input_tokens, c.created_at is not distinct from"
        " (select o.created_at from conversation_chunks o where o.id = f.reused_from_chunk)"
        " as same_date from chunk_facts f join import_chunks c on c.id = f.chunk_id"
        " and c.import_id = f.import_id where f.import_id = %s",
        (second,),
    )
    assert len(rows) == chunks
    assert all(r["reused_from_import"] == first and r["input_tokens"] == 0 for r in rows)
    assert all(r["same_date"] for r in rows)

    # Redone from the map step: the count starts again, it does not add up.
    query(db_dsn, "select public.requeue_import(%s, 'extract')", (second,))
    assert stage_rows(db_dsn, second)["extract"]["items_reused"] == 0
    await drive(deps, db_dsn, second)
    extract = stage_rows(db_dsn, second)["extract"]
    assert extract["items_reused"] == chunks == extract["output"]["reused"]
    assert len(fake_anthropic.calls("extract")) == paid


async def test_another_model_or_prompt_reuses_nothing(
    db_dsn: str,
    tmp_path: Path,
    pool: AsyncConnectionPool[Any],
    fake_anthropic: FakeAnthropicServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _settings(db_dsn, tmp_path, fake_anthropic)
    first = await _extracted(_deps(settings, pool), db_dsn, USER_A)
    paid = len(fake_anthropic.calls("extract"))
    query(db_dsn, "select public.cancel_import(%s)", (first,))

    other_model = _settings(
        db_dsn, tmp_path, fake_anthropic, FULLPASS_MODEL_EXTRACT="claude-sonnet-4-5-20250929"
    )
    second = await _extracted(_deps(other_model, pool), db_dsn, USER_A)
    assert stage_rows(db_dsn, second)["extract"]["output"]["reused"] == 0
    assert len(fake_anthropic.calls("extract")) == 2 * paid
    query(db_dsn, "select public.cancel_import(%s)", (second,))

    monkeypatch.setattr("jobs.extract.EXTRACTION_PROMPT_VERSION", "x0-another-prompt")
    third = await _extracted(_deps(settings, pool), db_dsn, USER_A)
    assert stage_rows(db_dsn, third)["extract"]["output"]["reused"] == 0
    assert len(fake_anthropic.calls("extract")) == 3 * paid


async def test_another_users_identical_chunks_are_not_reused(
    db_dsn: str, tmp_path: Path, pool: AsyncConnectionPool[Any], fake_anthropic: FakeAnthropicServer
) -> None:
    deps = _deps(_settings(db_dsn, tmp_path, fake_anthropic), pool)
    await _extracted(deps, db_dsn, USER_A)
    paid = len(fake_anthropic.calls("extract"))
    theirs = await _extracted(deps, db_dsn, USER_B)
    assert stage_rows(db_dsn, theirs)["extract"]["output"]["reused"] == 0
    assert progress_row(db_dsn, theirs)["reused_chunks"] == 0
    assert len(fake_anthropic.calls("extract")) == 2 * paid


async def test_a_spread_map_step_asks_only_for_the_new_chunks(
    db_dsn: str, tmp_path: Path, pool: AsyncConnectionPool[Any], fake_anthropic: FakeAnthropicServer
) -> None:
    """The history grew: what it had is copied, the rest is extracted over lanes."""
    deps = _deps(_settings(db_dsn, tmp_path, fake_anthropic), pool)
    old = gen_export(tmp_path / "old.json", conversations=30, seed=5)
    new = gen_export(tmp_path / "new.json", conversations=45, seed=5)
    first = await _extracted(deps, db_dsn, USER_A, old, SPREAD)
    assert query(db_dsn, "select count(*) as n from import_lanes where import_id = %s", (first,))[
        0
    ]["n"]
    await drive(deps, db_dsn, first)
    known = _hashes(db_dsn, first)
    before = len(fake_anthropic.calls("extract"))

    second = await _extracted(deps, db_dsn, USER_A, new, SPREAD)
    lanes = query(db_dsn, "select count(*) as n from import_lanes where import_id = %s", (second,))
    assert lanes[0]["n"] > 0  # the new chunks still took more than a page: spread
    rows = query(
        db_dsn,
        "select c.content_hash, f.reused_from_import, f.model from chunk_facts f"
        " join import_chunks c on c.id = f.chunk_id where f.import_id = %s",
        (second,),
    )
    reused = [r for r in rows if r["reused_from_import"] is not None]
    fresh = [r for r in rows if r["reused_from_import"] is None]
    assert {r["content_hash"] for r in reused} <= known
    assert not any(r["content_hash"] in known for r in fresh)
    assert len(reused) == stage_rows(db_dsn, second)["extract"]["output"]["reused"] > 0
    asked = [r for r in fresh if not r["model"].startswith("none")]
    assert asked and len(fake_anthropic.calls("extract")) - before <= len(asked)
    await drive(deps, db_dsn, second)
    assert progress_row(db_dsn, second)["status"] == "complete"


async def test_reuse_is_fenced_like_every_checkpoint(
    db_dsn: str, tmp_path: Path, pool: AsyncConnectionPool[Any], fake_anthropic: FakeAnthropicServer
) -> None:
    deps = _deps(_settings(db_dsn, tmp_path, fake_anthropic), pool)
    first = await _extracted(deps, db_dsn, USER_A)
    query(db_dsn, "select public.cancel_import(%s)", (first,))
    second = submit(deps.settings, USER_A)
    await drive(deps, db_dsn, second, until="chunk")
    # A job whose lease is not the stage's (requeued, or handed to another worker).
    stale = Store(pool).for_stage(Fence(second, 1, "extract", uuid.uuid4()))
    with pytest.raises(StaleJob):
        await stale.reuse_facts(deps.llm.model, EXTRACTION_PROMPT_VERSION, tier="medium", ids=None)
    assert (
        query(db_dsn, "select count(*) as n from chunk_facts where import_id = %s", (second,))[0][
            "n"
        ]
        == 0
    )
    assert stage_rows(db_dsn, second)["extract"]["items_reused"] == 0


def _rows_touched(plan: dict[str, Any]) -> int:
    """Rows a plan node and its children produced or threw away, over all their loops."""
    loops = int(plan.get("Actual Loops", 1))
    own = (
        int(plan.get("Actual Rows", 0))
        + int(plan.get("Rows Removed by Filter", 0))
        + int(plan.get("Rows Removed by Join Filter", 0))
    ) * loops
    return own + sum(_rows_touched(child) for child in plan.get("Plans", []))


async def test_the_reuse_lookup_stays_linear_in_a_large_history_the_planner_never_measured(
    db_dsn: str, tmp_path: Path, pool: AsyncConnectionPool[Any], fake_anthropic: FakeAnthropicServer
) -> None:
    """A large import's reuse pass looks each chunk up by content, whatever the statistics say.

    Both tables have just been filled and never analysed (as after a large import's
    chunk stage and map step, before autovacuum comes round): a plan that joins every
    chunk with every fact of the user is quadratic, minutes at tens of thousands.
    """
    n = 2000
    deps = _deps(_settings(db_dsn, tmp_path, fake_anthropic), pool)
    earlier = insert_import(db_dsn, USER_A, "user-imports/earlier.zip")
    query(db_dsn, "select public.cancel_import(%s)", (earlier,))
    current = submit(deps.settings, USER_A)
    await drive(deps, db_dsn, current, until="chunk")
    lease = uuid.uuid4()
    setup = {
        "lease": lease,
        "current": current,
        "earlier": earlier,
        "user": USER_A,
        "n": n,
        "model": deps.llm.model,
        "version": EXTRACTION_PROMPT_VERSION,
    }
    for statement in (
        "alter table public.import_chunks set (autovacuum_enabled = off)",
        "alter table public.chunk_facts set (autovacuum_enabled = off)",
        "delete from public.import_chunks",
        "update public.import_stages set status = 'running', lease = %(lease)s"
        " where import_id = %(current)s and stage = 'extract'",
        "insert into public.import_chunks (id, import_id, user_id, conversation_id, content,"
        "                                  chunk_index, chunk_tier, content_hash)"
        " select gen_random_uuid(), %(current)s, %(user)s, 'c' || g, 'text ' || g, 0,"
        "        'medium', md5(g::text)"
        "   from generate_series(1, %(n)s) g",
        # The earlier import extracted the same history; this one has done a part of it.
        "insert into public.chunk_facts (import_id, chunk_id, user_id, content_hash, model,"
        "                                requested_model, prompt_version)"
        " select %(earlier)s, gen_random_uuid(), %(user)s, content_hash, %(model)s, %(model)s,"
        "        %(version)s"
        "   from public.import_chunks",
        "insert into public.chunk_facts (import_id, chunk_id, user_id, content_hash, model,"
        "                                requested_model, prompt_version)"
        " select import_id, id, user_id, content_hash, %(model)s, %(model)s, %(version)s"
        "   from public.import_chunks where conversation_id < 'c5'",
    ):
        query(db_dsn, statement, setup)
    fence = Fence(current, 1, "extract", lease)
    params = {
        **fence.params(),
        "model": deps.llm.model,
        "prompt_version": EXTRACTION_PROMPT_VERSION,
        "tier": "medium",
        "ids": None,
    }
    async with pool.connection() as conn, conn.transaction(force_rollback=True):
        cur = await conn.execute(
            sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) ") + sql.SQL(queries.REUSE_CHUNK_FACTS),
            params,
        )
        row = await cur.fetchone()
        assert row is not None
        (explained,) = row.values() if isinstance(row, dict) else row
    touched = _rows_touched(explained[0]["Plan"])
    assert touched < 20 * n, f"{touched} rows touched for {n} chunks"

    todo = n - len(query(db_dsn, "select 1 from chunk_facts where import_id = %s", (current,)))
    reused = (
        await Store(pool)
        .for_stage(fence)
        .reuse_facts(deps.llm.model, EXTRACTION_PROMPT_VERSION, tier="medium", ids=None)
    )
    assert reused == todo > 0
