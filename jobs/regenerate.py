"""Stage ``regenerate``: the five persona sections, from MEMORY plus a sample.

The sample is the ~200 most informative conversations (long, recent, dense
in facts), each condensed to the user's words with a little assistant context,
and cut so that MEMORY, the sample and the answer fit the model's context
window with room to spare (tokens estimated conservatively at 4 chars/token,
with a 15 % margin).
"""

from __future__ import annotations

from typing import Any

from jobs.context import StageContext, StageResult
from jobs.domain.sections import SECTION_NAMES, Sections
from jobs.extract import condense_transcript
from worker import queries

RESERVED_TOKENS = 16_000  # system prompt, instructions and the answer
SAFETY = 0.85


def sample_budget_chars(memory_md: str, window: int) -> int:
    memory_tokens = len(memory_md) // 4 + 1
    return max(0, int((window - RESERVED_TOKENS - memory_tokens) * SAFETY) * 4)


async def regenerate(ctx: StageContext) -> StageResult:
    memory_md: str = ctx.outputs.get("memory", {}).get("memory_md", "")
    tier = ctx.outputs.get("extract", {}).get("tier", "medium")
    limit = ctx.options.sample_conversations
    window = ctx.options.context_window_tokens
    samples = await _samples(ctx, tier, limit, sample_budget_chars(memory_md, window))
    await ctx.ensure_current()
    result = await ctx.llm.write_sections(memory_md, samples)
    await ctx.record_usage(result.usage)
    sections = result.value
    rendered = render_sections(sections)
    await ctx.report_progress(1, 1)
    return StageResult(
        output={
            "sections": sections.model_dump(),
            "markdown": rendered,
            "soulprint_text": soulprint(rendered, memory_md),
            "sampled_conversations": len(samples),
            "sample_chars": sum(len(s) for s in samples),
            "model": result.model or ctx.llm.model,
        }
    )


def render_sections(sections: Sections) -> dict[str, str]:
    return {name: getattr(sections, name).to_markdown(name) for name in SECTION_NAMES}


def soulprint(rendered: dict[str, str], memory_md: str) -> str:
    """All sections, then MEMORY: the text the app gives the assistant as its context."""
    parts = [rendered[name].strip() for name in SECTION_NAMES]
    parts.append(memory_md.strip())
    return "\n\n".join(p for p in parts if p) + "\n"


async def _samples(ctx: StageContext, tier: str, limit: int, budget_chars: int) -> list[str]:
    async with ctx.pool.connection() as conn:
        ranked = await (
            await conn.execute(
                queries.CONVERSATION_SCORES,
                {"import_id": ctx.imp.id, "tier": tier, "limit": limit},
            )
        ).fetchall()
        if not ranked:
            return []
        ids = [r["conversation_id"] for r in ranked]
        rows = await (
            await conn.execute(
                queries.CONVERSATION_TEXT,
                {"import_id": ctx.imp.id, "tier": tier, "conversation_ids": ids},
            )
        ).fetchall()
    texts: dict[str, list[str]] = {}
    for row in rows:
        texts.setdefault(row["conversation_id"], []).append(row["content"])
    per_conversation = max(200, budget_chars // len(ranked))
    samples: list[str] = []
    used = 0
    for r in ranked:
        body = condense_transcript("\n".join(texts.get(r["conversation_id"], [])))
        if not body:
            continue
        sample = _header(r) + body[:per_conversation]
        if used + len(sample) > budget_chars:
            break
        samples.append(sample)
        used += len(sample)
    return samples


def _header(row: dict[str, Any]) -> str:
    when = row["created_at"].date().isoformat() if row["created_at"] else "undated"
    return f"### {row['title'] or 'Untitled'} ({when})\n"
