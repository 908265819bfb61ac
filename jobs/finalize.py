"""Stage ``finalize``: publish the v2 profile, all at once.

Sections, MEMORY, soulprint text and status land in the profile in the same
transaction that completes the import, so the app sees the v1 profile until the
whole pass has succeeded and the v2 profile after, never a mix. The completion
callback is called after that transaction, best-effort.
"""

from __future__ import annotations

from jobs.context import PublishProfile, StageContext, StageResult
from jobs.outputs import ChunkOutput, FinalizeOutput, MemoryOutput, ReduceOutput, RegenerateOutput
from worker import notify


async def finalize(ctx: StageContext) -> StageResult:
    regenerated = ctx.outputs.get(RegenerateOutput)
    memory_md = ctx.outputs.get(MemoryOutput).memory_md
    chunked = ctx.outputs.get(ChunkOutput)
    reduced = ctx.outputs.get(ReduceOutput)
    publish = PublishProfile(
        user_id=ctx.imp.user_id,
        sections_md=dict(regenerated.markdown),
        soulprint_text=regenerated.soulprint_text,
        memory_md=memory_md,
    )

    async def after_commit() -> None:
        await notify.completed(
            ctx.settings,
            {
                "event": "import_complete",
                "import_id": str(ctx.imp.id),
                "user_id": str(ctx.imp.user_id),
                "conversation_count": chunked.conversations,
                "chunk_count": chunked.chunks,
                "fact_count": reduced.fact_count,
            },
        )

    await ctx.store.report_progress(1, 1)
    return StageResult(
        FinalizeOutput(published=True, memory_chars=len(memory_md)),
        writes=[publish],
        after_commit=after_commit,
    )
