"""Extraction quality: what the pipeline keeps of a labelled evaluation set, and what it costs.

    make eval                      # EVAL_ARGS="..." passes options
    .venv/bin/python bench/quality.py [--case ID ...] [--generated N] [--seed S] [--seeds N]
                                      [--baseline | --no-baseline] [--yes] [--out PATH]
    .venv/bin/python bench/quality.py --write-generated   # rebuild bench/eval/generated.json

Prints a short table, and writes everything to ``bench/results/quality.json``:

- **precision**: of the facts reduce keeps, the share that are expected facts
  (facts matching only a *neutral* label, or the earlier value of a changed
  fact, are left out of the count; anything else is a false positive);
- **recall**: of the expected facts, the share reduce keeps *from the
  conversation that stated them* (a kept fact must match the label and cite a
  chunk of its conversation), overall and by kind of hard case;
- **forbidden facts kept**: labels that must not be extracted (facts about
  other people, hypotheticals and role-play, suggestions the user rejected);
- **contradiction resolution**: of the values that changed over time, the
  share where the later value is the kept fact and the earlier one is in its
  ``previously`` (and no longer a fact of its own);
- **MEMORY coverage**: of the expected facts, the share present in the MEMORY
  text (a bullet, with the ``###`` heading it sits under, matches the label);
- **attribution accuracy**: of the facts of the map step's calls that state
  labelled facts said in the call's conversations, the share placed right:
  each of those facts reached a chunk of a conversation that states it, and
  the fact landed on no conversation that states none of them (a fact merged
  from two conversations belongs to both); dates separately. Against the fake
  the map steps of ``--seeds`` rewording seeds are pooled (one holds a few
  dozen facts of packed calls). With ``--baseline`` every map step runs again
  with the citations stripped from the answers, so that facts are placed by
  shared words alone (the fallback, and how every fact was placed before the
  model was asked for chunk ids): the figure before and after;
- **duplicates**: kept facts beyond the first that match the same expected fact;
- **calls, tokens and cost** per stage, at the prices below.

**The evaluation set** (``bench/eval/``, JSON): ``generated.json`` holds
conversations from :mod:`tests.gen_export` (simplified format) labelled from
its ground truth; ``hard.json`` holds hand-written conversations a real model
finds hard, grouped in cases of one kind each (indirect statements, facts
about other people, hypotheticals and role-play, rejected suggestions, values
changed over time, the same facts in four languages), each labelled with the
facts that must be extracted (``expected``, with the conversation that
states them), must not be (``forbidden``), may be (``neutral``) and the
values that changed (``changes``: the earlier label and the later fact).

**Matching rule** (a kept fact, a chunk fact or a MEMORY bullet against a
label). Texts are folded (case, accents, punctuation) and their dates written
ISO; words of 3+ characters lose a common ending (-ing, -ed, -es, -s, -e) and
are cut to 5 characters (stems), stop words dropped. A text
matches a label when (1) at least :data:`MATCH_SHARE` of the stems of the
label's text or of one of its ``alternatives`` are in the text, (2) every
``keywords`` group is present (a group is ``a|b`` alternatives; a word
matches the start of a word of the text, several words match as a phrase),
(3) the label's ``date``, if any, is there (ISO, or its month and day), and
(4) none of its ``unless`` words is (they mark a fact about something else:
"their brother is vegan" is not the user's diet).

**What runs** is the pipeline's own code, in this process: the export reader
and the chunker (:mod:`jobs.ingest`), then the stage functions ``extract``
(packing, the provider over real HTTP, attribution), ``reduce`` and
``memory`` over the in-memory stage store of
:mod:`tests.fakes.memory_store`. Only persistence is replaced: the SQL
behind the store decides nothing about what is extracted (the suite and
``bench/pipeline.py`` run it against PostgreSQL), and without a database and
a worker process the harness runs in seconds, so a fast test runs it end to
end. Chunks reach the map step in the order the database gives them
(conversation date, conversation, chunk index), so calls pack conversations
together as they do in production.

**Against what.** Without ``ANTHROPIC_API_KEY`` it runs against the fake
Messages API (:mod:`tests.fakes.fake_anthropic`) in its rewording mode: the
fake finds facts with the project's own rules and words them as a model does
(:mod:`tests.fakes.rewording`, at the rates of :data:`FAKE_REWORDING`). Its
figures measure the pipeline around the model — packing, attribution, dedupe,
reduce, MEMORY — and the rules; they say nothing of a model's judgement, and
the output says so. The fake cites the chunk ids of its facts without fail: a
model's "cited ids" figure can only be lower. With a key it
first prints the estimated cost (from the transcripts' sizes, at the prices
below) and asks for confirmation on stdin (``--yes`` skips it; with nothing
to read on stdin it refuses), then runs the configured model
(``FULLPASS_MODEL``, ``ANTHROPIC_BASE_URL``).

**Prices** are each stage's model's list prices, from the settings' one
table (:data:`worker.settings.MODEL_PRICES`, ``FULLPASS_MODEL_PRICES`` for
others): Haiku 4.5 by default, $1 / $5 per million input / output tokens,
cache reads at 0.1x and cache writes at 1.25x of input. Each stage calls its
own model (``FULLPASS_MODEL_EXTRACT``, ``_REDUCE``, ``_MEMORY``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
import unicodedata
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Final, TextIO

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jobs.chunk import saved_facts_of  # noqa: E402
from jobs.domain.facts import Facts, fields_of, uncited  # noqa: E402
from jobs.domain.rules import wordset  # noqa: E402
from jobs.domain.sections import Sections  # noqa: E402
from jobs.domain.transcript import condense_transcript, novel_part  # noqa: E402
from jobs.extract import extract  # noqa: E402
from jobs.ingest.chunker import ChunkConfig, chunk_conversation, extraction_tier  # noqa: E402
from jobs.ingest.reader import Limits, ReadStats, read_export  # noqa: E402
from jobs.memory import memory  # noqa: E402
from jobs.outputs import ChunkOutput, ExtractOutput, MemoryOutput, ReduceOutput  # noqa: E402
from jobs.reduce import reduce  # noqa: E402
from tests.fakes.fake_anthropic import FakeAnthropicServer  # noqa: E402
from tests.fakes.memory_store import MemoryStore, stage_context  # noqa: E402
from tests.fakes.rewording import Rewording, iso_dates  # noqa: E402
from tests.gen_export import generate  # noqa: E402
from worker.llm import for_stage  # noqa: E402
from worker.llm.anthropic_provider import AnthropicProvider  # noqa: E402
from worker.llm.base import ExtractionInput, LLMProvider, LLMResult, Usage  # noqa: E402
from worker.llm.prompts import (  # noqa: E402
    EXTRACTION_SYSTEM,
    MEMORY_SYSTEM,
    RECORD_FACTS_TOOL,
    extraction_message,
)
from worker.settings import Settings  # noqa: E402
from worker.store import ChunkText, FactsRow  # noqa: E402

EVAL_DIR: Final = REPO / "bench" / "eval"
EVAL_FILES: Final = (EVAL_DIR / "generated.json", EVAL_DIR / "hard.json")
RESULTS: Final = REPO / "bench" / "results" / "quality.json"

#: Share of a label's stems a text must hold to state it (see the module docstring).
MATCH_SHARE: Final = 0.6

#: The rewording the fake runs with: every fact in the third person and with
#: ISO dates, a third cut to their gist, one in seven merged with another,
#: one excerpt in twenty given an invented "interest".
FAKE_REWORDING: Final = Rewording(
    third_person=1.0, summary=0.3, iso_date=1.0, merge=0.15, invent=0.05
)

#: The generated part of the set: conversations, seed and fact rate (``--write-generated``).
GENERATED_CONVERSATIONS: Final = 24
GENERATED_SEED: Final = 11
GENERATED_FACT_RATE: Final = 0.35


def stage_prices(settings: Settings) -> dict[str, dict[str, Any]]:
    """The model each stage calls and its list prices (the settings' table; None: unknown)."""
    out: dict[str, dict[str, Any]] = {}
    for stage in ("extract", "reduce", "memory"):
        model = settings.stage_model(stage)
        price = settings.price_of(model)
        out[stage] = {"model": model, "usd_per_mtok": price.model_dump() if price else None}
    return out


def _usd(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


# --------------------------------------------------------------------------- the set


@dataclass(frozen=True, slots=True)
class Label:
    """One fact as the set describes it (see the module docstring's matching rule)."""

    fact: str
    text: str
    #: The conversation that states it (expected facts and earlier values).
    conversation: str | None = None
    alternatives: tuple[str, ...] = ()
    keywords: tuple[tuple[str, ...], ...] = ()
    date: str | None = None
    unless: tuple[str, ...] = ()
    #: The kind of case it belongs to.
    kind: str = ""

    @classmethod
    def of(cls, raw: dict[str, Any], kind: str) -> Label:
        return cls(
            fact=str(raw["fact"]),
            text=str(raw["text"]),
            conversation=raw.get("conversation"),
            alternatives=tuple(raw.get("alternatives") or ()),
            keywords=tuple(tuple(group.split("|")) for group in raw.get("keywords") or ()),
            date=raw.get("date"),
            unless=tuple(raw.get("unless") or ()),
            kind=kind,
        )


@dataclass(frozen=True, slots=True)
class Change:
    """A value stated again later: ``later`` (an expected fact id) must replace ``earlier``."""

    later: str
    earlier: Label


@dataclass(slots=True)
class EvalSet:
    conversations: list[dict[str, Any]] = field(default_factory=list)
    expected: list[Label] = field(default_factory=list)
    forbidden: list[Label] = field(default_factory=list)
    neutral: list[Label] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    #: Per kind of case: how many conversations and labels of each sort.
    kinds: dict[str, dict[str, int]] = field(default_factory=dict)

    def add_case(self, case: dict[str, Any]) -> None:
        kind = str(case.get("kind") or case["id"])
        self.conversations += case["conversations"]
        expected = [Label.of(raw, kind) for raw in case.get("expected") or ()]
        forbidden = [Label.of(raw, kind) for raw in case.get("forbidden") or ()]
        neutral = [Label.of(raw, kind) for raw in case.get("neutral") or ()]
        changes = [
            Change(str(raw["later"]), Label.of(raw["earlier"], kind))
            for raw in case.get("changes") or ()
        ]
        self.expected += expected
        self.forbidden += forbidden
        self.neutral += neutral
        self.changes += changes
        counts = self.kinds.setdefault(
            kind,
            {"conversations": 0, "expected": 0, "forbidden": 0, "neutral": 0, "changes": 0},
        )
        counts["conversations"] += len(case["conversations"])
        counts["expected"] += len(expected)
        counts["forbidden"] += len(forbidden)
        counts["neutral"] += len(neutral)
        counts["changes"] += len(changes)

    def conversations_of(self, fact: str) -> set[str]:
        """Every conversation that states the fact ``fact``."""
        return {lb.conversation for lb in self.stated() if lb.fact == fact and lb.conversation}

    def stated(self) -> list[Label]:
        """The labels of facts a conversation states: expected and neutral facts, earlier values."""
        labels = [*self.expected, *self.neutral, *(c.earlier for c in self.changes)]
        return [lb for lb in labels if lb.conversation]


def load_set(
    paths: Sequence[Path] = EVAL_FILES,
    *,
    cases: Sequence[str] = (),
    generated: int | None = None,
) -> EvalSet:
    """The evaluation set from its files: only the ``cases`` named (all when empty), and
    only the first ``generated`` generated conversations (all when ``None``)."""
    out = EvalSet()
    for path in paths:
        for case in json.loads(path.read_text(encoding="utf-8"))["cases"]:
            if cases and case["id"] not in cases:
                continue
            if case.get("kind") == "generated" and generated is not None:
                case = _first_conversations(case, generated)
            out.add_case(case)
    if not out.conversations:
        raise SystemExit(f"no conversations selected (cases: {', '.join(cases) or 'all'})")
    return out


def _first_conversations(case: dict[str, Any], n: int) -> dict[str, Any]:
    kept = case["conversations"][:n]
    ids = {c["id"] for c in kept}
    return {
        **case,
        "conversations": kept,
        "expected": [lb for lb in case.get("expected") or () if lb.get("conversation") in ids],
    }


# --------------------------------------------------------------------------- the generated part

_PLANTED: Final = (
    (re.compile(r"^I really prefer (?P<x>.+)\.$"), "preferences"),
    (
        re.compile(r"^I'm building (?P<name>.+?), a side project written with (?P<x>.+)\.$"),
        "projects",
    ),
    (re.compile(r"^My (?P<event>.+) is on (?P<when>.+)\.$"), "dates"),
    (re.compile(r"^I strongly believe (?P<x>.+)\.$"), "beliefs"),
    (re.compile(r"^We decided to (?P<x>.+) because (?P<why>.+)\.$"), "decisions"),
)


def planted_label(conversation: str, sentence: str) -> dict[str, Any]:
    """The label of a fact :mod:`tests.gen_export` planted (one of its five forms)."""
    for pattern, form in _PLANTED:
        m = pattern.match(sentence)
        if m is None:
            continue
        label: dict[str, Any] = {"conversation": conversation}
        if form == "preferences":
            label["text"] = f"Prefers {m['x']}."
        elif form == "projects":
            label["text"] = f"Is building {m['name']}, a side project written with {m['x']}."
            label["keywords"] = [m["name"].casefold()]
        elif form == "dates":
            when = datetime.strptime(m["when"], "%B %d, %Y").date().isoformat()
            label["text"] = f"{m['event'][:1].upper()}{m['event'][1:]} on {when}."
            label["date"] = when
        elif form == "beliefs":
            label["text"] = f"Believes {m['x']}."
        else:
            label["text"] = f"Decided to {m['x']}."
            label["alternatives"] = [f"Decided to {m['x']} because {m['why']}."]
        return {"fact": "gen:" + re.sub(r"\W+", "-", label["text"].casefold()).strip("-"), **label}
    raise ValueError(f"not a planted fact: {sentence!r}")


def write_generated(
    path: Path = EVAL_DIR / "generated.json",
    conversations: int = GENERATED_CONVERSATIONS,
    seed: int = GENERATED_SEED,
    fact_rate: float = GENERATED_FACT_RATE,
) -> None:
    """The generated part of the set: conversations and labels from the generator's truth."""
    export = generate(conversations, seed=seed, fact_rate=fact_rate, fmt="simplified")
    case = {
        "id": "generated",
        "kind": "generated",
        "note": f"python -m tests.gen_export --format simplified --conversations {conversations}"
        f" --seed {seed} --fact-rate {fact_rate}: the planted facts are expected.",
        "conversations": export.conversations,
        "expected": [planted_label(f.conversation_id, f.text) for f in export.truth.facts],
    }
    data = {
        "description": "Generated conversations (tests/gen_export.py, simplified format) with "
        "the facts the generator planted as expected labels. Rebuilt by "
        "`bench/quality.py --write-generated`.",
        "cases": [case],
    }
    path.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- matching

#: Words that say nothing of a fact (English, and the articles and verbs "to be" of the
#: set's other languages).
STOP_WORDS: Final = wordset(
    "the and for with that this not was are our its has have had who whom will would can "
    "could should from into onto than then they them their there these those his her hers "
    "she him you your yours all any now just really strongly also very est ist una uno les "
    "des une der die das und"
)
MONTH_NAMES: Final = (
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
)


def fold(text: str) -> str:
    """Case, accents and punctuation folded away, dates written ISO, single-spaced."""
    text = iso_dates(text)
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(re.sub(r"[^\w]+|_", " ", plain).split())


#: Endings taken off a word before it is cut to its stem ("plays", "playing" → "play").
_ENDINGS: Final = ("ing", "ed", "es", "s", "e")


def stem(word: str) -> str:
    """A word without a common English ending, cut to 5 characters."""
    for ending in _ENDINGS:
        if word.endswith(ending) and len(word) - len(ending) >= 3:
            word = word[: -len(ending)]
            break
    return word[:5]


def stems(text: str) -> frozenset[str]:
    return frozenset(stem(w) for w in fold(text).split() if len(w) >= 3 and w not in STOP_WORDS)


def _present(folded: str, words: list[str], term: str) -> bool:
    """A keyword (a word's start) or phrase (several words) in a folded text."""
    term = fold(term)
    if " " in term:
        return f" {term} " in f" {folded} "
    return any(w.startswith(term) for w in words)


def _has_date(folded: str, iso: str) -> bool:
    if iso in iso_dates(folded).replace(" ", "-") or iso.replace("-", " ") in folded:
        return True
    _, month, day = iso.split("-")
    name, day = MONTH_NAMES[int(month) - 1], str(int(day))
    return f"{name} {day}" in folded or f"{day} {name}" in folded


def matches(text: str, label: Label) -> bool:
    """Whether ``text`` states the fact ``label`` describes (the rule in the docstring)."""
    folded = fold(text)
    words = folded.split()
    if any(_present(folded, words, w) for w in label.unless):
        return False
    if not all(any(_present(folded, words, k) for k in group) for group in label.keywords):
        return False
    if label.date and not _has_date(folded, label.date):
        return False
    have = stems(text)
    for phrasing in (label.text, *label.alternatives):
        want = stems(phrasing)
        if want and len(want & have) >= MATCH_SHARE * len(want):
            return True
    return False


def fact_text(raw: dict[str, Any]) -> str:
    """A reduced fact's words (its fields, without provenance)."""
    return " ".join(str(v) for k, v in raw.items() if k not in _META and v)


_META: Final = frozenset({"as_of", "sources", "previously"})


# --------------------------------------------------------------------------- the pipeline


def build_store(conversations: list[dict[str, Any]], workdir: Path) -> tuple[CallStore, int]:
    """The chunks the chunk stage would store for an export of ``conversations``.

    The export is written as a file and read by the real reader; chunks are
    added in the order the database hands them to the map step. Returns the
    store and the number of conversations read.
    """
    export = workdir / "export.json"
    export.write_text(json.dumps(conversations, ensure_ascii=False), encoding="utf-8")
    config = ChunkConfig()
    tier = extraction_tier(config.tiers)
    stats = ReadStats()
    now = datetime.now(UTC)
    namespace = uuid.UUID("5d1f0a3e-8c2b-4e6f-9a7d-00000000e7a1")
    chunks = [
        c
        for conv in read_export(export, Limits.from_settings(Settings()), stats)
        for c in chunk_conversation(conv, namespace=namespace, now=now, config=config)
        if c.chunk_tier == tier
    ]
    chunks.sort(
        key=lambda c: (c.created_at is None, c.created_at, c.conversation_id, c.chunk_index)
    )
    store = CallStore()
    for c in chunks:
        saved = saved_facts_of(c)
        facts = Facts.of(item for s in saved for item in s.facts.items())
        store.add_chunk(
            ChunkText(
                c.id,
                c.conversation_id,
                c.chunk_index,
                c.title,
                c.content,
                c.content_hash,
                c.created_at,
                facts,
            ),
            tier,
        )
        if saved:
            store.saved[c.id] = [(s.facts, s.said_at or c.created_at) for s in saved]
    return store, stats.conversations


@dataclass
class CallStore(MemoryStore):
    """The in-memory store, also keeping which chunks each call checkpointed together."""

    calls: list[list[str]] = field(default_factory=list)

    async def checkpoint_facts(
        self,
        rows: Sequence[FactsRow],
        usage: Usage,
        model: str,
        error: str | None = None,
        *,
        requested_model: str | None = None,
        prompt_version: str | None = None,
    ) -> None:
        await super().checkpoint_facts(
            rows,
            usage,
            model,
            error,
            requested_model=requested_model,
            prompt_version=prompt_version,
        )
        if error is None and usage.calls:  # chunks without user text are checkpointed callless
            self.calls.append([row.chunk_id for row in rows])


@dataclass(slots=True)
class Run:
    """What one pass of the pipeline over the set produced."""

    store: CallStore
    conversations: int
    extracted: ExtractOutput | None = None
    reduced: ReduceOutput | None = None
    memory: MemoryOutput | None = None
    usage: dict[str, Usage] = field(default_factory=dict)

    def conversation_of(self) -> dict[str, str]:
        return {c.id: c.conversation_id for c in self.store.chunks}


async def run_pipeline(
    eval_set: EvalSet,
    llm: LLMProvider,
    workdir: Path,
    *,
    options: dict[str, Any],
    full: bool,
    settings: Settings | None = None,
) -> Run:
    """The map step over the set's chunks; with ``full``, reduce and MEMORY after it.

    Each stage calls its own model (``FULLPASS_MODEL_<STAGE>`` of ``settings``).
    """
    settings = settings or Settings()

    def model_for(stage: str) -> LLMProvider:
        return for_stage(llm, settings, stage)

    store, conversations = build_store(eval_set.conversations, workdir)
    run = Run(store, conversations)
    chunked = ChunkOutput(conversations=conversations, chunks=len(store.chunks), tiers=["medium"])
    before = store.usage
    out = (
        await extract(
            stage_context(
                "extract", store, model_for("extract"), outputs=[chunked], options=options
            )
        )
    ).final_output()
    assert isinstance(out, ExtractOutput), out
    run.extracted, run.usage["extract"] = out, _minus(store.usage, before)
    if not full:
        return run
    before = store.usage
    reduced = (
        await reduce(stage_context("reduce", store, model_for("reduce"), options=options))
    ).final_output()
    assert isinstance(reduced, ReduceOutput), reduced
    run.reduced, run.usage["reduce"] = reduced, _minus(store.usage, before)
    before = store.usage
    written = (
        await memory(
            stage_context("memory", store, model_for("memory"), outputs=[reduced], options=options)
        )
    ).final_output()
    assert isinstance(written, MemoryOutput), written
    run.memory, run.usage["memory"] = written, _minus(store.usage, before)
    return run


def _minus(after: Usage, before: Usage) -> Usage:
    return Usage(
        after.input_tokens - before.input_tokens,
        after.output_tokens - before.output_tokens,
        after.cache_read_tokens - before.cache_read_tokens,
        after.cache_creation_tokens - before.cache_creation_tokens,
        after.calls - before.calls,
        None
        if after.cost_usd is None or before.cost_usd is None
        else after.cost_usd - before.cost_usd,
    )


# --------------------------------------------------------------------------- scoring


def _ratio(n: int, d: int) -> float | None:
    return round(n / d, 4) if d else None


def attribution(run: Run, eval_set: EvalSet) -> dict[str, Any]:
    """Did each fact of each call land on the chunks of the conversations that said it?

    A fact of a call (its chunks' facts grouped by wording) that matches
    expected facts stated in that call's conversations is placed right when
    each of those facts reached a conversation that states it and the fact
    landed on no conversation that states none of them: a fact merged from
    two conversations belongs to both.
    """
    conversation = run.conversation_of()
    labels = eval_set.stated()
    judged = correct = dates = dates_correct = 0
    wrong: list[dict[str, Any]] = []
    # Calls end in any order: taken in the order of their chunks, for the same report each run.
    order = {c.id: i for i, c in enumerate(run.store.chunks)}
    for call in sorted(run.store.calls, key=lambda ids: order[ids[0]]):
        said = {conversation[c] for c in call}
        landed: dict[tuple[str, str], set[str]] = {}
        for chunk_id in call:
            checkpoint = run.store.checkpoints.get(chunk_id)
            for category, item in checkpoint.facts.items() if checkpoint else ():
                text = " ".join(v for v in fields_of(item).values() if v)
                landed.setdefault((category.key, text), set()).add(conversation[chunk_id])
        for (key, text), where in landed.items():
            states = {
                lb.fact: eval_set.conversations_of(lb.fact) & said
                for lb in labels
                if matches(text, lb)
            }
            states = {fact: convs for fact, convs in states.items() if convs}
            if not states:
                continue  # matches no fact said in this call: a precision matter, not this one
            ok = all(where & convs for convs in states.values()) and where <= set().union(
                *states.values()
            )
            judged += 1
            correct += ok
            if key == "dates" or any(lb.date for lb in labels if lb.fact in states):
                dates += 1
                dates_correct += ok
            if not ok and len(wrong) < 20:
                wrong.append({"fact": text, "said_in": sorted(states), "landed_on": sorted(where)})
    return {
        "accuracy": _ratio(correct, judged),
        "facts": judged,
        "correct": correct,
        "dates_accuracy": _ratio(dates_correct, dates),
        "dates": dates,
        "dates_correct": dates_correct,
        "misattributed": wrong,
    }


def score(run: Run, eval_set: EvalSet) -> dict[str, Any]:
    """Every figure of a full run (see the module docstring)."""
    assert run.reduced is not None and run.memory is not None
    conversation = run.conversation_of()
    kept = [raw for items in run.reduced.facts.values() for raw in items]
    texts = [fact_text(raw) for raw in kept]
    sources = [{conversation.get(s) for s in raw.get("sources") or ()} for raw in kept]

    # Recall: the label matched by a kept fact that cites its conversation.
    found: dict[str, list[bool]] = {}
    for label in eval_set.expected:
        hit = any(
            label.conversation in src and matches(text, label)
            for text, src in zip(texts, sources, strict=True)
        )
        found.setdefault(label.kind, []).append(hit)
    every = [hit for hits in found.values() for hit in hits]

    # Precision over kept facts; neutral facts and stale earlier values are not counted.
    earlier = [c.earlier for c in eval_set.changes]
    true_pos = false_pos = 0
    false_examples: list[str] = []
    duplicates: dict[str, int] = {}
    for text in texts:
        hits = {lb.fact for lb in eval_set.expected if matches(text, lb)}
        for fact in hits:
            duplicates[fact] = duplicates.get(fact, 0) + 1
        if hits:
            true_pos += 1
        elif not any(matches(text, lb) for lb in [*eval_set.neutral, *earlier]):
            false_pos += 1
            if len(false_examples) < 20:
                false_examples.append(text)

    forbidden: dict[str, list[str]] = {}
    for label in eval_set.forbidden:
        if any(matches(text, label) for text in texts):
            forbidden.setdefault(label.kind, []).append(label.fact)

    resolved: list[dict[str, Any]] = []
    for change in eval_set.changes:
        later = [lb for lb in eval_set.expected if lb.fact == change.later]
        ok = any(
            any(matches(text, lb) for lb in later)
            and any(matches(str(p), change.earlier) for p in raw.get("previously") or ())
            for text, raw in zip(texts, kept, strict=True)
        )
        stale = any(
            matches(text, change.earlier) and not any(matches(text, lb) for lb in later)
            for text in texts
        )
        resolved.append({"fact": change.later, "resolved": ok and not stale, "stale": stale})
    n_resolved = sum(1 for r in resolved if r["resolved"])

    bullets = memory_bullets(run.memory.memory_md)
    facts_expected = sorted({lb.fact for lb in eval_set.expected})
    covered = [
        fact
        for fact in facts_expected
        if any(matches(b, lb) for b in bullets for lb in eval_set.expected if lb.fact == fact)
    ]
    return {
        "precision": _ratio(true_pos, true_pos + false_pos),
        "kept_facts": len(kept),
        "true_positives": true_pos,
        "false_positives": false_pos,
        "false_positive_examples": false_examples,
        "recall": _ratio(sum(every), len(every)),
        "recall_by_kind": {
            kind: {"found": sum(hits), "of": len(hits), "recall": _ratio(sum(hits), len(hits))}
            for kind, hits in sorted(found.items())
        },
        "missed": [
            f"{lb.kind}: {lb.text}"
            for lb in eval_set.expected
            if not any(
                lb.conversation in src and matches(text, lb)
                for text, src in zip(texts, sources, strict=True)
            )
        ][:40],
        "forbidden_kept": sum(len(v) for v in forbidden.values()),
        "forbidden_total": len(eval_set.forbidden),
        "forbidden_by_kind": {
            kind: {
                "kept": sorted(forbidden.get(kind, [])),
                "of": sum(1 for lb in eval_set.forbidden if lb.kind == kind),
            }
            for kind in sorted({lb.kind for lb in eval_set.forbidden})
        },
        "contradictions": {
            "resolved": n_resolved,
            "of": len(resolved),
            "rate": _ratio(n_resolved, len(resolved)),
            "detail": resolved,
        },
        "memory_coverage": _ratio(len(covered), len(facts_expected)),
        "memory_missing": [f for f in facts_expected if f not in covered][:40],
        "duplicates": sum(n - 1 for n in duplicates.values() if n > 1),
    }


def memory_bullets(markdown: str) -> list[str]:
    """MEMORY's bullets and lines, each with the ``###`` heading it sits under."""
    out: list[str] = []
    heading = ""
    for line in markdown.splitlines():
        stripped = line.strip()
        if stripped.startswith("### "):
            heading = stripped[4:]
            out.append(heading)
        elif stripped.startswith("## "):
            heading = ""
        elif stripped:
            out.append(f"{heading} {stripped.lstrip('-*').strip()}".strip())
    return out


# --------------------------------------------------------------------------- cost


@dataclass(frozen=True, slots=True)
class Estimate:
    """What a run is expected to cost, from the transcripts' sizes."""

    calls: int
    input_tokens: int
    output_tokens: int
    #: None: a model without a known price (FULLPASS_MODEL_PRICES gives it).
    cost_usd: float | None
    #: 2 when the map step runs again for the attribution baseline.
    passes: int
    #: The models priced (extraction, then MEMORY when another).
    models: str = ""

    def describe(self) -> str:
        again = "; the map step runs twice, for the attribution baseline" if self.passes > 1 else ""
        cost = (
            "unknown (a model without a price: set FULLPASS_MODEL_PRICES)"
            if self.cost_usd is None
            else f"${self.cost_usd:.2f}"
        )
        return (
            f"Estimated cost: {cost} at {self.models} list prices "
            f"({self.calls} calls, ~{self.input_tokens:,} input and ~{self.output_tokens:,} "
            f"output tokens{again})."
        )


#: Output tokens assumed per extraction call and for the MEMORY call: above what
#: runs use, so that the bill does not beat the estimate.
OUTPUT_PER_EXTRACTION: Final = 600
OUTPUT_MEMORY: Final = 4000
#: A pack's header per chunk, without the title: ``System: new conversation [c12] "", dated
#: 2024-01-01.`` and the blank line before it.
HEADER_CHARS: Final = 56


def estimate(
    eval_set: EvalSet, *, pack_tokens: int, baseline: bool, settings: Settings | None = None
) -> Estimate:
    """Calls and tokens of a run, from the condensed transcripts the map step packs.

    Packing follows the map step: chunks in database order, a chunk's overlap
    with the one before left out, calls filled up to ``pack_tokens`` of
    transcript. Every call pays the system prompt, the tool and its
    transcript, all at the full input price (a prompt shorter than the
    model's minimum cacheable length is not cached; when it is, the bill is
    lower). The MEMORY call reads the facts (about as many tokens as the
    calls answered) and writes a document. Tokens are characters / 4, as
    everywhere in the project.
    """
    with tempfile.TemporaryDirectory() as tmp:
        store, _ = build_store(eval_set.conversations, Path(tmp))
    packs: list[list[tuple[int, int]]] = []  # per call: (transcript, header) characters
    size = 0
    previous: ChunkText | None = None
    for chunk in store.chunks:
        text = chunk.content
        if previous is not None and chunk.follows(previous):
            text = novel_part(previous.content, text)
        previous = chunk
        condensed = condense_transcript(text)
        if not condensed:
            continue
        if not packs or size + len(condensed) > pack_tokens * 4:
            packs.append([])
            size = 0
        packs[-1].append((len(condensed), HEADER_CHARS + len(chunk.title)))
        size += len(condensed)
    fixed = (
        len(EXTRACTION_SYSTEM)
        + len(json.dumps(RECORD_FACTS_TOOL))
        + len(extraction_message_template())
    )
    per_call = [
        fixed + sum(t for t, _ in pack) + (sum(h for _, h in pack) if len(pack) > 1 else 0)
        for pack in packs
    ]
    passes = 2 if baseline else 1
    memory_in = -(-len(MEMORY_SYSTEM) // 4) + OUTPUT_PER_EXTRACTION * len(packs)
    settings = settings or Settings()
    models = [settings.stage_model("extract"), settings.stage_model("memory")]
    mapped = Usage(
        input_tokens=sum(-(-chars // 4) for chars in per_call) * passes,
        output_tokens=OUTPUT_PER_EXTRACTION * len(packs) * passes,
        calls=len(packs) * passes,
    ).priced(settings.price_of(models[0]))
    written = Usage(input_tokens=memory_in, output_tokens=OUTPUT_MEMORY, calls=1).priced(
        settings.price_of(models[1])
    )
    usage = mapped + written
    return Estimate(
        calls=usage.calls,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cost_usd=_usd(usage.cost_usd, 4),
        passes=passes,
        models=" / ".join(dict.fromkeys(models)),
    )


def extraction_message_template() -> str:
    """The user turn of an extraction call around an empty transcript."""
    return extraction_message(ExtractionInput("", "", "x" * 40, "", date(2024, 1, 1)))


def confirm(estimated: Estimate, *, yes: bool, stdin: TextIO | None, out: TextIO) -> bool:
    """Print the estimate and ask on ``stdin``; ``--yes`` skips the question.

    Refuses when there is nothing to read (no stdin, or end of file at once):
    a run against the real API is never started by accident from a script.
    """
    print(estimated.describe(), file=out)
    if yes:
        print("--yes given: running without asking.", file=out)
        return True
    if stdin is None or stdin.closed:
        print("Refused: no stdin to confirm on (pass --yes to run anyway).", file=out)
        return False
    print("Run against the real Anthropic API? [y/N] ", end="", file=out, flush=True)
    answer = stdin.readline()
    if not answer:
        print("\nRefused: nothing to read on stdin (pass --yes to run anyway).", file=out)
        return False
    if answer.strip().casefold() in ("y", "yes"):
        return True
    print("Not confirmed: nothing was sent.", file=out)
    return False


# --------------------------------------------------------------------------- output

FAKE_BANNER: Final = """\
==============================================================================
  AGAINST THE FAKE MESSAGES API: no ANTHROPIC_API_KEY is set.
  The fake finds facts with the project's own rules and words them the way a
  model does (tests/fakes/rewording.py). These figures measure the pipeline
  around the model and the rules, NOT a model's extraction quality.
=============================================================================="""


def table(result: dict[str, Any]) -> str:
    """The short table printed on stdout."""
    q = result["quality"]
    att = result["attribution"]
    rows: list[tuple[str, str]] = [
        ("backend", f"{result['backend']} ({result['model']})"),
        (
            "evaluation set",
            f"{result['eval_set']['conversations']} conversations, "
            f"{result['eval_set']['expected']} expected / {result['eval_set']['forbidden']} "
            f"forbidden / {result['eval_set']['changes']} changed facts",
        ),
        (
            "precision",
            _pct(
                q["precision"],
                f"{q['true_positives']} right, {q['false_positives']} wrong of "
                f"{q['kept_facts']} kept; the rest neutral or earlier values",
            ),
        ),
        ("recall", _pct(q["recall"], "from the conversation that said it")),
    ]
    for kind, r in q["recall_by_kind"].items():
        rows.append((f"  recall: {kind}", _pct(r["recall"], f"{r['found']} of {r['of']}")))
    rows.append(("forbidden facts kept", f"{q['forbidden_kept']} of {q['forbidden_total']}"))
    for kind, r in q["forbidden_by_kind"].items():
        rows.append((f"  kept: {kind}", f"{len(r['kept'])} of {r['of']}"))
    c = q["contradictions"]
    rows += [
        ("contradiction resolution", _pct(c["rate"], f"{c['resolved']} of {c['of']}")),
        ("MEMORY coverage", _pct(q["memory_coverage"], "expected facts in the MEMORY text")),
        ("duplicate facts", str(q["duplicates"])),
    ]
    for name, a in att.items():
        dates = _pct(a["dates_accuracy"], "")
        note = f"{a['correct']} of {a['facts']} facts; dates: {dates} of {a['dates']}"
        rows.append((f"attribution ({name})", _pct(a["accuracy"], note)))
    u = result["usage"]["total"]
    rows += [
        ("calls", f"{u['calls']} ({_per_stage(result, 'calls')})"),
        (
            "tokens",
            f"{u['input_tokens']:,} in + {u['cache_read_tokens']:,} cache read + "
            f"{u['cache_creation_tokens']:,} cache write, {u['output_tokens']:,} out",
        ),
        ("cost", _cost_line(result)),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _cost_line(result: dict[str, Any]) -> str:
    models = " / ".join(dict.fromkeys(p["model"] for p in result["prices"].values()))
    total = result["cost_usd"]["total"]
    if total is None:
        return f"unknown: a model without a price ({models}; set FULLPASS_MODEL_PRICES)"
    return f"${total:.4f} at {models} list prices"


def _pct(value: float | None, note: str) -> str:
    shown = "-" if value is None else f"{value:.3f}"
    return f"{shown}  ({note})" if note else shown


def _per_stage(result: dict[str, Any], key: str) -> str:
    return ", ".join(f"{s} {u[key]}" for s, u in result["usage"].items() if s != "total")


# --------------------------------------------------------------------------- main


async def evaluate(
    eval_set: EvalSet,
    llm: LLMProvider,
    *,
    backend: str,
    rewording: Rewording | None,
    baseline: bool,
    options: dict[str, Any],
    seeds: Sequence[int] = (0,),
    reseed: Callable[[int], None] | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Run the pipeline over the set and score it.

    The whole pipeline runs once (the first of ``seeds``); attribution is
    measured on its map step and, against the fake, on the map steps of the
    other rewording seeds too (``reseed`` switches the fake to a seed), pooled:
    one pass holds a few dozen facts of packed calls, too few for a rate near
    1 to mean much. With ``baseline`` every map step runs again with the
    citations stripped (word overlap alone).
    """
    cited: list[dict[str, Any]] = []
    plain: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        run: Run | None = None
        for seed in seeds:
            if reseed is not None:
                reseed(seed)
            this = await run_pipeline(
                eval_set, llm, workdir, options=options, full=run is None, settings=settings
            )
            run = run or this
            cited.append(attribution(this, eval_set))
            if baseline:
                only_words = WordsOnly(llm)
                words = await run_pipeline(
                    eval_set, only_words, workdir, options=options, full=False, settings=settings
                )
                plain.append(attribution(words, eval_set))
    assert run is not None and run.extracted is not None
    attributions = {"cited ids": pooled(cited, seeds)}
    if plain:
        attributions["word overlap only"] = pooled(plain, seeds)
    usage = dict(run.usage)
    total = sum(usage.values(), Usage())
    return {
        "date": date.today().isoformat(),
        "backend": backend,
        "model": llm.model,
        "rewording": {"seed": seeds[0], **rewording.rates()} if rewording else None,
        "eval_set": {
            "conversations": run.conversations,
            "chunks": len(run.store.chunks),
            "expected": len(eval_set.expected),
            "forbidden": len(eval_set.forbidden),
            "neutral": len(eval_set.neutral),
            "changes": len(eval_set.changes),
            "by_kind": eval_set.kinds,
        },
        "matching": f"stems (folded words of 3+ characters, -ing/-ed/-es/-s/-e taken off, cut "
        f"to 5) of the label's text or of an alternative, share >= {MATCH_SHARE}; every "
        "keyword group present; the label's date present (ISO, or month and day); none of "
        "its 'unless' words",
        "pack_tokens": options["pack_tokens"],
        "quality": score(run, eval_set),
        "attribution": attributions,
        "usage": {
            **{stage: asdict(u) for stage, u in usage.items()},
            "total": asdict(total),
        },
        "cost_usd": {
            **{stage: _usd(u.cost_usd, 5) for stage, u in usage.items()},
            "total": _usd(total.cost_usd, 5),
        },
        "prices": stage_prices(settings or Settings()),
        "memory_md": run.memory.memory_md if run.memory else "",
    }


def pooled(passes: list[dict[str, Any]], seeds: Sequence[int]) -> dict[str, Any]:
    """Attribution over several map steps, counted together."""
    facts = sum(p["facts"] for p in passes)
    correct = sum(p["correct"] for p in passes)
    dates = sum(p["dates"] for p in passes)
    dates_correct = sum(p["dates_correct"] for p in passes)
    return {
        "accuracy": _ratio(correct, facts),
        "facts": facts,
        "correct": correct,
        "dates_accuracy": _ratio(dates_correct, dates),
        "dates": dates,
        "by_seed": {str(seed): p["accuracy"] for seed, p in zip(seeds, passes, strict=False)},
        "misattributed": [m for p in passes for m in p["misattributed"]][:20],
    }


class WordsOnly:
    """A provider whose extraction answers cite no chunk: attribution by shared words alone.

    The map step then attributes every fact of a packed call as it did
    before the model was asked for ids (and as it still does for a fact that
    cites no valid one): the baseline the cited attribution is measured against.
    """

    def __init__(self, inner: LLMProvider) -> None:
        self.inner = inner
        self.model = inner.model

    async def extract_facts(self, item: ExtractionInput) -> LLMResult[Facts]:
        result = await self.inner.extract_facts(item)
        plain = Facts.of((category, uncited(fact)) for category, fact in result.value.items())
        return LLMResult(plain, result.usage, result.model)

    async def consolidate(self, facts: Facts) -> LLMResult[Facts]:
        return await self.inner.consolidate(facts)

    async def write_memory(self, facts: Facts) -> LLMResult[str]:
        return await self.inner.write_memory(facts)

    async def write_sections(self, memory: str, samples: list[str]) -> LLMResult[Sections]:
        return await self.inner.write_sections(memory, samples)

    async def aclose(self) -> None:
        """The inner provider is closed by its owner."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/quality.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--case", action="append", default=[], help="only this case (repeatable)")
    p.add_argument("--generated", type=int, help="only the first N generated conversations")
    p.add_argument("--seed", type=int, default=0, help="the fake's rewording seed")
    p.add_argument(
        "--seeds",
        type=int,
        default=5,
        help="against the fake: rewording seeds whose map steps are pooled for attribution",
    )
    p.add_argument("--yes", action="store_true", help="run against the real API without asking")
    p.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also run the map step with citations stripped (default: on against the fake, "
        "off against the real API, where it doubles the map step's cost)",
    )
    p.add_argument("--out", type=Path, default=RESULTS, help="where the results JSON goes")
    p.add_argument(
        "--write-generated", action="store_true", help="rebuild bench/eval/generated.json and stop"
    )
    return p.parse_args(argv)


def main(
    argv: Sequence[str] | None = None, *, stdin: TextIO | None = None, out: TextIO | None = None
) -> int:
    """Run the harness; 0 when results were written, 2 when the real run was not confirmed."""
    args = parse_args(argv)
    out = out or sys.stdout
    if args.write_generated:
        write_generated()
        print(f"wrote {EVAL_DIR / 'generated.json'}", file=out)
        return 0
    eval_set = load_set(cases=args.case, generated=args.generated)
    settings = Settings()
    options: dict[str, Any] = {
        "pack_tokens": settings.options.pack_tokens,
        "concurrency": settings.options.concurrency,
    }
    key = settings.anthropic_api_key
    if key is not None and key.get_secret_value():
        baseline = bool(args.baseline)
        estimated = estimate(
            eval_set, pack_tokens=options["pack_tokens"], baseline=baseline, settings=settings
        )
        where = settings.anthropic_base_url or "the Anthropic API"
        print(f"Real model {settings.model} at {where}.", file=out)
        if not confirm(
            estimated, yes=args.yes, stdin=sys.stdin if stdin is None else stdin, out=out
        ):
            return 2
        result = asyncio.run(
            _evaluate_with(settings, eval_set, backend="anthropic", baseline=baseline, **options)
        )
    else:
        print(FAKE_BANNER, file=out)
        rewording = replace(FAKE_REWORDING, seed=args.seed)
        with FakeAnthropicServer(reword=rewording) as fake:

            def reseed(seed: int) -> None:
                fake.reword = replace(rewording, seed=seed)

            env: dict[str, Any] = dict(fake.settings_env())
            result = asyncio.run(
                _evaluate_with(
                    Settings(**env),
                    eval_set,
                    backend="fake",
                    baseline=args.baseline is not False,
                    rewording=rewording,
                    seeds=range(args.seed, args.seed + max(args.seeds, 1)),
                    reseed=reseed,
                    **options,
                )
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(table(result), file=out)
    if result["backend"] == "fake":
        print("(figures of the fake Messages API, not of a model: see above)", file=out)
    print(f"results: {args.out}", file=out)
    return 0


async def _evaluate_with(
    settings: Settings,
    eval_set: EvalSet,
    *,
    backend: str,
    baseline: bool,
    pack_tokens: int,
    concurrency: int,
    rewording: Rewording | None = None,
    seeds: Sequence[int] = (0,),
    reseed: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    provider = AnthropicProvider(settings)
    try:
        return await evaluate(
            eval_set,
            provider,
            backend=backend,
            rewording=rewording,
            baseline=baseline,
            options={"pack_tokens": pack_tokens, "concurrency": concurrency},
            seeds=list(seeds),
            reseed=reseed,
            settings=settings,
        )
    finally:
        await provider.aclose()


if __name__ == "__main__":
    sys.exit(main())
