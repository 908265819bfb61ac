"""Stage ``extract`` (map): facts from every chunk, one checkpoint row per chunk.

Each finished chunk's facts are committed to ``chunk_facts`` as they arrive
(with their token usage, in one transaction), so a worker killed mid-map
resumes where it stopped and never pays twice for a chunk. A chunk whose answer
stays unusable is recorded with its error and contributes no facts; a service
that keeps failing (rate limits, overload) fails the *attempt* instead, and
the retry resumes from the checkpoints.

Only the user's words are sent in full: assistant turns are cut to a short
excerpt that gives the user's replies their context, which is most of the
saving over sending chunks whole.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from jobs.context import StageContext, StageResult, StaleJob
from jobs.errors import TransientError
from worker import queries
from worker.llm.base import ExtractionInput, Facts, LLMError, LLMResult, Usage
from worker.redact import error_text

logger = logging.getLogger("fullpass.extract")

ASSISTANT_CONTEXT_CHARS = 240
MAX_MESSAGE_CHARS = 5000
CHECK_CURRENT_EVERY = 25  # chunks

_SPEAKER = re.compile(r"^(User|Assistant|Saved memory|Custom instructions):\s?")


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
    todo = [
        _Todo(
            r["id"],
            r["conversation_id"],
            r["title"],
            r["content"],
            r["content_hash"],
            r["created_at"],
        )
        for r in chunks
        if done.get(r["id"]) != r["content_hash"]
    ]
    total = len(chunks)
    state = _MapState(completed=total - len(todo))
    await ctx.report_progress(state.completed, total)

    limit = int(ctx.option("concurrency", ctx.settings.concurrency))
    semaphore = asyncio.Semaphore(max(1, limit))

    async def one(item: _Todo) -> None:
        async with semaphore:
            await _extract_one(ctx, item, state)
            state.completed += 1
            if state.completed % CHECK_CURRENT_EVERY == 0:
                await ctx.ensure_current()
                await ctx.report_progress(state.completed, total)

    try:
        async with asyncio.TaskGroup() as group:
            for item in todo:
                group.create_task(one(item))
    except ExceptionGroup as eg:
        raise eg.exceptions[0] from None  # the first cause, not the group wrapper
    await ctx.report_progress(state.completed, total)

    if state.transient_failures:
        # Finished chunks are checkpointed; the stage's retry resumes with the rest.
        raise TransientError(
            f"{state.transient_failures} of {len(todo)} chunks could not be extracted "
            f"because the model service kept failing (last: {state.last_transient})"
        )

    async with ctx.pool.connection() as conn:
        summary = await (
            await conn.execute(
                """
                SELECT count(*) AS chunks,
                       count(*) FILTER (WHERE error IS NOT NULL) AS failed,
                       coalesce(sum(input_tokens), 0) AS input_tokens,
                       coalesce(sum(output_tokens), 0) AS output_tokens
                  FROM public.chunk_facts WHERE import_id = %(import_id)s
                """,
                {"import_id": ctx.imp.id},
            )
        ).fetchone()
    assert summary is not None
    output: dict[str, Any] = {
        "tier": tier,
        "chunks": total,
        "extracted_now": len(todo) - state.skipped,
        "skipped_no_user_text": state.skipped,
        "failed_chunks": int(summary["failed"]),
        "facts": state.facts,
        "model": ctx.llm.model,
    }
    return StageResult(output=output)


@dataclass(slots=True)
class _MapState:
    completed: int = 0
    facts: int = 0
    skipped: int = 0
    transient_failures: int = 0
    last_transient: str = ""


async def _extract_one(ctx: StageContext, item: _Todo, state: _MapState) -> None:
    transcript = condense_transcript(item.content)
    model = ctx.llm.model
    error: str | None = None
    result: LLMResult[Facts]
    if not transcript:
        state.skipped += 1
        result = LLMResult(Facts(), Usage(), model)
        model = "none: no user text"
    else:
        try:
            result = await ctx.llm.extract_facts(
                ExtractionInput(
                    chunk_id=item.chunk_id,
                    conversation_id=item.conversation_id,
                    title=item.title,
                    transcript=transcript,
                    conversation_date=item.created_at.date() if item.created_at else None,
                )
            )
        except LLMError as exc:
            if exc.transient:
                state.transient_failures += 1
                state.last_transient = error_text(exc)
                await ctx.record_usage(exc.usage)
                return  # not checkpointed: the stage's retry tries this chunk again
            error = error_text(exc)
            result = LLMResult(Facts(), exc.usage, model)
    facts = result.value
    usage = result.usage
    async with ctx.pool.connection() as conn, conn.transaction():
        written = await conn.execute(
            queries.INSERT_CHUNK_FACTS,
            {
                "import_id": ctx.imp.id,
                "generation": ctx.imp.generation,
                "chunk_id": item.chunk_id,
                "content_hash": item.content_hash,
                "facts": Jsonb(facts.model_dump()),
                "model": result.model or model,
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
    state.facts += facts.count()


def _extraction_tier(ctx: StageContext) -> str:
    tiers = ctx.outputs.get("chunk", {}).get("tiers") or ["medium"]
    return "medium" if "medium" in tiers else str(tiers[0])
