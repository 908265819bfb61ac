"""Stage ``finalize``: publish the v2 profile, all at once.

Sections, MEMORY, soulprint text and status land in the profile in the same
transaction that completes the import, so the app sees the v1 profile until the
whole pass has succeeded and the v2 profile after, never a mix. The completion
callback's event is written by that transaction too (:mod:`worker.outbox`).
"""

from __future__ import annotations

from jobs.context import PublishProfile, StageContext, StageResult
from jobs.outputs import FinalizeOutput, MemoryOutput, RegenerateOutput


async def finalize(ctx: StageContext) -> StageResult:
    regenerated = ctx.outputs.get(RegenerateOutput)
    memory_md = ctx.outputs.get(MemoryOutput).memory_md
    publish = PublishProfile(
        user_id=ctx.imp.user_id,
        sections_md=dict(regenerated.markdown),
        soulprint_text=regenerated.soulprint_text,
        memory_md=memory_md,
    )

    await ctx.store.report_progress(1, 1)
    return StageResult(
        FinalizeOutput(published=True, memory_chars=len(memory_md)),
        writes=[publish],
    )
