"""MEMORY structure and fallback; finalize publishes the v2 profile atomically."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from jobs.domain.facts import MEMORY_SECTIONS
from jobs.domain.memory import NO_DATA
from tests.conftest import USER_A, make_settings, query
from tests.fakes.fake_anthropic import FakeAnthropicServer, Fault
from tests.fakes.plugin import anthropic_provider
from tests.helpers import drive, import_row, stage_rows, submit
from worker import queries, runner
from worker.store import Store

HEADINGS = [f"## {s}" for s in MEMORY_SECTIONS]


def _headings(md: str) -> list[str]:
    return [line.strip() for line in md.splitlines() if line.startswith("## ")]


@pytest.fixture
def deps(
    db_dsn: str, tmp_path: Path, pool: AsyncConnectionPool[Any], fake_anthropic: FakeAnthropicServer
) -> runner.Deps:
    settings = make_settings(
        db_dsn, tmp_path, **fake_anthropic.settings_env(), FULLPASS_LLM_MAX_RETRIES=1
    )
    return runner.Deps(settings=settings, store=Store(pool), llm=anthropic_provider(settings))


async def test_memory_has_exactly_the_five_sections(deps: runner.Deps, db_dsn: str) -> None:
    import_id = submit(deps.settings, USER_A)
    await drive(deps, db_dsn, import_id)
    memory = query(db_dsn, "select memory_md from user_profiles")[0]["memory_md"]
    assert _headings(memory) == HEADINGS
    assert stage_rows(db_dsn, import_id)["memory"]["output"]["fallback"] is False


async def test_memory_falls_back_when_the_call_keeps_failing(
    deps: runner.Deps, db_dsn: str, fake_anthropic: FakeAnthropicServer
) -> None:
    import_id = submit(deps.settings, USER_A)
    await drive(deps, db_dsn, import_id, until="reduce")
    fake_anthropic.inject(Fault.server_error(only="memory"), times=10)
    await drive(deps, db_dsn, import_id)
    assert import_row(db_dsn, import_id)["status"] == "complete"
    out = stage_rows(db_dsn, import_id)["memory"]["output"]
    assert out["fallback"] is True and "500" in out["error"]
    memory = query(db_dsn, "select memory_md from user_profiles")[0]["memory_md"]
    assert _headings(memory) == HEADINGS


async def test_empty_sections_say_no_data_yet(
    deps: runner.Deps, db_dsn: str, tmp_path: Path
) -> None:
    from tests.helpers import gen_export

    export = gen_export(tmp_path / "quiet.json", conversations=5, fact_rate=0, fmt="simplified")
    import_id = submit(deps.settings, USER_A, export)
    await drive(deps, db_dsn, import_id)
    memory = query(db_dsn, "select memory_md from user_profiles")[0]["memory_md"]
    assert _headings(memory) == HEADINGS
    assert memory.count(NO_DATA) >= 3


async def test_finalize_is_atomic_v1_survives_a_failure(
    deps: runner.Deps, db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    query(
        db_dsn,
        "insert into user_profiles (user_id, soul_md, user_md) values (%s, 'v1 soul', 'v1 user')",
        (USER_A,),
    )
    import_id = submit(deps.settings, USER_A)
    await drive(deps, db_dsn, import_id, until="embed")
    # The import's completion fails after the sections were written, inside the same transaction.
    monkeypatch.setattr(queries, "ADVANCE_IMPORT", "SELECT 1 / 0")
    await drive(deps, db_dsn, import_id)
    profile = query(db_dsn, "select soul_md, user_md, memory_md, soulprint_text from user_profiles")
    # MEMORY was published by its stage; the sections were not published.
    assert _headings(profile[0].pop("memory_md")) == HEADINGS
    assert profile == [{"soul_md": "v1 soul", "user_md": "v1 user", "soulprint_text": None}]
    assert query(db_dsn, "select count(*) as n from conversation_chunks") == [{"n": 0}]
    assert stage_rows(db_dsn, import_id)["finalize"]["status"] == "failed"
    assert import_row(db_dsn, import_id)["status"] == "failed"

    monkeypatch.undo()
    query(db_dsn, "select public.requeue_import(%s)", (import_id,))
    await drive(deps, db_dsn, import_id)
    assert import_row(db_dsn, import_id)["status"] == "complete"
    profile = query(db_dsn, "select soul_md, memory_md from user_profiles")[0]
    assert profile["soul_md"] != "v1 soul" and _headings(profile["memory_md"]) == HEADINGS
    assert uuid.UUID(str(import_id))
