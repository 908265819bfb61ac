"""Reduce: dedup, most-recent-wins, provenance, and LLM consolidation only when too large."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from typing import Any

from psycopg_pool import AsyncConnectionPool

from jobs.domain.facts import BY_KEY, DateFact, Decision, Project, normalise
from jobs.reduce import Fact, FactSet, facts_from_reduced
from tests.conftest import USER_A, make_settings
from tests.fakes.fake_anthropic import FakeAnthropicServer
from tests.fakes.plugin import anthropic_provider
from tests.helpers import drive, import_row, stage_rows, submit
from worker import runner
from worker.store import Store


def test_normalised_duplicates_merge_and_keep_every_source() -> None:
    s = FactSet()
    prefs = BY_KEY["preferences"]
    s.add(Fact(prefs, "I prefer dark mode.", "2024-01-01", ["c1"]))
    s.add(Fact(prefs, "i prefer DARK   mode", "2024-02-01", ["c2"]))
    assert len(s) == 1
    (fact,) = s.facts()
    assert fact.sources == ["c1", "c2"] and fact.previously == []
    assert normalise("Hello,   World!") == "hello world"


def test_contradictions_resolve_to_the_most_recent_and_remember_the_old() -> None:
    s = FactSet()
    projects, prefs = BY_KEY["projects"], BY_KEY["preferences"]
    s.add(Fact(projects, Project(name="Lumen", description="a Rust CLI"), "2025-03-01", ["new"]))
    s.add(Fact(projects, Project(name="lumen", description="a Django app"), "2023-01-01", ["old"]))
    s.add(Fact(prefs, "I prefer tabs over spaces.", "2023-01-01", ["a"]))
    s.add(Fact(prefs, "I prefer spaces over tabs.", "2024-06-01", ["b"]))
    by_cat = {f.category.key: f for f in s.facts()}
    project = by_cat["projects"].item
    assert isinstance(project, Project) and project.description == "a Rust CLI"
    assert by_cat["projects"].previously == ["Lumen — a Django app"] or by_cat[
        "projects"
    ].previously == ["lumen — a Django app"]
    assert by_cat["projects"].sources == ["old", "new"]
    assert by_cat["preferences"].item == "I prefer spaces over tabs."
    assert by_cat["preferences"].previously == ["I prefer tabs over spaces."]
    facts = s.to_facts()
    assert "previously" in facts.preferences[0]


def test_a_fact_every_chunk_states_keeps_every_source_oldest_first() -> None:
    n = 4_000
    s = FactSet()
    people = BY_KEY["preferences"]
    for i in range(n):
        day = (date(2024, 1, 1) + timedelta(days=i // 150)).isoformat()
        s.add(Fact(people, "I prefer dark mode.", day, [f"c{i}"]))
    s.add(Fact(people, "I prefer dark mode.", "2023-01-01", ["first"]))
    s.add(Fact(people, "I prefer dark mode.", "2025-01-01", ["c7", "last"]))
    (fact,) = s.facts()
    assert fact.sources == ["first", *(f"c{i}" for i in range(n)), "last"]
    assert fact.date == "2025-01-01"


def test_stage_output_round_trips() -> None:
    s = FactSet()
    dates, decisions = BY_KEY["dates"], BY_KEY["decisions"]
    s.add(Fact(dates, DateFact(event="Marathon", date="2025-10-12"), "2025-01-01", ["c9"]))
    s.add(Fact(decisions, Decision(decision="Move to Postgres", context="joins"), None, ["c1"]))
    back = facts_from_reduced(s.to_json())
    assert back.dates[0].date == "2025-10-12"
    assert back.decisions[0].context == "joins"


async def test_consolidation_runs_only_above_the_threshold(
    db_dsn: str, tmp_path: Path, pool: AsyncConnectionPool[Any], fake_anthropic: FakeAnthropicServer
) -> None:
    settings = make_settings(db_dsn, tmp_path, **fake_anthropic.settings_env())
    deps = runner.Deps(settings=settings, store=Store(pool), llm=anthropic_provider(settings))
    small = submit(
        settings, USER_A, options='{"reduce_max_tokens": 300, "reduce_batch_tokens": 200}'
    )
    await drive(deps, db_dsn, small, until="reduce")
    out = stage_rows(db_dsn, small)["reduce"]["output"]
    assert out["consolidation_rounds"] >= 1
    consolidations = fake_anthropic.calls("consolidate", ok=True)
    assert len(consolidations) >= 2  # several ~200-token batches
    assert stage_rows(db_dsn, small)["reduce"]["input_tokens"] > 0
    # Every fact still points at the chunks it came from.
    assert all(item["sources"] for items in out["facts"].values() for item in items)
    assert import_row(db_dsn, small)["fact_count"] == out["fact_count"]

    fake_anthropic.reset()
    query_default = submit(settings, USER_A.__class__("cccccccc-0000-4000-8000-000000000003"))
    await drive(deps, db_dsn, query_default, until="reduce")
    assert stage_rows(db_dsn, query_default)["reduce"]["output"]["consolidation_rounds"] == 0
    assert fake_anthropic.calls("consolidate") == []
