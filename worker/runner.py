"""Running one stage of one import: claim, work, checkpoint, hand over.

This is the only place that knows the stage lifecycle, and the only place
that decides what a failure means (:func:`decide`):

1. **claim** (one transaction): the job's generation must be current and the
   stage unfinished; the stage row goes ``running`` with ``attempts + 1`` and
   a new lease, and the import mirrors stage and status. A stale or duplicate
   job stops here. A claim that raises is counted as an attempt, so an import
   is never left pending by an exception.
2. **work**: the stage function runs (``jobs.*``) over its typed inputs and a
   store bound to the claim, inside its import's LLM scope
   (:func:`~worker.llm.limiter.llm_scope`): the calls of every job of one
   import in this process share its ``concurrency``.
3. **complete** (one transaction): the stage's final writes, the checkpoint
   row ``done`` with its output, and the queueing of the stages it made
   ready (or the import's completion) commit together.

A stage with a long work list (``extract``, ``embed``) may instead **fan
out**: it returns its work list split into pages, and lanes are queued
(:func:`run_lane`); any worker runs a lane, a lane takes pages until none is
left, checkpointing as the stage does under a lease of its own, and the last
lane out queues the stage again, which then finds its work done and completes.

A failure is recorded on the stage and the import: bad input and what only an
operator can fix fail the import at once (and alert); anything else is retried
with backoff until the stage has used ``FULLPASS_MAX_ATTEMPTS`` attempts.
Finished stages are never touched, so a requeue resumes from the failed one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg

from jobs.context import StageContext, StageResult
from jobs.outputs import FannedOut, Outputs, Parked
from jobs.registry import LANE_FUNCTIONS, STAGE_FUNCTIONS
from worker import notify
from worker.embeddings import Embedder
from worker.errors import BadInput, FullpassError, NeedsOperator, StaleJob
from worker.llm import for_stage
from worker.llm.base import LLMProvider
from worker.llm.limiter import llm_scope
from worker.maintenance import workdir_for
from worker.options import InvalidOptions
from worker.redact import error_text
from worker.retry import backoff
from worker.settings import MODEL_STAGES, Settings
from worker.store import Claim, Store

logger = logging.getLogger("fullpass.runner")


class StageRetry(Exception):
    """Raised to the queue: run this stage again after ``delay`` seconds."""

    def __init__(self, message: str, delay: float) -> None:
        super().__init__(message)
        self.delay = delay


class StageFailed(Exception):
    """Raised to the queue: the stage failed for good (the import is marked failed)."""


@dataclass(frozen=True, slots=True)
class Deps:
    """What every stage run needs from the worker process."""

    settings: Settings
    store: Store
    llm: LLMProvider
    embedder: Embedder | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do after a failed attempt."""

    final: bool
    delay: float = 0.0


def decide(settings: Settings, exc: BaseException, attempt: int) -> Decision:
    """The one error policy (see :mod:`worker.errors`)."""
    if isinstance(exc, BadInput | NeedsOperator):
        return Decision(final=True)
    if attempt >= settings.max_attempts:
        return Decision(final=True)
    retry_after = exc.retry_after if isinstance(exc, FullpassError) else None
    return Decision(
        final=False,
        delay=backoff(attempt, base=settings.retry_base_seconds, retry_after=retry_after),
    )


async def run_stage(
    deps: Deps, stage: str, import_id: UUID, generation: int, *, job_id: int | None = None
) -> None:
    """Run ``stage`` of ``import_id`` for the job of ``generation`` (see module doc).

    The database may go away at any moment (a restart, a failover). When that
    stops the claim, the context or the recording of a failure, the stage is
    retried like any transient failure — its checkpoints make the rerun safe —
    rather than ending the job with nothing recorded and no job left to carry
    the import on.
    """
    try:
        await _run_stage(deps, stage, import_id, generation, job_id)
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        message = error_text(exc)
        logger.warning(
            "stage interrupted by a database error, retrying: %s",
            message,
            extra={"import_id": str(import_id), "stage": stage, "generation": generation},
        )
        delay = max(1.0, backoff(1, base=deps.settings.retry_base_seconds))
        raise StageRetry(message, delay) from None


async def _run_stage(
    deps: Deps, stage: str, import_id: UUID, generation: int, job_id: int | None
) -> None:
    try:
        claim = await deps.store.claim(import_id, generation, stage, model=_model_of(deps, stage))
    except (psycopg.OperationalError, psycopg.InterfaceError):
        raise
    except Exception as exc:
        await _claim_failed(deps, stage, import_id, generation, exc)
        return
    if claim is None:
        logger.info(
            "stage skipped: job is stale or the stage is already done",
            extra={"import_id": str(import_id), "stage": stage, "generation": generation},
        )
        return
    log_extra: dict[str, Any] = {
        "import_id": str(import_id),
        "stage": stage,
        "attempt": claim.attempt,
    }
    started = time.monotonic()
    logger.info("stage started", extra=log_extra)
    try:
        ctx = await _context(deps, claim)
        with llm_scope(import_id, ctx.options.concurrency, guard=ctx.store.ensure_current):
            result = await STAGE_FUNCTIONS[stage](ctx)
        following = await _finish(deps.store, claim, result)
    except StaleJob:
        logger.info(
            "stage stopped: the import was requeued or cancelled, or another worker took it",
            extra=log_extra,
        )
        return
    except asyncio.CancelledError:
        logger.warning("stage interrupted (abort or shutdown)", extra=log_extra)
        raise
    except Exception as exc:
        await _handle_failure(deps, claim, exc, log_extra, job_id=job_id)
        return
    log_extra["duration_s"] = round(time.monotonic() - started, 3)
    if result.reschedule_in is not None:
        logger.info("stage parked; next check in %ss", result.reschedule_in, extra=log_extra)
        return
    if result.fan_out is not None:
        output = result.final_output()
        lanes = output.lanes if isinstance(output, FannedOut) else 1
        logger.info(
            "stage fanned out: %s pages over %s lanes", len(result.fan_out), lanes, extra=log_extra
        )
        return
    logger.info("stage done", extra=log_extra)
    if following is None:  # the import is complete
        shutil.rmtree(workdir_for(deps.settings, import_id), ignore_errors=True)


async def run_lane(
    deps: Deps,
    stage: str,
    import_id: UUID,
    generation: int,
    lane: int,
    *,
    job_id: int | None = None,
) -> None:
    """Run ``lane`` of fanned-out ``stage``: take its pages until none is left.

    Failures follow the stage's policy (:func:`decide`), counted by the
    attempts of the pages the lane held: a transient one retries the lane
    (it takes back its pages first), a final one fails the import.
    """
    log_extra: dict[str, Any] = {
        "import_id": str(import_id),
        "stage": stage,
        "lane": lane,
        "generation": generation,
    }
    try:
        claim = await deps.store.claim_lane(import_id, generation, stage, lane)
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        raise StageRetry(error_text(exc), max(1.0, deps.settings.retry_base_seconds)) from None
    if claim is None:
        logger.info(
            "lane not needed: the stage is finished, requeued or cancelled", extra=log_extra
        )
        return
    log_extra["attempt"] = claim.attempt
    pages = deps.store.pages(claim)
    started = time.monotonic()
    logger.info("lane started", extra=log_extra)
    try:
        ctx = await _context(deps, claim)
        with llm_scope(import_id, ctx.options.concurrency, guard=ctx.store.ensure_current):
            await LANE_FUNCTIONS[stage](ctx, pages)
        last = await deps.store.lane_finished(claim, pages.stats)
    except StaleJob:
        logger.info("lane stopped: the stage moved on without it", extra=log_extra)
        return
    except asyncio.CancelledError:
        logger.warning("lane interrupted (abort or shutdown)", extra=log_extra)
        raise
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        message = error_text(exc)
        logger.warning(
            "lane interrupted by a database error, retrying: %s", message, extra=log_extra
        )
        raise StageRetry(message, max(1.0, deps.settings.retry_base_seconds)) from None
    except Exception as exc:
        with contextlib.suppress(Exception):
            await deps.store.lane_stopped(claim, pages.stats)
        attempted = Claim(claim.imp, claim.fence, max(pages.attempt, 1), claim.lane)
        await _handle_failure(deps, attempted, exc, log_extra, lane=True, job_id=job_id)
        return
    log_extra["duration_s"] = round(time.monotonic() - started, 3)
    logger.info(
        "lane done%s", ": the stage's last, it finishes next" if last else "", extra=log_extra
    )


def _model_of(deps: Deps, stage: str) -> str | None:
    """The model ``stage`` calls (None: it calls none)."""
    if stage in MODEL_STAGES:
        return for_stage(deps.llm, deps.settings, stage).model
    if stage == "embed" and deps.embedder is not None:
        return deps.embedder.model
    return None


async def _context(deps: Deps, claim: Claim) -> StageContext:
    try:
        options = deps.settings.options.merged(claim.imp.options)
    except InvalidOptions as exc:
        raise BadInput(str(exc)) from None
    workdir = workdir_for(deps.settings, claim.imp.id)
    workdir.mkdir(parents=True, exist_ok=True)
    return StageContext(
        imp=claim.imp,
        stage=claim.fence.stage,
        attempt=claim.attempt,
        settings=deps.settings,
        options=options,
        store=deps.store.for_stage(claim.fence, lane=claim.lane is not None),
        llm=for_stage(deps.llm, deps.settings, claim.fence.stage),
        embedder=deps.embedder,
        outputs=Outputs(await deps.store.stage_outputs(claim.imp.id)),
        workdir=workdir,
    )


async def _finish(store: Store, claim: Claim, result: StageResult) -> str | None:
    """Complete (or park) the stage; the stage that runs next (None: the import is done)."""
    if result.reschedule_in is not None:
        # Waiting on work done elsewhere (a Message Batch): no worker slot is
        # held meanwhile, and the wait does not count as an attempt.
        output = result.final_output()
        saved = output.saved if isinstance(output, Parked) else output.model_dump(mode="json")
        await store.park(claim.fence, saved, result.reschedule_in)
        return claim.fence.stage
    if result.fan_out is not None:
        output = result.final_output()
        lanes = output.lanes if isinstance(output, FannedOut) else 1
        await store.fan_out(claim.fence, result.fan_out, lanes, output)
        return claim.fence.stage
    return await store.complete(claim.fence, result)


async def _handle_failure(
    deps: Deps,
    claim: Claim,
    exc: Exception,
    log_extra: dict[str, Any],
    *,
    lane: bool = False,
    job_id: int | None = None,
) -> None:
    message = error_text(exc)
    decision = decide(deps.settings, exc, claim.attempt)
    what = "lane" if lane else "stage"
    if isinstance(exc, FullpassError):
        logger.error("%s failed: %s", what, message, extra=log_extra)
    else:
        logger.error("%s failed: %s", what, message, extra=log_extra, exc_info=exc)
    recorded = await deps.store.fail(
        claim.fence, claim.imp.user_id, message, final=decision.final, lane=lane, job_id=job_id
    )
    if not recorded:
        return  # requeued, cancelled or handed over meanwhile: the new run owns the import
    if not decision.final:
        raise StageRetry(message, decision.delay) from None
    await _failed_for_good(
        deps, claim.imp.id, claim.imp.user_id, claim.fence.stage, claim.attempt, message
    )


async def _claim_failed(
    deps: Deps, stage: str, import_id: UUID, generation: int, exc: Exception
) -> None:
    """A claim that raised (not a lost connection): count it, never leave the import pending."""
    message = error_text(exc)
    log_extra = {"import_id": str(import_id), "stage": stage, "generation": generation}
    logger.error("claiming the stage failed: %s", message, extra=log_extra, exc_info=exc)
    failure = await deps.store.claim_failed(
        import_id, generation, stage, message, deps.settings.max_attempts
    )
    if failure is None:
        return  # requeued or cancelled meanwhile
    if not failure.final:
        raise StageRetry(message, decide(deps.settings, exc, failure.attempts).delay)
    await _failed_for_good(deps, import_id, failure.user_id, stage, failure.attempts, message)


async def _failed_for_good(
    deps: Deps, import_id: UUID, user_id: UUID, stage: str, attempts: int, message: str
) -> None:
    shutil.rmtree(workdir_for(deps.settings, import_id), ignore_errors=True)
    await notify.alert(
        deps.settings,
        {
            "event": "import_failed",
            "import_id": str(import_id),
            "user_id": str(user_id),
            "stage": stage,
            "attempts": attempts,
            "error": message,
        },
    )
    raise StageFailed(f"{stage}: {message}") from None
