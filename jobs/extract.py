"""Stage ``extract`` (map): facts from every chunk, one checkpoint row per chunk.

Each finished chunk's facts are committed to ``chunk_facts`` as they arrive
(with their token usage, in one transaction), so a worker killed mid-map
resumes where it stopped and never pays twice for a chunk. A chunk whose answer
stays unusable is recorded with its error and contributes no facts; a service
that keeps failing (rate limits, overload) fails the *attempt* instead, and
the retry resumes from the checkpoints.

With ``FULLPASS_BATCH=1`` (and a provider that supports it) the chunks are
first sent as Message Batches at half price: the stage submits them, records
the batch ids in its checkpoint row and parks itself (re-checked every
``FULLPASS_BATCH_POLL_SECONDS`` without holding a worker slot); once the
batches end, their results are checkpointed like online ones and whatever
they did not answer is extracted online.

Only the user's words are sent in full: assistant turns are cut to a short
excerpt that gives the user's replies their context, which is most of the
saving over sending chunks whole.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from jobs.context import StageContext, StageResult, StaleJob
from jobs.errors import TransientError
from worker import queries
from worker.llm.base import (
    BatchProvider,
    ExtractionInput,
    Facts,
    LLMError,
    LLMResult,
    Usage,
)
from worker.redact import error_text

logger = logging.getLogger("fullpass.extract")

ASSISTANT_CONTEXT_CHARS = 240
MAX_MESSAGE_CHARS = 5000
CHECK_CURRENT_EVERY = 25  # chunks

_SPEAKER = re.compile(r"^(User|Assistant|Saved memory|Custom instructions)(?: \(continued\))?:\s?")
PAGE = 200  # chunk contents read per query
BATCH_SIZE = 10_000  # requests per Message Batch


@dataclass(frozen=True, slots=True)
class _Todo:
    chunk_id: str
    conversation_id: str
    title: str
    content: str
    content_hash: str
    created_at: datetime | None


def condense_transcript(
    content: str,
    *,
    assistant_chars: int = ASSISTANT_CONTEXT_CHARS,
    max_message_chars: int = MAX_MESSAGE_CHARS,
) -> str:
    """Keep user turns (capped per message), trim assistant turns to an excerpt.

    Returns "" when the chunk holds no user text at all: nothing to extract.
    """
    out: list[str] = []
    speaker = ""
    budget = 0
    has_user = False
    for line in content.splitlines():
        m = _SPEAKER.match(line)
        if m:
            speaker = m.group(1)
            budget = assistant_chars if speaker == "Assistant" else max_message_chars
        if speaker == "Assistant":
            if budget <= 0:
                continue
            piece = line[:budget]
            budget -= len(line)
            out.append(piece + ("…" if budget < 0 else ""))
        else:
            if budget <= 0:
                continue
            piece = line[:budget]
            budget -= len(line) + 1
            if piece.strip() and speaker:
                has_user = True
            out.append(piece)
    return "\n".join(out).strip() if has_user else ""


async def extract(ctx: StageContext) -> StageResult:
    tier = _extraction_tier(ctx)
    todo, total = await _work_list(ctx, tier)
    state = _MapState(completed=total - len(todo))
    await ctx.report_progress(state.completed, total)
    batch_summary: dict[str, Any] | None = None

    if _batch_mode(ctx) and todo:
        parked, batch_summary = await _batch_phase(ctx, todo, state)
        if parked is not None:
            return parked
        todo, total = await _work_list(ctx, tier)
    elif ctx.settings.batch and not isinstance(ctx.llm, BatchProvider):
        logger.warning(
            "FULLPASS_BATCH is set but provider %s has no batch API: extracting online",
            ctx.llm.model,
            extra={"import_id": str(ctx.imp.id), "stage": ctx.stage},
        )

    await _online(ctx, todo, state, total)
    if state.transient_failures:
        # Finished chunks are checkpointed; the stage's retry resumes with the rest.
        raise TransientError(
            f"{state.transient_failures} of {len(todo)} chunks could not be extracted "
            f"because the model service kept failing (last: {state.last_transient})"
        )

    async with ctx.pool.connection() as conn:
        summary = await (
            await conn.execute(queries.CHUNK_FACTS_SUMMARY, {"import_id": ctx.imp.id})
        ).fetchone()
    assert summary is not None
    output: dict[str, Any] = {
        "tier": tier,
        "chunks": total,
        "extracted_now": state.extracted,
        "skipped_no_user_text": state.skipped,
        "failed_chunks": int(summary["failed"]),
        "facts": int(summary["facts"]),
        "input_tokens": int(summary["input_tokens"]),
        "output_tokens": int(summary["output_tokens"]),
        "model": ctx.llm.model,
    }
    if batch_summary is not None:
        output["batch"] = batch_summary
    return StageResult(output=output)


@dataclass(slots=True)
class _MapState:
    completed: int = 0
    extracted: int = 0
    skipped: int = 0
    transient_failures: int = 0
    last_transient: str = ""


async def _work_list(ctx: StageContext, tier: str) -> tuple[list[tuple[str, str]], int]:
    """(chunk id, content hash) of every chunk without a current checkpoint, and the total."""
    async with ctx.pool.connection() as conn:
        chunks = await (
            await conn.execute(
                queries.CHUNKS_FOR_EXTRACTION, {"import_id": ctx.imp.id, "tier": tier}
            )
        ).fetchall()
        done_rows = await (
            await conn.execute(queries.EXTRACTED_CHUNKS, {"import_id": ctx.imp.id})
        ).fetchall()
    done = {r["chunk_id"]: r["content_hash"] for r in done_rows}
    todo = [(r["id"], r["content_hash"]) for r in chunks if done.get(r["id"]) != r["content_hash"]]
    return todo, len(chunks)


async def _pages(ctx: StageContext, todo: list[tuple[str, str]]) -> AsyncIterator[list[_Todo]]:
    """The work list's chunk contents, a page at a time (memory stays flat)."""
    for i in range(0, len(todo), PAGE):
        ids = [chunk_id for chunk_id, _ in todo[i : i + PAGE]]
        async with ctx.pool.connection() as conn:
            rows = await (
                await conn.execute(queries.CHUNKS_BY_ID, {"import_id": ctx.imp.id, "ids": ids})
            ).fetchall()
        by_id = {r["id"]: r for r in rows}
        yield [
            _Todo(
                r["id"],
                r["conversation_id"],
                r["title"],
                r["content"],
                r["content_hash"],
                r["created_at"],
            )
            for r in (by_id.get(chunk_id) for chunk_id in ids)
            if r is not None
        ]


def _input(item: _Todo, transcript: str) -> ExtractionInput:
    return ExtractionInput(
        chunk_id=item.chunk_id,
        conversation_id=item.conversation_id,
        title=item.title,
        transcript=transcript,
        conversation_date=item.created_at.date() if item.created_at else None,
    )


async def _online(
    ctx: StageContext, todo: list[tuple[str, str]], state: _MapState, total: int
) -> None:
    """Extract ``todo`` with at most ``concurrency`` calls in flight, checkpointing each."""
    limit = max(1, int(ctx.option("concurrency", ctx.settings.concurrency)))
    queue: asyncio.Queue[_Todo | None] = asyncio.Queue(maxsize=limit * 2)

    async def produce() -> None:
        async for page in _pages(ctx, todo):
            for item in page:
                await queue.put(item)
        for _ in range(limit):
            await queue.put(None)

    async def consume() -> None:
        while (item := await queue.get()) is not None:
            await _extract_one(ctx, item, state)
            state.completed += 1
            if state.completed % CHECK_CURRENT_EVERY == 0:
                await ctx.ensure_current()
                await ctx.report_progress(state.completed, total)

    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(produce())
            for _ in range(limit):
                group.create_task(consume())
    except ExceptionGroup as eg:
        raise eg.exceptions[0] from None  # the first cause, not the group wrapper
    await ctx.report_progress(state.completed, total)


async def _extract_one(ctx: StageContext, item: _Todo, state: _MapState) -> None:
    transcript = condense_transcript(item.content)
    if not transcript:
        state.skipped += 1
        await _checkpoint(
            ctx, item.chunk_id, item.content_hash, LLMResult(Facts(), Usage(), NO_CALL)
        )
        return
    try:
        result = await ctx.llm.extract_facts(_input(item, transcript))
    except LLMError as exc:
        if exc.transient:
            state.transient_failures += 1
            state.last_transient = error_text(exc)
            await ctx.record_usage(exc.usage)
            return  # not checkpointed: the stage's retry tries this chunk again
        await _checkpoint(
            ctx,
            item.chunk_id,
            item.content_hash,
            LLMResult(Facts(), exc.usage, ctx.llm.model),
            error=error_text(exc),
        )
        return
    state.extracted += 1
    await _checkpoint(ctx, item.chunk_id, item.content_hash, result)


#: Recorded as the model of chunks that needed no call.
NO_CALL = "none: no user text"


async def _checkpoint(
    ctx: StageContext,
    chunk_id: str,
    content_hash: str,
    result: LLMResult[Facts],
    *,
    error: str | None = None,
) -> None:
    """One chunk's facts and token usage, committed together (fenced by generation)."""
    usage = result.usage
    async with ctx.pool.connection() as conn, conn.transaction():
        written = await conn.execute(
            queries.INSERT_CHUNK_FACTS,
            {
                "import_id": ctx.imp.id,
                "generation": ctx.imp.generation,
                "chunk_id": chunk_id,
                "content_hash": content_hash,
                "facts": Jsonb(result.value.model_dump()),
                "model": result.model or ctx.llm.model,
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "cache_read_tokens": usage.cache_read_tokens,
                "error": error,
            },
        )
        if written.rowcount == 0:
            raise StaleJob()
        if usage.input_tokens or usage.output_tokens:
            await conn.execute(
                queries.ADD_USAGE,
                {
                    "import_id": ctx.imp.id,
                    "stage": ctx.stage,
                    "input_tokens": usage.input_tokens,
                    "output_tokens": usage.output_tokens,
                },
            )


# --- batch mode -----------------------------------------------------------


def _batch_mode(ctx: StageContext) -> bool:
    wanted = bool(ctx.option("batch", ctx.settings.batch))
    return wanted and isinstance(ctx.llm, BatchProvider)


async def _batch_phase(
    ctx: StageContext, todo: list[tuple[str, str]], state: _MapState
) -> tuple[StageResult | None, dict[str, Any] | None]:
    """Submit, wait for, or collect the import's Message Batches.

    Returns a parked StageResult while batches are running; ``(None, summary)``
    once their results are checkpointed (the rest then goes online).
    """
    assert isinstance(ctx.llm, BatchProvider)
    llm: BatchProvider = ctx.llm
    poll = float(ctx.option("batch_poll_seconds", ctx.settings.batch_poll_seconds))
    async with ctx.pool.connection() as conn:
        row = await (
            await conn.execute(
                queries.RUNNING_OUTPUT, {"import_id": ctx.imp.id, "stage": ctx.stage}
            )
        ).fetchone()
    batch: dict[str, Any] | None = (row["output"] if row else {}).get("batch")
    if batch is None or batch.get("collected"):
        if batch is not None:
            return None, batch
        ids: list[str] = []
        submitted = 0
        items: list[ExtractionInput] = []
        hashes: dict[str, str] = {}
        async for page in _pages(ctx, todo):
            for item in page:
                transcript = condense_transcript(item.content)
                if not transcript:
                    state.skipped += 1
                    await _checkpoint(
                        ctx, item.chunk_id, item.content_hash, LLMResult(Facts(), Usage(), NO_CALL)
                    )
                    continue
                items.append(_input(item, transcript))
                hashes[item.chunk_id] = item.content_hash
                if len(items) >= BATCH_SIZE:
                    ids.append(await llm.submit_batch(items))
                    submitted += len(items)
                    items = []
        if items:
            ids.append(await llm.submit_batch(items))
            submitted += len(items)
        if not ids:
            return None, None
        batch = {"ids": ids, "submitted": submitted, "hashes": hashes, "polls": 0}
        logger.info(
            "submitted %s chunks in %s batch(es)",
            submitted,
            len(ids),
            extra={"import_id": str(ctx.imp.id), "stage": ctx.stage},
        )
        return StageResult(output={"batch": batch}, reschedule_in=poll), None

    statuses = [await llm.batch_status(batch_id) for batch_id in batch["ids"]]
    if any(status != "ended" for status in statuses):
        batch["polls"] = int(batch.get("polls", 0)) + 1
        return StageResult(output={"batch": batch}, reschedule_in=poll), None

    hashes = batch.get("hashes", {})
    # Chunks checkpointed by an earlier, interrupted collection are not paid twice.
    pending = {chunk_id for chunk_id, _ in todo}
    succeeded = failed = 0
    for batch_id in batch["ids"]:
        async for chunk_id, outcome in llm.batch_results(batch_id):
            if chunk_id not in hashes or chunk_id not in pending:
                continue
            if isinstance(outcome, LLMError):
                failed += 1  # left without a checkpoint: extracted online next
                await ctx.record_usage(outcome.usage)
                continue
            succeeded += 1
            state.extracted += 1
            await _checkpoint(ctx, chunk_id, hashes[chunk_id], outcome)
        await ctx.ensure_current()
    summary = {
        "ids": batch["ids"],
        "submitted": batch["submitted"],
        "succeeded": succeeded,
        "retried_online": failed,
        "polls": batch.get("polls", 0),
        "collected": True,
    }
    logger.info(
        "collected batch results: %s succeeded, %s to retry online",
        succeeded,
        failed,
        extra={"import_id": str(ctx.imp.id), "stage": ctx.stage},
    )
    return None, summary


def _extraction_tier(ctx: StageContext) -> str:
    tiers = ctx.outputs.get("chunk", {}).get("tiers") or ["medium"]
    return "medium" if "medium" in tiers else str(tiers[0])
