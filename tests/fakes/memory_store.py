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
from worker.embeddings import Embedder
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
    Page,
    ScoredConversation,
)


class MemoryPageSource:
    """Pages of a work list handed to a lane function, in memory."""

    def __init__(self, store: MemoryStore, pages: Sequence[Sequence[str]]) -> None:
        self.store = store
        self.stats: dict[str, int] = {}
        self._pages = [Page(n + 1, list(ids), 1) for n, ids in enumerate(pages)]
        self.done_pages: list[int] = []

    @property
    def attempt(self) -> int:
        return 1

    async def next(self) -> Page | None:
        return self._pages.pop(0) if self._pages and self.store.current else None

    async def done(self, page: Page) -> None:
        if not self.store.current:
            raise StaleJob()
        self.done_pages.append(page.number)

    def finish(self) -> None:
        """The lane ended: its figures count for the stage."""
        for key, value in self.stats.items():
            self.store.lane_stats[key] = self.store.lane_stats.get(key, 0) + value


@dataclass
class Checkpoint:
    content_hash: str
    facts: Facts
    model: str
    error: str | None
    usage: Usage
    requested_model: str | None = None
    prompt_version: str | None = None
    reused: bool = False


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
    #: Embeddings by chunk id: (model, vector); ``None`` column: no pgvector.
    embeddings: dict[str, tuple[str, list[float]]] | None = field(default_factory=dict)
    embedding_tokens: int = 0
    embedding_status: str | None = None
    #: Facts of the user's earlier imports: (content hash, model, prompt version) -> facts.
    earlier: dict[tuple[str, str, str], Facts] = field(default_factory=dict)
    #: What lanes reported, summed (see :class:`MemoryPageSource`).
    lane_stats: dict[str, int] = field(default_factory=dict)

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
        self,
        rows: Sequence[FactsRow],
        usage: Usage,
        model: str,
        error: str | None = None,
        *,
        requested_model: str | None = None,
        prompt_version: str | None = None,
    ) -> None:
        self.usage += usage
        if not self.current:
            raise StaleJob()
        for i, row in enumerate(rows):
            self.checkpoints[row.chunk_id] = Checkpoint(
                row.content_hash,
                row.facts,
                model,
                error,
                usage if i == 0 else Usage(),
                requested_model,
                prompt_version,
            )

    async def reuse_facts(
        self, model: str, prompt_version: str, *, tier: str | None, ids: Sequence[str] | None
    ) -> int:
        if not self.current:
            raise StaleJob()
        reused = 0
        for c in self.chunks:
            if (tier is not None and self.tier_of[c.id] != tier) or (
                ids is not None and c.id not in ids
            ):
                continue
            done = self.checkpoints.get(c.id)
            facts = self.earlier.get((c.content_hash, model, prompt_version))
            if facts is None or (done is not None and done.content_hash == c.content_hash):
                continue
            self.checkpoints[c.id] = Checkpoint(
                c.content_hash, facts, model, None, Usage(), model, prompt_version, reused=True
            )
            reused += 1
        return reused

    async def facts_summary(self) -> FactsSummary:
        cps = self.checkpoints.values()
        return FactsSummary(
            chunks=len(cps),
            failed=sum(1 for c in cps if c.error),
            facts=sum(c.facts.count() for c in cps),
            input_tokens=sum(c.usage.input_tokens for c in cps),
            output_tokens=sum(c.usage.output_tokens for c in cps),
            reused=sum(1 for c in cps if c.reused),
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

    async def extraction_todo(self, ids: Sequence[str]) -> list[ChunkRef]:
        by_id = {c.id: c for c in self.chunks}
        return [
            ChunkRef(i, by_id[i].content_hash)
            for i in ids
            if i in by_id
            and (
                (done := self.checkpoints.get(i)) is None
                or done.content_hash != by_id[i].content_hash
            )
        ]

    async def lanes_stats(self) -> dict[str, int]:
        return dict(self.lane_stats)

    async def embedding_column(self) -> bool:
        return self.embeddings is not None

    async def embedding_work(self, model: str) -> tuple[list[str], int]:
        assert self.embeddings is not None
        done = self.embeddings
        todo = [c.id for c in self.chunks if c.id not in done or done[c.id][0] != model]
        return todo, len(self.chunks)

    async def embedding_todo(self, ids: Sequence[str], model: str) -> list[str]:
        assert self.embeddings is not None
        known = {c.id for c in self.chunks}
        done = self.embeddings
        return [i for i in ids if i in known and (i not in done or done[i][0] != model)]

    async def embedding_texts(self, ids: Sequence[str]) -> list[tuple[str, str]]:
        by_id = {c.id: c for c in self.chunks}
        return [(i, f"{by_id[i].title}\n\n{by_id[i].content}") for i in ids if i in by_id]

    async def store_embeddings(
        self, ids: Sequence[str], vectors: Sequence[Sequence[float]], model: str, tokens: int
    ) -> None:
        self.embedding_tokens += tokens
        if not self.current:
            raise StaleJob()
        assert self.embeddings is not None
        for chunk_id, vector in zip(ids, vectors, strict=True):
            self.embeddings[chunk_id] = (model, list(vector))

    async def set_embedding_status(self, status: str | None) -> None:
        self.embedding_status = status

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
    embedder: Embedder | None = None,
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
        embedder=embedder,
        outputs=Outputs({o.stage: o.model_dump(mode="json") for o in outputs}),
        workdir=workdir or Path("/nonexistent"),
    )
