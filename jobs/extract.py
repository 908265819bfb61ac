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

A re-import pays only for what is new: before anything is sent, each chunk
whose content an earlier import of the same user extracted with the same
model and prompt version (:data:`~worker.llm.prompts.EXTRACTION_PROMPT_VERSION`)
gets a copy of those facts, checkpointed like an answer (fenced, attributed to
the new chunk, naming their source) at no cost; only the rest is packed and
sent.

A long work list is spread over the fleet (:mod:`jobs.fanout`): the stage
splits it into pages, lanes on any worker extract them
(:func:`extract_lane`, with the same checkpoints), and the stage runs again
once they are all done, to sum up.

Only the user's words are sent in full: assistant turns are cut to a short
excerpt that gives the user's replies their context, the code, logs and
documents a user pasted into a long turn are cut to their first line and
what is said in the first person (``paste_chars``, an option), a paste sent
once is not sent again, and small chunks are
packed together (each under its own conversation header) up to
``pack_tokens`` (an option) per call. Each chunk of a pack has an id in its header
(``[c2]``) and the model cites, for each fact, the chunks that state it; a fact
that cites none of them is attributed to the chunk whose words it shares most.
Either way every fact keeps its source chunk and date.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from jobs.context import Page, PageSource, StageContext, StageResult
from jobs.domain.facts import Category, Facts, Item, sources_of, text_of, uncited
from jobs.domain.transcript import condense_transcript, novel_part, turns
from jobs.fanout import fan_out
from jobs.outputs import BatchState, ChunkOutput, ExtractOutput, Parked, Skipped
from worker.errors import StaleJob, Transient
from worker.llm.base import (
    BatchProvider,
    ExtractionInput,
    LLMError,
    LLMResult,
    ModelUnavailable,
    UnusableAnswer,
    Usage,
)
from worker.llm.prompts import EXTRACTION_PROMPT_VERSION
from worker.redact import error_text
from worker.store import ChunkRef, ChunkText, FactsRow

logger = logging.getLogger("fullpass.extract")

#: How often the map step publishes its progress and checks that its import
#: was not cancelled or requeued meanwhile (its checkpoints are fenced anyway).
PROGRESS_SECONDS = 1.0

READ = 200  # chunk contents read per query
FIRST_READ = 25
BATCH_SIZE = 10_000  # requests per Message Batch


#: The stages a small export does not run: it is stored and searchable, but
#: builds no memory (the app keeps its quick profile).
MEMORY_STAGES = ("extract", "reduce", "memory", "regenerate")


async def extract(ctx: StageContext) -> StageResult:
    chunked = ctx.outputs.get(ChunkOutput)
    floor = ctx.options.min_conversations
    if floor and chunked.conversations < floor:
        reason = (
            f"small export: {chunked.conversations} conversation(s), fewer than {floor};"
            " its chunks are stored and searchable, no memory is built"
        )
        return StageResult(Skipped(skipped=reason), skip=dict.fromkeys(MEMORY_STAGES[1:], reason))
    tier = chunked.extraction_tier
    # What an earlier import of the user's extracted from the same content, with
    # the same model and prompt, is copied: only the rest is sent.
    await ctx.store.reuse_facts(ctx.llm.model, EXTRACTION_PROMPT_VERSION, tier=tier, ids=None)
    todo, total = await ctx.store.extraction_work(tier)
    state = _MapState(completed=total - len(todo))
    await ctx.store.report_progress(state.completed, total)
    batch_summary: dict[str, Any] | None = None

    if _batch_mode(ctx) and todo:
        parked, batch_summary = await _batch_phase(ctx, todo, state)
        if parked is not None:
            return parked
        todo, total = await ctx.store.extraction_work(tier)
    elif ctx.options.batch and not isinstance(ctx.llm, BatchProvider):
        logger.warning(
            "FULLPASS_BATCH is set but provider %s has no batch API: extracting online",
            ctx.llm.model,
            extra={"import_id": str(ctx.imp.id), "stage": ctx.stage},
        )

    spread = fan_out(ctx, [ref.id for ref in todo], total)
    if spread is not None:
        return spread
    await _online(ctx, _groups(ctx, todo, state), state, total)
    state.raise_failures(len(todo))
    state.add(await ctx.store.lanes_stats())

    summary = await ctx.store.facts_summary()
    return StageResult(
        ExtractOutput(
            tier=tier,
            chunks=total,
            calls=state.calls,
            extracted_now=state.extracted,
            skipped_no_user_text=state.skipped,
            failed_chunks=summary.failed,
            reused=summary.reused,
            facts=summary.facts,
            input_tokens=summary.input_tokens,
            output_tokens=summary.output_tokens,
            model=ctx.llm.model,
            batch=batch_summary,
        )
    )


async def extract_lane(ctx: StageContext, pages: PageSource) -> None:
    """A lane of a fanned-out map step: extract the pages it takes, as the stage would.

    A page is done once each of its chunks is checkpointed; chunks the model
    service kept failing leave their page open, and the lane is retried
    (it takes its open pages back first).
    """
    state = _MapState()
    tracker = _PageTracker(pages)
    try:
        await _online(ctx, _paged_groups(ctx, pages, state, tracker), state, None, tracker)
    finally:
        pages.stats.update(state.stats())
    state.raise_failures(tracker.chunks)


@dataclass(slots=True)
class _MapState:
    completed: int = 0
    extracted: int = 0
    skipped: int = 0
    calls: int = 0
    transient_failures: int = 0
    last_transient: str = ""
    retry_after: float | None = None

    def stats(self) -> dict[str, int]:
        """What a lane keeps of its run."""
        return {"calls": self.calls, "extracted": self.extracted, "skipped": self.skipped}

    def add(self, lanes: dict[str, int]) -> None:
        """What the stage's lanes did, added to this run's figures."""
        self.calls += lanes.get("calls", 0)
        self.extracted += lanes.get("extracted", 0)
        self.skipped += lanes.get("skipped", 0)

    def raise_failures(self, of: int) -> None:
        if self.transient_failures:
            # Finished chunks are checkpointed; the retry resumes with the rest.
            raise Transient(
                f"{self.transient_failures} of {of} chunks could not be extracted "
                f"because the model service kept failing (last: {self.last_transient})",
                retry_after=self.retry_after,
            )


class _PageTracker:
    """Which pages of a lane have every chunk checkpointed (then marked done)."""

    def __init__(self, pages: PageSource) -> None:
        self.pages = pages
        self.chunks = 0
        self._open: dict[int, int] = {}  # page -> groups not yet checkpointed
        self._closed: set[int] = set()  # pages whose groups were all handed out
        self._failed: set[int] = set()

    def opened(self, page: Page, chunks: int) -> None:
        self._open[page.number] = 0
        self.chunks += chunks

    def grouped(self, page: Page) -> None:
        self._open[page.number] += 1

    async def closed(self, page: Page) -> None:
        self._closed.add(page.number)
        await self._maybe_done(page)

    async def checkpointed(self, page: Page) -> None:
        self._open[page.number] -= 1
        await self._maybe_done(page)

    def failed(self, page: Page) -> None:
        self._open[page.number] -= 1
        self._failed.add(page.number)

    async def _maybe_done(self, page: Page) -> None:
        n = page.number
        if n in self._closed and self._open[n] == 0 and n not in self._failed:
            del self._open[n]
            await self.pages.done(page)


async def _paged_groups(
    ctx: StageContext, pages: PageSource, state: _MapState, tracker: _PageTracker
) -> AsyncIterator[_Group]:
    """The groups of every page the lane takes, one page after the other."""
    seen: set[str] = set()  # pastes the lane has sent
    while (page := await pages.next()) is not None:
        todo = await ctx.store.extraction_todo(page.chunk_ids)
        tracker.opened(page, len(todo))
        async for group in _groups(ctx, todo, state, page, seen):
            tracker.grouped(page)
            yield group
        await tracker.closed(page)


@dataclass(frozen=True, slots=True)
class _Member:
    chunk_id: str
    content_hash: str
    header: str
    transcript: str
    #: What the chunk's saved memories and custom instructions were filed as.
    saved: Facts


@dataclass(frozen=True, slots=True)
class _Group:
    """One model call: a single chunk, or several small ones packed together."""

    members: tuple[_Member, ...]
    item: ExtractionInput
    #: The page of a lane the group belongs to (None: the stage's own work list).
    page: Page | None = None


async def _texts(ctx: StageContext, todo: list[ChunkRef]) -> AsyncIterator[list[ChunkText]]:
    """The work list's chunk contents, a slice at a time (memory stays flat).

    Slices start small and double up to ``READ``: the first call goes out
    without waiting for megabytes of chunks to arrive.
    """
    start, size = 0, FIRST_READ
    while start < len(todo):
        ids = [ref.id for ref in todo[start : start + size]]
        start, size = start + size, min(size * 2, READ)
        yield await ctx.store.chunk_texts(ids)


async def _groups(
    ctx: StageContext,
    todo: list[ChunkRef],
    state: _MapState,
    page: Page | None = None,
    seen: set[str] | None = None,
) -> AsyncIterator[_Group]:
    """Condensed chunks packed into calls; chunks without user text are checkpointed empty.

    Long pastes are cut (the ``paste_chars`` option); one already sent in this
    run (``seen``) is sent as a marker only.
    """
    budget = ctx.options.pack_tokens * 4
    paste_chars = ctx.options.paste_chars
    seen = set() if seen is None else seen
    pending: list[tuple[ChunkText, str]] = []
    size = 0
    previous: ChunkText | None = None
    async for texts in _texts(ctx, todo):
        empty: list[FactsRow] = []
        for item in texts:
            text = item.content
            if previous is not None and item.follows(previous):
                text = novel_part(previous.content, text)
            previous = item
            transcript = condense_transcript(text, paste_chars=paste_chars, seen=seen)
            if not transcript:
                empty.append(FactsRow(item.id, item.content_hash, Facts()))
                continue
            if pending and size + len(transcript) > budget:
                yield _group(pending, page)
                pending, size = [], 0
            pending.append((item, transcript))
            size += len(transcript)
        if empty:
            # One write for the page's chunks that have nothing to extract.
            await ctx.store.checkpoint_facts(empty, Usage(), _NO_USER_TEXT, **_reusable(ctx))
            state.skipped += len(empty)
            state.completed += len(empty)
    if pending:
        yield _group(pending, page)


def _group(items: list[tuple[ChunkText, str]], page: Page | None = None) -> _Group:
    members = tuple(
        _Member(t.id, t.content_hash, _header(t, pack_id(i)), transcript, t.saved)
        for i, (t, transcript) in enumerate(items)
    )
    first = items[0][0]
    if len(items) == 1:
        return _Group(members, _input(first, items[0][1]), page)
    packed = "\n\n".join(f"{m.header}\n{m.transcript}" for m in members)
    item = ExtractionInput(
        chunk_id=first.id,
        conversation_id=first.conversation_id,
        title=f"{len(items)} conversation excerpts (each under its own header)",
        transcript=packed,
        conversation_date=None,
    )
    return _Group(members, item, page)


def pack_id(index: int) -> str:
    """The id of a pack's ``index``-th chunk (from 0): in its header, and what the model cites."""
    return f"c{index + 1}"


def _header(item: ChunkText, ident: str) -> str:
    when = item.created_at.date().isoformat() if item.created_at else "undated"
    # A "System:" line: every transcript reader knows it is not the user speaking.
    return f'System: new conversation [{ident}] "{item.title or "Untitled"}", dated {when}.'


def _input(item: ChunkText, transcript: str) -> ExtractionInput:
    return ExtractionInput(
        chunk_id=item.id,
        conversation_id=item.conversation_id,
        title=item.title,
        transcript=transcript,
        conversation_date=item.created_at.date() if item.created_at else None,
    )


async def _online(
    ctx: StageContext,
    groups: AsyncIterator[_Group],
    state: _MapState,
    total: int | None,
    tracker: _PageTracker | None = None,
) -> None:
    """Extract ``groups`` with at most ``concurrency`` calls in flight, checkpointing each.

    When the job loses the stage (requeued, cancelled, or handed to another
    worker after this one stalled), no new call starts, but the calls already
    in flight are awaited: their answers are refused as checkpoints, and what
    they cost is still booked in the import's whole spend.

    Checkpoints are written by tasks of their own, outside the calls' task
    group: a call that fails the stage (a refused key) cancels the other
    calls, not the writing of answers already paid for. A checkpoint that
    fails stops new calls and fails the stage once the others are written.
    """
    limit = ctx.options.concurrency
    queue: asyncio.Queue[_Group | None] = asyncio.Queue(maxsize=limit * 2)
    checked = time.monotonic()
    stale = asyncio.Event()
    writes: set[asyncio.Task[None]] = set()
    write_failures: list[BaseException] = []

    def written(task: asyncio.Task[None]) -> None:
        writes.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            write_failures.append(exc)

    async def produce() -> None:
        try:
            async for group in groups:
                await queue.put(group)
        except StaleJob:
            stale.set()
        for _ in range(limit):
            await queue.put(None)

    async def finish(write: Coroutine[Any, Any, None], group: _Group) -> None:
        nonlocal checked
        try:
            await write
            state.completed += len(group.members)
            if tracker is not None and group.page is not None:
                await tracker.checkpointed(group.page)
            if time.monotonic() - checked >= PROGRESS_SECONDS:
                checked = time.monotonic()
                await ctx.store.ensure_current()
                await ctx.store.report_progress(state.completed, total)
        except StaleJob:
            stale.set()

    async def consume() -> None:
        me = asyncio.current_task()
        while not stale.is_set() and (group := await queue.get()) is not None:
            if write_failures:
                return
            try:
                write = await _extract_group(ctx, group, state)
            except StaleJob:
                stale.set()
                return
            if write is None and tracker is not None and group.page is not None:
                tracker.failed(group.page)
            if me is not None and me.cancelling():
                # Cancelled (the job's shutdown, or another task failed) while the
                # answer came back, and the answer won: a call's answer and its
                # cancellation can arrive together, and the cancellation is then
                # dropped on the way. Keep what was paid for, then stop as cancelled:
                # going on would start new calls, and a task group that is shutting
                # down takes no new task (that error would turn a shutdown into a
                # failure of the stage).
                if write is not None:
                    with contextlib.suppress(Exception):  # a stale lease, a lost server
                        await finish(write, group)
                raise asyncio.CancelledError
            if write is not None:
                # The checkpoint commits in the background: the call slot is free at once.
                task = asyncio.create_task(finish(write, group))
                writes.add(task)
                task.add_done_callback(written)

    try:
        async with asyncio.TaskGroup() as tasks:
            producer = tasks.create_task(produce())
            consumers = [tasks.create_task(consume()) for _ in range(limit)]
            await asyncio.wait(consumers)
            producer.cancel()  # stale or stopped: nobody takes its next group
    except ExceptionGroup as eg:
        raise eg.exceptions[0] from None  # the first cause, not the group wrapper
    finally:
        # Answers in hand are written whatever ends the calls (a failure, a shutdown);
        # waiting does not cancel the writes if this task is cancelled again.
        while writes:
            await asyncio.wait(set(writes))
    if write_failures:
        raise write_failures[0]
    if stale.is_set():
        raise StaleJob()
    await ctx.store.report_progress(state.completed, total)


async def _extract_group(
    ctx: StageContext, group: _Group, state: _MapState
) -> Coroutine[Any, Any, None] | None:
    """One call; returns the checkpoint write to run (None: nothing to checkpoint)."""
    await ctx.store.ensure_current()  # a job that lost its lease must not pay for another call
    state.calls += 1
    try:
        result = await ctx.llm.extract_facts(group.item)
    except UnusableAnswer as exc:
        rows = [FactsRow(m.chunk_id, m.content_hash, Facts()) for m in group.members]
        return ctx.store.checkpoint_facts(
            rows, exc.usage, ctx.llm.model, error_text(exc), **_reusable(ctx)
        )
    except ModelUnavailable as exc:
        state.transient_failures += len(group.members)
        state.last_transient = error_text(exc)
        state.retry_after = exc.retry_after
        await ctx.store.record_usage(exc.usage)
        return None  # not checkpointed: the stage's retry tries these chunks again
    except LLMError as exc:  # refused: nothing will work until an operator acts
        await ctx.store.record_usage(exc.usage)
        raise
    return _record(ctx, group, result, state)


async def _record(
    ctx: StageContext, group: _Group, result: LLMResult[Facts], state: _MapState
) -> None:
    state.extracted += len(group.members)
    shares = pack_shares(
        result.value, [m.transcript for m in group.members], [m.saved for m in group.members]
    )
    rows = [
        FactsRow(m.chunk_id, m.content_hash, f) for m, f in zip(group.members, shares, strict=True)
    ]
    await ctx.store.checkpoint_facts(
        rows, result.usage, result.model or ctx.llm.model, **_reusable(ctx)
    )


def _reusable(ctx: StageContext) -> dict[str, str]:
    """What a later import of the user's may reuse a checkpoint by: the model asked, the prompt."""
    return {"requested_model": ctx.llm.model, "prompt_version": EXTRACTION_PROMPT_VERSION}


def pack_shares(facts: Facts, transcripts: list[str], saved: list[Facts]) -> list[Facts]:
    """Each chunk's share of a pack's facts (:func:`attribute`), less restated saved facts.

    A fact that restates a saved fact of any chunk of the pack is left out
    (the saved one reaches reduce anyway), except from a chunk whose user turns
    state it in full: another conversation in which the user said it again.
    """
    shares = attribute(facts, transcripts)
    known = Facts.of(item for s in saved for item in s.items())
    if not known.count():
        return shares
    restates = _restates(known)
    out: list[Facts] = []
    for share, transcript in zip(shares, transcripts, strict=True):
        said: set[str] | None = None
        kept: list[tuple[Category, Item]] = []
        for category, item in share.items():
            if restates(item):
                if said is None:
                    said = _stems(" ".join(t for who, t in turns(transcript) if who == "user"))
                if not _states_in_full(said, text_of(item)):
                    continue
            kept.append((category, item))
        out.append(Facts.of(kept))
    return out


def _states_in_full(said: set[str], fact: str) -> bool:
    words = _stems(fact)
    return bool(words) and len(words & said) >= FULL_MATCH * len(words)


def without_saved_facts(facts: Facts, saved: Facts) -> Facts:
    """``facts`` less those that restate the saved facts of the chunks they came from.

    Saved memories and custom instructions are filed as facts when the export
    is chunked, with the dates they were saved, and reach reduce from there
    whatever the model answers; the model sees them in the transcript too,
    and its restatement of one is left out here, so each counts once.
    """
    if not saved.count():
        return facts
    repeats = _restates(saved)
    return Facts.of((c, i) for c, i in facts.items() if not repeats(i))


def _restates(saved: Facts) -> Callable[[Item], bool]:
    """Whether a fact restates one of ``saved`` (most of its words are in one of them)."""
    known = [_stems(text_of(item)) for _, item in saved.items()]

    def repeats(item: Item) -> bool:
        words = _stems(text_of(item))
        return bool(words) and any(len(words & k) >= FULL_MATCH * len(words) for k in known)

    return repeats


#: Share of a fact's words a chunk must hold to count as stating it in full.
FULL_MATCH = 0.8
_WORD = re.compile(r"[^\W_]{3,}", re.UNICODE)
#: Recorded as the model of chunks in which the user says nothing (no call made).
_NO_USER_TEXT = "none: no user text"


#: Every ASCII byte that cannot be part of a word becomes a space; letters,
#: digits and the bytes of non-ASCII characters stay.
_ASCII_SEPARATORS = bytes(b if b >= 0x80 or chr(b).isalnum() else 0x20 for b in range(256))


def _stems(text: str) -> set[str]:
    """The first 5 letters of every word of 3+ letters or digits, case-folded.

    Same result as ``{w[:5] for w in _WORD.findall(text.casefold())}``, at a
    fraction of the CPU: it runs on every pack's 40 KB while calls are in
    flight, on the event loop that sends them. Bytes are split in C and only
    the distinct pieces that hold a non-ASCII character go through the regex.
    """
    pieces = set(text.casefold().encode().translate(_ASCII_SEPARATORS).split())
    stems: set[str] = set()
    for piece in pieces:
        if piece.isalnum():  # ASCII letters and digits only
            if len(piece) >= 3:
                stems.add(piece[:5].decode())
        else:
            stems.update(w[:5] for w in _WORD.findall(piece.decode()))
    return stems


def attribute(facts: Facts, transcripts: list[str]) -> list[Facts]:
    """Split a pack's facts among its chunks: each goes where the model says it was said.

    The model cites, for each fact, the ids of the pack's chunks that state it
    (:func:`pack_id`, in each chunk's header): a model paraphrases, sums up and
    merges, and a fact worded "Prefers dark mode" or merged from two
    conversations shares too few words with what was said to be placed by
    them. Every chunk cited gets the fact (one merged from two conversations
    belongs to both); ids that are not in the pack are ignored.

    A fact with no valid id goes where its words are: facts are mostly the
    user's words, so the chunk that holds most of a fact's (prefix-stemmed)
    words is its source. A fact that several chunks state in full (the same
    preference in two conversations) belongs to each of them; a weaker tie
    goes to the earlier chunk. A single-chunk pack keeps everything. The
    facts handed back cite nothing (:func:`~jobs.domain.facts.uncited`).
    """
    if len(transcripts) == 1:
        return [Facts.of((category, uncited(item)) for category, item in facts.items())]
    ids = {pack_id(i): i for i in range(len(transcripts))}
    vocab: list[set[str]] = []  # the chunks' stems, computed when a fact first needs them
    out = [Facts() for _ in transcripts]

    def owners(text: str) -> list[int]:
        if not vocab:
            vocab.extend(_stems(t) for t in transcripts)
        words = _stems(text)
        scores = [len(words & v) for v in vocab]
        top = max(scores)
        if top and top >= FULL_MATCH * len(words):
            return [i for i, s in enumerate(scores) if s == top]
        return [scores.index(top)]

    for category, item in facts.items():
        cited = sorted({ids[s] for s in sources_of(item) if s in ids})
        for i in cited or owners(text_of(item)):
            getattr(out[i], category.key).append(uncited(item))
    return out


# --- batch mode -----------------------------------------------------------


def _batch_mode(ctx: StageContext) -> bool:
    return ctx.options.batch and isinstance(ctx.llm, BatchProvider)


async def _batch_phase(
    ctx: StageContext, todo: list[ChunkRef], state: _MapState
) -> tuple[StageResult | None, dict[str, Any] | None]:
    """Submit, wait for, or collect the import's Message Batches.

    Returns a parked StageResult while batches are running; ``(None, summary)``
    once their results are checkpointed (the rest then goes online).
    """
    assert isinstance(ctx.llm, BatchProvider)
    llm: BatchProvider = ctx.llm
    poll = ctx.options.batch_poll_seconds
    saved = (await ctx.store.running_output()).get("batch")
    batch = BatchState.model_validate(saved) if saved is not None else None
    if batch is None:
        ids: list[str] = []
        groups: dict[str, list[list[str]]] = {}
        items: list[ExtractionInput] = []
        async for group in _groups(ctx, todo, state):
            items.append(group.item)
            groups[group.item.chunk_id] = [[m.chunk_id, m.content_hash] for m in group.members]
            if len(items) >= BATCH_SIZE:
                ids.append(await llm.submit_batch(items))
                items = []
        if items:
            ids.append(await llm.submit_batch(items))
        if not ids:
            return None, None
        submitted = sum(len(g) for g in groups.values())
        batch = BatchState(ids=ids, submitted=submitted, groups=groups)
        logger.info(
            "submitted %s chunks in %s requests, %s batch(es)",
            submitted,
            len(groups),
            len(ids),
            extra={"import_id": str(ctx.imp.id), "stage": ctx.stage},
        )
        return _parked(batch, poll), None

    statuses = [await llm.batch_status(batch_id) for batch_id in batch.ids]
    if any(status != "ended" for status in statuses):
        batch.polls += 1
        return _parked(batch, poll), None

    groups = batch.groups
    # Chunks checkpointed by an earlier, interrupted collection are not paid twice.
    pending = {ref.id for ref in todo}
    succeeded = failed = 0
    for batch_id in batch.ids:
        async for custom_id, outcome in llm.batch_results(batch_id):
            members = groups.get(custom_id)
            if not members or members[0][0] not in pending:
                continue
            if isinstance(outcome, LLMError):
                failed += len(members)  # left without a checkpoint: extracted online next
                await ctx.store.record_usage(outcome.usage)
                continue
            succeeded += len(members)
            await _record(ctx, await _regroup(ctx, custom_id, members), outcome, state)
        await ctx.store.ensure_current()
    summary = {
        "ids": batch.ids,
        "submitted": batch.submitted,
        "requests": len(groups),
        "succeeded": succeeded,
        "retried_online": failed,
        "polls": batch.polls,
    }
    logger.info(
        "collected batch results: %s chunks succeeded, %s to retry online",
        succeeded,
        failed,
        extra={"import_id": str(ctx.imp.id), "stage": ctx.stage},
    )
    return None, summary


async def _regroup(ctx: StageContext, custom_id: str, members: list[list[str]]) -> _Group:
    """A submitted pack rebuilt from its chunk ids (for attributing its facts)."""
    texts = await ctx.store.chunk_texts([chunk_id for chunk_id, _ in members])
    by_id = {t.id: t for t in texts}
    rebuilt: list[_Member] = []
    previous: ChunkText | None = None
    for chunk_id, content_hash in members:
        item = by_id.get(chunk_id)
        text = item.content if item else ""
        if item is not None and previous is not None and item.follows(previous):
            text = novel_part(previous.content, text)  # as it was sent
        previous = item
        saved = item.saved if item else Facts()
        transcript = condense_transcript(text, paste_chars=ctx.options.paste_chars)
        rebuilt.append(_Member(chunk_id, content_hash, "", transcript, saved))
    return _Group(tuple(rebuilt), ExtractionInput(custom_id, "", "", "", None))


def _parked(batch: BatchState, poll: float) -> StageResult:
    """The map step waits on its batches: keep their state and look again in ``poll`` s."""
    saved = {"batch": batch.model_dump()}
    return StageResult(Parked(saved=saved), reschedule_in=poll)
