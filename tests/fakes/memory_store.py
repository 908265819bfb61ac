"""An in-memory :class:`~worker.store.StageStore`: stages run without PostgreSQL.

The same seam procrastinate offers with its in-memory connector: a stage is a
plain async function over a :class:`~jobs.context.StageContext`, so handing
it this store (and a context built by :func:`stage_context`) runs the stage's
logic in microseconds, with every read and fenced write observable.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from jobs.context import StageContext
from jobs.domain.facts import Facts
from jobs.outputs import Outputs, StageOutput
from worker.errors import StaleJob
from worker.llm.base import LLMProvider, Usage
from worker.options import Options
from worker.settings import Settings
from worker.store import (
    ChunkFacts,
    ChunkRef,
    ChunkText,
    FactsRow,
    FactsSummary,
    ImportRow,
    ScoredConversation,
)


@dataclass
class Checkpoint:
    content_hash: str
    facts: Facts
    model: str
    error: str | None
    usage: Usage


@dataclass
class MemoryStore:
    """One import's chunks and checkpoints, in dicts."""

    chunks: list[ChunkText] = field(default_factory=list)
    tier_of: dict[str, str] = field(default_factory=dict)
    checkpoints: dict[str, Checkpoint] = field(default_factory=dict)
    #: Saved facts by chunk id, with the date they were saved.
    saved: dict[str, list[tuple[Facts, datetime | None]]] = field(default_factory=dict)
    parked: dict[str, Any] = field(default_factory=dict)
    progress: list[tuple[int, int | None]] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    #: Set to False to make the job lose the stage (another worker took it).
    current: bool = True
    current_checks: int = 0

    def add_chunk(self, chunk: ChunkText, tier: str = "medium") -> None:
        self.chunks.append(chunk)
        self.tier_of[chunk.id] = tier

    async def ensure_current(self) -> None:
        self.current_checks += 1
        if not self.current:
            raise StaleJob()

    async def report_progress(self, done: int, total: int | None) -> None:
        self.progress.append((done, total))

    async def record_usage(self, usage: Usage) -> None:
        self.usage += usage

    async def extraction_work(self, tier: str) -> tuple[list[ChunkRef], int]:
        of_tier = [c for c in self.chunks if self.tier_of[c.id] == tier]
        todo = [
            ChunkRef(c.id, c.content_hash)
            for c in of_tier
            if (done := self.checkpoints.get(c.id)) is None or done.content_hash != c.content_hash
        ]
        return todo, len(of_tier)

    async def chunk_texts(self, ids: Sequence[str]) -> list[ChunkText]:
        by_id = {c.id: c for c in self.chunks}
        return [by_id[i] for i in ids if i in by_id]

    async def checkpoint_facts(
        self, rows: Sequence[FactsRow], usage: Usage, model: str, error: str | None = None
    ) -> None:
        self.usage += usage
        if not self.current:
            raise StaleJob()
        for i, row in enumerate(rows):
            self.checkpoints[row.chunk_id] = Checkpoint(
                row.content_hash, row.facts, model, error, usage if i == 0 else Usage()
            )

    async def facts_summary(self) -> FactsSummary:
        cps = self.checkpoints.values()
        return FactsSummary(
            chunks=len(cps),
            failed=sum(1 for c in cps if c.error),
            facts=sum(c.facts.count() for c in cps),
            input_tokens=sum(c.usage.input_tokens for c in cps),
            output_tokens=sum(c.usage.output_tokens for c in cps),
        )

    async def chunk_facts(self) -> AsyncIterator[ChunkFacts]:
        dated = {c.id: c.created_at for c in self.chunks}
        rows = [
            ChunkFacts(chunk_id, cp.facts, dated.get(chunk_id))
            for chunk_id, cp in self.checkpoints.items()
            if cp.error is None and cp.facts.count()
        ]
        rows += [
            ChunkFacts(chunk_id, facts, said_at or dated.get(chunk_id))
            for chunk_id, saved in self.saved.items()
            for facts, said_at in saved
        ]
        rows.sort(key=lambda r: (r.created_at is not None, r.created_at or 0, r.chunk_id))
        for row in rows:
            yield row

    async def running_output(self) -> dict[str, Any]:
        return dict(self.parked)

    async def sample_conversations(self, tier: str, limit: int) -> list[ScoredConversation]:
        convs: dict[str, ScoredConversation] = {}
        for c in self.chunks:
            if self.tier_of[c.id] != tier:
                continue
            conv = convs.setdefault(
                c.conversation_id, ScoredConversation(c.conversation_id, c.title, c.created_at)
            )
            conv.contents.append(c.content)
        return list(convs.values())[:limit]


def chunk(
    conversation_id: str,
    content: str,
    *,
    index: int = 0,
    title: str = "A conversation",
    created_at: datetime | None = None,
    saved: Facts | None = None,
) -> ChunkText:
    """A chunk as the chunk stage would have stored it."""
    return ChunkText(
        id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{conversation_id}/{index}")),
        conversation_id=conversation_id,
        chunk_index=index,
        title=title,
        content=content,
        content_hash=str(hash(content)),
        created_at=created_at,
        saved=saved or Facts(),
    )


def stage_context(
    stage: str,
    store: MemoryStore,
    llm: LLMProvider,
    *,
    outputs: Sequence[StageOutput] = (),
    options: dict[str, Any] | None = None,
    workdir: Path | None = None,
) -> StageContext:
    """A context for running one stage over ``store``, without a database."""
    settings = Settings(DATABASE_URL="postgresql://unused", FULLPASS_LLM="offline")
    imp = ImportRow(uuid.uuid4(), uuid.uuid4(), "user-imports/x/export.zip", {}, 1)
    return StageContext(
        imp=imp,
        stage=stage,
        attempt=1,
        settings=settings,
        options=Options().merged({"min_conversations": 0, **(options or {})}),
        store=store,
        llm=llm,
        outputs=Outputs({o.stage: o.model_dump(mode="json") for o in outputs}),
        workdir=workdir or Path("/nonexistent"),
    )
