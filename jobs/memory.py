"""Stage ``memory``: one model call turns the reduced facts into MEMORY markdown.

MEMORY always has exactly the five sections (an empty one says "No data
yet."). When the call keeps failing, a minimal MEMORY is rendered from the
facts instead and the failure is recorded in the checkpoint: the pass still
completes with everything the facts hold. MEMORY is published to the profile
(``user_profiles.memory_md``) in the transaction that finishes the stage.
"""

from __future__ import annotations

import logging

from jobs.context import PublishMemory, StageContext, StageResult
from jobs.domain.memory import fallback_memory, normalise_memory
from jobs.outputs import MemoryOutput, ReduceOutput
from jobs.reduce import facts_from_reduced
from worker.llm.base import LLMError
from worker.redact import error_text

logger = logging.getLogger("fullpass.memory")


async def memory(ctx: StageContext) -> StageResult:
    facts = facts_from_reduced(ctx.outputs.get(ReduceOutput).facts)
    try:
        await ctx.store.ensure_current()
        result = await ctx.llm.write_memory(facts)
    except LLMError as exc:
        message = error_text(exc)
        logger.warning(
            "MEMORY call failed, writing the fallback MEMORY: %s",
            message,
            extra={"import_id": str(ctx.imp.id), "stage": ctx.stage},
        )
        await ctx.store.record_usage(exc.usage)
        await ctx.store.report_progress(1, 1)
        return _published(
            ctx,
            MemoryOutput(
                memory_md=fallback_memory(facts), fallback=True, error=message, model=None
            ),
        )
    await ctx.store.record_usage(result.usage)
    await ctx.store.report_progress(1, 1)
    return _published(
        ctx,
        MemoryOutput(
            memory_md=normalise_memory(result.value, facts),
            fallback=False,
            model=result.model or ctx.llm.model,
        ),
    )


def _published(ctx: StageContext, output: MemoryOutput) -> StageResult:
    """MEMORY goes to the profile when the stage finishes: new data, nothing of v1 at risk,
    and the user keeps it even if the sections fail later."""
    return StageResult(output, writes=[PublishMemory(ctx.imp.user_id, output.memory_md)])
