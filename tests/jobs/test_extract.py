"""The map step: checkpoints, resume without paying twice, batch mode, token thrift."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg_pool import AsyncConnectionPool

from jobs.domain import rules
from jobs.domain.facts import BY_KEY, DateFact, Facts, Project, Sentence, sources_of
from jobs.domain.transcript import condense_transcript, cut_pastes, novel_part
from jobs.extract import (
    _WORD,
    _group,
    _stems,
    attribute,
    pack_id,
    pack_shares,
    without_saved_facts,
)
from tests.conftest import USER_A, USER_B, make_settings, query
from tests.fakes.fake_anthropic import FakeAnthropicServer, Fault
from tests.fakes.plugin import anthropic_provider
from tests.helpers import drive, import_row, stage_rows, submit
from worker import runner
from worker.llm.base import ExtractionInput, LLMResult, ModelRefused
from worker.llm.offline import OfflineProvider
from worker.settings import Settings
from worker.store import ChunkText, Store


def test_condense_keeps_user_words_and_trims_assistant_turns() -> None:
    content = (
        "User: I really prefer vim keybindings. " + "x" * 50 + "\n\n"
        "Assistant: " + "long answer " * 100 + "\n\n"
        "User (continued): and tabs over spaces."
    )
    out = condense_transcript(content, assistant_chars=40)
    assert "I really prefer vim keybindings." in out
    assert "and tabs over spaces." in out
    assert len(out) < 200
    assert condense_transcript("Assistant: only the model speaks here.") == ""
    assert condense_transcript("Assistant (continued): tail\n\nUser: hi there") == (
        "Assistant (continued): tail\n\nUser: hi there"
    )


_CODE = "\n".join(
    f"def step_{i}(ledger, harbour):\n    total = ledger.sum(harbour)\n    return total\n"
    for i in range(20)
)
_LOG = "\n".join(
    f"2025-03-0{i % 9 + 1}T10:22:{i % 60:02d}.120Z ERROR [rota.sync] socket closed early"
    for i in range(20)
)
_DOC = "# Harbour notes\n\n" + "\n\n".join(
    "The ledger opens at dawn. Ferry tickets are sold at the station. " * 4 for _ in range(3)
)


_SPEAKERS = ["User", "User (continued)", "Assistant", "Assistant (continued)", "Saved memory"]


@given(
    turns=st.lists(
        st.tuples(
            st.sampled_from([*_SPEAKERS, ""]),
            st.text(alphabet="ab .`{}\n\t", max_size=200),
        ),
        max_size=12,
    ),
    enough=st.integers(min_value=1, max_value=300),
    paste_chars=st.sampled_from([0, 40, 2000]),
)
def test_condensing_only_the_head_gives_the_head_of_the_whole(
    turns: list[tuple[str, str]], enough: int, paste_chars: int
) -> None:
    content = "\n".join(f"{who}: {text}" if who else text for who, text in turns)
    kw: dict[str, Any] = {"paste_chars": paste_chars, "assistant_chars": 30}
    whole = condense_transcript(content, max_message_chars=150, **kw)
    head = condense_transcript(content, max_message_chars=150, enough=enough, **kw)
    assert whole.startswith(head)
    assert head[:enough] == whole[:enough]


def test_condensing_the_head_of_a_long_conversation_stops_early() -> None:
    content = "\n\n".join(
        f"User: question {i} about the harbour ledger\n\nAssistant: {'an answer ' * 40}"
        for i in range(2000)
    )
    whole = condense_transcript(content)
    head = condense_transcript(content, enough=300)
    assert 300 <= len(head) < 600 < len(whole)
    assert whole.startswith(head)


def test_long_pastes_are_cut_to_their_first_line_and_what_the_user_says() -> None:
    fact = "I'm building Rota, a side project written with Go and DuckDB."
    doc = _DOC.replace("The ledger opens", "We decided to move to Porto. The ledger", 1)
    turn = (
        f"User: Why does this fail? {fact}\n\n```python\n{_CODE}\n```\n\n{_LOG}\n\n{doc}"
        "\n\nIt started after the upgrade. My launch is on May 3, 2025."
    )
    assert len(turn) < 5000  # what the chunker keeps of a message
    out = condense_transcript(turn, paste_chars=2000)
    assert len(out) < len(turn) // 4
    # The user's own words before and after the pastes stay whole.
    assert out.startswith(f"User: Why does this fail? {fact}")
    assert out.endswith("It started after the upgrade. My launch is on May 3, 2025.")
    # Each paste keeps its first line and its first-person sentences, then a marker.
    assert "```python" in out and "2025-03-01T10:22:00.120Z ERROR" in out
    assert "# Harbour notes" in out and "We decided to move to Porto." in out
    assert "characters of pasted text left out" in out
    assert "step_10" not in out and "Ferry tickets" not in out
    # Short turns, and turns under the threshold, are sent as they are.
    assert condense_transcript(turn, paste_chars=0) == condense_transcript(turn)
    assert condense_transcript(turn, paste_chars=len(turn) + 1) == condense_transcript(turn)
    short = "User: hello\n\nAssistant: hi\n\nUser: bye"
    assert condense_transcript(short, paste_chars=10) == short


def test_a_paste_sent_once_is_not_sent_again() -> None:
    seen: set[str] = set()
    first = cut_pastes(f"User: look at this\n\n{_LOG}\n\nthanks", seen)
    again = cut_pastes(f"User: same again, I changed nothing\n\n{_LOG}\n\nstill broken", seen)
    assert "ERROR [rota.sync]" in first
    assert "ERROR [rota.sync]" not in again and "the same pasted text as earlier" in again
    assert again.startswith("User: same again, I changed nothing")
    assert again.endswith("still broken")
    # An attachment (as the reader writes Claude's) is a paste too.
    attached = cut_pastes(f"User: summarise\n\n[Attachment: notes.md]\n{_DOC}", set())
    assert attached.startswith("User: summarise\n\n[Attachment: notes.md]")
    assert len(attached) < 300


def test_assistant_turns_after_the_users_last_words_are_left_out() -> None:
    content = (
        "Assistant (continued): the end of an answer.\n\nUser: I really prefer tabs.\n\n"
        "Assistant: a reply to that, which explains nothing the user said.\n\n"
        "Assistant: and another one."
    )
    assert condense_transcript(content) == (
        "Assistant (continued): the end of an answer.\n\nUser: I really prefer tabs."
    )
    pasted = f"User: fix it\n\n{_LOG}\n\nthanks\n\nAssistant: done, here it is."
    assert condense_transcript(pasted, paste_chars=500).endswith("thanks")


def _settings(db_dsn: str, tmp_path: Path, fake: FakeAnthropicServer, **kw: Any) -> Settings:
    return make_settings(db_dsn, tmp_path, **fake.settings_env(), **kw)


async def _deps(settings: Settings, pool: AsyncConnectionPool[Any]) -> runner.Deps:
    return runner.Deps(settings=settings, store=Store(pool), llm=anthropic_provider(settings))


async def test_resume_after_interruption_never_pays_twice_for_a_chunk(
    db_dsn: str, tmp_path: Path, pool: AsyncConnectionPool[Any], fake_anthropic: FakeAnthropicServer
) -> None:
    settings = _settings(db_dsn, tmp_path, fake_anthropic, FULLPASS_CONCURRENCY=4)
    deps = await _deps(settings, pool)
    # Small packs: many calls, so the interruption lands mid-map.
    import_id = submit(settings, USER_A, options='{"pack_tokens": 600}')
    await drive(deps, db_dsn, import_id, until="chunk")
    total = import_row(db_dsn, import_id)["chunk_count"]

    fake_anthropic.latency = 0.05
    run = asyncio.create_task(drive(deps, db_dsn, import_id, until="extract"))
    while query(db_dsn, "select count(*) as n from chunk_facts")[0]["n"] < total // 3:
        await asyncio.sleep(0.01)
    run.cancel()  # the worker dies mid-map
    await asyncio.gather(run, return_exceptions=True)
    done_before = {
        r["id"]
        for r in query(
            db_dsn,
            "select c.id::text as id from import_chunks c join chunk_facts f on f.chunk_id = c.id",
        )
    }
    assert 0 < len(done_before) < total
    # The interrupted job stays 'doing'; the sweeper would requeue it. Do that by hand here.
    query(db_dsn, "update procrastinate_jobs set status = 'todo' where status = 'doing'")
    fake_anthropic.latency = 0.0
    await drive(deps, db_dsn, import_id)
    assert import_row(db_dsn, import_id)["status"] == "complete"

    rows = query(db_dsn, "select c.id::text as id, c.content from import_chunks c")
    counts = fake_anthropic.extraction_counts()
    for row in rows:
        key = fake_anthropic.key_of(condense_transcript(row["content"]))
        if row["id"] in done_before:
            assert counts[key] <= 1, "a checkpointed chunk was extracted again"
    assert query(db_dsn, "select count(*) as n from chunk_facts")[0]["n"] == total
    assert stage_rows(db_dsn, import_id)["extract"]["attempts"] == 2


class AnswersWhenCancelled(OfflineProvider):
    """Each call waits until it is cancelled, then answers anyway: what a call does when
    its answer and the cancellation arrive together (``asyncio.wait_for`` in Python 3.11
    returns the answer and drops the cancellation)."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = 0
        self.cancelled = asyncio.Event()  # once set, calls answer at once

    async def extract_facts(self, item: ExtractionInput) -> LLMResult[Facts]:
        self.waiting += 1
        try:
            await self.cancelled.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
        return await super().extract_facts(item)


async def test_a_job_cancelled_as_answers_arrive_stops_as_cancelled_and_keeps_them(
    db_dsn: str, tmp_path: Path, pool: AsyncConnectionPool[Any]
) -> None:
    """A shutdown mid-map is an interruption, not a failure of the stage, even when
    answers come back while the calls are being cancelled; those answers are kept."""
    settings = make_settings(db_dsn, tmp_path, FULLPASS_EMBEDDINGS="none", FULLPASS_CONCURRENCY=2)
    llm = AnswersWhenCancelled()
    deps = runner.Deps(settings=settings, store=Store(pool), llm=llm)
    import_id = submit(settings, USER_A, options='{"pack_tokens": 600}')
    await drive(deps, db_dsn, import_id, until="chunk")
    run = asyncio.create_task(drive(deps, db_dsn, import_id, until="extract"))
    while llm.waiting < 2:
        await asyncio.sleep(0.01)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    extract = stage_rows(db_dsn, import_id)["extract"]
    assert (extract["status"], extract["error"], extract["attempts"]) == ("running", None, 1)
    # The two answers were paid for: checkpointed, so a resumed job does not ask again.
    assert query(db_dsn, "select count(*) as n from chunk_facts")[0]["n"] >= 2


class RefusedAsAnotherAnswers(OfflineProvider):
    """The first call answers; the second is refused the moment the first has its
    answer (an API key revoked while calls are in flight)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.answered = asyncio.Event()

    async def extract_facts(self, item: ExtractionInput) -> LLMResult[Facts]:
        self.calls += 1
        if self.calls == 1:
            while self.calls < 2:  # both calls in flight
                await asyncio.sleep(0.01)
            self.answered.set()
            return await super().extract_facts(item)
        await self.answered.wait()
        raise ModelRefused("the API key was revoked")


async def test_an_answer_in_hand_is_kept_when_another_call_is_refused(
    db_dsn: str, tmp_path: Path, pool: AsyncConnectionPool[Any]
) -> None:
    """A refusal fails the stage, but what was already paid for is checkpointed:
    the requeue after the operator's fix does not pay for it again."""
    settings = make_settings(db_dsn, tmp_path, FULLPASS_EMBEDDINGS="none", FULLPASS_CONCURRENCY=2)
    llm = RefusedAsAnotherAnswers()
    deps = runner.Deps(settings=settings, store=Store(pool), llm=llm)
    import_id = submit(settings, USER_A, options='{"pack_tokens": 600}')
    await drive(deps, db_dsn, import_id, until="chunk")
    await drive(deps, db_dsn, import_id, until="extract")
    extract = stage_rows(db_dsn, import_id)["extract"]
    assert extract["status"] == "failed"
    assert "revoked" in extract["error"]
    assert llm.calls == 2
    assert query(db_dsn, "select count(*) as n from chunk_facts")[0]["n"] >= 1


async def test_batch_mode_submits_polls_and_collects(
    db_dsn: str, tmp_path: Path, pool: AsyncConnectionPool[Any], fake_anthropic: FakeAnthropicServer
) -> None:
    settings = _settings(
        db_dsn, tmp_path, fake_anthropic, FULLPASS_BATCH=True, FULLPASS_BATCH_POLL_SECONDS=0.2
    )
    deps = await _deps(settings, pool)
    import_id = submit(settings, USER_A, options='{"pack_tokens": 1}')  # one chunk per request
    await drive(deps, db_dsn, import_id, until="chunk")
    fake_anthropic.batch_delay = 0.3
    # A first chunk: a later one is sent without the overlap it shares with the chunk
    # before, and that part may hold all its user text (it is then not sent at all).
    chunk = next(
        r
        for r in query(
            db_dsn,
            "select id::text as id, content from import_chunks where chunk_index = 0 order by id",
        )
        if condense_transcript(r["content"])
    )
    fake_anthropic.set_batch_item_outcome(chunk["id"], "errored")

    await drive(deps, db_dsn, import_id, until="extract")  # submit, then park
    parked = stage_rows(db_dsn, import_id)["extract"]
    assert parked["status"] == "running" and parked["attempts"] == 0
    assert len(parked["output"]["batch"]["ids"]) == 1
    jobs = query(
        db_dsn,
        "select scheduled_at from procrastinate_jobs"
        " where status = 'todo' and task_name = 'fullpass.extract'",
    )
    assert jobs and jobs[0]["scheduled_at"] is not None  # re-checked later, no slot held
    assert [r for r in fake_anthropic.calls("extract") if r.method != "BATCH"] == []

    await asyncio.sleep(0.4)
    await drive(deps, db_dsn, import_id)
    row = import_row(db_dsn, import_id)
    assert row["status"] == "complete", row["error"]
    out = stage_rows(db_dsn, import_id)["extract"]["output"]
    assert out["batch"]["retried_online"] == 1
    assert out["batch"]["succeeded"] == out["batch"]["submitted"] - 1
    online = [r for r in fake_anthropic.calls("extract") if r.method != "BATCH"]
    assert len(online) == 1  # only the errored item went online
    assert query(db_dsn, "select count(*) as n from chunk_facts")[0]["n"] == row["chunk_count"]
    assert fake_anthropic.duplicate_extractions() == {}


async def test_sends_far_fewer_tokens_than_whole_chunks(
    db_dsn: str, tmp_path: Path, pool: AsyncConnectionPool[Any], fake_anthropic: FakeAnthropicServer
) -> None:
    settings = _settings(db_dsn, tmp_path, fake_anthropic)
    deps = await _deps(settings, pool)
    import_id = submit(settings, USER_A)
    await drive(deps, db_dsn, import_id, until="extract")
    whole = query(db_dsn, "select sum(token_count) as t from import_chunks")[0]["t"]
    sent = stage_rows(db_dsn, import_id)["extract"]["input_tokens"]
    assert 0 < sent < whole * 0.5


def test_pack_facts_go_to_the_chunk_that_said_them() -> None:
    facts = Facts(
        preferences=["Prefers vim keybindings.", "Prefers tabs over spaces."],
        projects=[Project(name="Lumen", description="A Rust CLI.")],
    )
    shares = attribute(
        facts,
        [
            "User: I'm building Lumen, a CLI in Rust.",
            "User: honestly I really prefer vim keybindings",
            "User: tabs over spaces, always.",
        ],
    )
    assert [s.projects for s in shares] == [facts.projects, [], []]
    assert [s.preferences for s in shares] == [
        [],
        ["Prefers vim keybindings."],
        ["Prefers tabs over spaces."],
    ]


PACK = [
    "User: I'm building Lumen, a CLI in Rust.",
    "User: honestly I really prefer vim keybindings",
    "User: tabs over spaces, always. My launch is on May 3, 2025.",
]


def test_cited_ids_place_what_words_cannot() -> None:
    merged = Sentence("Prefers vim and tabs.", ["c2", "c3"])
    launch = DateFact(event="Launch", date="2025-05-03", sources=["c3"])
    facts = Facts.of([(BY_KEY["preferences"], merged), (BY_KEY["dates"], launch)])
    shares = attribute(facts, PACK)
    # A fact merged from two chunks belongs to both; a date goes where it was said
    # (its ISO form shares no word with "May 3, 2025" but "2025").
    assert [s.preferences for s in shares] == [[], [merged], [merged]]
    assert [s.dates for s in shares] == [[], [], [DateFact(event="Launch", date="2025-05-03")]]
    # What is stored cites nothing.
    stored = [item for s in shares for _, item in s.items()]
    assert all(sources_of(item) == () for item in stored)
    assert all(type(item) is str for s in shares for item in s.preferences)


def test_ids_not_in_the_pack_leave_a_fact_to_its_words() -> None:
    stray = Sentence("Prefers vim keybindings.", ["c9", "chunk 2", ""])
    project = Project(name="Lumen", description="A Rust CLI.", sources=["c7"])
    shares = attribute(
        Facts.of([(BY_KEY["preferences"], stray), (BY_KEY["projects"], project)]), PACK
    )
    assert [s.preferences for s in shares] == [[], ["Prefers vim keybindings."], []]
    assert [s.projects for s in shares] == [
        [Project(name="Lumen", description="A Rust CLI.")],
        [],
        [],
    ]


def test_a_single_chunk_keeps_its_facts_without_ids() -> None:
    cited = Project(name="Lumen", description="A Rust CLI.", sources=["c1"])
    (share,) = attribute(Facts.of([(BY_KEY["projects"], cited)]), [PACK[0]])
    assert share.projects == [Project(name="Lumen", description="A Rust CLI.")]


def test_packed_chunks_are_labelled_with_the_ids_the_model_cites() -> None:
    texts = [
        ChunkText(f"id{i}", f"conv{i}", 0, f"Title {i}", "User: hi", "h", None) for i in range(3)
    ]
    group = _group([(t, "User: hi") for t in texts])
    assert [m.header for m in group.members] == [
        f'System: new conversation [{pack_id(i)}] "Title {i}", dated undated.' for i in range(3)
    ]
    assert pack_id(0) == "c1"
    assert '[c3] "Title 2"' in group.item.transcript


@given(st.text())
def test_stems_are_the_word_prefixes_of_the_plain_regex(text: str) -> None:
    # The byte-level splitter must agree with the definition it speeds up.
    assert _stems(text) == {w[:5] for w in _WORD.findall(text.casefold())}


def test_stems_of_mixed_scripts() -> None:
    assert _stems("Straße café_bar … x1y2z3 ok, tabs…spaces") == {
        "stras", "café", "bar", "x1y2z", "tabs", "space",
    }  # fmt: skip


_OVERLAP = "a long answer about green tea, oolong and how to brew both at home without a kettle."


def test_novel_part_drops_the_overlap_and_keeps_the_speaker() -> None:
    previous = f"User: Which tea should I try?\n\nAssistant: Here is {_OVERLAP}"
    current = f"Assistant (continued): {_OVERLAP}\n\nUser: I love oolong."
    assert novel_part(previous, current) == "User: I love oolong."
    # The overlap ends mid-turn: the rest keeps the speaker of the last label before it.
    current = f"Assistant (continued): {_OVERLAP} Also matcha.\n\nUser: Thanks."
    assert novel_part(previous, current) == "Assistant (continued): Also matcha.\n\nUser: Thanks."


def test_novel_part_when_the_overlap_starts_at_a_turn() -> None:
    previous = f"User: I love tea.\n\nUser: Tell me {_OVERLAP}"
    current = f"User: Tell me {_OVERLAP} I prefer oolong."
    assert novel_part(previous, current) == "User (continued): I prefer oolong."


def test_novel_part_leaves_unrelated_or_all_overlap_chunks() -> None:
    previous = f"User: Here is {_OVERLAP}"
    unrelated = "User (continued): something else entirely, with no text in common at all."
    assert novel_part(previous, unrelated) == unrelated
    assert novel_part(previous, f"User (continued): {_OVERLAP}") == ""
    assert novel_part(previous, "User (continued): short") == "User (continued): short"


def test_saved_facts_are_filed_by_the_rules_every_sentence_kept() -> None:
    memory = rules.saved_facts("memory", "Prefers dark mode in every editor.")
    assert any("dark mode" in p for p in memory.preferences)
    instructions = rules.saved_facts(
        "instructions",
        "Answer tersely, with code first. Use metric units. Never use emoji.\n"
        "```python\nprint('example')\n```\nCall me Sam.",
    )
    texts = [text for _, item in instructions.items() for text in [str(item)]]
    for said in ("Answer tersely", "metric units", "Never use emoji", "Call me Sam"):
        assert any(said in t for t in texts), said
    assert not any("```" in t or "print(" in t for t in texts)


def test_what_the_model_restates_of_the_saved_facts_counts_once() -> None:
    saved = rules.saved_facts("memory", "Prefers dark mode in every editor.")
    said = Facts(preferences=["Prefers dark mode in every editor.", "Drinks oolong tea."])
    kept = without_saved_facts(said, saved)
    assert kept.preferences == ["Drinks oolong tea."]
    assert without_saved_facts(said, Facts()) == said


def test_a_fact_one_chunk_of_a_pack_saved_stays_with_the_chunk_that_says_it() -> None:
    fact = "I really prefer spaces over tabs."
    said = f"User: {fact} Anyway, the ledger."
    saved_elsewhere = f"Saved memory: User said: {fact}\n\nUser: the harbour schedule."
    saved = rules.saved_facts("memory", f"User said: {fact}")
    answer = Facts(preferences=[fact])

    shares = pack_shares(answer, [said, saved_elsewhere], [Facts(), saved])

    assert shares[0].preferences == [fact]
    assert shares[1].preferences == []
    # A restatement that only shares words with another chunk goes nowhere.
    memory = rules.saved_facts("memory", "Is a vegetarian.")
    restated = Facts(preferences=["User is a vegetarian."])
    profile = "Custom instructions: Vegetarian.\n\nUser: the harbour schedule."
    told = "Saved memory: Is a vegetarian.\n\nUser: a ledger."
    assert [s.count() for s in pack_shares(restated, [profile, told], [Facts(), memory])] == [0, 0]


async def test_saved_memories_survive_a_model_that_only_answers_garbage(
    db_dsn: str, tmp_path: Path, pool: AsyncConnectionPool[Any], fake_anthropic: FakeAnthropicServer
) -> None:
    settings = _settings(db_dsn, tmp_path, fake_anthropic)
    deps = await _deps(settings, pool)
    fake_anthropic.inject(Fault("garbage_text", only="extract"), times=10_000)
    import_id = submit(settings, USER_A)
    await drive(deps, db_dsn, import_id, until="extract")
    rows = query(
        db_dsn,
        "select f.facts, f.error, c.content, c.conversation_id from chunk_facts f"
        " join import_chunks c on c.id = f.chunk_id where f.import_id = %s",
        (import_id,),
    )
    assert rows and all(r["error"] for r in rows if "Saved memory:" in r["content"])
    # Filed when the export was chunked: whatever the model answers, they reach reduce.
    saved_rows = query(
        db_dsn,
        "select s.facts, c.conversation_id from chunk_saved_facts s"
        " join import_chunks c on c.id = s.chunk_id where s.import_id = %s",
        (import_id,),
    )
    found: dict[str, set[str]] = {}
    for r in saved_rows:
        texts = [json.dumps(items) for items in r["facts"].values()]
        found.setdefault(r["conversation_id"], set()).update(_stems(" ".join(texts)))
    saved = {
        (r["conversation_id"], line)
        for r in rows
        for line in re.findall(r"^Saved memory: (.+)$", r["content"], re.M)
    }
    assert saved
    for conversation_id, line in saved:
        words = _stems(line) - {"user", "said"}
        assert len(words & found[conversation_id]) >= 0.75 * len(words), line  # dates go ISO


async def test_small_chunks_share_calls_and_keep_recall(
    db_dsn: str, tmp_path: Path, pool: AsyncConnectionPool[Any], fake_anthropic: FakeAnthropicServer
) -> None:
    settings = _settings(db_dsn, tmp_path, fake_anthropic)
    deps = await _deps(settings, pool)
    packed = submit(settings, USER_A)
    await drive(deps, db_dsn, packed, until="extract")
    out = stage_rows(db_dsn, packed)["extract"]["output"]
    chunks = import_row(db_dsn, packed)["chunk_count"]
    assert out["calls"] < chunks / 3
    packed_facts = _distinct_facts(db_dsn, packed)

    query(db_dsn, "select public.cancel_import(%s)", (packed,))
    # Another user's import: nothing of the first one is reused.
    single = submit(settings, USER_B, options='{"pack_tokens": 1}')
    await drive(deps, db_dsn, single, until="extract")
    alone = stage_rows(db_dsn, single)["extract"]["output"]
    assert alone["calls"] == chunks - alone["skipped_no_user_text"]
    # The same facts, once each (chunks overlap, so a pack may state a fact once where
    # two chunks sent alone state it twice).
    assert packed_facts == _distinct_facts(db_dsn, single)


def _distinct_facts(dsn: str, import_id: Any) -> set[tuple[str, str]]:
    rows = query(dsn, "select facts from chunk_facts where import_id = %s", (import_id,))
    return {
        (category, json.dumps(item, sort_keys=True))
        for r in rows
        for category, items in r["facts"].items()
        for item in items
    }


async def test_a_deeply_nested_answer_costs_its_chunk_not_the_import(
    db_dsn: str, tmp_path: Path, pool: AsyncConnectionPool[Any], fake_anthropic: FakeAnthropicServer
) -> None:
    settings = _settings(db_dsn, tmp_path, fake_anthropic)
    deps = await _deps(settings, pool)
    # The first call's answer and its corrective retry both nest 3,000 levels deep
    # (one call at a time, so that both faults hit the same call).
    fake_anthropic.inject(Fault("deep_nesting", only="extract"), times=2)
    import_id = submit(settings, USER_A, options='{"concurrency": 1}')
    await drive(deps, db_dsn, import_id, until="extract")
    stages = query(
        db_dsn,
        "select status, input_tokens from import_stages where import_id = %s and stage = 'extract'",
        (import_id,),
    )
    assert stages[0]["status"] == "done"
    failed = query(
        db_dsn,
        "select error, input_tokens, output_tokens from chunk_facts"
        " where import_id = %s and error is not null",
        (import_id,),
    )
    assert failed and "could not be read" in failed[0]["error"]
    billed = [c for c in fake_anthropic.calls("extract") if c.fault == "deep_nesting"]
    assert len(billed) == 2
    # Booked on one chunk of the call (the call's chunks together hold them).
    assert sum(r["input_tokens"] for r in failed) == sum(c.input_tokens for c in billed)
    assert sum(r["output_tokens"] for r in failed) == sum(c.output_tokens for c in billed)
    served = sum(c.input_tokens for c in fake_anthropic.calls("extract"))
    assert stages[0]["input_tokens"] == served
