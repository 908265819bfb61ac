"""The queue wiring: one procrastinate task per stage, and one for the lanes
of a fanned-out stage, on the ``imports`` queue.

Each task is a thin shim over :func:`worker.runner.run_stage` (or
:func:`~worker.runner.run_lane`). Jobs are
deferred by SQL (``public.fullpass_defer``: the insert trigger, a finishing
stage, ``requeue_import``), never from Python, so the app only ever inserts a
row. The retry strategy turns :class:`~worker.runner.StageRetry` into a
delayed retry and retries jobs interrupted by a worker shutdown at once;
everything else is final (the runner has already recorded it).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import procrastinate
from procrastinate import JobContext, RetryDecision
from procrastinate.exceptions import JobAborted
from procrastinate.jobs import Job
from procrastinate.retry import BaseRetryStrategy

from worker import runner
from worker.queue import FullpassJobManager
from worker.stages import LANE_TASK, QUEUE, STAGES, task_name


def utcnow() -> datetime:
    return datetime.now(UTC)


class StageRetryStrategy(BaseRetryStrategy):
    def get_retry_decision(self, *, exception: BaseException, job: Job) -> RetryDecision | None:
        if isinstance(exception, runner.StageRetry):
            return RetryDecision(retry_at=utcnow() + timedelta(seconds=exception.delay))
        if isinstance(exception, JobAborted):
            return RetryDecision(retry_at=utcnow())  # only asked for shutdown aborts
        return None


#: The process's stage dependencies, installed by the worker before it runs jobs.
_deps: runner.Deps | None = None


def install(deps: runner.Deps) -> None:
    global _deps
    _deps = deps


def _stage_task(stage: str) -> Any:
    async def run(context: JobContext, import_id: str, generation: int) -> None:
        if _deps is None:
            raise RuntimeError("worker dependencies are not installed")
        await runner.run_stage(
            _deps, stage, UUID(import_id), int(generation), job_id=context.job.id
        )

    run.__name__ = f"stage_{stage}"
    run.__doc__ = f"Run the ``{stage}`` stage of one import."
    return run


async def run_lane(
    context: JobContext, import_id: str, generation: int, stage: str, lane: int
) -> None:
    """Run one lane of a fanned-out stage of one import."""
    if _deps is None:
        raise RuntimeError("worker dependencies are not installed")
    await runner.run_lane(
        _deps, stage, UUID(import_id), int(generation), int(lane), job_id=context.job.id
    )


def build_app() -> procrastinate.App:
    """A procrastinate app with every stage task registered (the pool is given at open)."""
    app = procrastinate.App(connector=procrastinate.PsycopgConnector())
    # Jobs are fetched by fullpass's own fetch (a worker runs one lane of each stage of an
    # import at a time).
    app.job_manager = FullpassJobManager(app.connector)
    for stage in STAGES:
        app.task(
            name=task_name(stage),
            queue=QUEUE,
            pass_context=True,
            retry=StageRetryStrategy(),
        )(_stage_task(stage))
    app.task(name=LANE_TASK, queue=QUEUE, pass_context=True, retry=StageRetryStrategy())(run_lane)
    return app
