"""The offline provider: rule-based facts, MEMORY and sections, deterministic and honest."""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import date, datetime

import pytest

from jobs.domain.facts import MEMORY_SECTIONS, DateFact, Decision, Facts, Project, normalise
from jobs.domain.memory import NO_DATA
from jobs.domain.rules import extract, parse_date
from jobs.domain.sections import SECTION_NAMES
from jobs.domain.transcript import sentences
from tests.gen_export import generate
from worker.llm.base import ExtractionInput, LLMProvider
from worker.llm.offline import MODEL, OfflineProvider
from worker.llm.offline.persona import third_person, write_memory


def facts_of(*user_lines: str, today: date | None = None) -> Facts:
    return extract("\n".join(f"User: {line}" for line in user_lines), today)


def item(transcript: str, when: date | None = None) -> ExtractionInput:
    return ExtractionInput("chunk-1", "conv-1", "A title", transcript, when)


# --------------------------------------------------------------------------- rules


@pytest.mark.parametrize(
    "sentence",
    [
        "I really prefer dark mode in every editor.",
        "I prefer tabs over spaces.",
        "I always use pytest for tests.",
        "I love hiking in the Alps.",
        "I hate meetings before 10am.",
        "I don't like long answers.",
        "I'm a huge fan of Tailwind CSS.",
        "My favourite editor is Neovim.",
        "I'm vegetarian.",
    ],
)
def test_preferences(sentence: str) -> None:
    assert facts_of(sentence) == Facts(preferences=[sentence])


@pytest.mark.parametrize(
    ("sentence", "name", "description"),
    [
        (
            "I'm building Lumen, a side project written with Next.js and Supabase.",
            "Lumen",
            "a side project written with Next.js and Supabase",
        ),
        ("I'm working on Nimbus Notes, a note-taking app.", "Nimbus Notes", "a note-taking app"),
        (
            "I am writing a novel called The Long Tide about sailors.",
            "The Long Tide",
            "a novel about sailors",
        ),
        (
            "I'm building a habit tracker app in Rust.",
            "habit tracker app",
            "a habit tracker app in Rust",
        ),
        ("My side project is called Orchard.", "Orchard", "side project"),
        (
            "I'm the founder of Basalt, which sells CRMs to dentists.",
            "Basalt",
            "sells CRMs to dentists",
        ),
    ],
)
def test_projects(sentence: str, name: str, description: str) -> None:
    assert facts_of(sentence).projects == [Project(name=name, description=description)]


@pytest.mark.parametrize(
    ("sentence", "event", "when"),
    [
        ("My daughter's birthday is on March 04, 2021.", "Daughter's birthday", "2021-03-04"),
        ("Our wedding anniversary is 4 June 2019.", "Wedding anniversary", "2019-06-04"),
        ("My visa renewal deadline is due on 2025-11-30.", "Visa renewal deadline", "2025-11-30"),
        ("My mom's birthday is March 4th.", "Mom's birthday", "March 4th"),
        ("I got married on Sept. 3, 2015.", "Got married", "2015-09-03"),
        ("I was born in 1990.", "Born", "1990"),
        ("I started at Acme in March 2022.", "Started at Acme", "March 2022"),
        ("Our product launch is tomorrow.", "Product launch", "2024-05-02"),
    ],
)
def test_dates(sentence: str, event: str, when: str) -> None:
    assert facts_of(sentence, today=date(2024, 5, 1)).dates == [DateFact(event=event, date=when)]


def test_relative_dates_need_the_conversation_date() -> None:
    assert facts_of("Our product launch is tomorrow.").dates == []


@pytest.mark.parametrize(
    "sentence",
    [
        "I strongly believe privacy should be the default, not a setting.",
        "I believe in shipping small increments.",
        "I think everyone should own their data.",
        "I believe that everyone deserves good healthcare.",
        "I am convinced that testing saves time.",
        "I deeply value honesty in code review.",
        "I care a lot about accessibility.",
        "Privacy matters to me.",
        "In my opinion, tests are documentation that should never lie.",
    ],
)
def test_beliefs(sentence: str) -> None:
    assert facts_of(sentence) == Facts(beliefs=[sentence])


@pytest.mark.parametrize(
    ("sentence", "decision", "context"),
    [
        (
            "We decided to move the backend to Postgres because the joins in Mongo got painful.",
            "We decided to move the backend to Postgres.",
            "because the joins in Mongo got painful",
        ),
        (
            "I've decided to drop the mobile app for now.",
            "I've decided to drop the mobile app for now.",
            "",
        ),
        (
            "My team and I chose to hire a contractor, since our mockups slowed every release.",
            "My team and I chose to hire a contractor.",
            "since our mockups slowed every release",
        ),
        (
            "We switched from Mongo to Postgres last year.",
            "We switched from Mongo to Postgres last year.",
            "",
        ),
    ],
)
def test_decisions(sentence: str, decision: str, context: str) -> None:
    assert facts_of(sentence).decisions == [Decision(decision=decision, context=context)]


@pytest.mark.parametrize(
    "sentence",
    [
        "I'm a software engineer at a fintech startup.",
        "I work as a nurse in Leeds.",
        "I live in Berlin with my partner.",
        "I have two kids.",
        "My name is Sam.",
        "My name's Sam.",
        "I'm from Brazil.",
        "I have 3 kids and a dog.",
        "I'm 34 years old.",
    ],
)
def test_background_goes_to_decisions_and_context(sentence: str) -> None:
    assert facts_of(sentence) == Facts(decisions=[Decision(decision=sentence)])


@pytest.mark.parametrize(
    "sentence",
    [
        "Should I use tabs or spaces?",
        "If I prefer vim, which plugin manager is best.",
        "I'd like to know how indexes work.",
        "I think it's broken.",
        "I think so.",
        "I'm a bit confused.",
        "I'm writing an email to my landlord.",
        "I'm working on the bug from yesterday.",
        "I like your answer.",
        "I love that.",
        "He said I love pizza.",
        "The user prefers dark mode in our app.",
        "the data model cache queue retry trigger.",
        "I think we should use Redis here.",
        "I think the problem is in my loop, it never ends.",
        "I created an account.",
        "I'm building a function that parses dates.",
        "I'm running late.",
        "I believe so.",
        "I'm into it.",
    ],
)
def test_no_fact(sentence: str) -> None:
    assert facts_of(sentence) == Facts()


def test_building_anything_but_a_throwaway_is_a_project() -> None:
    facts = facts_of("I'm building a small CRM for my wife's bakery using Django.")
    assert facts.projects == [
        Project(name="small CRM", description="a small CRM for my wife's bakery using Django")
    ]


def test_a_second_first_person_clause_is_cut_off() -> None:
    facts = facts_of(
        "I'm a teacher and I need a lesson plan.",
        "I'm building Lumen, a journaling app, and I need help with auth.",
    )
    assert facts == Facts(
        projects=[Project(name="Lumen", description="a journaling app")],
        decisions=[Decision(decision="I'm a teacher.")],
    )


def test_filler_before_the_subject_is_trimmed() -> None:
    facts = facts_of("ok so honestly, i really prefer short answers")
    assert facts.preferences == ["I really prefer short answers."]


def test_the_earliest_statement_of_a_sentence_wins() -> None:
    facts = facts_of("I'm building Lumen because I love Next.js.")
    assert facts == Facts(projects=[Project(name="Lumen", description="because I love Next.js")])


def test_assistant_text_is_ignored() -> None:
    transcript = (
        "Assistant: I really prefer vim keybindings. I'm building Lumen, a side project.\n"
        "I strongly believe privacy should be the default.\n"
        "User: What should I use?\n"
        "Assistant: We decided to move the backend to Postgres because it is better.\n"
    )
    assert extract(transcript) == Facts()


def test_text_before_the_first_speaker_is_ignored() -> None:
    # A chunk that starts mid-turn: the speaker of its first lines is unknown.
    assert extract("I really prefer tabs.\nAssistant: Sure.") == Facts()


def test_user_turns_continue_over_lines() -> None:
    transcript = "User: some context here\nI really prefer tabs.\nAssistant: ok\nUser: thanks"
    assert extract(transcript).preferences == ["I really prefer tabs."]


def test_saved_memory_is_kept() -> None:
    transcript = (
        "Saved memory: User said: I really prefer vim keybindings.\n"
        "Saved memory: Prefers short bullet-point answers.\n"
        "Saved memory: User's dog is named Rex.\n"
        "Saved memory: User is building Kestrel, a budgeting app.\n"
    )
    facts = extract(transcript)
    assert facts.preferences == [
        "I really prefer vim keybindings.",
        "User prefers short bullet-point answers.",
    ]
    assert facts.decisions == [Decision(decision="User's dog is named Rex.")]
    assert facts.projects == [Project(name="Kestrel", description="a budgeting app")]


def test_custom_instructions_are_kept() -> None:
    facts = extract("Custom instructions: The user is a software engineer. Be concise.")
    assert facts.decisions == [Decision(decision="The user is a software engineer.")]
    assert facts.preferences == ["Custom instruction: Be concise."]


def test_repeats_within_a_chunk_collapse() -> None:
    transcript = (
        "User: I really prefer vim keybindings.\n"
        "Assistant: Noted.\n"
        "Saved memory: User said: I really prefer vim keybindings.\n"
        "User: i really prefer vim keybindings!\n"
    )
    assert extract(transcript).preferences == ["I really prefer vim keybindings."]


def test_sentences_split_at_punctuation_and_lines_not_abbreviations() -> None:
    text = "I use Next.js, e.g. for Lumen. Dr. Who is great! Really?\nNew line"
    assert list(sentences(text)) == [
        "I use Next.js, e.g. for Lumen.",
        "Dr. Who is great!",
        "Really?",
        "New line",
    ]


@pytest.mark.parametrize(
    ("text", "iso"),
    [
        ("March 04, 2021", "2021-03-04"),
        ("4th of July 2020", "2020-07-04"),
        ("2023-1-9", "2023-01-09"),
        ("25/12/2022", "2022-12-25"),
        ("12/25/2022", "2022-12-25"),
        ("03/04/2021", None),  # ambiguous: kept as written by the caller
        ("February 30, 2021", None),
        ("March 2021", None),
    ],
)
def test_parse_date(text: str, iso: str | None) -> None:
    assert parse_date(text) == iso


def test_third_person() -> None:
    assert third_person("I really prefer dark mode.") == "Really prefers dark mode."
    assert third_person("I'm a nurse in my town.") == "Is a nurse in their town."
    assert third_person("I don't like meetings.") == "Doesn't like meetings."
    assert third_person("User's dog is named Rex.") == "Their dog is named Rex."
    assert third_person("We decided to use Go.") == "We decided to use Go."


# --------------------------------------------------------------------------- recall


def _planted_match(category: str, planted: str, facts: Facts) -> bool:
    """Whether ``facts`` holds the planted sentence, in the planted category."""
    text = normalise(planted)
    if category in ("preferences", "beliefs"):
        return text in {normalise(s) for s in getattr(facts, category)}
    if category == "projects":
        return any(
            p.name and normalise(p.name) in text and text.endswith(normalise(p.description))
            for p in facts.projects
        )
    if category == "dates":
        # The generator writes "My <event> is on <Month DD, YYYY>."
        if " is on " not in planted:
            return False
        when = datetime.strptime(planted.rsplit(" is on ", 1)[1].rstrip("."), "%B %d, %Y")
        return any(
            normalise(d.event) in text and d.date == when.date().isoformat() for d in facts.dates
        )
    return any(normalise(f"{d.decision} {d.context}") == text for d in facts.decisions)


def _any_match(planted: str, facts: Facts) -> bool:
    return any(
        _planted_match(c, planted, facts)
        for c in ("preferences", "projects", "dates", "beliefs", "decisions")
    )


@pytest.fixture(scope="module")
def generated() -> tuple[list[dict], dict]:  # type: ignore[type-arg]
    export = generate(150, seed=3, fmt="simplified")
    return export.conversations, export.truth.as_dict()


def _transcript(conversation: dict) -> str:  # type: ignore[type-arg]
    return "\n".join(
        f"{'User' if m['role'] == 'user' else 'Assistant'}: {m['content']}"
        for m in conversation["messages"]
    )


async def test_recall_on_a_generated_export(generated: tuple[list[dict], dict]) -> None:  # type: ignore[type-arg]
    conversations, truth = generated
    provider = OfflineProvider()
    extracted: dict[str, Facts] = {}
    for conversation in conversations:
        result = await provider.extract_facts(item(_transcript(conversation)))
        extracted[conversation["id"]] = result.value
    planted: dict[str, list[dict[str, str]]] = defaultdict(list)
    for fact in truth["facts"]:
        planted[fact["conversation_id"]].append(fact)
    total = len(truth["facts"])
    assert total > 50
    hits = sum(
        _planted_match(f["category"], f["text"], extracted[f["conversation_id"]])
        for f in truth["facts"]
    )
    assert hits / total >= 0.98, f"recall {hits}/{total}"
    # Nothing beyond the planted facts: the filler holds no statements about the user.
    found = sum(facts.count() for facts in extracted.values())
    unique_planted = sum(len({normalise(f["text"]) for f in facts}) for facts in planted.values())
    assert found <= unique_planted
    for decoy in truth["decoys"]:
        same = {normalise(f["text"]) for f in planted[decoy["conversation_id"]]}
        if normalise(decoy["text"]) not in same:
            assert not _any_match(decoy["text"], extracted[decoy["conversation_id"]]), decoy


def test_speed(generated: tuple[list[dict], dict]) -> None:  # type: ignore[type-arg]
    text = "\n".join(_transcript(c) for c in generated[0][:40])
    chunks = [text[i : i + 8192] for i in range(0, len(text) - 8192, 8192)]
    assert len(chunks) >= 20
    start = time.perf_counter()
    for chunk in chunks:
        extract(chunk)
    per_chunk = (time.perf_counter() - start) / len(chunks)
    assert per_chunk < 0.005, f"{per_chunk * 1000:.2f} ms per 8 KB chunk"


# --------------------------------------------------------------------------- provider


SAMPLE = (
    "User: I really prefer short bullet-point answers. I'm building Lumen, a side project "
    "written with Next.js and Supabase. My daughter's birthday is on March 04, 2021. I strongly "
    "believe privacy should be the default, not a setting. We decided to move the backend to "
    "Postgres because the joins in Mongo got painful. I'm a data engineer.\n"
    "Assistant: Got it, I'll keep that in mind.\n"
)


async def test_provider_is_honest_and_counts_usage() -> None:
    provider: LLMProvider = OfflineProvider()
    assert provider.model == MODEL == "offline-rules-v1"
    result = await provider.extract_facts(item(SAMPLE))
    assert result.model == MODEL
    assert result.value.count() == 6
    assert result.usage.calls == 1
    assert result.usage.input_tokens == len(SAMPLE) // 4
    assert result.usage.output_tokens == len(result.value.model_dump_json()) // 4
    await provider.aclose()


async def test_extraction_is_deterministic() -> None:
    provider = OfflineProvider()
    first = await provider.extract_facts(item(SAMPLE))
    second = await OfflineProvider().extract_facts(item(SAMPLE))
    assert first == second


async def test_consolidate() -> None:
    facts = Facts(
        preferences=["I prefer tabs.", "i prefer TABS", "I like tea."],
        projects=[
            Project(name="Lumen", description="an app"),
            Project(name="Basalt", description="a CRM"),
            Project(name="lumen", description="a habit app written in Rust"),
            Project(name="Lumen", description="an app, again"),
        ],
        dates=[
            DateFact(event="Launch", date="2024-01-01"),
            DateFact(event="launch", date="2024-02-01"),
            DateFact(event="Wedding", date="2019-06-04"),
        ],
        beliefs=["Users own their data.", "Users own their data!"],
        decisions=[Decision(decision="Use Go."), Decision(decision="use go")],
    )
    result = await OfflineProvider().consolidate(facts)
    assert result.value == Facts(
        preferences=["I prefer tabs.", "I like tea."],
        projects=[
            Project(name="Lumen", description="a habit app written in Rust"),
            Project(name="Basalt", description="a CRM"),
        ],
        dates=[
            DateFact(event="Launch", date="2024-02-01"),
            DateFact(event="Wedding", date="2019-06-04"),
        ],
        beliefs=["Users own their data."],
        decisions=[Decision(decision="Use Go.")],
    )
    assert result.usage.calls == 1 and result.model == MODEL


def _headings(markdown: str) -> list[str]:
    return [line[3:] for line in markdown.splitlines() if line.startswith("## ")]


async def test_memory_has_the_five_sections_in_order() -> None:
    facts = (await OfflineProvider().extract_facts(item(SAMPLE))).value
    memory = (await OfflineProvider().write_memory(facts)).value
    assert memory.startswith("# MEMORY\n")
    assert "offline rule-based writer" in memory.splitlines()[2]
    assert _headings(memory) == list(MEMORY_SECTIONS)
    assert NO_DATA not in memory
    assert "- **Lumen**: a side project written with Next.js and Supabase." in memory
    assert "- 2021-03-04: Daughter's birthday." in memory


def test_empty_sections_say_no_data() -> None:
    memory = write_memory(Facts(preferences=["I prefer tabs."]))
    assert _headings(memory) == list(MEMORY_SECTIONS)
    bodies = memory.split("\n## ")[1:]
    assert "- I prefer tabs." in bodies[0]
    assert [body.split("\n\n", 1)[1].strip() for body in bodies[1:]] == [NO_DATA] * 4
    assert _headings(write_memory(Facts())) == list(MEMORY_SECTIONS)


def test_memory_dates_are_chronological() -> None:
    facts = Facts(
        dates=[
            DateFact(event="Launch", date="2024-02-01"),
            DateFact(event="Mom's birthday", date="March 4th"),
            DateFact(event="Wedding", date="June 4, 2019"),
            DateFact(event="Move", date="March 2021"),
        ]
    )
    lines = [line for line in write_memory(facts).splitlines() if line.startswith("- ")]
    assert lines == [
        "- June 4, 2019: Wedding.",
        "- March 2021: Move.",
        "- 2024-02-01: Launch.",
        "- March 4th: Mom's birthday.",
    ]


async def test_sections() -> None:
    provider = OfflineProvider()
    facts = (await provider.extract_facts(item(SAMPLE))).value
    memory = (await provider.write_memory(facts)).value
    samples = [SAMPLE, "User: I use Python and Docker every day.\nAssistant: Nice."] * 2
    result = await provider.write_sections(memory, samples)
    sections = result.value
    for name in SECTION_NAMES:
        section = getattr(sections, name)
        assert section.title and section.summary and section.points, name
    assert any("Lumen" in p for p in sections.user.points)
    assert "Is a data engineer." in sections.user.points
    assert any("privacy" in p for p in sections.soul.points)
    assert any("short" in p.casefold() for p in sections.identity.points)
    assert any("Postgres" in p for p in sections.agents.points)
    assert "Respect that the user really prefers short bullet-point answers." in (
        sections.agents.points
    )
    tools = " ".join(sections.tools.points)
    for tool in ("Next.js", "Supabase", "Postgres", "Python", "Docker"):
        assert tool in tools
    again = await OfflineProvider().write_sections(memory, samples)
    assert again == result
    assert result.usage.calls == 1 and result.model == MODEL


async def test_custom_instructions_become_agent_instructions() -> None:
    provider = OfflineProvider()
    facts = (await provider.extract_facts(item("Custom instructions: Be concise."))).value
    memory = (await provider.write_memory(facts)).value
    sections = (await provider.write_sections(memory, [])).value
    assert "Be concise." in sections.agents.points


async def test_sections_from_nothing_are_still_usable() -> None:
    provider = OfflineProvider()
    memory = (await provider.write_memory(Facts())).value
    sections = (await provider.write_sections(memory, [])).value
    for name in SECTION_NAMES:
        section = getattr(sections, name)
        assert section.title and section.summary and section.points, name
