"""A model per stage, one price table, and what each stage and import cost."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from tests.conftest import USER_A, make_settings
from tests.fakes.fake_anthropic import FakeAnthropicServer, RecordedRequest
from tests.fakes.plugin import anthropic_provider
from tests.helpers import drive, import_row, progress_row, stage_rows, submit
from worker import runner
from worker.errors import NeedsOperator
from worker.llm.base import Usage
from worker.settings import MODEL_PRICES, ModelPrice, Settings, get_settings
from worker.store import Store

SONNET = "claude-sonnet-4-5-20250929"
OPUS = "claude-opus-4-1-20250805"
HAIKU = "claude-haiku-4-5-20251001"


def test_the_table_has_the_list_prices() -> None:
    settings = Settings(DATABASE_URL="postgresql://unused")
    for model, (i, o) in {
        HAIKU: (1.0, 5.0),
        "claude-haiku-4-5": (1.0, 5.0),
        SONNET: (3.0, 15.0),
        OPUS: (15.0, 75.0),
        "claude-3-5-haiku-20241022": (0.8, 4.0),
        "claude-3-5-haiku-latest": (0.8, 4.0),
    }.items():
        price = settings.price_of(model)
        assert price is not None, model
        assert (price.input, price.output) == (i, o), model
    assert settings.price_of("claude-unknown-9") is None
    assert set(MODEL_PRICES) >= {"claude-haiku-4-5", "claude-sonnet-4-5", "claude-opus-4-1"}


def test_usage_is_priced_with_cache_and_batch() -> None:
    price = ModelPrice(input=3.0, output=15.0)
    usage = Usage(
        input_tokens=1_000_000,
        output_tokens=100_000,
        cache_read_tokens=1_000_000,
        cache_creation_tokens=1_000_000,
    )
    online = usage.priced(price).cost_usd
    assert online == pytest.approx(3.0 + 1.5 + 0.3 + 3.75)
    assert usage.priced(price, batch=True).cost_usd == pytest.approx(online / 2)
    # An unknown price: unknown cost, and it stays unknown when added to.
    unknown = usage.priced(None)
    assert unknown.cost_usd is None and (unknown + usage.priced(price)).cost_usd is None
    # Nothing used costs nothing, price or not.
    assert Usage().priced(None).cost_usd == 0.0


def test_each_stage_may_have_its_own_model_and_prices_may_be_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FULLPASS_MODEL", "claude-haiku-4-5")
    monkeypatch.setenv("FULLPASS_MODEL_MEMORY", OPUS)
    monkeypatch.setenv("FULLPASS_MODEL_EXTRACT", "house-model")
    monkeypatch.setenv("FULLPASS_MODEL_PRICES", '{"house-model": {"input": 2, "output": 8}}')
    get_settings.cache_clear()
    try:
        settings = get_settings()
    finally:
        get_settings.cache_clear()
    assert settings.stage_model("extract") == "house-model"
    assert settings.stage_model("reduce") == "claude-haiku-4-5"
    assert settings.stage_model("memory") == OPUS
    assert settings.stage_model("regenerate") == "claude-haiku-4-5"
    house = settings.price_of("house-model")
    assert house is not None and (house.input, house.output, house.batch) == (2, 8, 0.5)
    assert settings.unpriced_models() == []


def test_a_bad_price_setting_is_refused_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FULLPASS_MODEL_PRICES", '{"house-model": {"input": -1, "output": 8}}')
    get_settings.cache_clear()
    try:
        with pytest.raises(NeedsOperator, match="FULLPASS_MODEL_PRICES"):
            get_settings()
    finally:
        get_settings.cache_clear()


def _cost(calls: list[RecordedRequest], price: ModelPrice) -> Decimal:
    total = sum(
        Usage(c.input_tokens, c.output_tokens, c.cache_read_tokens, c.cache_creation_tokens)
        .priced(price)
        .cost_usd
        or 0.0
        for c in calls
    )
    return Decimal(str(round(total, 6)))


async def test_every_stage_calls_its_model_and_books_its_cost(
    db_dsn: str, tmp_path: Path, pool: AsyncConnectionPool[Any], fake_anthropic: FakeAnthropicServer
) -> None:
    settings = make_settings(
        db_dsn,
        tmp_path,
        **fake_anthropic.settings_env(),
        FULLPASS_MODEL=HAIKU,
        FULLPASS_MODEL_EXTRACT=SONNET,
        FULLPASS_MODEL_REDUCE="claude-3-5-haiku-20241022",
        FULLPASS_MODEL_MEMORY=OPUS,
    )
    deps = runner.Deps(settings=settings, store=Store(pool), llm=anthropic_provider(settings))
    # A tiny reduce budget: reduce asks the model to consolidate.
    import_id = submit(settings, USER_A, options='{"reduce_max_tokens": 100}')
    await drive(deps, db_dsn, import_id)
    assert import_row(db_dsn, import_id)["status"] == "complete"

    models = {"extract": SONNET, "consolidate": "claude-3-5-haiku-20241022", "memory": OPUS}
    models["sections"] = HAIKU
    for kind, model in models.items():
        calls = fake_anthropic.calls(kind)
        assert calls, kind
        assert {c.body["model"] for c in calls} == {model}, kind

    stages = stage_rows(db_dsn, import_id)
    by_stage = {"extract": "extract", "reduce": "consolidate", "memory": "memory"}
    by_stage["regenerate"] = "sections"
    total = Decimal(0)
    for stage, kind in by_stage.items():
        model = models[kind]
        assert stages[stage]["model"] == model, stage
        price = settings.price_of(model)
        assert price is not None
        expected = _cost(fake_anthropic.calls(kind), price)
        assert stages[stage]["cost_usd"] == pytest.approx(expected, abs=Decimal("0.00001")), stage
        total += stages[stage]["cost_usd"]
    progress = progress_row(db_dsn, import_id)
    assert progress["cost_usd"] == total and progress["cost_usd"] > 0
    assert progress["spent_cost_usd"] == pytest.approx(total, abs=Decimal("0.00001"))
    assert progress["extract_model"] == SONNET


async def test_a_model_without_a_price_records_an_unknown_cost(
    db_dsn: str, tmp_path: Path, pool: AsyncConnectionPool[Any], fake_anthropic: FakeAnthropicServer
) -> None:
    settings = make_settings(
        db_dsn,
        tmp_path,
        **fake_anthropic.settings_env(),
        FULLPASS_MODEL=HAIKU,
        FULLPASS_MODEL_REGENERATE="claude-next-1",
    )
    assert settings.unpriced_models() == ["claude-next-1"]
    deps = runner.Deps(settings=settings, store=Store(pool), llm=anthropic_provider(settings))
    import_id = submit(settings, USER_A)
    await drive(deps, db_dsn, import_id)
    assert import_row(db_dsn, import_id)["status"] == "complete"
    stages = stage_rows(db_dsn, import_id)
    assert stages["regenerate"]["model"] == "claude-next-1"
    assert stages["regenerate"]["cost_usd"] is None
    assert stages["extract"]["cost_usd"] > 0
    progress = progress_row(db_dsn, import_id)
    assert progress["cost_usd"] is None and progress["spent_cost_usd"] is None


def test_status_shows_each_stage_model_cost_and_reused_chunks() -> None:
    from rich.console import Console

    from worker.operator import import_panel

    base = {"attempts": 1, "error": None, "items_total": 10, "items_done": 10}
    stages = [
        {**base, "stage": "extract", "status": "done", "model": SONNET, "cost_usd": Decimal("0.25")}
        | {"input_tokens": 900, "output_tokens": 80, "items_reused": 7},
        {**base, "stage": "regenerate", "status": "done", "model": "claude-next-1"}
        | {"cost_usd": None, "input_tokens": 50, "output_tokens": 5, "items_reused": 0},
    ]
    progress = {
        "import_id": "i-1",
        "status": "complete",
        "stage": "finalize",
        "stage_index": 8,
        "stage_count": 8,
        "progress": 100,
        "eta": None,
        "error": None,
        "cost_usd": None,
        "spent_cost_usd": None,
    }
    console = Console(width=200, record=True)
    console.print(import_panel(progress, stages))
    text = console.export_text()
    assert SONNET in text and "$0.2500" in text and "(7 reused)" in text
    assert "claude-next-1" in text and "unknown" in text


async def test_message_batches_are_booked_at_the_batch_discount(
    db_dsn: str, tmp_path: Path, pool: AsyncConnectionPool[Any], fake_anthropic: FakeAnthropicServer
) -> None:
    settings = make_settings(
        db_dsn,
        tmp_path,
        **fake_anthropic.settings_env(),
        FULLPASS_MODEL_EXTRACT=SONNET,
        FULLPASS_BATCH=True,
        FULLPASS_BATCH_POLL_SECONDS=0.1,
    )
    deps = runner.Deps(settings=settings, store=Store(pool), llm=anthropic_provider(settings))
    import_id = submit(settings, USER_A)
    for _ in range(50):  # submit, park, collect
        await drive(deps, db_dsn, import_id, until="extract")
        if stage_rows(db_dsn, import_id)["extract"]["status"] == "done":
            break
        await asyncio.sleep(0.1)
    extract = stage_rows(db_dsn, import_id)["extract"]
    assert extract["output"]["batch"]["succeeded"] > 0
    # Every chunk went through the batch.
    assert not [r for r in fake_anthropic.calls("extract") if r.method != "BATCH"]
    price = settings.price_of(SONNET)
    assert price is not None
    online = float(_cost([r for r in fake_anthropic.calls("extract")], price))
    assert online > 0
    assert float(extract["cost_usd"]) == pytest.approx(online * price.batch, abs=1e-5)
    assert extract["cost_usd"] == progress_row(db_dsn, import_id)["spent_cost_usd"]
