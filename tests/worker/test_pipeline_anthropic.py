"""The pipeline with the real ``anthropic`` SDK against the fake Messages API."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import USER_A, make_settings, query
from tests.fakes.fake_anthropic import FakeAnthropicServer, Fault
from tests.helpers import import_row, running_worker, stage_rows, submit, wait_status
from worker.settings import Settings


def anthropic_settings(
    db_dsn: str, tmp_path: Path, fake: FakeAnthropicServer, **kw: object
) -> Settings:
    return make_settings(db_dsn, tmp_path, **fake.settings_env(), **kw)


async def test_full_import_with_claude_accounts_every_token(
    db_dsn: str, tmp_path: Path, fake_anthropic: FakeAnthropicServer
) -> None:
    settings = anthropic_settings(db_dsn, tmp_path, fake_anthropic)
    import_id = submit(settings, USER_A)
    async with running_worker(settings) as worker:
        row = await wait_status(db_dsn, import_id, ("complete", "failed"), worker=worker)
    assert row["status"] == "complete", row["error"]
    served = fake_anthropic.total_usage()
    stages = stage_rows(db_dsn, import_id)
    assert row["input_tokens"] == sum(s["input_tokens"] for s in stages.values())
    assert row["output_tokens"] == sum(s["output_tokens"] for s in stages.values())
    assert row["input_tokens"] == served["input_tokens"]
    assert row["output_tokens"] == served["output_tokens"]
    facts = query(db_dsn, "select model, count(*) as n from chunk_facts group by model")
    models = {f["model"] for f in facts}
    assert settings.model in models
    assert fake_anthropic.duplicate_extractions() == {}
    memory = query(db_dsn, "select memory_md from user_profiles")[0]["memory_md"]
    assert "## Decisions & Context" in memory


async def test_rate_limits_and_garbage_do_not_fail_the_import(
    db_dsn: str, tmp_path: Path, fake_anthropic: FakeAnthropicServer
) -> None:
    settings = anthropic_settings(db_dsn, tmp_path, fake_anthropic)
    fake_anthropic.inject(Fault.rate_limit(retry_after=0.2), times=5)
    fake_anthropic.inject(Fault("garbage_text"), times=2)
    fake_anthropic.inject(Fault.overloaded(), times=3)
    import_id = submit(settings, USER_A)
    async with running_worker(settings) as worker:
        row = await wait_status(db_dsn, import_id, ("complete", "failed"), worker=worker)
    assert row["status"] == "complete", row["error"]
    assert import_row(db_dsn, import_id)["fact_count"] > 0
