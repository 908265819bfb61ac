"""Stage ``chunk``: parse the export and replace the import's chunks.

Parsing and chunking run in a process of their own
(:mod:`jobs.ingest.isolated`: the worker's interpreter stays free for its
other jobs, and the parse runs on another core while the rows before it are
written) and stream straight into ``COPY``, inside the transaction that also
deletes the import's previous chunks and completes the stage: a crash
mid-write leaves the old set or the new one, never a mix. Memory stays flat:
one conversation at a time is parsed, a few batches of rows are in flight.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from uuid import UUID

from jobs.context import ReplaceChunks, StageContext, StageExistingChunks, StageResult
from jobs.domain import rules
from jobs.domain.facts import Facts
from jobs.download import local_export
from jobs.ingest import isolated
from jobs.ingest.chunker import TIER_TOKENS, ChunkConfig, chunk_conversation, extraction_tier
from jobs.ingest.model import Chunk
from jobs.ingest.reader import Limits, ReadStats, read_export
from jobs.outputs import ChunkOutput
from worker.errors import BadInput
from worker.store import SavedFacts, StagedChunk

PROGRESS_EVERY = 2000  # conversations
#: Distinct saved memories (and custom instructions) whose facts one reader keeps,
#: each at most this long (a longer one is filed every time: the reader's memory
#: must not grow with a hostile export's texts).
SAVED_TEXTS_CACHED = 1024
SAVED_TEXT_CACHED_CHARS = 4096


def saved_facts_of(chunk: Chunk) -> list[SavedFacts]:
    """The chunk's saved memories and custom instructions, filed as facts by the rules."""
    out = []
    for ordinal, message in enumerate(chunk.saved):
        kind: Literal["memory", "instructions"] = (
            "instructions" if message.kind == "instructions" else "memory"
        )
        if len(message.text) <= SAVED_TEXT_CACHED_CHARS:
            facts = _filed(kind, message.text)
        else:
            facts = rules.saved_facts(kind, message.text)
        if facts.count():
            out.append(SavedFacts(ordinal, kind, message.time, facts))
    return out


@functools.lru_cache(maxsize=SAVED_TEXTS_CACHED)
def _filed(kind: Literal["memory", "instructions"], text: str) -> Facts:
    """One saved text's facts. An export repeats the same memories in conversation
    after conversation (every snapshot lists them all): each is filed once."""
    return rules.saved_facts(kind, text)


def chunk_config(ctx: StageContext) -> ChunkConfig:
    return ChunkConfig(
        tiers=tuple(t for t in TIER_TOKENS if t in ctx.options.chunk_tiers),
        message_chars=ctx.options.message_chars,
    )


async def chunk(ctx: StageContext) -> StageResult:
    if ctx.imp.source == "chunks":
        return _stage_existing(ctx)
    path = await local_export(ctx)
    read = ReadSpec(
        path=path,
        name=ctx.imp.storage_path or path.name,
        limits=Limits.from_settings(ctx.settings),
        config=chunk_config(ctx),
        namespace=ctx.imp.id,
        now=datetime.now(UTC),
    )
    rows = isolated.ChildStream[StagedChunk, ReadStats](staged_chunks, (read,), ReadStats())
    stats = rows.state
    reported = 0

    async def progress() -> None:
        nonlocal reported
        if stats.conversations - reported >= PROGRESS_EVERY:
            reported = stats.conversations
            await ctx.store.report_progress(stats.conversations, None)

    write = ReplaceChunks(ctx.imp.user_id, rows, progress, close=rows.close)

    def output() -> ChunkOutput:
        return ChunkOutput(
            conversations=stats.conversations,
            chunks=write.written,
            tiers=list(read.config.tiers),
            stats={**stats.as_dict(), "reader_peak_rss_kb": rows.peak_rss_kb},
        )

    return StageResult(output, writes=[write])


def start_reader() -> None:
    """Start the export reader's server (a worker does as it starts: its first
    import then does not wait for the reader's modules to load)."""
    isolated.start(staged_chunks)


@dataclass(frozen=True, slots=True)
class ReadSpec:
    """What the export reader needs (sent to its process)."""

    path: Path
    #: The upload's name as the operator knows it, for error messages.
    name: str
    limits: Limits
    config: ChunkConfig
    namespace: UUID
    now: datetime


def staged_chunks(read: ReadSpec, stats: ReadStats) -> Iterator[StagedChunk]:
    """The export's chunks as COPY rows, with their saved facts (runs in the reader's process)."""
    tier = extraction_tier(read.config.tiers)
    try:
        for conv in read_export(read.path, read.limits, stats):
            for c in chunk_conversation(
                conv, namespace=read.namespace, now=read.now, config=read.config
            ):
                yield StagedChunk.of(c, saved_facts_of(c) if c.chunk_tier == tier else [])
    except BadInput as exc:
        # Name the upload the operator knows, not this machine's scratch copy.
        raise BadInput(str(exc).replace(read.path.name, read.name)) from None


def _stage_existing(ctx: StageContext) -> StageResult:
    """A backfill: the user's chunks as they are (no export, no re-chunking)."""
    write = StageExistingChunks(ctx.imp.user_id)

    def output() -> ChunkOutput:
        if not write.chunks:
            raise BadInput("the user has no conversation chunks to build a memory from")
        return ChunkOutput(
            conversations=write.conversations,
            chunks=write.chunks,
            tiers=write.tiers,
            stats={"source": "chunks"},
        )

    return StageResult(output, writes=[write])
