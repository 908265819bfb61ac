"""Stage ``regenerate``: the five persona sections, from MEMORY plus a sample.

The sample is the ~200 most informative conversations (long, recent, dense
in facts), each condensed to the user's words with a little assistant context
(long pastes cut, as for the map step), and cut to ``sample_tokens`` (an
option: the excerpts are there for the user's voice and habits, MEMORY holds
the facts) and so that MEMORY, the sample and the answer fit the model's
context window with room to spare (tokens estimated conservatively at 4
chars/token, with a 15 % margin).
"""

from __future__ import annotations

from jobs.context import StageContext, StageResult
from jobs.domain.sections import SECTION_NAMES, soulprint_text
from jobs.domain.transcript import condense_transcript
from jobs.outputs import ExtractOutput, MemoryOutput, RegenerateOutput
from worker.store import ScoredConversation

RESERVED_TOKENS = 16_000  # system prompt, instructions and the answer
SAFETY = 0.85


def sample_budget_chars(memory_md: str, window: int) -> int:
    memory_tokens = len(memory_md) // 4 + 1
    return max(0, int((window - RESERVED_TOKENS - memory_tokens) * SAFETY) * 4)


async def regenerate(ctx: StageContext) -> StageResult:
    memory_md = ctx.outputs.get(MemoryOutput).memory_md
    tier = ctx.outputs.get(ExtractOutput).tier
    budget = min(
        sample_budget_chars(memory_md, ctx.options.context_window_tokens),
        ctx.options.sample_tokens * 4,
    )
    conversations = await ctx.store.sample_conversations(tier, ctx.options.sample_conversations)
    samples = condensed_samples(conversations, budget, paste_chars=ctx.options.paste_chars)
    await ctx.store.ensure_current()
    result = await ctx.llm.write_sections(memory_md, samples)
    await ctx.store.record_usage(result.usage)
    sections = result.value
    await ctx.store.report_progress(1, 1)
    return StageResult(
        RegenerateOutput(
            sections=sections.model_dump(),
            markdown={name: getattr(sections, name).to_markdown(name) for name in SECTION_NAMES},
            soulprint_text=soulprint_text(sections, memory_md),
            sampled_conversations=len(samples),
            sample_chars=sum(len(s) for s in samples),
            model=result.model or ctx.llm.model,
        )
    )


def condensed_samples(
    conversations: list[ScoredConversation], budget_chars: int, *, paste_chars: int = 0
) -> list[str]:
    """Each conversation condensed to the user's words, cut to a fair share of the budget."""
    if not conversations:
        return []
    per_conversation = max(200, budget_chars // len(conversations))
    samples: list[str] = []
    used = 0
    for conv in conversations:
        body = condense_transcript(
            "\n".join(conv.contents), paste_chars=paste_chars, enough=per_conversation
        )
        if not body:
            continue
        when = conv.created_at.date().isoformat() if conv.created_at else "undated"
        sample = f"### {conv.title or 'Untitled'} ({when})\n" + body[:per_conversation]
        if used + len(sample) > budget_chars:
            break
        samples.append(sample)
        used += len(sample)
    return samples
