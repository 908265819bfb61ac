"""Shapes that real ChatGPT and Claude exports take, read from small hand-made fixtures.

Each fixture under ``fixtures/`` reproduces one structure seen in exports that
people really download (Claude branch trees and unordered messages, artifact
placeholders, attachments; ChatGPT custom instructions, saved-memory snapshots
and citation markers). The tests pin the exact text that must come out, and
the text that must not.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs.ingest import formats
from jobs.ingest.formats import MAX_ATTACHMENT_CHARS, MAX_MESSAGE_CHARS, normalise_conversation
from jobs.ingest.model import Conversation
from jobs.ingest.reader import ReadStats
from worker.cli import main
from worker.settings import get_settings

from .conftest import read_all

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = "00000000-0000-4000-8000-000000000000"


def read_fixture(name: str) -> tuple[list[Conversation], ReadStats]:
    return read_all(FIXTURES / name)


def texts(conv: Conversation) -> list[tuple[str, str, str]]:
    return [(m.role, m.kind, m.text) for m in conv.messages]


def all_text(convs: list[Conversation]) -> str:
    return "\n".join(m.text for c in convs for m in c.messages)


def claude_message(
    uuid: str, sender: str, text: str, minute: int, parent: str | None = ROOT
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "uuid": uuid,
        "sender": sender,
        "text": text,
        "content": [{"type": "text", "text": text}],
        "created_at": f"2025-01-01T10:{minute:02d}:00Z",
    }
    if parent is not None:
        message["parent_message_uuid"] = parent
    return message


def claude(messages: list[Any], **extra: Any) -> Conversation:
    conv = normalise_conversation({"uuid": "c", "chat_messages": messages, **extra}, 0, ReadStats())
    return conv


# --------------------------------------------------------------------------- Claude branches


def test_claude_keeps_only_the_branch_ending_at_the_latest_leaf() -> None:
    convs, stats = read_fixture("claude_branches.json")
    minimal, middle, flat = convs
    assert texts(minimal) == [
        ("user", "text", "KEPT: I'm building Orrery, a side project written with Rust and SQLite."),
        ("assistant", "text", "KEPT ANSWER: Rust and SQLite suit a local-first app."),
    ]
    assert [m.text for m in middle.messages] == [
        "Q1: how do I plan a garden?",
        "A1: start with the light.",
        "Q2: My wedding anniversary is on June 12, 2019.",
        "A2: plant something that flowers in June.",
    ]
    assert [m.text for m in flat.messages] == [
        "FLAT Q: what should I read next?",
        "FLAT A: a novel you can finish in a week.",
    ]
    text = all_text(convs)
    assert "ABANDONED" not in text and "RETRIED AWAY" not in text and "Elm" not in text
    assert stats.skipped_items["abandoned_branch"] == 5
    assert stats.messages == 8


def test_claude_current_leaf_wins_over_the_latest_one() -> None:
    messages = [
        claude_message("q", "human", "question", 0),
        claude_message("a-old", "assistant", "chosen answer", 1, parent="q"),
        claude_message("a-new", "assistant", "newer retry", 2, parent="q"),
    ]
    conv = claude(messages, current_leaf_message_uuid="a-old")
    assert [m.text for m in conv.messages] == ["question", "chosen answer"]
    conv = claude(messages, current_leaf_message_uuid="no-such-message")
    assert [m.text for m in conv.messages] == ["question", "newer retry"]


def test_claude_latest_leaf_ties_go_to_the_last_in_the_file() -> None:
    messages = [
        claude_message("q", "human", "question", 0),
        claude_message("a1", "assistant", "first", 1, parent="q"),
        claude_message("a2", "assistant", "second", 1, parent="q"),
    ]
    assert [m.text for m in claude(messages).messages] == ["question", "second"]


def test_claude_parent_cycle_and_dangling_parents_terminate() -> None:
    stats = ReadStats()
    cycle = [
        claude_message("x", "human", "x says", 0, parent="y"),
        claude_message("y", "assistant", "y says", 1, parent="x"),
    ]
    conv = normalise_conversation({"uuid": "c", "chat_messages": cycle}, 0, stats)
    assert [m.text for m in conv.messages] == ["x says", "y says"]
    assert stats.skipped_items["parent_cycle"] == 1
    dangling = [
        claude_message("q", "human", "orphan question", 0, parent="deleted-message"),
        claude_message("a", "assistant", "its answer", 1, parent="q"),
    ]
    assert [m.text for m in claude(dangling).messages] == ["orphan question", "its answer"]


def test_claude_deep_tree_is_walked_iteratively() -> None:
    messages = [
        claude_message(f"m{i}", "human" if i % 2 == 0 else "assistant", f"m{i}", 0, f"m{i - 1}")
        for i in range(20_000)
    ]
    messages[0]["parent_message_uuid"] = ROOT
    conv = claude(list(reversed(messages)))
    assert len(conv.messages) == 20_000
    assert conv.messages[0].text == "m0" and conv.messages[-1].text == "m19999"


def test_claude_garbage_in_the_tree_is_lenient() -> None:
    stats = ReadStats()
    messages: list[Any] = [
        "junk",
        {"sender": "human", "text": "no uuid", "parent_message_uuid": 7},
        claude_message("q", "human", "question", 0),
        claude_message("a", "assistant", "answer", 1, parent="q"),
    ]
    messages[3]["created_at"] = "not a time"
    conv = normalise_conversation({"uuid": "c", "chat_messages": messages}, 0, stats)
    assert [m.text for m in conv.messages] == ["question", "answer"]
    assert stats.skipped_items["malformed_message"] == 1
    assert stats.skipped_items["bad_timestamp"] == 1


_ids = st.sampled_from(["a", "b", "c", "d", ROOT, None, 3])


@settings(max_examples=150, deadline=None)
@given(
    messages=st.lists(
        st.fixed_dictionaries(
            {
                "uuid": _ids,
                "parent_message_uuid": _ids,
                "sender": st.sampled_from(["human", "assistant", "system"]),
                "text": st.sampled_from(["t", "", None]),
                "created_at": st.sampled_from([None, "2025-01-01T00:00:00Z", "x", 5]),
                "content": st.sampled_from(
                    [None, [], [{"type": "tool_use", "input": {"content": "t"}}], "junk"]
                ),
                "attachments": st.sampled_from([None, [{"extracted_content": "t"}], [1]]),
            }
        ),
        max_size=6,
    ),
    current=_ids,
)
def test_random_claude_trees_never_crash(messages: list[Any], current: object) -> None:
    stats = ReadStats()
    conv = normalise_conversation(
        {"uuid": "c", "chat_messages": messages, "current_leaf_message_uuid": current}, 0, stats
    )
    assert len(conv.messages) <= len(messages)
    assert all("t" in m.text for m in conv.messages)


# --------------------------------------------------------------------------- Claude order


def test_claude_messages_follow_the_tree_not_the_file() -> None:
    convs, _ = read_fixture("claude_order.json")
    raw = json.loads((FIXTURES / "claude_order.json").read_text(encoding="utf-8"))
    in_file = [m["text"] for m in raw[0]["chat_messages"]]
    assert in_file[:2] == ["A1: Take the cliff path north of the harbour.", in_file[1]]
    expected = [f"{kind}{i}" for i in range(1, 7) for kind in ("Q", "A")]
    for conv in convs:  # one tree-linked, one without parent links (ordered by created_at)
        assert [m.text.split(":")[0] for m in conv.messages] == expected
        assert [m.role for m in conv.messages] == ["user", "assistant"] * 6
        times = [m.time for m in conv.messages]
        assert times == sorted(t for t in times if t is not None)
    assert convs[0].messages[0].time == datetime(2025, 3, 1, 7, 10, 5, 123456, UTC)


def test_claude_flat_list_without_times_keeps_its_neighbours() -> None:
    messages = [
        claude_message("b", "assistant", "answer", 5, parent=None),
        claude_message("a", "human", "question", 4, parent=None),
        claude_message("c", "human", "follow-up without a time", 0, parent=None),
        claude_message("d", "assistant", "last", 9, parent=None),
    ]
    del messages[2]["created_at"]
    assert [m.text for m in claude(messages).messages] == [
        "question",
        "answer",
        "follow-up without a time",
        "last",
    ]


# --------------------------------------------------------------------------- Claude artifacts


def test_claude_artifact_replaces_the_placeholder_text() -> None:
    convs, stats = read_fixture("claude_artifacts.json")
    (conv,) = convs
    assert texts(conv) == [
        ("user", "text", "Make me a monthly budget table for rent, food and travel."),
        (
            "assistant",
            "text",
            "[Artifact: Monthly budget]\n| Item | Amount |\n|---|---|\n| Rent | 1200 |\n"
            "| Food | 450 |\n| Travel | 150 |",
        ),
        ("user", "text", "Add savings and change rent to 1250."),
        ("assistant", "text", "Updated: savings added."),
        ("user", "text", "Now chart it."),
    ]
    text = all_text(convs)
    assert "Viewing artifacts" not in text and "not supported" not in text
    assert stats.skipped_items["tool_placeholder_text"] == 1  # the one with nothing else
    assert stats.skipped_items["content:tool_use"] == 2  # the update and the analysis code
    assert stats.skipped_items["empty_message"] == 1


def test_claude_flat_text_still_serves_messages_without_tools() -> None:
    conv = claude(
        [
            {
                "sender": "human",
                "text": "only the flat text",
                "content": [{"type": "text", "text": ""}],
            }
        ]
    )
    assert [m.text for m in conv.messages] == ["only the flat text"]


def test_claude_long_artifact_is_capped() -> None:
    stats = ReadStats()
    block = {
        "type": "tool_use",
        "input": {"title": "Big", "content": "x" * (MAX_ATTACHMENT_CHARS * 2)},
    }
    raw = {"uuid": "c", "chat_messages": [{"sender": "assistant", "content": [block]}]}
    conv = normalise_conversation(raw, 0, stats)
    assert conv.messages[0].text == "[Artifact: Big]\n" + "x" * MAX_ATTACHMENT_CHARS
    assert stats.skipped_items["attachment_truncated"] == 1


# --------------------------------------------------------------------------- Claude attachments


def test_claude_attachments_are_part_of_their_message() -> None:
    convs, stats = read_fixture("claude_attachments.json")
    (conv,) = convs
    assert texts(conv) == [
        (
            "user",
            "text",
            "Can you tighten this letter? It is for the museum job.\n\n"
            "[Attachment: cover-letter.txt]\nDear hiring team,\nI have catalogued textiles for "
            "nine years. I strongly believe archives should be open to everyone.\n"
            "Kind regards,\nNoor",
        ),
        ("assistant", "text", "Here is a tighter version."),
        (
            "user",
            "text",
            "[Attachment]\nPASTED: My first day at the new job is on June 02, 2025. Please make "
            "the letter mention it.\n\n[Attachment: job-advert.pdf]\nAssistant Curator "
            "(Textiles)\n\nPage 2\nApplications close on 30 May.",
        ),
        ("assistant", "text", "Done: the start date is in the second paragraph."),
    ]
    assert "portrait.jpg" not in all_text(convs) and "scan.png" not in all_text(convs)
    assert stats.skipped_items == {"attachment_without_text": 1}


def test_claude_attachments_are_bounded() -> None:
    stats = ReadStats()
    big = {"file_name": "huge.txt", "extracted_content": "y" * (MAX_ATTACHMENT_CHARS + 10)}
    many = [big] * (MAX_MESSAGE_CHARS // MAX_ATTACHMENT_CHARS + 2)
    raw = {"uuid": "c", "chat_messages": [{"sender": "human", "text": "hi", "attachments": many}]}
    conv = normalise_conversation(raw, 0, stats)
    (message,) = conv.messages
    assert message.text.startswith("hi\n\n[Attachment: huge.txt]\n" + "y" * 100)
    assert len(message.text) <= MAX_MESSAGE_CHARS
    assert stats.skipped_items["attachment_truncated"] == len(many)
    assert stats.skipped_items["text_truncated"] == 1


# --------------------------------------------------------------------------- ChatGPT instructions


def test_custom_instructions_keep_only_the_users_words() -> None:
    convs, _ = read_fixture("chatgpt_custom_instructions.json")
    wrapped, plain = convs
    assert texts(wrapped) == [
        (
            "user",
            "instructions",
            "Preferred name: Sam\nRole: Paediatric nurse\nOther Information: I live in Leeds "
            "with two cats. I'm learning Italian for a trip to Bologna.",
        ),
        (
            "user",
            "instructions",
            "Be brief. Use British spelling.\nWhen you show code, format it like:\n```python\n"
            'print("hello")\n```\nand never use emoji.',
        ),
        ("user", "text", "Any ideas for a rainy Saturday?"),
        ("assistant", "text", "Try the Royal Armouries, then a long lunch."),
    ]
    assert texts(plain) == [
        ("user", "instructions", "I teach chemistry to sixteen-year-olds. My school is in Ghent."),
        ("user", "instructions", "Answer in plain English."),
        ("user", "text", "Which goggles are rated for splashes?"),
    ]
    text = all_text(convs)
    for boilerplate in ("The user provided", "99%", "quietly think", "User profile:", "```Pre"):
        assert boilerplate not in text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("I like tea.", "I like tea."),
        ("```\nfenced only\n```", "fenced only"),
        ("The user provided this:\n```one\ntwo```", "one\ntwo"),
        ("The user provided this:\n```inner ```code``` kept```", "inner ```code``` kept"),
        ("The user provided this:\n```kept``` and after", "kept\nand after"),
        ("The user provided nothing fenced.", "The user provided nothing fenced."),
        ("```not closed", "```not closed"),
    ],
)
def test_instruction_wrappers(raw: str, expected: str) -> None:
    assert formats.users_own_words(raw) == expected


# --------------------------------------------------------------------------- ChatGPT memories


def test_saved_memory_snapshots_become_dated_memories() -> None:
    convs, stats = read_fixture("chatgpt_saved_memories.json")
    numbered, bullets, plain, nothing = convs
    day = lambda y, m, d: datetime(y, m, d, tzinfo=UTC)  # noqa: E731
    assert [(m.role, m.kind, m.text, m.time) for m in numbered.messages[:3]] == [
        ("assistant", "memory", "Is a vegetarian.", day(2024, 5, 2)),
        (
            "assistant",
            "memory",
            "Has a dog named Biscuit who is afraid of thunder.",
            day(2024, 6, 11),
        ),
        (
            "assistant",
            "memory",
            "Prefers answers without bullet points.\nWants summaries to fit on one screen.",
            day(2024, 6, 30),
        ),
    ]
    assert [(m.kind, m.text, m.time) for m in bullets.messages[:3]] == [
        ("memory", "Prefers dark mode", day(2024, 3, 1)),
        ("memory", "Lives in Porto", day(2023, 12, 24)),
        ("memory", "Is training for a half marathon", None),
    ]
    assert [(m.kind, m.text, m.time) for m in plain.messages[:2]] == [
        ("memory", "Works as a sound engineer.", None),
        ("memory", "Plays the cello on weekends.", None),
    ]
    for conv in convs:
        assert conv.messages[-1].kind == "text" and conv.messages[-1].role == "user"
    assert "Model Set Context" not in all_text(convs) and "[2024" not in all_text(convs)
    assert [m.kind for m in nothing.messages] == ["text"]
    assert stats.skipped_items["empty_memory_snapshot"] == 1
    assert not any(k.startswith("unknown_content") for k in stats.skipped_items)


@pytest.mark.parametrize(
    ("snapshot", "expected"),
    [
        ("1. [2024-05-02]. Is a vegetarian.", [("Is a vegetarian.", "2024-05-02")]),
        ("12) [2025-01-31] Runs a bakery", [("Runs a bakery", "2025-01-31")]),
        ("- Prefers tea (2024-03-01)", [("Prefers tea", "2024-03-01")]),
        ("• [2024-02-29]. Leap-day fact", [("Leap-day fact", "2024-02-29")]),
        ("1. [not a date]. Keeps the bracket", [("[not a date]. Keeps the bracket", None)]),
        ("1. [2024-13-45]. Impossible date", [("[2024-13-45]. Impossible date", None)]),
        ("## Heading\n\nPlain line\nAnother", [("Plain line", None), ("Another", None)]),
        ("Intro line\n1. First\n   continued", [("Intro line", None), ("First\ncontinued", None)]),
        ("   \n\n", []),
    ],
)
def test_memory_snapshot_lines(snapshot: str, expected: list[tuple[str, str | None]]) -> None:
    got = formats.saved_memories(snapshot)
    assert [(text, when.date().isoformat() if when else None) for text, when in got] == expected


# --------------------------------------------------------------------------- ChatGPT citations


def test_citation_markers_are_removed() -> None:
    convs, _ = read_fixture("chatgpt_citations.json")
    assert convs[0].messages[1].text == (
        "Tram 28 runs about every 10 minutes. A ticket bought on board costs \u20ac3.10.\n"
        "The line is busiest between 10:00 and 16:00. Go early!"
    )
    assert not any(0xE200 <= ord(ch) <= 0xE2FF for ch in all_text(convs))
    assert "turn0" not in all_text(convs)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("a \ue200cite\ue202turn0search0\ue201 b", "a b"),
        ("lone \ue202 marker \ue2ff", "lone  marker"),
        ("unclosed \ue200cite and the rest", "unclosed cite and the rest"),
        ("other private use \ue000 stays", "other private use \ue000 stays"),
    ],
)
def test_citation_marker_edge_cases(raw: str, expected: str) -> None:
    assert formats.clean_text(raw, ReadStats()) == expected


# --------------------------------------------------------------------------- inspect


def test_inspect_jsonl_shows_the_cleaned_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FULLPASS_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    contents: list[str] = []
    try:
        for name in (
            "claude_branches.json",
            "claude_artifacts.json",
            "chatgpt_saved_memories.json",
        ):
            assert main(["inspect", str(FIXTURES / name), "--jsonl"]) == 0
            out, _ = capsys.readouterr()
            contents += [json.loads(line)["content"] for line in out.splitlines()]
    finally:
        get_settings.cache_clear()
    text = "\n\n".join(contents)
    assert "User: KEPT: I'm building Orrery, a side project written with Rust and SQLite." in text
    assert "Assistant: [Artifact: Monthly budget]\n| Item | Amount |" in text
    assert "Saved memory: Has a dog named Biscuit who is afraid of thunder." in text
    for absent in ("ABANDONED", "RETRIED AWAY", "Elm and Phoenix", "Viewing artifacts", "[2024"):
        assert absent not in text
