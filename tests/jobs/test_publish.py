"""What a pass publishes, as the app reads it: one set of chunks per user, MEMORY
as soon as it exists, JSON sections, small exports, backfills, the profile's status."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from jobs import registry
from jobs.context import StageContext, StageResult
from jobs.domain.facts import MEMORY_SECTIONS
from jobs.domain.sections import SECTION_NAMES, Section
from tests.conftest import USER_A, make_settings, query
from tests.fakes.fake_anthropic import FakeAnthropicServer
from tests.fakes.plugin import anthropic_provider
from tests.gen_export import Options, write_export
from tests.helpers import drive, import_row, insert_import, progress_row, stage_rows, submit
from worker import maintenance, queries, runner
from worker.settings import Settings
from worker.store import Store


@pytest.fixture
def deps(settings: Settings, pool: AsyncConnectionPool[Any]) -> runner.Deps:
    from worker.llm.offline import OfflineProvider

    return runner.Deps(settings=settings, store=Store(pool), llm=OfflineProvider())


def published(dsn: str, user: uuid.UUID = USER_A) -> dict[Any, int]:
    """The user's published chunks, counted by the import that wrote them."""
    rows = query(
        dsn,
        "select import_id, count(*) as n from conversation_chunks where user_id = %s group by 1",
        (user,),
    )
    return {r["import_id"]: r["n"] for r in rows}


def app_chunk(dsn: str, content: str = "User: I keep bees on my roof.") -> uuid.UUID:
    """A chunk the app wrote itself (its quick pass): no import_id."""
    chunk_id = uuid.uuid4()
    query(
        dsn,
        "insert into conversation_chunks (id, user_id, conversation_id, title, content, chunk_tier)"
        " values (%s, %s, 'quick-1', 'Quick pass', %s, 'medium')",
        (chunk_id, USER_A, content),
    )
    return chunk_id


async def test_the_users_chunks_are_replaced_only_when_a_pass_succeeds(
    deps: runner.Deps, db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    quick = app_chunk(db_dsn)
    first = submit(deps.settings, USER_A)
    await drive(deps, db_dsn, first)
    n_first = import_row(db_dsn, first)["chunk_count"]
    # The app's own chunk had no embedding: nothing searchable is lost by replacing it.
    assert published(db_dsn) == {first: n_first}

    second = submit(deps.settings, USER_A)
    await drive(deps, db_dsn, second, until="embed")
    assert published(db_dsn) == {first: n_first}  # searchable while the pass runs
    monkeypatch.setattr(queries, "ADVANCE_IMPORT", "SELECT 1 / 0")
    await drive(deps, db_dsn, second)
    assert import_row(db_dsn, second)["status"] == "failed"
    assert published(db_dsn) == {first: n_first}  # a failed pass publishes nothing

    monkeypatch.undo()
    query(db_dsn, "select public.requeue_import(%s)", (second,))
    await drive(deps, db_dsn, second)
    assert import_row(db_dsn, second)["status"] == "complete"
    assert published(db_dsn) == {second: import_row(db_dsn, second)["chunk_count"]}
    assert query(db_dsn, "select count(*) as n from import_chunks") == [{"n": 0}]
    assert query(db_dsn, "select 1 from conversation_chunks where id = %s", (quick,)) == []


async def test_a_requeued_published_pass_stages_its_chunks_again(
    deps: runner.Deps, db_dsn: str
) -> None:
    import_id = submit(deps.settings, USER_A)
    await drive(deps, db_dsn, import_id)
    before = published(db_dsn)
    query(db_dsn, "select public.requeue_import(%s, 'extract')", (import_id,))
    await drive(deps, db_dsn, import_id)
    assert import_row(db_dsn, import_id)["status"] == "complete"
    assert published(db_dsn) == before
    assert query(db_dsn, "select count(*) > 0 as ok from chunk_facts") == [{"ok": True}]


async def test_staged_chunks_are_dropped_after_the_publish_not_inside_it(
    deps: runner.Deps,
    db_dsn: str,
    pool: AsyncConnectionPool[Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Dropping an export's staged chunks is no part of the publish the app
    waits for: they go once it has committed. A drop that fails leaves them to
    the housekeeping, and a requeue that comes first reuses them."""

    def staged() -> int:
        rows = query(db_dsn, "select count(*) as n from import_chunks where import_id = %s", (i,))
        return int(rows[0]["n"])

    monkeypatch.setattr(queries, "DROP_PUBLISHED_STAGING", "SELECT 1 / 0")
    i = submit(deps.settings, USER_A)
    with caplog.at_level(logging.WARNING, logger="fullpass.store"):
        await drive(deps, db_dsn, i)
    row = import_row(db_dsn, i)
    assert row["status"] == "complete"
    assert published(db_dsn) == {i: row["chunk_count"]}
    assert staged() == row["chunk_count"]  # the publish itself left them
    assert "staged chunks of the published pass not dropped" in caplog.text

    monkeypatch.undo()
    query(db_dsn, "select public.requeue_import(%s, 'extract')", (i,))
    assert await maintenance.drop_leftover_staging(pool) == []  # no longer complete
    assert staged() == row["chunk_count"]
    await drive(deps, db_dsn, i)
    assert import_row(db_dsn, i)["status"] == "complete"
    assert published(db_dsn) == {i: row["chunk_count"]}
    assert staged() == 0


@pytest.mark.parametrize(("policy", "kept"), [("auto", True), ("never", True), ("always", False)])
async def test_the_apps_embedded_chunks_are_never_lost_silently(
    db_dsn: str, tmp_path: Path, pool: AsyncConnectionPool[Any], policy: str, kept: bool
) -> None:
    if not query(
        db_dsn,
        "select 1 from pg_attribute where attrelid = 'public.conversation_chunks'::regclass"
        " and attname = 'embedding'",
    ):
        pytest.skip("no pgvector: nothing is searchable by vector, text search finds both")
    dim = query(
        db_dsn,
        "select atttypmod as d from pg_attribute"
        " where attrelid = 'public.conversation_chunks'::regclass and attname = 'embedding'",
    )[0]["d"]
    quick = app_chunk(db_dsn)
    query(
        db_dsn,
        "update conversation_chunks set embedding = %s::text::vector where id = %s",
        ("[" + ",".join(["0.1"] * dim) + "]", quick),
    )
    settings = make_settings(
        db_dsn, tmp_path, FULLPASS_REPLACE_APP_CHUNKS=policy, FULLPASS_EMBEDDINGS="none"
    )
    from worker.llm.offline import OfflineProvider

    deps = runner.Deps(settings=settings, store=Store(pool), llm=OfflineProvider())
    import_id = submit(settings, USER_A)
    await drive(deps, db_dsn, import_id)
    assert import_row(db_dsn, import_id)["status"] == "complete"
    still = query(db_dsn, "select 1 from conversation_chunks where id = %s", (quick,))
    assert bool(still) is kept


async def test_sections_are_json_objects_and_soulprint_keeps_one_heading_level(
    deps: runner.Deps, db_dsn: str
) -> None:
    import_id = submit(deps.settings, USER_A)
    await drive(deps, db_dsn, import_id)
    profile = query(db_dsn, "select * from user_profiles where user_id = %s", (USER_A,))[0]
    for name in SECTION_NAMES:
        data = json.loads(profile[f"{name}_md"])
        assert set(data) == {"title", "summary", "points"}
        assert Section.model_validate(data).points
    text = profile["soulprint_text"]
    top = [line for line in text.splitlines() if line.startswith("# ")]
    assert [h.split(":")[0] for h in top] == [
        "# SOUL",
        "# IDENTITY",
        "# USER",
        "# AGENTS",
        "# TOOLS",
        "# MEMORY",
    ]
    after_memory = text.split("# MEMORY", 1)[1]
    assert [f"## {s}" in after_memory for s in MEMORY_SECTIONS] == [True] * 5
    assert "\n## " not in text.split("# MEMORY", 1)[0]  # no stray sub-sections under TOOLS
    assert profile["full_pass_status"] == "complete"
    assert profile["full_pass_completed_at"] is not None


async def test_memory_is_published_at_its_stage_and_survives_a_failed_regenerate(
    deps: runner.Deps, db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(ctx: StageContext) -> StageResult:
        raise RuntimeError("sections model unreachable")

    import_id = submit(deps.settings, USER_A)
    await drive(deps, db_dsn, import_id, until="memory")
    progress = progress_row(db_dsn, import_id)
    assert (progress["memory_ready"], progress["sections_ready"]) == (True, False)
    memory = query(db_dsn, "select memory_md from user_profiles")[0]["memory_md"]
    assert memory and "## Preferences" in memory

    monkeypatch.setitem(registry.STAGE_FUNCTIONS, "regenerate", broken)
    await drive(deps, db_dsn, import_id)
    assert import_row(db_dsn, import_id)["status"] == "failed"
    profile = query(
        db_dsn,
        "select memory_md, soul_md, full_pass_status, full_pass_completed_at from user_profiles",
    )[0]
    assert profile["memory_md"] == memory  # the user keeps their MEMORY
    assert profile["soul_md"] is None
    assert (profile["full_pass_status"], profile["full_pass_completed_at"]) == ("failed", None)


async def test_a_small_export_is_stored_and_searchable_without_a_model_call(
    db_dsn: str,
    tmp_path: Path,
    pool: AsyncConnectionPool[Any],
    fake_anthropic: FakeAnthropicServer,
) -> None:
    settings = make_settings(
        db_dsn, tmp_path, **fake_anthropic.settings_env(), FULLPASS_MIN_CONVERSATIONS=50
    )
    deps = runner.Deps(settings=settings, store=Store(pool), llm=anthropic_provider(settings))
    export = tmp_path / "small.json"
    write_export(export, Options(conversations=10, seed=3))
    import_id = submit(settings, USER_A, export)
    await drive(deps, db_dsn, import_id)
    assert import_row(db_dsn, import_id)["status"] == "complete"
    assert fake_anthropic.calls() == []
    stages = stage_rows(db_dsn, import_id)
    for stage in ("extract", "reduce", "memory", "regenerate"):
        assert stages[stage]["status"] == "skipped"
        assert (
            "small export: 10 conversation(s), fewer than 50" in stages[stage]["output"]["skipped"]
        )
    progress = progress_row(db_dsn, import_id)
    assert "no memory is built" in progress["note"]
    assert (progress["memory_ready"], progress["sections_ready"], progress["progress"]) == (
        False,
        False,
        100,
    )
    assert published(db_dsn) == {import_id: import_row(db_dsn, import_id)["chunk_count"]}
    profile = query(db_dsn, "select memory_md, full_pass_status from user_profiles")[0]
    assert profile == {"memory_md": None, "full_pass_status": "complete"}


async def test_a_backfill_builds_memory_from_the_users_chunks(
    deps: runner.Deps, db_dsn: str
) -> None:
    # The app's quick pass wrote these: no export on storage, no import_id.
    ids = [
        app_chunk(db_dsn, "User: I really prefer tabs over spaces.\n\nAssistant: Noted."),
        app_chunk(db_dsn, "User: I'm building Kestrel, a side project written with Go."),
    ]
    import_id = insert_import(db_dsn, USER_A, None, source="chunks")
    await drive(deps, db_dsn, import_id)
    row = import_row(db_dsn, import_id)
    assert row["status"] == "complete", row["error"]
    assert (row["conversation_count"], row["chunk_count"]) == (1, 2)
    stages = stage_rows(db_dsn, import_id)
    assert stages["download"]["status"] == "skipped"
    assert query(db_dsn, "select count(*) as n from chunk_facts") == [{"n": 2}]
    memory = query(db_dsn, "select memory_md from user_profiles")[0]["memory_md"]
    assert "tabs over spaces" in memory and "Kestrel" in memory
    # The same chunks, now the pass's.
    chunks = query(db_dsn, "select id, import_id from conversation_chunks order by id")
    assert sorted(c["id"] for c in chunks) == sorted(ids)
    assert {c["import_id"] for c in chunks} == {import_id}


async def test_a_backfill_without_chunks_fails_clearly(deps: runner.Deps, db_dsn: str) -> None:
    import_id = insert_import(db_dsn, USER_A, None, source="chunks")
    await drive(deps, db_dsn, import_id)
    row = import_row(db_dsn, import_id)
    assert row["status"] == "failed"
    assert "no conversation chunks" in row["error"]


def test_a_cancelled_pass_shows_as_cancelled(settings: Settings, db_dsn: str) -> None:
    import_id = submit(settings, USER_A)
    query(db_dsn, "select public.cancel_import(%s)", (import_id,))
    profile = query(db_dsn, "select full_pass_status, full_pass_completed_at from user_profiles")[0]
    assert profile == {"full_pass_status": "cancelled", "full_pass_completed_at": None}


async def test_completion_is_stamped_when_the_publish_ends_not_when_it_began(
    deps: runner.Deps, db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large pass's publish takes seconds in one transaction: the import's
    ``completed_at`` and the profile's ``full_pass_completed_at`` are the moment
    its chunks became visible, not the moment that transaction started."""
    monkeypatch.setattr(
        queries,
        "PUBLISH_STAGED_CHUNKS",
        queries.PUBLISH_STAGED_CHUNKS.replace(" AS published", " AS published, pg_sleep(0.5)"),
    )
    import_id = submit(deps.settings, USER_A)
    await drive(deps, db_dsn, import_id)
    (row,) = query(
        db_dsn,
        "select i.status, i.completed_at, s.started_at, s.finished_at, p.full_pass_completed_at"
        " from imports i join import_stages s on s.import_id = i.id and s.stage = 'finalize'"
        " join user_profiles p on p.user_id = i.user_id where i.id = %s",
        (import_id,),
    )
    assert row["status"] == "complete"
    published_by = row["started_at"] + timedelta(seconds=0.5)  # the publish's end, at the earliest
    assert row["finished_at"] >= published_by
    assert row["completed_at"] >= row["finished_at"]
    assert row["full_pass_completed_at"] >= published_by


async def test_publish_copies_the_staged_text_entries_and_computes_the_missing(
    deps: runner.Deps, db_dsn: str
) -> None:
    import_id = submit(deps.settings, USER_A)
    await drive(deps, db_dsn, import_id, until="embed")
    staged = query(
        db_dsn, "select id from import_chunks where import_id = %s order by id", (import_id,)
    )
    assert len(staged) >= 2
    prepared, *others = (r["id"] for r in staged)
    # An entry prepared while the pass ran is what gets published (a marker here)...
    query(
        db_dsn,
        "update import_chunks set fullpass_fts = to_tsvector('english', 'zebra') where id = %s",
        (prepared,),
    )
    query(db_dsn, "update import_chunks set fullpass_fts = null where id = any(%s)", (others,))
    await drive(deps, db_dsn, import_id)
    assert import_row(db_dsn, import_id)["status"] == "complete"
    rows = query(
        db_dsn,
        "select id, fullpass_fts::text as fts,"
        " fullpass_chunk_fts(title, content)::text as computed"
        " from conversation_chunks where import_id = %s",
        (import_id,),
    )
    by_id = {r["id"]: r for r in rows}
    assert by_id[prepared]["fts"] == "'zebra':1"
    # ... and one nobody prepared is computed as it is published.
    assert all(by_id[i]["fts"] == by_id[i]["computed"] != "" for i in others)
