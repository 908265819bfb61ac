"""Attribution against a model that rewords: each fact of a packed call lands on its own chunks.

The map step runs over the in-memory store with the real provider, against
the fake Messages API in its rewording mode (third person, summaries, ISO
dates, facts merged across the conversations of a call). The rewording knows
which excerpts of a call each fact it writes came from
(:meth:`~tests.fakes.rewording.Rewording.facts`): that is the ground truth
every call is checked against, fact by fact.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jobs.domain import rules
from jobs.domain.facts import normalise, text_of
from jobs.extract import extract
from jobs.outputs import ChunkOutput
from tests.conftest import make_settings
from tests.fakes.fake_anthropic import FakeAnthropicServer
from tests.fakes.memory_store import MemoryStore, chunk, stage_context
from tests.fakes.plugin import anthropic_provider
from tests.fakes.rewording import Rewording, split_parts
from tests.gen_export import generate

_TRANSCRIPT = re.compile(r"<transcript>\n(.*)\n</transcript>", re.S)
_TITLE = re.compile(r'"(?P<title>[^"]*)", dated')


def store_of(conversations: list[dict[str, Any]]) -> MemoryStore:
    """One chunk per conversation, titled with its id, in the order the database gives them."""
    store = MemoryStore()
    for conv in sorted(conversations, key=lambda c: c["create_time"]):
        transcript = "\n\n".join(
            f"{'User' if m['role'] == 'user' else 'Assistant'}: {m['content']}"
            for m in conv["messages"]
        )
        when = datetime.fromtimestamp(conv["create_time"], UTC)
        store.add_chunk(chunk(conv["id"], transcript, title=conv["id"], created_at=when))
    return store


async def extract_with(
    fake: FakeAnthropicServer, store: MemoryStore, rewording: Rewording, tmp_path: Path
) -> None:
    fake.reword = rewording
    settings = make_settings("postgresql://unused", tmp_path, **fake.settings_env())
    chunked = ChunkOutput(
        conversations=len(store.chunks), chunks=len(store.chunks), tiers=["medium"]
    )
    ctx = stage_context("extract", store, anthropic_provider(settings), outputs=[chunked])
    await extract(ctx)


def check_calls(
    fake: FakeAnthropicServer, store: MemoryStore, *, exact: bool = True
) -> dict[str, int]:
    """Every reworded fact of every call is in the facts of the chunks that said it.

    It may also be in the facts of another chunk of the call that said the
    same thing (the same fact in two conversations, one of them worded
    differently): the map step gives a fact to every chunk that states it in
    full. ``exact``: it is in no other chunk's facts (else those are counted
    as ``stray``).
    """
    assert fake.reword is not None
    by_title = {c.title: c for c in store.chunks}
    seen = {"facts": 0, "packed": 0, "merged": 0, "dates": 0, "stray": 0}
    for request in fake.calls("extract", ok=True):
        content = request.body["messages"][0]["content"]
        m = _TRANSCRIPT.search(content)
        assert m is not None
        parts = split_parts(m.group(1))
        if len(parts) == 1 and parts[0].ident is None:
            title = re.search(r"^Conversation title: (.*)$", content, re.M)
            assert title is not None
            chunks = [by_title[title.group(1)]]
        else:
            heads = re.findall(r"^System: new conversation (.*)$", m.group(1), re.M)
            titles = [_TITLE.search(h) for h in heads]
            chunks = [by_title[t.group("title")] for t in titles if t is not None]
            assert len(chunks) == len(parts)
        said = [{normalise(text_of(i)) for _, i in rules.extract(p.text).items()} for p in parts]
        for fact in fake.reword.facts(m.group(1)):
            wording = normalise(text_of(fact.item))
            owners = {chunks[i].id for i in fact.parts}
            also = {
                c.id
                for c, s in zip(chunks, said, strict=True)
                if s & set(map(normalise, fact.said))
            }
            for c in chunks:
                stored = {normalise(text_of(i)) for _, i in store.checkpoints[c.id].facts.items()}
                if c.id in owners:
                    assert wording in stored, (fact, c.title)
                elif c.id not in also and wording in stored:
                    assert not exact, (fact, c.title)
                    seen["stray"] += 1
            seen["facts"] += 1
            seen["packed"] += len(chunks) > 1
            seen["merged"] += len(fact.parts) > 1
            seen["dates"] += fact.category == "dates"
    return seen


async def test_every_reworded_fact_and_date_lands_on_its_own_conversation(
    fake_anthropic: FakeAnthropicServer, tmp_path: Path
) -> None:
    export = generate(40, seed=5, fact_rate=0.4, fmt="simplified")
    store = store_of(export.conversations)
    await extract_with(fake_anthropic, store, Rewording(seed=2, summary=0.5, merge=0.3), tmp_path)
    seen = check_calls(fake_anthropic, store)
    # The set puts attribution to the test: packed calls, merged facts, dates.
    assert seen["packed"] > 40 and seen["merged"] > 3 and seen["dates"] > 5, seen


async def test_words_alone_bring_unmerged_facts_home_but_stray_now_and_then(
    fake_anthropic: FakeAnthropicServer, tmp_path: Path
) -> None:
    # A model that cites nothing, or only ids that are not in the call: the
    # fallback still puts every paraphrase, summary and ISO date on its own
    # conversation. A summary can also land on another chunk that happens to
    # hold all its words ("Brightwater: side project written with Rust" on a
    # chunk about Halyard, written with Rust, whose filler says "bright"):
    # why the model is asked for ids.
    export = generate(40, seed=5, fact_rate=0.4, fmt="simplified")
    for rewording in (
        Rewording(seed=3, summary=0.5, merge=0, cite=False),
        Rewording(seed=4, summary=0.5, merge=0, stray_source=1),
    ):
        fake_anthropic.reset()
        store = store_of(export.conversations)
        await extract_with(fake_anthropic, store, rewording, tmp_path)
        seen = check_calls(fake_anthropic, store, exact=False)
        assert seen["packed"] > 40 and seen["stray"] <= 0.05 * seen["facts"], seen


HAND_BUILT = [
    {
        "id": "editor",
        "create_time": 1_700_000_000,
        "messages": [
            {"role": "user", "content": "I really prefer dark mode in every editor I use."},
            {"role": "assistant", "content": "Noted: dark themes everywhere."},
        ],
    },
    {
        "id": "keys",
        "create_time": 1_700_000_100,
        "messages": [
            {"role": "user", "content": "I really prefer Emacs keybindings, even in my browser."},
            {"role": "user", "content": "My sister's wedding is on June 14, 2025, in Porto."},
        ],
    },
    {
        "id": "work",
        "create_time": 1_700_000_200,
        "messages": [
            {"role": "user", "content": "We decided to move billing to Stripe last week."},
            {"role": "user", "content": "My thesis defence is on 3 March 2026."},
        ],
    },
]


async def test_a_hand_built_pack(fake_anthropic: FakeAnthropicServer, tmp_path: Path) -> None:
    store = store_of(HAND_BUILT)
    rewording = Rewording(summary=1, merge=1)
    await extract_with(fake_anthropic, store, rewording, tmp_path)
    (call,) = fake_anthropic.calls("extract", ok=True)
    assert call.answer[0]["input"]["preferences"] == [
        {
            "text": "Prefers dark mode in every editor and Emacs keybindings.",
            "sources": ["c1", "c2"],
        }
    ]
    facts = {c.title: store.checkpoints[c.id].facts for c in store.chunks}
    merged = "Prefers dark mode in every editor and Emacs keybindings."
    assert facts["editor"].preferences == facts["keys"].preferences == [merged]
    assert facts["work"].preferences == []
    assert [(d.event, d.date) for d in facts["keys"].dates] == [("Sister's wedding", "2025-06-14")]
    assert [(d.event, d.date) for d in facts["work"].dates] == [("Thesis defence", "2026-03-03")]
    assert [d.decision for d in facts["work"].decisions] == [
        "Decided to move billing to Stripe last week."
    ]
    check_calls(fake_anthropic, store)
