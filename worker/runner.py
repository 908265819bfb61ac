"""Running one stage of one import: claim, work, checkpoint, hand over.

This is the only place that knows the stage lifecycle:

1. **claim** (one transaction): the job's generation must be current and the
   stage unfinished; the stage row goes ``running`` with ``attempts + 1`` and
   the import mirrors stage and status. A stale or duplicate job stops here.
2. **work**: the stage function runs (``jobs.*``).
3. **complete** (one transaction): the stage's own final writes, the
   checkpoint row ``done`` with its output, and the deferral of the next stage
   (or the import's completion) commit together.

A failure records the error on the stage and the import. Bad input fails the
import at once; anything else is retried with exponential backoff until the
stage has used ``FULLPASS_MAX_ATTEMPTS`` attempts, then the import fails and
the alert webhook is called. Finished stages are never touched, so a requeue
resumes from the failed one.
"""

from __future__ import annotations

import asyncio
import logging
import random
import shutil
import time
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from jobs.context import ImportRow, StageContext, StageResult
from jobs.errors import BadInput, StageError
from jobs.registry import STAGE_FUNCTIONS
from worker import notify, queries
from worker.db import Conn
from worker.errors import StaleJob
from worker.llm.base import LLMProvider, Usage
from worker.maintenance import workdir_for
from worker.options import InvalidOptions
from worker.redact import error_text
from worker.settings import Settings
from worker.stages import next_stage

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
    pool: AsyncConnectionPool[Conn]
    llm: LLMProvider


def backoff_seconds(settings: Settings, attempt: int) -> float:
    """Exponential backoff with jitter: base·2^(attempt-1), ±25 %."""
    base = float(settings.retry_base_seconds * 2 ** max(attempt - 1, 0))
    return round(base * random.uniform(0.75, 1.25), 3)


async def run_stage(deps: Deps, stage: str, import_id: UUID, generation: int) -> None:
    """Run ``stage`` of ``import_id`` for the job of ``generation`` (see module doc).

    The database may go away at any moment (a restart, a failover). When that
    stops the claim, the context or the recording of a failure, the stage is
    retried like any transient failure — its checkpoints make the rerun safe —
    rather than ending the job with nothing recorded and no job left to carry
    the import on.
    """
    try:
        await _run_stage(deps, stage, import_id, generation)
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        message = error_text(exc)
        logger.warning(
            "stage interrupted by a database error, retrying: %s",
            message,
            extra={"import_id": str(import_id), "stage": stage, "generation": generation},
        )
        raise StageRetry(message, max(1.0, backoff_seconds(deps.settings, 1))) from None


async def _run_stage(deps: Deps, stage: str, import_id: UUID, generation: int) -> None:
    try:
        claimed = await _claim(deps.pool, stage, import_id, generation)
    except (psycopg.OperationalError, psycopg.InterfaceError):
        raise
    except Exception as exc:
        await _claim_failed(deps, stage, import_id, generation, exc)
        return
    if claimed is None:
        logger.info(
            "stage skipped: job is stale or the stage is already done",
            extra={"import_id": str(import_id), "stage": stage, "generation": generation},
        )
        return
    imp, attempt = claimed
    log_extra: dict[str, Any] = {"import_id": str(imp.id), "stage": stage, "attempt": attempt}
    started = time.monotonic()
    logger.info("stage started", extra=log_extra)
    try:
        ctx = await _context(deps, imp, stage, attempt)
        result = await STAGE_FUNCTIONS[stage](ctx)
        await _complete(deps.pool, imp, stage, result)
    except StaleJob:
        logger.info("stage stopped: the import was requeued or cancelled", extra=log_extra)
        return
    except asyncio.CancelledError:
        logger.warning("stage interrupted (abort or shutdown)", extra=log_extra)
        raise
    except Exception as exc:
        await _handle_failure(deps, imp, stage, attempt, exc, log_extra)
    else:
        log_extra["duration_s"] = round(time.monotonic() - started, 3)
        if result.reschedule_in is not None:
            logger.info("stage parked; next check in %ss", result.reschedule_in, extra=log_extra)
            return
        logger.info("stage done", extra=log_extra)
        if result.after_commit is not None:
            try:
                await result.after_commit()
            except Exception as exc:
                logger.warning("after-commit step failed: %s", error_text(exc), extra=log_extra)
        if next_stage(stage) is None:
            shutil.rmtree(workdir_for(deps.settings, imp.id), ignore_errors=True)


async def _handle_failure(
    deps: Deps,
    imp: ImportRow,
    stage: str,
    attempt: int,
    exc: Exception,
    log_extra: dict[str, Any],
) -> None:
    message = error_text(exc)
    permanent = isinstance(exc, BadInput)
    final = permanent or attempt >= deps.settings.max_attempts
    if isinstance(exc, StageError):
        logger.error("stage failed: %s", message, extra=log_extra)
    else:
        logger.error("stage failed: %s", message, extra=log_extra, exc_info=exc)
    recorded = await _record_failure(deps.pool, imp, stage, message, final=final)
    if not recorded:
        return  # requeued or cancelled meanwhile: the new run owns the import
    if final:
        shutil.rmtree(workdir_for(deps.settings, imp.id), ignore_errors=True)
        await notify.alert(
            deps.settings,
            {
                "event": "import_failed",
                "import_id": str(imp.id),
                "user_id": str(imp.user_id),
                "stage": stage,
                "attempts": attempt,
                "error": message,
            },
        )
        raise StageFailed(f"{stage}: {message}") from None
    raise StageRetry(message, backoff_seconds(deps.settings, attempt)) from None


async def _claim(
    pool: AsyncConnectionPool[Conn], stage: str, import_id: UUID, generation: int
) -> tuple[ImportRow, int] | None:
    async with pool.connection() as conn, conn.transaction():
        row = await (
            await conn.execute(
                queries.CLAIM_STAGE,
                {"import_id": import_id, "generation": generation, "stage": stage},
            )
        ).fetchone()
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
        lease=row["lease"],
    )
    return imp, int(row["attempts"])


async def _claim_failed(
    deps: Deps, stage: str, import_id: UUID, generation: int, exc: Exception
) -> None:
    """A claim that raised (not a lost connection): count it, never leave the import pending."""
    message = error_text(exc)
    log_extra = {"import_id": str(import_id), "stage": stage, "generation": generation}
    logger.error("claiming the stage failed: %s", message, extra=log_extra, exc_info=exc)
    async with deps.pool.connection() as conn, conn.transaction():
        row = await (
            await conn.execute(
                queries.CLAIM_FAILED,
                {
                    "import_id": import_id,
                    "generation": generation,
                    "stage": stage,
                    "error": message,
                    "max_attempts": deps.settings.max_attempts,
                },
            )
        ).fetchone()
        if row is None:
            return  # requeued or cancelled meanwhile
        if row["final"]:
            await conn.execute(
                queries.MIRROR_PROFILE,
                {"user_id": row["user_id"], "status": "failed", "error": f"{stage}: {message}"},
            )
    if row["final"]:
        await notify.alert(
            deps.settings,
            {
                "event": "import_failed",
                "import_id": str(import_id),
                "user_id": str(row["user_id"]),
                "stage": stage,
                "attempts": row["attempts"],
                "error": message,
            },
        )
        raise StageFailed(f"{stage}: {message}")
    raise StageRetry(message, backoff_seconds(deps.settings, int(row["attempts"])))


async def _context(deps: Deps, imp: ImportRow, stage: str, attempt: int) -> StageContext:
    async with deps.pool.connection() as conn:
        rows = await (await conn.execute(queries.STAGE_OUTPUTS, {"import_id": imp.id})).fetchall()
    outputs = {r["stage"]: dict(r["output"] or {}) for r in rows}
    try:
        options = deps.settings.options.merged(imp.options)
    except InvalidOptions as exc:
        raise BadInput(str(exc)) from None
    pool = deps.pool
    key = imp.fence(stage)

    async def report_progress(done: int, total: int | None) -> None:
        async with pool.connection() as conn:
            await conn.execute(queries.SET_PROGRESS, {**key, "done": done, "total": total})

    async def record_usage(usage: Usage) -> None:
        if not (usage.input_tokens or usage.output_tokens):
            return
        async with pool.connection() as conn:
            await conn.execute(
                queries.ADD_USAGE,
                {**key, "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens},
            )

    async def ensure_current() -> None:
        async with pool.connection() as conn:
            row = await (await conn.execute(queries.IS_CURRENT, key)).fetchone()
        if row is None:
            raise StaleJob()

    workdir = workdir_for(deps.settings, imp.id)
    workdir.mkdir(parents=True, exist_ok=True)
    return StageContext(
        imp=imp,
        stage=stage,
        attempt=attempt,
        settings=deps.settings,
        pool=deps.pool,
        llm=deps.llm,
        outputs=outputs,
        workdir=workdir,
        report_progress=report_progress,
        record_usage=record_usage,
        ensure_current=ensure_current,
        options=options,
    )


async def _complete(
    pool: AsyncConnectionPool[Conn], imp: ImportRow, stage: str, result: StageResult
) -> None:
    if result.reschedule_in is not None:
        await _reschedule(pool, imp, stage, result)
        return
    nxt = next_stage(stage)
    async with pool.connection() as conn, conn.transaction():
        if result.commit is not None:
            await result.commit(conn)  # may fill in result's output and counts
        counts = {
            "conversation_count": result.conversation_count,
            "chunk_count": result.chunk_count,
            "fact_count": result.fact_count,
        }
        current = await (await conn.execute(queries.LOCK_CURRENT, imp.fence(stage))).fetchone()
        if current is None:
            raise StaleJob()  # rolls back the stage's writes too
        await conn.execute(
            queries.FINISH_STAGE,
            {"import_id": imp.id, "stage": stage, "output": Jsonb(result.output)},
        )
        if nxt is None:
            await conn.execute(queries.COMPLETE_IMPORT, {"import_id": imp.id, **counts})
        else:
            await conn.execute(
                queries.ADVANCE_IMPORT, {"import_id": imp.id, "next_stage": nxt, **counts}
            )
            await conn.execute(
                queries.DEFER_STAGE,
                {"import_id": imp.id, "stage": nxt, "generation": imp.generation},
            )


async def _reschedule(
    pool: AsyncConnectionPool[Conn], imp: ImportRow, stage: str, result: StageResult
) -> None:
    """Park the stage: save its progress and defer the same stage for later.

    Used while waiting on work done elsewhere (a Message Batch): no worker slot
    is held meanwhile, and the wait does not count as an attempt.
    """
    async with pool.connection() as conn, conn.transaction():
        current = await (await conn.execute(queries.LOCK_CURRENT, imp.fence(stage))).fetchone()
        if current is None:
            raise StaleJob()
        await conn.execute(
            queries.PARK_STAGE,
            {"import_id": imp.id, "stage": stage, "output": Jsonb(result.output)},
        )
        await conn.execute(
            queries.DEFER_STAGE_LATER,
            {
                "import_id": imp.id,
                "stage": stage,
                "generation": imp.generation,
                "delay": result.reschedule_in,
            },
        )


async def _record_failure(
    pool: AsyncConnectionPool[Conn], imp: ImportRow, stage: str, message: str, *, final: bool
) -> bool:
    async with pool.connection() as conn, conn.transaction():
        row = await (
            await conn.execute(
                queries.FAIL_STAGE, {**imp.fence(stage), "error": message, "final": final}
            )
        ).fetchone()
        if row is None:
            return False
        if final:
            await conn.execute(
                queries.MIRROR_PROFILE,
                {"user_id": imp.user_id, "status": "failed", "error": f"{stage}: {message}"},
            )
    return True
