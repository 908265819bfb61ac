"""The Claude provider, through the real ``anthropic`` SDK, against the fake API over HTTP."""

from __future__ import annotations

import asyncio
import re
import time
import weakref
from datetime import date
from typing import Any

import pytest
from pydantic import SecretStr

from jobs.domain.facts import MEMORY_SECTIONS, Facts, Project
from tests.fakes.fake_anthropic import FakeAnthropicServer, Fault, extract_facts
from tests.fakes.plugin import anthropic_provider
from tests.helpers import Lease
from worker.errors import StaleJob
from worker.llm import limiter as limiter_module
from worker.llm.anthropic_provider import AnthropicProvider, retry_after_seconds
from worker.llm.base import (
    ExtractionInput,
    LLMError,
    LLMResult,
    ModelRefused,
    ModelUnavailable,
    UnusableAnswer,
)
from worker.llm.limiter import AdaptiveLimiter
from worker.llm.prompts import SECTIONS_SYSTEM, sections_message
from worker.redact import redact, register_secrets
from worker.settings import Settings

TRANSCRIPT = """\
User: Hi! Quick question about regexes, can you help?
Assistant: Of course. I prefer verbose regexes myself.
User: Thanks. I really prefer short bullet-point answers.
I'm building Kestrel, a side project written with FastAPI and Postgres.
User: My wedding anniversary is on June 14, 2019. I strongly believe privacy should be the \
default, not a setting.
User: We decided to drop the mobile app for now because web usage is 90 percent.
Saved memory: Lives in Lisbon.
Custom instructions: Be concise."""


def item(chunk_id: str = "chunk-1", transcript: str = TRANSCRIPT) -> ExtractionInput:
    return ExtractionInput(
        chunk_id=chunk_id,
        conversation_id="conv-1",
        title="Planning",
        transcript=transcript,
        conversation_date=date(2024, 5, 17),
    )


def make_provider(
    fake: FakeAnthropicServer,
    *,
    timeout: float = 5.0,
    retries: int = 4,
    concurrency: int = 8,
    **kw: Any,
) -> AnthropicProvider:
    settings = Settings(
        ANTHROPIC_API_KEY=SecretStr(fake.api_key),
        ANTHROPIC_BASE_URL=fake.base_url,
        FULLPASS_LLM="anthropic",
        FULLPASS_LLM_TIMEOUT=timeout,
        FULLPASS_LLM_MAX_RETRIES=retries,
        FULLPASS_CONCURRENCY=concurrency,
    )
    kw.setdefault("backoff_base", 0.01)
    kw.setdefault("use_global_limiter", False)
    return anthropic_provider(settings, **kw)


@pytest.fixture
async def provider(fake_anthropic: FakeAnthropicServer) -> Any:
    p = make_provider(fake_anthropic)
    yield p
    await p.aclose()


def user_texts(body: dict[str, Any]) -> list[str]:
    content = body["messages"][-1]["content"]
    return [content] if isinstance(content, str) else [b["text"] for b in content]


# ------------------------------------------------------------------ happy path


async def test_extracts_the_users_durable_facts(
    provider: AnthropicProvider, fake_anthropic: FakeAnthropicServer
) -> None:
    result = await provider.extract_facts(item())
    facts = result.value
    assert facts == Facts.model_validate(extract_facts(TRANSCRIPT))  # the tool call, parsed
    said = " ".join(facts.preferences)
    assert "short bullet-point answers" in said and "Be concise" in said
    assert "verbose regexes" not in said  # the assistant's, not the user's
    assert "Quick question" not in said
    assert [p.name for p in facts.projects] == ["Kestrel"]
    assert facts.dates[0].date == "2019-06-14"
    assert facts.beliefs == ["I strongly believe privacy should be the default, not a setting."]
    assert facts.decisions[0].context == "because web usage is 90 percent"
    assert result.model == provider.model == "claude-haiku-4-5-20251001"

    (request,) = fake_anthropic.calls("extract")
    body = request.body
    assert body["tool_choice"] == {"type": "tool", "name": "record_facts"}
    assert body["temperature"] == 0.3
    assert body["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert "Conversation date: 2024-05-17" in user_texts(body)[0]
    assert request.key == FakeAnthropicServer.key_of(TRANSCRIPT)
    assert result.usage.calls == 1
    assert result.usage.input_tokens == request.input_tokens > 0
    assert result.usage.output_tokens == request.output_tokens > 0


async def test_system_prompt_is_cached_across_calls(provider: AnthropicProvider) -> None:
    first = await provider.extract_facts(item("a"))
    second = await provider.extract_facts(item("b", "User: I love green tea."))
    assert first.usage.cache_creation_tokens > 0
    assert second.usage.cache_read_tokens == first.usage.cache_creation_tokens
    assert second.value.preferences == ["I love green tea."]


async def test_small_talk_yields_no_facts(provider: AnthropicProvider) -> None:
    result = await provider.extract_facts(item(transcript="User: hi!\nAssistant: Hello!"))
    assert result.value == Facts()


# ------------------------------------------------------------------ transport retries


async def test_rate_limit_honours_retry_after_and_halves_the_limit(
    provider: AnthropicProvider, fake_anthropic: FakeAnthropicServer
) -> None:
    fake_anthropic.inject(Fault.rate_limit(retry_after=0.3))
    started = time.monotonic()
    result = await provider.extract_facts(item())
    assert time.monotonic() - started >= 0.3
    assert result.value.count() > 0
    assert [r.status for r in fake_anthropic.calls("extract")] == [429, 200]
    assert provider.limiter.limit == 4
    assert result.usage.calls == 1  # the 429 returned no usage


async def test_retry_after_ms_is_preferred(
    provider: AnthropicProvider, fake_anthropic: FakeAnthropicServer
) -> None:
    fake_anthropic.inject(Fault("rate_limit", retry_after=30, retry_after_ms=200))
    started = time.monotonic()
    await provider.extract_facts(item())
    assert 0.2 <= time.monotonic() - started < 5


@pytest.mark.parametrize("fault", ["overloaded", "server_error"])
async def test_overload_and_server_errors_are_retried(
    provider: AnthropicProvider, fake_anthropic: FakeAnthropicServer, fault: str
) -> None:
    fake_anthropic.inject(Fault(fault))  # type: ignore[arg-type]
    result = await provider.extract_facts(item())
    assert result.value.count() > 0
    assert [r.status for r in fake_anthropic.calls("extract")] == [
        529 if fault == "overloaded" else 500,
        200,
    ]
    assert provider.limiter.limit == (4 if fault == "overloaded" else 8)


async def test_timeout_is_retried(fake_anthropic: FakeAnthropicServer) -> None:
    provider = make_provider(fake_anthropic, timeout=0.3)
    fake_anthropic.inject(Fault.hang(seconds=1.5))
    started = time.monotonic()
    result = await provider.extract_facts(item())
    assert time.monotonic() - started < 1.4
    assert result.value.count() > 0
    assert [r.status for r in fake_anthropic.calls("extract")] == [None, 200]
    await provider.aclose()


async def test_gives_up_after_the_configured_retries(fake_anthropic: FakeAnthropicServer) -> None:
    provider = make_provider(fake_anthropic, retries=2)
    fake_anthropic.inject(Fault.overloaded(), times=5)
    with pytest.raises(LLMError, match=r"529 overloaded_error.*after 3 attempts") as info:
        await provider.extract_facts(item())
    assert isinstance(info.value, ModelUnavailable)
    assert len(fake_anthropic.calls("extract")) == 3
    await provider.aclose()


@pytest.mark.parametrize(
    ("status", "kind"), [(400, UnusableAnswer), (401, ModelRefused), (422, UnusableAnswer)]
)
async def test_client_errors_are_not_retried(
    provider: AnthropicProvider,
    fake_anthropic: FakeAnthropicServer,
    status: int,
    kind: type[LLMError],
) -> None:
    fake_anthropic.inject(Fault("status", status=status, error_type="x_error", message="nope"))
    with pytest.raises(kind, match=f"{status} x_error: nope"):
        await provider.extract_facts(item())
    assert len(fake_anthropic.calls("extract")) == 1


async def test_wrong_api_key_is_an_authentication_error(
    fake_anthropic: FakeAnthropicServer,
) -> None:
    settings = Settings(
        ANTHROPIC_API_KEY=SecretStr("sk-ant-api03-wrong-key-XYZ"),
        ANTHROPIC_BASE_URL=fake_anthropic.base_url,
        FULLPASS_LLM="anthropic",
    )
    provider = AnthropicProvider(settings, use_global_limiter=False)
    with pytest.raises(ModelRefused, match="401 authentication_error") as info:
        await provider.extract_facts(item())
    assert "wrong-key" not in str(info.value)
    await provider.aclose()


async def test_api_key_never_appears_in_errors(
    provider: AnthropicProvider, fake_anthropic: FakeAnthropicServer
) -> None:
    key = fake_anthropic.api_key
    message = f"bad header x-api-key={key}, also sk-ant-admin01-OTHERKEY_123 and {key[-12:]}"
    fake_anthropic.inject(
        Fault("status", status=400, error_type="invalid_request_error", message=message)
    )
    with pytest.raises(LLMError) as info:
        await provider.extract_facts(item())
    text = str(info.value)
    assert key not in text
    assert "OTHERKEY" not in text
    assert "[REDACTED]" in text


def test_redact_and_retry_after_helpers() -> None:
    assert redact("key sk-ant-api03-abc_DEF-1xyz end") == "key [REDACTED] end"
    register_secrets(["hunter2-secret"])
    assert redact("it was hunter2-secret") == "it was [REDACTED]"
    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    assert retry_after_seconds({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None


# ------------------------------------------------------------------ unusable answers


@pytest.mark.parametrize("fault", ["garbage_text", "bad_tool_input", "non_json"])
async def test_unusable_answer_is_retried_once_with_a_correction(
    provider: AnthropicProvider, fake_anthropic: FakeAnthropicServer, fault: str
) -> None:
    fake_anthropic.inject(Fault(fault))  # type: ignore[arg-type]
    result = await provider.extract_facts(item())
    assert result.value.count() > 0
    first, second = fake_anthropic.calls("extract")
    assert first.fault == fault and second.ok
    assert first.key == second.key  # the same chunk, not a different request
    assert "previous answer to this request was unusable" in user_texts(second.body)[-1]
    # Usage sums every attempt that returned a body with usage.
    assert result.usage.calls == (1 if fault == "non_json" else 2)
    assert result.usage.input_tokens == first.input_tokens + second.input_tokens


@pytest.mark.parametrize("fault", ["garbage_text", "bad_tool_input"])
async def test_unusable_twice_raises_invalid_answer(
    provider: AnthropicProvider, fake_anthropic: FakeAnthropicServer, fault: str
) -> None:
    fake_anthropic.inject(Fault(fault), times=2)  # type: ignore[arg-type]
    with pytest.raises(LLMError, match=r"^invalid answer: ") as info:
        await provider.extract_facts(item())
    assert isinstance(info.value, UnusableAnswer)
    assert info.value.usage.calls == 2
    assert info.value.usage.input_tokens == sum(
        r.input_tokens for r in fake_anthropic.calls("extract")
    )
    assert len(fake_anthropic.calls("extract")) == 2


async def test_free_text_json_answer_is_accepted(
    provider: AnthropicProvider, fake_anthropic: FakeAnthropicServer
) -> None:
    fake_anthropic.inject(Fault("text_json"))
    result = await provider.extract_facts(item())
    assert result.value == Facts.model_validate(extract_facts(TRANSCRIPT))
    assert len(fake_anthropic.calls("extract")) == 1


async def test_model_that_rejects_temperature_is_asked_without_it(
    provider: AnthropicProvider, fake_anthropic: FakeAnthropicServer
) -> None:
    fake_anthropic.reject_temperature = True
    result = await provider.extract_facts(item())
    assert result.value.count() > 0
    assert provider.send_temperature is False
    await provider.write_memory(result.value)
    statuses = [(r.kind, r.status, "temperature" in r.body) for r in fake_anthropic.requests]
    assert statuses == [("extract", 400, True), ("extract", 200, False), ("memory", 200, False)]


# ------------------------------------------------------------------ other calls


async def test_consolidate_merges_duplicates(
    provider: AnthropicProvider, fake_anthropic: FakeAnthropicServer
) -> None:
    facts = Facts(
        preferences=["Likes tea.", "likes tea", "Prefers vim keybindings."],
        projects=[
            Project(name="Lumen", description="Notes app."),
            Project(name="lumen", details="Rust"),
        ],
    )
    result = await provider.consolidate(facts)
    assert result.value.preferences == ["Likes tea.", "Prefers vim keybindings."]
    assert len(result.value.projects) == 1
    (request,) = fake_anthropic.calls("consolidate")
    assert request.body["tool_choice"]["name"] == "record_facts"


async def test_write_memory_has_exactly_the_five_sections(
    provider: AnthropicProvider, fake_anthropic: FakeAnthropicServer
) -> None:
    facts = (await provider.extract_facts(item())).value
    result = await provider.write_memory(facts)
    assert re.findall(r"^## (.+)$", result.value, re.M) == list(MEMORY_SECTIONS)
    assert "Kestrel" in result.value
    (request,) = fake_anthropic.calls("memory")
    assert request.body["temperature"] == 0.5
    assert "tools" not in request.body


async def test_write_memory_garbage_then_good(
    provider: AnthropicProvider, fake_anthropic: FakeAnthropicServer
) -> None:
    fake_anthropic.inject(Fault("garbage_text", only="memory"))
    result = await provider.write_memory(Facts(beliefs=["Believes in tests."]))
    assert "Believes in tests." in result.value
    assert result.usage.calls == 2
    fake_anthropic.inject(Fault("garbage_text", only="memory"), times=2)
    with pytest.raises(LLMError, match="no MEMORY sections"):
        await provider.write_memory(Facts())


async def test_write_sections(
    provider: AnthropicProvider, fake_anthropic: FakeAnthropicServer
) -> None:
    memory = "## Preferences\n\n- Prefers vim.\n\n## Projects\n\n- **Lumen**: Built with Rust.\n"
    result = await provider.write_sections(memory, ["User: hello", "User: I use vim daily."])
    sections = result.value
    assert "Prefers vim." in sections.user.points
    assert any("Rust" in p for p in sections.tools.points)
    (request,) = fake_anthropic.calls("sections")
    assert request.body["tool_choice"] == {"type": "tool", "name": "write_sections"}
    assert request.body["system"][0]["text"] == SECTIONS_SYSTEM


async def test_bad_sections_twice_raise(
    provider: AnthropicProvider, fake_anthropic: FakeAnthropicServer
) -> None:
    fake_anthropic.inject(Fault("bad_tool_input", only="sections"), times=2)
    with pytest.raises(LLMError, match=r"invalid answer: .*missing or invalid sections"):
        await provider.write_sections("## Preferences\n\n- x\n", [])


def test_sections_message_fits_its_budget() -> None:
    samples = ["User: " + "word " * 20_000 for _ in range(50)]
    message = sections_message("## Preferences\n\n- x\n", samples, budget_chars=100_000)
    assert len(message) < 101_000
    assert message.count("<conversation ") == 50
    few = sections_message("m", ["User: short", "  "], budget_chars=100_000)
    assert few.count("<conversation ") == 1


# ------------------------------------------------------------------ concurrency


async def test_limiter_bounds_concurrency_at_the_server(
    fake_anthropic: FakeAnthropicServer,
) -> None:
    provider = make_provider(fake_anthropic, concurrency=4)
    fake_anthropic.latency = 0.05
    items = [item(f"c{i}", f"User: I like topic number {i}.") for i in range(16)]
    results = await asyncio.gather(*(provider.extract_facts(i) for i in items))
    assert all(isinstance(r, LLMResult) for r in results)
    assert fake_anthropic.max_in_flight <= 4
    assert not fake_anthropic.duplicate_extractions()
    assert len(fake_anthropic.extraction_counts()) == 16
    await provider.aclose()


async def test_fake_serves_many_concurrent_connections(
    fake_anthropic: FakeAnthropicServer,
) -> None:
    provider = make_provider(fake_anthropic, concurrency=16)
    fake_anthropic.latency = 0.1
    items = [item(f"c{i}", f"User: I love dish number {i}.") for i in range(16)]
    results = await asyncio.gather(*(provider.extract_facts(i) for i in items))
    assert {r.value.preferences[0] for r in results} == {
        f"I love dish number {i}." for i in range(16)
    }
    assert fake_anthropic.max_in_flight >= 10
    await provider.aclose()


async def test_limiter_halves_on_rate_limits_and_recovers(
    fake_anthropic: FakeAnthropicServer,
) -> None:
    limiter = AdaptiveLimiter(4, increase_after=3)
    provider = make_provider(fake_anthropic, limiter=limiter)
    fake_anthropic.inject(Fault.rate_limit(retry_after=0.05))
    await provider.extract_facts(item("a"))
    assert limiter.limit == 2
    for n in range(6):
        await provider.extract_facts(item(f"b{n}", f"User: I like {n}."))
    assert limiter.limit == 4
    await provider.aclose()


async def test_shared_global_limiter_caps_all_providers_and_shares_cool_downs(
    fake_anthropic: FakeAnthropicServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limiter_module, "_GLOBAL", weakref.WeakKeyDictionary())
    cap = limiter_module.global_limiter(3)
    providers = [make_provider(fake_anthropic, use_global_limiter=True) for _ in range(3)]
    fake_anthropic.latency = 0.05
    calls = [
        p.extract_facts(item(f"g{i}-{j}", f"User: I like {i}{j}."))
        for i, p in enumerate(providers)
        for j in range(4)
    ]
    await asyncio.gather(*calls)
    assert fake_anthropic.max_in_flight <= 3

    # A 429 seen by one provider makes the others wait out its retry-after too.
    fake_anthropic.latency = 0
    fake_anthropic.inject(Fault.rate_limit(retry_after=0.3))
    first = asyncio.create_task(providers[0].extract_facts(item("x")))
    await asyncio.sleep(0.1)  # the 429 has arrived; the cool-down runs
    started = time.monotonic()
    await providers[1].extract_facts(item("y", "User: I like cool-downs."))
    assert time.monotonic() - started >= 0.15
    await first
    assert cap.limit == 3  # the process's cap is fixed: halving is each import's
    for p in providers:
        await p.aclose()


# ------------------------------------------------------------------ batches


async def test_batch_round_trip(
    provider: AnthropicProvider, fake_anthropic: FakeAnthropicServer
) -> None:
    fake_anthropic.batch_delay = 0.3
    fake_anthropic.set_batch_item_outcome("bad", "errored")
    fake_anthropic.set_batch_item_outcome("late", "expired")
    fake_anthropic.set_batch_item_outcome("junk", "garbage_text")
    items = [
        item("good"),
        item("bad", "User: I love jazz."),
        item("late", "User: I love tea."),
        item("junk", "User: I love rain."),
    ]
    batch_id = await provider.submit_batch(items)
    assert await provider.batch_status(batch_id) == "in_progress"
    with pytest.raises(LLMError):
        [_ async for _ in provider.batch_results(batch_id)]
    await asyncio.sleep(0.35)
    assert await provider.batch_status(batch_id) == "ended"
    results = {cid: r async for cid, r in provider.batch_results(batch_id)}
    assert set(results) == {"good", "bad", "late", "junk"}
    good = results["good"]
    assert isinstance(good, LLMResult)
    assert good.value.projects[0].name == "Kestrel"
    assert good.usage.calls == 1
    assert isinstance(results["bad"], LLMError) and "errored" in str(results["bad"])
    assert isinstance(results["late"], LLMError) and "expired" in str(results["late"])
    assert isinstance(results["junk"], LLMError) and "invalid answer" in str(results["junk"])
    (create,) = [r for r in fake_anthropic.calls("batch") if r.method == "POST"]
    params = create.body["requests"][0]["params"]
    assert params["tool_choice"] == {"type": "tool", "name": "record_facts"}
    assert params["temperature"] == 0.3
    assert fake_anthropic.extraction_counts()[FakeAnthropicServer.key_of(TRANSCRIPT)] == 1


async def test_batch_rejects_unusable_custom_ids(provider: AnthropicProvider) -> None:
    with pytest.raises(ValueError, match="custom_id"):
        await provider.submit_batch([item("has spaces")])
    with pytest.raises(ValueError, match="unique"):
        await provider.submit_batch([item("x"), item("x")])
    with pytest.raises(ValueError, match="at least one"):
        await provider.submit_batch([])


async def test_unknown_batch_is_an_error(provider: AnthropicProvider) -> None:
    with pytest.raises(LLMError, match="404 not_found_error"):
        await provider.batch_status("msgbatch_nope")


# ------------------------------------------------------------------ construction


def test_missing_api_key_is_refused() -> None:
    settings = Settings(ANTHROPIC_API_KEY=None, FULLPASS_LLM="anthropic")
    with pytest.raises(LLMError, match="ANTHROPIC_API_KEY"):
        AnthropicProvider(settings)


def test_fake_records_duplicate_extractions(fake_anthropic: FakeAnthropicServer) -> None:
    async def twice() -> None:
        provider = make_provider(fake_anthropic)
        await provider.extract_facts(item())
        await provider.extract_facts(item())
        await provider.aclose()

    asyncio.run(twice())
    assert fake_anthropic.duplicate_extractions() == {FakeAnthropicServer.key_of(TRANSCRIPT): 2}


async def test_a_request_waiting_for_a_slot_is_not_sent_once_its_job_lost_the_stage(
    fake_anthropic: FakeAnthropicServer,
) -> None:
    """The job's lease is checked when a request holds its slot, right before it is
    sent: a job handed to another worker while its request waited pays for nothing."""
    provider = make_provider(fake_anthropic)
    fake_anthropic.latency = 0.3
    lease = Lease()
    with limiter_module.llm_scope("import-1", 1, guard=lease):
        first = asyncio.create_task(provider.extract_facts(item("a", "User: I like tea.")))
        second = asyncio.create_task(provider.extract_facts(item("b", "User: I like rye.")))
        while fake_anthropic.max_in_flight < 1:
            await asyncio.sleep(0.01)
        lease.lost = True  # the second still waits for the one slot
        assert isinstance(await first, LLMResult)
        with pytest.raises(StaleJob):
            await second
    assert lease.checks == 2
    assert len(fake_anthropic.extraction_counts()) == 1
    await provider.aclose()
