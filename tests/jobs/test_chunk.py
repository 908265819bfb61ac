"""The chunk stage: how the saved memories of chunks are filed as facts."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import pytest

from jobs import chunk as chunk_stage
from jobs.domain import rules
from jobs.domain.facts import Facts
from jobs.ingest.model import Chunk, Message


def _chunk(*saved: Message) -> Chunk:
    return Chunk(
        id="00000000-0000-0000-0000-000000000001",
        conversation_id="c1",
        title="t",
        content="User: hello",
        token_count=3,
        chunk_index=0,
        total_chunks=1,
        chunk_tier="medium",
        message_count=1,
        is_recent=False,
        created_at=None,
        content_hash="h",
        saved=saved,
    )


@pytest.fixture
def filed(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The texts the rules were asked to file, in order (the stage's cache emptied first)."""
    texts: list[str] = []
    real = rules.saved_facts

    def counting(kind: Literal["memory", "instructions"], text: str) -> Facts:
        texts.append(text)
        return real(kind, text)

    chunk_stage._filed.cache_clear()
    monkeypatch.setattr(rules, "saved_facts", counting)
    yield texts
    chunk_stage._filed.cache_clear()


def test_a_memory_repeated_across_conversations_is_filed_once(filed: list[str]) -> None:
    memory = Message(role="assistant", text="Is a vegetarian.", kind="memory")
    first = chunk_stage.saved_facts_of(_chunk(memory))
    again = chunk_stage.saved_facts_of(_chunk(memory))
    assert filed == ["Is a vegetarian."]
    assert [s.facts for s in again] == [s.facts for s in first]
    assert first[0].facts.count() > 0


def test_a_long_saved_text_is_not_kept_by_the_reader(filed: list[str]) -> None:
    long = "Prefers tea. " * (chunk_stage.SAVED_TEXT_CACHED_CHARS // 10)
    instructions = Message(role="user", text=long, kind="instructions")
    first = chunk_stage.saved_facts_of(_chunk(instructions))
    again = chunk_stage.saved_facts_of(_chunk(instructions))
    assert filed == [long, long]
    assert [s.facts for s in again] == [s.facts for s in first]
    assert chunk_stage._filed.cache_info().currsize == 0
