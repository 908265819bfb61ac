"""Stage ``chunk``: parse the export and replace the import's chunks.

Parsing and chunking run in a worker thread (the event loop keeps serving
heartbeats) and stream straight into ``COPY``, inside the transaction that
also deletes the import's previous chunks and completes the stage: a crash
mid-write leaves the old set or the new one, never a mix. Memory stays flat:
one conversation at a time is in flight.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from jobs.context import StageContext, StageResult
from jobs.download import local_export
from jobs.errors import BadInput
from jobs.ingest.chunker import TIER_TOKENS, ChunkConfig, chunk_conversation
from jobs.ingest.model import Chunk
from jobs.ingest.reader import Limits, ReadStats, read_export
from worker import queries
from worker.db import Conn

BATCH = 512
PROGRESS_EVERY = 2000  # conversations


def chunk_config(ctx: StageContext) -> ChunkConfig:
    return ChunkConfig(tiers=tuple(t for t in TIER_TOKENS if t in ctx.options.chunk_tiers))


async def chunk(ctx: StageContext) -> StageResult:
    path = await local_export(ctx)
    limits = Limits.from_settings(ctx.settings)
    config = chunk_config(ctx)
    stats = ReadStats()
    result = StageResult()
    now = datetime.now(UTC)

    def rows() -> Iterator[tuple[Any, ...]]:
        try:
            for conv in read_export(path, limits, stats):
                for c in chunk_conversation(conv, namespace=ctx.imp.id, now=now, config=config):
                    yield _row(ctx, c)
        except BadInput as exc:
            # Name the upload the operator knows, not this machine's scratch copy.
            raise BadInput(str(exc).replace(path.name, ctx.imp.storage_path)) from None

    async def commit(conn: Conn) -> None:
        await conn.execute(queries.DELETE_CHUNKS, {"import_id": ctx.imp.id})
        produced = rows()
        n_chunks = 0
        reported = 0
        async with conn.cursor().copy(queries.COPY_CHUNKS) as copy:
            while batch := await asyncio.to_thread(_take, produced, BATCH):
                for row in batch:
                    await copy.write_row(row)
                n_chunks += len(batch)
                if stats.conversations - reported >= PROGRESS_EVERY:
                    reported = stats.conversations
                    await ctx.report_progress(stats.conversations, None)
        result.output = {**stats.as_dict(), "chunks": n_chunks, "tiers": list(config.tiers)}
        result.conversation_count = stats.conversations
        result.chunk_count = n_chunks
        await ctx.report_progress(stats.conversations, stats.conversations)

    result.commit = commit
    return result


def _take(it: Iterator[tuple[Any, ...]], n: int) -> list[tuple[Any, ...]]:
    return list(itertools.islice(it, n))


def _row(ctx: StageContext, c: Chunk) -> tuple[Any, ...]:
    # PostgreSQL text cannot hold NUL characters.
    return (
        c.id,
        ctx.imp.user_id,
        ctx.imp.id,
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
