"""The pipeline's database: every read and write a stage or the runner makes.

:class:`Store` owns the connection pool and runs the named statements of
:mod:`worker.queries`; nothing else in the pipeline holds a connection. The
runner uses it for a stage's lifecycle (claim, complete, park, fail); a stage
gets a :class:`StageStore` bound to its claim (:meth:`Store.for_stage`): every
write it makes is fenced by the import's generation and the stage's lease, so
a job that no longer owns the stage writes nothing (it gets
:class:`~worker.errors.StaleJob`). Stages depend on the :class:`StageStore`
protocol only, so they run as well over the in-memory store the unit tests
use.

A stage's *final* writes (the chunks of ``chunk``, the profile of
``finalize``) are not made by the stage: it returns them in its
:class:`StageResult`, and :meth:`Store.complete` applies them in the same
transaction that marks the stage done and defers the next one.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from jobs.domain.facts import Facts
from jobs.domain.sections import SECTION_NAMES
from jobs.ingest.model import Chunk
from jobs.outputs import Skipped, StageOutput
from worker import queries
from worker.db import Conn
from worker.errors import StaleJob
from worker.llm.base import Usage

COPY_BATCH = 512


# --------------------------------------------------------------------------- data


@dataclass(frozen=True, slots=True)
class ImportRow:
    id: UUID
    user_id: UUID
    #: None for a backfill (``source = 'chunks'``): no export file.
    storage_path: str | None
    options: dict[str, Any]
    generation: int
    #: ``export`` (a file to read) or ``chunks`` (the user's existing chunks).
    source: str = "export"


@dataclass(frozen=True, slots=True)
class Fence:
    """Who may write for a stage: this generation of the import, this claim's lease."""

    import_id: UUID
    generation: int
    stage: str
    lease: UUID

    def params(self) -> dict[str, Any]:
        return {
            "import_id": self.import_id,
            "generation": self.generation,
            "stage": self.stage,
            "lease": self.lease,
        }


@dataclass(frozen=True, slots=True)
class Claim:
    imp: ImportRow
    fence: Fence
    attempt: int


@dataclass(frozen=True, slots=True)
class ClaimFailure:
    user_id: UUID
    final: bool
    attempts: int


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """A chunk of the map step's work list."""

    id: str
    content_hash: str


@dataclass(frozen=True, slots=True)
class ChunkText:
    id: str
    conversation_id: str
    chunk_index: int
    title: str
    content: str
    content_hash: str
    created_at: datetime | None
    #: What the chunk's saved memories and custom instructions were filed as.
    saved: Facts = field(default_factory=Facts)

    def follows(self, other: ChunkText) -> bool:
        """Whether this is the chunk right after ``other`` in the same conversation."""
        return (
            other.conversation_id == self.conversation_id
            and other.chunk_index == self.chunk_index - 1
        )


@dataclass(frozen=True, slots=True)
class FactsRow:
    """One chunk's checkpoint: its facts."""

    chunk_id: str
    content_hash: str
    facts: Facts


@dataclass(frozen=True, slots=True)
class FactsSummary:
    chunks: int
    failed: int
    facts: int
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class ChunkFacts:
    """A checkpointed chunk's facts with the date of its conversation."""

    chunk_id: str
    facts: Facts
    created_at: datetime | None


@dataclass(frozen=True, slots=True)
class ScoredConversation:
    conversation_id: str
    title: str
    created_at: datetime | None
    #: The conversation's chunks of the tier, in order.
    contents: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- final writes


@dataclass(frozen=True, slots=True)
class SavedFacts:
    """The facts one saved memory (or the custom instructions) of a chunk was filed as."""

    ordinal: int
    kind: str
    said_at: datetime | None
    facts: Facts


@dataclass(slots=True)
class ReplaceChunks:
    """Replace the import's chunks, and their saved facts, with ``rows`` (streamed into COPY).

    ``rows`` is consumed in a worker thread (it may parse a large export);
    ``progress`` is awaited after each batch.
    """

    user_id: UUID
    rows: Iterator[tuple[Chunk, Sequence[SavedFacts]]]
    progress: Callable[[], Awaitable[None]] | None = None
    written: int = 0


@dataclass(slots=True)
class StageExistingChunks:
    """A backfill's chunks: the user's published ones, staged as they are."""

    user_id: UUID
    #: Filled in when applied.
    chunks: int = 0
    conversations: int = 0
    tiers: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class PublishMemory:
    """MEMORY, published when the memory stage has it."""

    user_id: UUID
    memory_md: str


@dataclass(frozen=True, slots=True)
class PublishPass:
    """What a successful pass publishes, all at once: its chunks in place of the
    user's, and the v2 sections (None: a pass that built no sections)."""

    user_id: UUID
    #: Section name -> the section as the JSON object the app reads.
    sections: dict[str, str] | None
    soulprint_text: str | None
    replace_app_chunks: str = "auto"


FinalWrite = ReplaceChunks | StageExistingChunks | PublishMemory | PublishPass


@dataclass(slots=True)
class StageResult:
    """What a stage hands back to the runner."""

    #: The stage's output, or a function giving it once the final writes ran.
    output: StageOutput | Callable[[], StageOutput]
    #: Applied in the transaction that completes the stage.
    writes: Sequence[FinalWrite] = ()
    #: Later stages this one decided to skip, with the reason for each.
    skip: dict[str, str] = field(default_factory=dict)
    #: Best-effort work after that transaction (e.g. the completion callback).
    after_commit: Callable[[], Awaitable[None]] | None = None
    #: Not finished: save ``output`` and run this stage again in that many seconds.
    reschedule_in: float | None = None

    def final_output(self) -> StageOutput:
        return self.output() if callable(self.output) else self.output


# --------------------------------------------------------------------------- stage store


class StageStore(Protocol):
    """What a stage may read and write, fenced by its claim."""

    async def ensure_current(self) -> None:
        """Raise :class:`StaleJob` when the job no longer owns the stage."""

    async def report_progress(self, done: int, total: int | None) -> None: ...

    async def record_usage(self, usage: Usage) -> None:
        """Book what a call cost (in the import's whole spend even when stale)."""

    async def extraction_work(self, tier: str) -> tuple[list[ChunkRef], int]:
        """Chunks of ``tier`` without a current checkpoint, and how many chunks there are."""

    async def chunk_texts(self, ids: Sequence[str]) -> list[ChunkText]:
        """The chunks with these ids, in the order given (unknown ids left out)."""

    async def checkpoint_facts(
        self, rows: Sequence[FactsRow], usage: Usage, model: str, error: str | None = None
    ) -> None:
        """One call's chunks and what it cost, atomically; StaleJob if not current."""

    async def facts_summary(self) -> FactsSummary: ...

    def chunk_facts(self) -> AsyncIterator[ChunkFacts]:
        """Every usable checkpoint, oldest conversation first."""

    async def running_output(self) -> dict[str, Any]:
        """The output a parked run of this stage saved (``{}`` if none)."""

    async def sample_conversations(self, tier: str, limit: int) -> list[ScoredConversation]:
        """The most informative conversations (long, recent, fact-dense), with their text."""


# --------------------------------------------------------------------------- postgres


class Store:
    """The pipeline's database over one connection pool."""

    def __init__(self, pool: AsyncConnectionPool[Conn]) -> None:
        self.pool = pool

    def for_stage(self, fence: Fence) -> PgStageStore:
        return PgStageStore(self.pool, fence)

    # ------------------------------------------------------------------ lifecycle

    async def claim(self, import_id: UUID, generation: int, stage: str) -> Claim | None:
        """Claim ``stage`` for the job of ``generation`` (None: stale or duplicate job)."""
        params = {"import_id": import_id, "generation": generation, "stage": stage}
        async with self.pool.connection() as conn, conn.transaction():
            row = await (await conn.execute(queries.CLAIM_STAGE, params)).fetchone()
            if row is None:
                return None
            await conn.execute(
                queries.MIRROR_PROFILE,
                {"user_id": row["user_id"], "status": "processing", "error": None},
            )
        imp = ImportRow(
            id=row["id"],
            user_id=row["user_id"],
            storage_path=row["storage_path"],
            options=dict(row["options"] or {}),
            generation=row["generation"],
            source=row["source"],
        )
        fence = Fence(imp.id, imp.generation, stage, row["lease"])
        return Claim(imp, fence, int(row["attempts"]))

    async def claim_failed(
        self, import_id: UUID, generation: int, stage: str, error: str, max_attempts: int
    ) -> ClaimFailure | None:
        """Count a claim that raised as an attempt; fail the import when they are used up."""
        params = {
            "import_id": import_id,
            "generation": generation,
            "stage": stage,
            "error": error,
            "max_attempts": max_attempts,
        }
        async with self.pool.connection() as conn, conn.transaction():
            row = await (await conn.execute(queries.CLAIM_FAILED, params)).fetchone()
            if row is None:
                return None
            if row["final"]:
                await conn.execute(
                    queries.MIRROR_PROFILE,
                    {"user_id": row["user_id"], "status": "failed", "error": f"{stage}: {error}"},
                )
        return ClaimFailure(row["user_id"], bool(row["final"]), int(row["attempts"]))

    async def stage_outputs(self, import_id: UUID) -> dict[str, dict[str, Any]]:
        """``import_stages.output`` of every finished stage, by stage name."""
        async with self.pool.connection() as conn:
            rows = await (
                await conn.execute(queries.STAGE_OUTPUTS, {"import_id": import_id})
            ).fetchall()
        return {r["stage"]: dict(r["output"] or {}) for r in rows}

    async def complete(self, fence: Fence, result: StageResult) -> str | None:
        """The stage's final writes, its checkpoint and the hand-over, in one transaction.

        Returns the stage deferred next (None: the import is complete).
        """
        async with self.pool.connection() as conn, conn.transaction():
            for write in result.writes:
                await self._apply(conn, fence, write)
            await self._lock_current(conn, fence)
            final = result.final_output()
            counts = {
                "conversation_count": None,
                "chunk_count": None,
                "fact_count": None,
                **final.import_counts(),
            }
            key = {"import_id": fence.import_id, "stage": fence.stage}
            await conn.execute(
                queries.FINISH_STAGE,
                {
                    **key,
                    "status": "skipped" if isinstance(final, Skipped) else "done",
                    "output": Jsonb(final.model_dump(mode="json")),
                },
            )
            if result.skip:
                await conn.execute(
                    queries.SKIP_STAGES,
                    {"import_id": fence.import_id, "reasons": Jsonb(result.skip)},
                )
            row = await (await conn.execute(queries.NEXT_STAGE, key)).fetchone()
            next_stage: str | None = row["stage"] if row else None
            if next_stage is None:
                await conn.execute(
                    queries.COMPLETE_IMPORT, {"import_id": fence.import_id, **counts}
                )
            else:
                await conn.execute(
                    queries.ADVANCE_IMPORT,
                    {"import_id": fence.import_id, "next_stage": next_stage, **counts},
                )
                await conn.execute(
                    queries.DEFER_STAGE,
                    {
                        "import_id": fence.import_id,
                        "stage": next_stage,
                        "generation": fence.generation,
                    },
                )
        return next_stage

    async def park(self, fence: Fence, output: dict[str, Any], delay: float) -> None:
        """Save a waiting stage's state and run it again in ``delay`` seconds."""
        async with self.pool.connection() as conn, conn.transaction():
            await self._lock_current(conn, fence)
            await conn.execute(
                queries.PARK_STAGE,
                {"import_id": fence.import_id, "stage": fence.stage, "output": Jsonb(output)},
            )
            await conn.execute(
                queries.DEFER_STAGE_LATER,
                {
                    "import_id": fence.import_id,
                    "stage": fence.stage,
                    "generation": fence.generation,
                    "delay": delay,
                },
            )

    async def fail(self, fence: Fence, user_id: UUID, error: str, *, final: bool) -> bool:
        """Record a failed attempt (``final``: the import fails); False if no longer ours."""
        async with self.pool.connection() as conn, conn.transaction():
            row = await (
                await conn.execute(
                    queries.FAIL_STAGE, {**fence.params(), "error": error, "final": final}
                )
            ).fetchone()
            if row is None:
                return False
            if final:
                await conn.execute(
                    queries.MIRROR_PROFILE,
                    {"user_id": user_id, "status": "failed", "error": f"{fence.stage}: {error}"},
                )
        return True

    @staticmethod
    async def _lock_current(conn: Conn, fence: Fence) -> None:
        current = await (await conn.execute(queries.LOCK_CURRENT, fence.params())).fetchone()
        if current is None:
            raise StaleJob()  # rolls back everything written in this transaction

    async def _apply(self, conn: Conn, fence: Fence, write: FinalWrite) -> None:
        if isinstance(write, ReplaceChunks):
            await self._replace_chunks(conn, fence, write)
        elif isinstance(write, StageExistingChunks):
            await conn.execute(
                queries.STAGE_EXISTING_CHUNKS,
                {"import_id": fence.import_id, "user_id": write.user_id},
            )
            row = await (
                await conn.execute(queries.STAGED_COUNTS, {"import_id": fence.import_id})
            ).fetchone()
            assert row is not None
            write.chunks, write.conversations = int(row["chunks"]), int(row["conversations"])
            write.tiers = sorted(row["tiers"])
        elif isinstance(write, PublishMemory):
            params = {"user_id": write.user_id, "memory_md": write.memory_md}
            if (await conn.execute(queries.WRITE_MEMORY, params)).rowcount == 0:
                await conn.execute(queries.INSERT_MEMORY, params)
        else:
            await self._publish_pass(conn, fence, write)

    @staticmethod
    async def _replace_chunks(conn: Conn, fence: Fence, write: ReplaceChunks) -> None:
        import_id, user_id = fence.import_id, write.user_id
        await conn.execute(queries.DELETE_SAVED_FACTS, {"import_id": import_id})
        await conn.execute(queries.DELETE_CHUNKS, {"import_id": import_id})
        saved: list[tuple[Any, ...]] = []
        async with conn.cursor().copy(queries.COPY_CHUNKS) as copy:
            while batch := await asyncio.to_thread(_take, write.rows, COPY_BATCH):
                for chunk, chunk_saved in batch:
                    await copy.write_row(_chunk_row(chunk, import_id, user_id))
                    saved += [
                        (
                            import_id,
                            chunk.id,
                            s.ordinal,
                            user_id,
                            s.kind,
                            s.said_at,
                            s.facts.model_dump_json(),
                            s.facts.count(),
                        )
                        for s in chunk_saved
                    ]
                write.written += len(batch)
                if write.progress is not None:
                    await write.progress()
        if saved:
            async with conn.cursor().copy(queries.COPY_SAVED_FACTS) as copy:
                for row in saved:
                    await copy.write_row(row)

    @staticmethod
    async def _publish_pass(conn: Conn, fence: Fence, write: PublishPass) -> None:
        user = {"user_id": write.user_id}
        replace_app_rows = write.replace_app_chunks == "always"
        if write.replace_app_chunks == "auto":
            row = await (
                await conn.execute(
                    queries.APP_ROWS_REPLACEABLE, {**user, "import_id": fence.import_id}
                )
            ).fetchone()
            replace_app_rows = bool(row and row["replaceable"])
        await conn.execute(
            queries.DELETE_PUBLISHED_CHUNKS, {**user, "replace_app_rows": replace_app_rows}
        )
        await conn.execute(queries.PUBLISH_STAGED_CHUNKS, {"import_id": fence.import_id})
        if write.sections is None:
            await conn.execute(
                queries.MIRROR_PROFILE, {**user, "status": "complete", "error": None}
            )
            return
        params = {
            **user,
            **{f"{name}_md": write.sections.get(name) for name in SECTION_NAMES},
            "soulprint_text": write.soulprint_text,
        }
        if (await conn.execute(queries.WRITE_PROFILE, params)).rowcount == 0:
            await conn.execute(queries.INSERT_PROFILE, params)


def _take(
    rows: Iterator[tuple[Chunk, Sequence[SavedFacts]]], n: int
) -> list[tuple[Chunk, Sequence[SavedFacts]]]:
    return list(itertools.islice(rows, n))


def _chunk_row(c: Chunk, import_id: UUID, user_id: UUID) -> tuple[Any, ...]:
    # PostgreSQL text cannot hold NUL characters.
    return (
        c.id,
        user_id,
        import_id,
        c.conversation_id.replace("\x00", ""),
        c.title.replace("\x00", ""),
        c.content.replace("\x00", ""),
        c.token_count,
        c.chunk_index,
        c.total_chunks,
        c.chunk_tier,
        c.message_count,
        c.is_recent,
        c.created_at,
        c.content_hash,
    )


def _merged(facts: list[dict[str, Any]]) -> Facts:
    return Facts.of(item for raw in facts for item in Facts.model_validate(raw).items())


class PgStageStore:
    """:class:`StageStore` over PostgreSQL, bound to one claim of one stage."""

    def __init__(self, pool: AsyncConnectionPool[Conn], fence: Fence) -> None:
        self.pool = pool
        self.fence = fence

    async def _fetchall(self, sql: Any, params: dict[str, Any]) -> list[dict[str, Any]]:
        async with self.pool.connection() as conn:
            return await (await conn.execute(sql, params)).fetchall()

    async def ensure_current(self) -> None:
        if not await self._fetchall(queries.IS_CURRENT, self.fence.params()):
            raise StaleJob()

    async def report_progress(self, done: int, total: int | None) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                queries.SET_PROGRESS, {**self.fence.params(), "done": done, "total": total}
            )

    async def record_usage(self, usage: Usage) -> None:
        if not (usage.input_tokens or usage.output_tokens):
            return
        async with self.pool.connection() as conn:
            await conn.execute(
                queries.ADD_USAGE,
                {
                    **self.fence.params(),
                    "input_tokens": usage.input_tokens,
                    "output_tokens": usage.output_tokens,
                },
            )

    async def extraction_work(self, tier: str) -> tuple[list[ChunkRef], int]:
        import_id = self.fence.import_id
        chunks = await self._fetchall(
            queries.CHUNKS_FOR_EXTRACTION, {"import_id": import_id, "tier": tier}
        )
        done = {
            r["chunk_id"]: r["content_hash"]
            for r in await self._fetchall(queries.EXTRACTED_CHUNKS, {"import_id": import_id})
        }
        todo = [
            ChunkRef(r["id"], r["content_hash"])
            for r in chunks
            if done.get(r["id"]) != r["content_hash"]
        ]
        return todo, len(chunks)

    async def chunk_texts(self, ids: Sequence[str]) -> list[ChunkText]:
        rows = await self._fetchall(
            queries.CHUNKS_BY_ID, {"import_id": self.fence.import_id, "ids": list(ids)}
        )
        by_id = {r["id"]: r for r in rows}
        return [
            ChunkText(
                r["id"],
                r["conversation_id"],
                r["chunk_index"],
                r["title"],
                r["content"],
                r["content_hash"],
                r["created_at"],
                _merged(r["saved"] or []),
            )
            for r in (by_id.get(i) for i in ids)
            if r is not None
        ]

    async def checkpoint_facts(
        self, rows: Sequence[FactsRow], usage: Usage, model: str, error: str | None = None
    ) -> None:
        # The call's tokens are booked on its first chunk.
        first = {
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cache_read_tokens": usage.cache_read_tokens,
        }
        none = dict.fromkeys(first, 0)
        payload = [
            {
                "chunk_id": row.chunk_id,
                "content_hash": row.content_hash,
                "facts": row.facts.model_dump(),
                "fact_count": row.facts.count(),
                **(first if i == 0 else none),
            }
            for i, row in enumerate(rows)
        ]
        written = await self._fetchall(
            queries.CHECKPOINT_CHUNK_FACTS,
            {
                **self.fence.params(),
                "model": model,
                "error": error,
                "rows": Jsonb(payload),
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
            },
        )
        if not written or not written[0]["current"]:
            raise StaleJob()

    async def facts_summary(self) -> FactsSummary:
        (row,) = await self._fetchall(
            queries.CHUNK_FACTS_SUMMARY, {"import_id": self.fence.import_id}
        )
        return FactsSummary(
            chunks=int(row["chunks"]),
            failed=int(row["failed"]),
            facts=int(row["facts"]),
            input_tokens=int(row["input_tokens"]),
            output_tokens=int(row["output_tokens"]),
        )

    async def chunk_facts(self) -> AsyncIterator[ChunkFacts]:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                queries.CHUNK_FACTS_WITH_DATES, {"import_id": self.fence.import_id}
            )
            async for row in cursor:
                facts = Facts.model_validate(row["facts"] or {})
                yield ChunkFacts(row["chunk_id"], facts, row["created_at"])

    async def running_output(self) -> dict[str, Any]:
        rows = await self._fetchall(
            queries.RUNNING_OUTPUT,
            {"import_id": self.fence.import_id, "stage": self.fence.stage},
        )
        return dict(rows[0]["output"] or {}) if rows else {}

    async def sample_conversations(self, tier: str, limit: int) -> list[ScoredConversation]:
        import_id = self.fence.import_id
        ranked = await self._fetchall(
            queries.CONVERSATION_SCORES, {"import_id": import_id, "tier": tier, "limit": limit}
        )
        if not ranked:
            return []
        ids = [r["conversation_id"] for r in ranked]
        texts: dict[str, list[str]] = {}
        for row in await self._fetchall(
            queries.CONVERSATION_TEXT,
            {"import_id": import_id, "tier": tier, "conversation_ids": ids},
        ):
            texts.setdefault(row["conversation_id"], []).append(row["content"])
        return [
            ScoredConversation(
                r["conversation_id"],
                r["title"] or "",
                r["created_at"],
                texts.get(r["conversation_id"], []),
            )
            for r in ranked
        ]
