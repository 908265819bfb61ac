"""Stage ``embed``: every staged chunk gets an embedding of the configured model.

It runs beside the map step, after ``chunk``; ``finalize`` waits for it, so
a pass publishes its chunks embedded and the user never trades searchable
chunks for unsearchable ones. Chunks are embedded a request at a time (the
provider's batch size), several requests in flight
(``FULLPASS_EMBEDDINGS_CONCURRENCY``), and each request's vectors are stored
with what it cost as it returns, fenced like every checkpoint: a worker killed
mid-stage resumes with the chunks not embedded yet, and never pays twice for
a stored batch. A chunk that already has an embedding of this model (a
backfill, a requeue) is left as it is; one of another model is embedded
again. What is embedded is the conversation's title and the chunk's text,
cut at the provider's input limit (a long chunk never fails the import).

A long work list is spread over the fleet like the map step's
(:func:`embed_lane`). ``user_profiles.embedding_status`` is ``processing``
while the stage runs, ``complete`` once the pass is published, and
``failed`` if the pass fails.

Skipped, with the reason in ``import_progress.note``: embeddings turned off
(``FULLPASS_EMBEDDINGS=none``), or no embedding column (pgvector is not
installed; the chunks are found by full-text search).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from jobs.context import PageSource, StageContext, StageResult
from jobs.fanout import fan_out
from jobs.outputs import EmbedOutput, Skipped
from worker.embeddings import Embedder

logger = logging.getLogger("fullpass.embed")

#: How often progress is published while embedding.
PROGRESS_SECONDS = 1.0
#: Requests' worth of chunk texts read from the database at a time.
READ_AHEAD = 4


async def embed(ctx: StageContext) -> StageResult:
    embedder = ctx.embedder
    if embedder is None:
        return StageResult(Skipped(skipped="embeddings are off (FULLPASS_EMBEDDINGS=none)"))
    if not await ctx.store.embedding_column():
        return StageResult(
            Skipped(
                skipped="no embedding column (pgvector is not installed): "
                "chunks are found by full-text search"
            )
        )
    todo, total = await ctx.store.embedding_work(embedder.model)
    await ctx.store.set_embedding_status("processing")
    state = _EmbedState(done=total - len(todo))
    await ctx.store.report_progress(state.done, total)
    spread = fan_out(ctx, todo, total)
    if spread is not None:
        return spread
    await _embed_chunks(ctx, embedder, todo, state, total)
    state.add(await ctx.store.lanes_stats())
    price = ctx.settings.embeddings.resolved.usd_per_million
    return StageResult(
        EmbedOutput(
            provider=embedder.name,
            model=embedder.model,
            dimension=embedder.dimension,
            chunks=total,
            embedded_now=state.embedded,
            calls=state.calls,
            tokens=state.tokens,
            cost_usd=_cost(state.tokens, price),
        )
    )


async def embed_lane(ctx: StageContext, pages: PageSource) -> None:
    """A lane of a fanned-out embed stage: embed the pages it takes."""
    embedder = ctx.embedder
    if embedder is None:  # the worker's settings differ from the one that planned
        raise RuntimeError("this worker has embeddings turned off (FULLPASS_EMBEDDINGS=none)")
    state = _EmbedState()
    try:
        while (page := await pages.next()) is not None:
            todo = await ctx.store.embedding_todo(page.chunk_ids, embedder.model)
            await _embed_chunks(ctx, embedder, todo, state, None)
            await pages.done(page)
    finally:
        pages.stats.update(state.stats())


@dataclass(slots=True)
class _EmbedState:
    #: Chunks with an embedding of the model (in all, or by this lane).
    done: int = 0
    embedded: int = 0
    calls: int = 0
    tokens: int = 0

    def stats(self) -> dict[str, int]:
        return {"embedded": self.embedded, "calls": self.calls, "tokens": self.tokens}

    def add(self, lanes: dict[str, int]) -> None:
        self.embedded += lanes.get("embedded", 0)
        self.calls += lanes.get("calls", 0)
        self.tokens += lanes.get("tokens", 0)


async def _embed_chunks(
    ctx: StageContext,
    embedder: Embedder,
    ids: Sequence[str],
    state: _EmbedState,
    total: int | None,
) -> None:
    """Embed ``ids``, one request per batch, ``concurrency`` requests in flight.

    Each batch is stored as it returns. The first failure stops the others
    (what is stored stays stored) and is raised: the runner's policy decides
    (a service that keeps throttling or failing retries the stage, which
    resumes with what is left).
    """
    if not ids:
        return
    batch = max(1, embedder.max_batch)
    concurrency = ctx.settings.embeddings.concurrency
    # Requests in flight, and batches read but not stored yet (memory stays flat).
    in_flight = asyncio.Semaphore(concurrency)
    read = asyncio.Semaphore(concurrency * 2)
    failures: list[BaseException] = []
    checked = time.monotonic()

    async def one(chunk: list[tuple[str, str]]) -> None:
        nonlocal checked
        try:
            async with in_flight:
                if failures:
                    return  # stopping: this batch is embedded on resume
                result = await embedder.embed_documents([text for _, text in chunk])
            await ctx.store.store_embeddings(
                [chunk_id for chunk_id, _ in chunk],
                result.vectors,
                result.model,
                result.usage.input_tokens,
            )
            state.calls += max(1, result.usage.calls)
            state.tokens += result.usage.input_tokens
            state.embedded += len(chunk)
            state.done += len(chunk)
            if time.monotonic() - checked >= PROGRESS_SECONDS:
                checked = time.monotonic()
                await ctx.store.report_progress(state.done, total)
        except Exception as exc:
            failures.append(exc)
        finally:
            read.release()

    # On the first failure no request starts; those in flight finish and are
    # stored (they are paid for), then the failure is raised.
    tasks: list[asyncio.Task[None]] = []
    step = batch * READ_AHEAD
    try:
        for start in range(0, len(ids), step):
            if failures:
                break
            texts = await ctx.store.embedding_texts(ids[start : start + step])
            for i in range(0, len(texts), batch):
                await read.acquire()
                if failures:
                    read.release()
                    break
                tasks.append(asyncio.create_task(one(texts[i : i + batch])))
    finally:
        await asyncio.gather(*tasks, return_exceptions=True)
    if failures:
        raise failures[0]
    await ctx.store.report_progress(state.done, total)


def _cost(tokens: int, usd_per_million: float | None) -> float | None:
    """What ``tokens`` cost at the model's list price (None: no price known, and tokens spent)."""
    if not tokens:
        return 0.0
    return round(tokens * usd_per_million / 1e6, 6) if usd_per_million is not None else None
