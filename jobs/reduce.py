"""Stage ``reduce``: merge every chunk's facts into one deduplicated set.

Facts carry the date of their conversation and the chunk(s) they came from.
Exact and normalised duplicates collapse into one fact whose ``sources`` list
every chunk that stated it. Where two facts are about the same thing (a project
of the same name, an event of the same name, "X over Y" against "Y over X"),
the most recent wins and keeps what it replaced as ``previously``. Only when
the merged facts are still too large for one MEMORY call (150K tokens by
default) does the model consolidate them, in ~50K-token batches, recursively.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from jobs.context import StageContext, StageResult
from jobs.domain.facts import (
    BY_KEY,
    CATEGORIES,
    Category,
    Facts,
    Item,
    fields_of,
    normalise,
    subject_of,
    text_of,
    with_note,
)
from jobs.outputs import ReduceOutput

MAX_ROUNDS = 6


@dataclass(slots=True)
class Fact:
    """One reduced fact with its provenance."""

    category: Category
    item: Item
    #: The date of the conversation that stated it (ISO), for "most recent wins".
    date: str | None
    sources: list[str] = field(default_factory=list)
    previously: list[str] = field(default_factory=list)
    #: ``normalise(self.text())``, once asked for (a fact stated in thousands of
    #: chunks is compared with each of them).
    _normalised: str | None = field(default=None, repr=False, compare=False)

    def text(self) -> str:
        return text_of(self.item)

    def normalised(self) -> str:
        if self._normalised is None:
            self._normalised = normalise(self.text())
        return self._normalised

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {**fields_of(self.item), "as_of": self.date, "sources": self.sources}
        if self.previously:
            out["previously"] = self.previously
        return out


class FactSet:
    """Facts keyed by what they are about; adding a fact merges or supersedes."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[str, str], Fact] = {}
        #: Each fact's sources as an ordered set (merging appends in place:
        #: a fact stated in every chunk gathers thousands).
        self._sources: dict[tuple[str, str], dict[str, None]] = {}

    def __len__(self) -> int:
        return len(self._by_key)

    def add(self, fact: Fact) -> None:
        key = (fact.category.key, subject_of(fact.item))
        old = self._by_key.get(key)
        if old is None:
            self._by_key[key] = fact
            self._sources[key] = dict.fromkeys(fact.sources)
            return
        same = old.normalised() == fact.normalised()
        newer, older = (fact, old) if (fact.date or "") >= (old.date or "") else (old, fact)
        # Sources read oldest first, each once.
        if newer is fact:
            self._sources[key].update(dict.fromkeys(fact.sources))
        else:
            self._sources[key] = {**dict.fromkeys(fact.sources), **self._sources[key]}
        previously = list(dict.fromkeys([*older.previously, *newer.previously]))
        if not same and older.text() not in previously:
            previously.append(older.text())
        self._by_key[key] = Fact(
            newer.category,
            newer.item,
            newer.date,
            [],
            [p for p in previously if normalise(p) != newer.normalised()],
            newer.normalised(),
        )

    def facts(self) -> list[Fact]:
        order = {c.key: i for i, c in enumerate(CATEGORIES)}
        merged = [replace(f, sources=list(self._sources[k])) for k, f in self._by_key.items()]
        return sorted(merged, key=lambda f: (order[f.category.key], f.date or ""))

    def to_json(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {c.key: [] for c in CATEGORIES}
        for fact in self.facts():
            out[fact.category.key].append(fact.as_json())
        return out

    def to_facts(self) -> Facts:
        """The plain fact JSON (what the model sees), with "previously" folded in."""

        def annotated(f: Fact) -> Item:
            note = f" (previously: {'; '.join(f.previously)})" if f.previously else ""
            when = f" [{f.date}]" if f.date else ""
            return with_note(f.item, note, when)

        return Facts.of((f.category, annotated(f)) for f in self.facts())

    def tokens(self) -> int:
        return len(json.dumps(self.to_facts().model_dump())) // 4 + 1


def facts_from_json(facts: Facts, *, date: str | None, source: str | None) -> list[Fact]:
    """Flatten one extraction answer into provenance-carrying facts (empty ones dropped)."""
    sources = [source] if source else []
    out = []
    for category, item in facts.items():
        normalised = normalise(text_of(item))
        if normalised:
            out.append(Fact(category, item, date, list(sources), [], normalised))
    return out


async def reduce(ctx: StageContext) -> StageResult:
    facts = FactSet()
    n_chunks = 0
    async for row in ctx.store.chunk_facts():
        n_chunks += 1
        when = row.created_at.date().isoformat() if row.created_at else None
        for fact in facts_from_json(row.facts, date=when, source=row.chunk_id):
            facts.add(fact)
    merged = len(facts)
    rounds = 0
    while facts.tokens() > ctx.options.reduce_max_tokens and rounds < MAX_ROUNDS:
        rounds += 1
        smaller = await _consolidate(ctx, facts, ctx.options.reduce_batch_tokens)
        if len(smaller) >= len(facts):
            break  # the model no longer shrinks the set: stop rather than loop
        facts = smaller
        await ctx.store.ensure_current()
    await ctx.store.report_progress(1, 1)
    return StageResult(
        ReduceOutput(
            facts=facts.to_json(),
            fact_count=len(facts),
            merged_from_chunks=n_chunks,
            after_dedup=merged,
            consolidation_rounds=rounds,
            tokens=facts.tokens(),
        )
    )


async def _consolidate(ctx: StageContext, facts: FactSet, batch_tokens: int) -> FactSet:
    """One round of model consolidation over batches of ~``batch_tokens``."""
    batches: list[list[Fact]] = [[]]
    size = 0
    for fact in facts.facts():
        cost = len(json.dumps(fields_of(fact.item))) // 4 + 8
        if size + cost > batch_tokens and batches[-1]:
            batches.append([])
            size = 0
        batches[-1].append(fact)
        size += cost
    out = FactSet()
    for i, batch in enumerate(batches, 1):
        part = FactSet()
        for fact in batch:
            part.add(fact)
        await ctx.store.ensure_current()
        result = await ctx.llm.consolidate(part.to_facts())
        await ctx.store.record_usage(result.usage)
        for fact in facts_from_json(result.value, date=None, source=None):
            _inherit(fact, batch)
            out.add(fact)
        await ctx.store.report_progress(i, len(batches))
    return out


def _inherit(fact: Fact, originals: list[Fact]) -> None:
    """Give a consolidated fact the date and sources of the inputs it came from."""
    words = set(normalise(fact.text()).split())
    best: list[Fact] = []
    best_score = 0.0
    for o in originals:
        if o.category.key != fact.category.key:
            continue
        other = set(normalise(o.text()).split())
        score = len(words & other) / (len(words | other) or 1)
        if score > best_score + 1e-9:
            best, best_score = [o], score
        elif abs(score - best_score) <= 1e-9 and score > 0:
            best.append(o)
    if best_score >= 0.3:
        fact.sources = list(dict.fromkeys(s for o in best for s in o.sources))
        fact.date = max((o.date for o in best if o.date), default=None)


def facts_from_reduced(reduced: Mapping[str, list[dict[str, Any]]]) -> Facts:
    """Reduced facts (:meth:`FactSet.to_json`, ``ReduceOutput.facts``) as the plain
    fact JSON later stages send to the model."""
    facts = FactSet()
    for key, items in reduced.items():
        category = BY_KEY.get(key)
        if category is None:
            continue
        for raw in items:
            fields = {k: str(v) for k, v in raw.items() if k not in _META and v is not None}
            fact = Fact(
                category,
                category.from_fields(fields),
                raw.get("as_of"),
                list(raw.get("sources") or []),
            )
            fact.previously = list(raw.get("previously") or [])
            facts.add(fact)
    return facts.to_facts()


_META = frozenset({"as_of", "sources", "previously"})
