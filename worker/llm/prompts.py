"""Prompt texts, tool schemas and user-message builders for the Claude provider.

Kept apart from the provider so the wording can be reviewed (and diffed) on its
own, and so the fake Messages API in the tests can rely on the same conventions
(the XML-ish tags below) that a real model sees. The system prompts are static
strings on purpose: a byte-identical system prompt is what makes prompt caching
hit across thousands of extraction calls.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any, Final

from jobs.domain import facts, sections
from jobs.domain.facts import MEMORY_SECTIONS, Facts
from jobs.domain.memory import NO_DATA
from jobs.domain.sections import SECTION_PURPOSE
from worker.llm.base import ExtractionInput

RECORD_FACTS: Final = "record_facts"
WRITE_SECTIONS: Final = "write_sections"

#: Tags that delimit the variable part of each user message. The fake server
#: classifies requests by them, so change both together.
TRANSCRIPT_TAG: Final = "transcript"
FACTS_TAG: Final = "facts"
MEMORY_TAG: Final = "memory"
CONVERSATION_TAG: Final = "conversation"

RECORD_FACTS_TOOL: Final[dict[str, Any]] = {
    "name": RECORD_FACTS,
    "description": "Record the durable facts about the user. Call it exactly once, with every "
    "category present; use an empty array for a category with nothing to record.",
    "input_schema": facts.tool_schema(),
}

WRITE_SECTIONS_TOOL: Final[dict[str, Any]] = {
    "name": WRITE_SECTIONS,
    "description": "Write the five persona sections. Call it exactly once with all five.",
    "input_schema": sections.tool_schema(),
}

EXTRACTION_SYSTEM: Final = f"""\
You extract durable facts about a person (the user) from an excerpt of their chat history \
with an AI assistant. The facts feed a long-term memory, so precision matters more than recall.

The excerpt is a transcript inside <{TRANSCRIPT_TAG}> tags. Each turn starts with its speaker:
- "User:" lines are written by the user. They are your main source.
- "Assistant:" lines are the AI's replies. Use them only to understand what the user said; \
never record something merely because the assistant said or suggested it.
- "Saved memory:" lines are facts the assistant saved about the user earlier, and \
"Custom instructions:" lines are what the user told the assistant about themselves and how to \
answer. Both are high-value: record every durable fact in them.

Rules:
1. Record only facts the user states explicitly or strongly implies about themselves, their \
life, work, projects and choices. Do not infer personality from topic choice; do not record \
facts about other people unless they matter to the user (e.g. a child's birthday).
2. Record only durable facts: things likely to still be true and useful in months. Skip small \
talk, greetings, one-off questions and tasks ("help me fix this regex"), hypotheticals, \
role-play, quoted or pasted text written by others, and anything the user asks about without \
saying it applies to them.
3. Write each fact as one clear, self-contained sentence in the third person ("Prefers \
short bullet-point answers.", "Believes users should own their data."), keeping names, \
numbers and specifics.
4. Include dates when known. The conversation date is given (when the excerpt holds several \
conversations, each starts with a "System: new conversation [c1] ..." line giving its id, title \
and date); use it to resolve relative dates ("next Friday", "last year") and put it in a \
decision's context when the timing matters. When there are several conversations, give every \
fact the id(s) of the conversation(s) that state it in its "sources" (a fact merged from two \
conversations gets both ids); with a single conversation, leave "sources" empty.
5. Categories: preferences (likes, dislikes, habits, how they want things done), projects \
(what they build, run or work on, with name, description and details), dates (event and \
date), beliefs (values and convictions), decisions (what they chose and why).
6. Do not repeat the same fact in two categories. Never invent facts.
7. If nothing qualifies, return empty arrays. An empty result is normal and correct for \
small talk.

Answer only by calling the {RECORD_FACTS} tool once."""

CONSOLIDATION_SYSTEM: Final = f"""\
You consolidate facts about one person (the user) that were extracted from many separate \
conversations. The facts are JSON inside <{FACTS_TAG}> tags, in the five categories \
preferences, projects, dates, beliefs and decisions. Items may carry a date in brackets, the \
date of the conversation they came from.

Rules:
1. Merge duplicates and near-duplicates into one fact, keeping the most specific wording and \
every distinct detail (names, numbers, dates).
2. When facts contradict, the most recent one wins. Where the change itself matters, keep it \
as "Previously X, now Y." (for example a switched tech stack or a moved date).
3. Merge all entries for the same project into one project with combined details.
4. Drop facts that are not durable (one-off tasks, small talk) and facts about someone other \
than the user that do not matter to the user.
5. Keep one clear sentence per fact, third person. Never invent facts, never drop a distinct \
durable fact just to be shorter.

Answer only by calling the {RECORD_FACTS} tool once, with the consolidated facts."""

_MEMORY_HEADINGS: Final = "\n".join(f"## {name}" for name in MEMORY_SECTIONS)

MEMORY_SYSTEM: Final = f"""\
You write MEMORY, a curated long-term memory document about one person (the user) that an AI \
assistant reads before every conversation with them. The input is the user's consolidated \
facts as JSON inside <{FACTS_TAG}> tags.

Write GitHub-flavoured markdown with exactly these five sections, in this order, and no \
other level-2 headings:
{_MEMORY_HEADINGS}

Rules:
- Start directly with "## {MEMORY_SECTIONS[0]}". No title, preamble or closing remarks.
- Under each heading, write concise bullet points (you may group related bullets under \
"###" subheadings). Put the most important and most recent facts first.
- A section with no facts contains exactly the line "{NO_DATA}".
- Projects: one bullet or subsection per project with its name in bold, what it is and the \
key details. Important Dates: the date first (as precise as known), then the event. \
Decisions & Context: the decision, then why and when.
- Where a fact changed over time, say so ("Previously X, now Y").
- Use only the given facts; do not invent, speculate or add advice.
- Target 1,000 to 5,000 tokens: merge trivia, but keep every distinct durable fact. If there \
are few facts, write a short document; never pad."""

SECTIONS_SYSTEM: Final = f"""\
You write a persona profile of one person (the user) for an AI assistant, in five sections:
- soul: {SECTION_PURPOSE["soul"]}
- identity: {SECTION_PURPOSE["identity"]}
- user: {SECTION_PURPOSE["user"]}
- agents: {SECTION_PURPOSE["agents"]}
- tools: {SECTION_PURPOSE["tools"]}

You get the user's MEMORY document (curated facts, inside <{MEMORY_TAG}> tags) and excerpts of \
their most informative conversations (inside <{CONVERSATION_TAG}> tags). Treat MEMORY as the \
source of truth for facts; use the excerpts for voice, style, recurring themes, how they like \
to be answered and which tools they actually use. Only "User:" turns describe the user.

Each section has a title, a summary of two to four sentences and five to twelve concrete \
points. Be specific (names, technologies, habits) rather than generic; never invent facts; \
write about the user in the third person, except agents, which addresses the assistant \
directly ("Answer in short bullet points.").

Answer only by calling the {WRITE_SECTIONS} tool once, with all five sections."""


#: Raised by hand when the extraction changes in a way the texts below do not
#: show (how transcripts are condensed or packed, how answers are parsed).
EXTRACTION_REVISION: Final = 1


def _extraction_digest() -> str:
    probe = ExtractionInput("c", "c", "\x00title", "\x00transcript", None)
    text = json.dumps(
        [EXTRACTION_SYSTEM, RECORD_FACTS_TOOL, extraction_message(probe)], sort_keys=True
    )
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def extraction_message(item: ExtractionInput) -> str:
    """The user turn of one extraction call: metadata, then the transcript in tags."""
    when = item.conversation_date.isoformat() if item.conversation_date else "unknown"
    title = item.title.strip() or "(untitled)"
    return (
        f"Conversation title: {title}\n"
        f"Conversation date: {when}\n\n"
        f"<{TRANSCRIPT_TAG}>\n{item.transcript.strip()}\n</{TRANSCRIPT_TAG}>\n\n"
        f"Record the durable facts about the user with {RECORD_FACTS}."
    )


def facts_json(facts: Facts) -> str:
    """Compact, stable JSON of facts for a prompt (no indentation: tokens cost money)."""
    return json.dumps(facts.model_dump(mode="json"), ensure_ascii=False, separators=(",", ":"))


def consolidation_message(facts: Facts) -> str:
    return (
        f"<{FACTS_TAG}>\n{facts_json(facts)}\n</{FACTS_TAG}>\n\n"
        f"Consolidate these facts and record the result with {RECORD_FACTS}."
    )


def memory_message(facts: Facts) -> str:
    return (
        f"<{FACTS_TAG}>\n{facts_json(facts)}\n</{FACTS_TAG}>\n\n"
        "Write the MEMORY document now, starting with the first section heading."
    )


def sections_message(memory: str, samples: Sequence[str], *, budget_chars: int) -> str:
    """The user turn of the sections call, trimmed to ``budget_chars``.

    MEMORY goes in whole (it is bounded by its own prompt); the conversation
    excerpts share what is left fairly, so that one huge conversation cannot
    crowd out the others and the request always fits the context window.
    Excerpts are taken in the order given (the caller sorts them by value).
    """
    memory = memory.strip()
    if len(memory) > budget_chars // 2:
        memory = memory[: budget_chars // 2].rstrip() + "\n…"
    parts = [f"<{MEMORY_TAG}>\n{memory}\n</{MEMORY_TAG}>\n"]
    remaining = budget_chars - len(parts[0])
    kept = [s.strip() for s in samples if s.strip()]
    for index, sample in enumerate(kept):
        share = remaining // (len(kept) - index)
        if share < 400:
            break
        text = sample if len(sample) <= share else sample[: share - 2].rstrip() + "\n…"
        block = f'<{CONVERSATION_TAG} index="{index + 1}">\n{text}\n</{CONVERSATION_TAG}>\n'
        parts.append(block)
        remaining -= len(block)
    parts.append(f"\nWrite the five sections with {WRITE_SECTIONS}.")
    return "\n".join(parts)


def corrective_note(reason: str, tool: str | None) -> str:
    """Appended to the user turn when the previous answer could not be used."""
    how = (
        f"Answer only by calling the {tool} tool, with input that matches its schema exactly."
        if tool
        else f"Answer only with the markdown document, using the five '## ' headings "
        f"({', '.join(MEMORY_SECTIONS)})."
    )
    return f"Note: a previous answer to this request was unusable ({reason}). {how}"


#: The version of the extraction prompt a chunk's facts were extracted with
#: (``chunk_facts.prompt_version``): the instructions, the tool schema and the
#: message, digested, so that changing any of them changes it. A re-import
#: reuses earlier facts only when it is the same (with the same model).
EXTRACTION_PROMPT_VERSION: Final = f"x{EXTRACTION_REVISION}-{_extraction_digest()}"
