"""Stage ``finalize``: publish the pass, all at once.

In the transaction that completes the import: the pass's chunks replace the
user's in ``conversation_chunks`` (until then the app searched the old ones),
and the v2 sections (each the JSON object the app parses) and the soulprint
text replace the v1 profile. The app sees the v1 profile and the old chunks
until the whole pass has succeeded, and the new ones after, never a mix.
MEMORY was published when the memory stage finished. A pass that built no
memory (a small export) publishes its chunks only. The completion callback's
event is written by that transaction too (:mod:`worker.outbox`).
"""

from __future__ import annotations

from jobs.context import PublishPass, StageContext, StageResult
from jobs.domain.sections import SECTION_NAMES, Sections
from jobs.outputs import FinalizeOutput, MemoryOutput, RegenerateOutput


async def finalize(ctx: StageContext) -> StageResult:
    sections: dict[str, str] | None = None
    soulprint: str | None = None
    memory_chars = 0
    if ctx.outputs.skipped("regenerate") is None:
        regenerated = ctx.outputs.get(RegenerateOutput)
        validated = Sections.model_validate(regenerated.sections)
        sections = {name: getattr(validated, name).to_json() for name in SECTION_NAMES}
        soulprint = regenerated.soulprint_text
        memory_chars = len(ctx.outputs.get(MemoryOutput).memory_md)
    publish = PublishPass(
        user_id=ctx.imp.user_id,
        sections=sections,
        soulprint_text=soulprint,
        replace_app_chunks=ctx.settings.replace_app_chunks,
    )
    await ctx.store.report_progress(1, 1)
    return StageResult(FinalizeOutput(published=True, memory_chars=memory_chars), writes=[publish])
