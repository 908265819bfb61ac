"""The ``offline`` provider: deterministic rules instead of a language model.

Why it exists: anyone can run the whole pipeline end to end (``make demo``,
the test suite, a laptop without an API key) and get a plausible MEMORY and
persona from their own export. It is honest about what it is: its ``model``
is ``offline-rules-v1``, which the pipeline records as the model used. Facts
come from the fact rules (:mod:`jobs.domain.rules`), MEMORY and the persona
sections from templates (:mod:`worker.llm.offline.persona`).
"""

from __future__ import annotations

from jobs.domain.facts import Facts
from jobs.domain.rules import consolidate, extract
from jobs.domain.sections import Sections
from worker.llm.base import ExtractionInput, LLMResult, Usage
from worker.llm.offline.persona import MODEL, write_memory, write_sections

__all__ = ["MODEL", "OfflineProvider"]


def _usage(prompt: str, answer: str) -> Usage:
    """Plausible token accounting (~4 characters a token) so progress and totals read true."""
    return Usage(input_tokens=len(prompt) // 4, output_tokens=len(answer) // 4, calls=1)


class OfflineProvider:
    """:class:`~worker.llm.base.LLMProvider` by rules: no network, same input, same output."""

    def __init__(self) -> None:
        self.model: str = MODEL

    async def extract_facts(self, item: ExtractionInput) -> LLMResult[Facts]:
        facts = extract(item.transcript, item.conversation_date)
        return LLMResult(facts, _usage(item.transcript, facts.model_dump_json()), self.model)

    async def consolidate(self, facts: Facts) -> LLMResult[Facts]:
        out = consolidate(facts)
        return LLMResult(out, _usage(facts.model_dump_json(), out.model_dump_json()), self.model)

    async def write_memory(self, facts: Facts) -> LLMResult[str]:
        text = write_memory(facts)
        return LLMResult(text, _usage(facts.model_dump_json(), text), self.model)

    async def write_sections(self, memory: str, samples: list[str]) -> LLMResult[Sections]:
        sections = write_sections(memory, samples)
        prompt = memory + "".join(samples)
        return LLMResult(sections, _usage(prompt, sections.model_dump_json()), self.model)

    async def aclose(self) -> None:
        """Nothing to release: no client, no connection."""
