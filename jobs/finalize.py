"""Stage ``finalize``: publish the v2 profile, all at once.

Sections, MEMORY, soulprint text and status land in the profile in the same
transaction that completes the import, so the app sees the v1 profile until the
whole pass has succeeded and the v2 profile after, never a mix. The completion
callback is called after that transaction, best-effort.
"""

from __future__ import annotations

from jobs.context import StageContext, StageResult
from worker import notify, queries
from worker.db import Conn


async def finalize(ctx: StageContext) -> StageResult:
    regenerated = ctx.outputs.get("regenerate", {})
    markdown: dict[str, str] = regenerated.get("markdown", {})
    memory_md: str = ctx.outputs.get("memory", {}).get("memory_md", "")
    chunk_out = ctx.outputs.get("chunk", {})
    fact_count = ctx.outputs.get("reduce", {}).get("fact_count")
    params = {
        "user_id": ctx.imp.user_id,
        "soul_md": markdown.get("soul"),
        "identity_md": markdown.get("identity"),
        "user_md": markdown.get("user"),
        "agents_md": markdown.get("agents"),
        "tools_md": markdown.get("tools"),
        "soulprint_text": regenerated.get("soulprint_text"),
        "memory_md": memory_md,
    }

    async def commit(conn: Conn) -> None:
        cursor = await conn.execute(queries.WRITE_PROFILE, params)
        if cursor.rowcount == 0:
            await conn.execute(queries.INSERT_PROFILE, params)

    async def after_commit() -> None:
        await notify.completed(
            ctx.settings,
            {
                "event": "import_complete",
                "import_id": str(ctx.imp.id),
                "user_id": str(ctx.imp.user_id),
                "conversation_count": chunk_out.get("conversations"),
                "chunk_count": chunk_out.get("chunks"),
                "fact_count": fact_count,
            },
        )

    await ctx.report_progress(1, 1)
    return StageResult(
        output={"published": True, "memory_chars": len(memory_md)},
        conversation_count=chunk_out.get("conversations"),
        chunk_count=chunk_out.get("chunks"),
        fact_count=fact_count,
        commit=commit,
        after_commit=after_commit,
    )
