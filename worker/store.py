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
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple, Protocol
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
from worker.redact import error_text

COPY_BATCH = 512

logger = logging.getLogger("fullpass.store")


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
    #: The lane of a fanned-out stage this claim runs (None: the stage itself).
    lane: int | None = None


@dataclass(frozen=True, slots=True)
class Page:
    """A page of a fanned-out stage's work list."""

    number: int
    chunk_ids: list[str]
    #: How many times a lane took this page (this time included).
    attempts: int


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
    #: Chunks whose facts came from an earlier import of the user's.
    reused: int = 0


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


class StagedChunk(NamedTuple):
    """A chunk as COPY writes it to ``import_chunks``, with the saved facts filed
    with it: plain values, made where the export is read (a child process)."""

    id: str
    #: The columns after id, user_id and import_id (see ``COPY_CHUNKS``).
    values: tuple[Any, ...]
    #: (ordinal, kind, said_at, facts as JSON, fact count) per saved memory.
    saved: tuple[tuple[Any, ...], ...]

    @classmethod
    def of(cls, c: Chunk, saved: Sequence[SavedFacts]) -> StagedChunk:
        # PostgreSQL text cannot hold NUL characters.
        values = (
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
        facts = tuple(
            (s.ordinal, s.kind, s.said_at, s.facts.model_dump_json(), s.facts.count())
            for s in saved
        )
        return cls(c.id, values, facts)


@dataclass(slots=True)
class ReplaceChunks:
    """Replace the import's chunks, and their saved facts, with ``rows`` (streamed into COPY).

    ``rows`` is consumed in a worker thread (it may wait on a parser);
    ``progress`` is awaited after each batch; ``close`` is called once the
    write ends, however it ends (it stops the parser).
    """

    user_id: UUID
    rows: Iterator[StagedChunk]
    progress: Callable[[], Awaitable[None]] | None = None
    close: Callable[[], None] | None = None
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
    #: Not finished: save ``output`` and run this stage again in that many seconds.
    reschedule_in: float | None = None
    #: Not finished: spread this work list (chunk ids, page by page) over lanes;
    #: the stage runs again once every page is done.
    fan_out: Sequence[Sequence[str]] | None = None

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
        self,
        rows: Sequence[FactsRow],
        usage: Usage,
        model: str,
        error: str | None = None,
        *,
        requested_model: str | None = None,
        prompt_version: str | None = None,
    ) -> None:
        """One call's chunks and what it cost, atomically; StaleJob if not current.

        ``model`` answered; ``requested_model`` was asked, with the extraction
        prompt of ``prompt_version`` (what a later import may reuse them by).
        """

    async def reuse_facts(
        self, model: str, prompt_version: str, *, tier: str | None, ids: Sequence[str] | None
    ) -> int:
        """Copy the user's earlier facts of identical chunks (see REUSE_CHUNK_FACTS).

        The work list: the import's chunks of ``tier`` or those of ``ids``.
        Returns how many chunks got facts; StaleJob if not current.
        """

    async def facts_summary(self) -> FactsSummary: ...

    def chunk_facts(self) -> AsyncIterator[ChunkFacts]:
        """Every usable checkpoint, oldest conversation first."""

    async def running_output(self) -> dict[str, Any]:
        """The output a parked run of this stage saved (``{}`` if none)."""

    async def sample_conversations(self, tier: str, limit: int) -> list[ScoredConversation]:
        """The most informative conversations (long, recent, fact-dense), with their text."""

    async def extraction_todo(self, ids: Sequence[str]) -> list[ChunkRef]:
        """Those of ``ids`` without a current checkpoint (a page's share of the work list)."""

    async def lanes_stats(self) -> dict[str, int]:
        """What the stage's lanes did, summed (empty when it did not fan out)."""

    async def embedding_column(self) -> bool:
        """Whether staged chunks can hold an embedding (pgvector is installed)."""

    async def embedding_work(self, model: str) -> tuple[list[str], int]:
        """Chunks without an embedding of ``model``, and how many chunks there are."""

    async def embedding_todo(self, ids: Sequence[str], model: str) -> list[str]:
        """Those of ``ids`` without an embedding of ``model``, in order."""

    async def embedding_texts(self, ids: Sequence[str]) -> list[tuple[str, str]]:
        """``(id, text to embed)`` of these chunks, in the order given."""

    async def store_embeddings(
        self, ids: Sequence[str], vectors: Sequence[Sequence[float]], model: str, tokens: int
    ) -> None:
        """One batch's vectors and what it cost, atomically; StaleJob if not current."""

    async def set_embedding_status(self, status: str | None) -> None:
        """``user_profiles.embedding_status`` of the import's user."""


class PageSource(Protocol):
    """The pages a lane works through (see :meth:`Store.pages`)."""

    #: What the lane's run did (calls, chunks...), kept with the lane.
    stats: dict[str, int]

    async def next(self) -> Page | None:
        """The next page to work on (None: none left for this lane)."""

    async def done(self, page: Page) -> None:
        """Mark ``page`` done (StaleJob when the lane no longer holds the stage)."""

    @property
    def attempt(self) -> int:
        """The most attempts of a page this run took (for the retry policy)."""


# --------------------------------------------------------------------------- postgres


class Store:
    """The pipeline's database over one connection pool."""

    def __init__(self, pool: AsyncConnectionPool[Conn]) -> None:
        self.pool = pool

    def for_stage(self, fence: Fence, *, lane: bool = False) -> PgStageStore:
        return PgStageStore(self.pool, fence, lane=lane)

    # ------------------------------------------------------------------ lifecycle

    async def claim(
        self, import_id: UUID, generation: int, stage: str, *, model: str | None = None
    ) -> Claim | None:
        """Claim ``stage`` for the job of ``generation`` (None: stale or duplicate job).

        ``model``: the model the stage calls, recorded on its row.
        """
        params = {"import_id": import_id, "generation": generation, "stage": stage, "model": model}
        async with self.pool.connection() as conn:
            row = await (await conn.execute(queries.CLAIM_STAGE, params)).fetchone()
        if row is None:
            return None
        imp = _import_row(row)
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

        The stages it made ready are queued; the import completes when no
        stage is left. Returns the import's stage now (None: it is complete).
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
            model = getattr(final, "model", None)
            await conn.execute(
                queries.FINISH_STAGE,
                {
                    **key,
                    "status": "skipped" if isinstance(final, Skipped) else "done",
                    "output": Jsonb(final.model_dump(mode="json")),
                    "model": model if isinstance(model, str) else None,
                    "set_cost": final.books_cost,
                    "cost_usd": getattr(final, "cost_usd", None),
                },
            )
            if result.skip:
                await conn.execute(
                    queries.SKIP_STAGES,
                    {"import_id": fence.import_id, "reasons": Jsonb(result.skip)},
                )
            await conn.execute(queries.SET_COUNTS, {"import_id": fence.import_id, **counts})
            row = await (
                await conn.execute(
                    queries.ADVANCE_IMPORT,
                    {"import_id": fence.import_id, "generation": fence.generation},
                )
            ).fetchone()
        stage: str | None = row["stage"] if row else None
        if stage is None and any(isinstance(w, PublishPass) for w in result.writes):
            await self._drop_published_staging(fence)
        return stage

    async def _drop_published_staging(self, fence: Fence) -> None:
        """Drop the staged chunks of a pass just published, outside its transaction
        (the app need not wait for it); the housekeeping drops what this misses."""
        try:
            async with self.pool.connection() as conn:
                await conn.execute(
                    queries.DROP_PUBLISHED_STAGING,
                    {"import_id": fence.import_id, "generation": fence.generation},
                )
        except Exception as exc:
            logger.warning(
                "staged chunks of the published pass not dropped (the housekeeping will): %s",
                error_text(exc),
                extra={"import_id": str(fence.import_id), "stage": fence.stage},
            )

    async def fan_out(
        self, fence: Fence, pages: Sequence[Sequence[str]], lanes: int, output: StageOutput
    ) -> None:
        """Split the stage's work list into ``pages`` and queue ``lanes`` lanes for them.

        The stage stays running (its claim gives its attempt back); the last
        lane out queues it again.
        """
        key = {"import_id": fence.import_id, "stage": fence.stage}
        async with self.pool.connection() as conn, conn.transaction():
            await self._lock_current(conn, fence)
            await conn.execute(queries.DELETE_PAGES, key)
            await conn.execute(
                queries.INSERT_PAGES, {**key, "pages": Jsonb([list(p) for p in pages])}
            )
            await conn.execute(queries.INSERT_LANES, {**key, "lanes": lanes})
            await conn.execute(
                queries.FANNED_OUT,
                {
                    **key,
                    "output": Jsonb(output.model_dump(mode="json")),
                    "total": getattr(output, "total", None),
                    "done": getattr(output, "done", 0),
                },
            )
            await conn.execute(
                queries.DEFER_LANES, {**key, "generation": fence.generation, "lanes": lanes}
            )

    async def claim_lane(
        self, import_id: UUID, generation: int, stage: str, lane: int
    ) -> Claim | None:
        """A run of ``lane``: a new lease (None: the stage no longer runs fanned out)."""
        params = {"import_id": import_id, "generation": generation, "stage": stage, "lane": lane}
        async with self.pool.connection() as conn:
            row = await (await conn.execute(queries.CLAIM_LANE, params)).fetchone()
        if row is None:
            return None
        imp = _import_row(row)
        return Claim(imp, Fence(imp.id, imp.generation, stage, row["lease"]), row["attempts"], lane)

    def pages(self, claim: Claim) -> PgPageSource:
        assert claim.lane is not None
        return PgPageSource(self.pool, claim.fence, claim.lane)

    async def lane_finished(self, claim: Claim, stats: dict[str, int]) -> bool:
        """The lane found no page left; True when it was the last (the stage is queued)."""
        fence = claim.fence
        params = {**fence.params(), "lane": claim.lane, "stats": Jsonb(stats), "finished": True}
        async with self.pool.connection() as conn, conn.transaction():
            if not await self._is_current(conn, fence, lock=True):
                return False  # another lane finished the stage, or the import moved on
            lane = await (await conn.execute(queries.LANE_STATS, params)).fetchone()
            if lane is None or lane["closed"]:
                return False  # closed by the last lane out: the stage is queued already
            row = await (await conn.execute(queries.OPEN_PAGES, fence.params())).fetchone()
            if row is None or row["n"]:
                return False  # pages still running in other lanes: the last of them queues
            await conn.execute(queries.REQUEUE_FANNED_OUT, fence.params())
        return True

    async def lane_stopped(self, claim: Claim, stats: dict[str, int]) -> None:
        """Keep what a lane's run did when it stops early (a failure, a retry)."""
        params = {**claim.fence.params(), "lane": claim.lane, "stats": Jsonb(stats)}
        async with self.pool.connection() as conn:
            await conn.execute(queries.LANE_STATS, {**params, "finished": False})

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

    async def fail(
        self,
        fence: Fence,
        user_id: UUID,
        error: str,
        *,
        final: bool,
        lane: bool = False,
        job_id: int | None = None,
    ) -> bool:
        """Record a failed attempt (``final``: the import fails); False if no longer ours.

        A final failure also stops the import's other jobs (all but ``job_id``).
        """
        params = {**fence.params(), "error": error, "final": final, "lane": lane}
        async with self.pool.connection() as conn, conn.transaction():
            row = await (await conn.execute(queries.FAIL_STAGE, params)).fetchone()
            if row is None:
                return False
            if final:
                await conn.execute(
                    queries.MIRROR_PROFILE,
                    {"user_id": user_id, "status": "failed", "error": f"{fence.stage}: {error}"},
                )
                await conn.execute(
                    queries.STOP_OTHER_JOBS, {"import_id": fence.import_id, "job_id": job_id}
                )
        return True

    # ------------------------------------------------------------------ rate budget

    async def rate_draw(
        self, name: str, rpm: int | None, itpm: int | None, tokens: int, burst: float
    ) -> tuple[float, float]:
        """Take one call from the fleet's budget: (seconds to wait, seconds paused)."""
        params = {"name": name, "rpm": rpm, "itpm": itpm, "tokens": tokens, "burst": burst}
        async with self.pool.connection() as conn:
            row = await (await conn.execute(queries.RATE_DRAW, params)).fetchone()
        assert row is not None
        return float(row["wait_seconds"]), float(row["paused_seconds"])

    async def rate_observe(
        self,
        name: str,
        rpm: int | None,
        itpm: int | None,
        burst: float,
        *,
        requests_left: int | None,
        tokens_left: int | None,
        refund: int,
    ) -> None:
        params = {
            "name": name,
            "rpm": rpm,
            "itpm": itpm,
            "burst": burst,
            "requests_left": requests_left,
            "tokens_left": tokens_left,
            "refund": refund,
        }
        async with self.pool.connection() as conn:
            await conn.execute(queries.RATE_OBSERVE, params)

    async def rate_pause(self, name: str, seconds: float) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(queries.RATE_PAUSE, {"name": name, "seconds": seconds})

    @staticmethod
    async def _is_current(conn: Conn, fence: Fence, *, lock: bool = False) -> bool:
        """Whether ``fence`` still holds its stage (``lock``: lock the import first)."""
        if lock:
            await conn.execute(queries.LOCK_IMPORT, {"import_id": fence.import_id})
        row = await (await conn.execute(queries.IS_CURRENT, fence.params())).fetchone()
        return bool(row and row["current"])

    @classmethod
    async def _lock_current(cls, conn: Conn, fence: Fence) -> None:
        if not await cls._is_current(conn, fence, lock=True):
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
        try:
            async with conn.cursor().copy(queries.COPY_CHUNKS) as copy:
                while batch := await asyncio.to_thread(_take, write.rows, COPY_BATCH):
                    for chunk in batch:
                        await copy.write_row((chunk.id, user_id, import_id, *chunk.values))
                        saved += [
                            (import_id, chunk.id, ordinal, user_id, kind, said_at, facts, count)
                            for ordinal, kind, said_at, facts, count in chunk.saved
                        ]
                    write.written += len(batch)
                    if write.progress is not None:
                        await write.progress()
        finally:
            if write.close is not None:
                write.close()
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
        await conn.execute(queries.EMBEDDINGS_PUBLISHED, {**user, "import_id": fence.import_id})
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


def _import_row(row: dict[str, Any]) -> ImportRow:
    return ImportRow(
        id=row["id"],
        user_id=row["user_id"],
        storage_path=row["storage_path"],
        options=dict(row["options"] or {}),
        generation=row["generation"],
        source=row["source"],
    )


def _take(rows: Iterator[StagedChunk], n: int) -> list[StagedChunk]:
    return list(itertools.islice(rows, n))


def _merged(facts: list[dict[str, Any]]) -> Facts:
    return Facts.of(item for raw in facts for item in Facts.model_validate(raw).items())


class PgStageStore:
    """:class:`StageStore` over PostgreSQL, bound to one claim of one stage.

    A lane's store (``lane``) reports progress as what it adds to the stage's.
    """

    def __init__(
        self, pool: AsyncConnectionPool[Conn], fence: Fence, *, lane: bool = False
    ) -> None:
        self.pool = pool
        self.fence = fence
        self.lane = lane
        self._reported = 0

    async def _fetchall(self, sql: Any, params: dict[str, Any]) -> list[dict[str, Any]]:
        async with self.pool.connection() as conn:
            return await (await conn.execute(sql, params)).fetchall()

    async def ensure_current(self) -> None:
        rows = await self._fetchall(queries.IS_CURRENT, self.fence.params())
        if not (rows and rows[0]["current"]):
            raise StaleJob()

    async def report_progress(self, done: int, total: int | None) -> None:
        async with self.pool.connection() as conn:
            if not self.lane:
                await conn.execute(
                    queries.SET_PROGRESS, {**self.fence.params(), "done": done, "total": total}
                )
                return
            added, self._reported = done - self._reported, done
            if added:
                await conn.execute(queries.ADD_PROGRESS, {**self.fence.params(), "done": added})

    async def record_usage(self, usage: Usage) -> None:
        if not usage.tokens:
            return
        async with self.pool.connection() as conn:
            await conn.execute(
                queries.ADD_USAGE,
                {
                    **self.fence.params(),
                    "input_tokens": usage.input_tokens,
                    "output_tokens": usage.output_tokens,
                    "cost_usd": usage.cost_usd,
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
        self,
        rows: Sequence[FactsRow],
        usage: Usage,
        model: str,
        error: str | None = None,
        *,
        requested_model: str | None = None,
        prompt_version: str | None = None,
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
                "cost_usd": usage.cost_usd,
                "requested_model": requested_model,
                "prompt_version": prompt_version,
            },
        )
        if not written or not written[0]["current"]:
            raise StaleJob()

    async def reuse_facts(
        self, model: str, prompt_version: str, *, tier: str | None, ids: Sequence[str] | None
    ) -> int:
        (row,) = await self._fetchall(
            queries.REUSE_CHUNK_FACTS,
            {
                **self.fence.params(),
                "model": model,
                "prompt_version": prompt_version,
                "tier": tier,
                "ids": list(ids) if ids is not None else None,
            },
        )
        if not row["current"]:
            raise StaleJob()
        return int(row["reused"])

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
            reused=int(row["reused"]),
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

    async def extraction_todo(self, ids: Sequence[str]) -> list[ChunkRef]:
        rows = await self._fetchall(
            queries.EXTRACTION_LEFT, {"import_id": self.fence.import_id, "ids": list(ids)}
        )
        return [ChunkRef(r["id"], r["content_hash"]) for r in rows]

    async def lanes_stats(self) -> dict[str, int]:
        rows = await self._fetchall(
            queries.LANES_STATS, {"import_id": self.fence.import_id, "stage": self.fence.stage}
        )
        return {r["key"]: int(r["value"]) for r in rows}

    async def embedding_column(self) -> bool:
        return bool(await self._fetchall(queries.STAGED_EMBEDDING_COLUMN, {}))

    async def embedding_work(self, model: str) -> tuple[list[str], int]:
        rows = await self._fetchall(
            queries.EMBEDDING_WORK, {"import_id": self.fence.import_id, "model": model}
        )
        return [r["id"] for r in rows if r["todo"]], len(rows)

    async def embedding_todo(self, ids: Sequence[str], model: str) -> list[str]:
        rows = await self._fetchall(
            queries.EMBEDDING_LEFT,
            {"import_id": self.fence.import_id, "ids": list(ids), "model": model},
        )
        return [r["id"] for r in rows]

    async def embedding_texts(self, ids: Sequence[str]) -> list[tuple[str, str]]:
        rows = await self._fetchall(
            queries.EMBEDDING_TEXTS, {"import_id": self.fence.import_id, "ids": list(ids)}
        )
        by_id = {r["id"]: r["text"] for r in rows}
        return [(i, by_id[i]) for i in ids if i in by_id]

    async def store_embeddings(
        self, ids: Sequence[str], vectors: Sequence[Sequence[float]], model: str, tokens: int
    ) -> None:
        (row,) = await self._fetchall(
            queries.STORE_EMBEDDINGS,
            {
                **self.fence.params(),
                "ids": list(ids),
                "vectors": [_vector_text(v) for v in vectors],
                "model": model,
                "tokens": tokens,
            },
        )
        if not row["current"]:
            raise StaleJob()

    async def set_embedding_status(self, status: str | None) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                queries.SET_EMBEDDING_STATUS,
                {"import_id": self.fence.import_id, "status": status},
            )


#: pgvector's text form of a vector of each size seen, as one %-format template.
_VECTOR_TEMPLATES: dict[int, str] = {}


def _vector_text(vector: Sequence[float]) -> str:
    """pgvector's text form of a vector.

    pgvector stores float32, whose every bit nine significant digits carry
    (``%.9g``); one format of a cached template takes a third of the time of
    ``repr`` float by float, and the text is a third shorter (a batch of 256
    vectors of 1,536 floats is 5 MB of it, not 8).
    """
    template = _VECTOR_TEMPLATES.get(len(vector))
    if template is None:
        template = "[" + ",".join(["%.9g"] * len(vector)) + "]"
        _VECTOR_TEMPLATES[len(vector)] = template
    return template % tuple(vector)


class PgPageSource:
    """The pages of a fanned-out stage, taken one at a time by one run of a lane.

    Taking a page also prepares its chunks' full-text entries
    (PREPARE_SEARCH_TEXT), on a connection of its own while the stage works
    on the page (its model calls, mostly waiting): publishing then copies
    them instead of computing them all at the end. It is an optimisation
    only: a page whose preparation failed or never ran has its entries
    computed at publish, so a failure is logged and nothing else.
    """

    def __init__(self, pool: AsyncConnectionPool[Conn], fence: Fence, lane: int) -> None:
        self.pool = pool
        self.fence = fence
        self.lane = lane
        self.stats: dict[str, int] = {}
        self._attempt = 0
        self._preparing: dict[int, asyncio.Task[None]] = {}

    @property
    def attempt(self) -> int:
        return self._attempt

    async def next(self) -> Page | None:
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute(queries.NEXT_PAGE, {**self.fence.params(), "lane": self.lane})
            ).fetchone()
        if row is None:
            return None
        self._attempt = max(self._attempt, int(row["attempts"]))
        page = Page(int(row["page"]), list(row["chunk_ids"]), int(row["attempts"]))
        self._preparing[page.number] = asyncio.create_task(
            self._prepare_search_text(page), name=f"fullpass-search-text-{page.number}"
        )
        return page

    async def _prepare_search_text(self, page: Page) -> None:
        params = {"import_id": self.fence.import_id, "ids": page.chunk_ids}
        try:
            async with self.pool.connection() as conn:
                await conn.execute(queries.PREPARE_SEARCH_TEXT, params)
        except Exception as exc:  # the publish computes what is missing
            logger.warning(
                "full-text entries of page %s not prepared (publish computes them): %s",
                page.number,
                exc,
                extra={"import_id": str(self.fence.import_id), "stage": self.fence.stage},
            )

    async def done(self, page: Page) -> None:
        preparing = self._preparing.pop(page.number, None)
        if preparing is not None:
            await preparing
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute(
                    queries.PAGE_DONE,
                    {**self.fence.params(), "lane": self.lane, "page": page.number},
                )
            ).fetchone()
        if row is None:
            raise StaleJob()
