"""The fleet's shared rate budget in PostgreSQL, and the provider drawing from it."""

from __future__ import annotations

import asyncio
import time
from datetime import date
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool
from pydantic import SecretStr

from tests.conftest import query
from tests.fakes.fake_anthropic import FakeAnthropicServer
from tests.fakes.plugin import anthropic_provider
from worker.llm.anthropic_provider import estimate_input_tokens
from worker.llm.base import ExtractionInput
from worker.llm.budget import FleetBudget
from worker.service import make_pool
from worker.settings import Settings
from worker.store import Store


def budget(pool: AsyncConnectionPool[Any], **kw: Any) -> FleetBudget:
    kw.setdefault("name", "test")
    return FleetBudget(Store(pool), **kw)


def row(dsn: str, name: str = "test") -> dict[str, Any]:
    return query(dsn, "select * from public.fullpass_rate_budget where name = %s", (name,))[0]


async def test_draws_line_up_at_the_rate(pool: AsyncConnectionPool[Any]) -> None:
    """60 a minute holding 5 s of it: 5 go at once, then one a second."""
    store = Store(pool)
    waits = [(await store.rate_draw("test", 60, None, 1, 5))[0] for _ in range(8)]
    assert waits[:5] == [0, 0, 0, 0, 0]
    assert waits[5:] == pytest.approx([1, 2, 3], abs=0.2)


async def test_workers_share_one_budget(pool: AsyncConnectionPool[Any], db_dsn: str) -> None:
    second_pool = make_pool(db_dsn, max_size=2)
    await second_pool.open(wait=True)
    try:
        one, two = Store(pool), Store(second_pool)  # two workers' connection pools
        waits = []
        for store in (one, two, one, two):
            waits.append((await store.rate_draw("test", 60, None, 1, 1.0))[0])
    finally:
        await second_pool.close()
    # One request a second for all of them: the 2nd, 3rd and 4th wait 1, 2 and 3 s.
    assert waits == pytest.approx([0, 1, 2, 3], abs=0.15)


async def test_input_tokens_and_their_refund(pool: AsyncConnectionPool[Any], db_dsn: str) -> None:
    store = Store(pool)
    # 6000 tokens a minute holding 1000 (10 s): a call of 3000 waits for 2000 more, 20 s.
    assert (await store.rate_draw("test", None, 6000, 3000, 10))[0] == pytest.approx(20, abs=0.1)
    assert row(db_dsn)["requests"] is None
    # The call counted 1000 tokens only (the rest came from the cache): 2000 go back.
    await store.rate_observe(
        "test", None, 6000, 10, requests_left=None, tokens_left=None, refund=2000
    )
    assert row(db_dsn)["input_tokens"] == pytest.approx(0, abs=5)
    assert (await store.rate_draw("test", None, 6000, 100, 10))[0] == pytest.approx(1, abs=0.1)


async def test_the_apis_remaining_lowers_the_budget(pool: AsyncConnectionPool[Any]) -> None:
    store = Store(pool)
    assert (await store.rate_draw("test", 60, None, 1, 60))[0] == 0  # 59 left, as we know
    # Others spend from the organisation's limit too: the API says none are left.
    await store.rate_observe("test", 60, None, 60, requests_left=0, tokens_left=None, refund=0)
    assert (await store.rate_draw("test", 60, None, 1, 60))[0] == pytest.approx(1, abs=0.05)
    # A higher figure than ours never raises the budget.
    await store.rate_observe("test", 60, None, 60, requests_left=50, tokens_left=None, refund=0)
    assert (await store.rate_draw("test", 60, None, 1, 60))[0] == pytest.approx(2, abs=0.05)


async def test_a_429_pauses_every_worker(pool: AsyncConnectionPool[Any], db_dsn: str) -> None:
    one, two = budget(pool, rpm=6000), budget(pool, rpm=6000)
    one.pause(0.5)
    await asyncio.sleep(0.1)  # written in the background
    assert row(db_dsn)["paused_until"] is not None
    started = time.monotonic()
    waited = await two.draw(10)  # another worker, which got no 429 itself
    assert 0.3 <= waited <= time.monotonic() - started < 1.0
    assert two.paused_for() == 0
    assert row(db_dsn)["pauses"] == 1


async def test_a_database_that_does_not_answer_leaves_calls_to_local_limits() -> None:
    dead = make_pool("postgresql://postgres@127.0.0.1:1/none", max_size=1)
    await dead.open(wait=False)
    try:
        unreachable = FleetBudget(Store(dead), rpm=1, timeout=0.3)
        started = time.monotonic()
        for _ in range(3):  # at one a minute, the budget would have held these 2 min
            await unreachable.draw(100)
        unreachable.observe({"anthropic-ratelimit-requests-remaining": "0"})
        unreachable.pause(0.01)
        assert time.monotonic() - started < 3
        assert unreachable.fallbacks == 3
        await unreachable.aclose()
    finally:
        await dead.close(timeout=0)


def extraction(n: int) -> ExtractionInput:
    return ExtractionInput(
        chunk_id=f"c{n}",
        conversation_id="conv",
        title="t",
        transcript=f"User: I like number {n}.",
        conversation_date=date(2024, 1, 1),
    )


async def test_the_provider_keeps_inside_the_limit_without_a_429(
    pool: AsyncConnectionPool[Any], fake_anthropic: FakeAnthropicServer, db_dsn: str
) -> None:
    # The organisation's limit: 20 a second, up to 20 at once. The budget holds
    # less (a quarter second's worth): the API may enforce over shorter spans.
    fake_anthropic.set_rate_limits(rpm=1200, burst_seconds=1)
    settings = Settings(
        ANTHROPIC_API_KEY=SecretStr(fake_anthropic.api_key),
        ANTHROPIC_BASE_URL=fake_anthropic.base_url,
        FULLPASS_LLM="anthropic",
        FULLPASS_CONCURRENCY=10,
    )
    shared = budget(pool, rpm=1200, burst_seconds=0.25)
    provider = anthropic_provider(
        settings, budget=shared, use_global_limiter=False, backoff_base=0.01
    )
    started = time.monotonic()
    await asyncio.gather(*(provider.extract_facts(extraction(n)) for n in range(50)))
    elapsed = time.monotonic() - started
    assert fake_anthropic.rate_limited() == []
    assert len(fake_anthropic.calls("extract", ok=True)) == 50
    assert elapsed >= 2.0  # 45 calls beyond the burst, at 20 a second
    assert shared.fallbacks == 0
    assert shared.draws == 50


async def test_the_provider_shares_a_429_with_the_fleet(
    pool: AsyncConnectionPool[Any], fake_anthropic: FakeAnthropicServer, db_dsn: str
) -> None:
    fake_anthropic.set_rate_limits(rpm=60, burst_seconds=1)  # one, then one a second
    settings = Settings(
        ANTHROPIC_API_KEY=SecretStr(fake_anthropic.api_key),
        ANTHROPIC_BASE_URL=fake_anthropic.base_url,
        FULLPASS_LLM="anthropic",
    )
    # This worker's budget believes in more than the organisation has: the API says no.
    provider = anthropic_provider(
        settings, budget=budget(pool, rpm=6000), use_global_limiter=False, backoff_base=0.01
    )
    await provider.extract_facts(extraction(1))
    await provider.extract_facts(extraction(2))  # 429, retry-after 1, then through
    assert len(fake_anthropic.rate_limited()) == 1
    await asyncio.sleep(0.1)
    budget_row = row(db_dsn)
    assert budget_row["pauses"] == 1
    # The answers' headers taught the budget the organisation's real limit.
    assert provider.budget is not None and provider.budget.rpm == 60
    other = budget(pool, rpm=60)
    assert await other.draw(1) > 0.5  # the next call of any worker waits its turn


def test_the_estimate_counts_system_tools_and_messages() -> None:
    params = {
        "system": [{"type": "text", "text": "s" * 400}],
        "tools": [{"name": "x"}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "m" * 400}]}],
    }
    assert 200 < estimate_input_tokens(params) < 210


class ScriptedStore:
    """A budget store answering draws from a script (no database)."""

    def __init__(self, draws: list[tuple[float, float]]) -> None:
        self.draws = draws

    async def rate_draw(
        self, name: str, rpm: int | None, itpm: int | None, tokens: int, burst: float
    ) -> tuple[float, float]:
        return self.draws.pop(0)

    async def rate_observe(self, *args: Any, **kw: Any) -> None:
        return None

    async def rate_pause(self, name: str, seconds: float) -> None:
        return None


async def test_a_call_waiting_its_turn_also_waits_out_a_pause_learnt_meanwhile() -> None:
    shared = FleetBudget(ScriptedStore([(0.2, 0.0), (0.5, 0.5)]), rpm=60)
    first = asyncio.create_task(shared.draw(1))  # its turn in 0.2 s
    await asyncio.sleep(0.05)
    await asyncio.wait_for(shared.draw(1), 2)  # the fleet is paused for 0.5 s
    assert await first >= 0.5
