"""The stages as plain async functions over data: no database, an in-memory store."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from jobs.domain import rules
from jobs.domain.facts import Facts
from jobs.extract import extract
from jobs.memory import memory
from jobs.outputs import (
    ChunkOutput,
    ExtractOutput,
    MemoryOutput,
    MissingOutput,
    ReduceOutput,
    RegenerateOutput,
    Skipped,
)
from jobs.reduce import reduce
from jobs.regenerate import regenerate
from tests.fakes.memory_store import MemoryStore, chunk, stage_context
from worker.errors import StaleJob, Transient
from worker.llm.base import ExtractionInput, LLMResult, ModelUnavailable
from worker.llm.offline import OfflineProvider

CHUNKED = ChunkOutput(conversations=3, chunks=3, tiers=["medium"])
JAN = datetime(2024, 1, 5, tzinfo=UTC)
JUN = datetime(2024, 6, 5, tzinfo=UTC)


def store_with_chunks() -> MemoryStore:
    store = MemoryStore()
    store.add_chunk(chunk("c1", "User: I really prefer tabs over spaces.", created_at=JAN))
    store.add_chunk(chunk("c2", "Assistant: Here is the summary you asked for.", created_at=JAN))
    saved = rules.saved_facts("memory", "Is a vegetarian.")
    store.add_chunk(
        chunk("c3", "User: I really prefer spaces over tabs.", created_at=JUN, saved=saved)
    )
    store.saved[store.chunks[2].id] = [(saved, JUN)]
    return store


async def test_extract_checkpoints_every_chunk_and_skips_silent_ones() -> None:
    store = store_with_chunks()
    ctx = stage_context("extract", store, OfflineProvider(), outputs=[CHUNKED])
    result = await extract(ctx)
    out = result.final_output()
    assert isinstance(out, ExtractOutput)
    assert set(store.checkpoints) == {c.id for c in store.chunks}
    silent = store.checkpoints[store.chunks[1].id]
    assert silent.model == "none: no user text" and silent.facts == Facts()
    assert (out.chunks, out.skipped_no_user_text) == (3, 1)
    assert out.facts == sum(cp.facts.count() for cp in store.checkpoints.values()) > 0
    assert store.usage.input_tokens > 0
    # A second run finds nothing left to do.
    again = (await extract(ctx)).final_output()
    assert isinstance(again, ExtractOutput) and again.calls == 0


async def test_a_small_export_skips_the_memory_stages_without_a_call() -> None:
    store = store_with_chunks()
    provider = LosingProvider(store)
    ctx = stage_context(
        "extract", store, provider, outputs=[CHUNKED], options={"min_conversations": 50}
    )
    result = await extract(ctx)
    out = result.final_output()
    assert isinstance(out, Skipped) and "3 conversation(s), fewer than 50" in out.skipped
    assert set(result.skip) == {"reduce", "memory", "regenerate"}
    assert provider.calls == 0 and store.checkpoints == {}


class LosingProvider(OfflineProvider):
    """Offline answers; while the first call is out, another worker takes the stage."""

    def __init__(self, store: MemoryStore) -> None:
        super().__init__()
        self.store = store
        self.calls = 0

    async def extract_facts(self, item: ExtractionInput) -> LLMResult[Facts]:
        self.calls += 1
        self.store.current = False
        await asyncio.sleep(0)
        return await super().extract_facts(item)


async def test_a_job_that_loses_the_stage_makes_no_new_call() -> None:
    store = store_with_chunks()
    provider = LosingProvider(store)
    ctx = stage_context(
        "extract", store, provider, outputs=[CHUNKED], options={"pack_tokens": 1, "concurrency": 1}
    )
    with pytest.raises(StaleJob):
        await extract(ctx)
    assert provider.calls == 1
    # Nothing the lost call answered is checkpointed (only the silent chunk, before it).
    assert {cp.model for cp in store.checkpoints.values()} <= {"none: no user text"}
    assert store.usage.input_tokens > 0  # what the call in flight cost is still booked


class Overloaded(OfflineProvider):
    async def extract_facts(self, item: ExtractionInput) -> LLMResult[Facts]:
        raise ModelUnavailable("Anthropic API 529 overloaded_error", retry_after=7.0)


async def test_an_unavailable_model_retries_the_stage_with_its_wait() -> None:
    store = store_with_chunks()
    ctx = stage_context("extract", store, Overloaded(), outputs=[CHUNKED])
    with pytest.raises(Transient, match="the model service kept failing") as caught:
        await extract(ctx)
    assert caught.value.retry_after == 7.0
    # Only the silent chunk is checkpointed: the others are asked again on retry.
    assert set(store.checkpoints) == {store.chunks[1].id}


async def test_reduce_keeps_the_latest_and_the_saved_facts() -> None:
    store = store_with_chunks()
    await extract(stage_context("extract", store, OfflineProvider(), outputs=[CHUNKED]))
    out = (await reduce(stage_context("reduce", store, OfflineProvider()))).final_output()
    assert isinstance(out, ReduceOutput)
    (preference, *others) = [f for f in out.facts["preferences"] if "tabs" in f["text"]]
    assert others == []
    assert preference["text"] == "I really prefer spaces over tabs."
    assert preference["previously"] == ["I really prefer tabs over spaces."]
    assert any("vegetarian" in str(f) for facts in out.facts.values() for f in facts)


async def test_later_stages_read_typed_outputs_and_fail_loudly_without_them() -> None:
    store = store_with_chunks()
    with pytest.raises(MissingOutput, match="the reduce stage has no output"):
        await memory(stage_context("memory", store, OfflineProvider()))
    reduced = ReduceOutput(
        facts={"preferences": [{"text": "Prefers tea.", "as_of": None, "sources": []}]},
        fact_count=1,
        merged_from_chunks=1,
        after_dedup=1,
        consolidation_rounds=0,
        tokens=10,
    )
    written = (
        await memory(stage_context("memory", store, OfflineProvider(), outputs=[reduced]))
    ).final_output()
    assert isinstance(written, MemoryOutput) and "Prefers tea." in written.memory_md
    extracted = ExtractOutput(
        tier="medium",
        chunks=3,
        calls=1,
        extracted_now=3,
        skipped_no_user_text=0,
        failed_chunks=0,
        facts=1,
        input_tokens=1,
        output_tokens=1,
        model="offline-rules-v1",
    )
    ctx = stage_context("regenerate", store, OfflineProvider(), outputs=[written, extracted])
    sections = (await regenerate(ctx)).final_output()
    assert isinstance(sections, RegenerateOutput)
    assert sections.soulprint_text.rstrip().endswith(written.memory_md.rstrip())


async def test_the_persona_sample_is_bounded_in_tokens_and_leaves_pastes_out() -> None:
    store = MemoryStore()
    log = "\n".join(f"2025-01-01T00:00:{i % 60:02d}Z ERROR [sync] socket closed" for i in range(60))
    for n in range(40):
        said = f"User: I really prefer tabs, note {n}. Why does this fail?\n\n{log}\n\nThanks."
        store.add_chunk(chunk(f"conv-{n}", said + " More words." * 40, created_at=JAN))
    written = MemoryOutput(memory_md="## Preferences\n- Prefers tabs.", fallback=False, model=None)
    extracted = ExtractOutput(
        tier="medium",
        chunks=40,
        calls=1,
        extracted_now=40,
        skipped_no_user_text=0,
        failed_chunks=0,
        facts=1,
        input_tokens=1,
        output_tokens=1,
        model="offline-rules-v1",
    )
    ctx = stage_context(
        "regenerate",
        store,
        OfflineProvider(),
        outputs=[written, extracted],
        options={"sample_tokens": 2000},
    )
    out = (await regenerate(ctx)).final_output()
    assert isinstance(out, RegenerateOutput)
    assert 0 < out.sample_chars <= 2000 * 4
    assert out.sampled_conversations > 10  # short excerpts of many, not all of a few
