"""Parsing model answers: tool calls, free-text JSON, lenient validation, MEMORY shape."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from jobs.domain.facts import (
    CATEGORIES,
    MEMORY_SECTIONS,
    DateFact,
    Decision,
    Facts,
    Project,
    sources_of,
    tool_schema,
)
from jobs.domain.memory import NO_DATA, fallback_memory, memory_sections, normalise_memory
from worker.llm.parse import BadAnswer, json_objects, parse_facts, parse_sections

GOOD: dict[str, Any] = {
    "preferences": ["Prefers tabs over spaces."],
    "projects": [{"name": "Lumen", "description": "A notes app.", "details": "Next.js"}],
    "dates": [{"event": "Product launch", "date": "2025-03-01"}],
    "beliefs": ["Believes users should own their data."],
    "decisions": [{"decision": "Moved to Postgres.", "context": "Mongo joins hurt."}],
}


def tool(data: object, name: str = "record_facts") -> dict[str, Any]:
    return {"type": "tool_use", "id": "toolu_1", "name": name, "input": data}


def text(body: str) -> dict[str, Any]:
    return {"type": "text", "text": body}


def headings(markdown: str) -> list[str]:
    return re.findall(r"^## (.+)$", markdown, re.M)


# ------------------------------------------------------------------ facts


def test_tool_use_input_is_preferred_over_text() -> None:
    other = {"preferences": ["From the text."]}
    facts = parse_facts([text(json.dumps(other)), tool(GOOD)])
    assert facts == Facts.model_validate(GOOD)


def test_tool_use_blocks_as_sdk_objects_work_too() -> None:
    class Block:
        type = "tool_use"
        name = "record_facts"
        input = GOOD

    assert parse_facts([Block()]).count() == 5


@pytest.mark.parametrize(
    "answer",
    [
        "```json\n" + json.dumps(GOOD, indent=2) + "\n```",
        "```\n" + json.dumps(GOOD) + "\n```",
        json.dumps(GOOD),
        "Sure! Here are the facts I found {as requested}:\n"
        + json.dumps(GOOD)
        + "\nLet me know if you need more.",
        "```json\n" + json.dumps(GOOD),  # unterminated fence (answer cut off after the JSON)
    ],
    ids=["fenced-json", "fenced-bare", "raw", "in-prose", "unterminated-fence"],
)
def test_free_text_json_is_accepted(answer: str) -> None:
    assert parse_facts([text(answer)]) == Facts.model_validate(GOOD)
    assert parse_facts(answer) == Facts.model_validate(GOOD)


def test_outermost_object_is_found_not_a_nested_one() -> None:
    found = json_objects('noise {"a": {"b": 1}, "c": [2]} tail {"d": 3}')
    assert found[0] == {"a": {"b": 1}, "c": [2]}
    assert {"b": 1} not in found


def test_wrong_typed_items_are_dropped_not_fatal() -> None:
    data = {
        "preferences": ["Likes tea.", {"pref": "x"}, 3, None, "  ", "likes TEA."],
        "projects": ["A loose project sentence.", 7, {"name": "Kestrel", "details": 5}],
        "dates": ["sometime", {"event": "Wedding", "date": "2020-06-01"}, {"date": "2020"}],
        "beliefs": "not a list",
        "decisions": [{"decision": "Hire a designer.", "context": None}, {"context": "why"}],
    }
    facts = parse_facts([tool(data)])
    assert facts.preferences == ["Likes tea."]  # dict, number, blank dropped; case-dupe merged
    assert facts.projects == [
        Project(description="A loose project sentence."),
        Project(name="Kestrel"),
    ]
    assert facts.dates == [DateFact(event="Wedding", date="2020-06-01")]
    assert facts.beliefs == []
    assert facts.decisions == [Decision(decision="Hire a designer.")]


def test_stringified_nested_arrays_are_decoded() -> None:
    data = {**GOOD, "projects": json.dumps(GOOD["projects"])}
    assert parse_facts([tool(data)]).projects[0].name == "Lumen"


def test_wrapped_payload_is_unwrapped() -> None:
    assert parse_facts([tool({"facts": GOOD})]) == Facts.model_validate(GOOD)


def test_empty_input_means_nothing_found() -> None:
    assert parse_facts([tool({})]) == Facts()
    empty: dict[str, list[str]] = {k: [] for k in GOOD}
    assert parse_facts([tool(empty)]) == Facts()


def test_bad_tool_input_falls_back_to_json_in_text() -> None:
    facts = parse_facts([text(json.dumps(GOOD)), tool("not an object")])
    assert facts.count() == 5


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ([text("I cannot help with that.")], "no record_facts call"),
        ([tool({"preferences": "dark", "projects": 4, "dates": "x"})], "wrong types"),
        ([tool({"summary": "unrelated"})], "none of the fact categories"),
        ([tool(["a", "list"])], "not an object"),
        ([], "no record_facts call"),
    ],
)
def test_unusable_answers_raise_bad_answer(content: list[Any], reason: str) -> None:
    with pytest.raises(BadAnswer, match=reason):
        parse_facts(content)


def test_bad_answer_is_a_value_error() -> None:
    assert issubclass(BadAnswer, ValueError)


# ------------------------------------------------------------------ sections

SECTIONS = {
    name: {"title": name.title(), "summary": f"About {name}.", "points": [f"{name} point"]}
    for name in ("soul", "identity", "user", "agents", "tools")
}


def test_sections_from_tool_call() -> None:
    sections = parse_sections([tool(SECTIONS, "write_sections")], "write_sections")
    assert sections.tools.points == ["tools point"]
    assert sections.soul.title == "Soul"


def test_sections_are_lenient_per_field() -> None:
    data = {
        **SECTIONS,
        "user": "Just a summary string.",
        "tools": {"title": 3, "summary": "Uses vim.", "points": "Vim"},
        "agents": {"summary": "Be brief.", "points": ["ok", 5, None]},
    }
    sections = parse_sections([tool(data, "write_sections")], "write_sections")
    assert sections.user.summary == "Just a summary string."
    assert sections.tools.title == ""
    assert sections.tools.points == ["Vim"]
    assert sections.agents.points == ["ok"]


def test_missing_sections_are_rejected() -> None:
    data = {k: v for k, v in SECTIONS.items() if k != "tools"}
    data["soul"] = 42  # type: ignore[assignment]
    with pytest.raises(BadAnswer, match="soul, tools"):
        parse_sections([tool(data, "write_sections")], "write_sections")


def test_sections_in_fenced_text() -> None:
    answer = "Here you go:\n```json\n" + json.dumps(SECTIONS) + "\n```"
    assert parse_sections([text(answer)], "write_sections").identity.summary == "About identity."


# ------------------------------------------------------------------ MEMORY

FACTS = Facts.model_validate(GOOD)


def test_normalise_keeps_good_memory_in_canonical_order() -> None:
    markdown = "\n\n".join(f"## {name}\n\n- fact about {name}" for name in MEMORY_SECTIONS)
    out = normalise_memory(markdown, FACTS)
    assert headings(out) == list(MEMORY_SECTIONS)
    assert "- fact about Projects" in out


def test_normalise_reorders_fills_and_drops_preamble() -> None:
    markdown = (
        "# MEMORY\n\nHere is the document you asked for.\n\n"
        "## Beliefs and values\n- Values privacy.\n\n"
        "## Preferences\n- Likes tea.\n\n"
        "## Important dates\n\n"
        "## Other notes\n- Has a cat.\n"
    )
    out = normalise_memory(markdown, FACTS)
    assert headings(out) == list(MEMORY_SECTIONS)
    assert "Here is the document" not in out
    bodies, _ = memory_sections(out)
    assert "- Likes tea." in bodies["Preferences"]
    assert "- Values privacy." in bodies["Beliefs & Values"]
    # An unknown heading keeps its content, demoted under the section before it.
    assert "### Other notes" in bodies["Important Dates"]
    assert "- Has a cat." in bodies["Important Dates"]
    # A missing section is rendered from the facts rather than lost.
    assert "**Lumen**" in "\n".join(bodies["Projects"])
    assert "Moved to Postgres." in "\n".join(bodies["Decisions & Context"])


def test_normalise_says_no_data_when_nothing_is_known() -> None:
    out = normalise_memory("## Preferences\n- Likes tea.\n", Facts())
    bodies, _ = memory_sections(out)
    assert bodies["Preferences"] == ["", "- Likes tea.", ""]
    for name in MEMORY_SECTIONS[1:]:
        assert NO_DATA in bodies[name]


def test_normalise_ignores_headings_inside_code_and_strips_outer_fence() -> None:
    markdown = "```markdown\n## Preferences\n```python\n## not a heading\n```\n- Likes tea.\n```"
    out = normalise_memory(markdown, Facts())
    bodies, _ = memory_sections(out)
    assert list(bodies) == list(MEMORY_SECTIONS)
    assert "## not a heading" in bodies["Preferences"]
    assert "- Likes tea." in bodies["Preferences"]
    assert not out.startswith("```")


def test_fallback_memory_renders_every_fact_deterministically() -> None:
    out = fallback_memory(FACTS)
    assert out == fallback_memory(FACTS)
    assert headings(out) == list(MEMORY_SECTIONS)
    assert "- Prefers tabs over spaces." in out
    assert "- **Lumen**: A notes app. Next.js." in out
    assert "- 2025-03-01: Product launch." in out
    assert "- Moved to Postgres. Context: Mongo joins hurt." in out


def test_fallback_memory_of_nothing_says_no_data() -> None:
    out = fallback_memory(Facts())
    assert out.count(NO_DATA) == 5


def test_fallback_memory_is_capped() -> None:
    facts = Facts(preferences=[f"Preference number {i} " + "x" * 80 for i in range(2000)])
    out = fallback_memory(facts)
    assert len(out) < 6000
    assert re.search(r"- …and \d+ more\.", out)


# ------------------------------------------------------------------ cited sources


def test_items_keep_the_ids_they_cite() -> None:
    cited = {
        "preferences": [{"text": "Prefers tabs.", "sources": ["c2"]}, "Likes tea."],
        "projects": [{"name": "Lumen", "description": "A notes app.", "sources": "c1"}],
        "dates": [{"event": "Launch", "date": "2025-03-01", "sources": ["c1", 3, "c" * 40]}],
        "beliefs": [{"text": "", "sources": ["c1"]}, {"sources": ["c1"]}],
    }
    facts = parse_facts([tool(cited)])
    assert facts.preferences == ["Prefers tabs.", "Likes tea."]
    assert [sources_of(p) for p in facts.preferences] == [("c2",), ()]
    assert sources_of(facts.projects[0]) == ("c1",)
    assert sources_of(facts.dates[0]) == ("c1",)  # not strings, or too long: not ids
    assert facts.beliefs == []  # a sentence without text is nothing
    # Stored facts carry no ids.
    assert "sources" not in json.dumps(facts.model_dump())
    assert facts.projects[0].fields() == {
        "name": "Lumen", "description": "A notes app.", "details": "",
    }  # fmt: skip


def test_the_tool_schema_asks_every_item_for_its_sources() -> None:
    schema = tool_schema()
    for category in CATEGORIES:
        item = schema["properties"][category.key]["items"]
        assert list(item["properties"])[-1] == "sources"
        assert "sources" not in item["required"]
        assert item["properties"]["sources"]["type"] == "array"
        if not category.structured:
            assert item["required"] == ["text"]
    # What the schema asks for, the parser reads back.
    answer = {c.key: [] for c in CATEGORIES}
    answer["beliefs"] = [{"text": "Believes in tests.", "sources": ["c1"]}]
    assert sources_of(parse_facts([tool(answer)]).beliefs[0]) == ("c1",)
