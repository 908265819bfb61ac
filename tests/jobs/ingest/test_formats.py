"""Formats: normalising ChatGPT / Claude / simplified conversations, and the JSON guards."""

from __future__ import annotations

import contextlib
import io
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from jobs.ingest import formats
from jobs.ingest.containers import GuardedStream, _Budget
from jobs.ingest.formats import (
    MAX_JSON_DEPTH,
    MAX_MESSAGE_CHARS,
    ReadStats,
    _NestingGuard,
    iter_conversations,
    normalise_conversation,
    parse_time,
)
from jobs.ingest.model import Conversation
from worker.errors import BadInput

from .conftest import gpt_conversation, gpt_message


def parse_bytes(data: bytes, name: str = "test.json") -> tuple[list[Conversation], ReadStats]:
    stream = GuardedStream(
        io.BytesIO(data),
        name=name,
        container="json",
        budget=_Budget(10**12),
        compressed_size=None,
        max_ratio=200.0,
    )
    stats = ReadStats()
    return list(iter_conversations(stream, stats)), stats


def parse(data: object) -> tuple[list[Conversation], ReadStats]:
    return parse_bytes(json.dumps(data).encode())


def one(conv: dict[str, Any]) -> tuple[Conversation, ReadStats]:
    stats = ReadStats()
    return normalise_conversation(conv, 0, stats), stats


def texts(conv: Conversation) -> list[tuple[str, str, str]]:
    return [(m.role, m.kind, m.text) for m in conv.messages]


# --------------------------------------------------------------------------- ChatGPT


def test_chatgpt_follows_current_node_and_ignores_abandoned_branches() -> None:
    conv, _ = one(
        gpt_conversation(
            [gpt_message("user", "first question"), gpt_message("assistant", "an answer")],
            branches={0: [gpt_message("assistant", "DECOY regeneration")]},
        )
    )
    assert texts(conv) == [("user", "text", "first question"), ("assistant", "text", "an answer")]
    assert conv.id == "conv-1"
    assert conv.title == "A title"
    assert conv.created_at == datetime.fromtimestamp(1_700_000_000, UTC)
    assert conv.updated_at == datetime.fromtimestamp(1_700_000_500, UTC)


def test_chatgpt_edited_message_branch_is_dropped() -> None:
    chain = [gpt_message("user", "q1"), gpt_message("assistant", "a1"), gpt_message("user", "q2")]
    conv, stats = one(
        gpt_conversation(
            chain,
            branches={1: [gpt_message("user", "DECOY edit"), gpt_message("assistant", "DECOY")]},
        )
    )
    assert [m.text for m in conv.messages] == ["q1", "a1", "q2"]
    assert stats.skipped_items == {"abandoned_branch": 2}


@pytest.mark.parametrize("current", [False, None, "no-such-node", 42])
def test_chatgpt_without_valid_current_node_takes_the_deepest_leaf(current: object) -> None:
    chain = [gpt_message("user", "q1"), gpt_message("assistant", "a1"), gpt_message("user", "q2")]
    tree = gpt_conversation(chain, current=current, branches={0: [gpt_message("assistant", "X")]})
    conv, stats = one(tree)
    assert [m.text for m in conv.messages] == ["q1", "a1", "q2"]
    assert (
        sum(stats.skipped_items.get(k, 0) for k in ("missing_current_node", "invalid_current_node"))
        == 1
    )


def test_chatgpt_deepest_leaf_tie_goes_to_the_latest_message() -> None:
    chain = [gpt_message("user", "q1"), gpt_message("assistant", "older", time=100.0)]
    tree = gpt_conversation(
        chain, current=False, branches={0: [gpt_message("assistant", "newer", time=200.0)]}
    )
    conv, _ = one(tree)
    assert [m.text for m in conv.messages] == ["q1", "newer"]


def test_chatgpt_parent_cycle_terminates() -> None:
    chain = [gpt_message("user", "q1"), gpt_message("assistant", "a1")]
    tree = gpt_conversation(chain, current="n1")
    tree["mapping"]["root"]["parent"] = "n1"  # root -> n1 -> n0 -> root ...
    conv, stats = one(tree)
    assert [m.text for m in conv.messages] == ["q1", "a1"]
    assert stats.skipped_items["parent_cycle"] == 1
    tree["current_node"] = None  # and the deepest-leaf search survives the cycle too
    conv, _ = one(tree)
    assert {m.text for m in conv.messages} == {"q1", "a1"}


def test_chatgpt_deep_linear_tree_is_walked_iteratively() -> None:
    chain = [gpt_message("user" if i % 2 == 0 else "assistant", f"m{i}") for i in range(20_000)]
    conv, _ = one(gpt_conversation(chain, current=False))
    assert len(conv.messages) == 20_000
    assert conv.messages[-1].text == "m19999"


def test_chatgpt_skip_rules_and_kept_specials() -> None:
    chain = [
        gpt_message("system", "you are chatgpt", hidden=True),
        gpt_message(
            "user",
            content={
                "content_type": "user_editable_context",
                "user_profile": "I am a botanist.",
                "user_instructions": "Answer briefly.",
            },
            hidden=True,
        ),
        gpt_message("user", "visible question"),
        gpt_message("user", "hidden user text", hidden=True),
        gpt_message("assistant", "zero weight", weight=0.0),
        gpt_message(
            "assistant", content={"content_type": "code", "text": "print(1)"}, recipient="python"
        ),
        gpt_message("tool", content={"content_type": "execution_output", "text": "1"}),
        gpt_message("assistant", content={"content_type": "thoughts", "thoughts": []}),
        gpt_message("assistant", content={"content_type": "reasoning_recap", "content": "7s"}),
        gpt_message("tool", content={"content_type": "tether_quote", "text": "web"}),
        gpt_message("assistant", content={"content_type": "tether_browsing_display", "result": ""}),
        gpt_message("assistant", content={"content_type": "system_error", "text": "oops"}),
        gpt_message("assistant", content={"content_type": "hologram", "parts": ["??"]}),
        gpt_message("assistant", "User likes ferns.", recipient="bio"),
        gpt_message("tool", "Model set context updated."),
        gpt_message("assistant", "search query", recipient="browser"),
        gpt_message(
            "user",
            content={
                "content_type": "multimodal_text",
                "parts": [
                    {"content_type": "image_asset_pointer", "asset_pointer": "file://x"},
                    "what is this plant?",
                    {"content_type": "audio_transcription", "text": "spoken words"},
                ],
            },
        ),
        gpt_message("assistant", "   "),
        gpt_message("assistant", "final answer"),
    ]
    conv, stats = one(gpt_conversation(chain))
    assert texts(conv) == [
        ("user", "instructions", "I am a botanist."),
        ("user", "instructions", "Answer briefly."),
        ("user", "text", "visible question"),
        ("assistant", "memory", "User likes ferns."),
        ("user", "text", "what is this plant?\nspoken words"),
        ("assistant", "text", "final answer"),
    ]
    assert stats.skipped_items == {
        "system_message": 1,
        "hidden_message": 2,
        "tool_call": 2,
        "tool_message": 3,
        "content:thoughts": 1,
        "content:reasoning_recap": 1,
        "content:tether_browsing_display": 1,
        "content:system_error": 1,
        "unknown_content:hologram": 1,
        "non_text_part": 1,
        "empty_message": 1,
    }


def test_chatgpt_message_times_and_fallback_conversation_times() -> None:
    tree = gpt_conversation(
        [gpt_message("user", "a", time=1000.0), gpt_message("assistant", "b", time=None)]
    )
    tree["create_time"] = None
    tree["update_time"] = None
    del tree["id"]
    tree["conversation_id"] = "cid"
    conv, _ = one(tree)
    assert conv.id == "cid"
    assert conv.messages[0].time == datetime.fromtimestamp(1000, UTC)
    assert conv.messages[1].time is None
    assert conv.created_at == conv.updated_at == datetime.fromtimestamp(1000, UTC)


@pytest.mark.parametrize(
    "garbage",
    [
        {"mapping": "nope"},
        {"mapping": []},
        {"chat_messages": {"a": 1}},
        {"messages": "hello"},
        {"something": "else"},
        [1, 2],
        "a string",
        None,
    ],
)
def test_garbage_conversations_are_skipped_with_a_note(garbage: object) -> None:
    good = {"id": "ok", "messages": [{"role": "user", "content": "fine"}]}
    convs, stats = parse([good, garbage, {**good, "id": "ok2"}])
    assert [c.id for c in convs] == ["ok", "ok2"]
    assert stats.skipped_conversations == 1
    assert stats.entries == 3
    assert stats.problems and "conversation #1" in stats.problems[0]
    assert "test.json" in stats.problems[0]


def test_garbage_inside_a_chatgpt_tree_is_lenient() -> None:
    tree = gpt_conversation([gpt_message("user", "q"), gpt_message("assistant", "a")])
    tree["mapping"]["junk"] = "not a node"
    tree["mapping"]["n0"]["message"]["author"] = None  # role unknown
    tree["mapping"]["n1"]["message"]["content"] = ["not", "a", "dict"]
    tree["mapping"]["n1"]["children"] = "nope"
    conv, stats = one(tree)
    assert conv.messages == []
    assert stats.skipped_items == {"unknown_role": 1, "malformed_message": 1}


def test_conversation_without_text_is_counted_not_yielded() -> None:
    convs, stats = parse(
        [
            {"id": "empty", "messages": [{"role": "system", "content": "x"}]},
            {"id": "full", "messages": [{"role": "user", "content": "hi"}]},
        ]
    )
    assert [c.id for c in convs] == ["full"]
    assert stats.skipped_items["empty_conversation"] == 1
    assert stats.conversations == 1 and stats.messages == 1


# --------------------------------------------------------------------------- Claude / simplified


def test_claude_uses_text_blocks_then_falls_back_to_text() -> None:
    conv, stats = one(
        {
            "uuid": "c-1",
            "name": "Claude chat",
            "created_at": "2024-03-01T10:00:00.123456Z",
            "updated_at": "2024-03-01T12:00:00+02:00",
            "chat_messages": [
                {
                    "sender": "human",
                    "text": "flat text ignored when blocks exist",
                    "content": [
                        {"type": "text", "text": "block one"},
                        {"type": "thinking", "thinking": "hmm"},
                        {"type": "text", "text": "block two"},
                    ],
                    "created_at": "2024-03-01T10:00:01Z",
                },
                {"sender": "assistant", "text": "only flat text", "content": []},
                {"sender": "assistant", "content": [{"type": "tool_use", "input": {}}]},
                {"sender": "system", "text": "x"},
                "junk",
            ],
        }
    )
    assert conv.id == "c-1" and conv.title == "Claude chat"
    assert texts(conv) == [
        ("user", "text", "block one\n\nblock two"),
        ("assistant", "text", "only flat text"),
    ]
    assert conv.created_at == datetime(2024, 3, 1, 10, 0, 0, 123456, UTC)
    assert conv.updated_at == datetime(2024, 3, 1, 10, 0, 0, tzinfo=UTC)
    assert conv.messages[0].time == datetime(2024, 3, 1, 10, 0, 1, tzinfo=UTC)
    assert stats.skipped_items == {
        "content:thinking": 1,
        "content:tool_use": 1,
        "empty_message": 1,
        "unknown_role": 1,
        "malformed_message": 1,
    }


def test_simplified_content_shapes() -> None:
    conv, stats = one(
        {
            "id": 7,
            "title": None,
            "create_time": 1_700_000_000,
            "messages": [
                {"role": "user", "content": "plain string"},
                {
                    "role": "assistant",
                    "content": ["part one", {"type": "text", "text": "part two"}],
                },
                {"role": "assistant", "content": {"text": "a dict"}},
                {"role": "system", "content": "skipped"},
                {"role": "user", "content": [{"type": "image"}]},
            ],
        }
    )
    assert conv.id == "7" and conv.title == ""
    assert texts(conv) == [
        ("user", "text", "plain string"),
        ("assistant", "text", "part one\npart two"),
        ("assistant", "text", "a dict"),
    ]
    assert stats.skipped_items == {"system_message": 1, "non_text_part": 1, "empty_message": 1}


def test_simplified_speakers_are_read_whatever_their_case_or_field() -> None:
    conv, stats = one(
        {
            "id": "s",
            "messages": [
                {"role": "User", "content": "capitalised"},
                {"role": "ASSISTANT", "content": "shouted"},
                {"author": "user", "text": "author and text"},
                {"role": "user", "content": None, "text": "null content"},
                {"author": {"role": "assistant"}, "content": "author object"},
                {"sender": "human", "content": "sender"},
                {"role": " Model ", "content": "padded"},
                {"role": "System", "content": "a system prompt"},
                {"role": "narrator", "content": "nobody"},
            ],
        }
    )
    assert texts(conv) == [
        ("user", "text", "capitalised"),
        ("assistant", "text", "shouted"),
        ("user", "text", "author and text"),
        ("user", "text", "null content"),
        ("assistant", "text", "author object"),
        ("user", "text", "sender"),
        ("assistant", "text", "padded"),
    ]
    assert stats.skipped_items == {"system_message": 1, "unknown_role": 1}


def test_missing_ids_are_deterministic_ordinals() -> None:
    entry = {"messages": [{"role": "user", "content": "x"}]}
    convs, _ = parse([entry, entry])
    assert [c.id for c in convs] == ["conversation-0", "conversation-1"]


def test_text_is_made_safe_for_postgres() -> None:
    conv, _ = one({"id": "a\x00b", "messages": [{"role": "user", "content": "x\x00y\r\nz\ud800"}]})
    assert conv.id == "ab"
    assert conv.messages[0].text == "xy\nz?"


def test_huge_message_is_capped_and_counted() -> None:
    big = "word " * 2_000_000  # 10 MB
    convs, stats = parse([{"id": "x", "messages": [{"role": "user", "content": big}]}])
    assert len(convs[0].messages[0].text) <= MAX_MESSAGE_CHARS
    assert stats.skipped_items["text_truncated"] == 1


# --------------------------------------------------------------------------- timestamps

T0 = datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)  # epoch 1_700_000_000


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (1_700_000_000, T0),
        (1_700_000_000.5, T0 + timedelta(microseconds=500_000)),
        (1_700_000_000_000, T0),  # milliseconds
        ("1700000000", T0),
        ("2023-11-14T22:13:20Z", T0),
        ("2023-11-14T23:13:20+01:00", T0),
        ("2023-11-14T22:13:20", T0),
        ("2023-11-14 22:13:20.000000+00:00", T0),
        ("", None),
    ],
)
def test_parse_time_good(value: object, expected: datetime | None) -> None:
    stats = ReadStats()
    got = parse_time(value, stats)
    assert got == expected
    assert got is None or got.tzinfo is not None
    assert not stats.skipped_items


@pytest.mark.parametrize(
    "value", ["yesterday", "2023-13-45", True, [1], {"t": 1}, 1e300, "nan", -1e20]
)
def test_parse_time_garbage_is_none_and_counted(value: object) -> None:
    stats = ReadStats()
    assert parse_time(value, stats) is None
    assert stats.skipped_items == {"bad_timestamp": 1}


def test_parse_time_keeps_offsets_in_utc() -> None:
    got = parse_time("2024-01-01T00:00:00-05:00", ReadStats())
    assert got == datetime(2024, 1, 1, tzinfo=timezone(timedelta(hours=-5)))
    assert got is not None and got.utcoffset() == timedelta(0)


# --------------------------------------------------------------------------- top-level shapes


def test_wrapper_object_first_key() -> None:
    convs, _ = parse(
        {"conversations": [{"id": "a", "messages": [{"role": "user", "content": "x"}]}]}
    )
    assert [c.id for c in convs] == ["a"]


def test_wrapper_object_with_conversations_key_later() -> None:
    convs, _ = parse(
        {
            "version": 2,
            "meta": {"deep": [1, 2, {"x": "conversations"}]},
            "conversations": [{"id": "a", "messages": [{"role": "user", "content": "x"}]}],
            "after": True,
        }
    )
    assert [c.id for c in convs] == ["a"]


def test_object_without_conversations_names_its_keys() -> None:
    with pytest.raises(BadInput, match=r"no 'conversations' list \(keys: version, data\)"):
        parse({"version": 2, "data": []})


def test_single_conversation_object() -> None:
    convs, _ = parse({"id": "solo", "messages": [{"role": "user", "content": "x"}]})
    assert [c.id for c in convs] == ["solo"]


def test_json_lines_of_conversations_are_read() -> None:
    """One conversation object per line (JSON Lines), or objects one after the other."""
    lines = [
        gpt_conversation([gpt_message("user", "I live in Lisbon")], conv_id="g1"),
        {"uuid": "c1", "name": "n", "chat_messages": [{"sender": "human", "text": "hi"}]},
        {"id": "s1", "messages": [{"role": "user", "content": "x"}]},
    ]
    for sep in (b"\n", b"\r\n", b"\n\n", b" "):
        convs, stats = parse_bytes(sep.join(json.dumps(x).encode() for x in lines) + b"\n")
        assert [c.id for c in convs] == ["g1", "c1", "s1"], sep
        assert stats.entries == 3


def test_json_lines_cut_short_say_how_far_they_got() -> None:
    line = json.dumps({"id": "a", "messages": [{"role": "user", "content": "x"}]}).encode()
    with pytest.raises(BadInput, match="after 2 conversations"):
        parse_bytes(line + b"\n" + line + b"\n" + line[:20])
    with pytest.raises(BadInput, match="after 1 conversations"):
        parse_bytes(line + b"\n}")


def test_a_json_line_that_is_no_conversation_is_skipped_with_a_note() -> None:
    line = json.dumps({"id": "a", "messages": [{"role": "user", "content": "x"}]}).encode()
    convs, stats = parse_bytes(line + b"\n[1, 2]\n" + line.replace(b'"a"', b'"b"'))
    assert [c.id for c in convs] == ["a", "b"]
    assert stats.skipped_conversations == 1
    assert any("#1" in p and "not an object" in p for p in stats.problems)


def test_bom_and_leading_whitespace_are_accepted() -> None:
    data = (
        b"\xef\xbb\xbf \n\t"
        + json.dumps([{"id": "a", "messages": [{"role": "user", "content": "x"}]}]).encode()
    )
    convs, stats = parse_bytes(data)
    assert [c.id for c in convs] == ["a"]
    assert stats.json_bytes == len(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"   \n  ", "empty"),
        (b"42", "a number"),
        (b'"text"', "a string"),
        (b"true", "a boolean"),
        (b"null", "null"),
        (b"<html></html>", "HTML"),
        (b"\xff\xfe[\x00]\x00", "UTF-16"),
        (b"\x00\x01", "not JSON"),
        (b"PK\x03\x04\x14\x00", r"a ZIP archive \(a ZIP inside gzip or ZIP\?"),
        (b"\x1f\x8b\x08\x00", r"gzip data \(compressed twice\?"),
    ],
)
def test_wrong_top_level_is_bad_input(data: bytes, message: str) -> None:
    with pytest.raises(BadInput, match=message):
        parse_bytes(data)


def test_truncated_json_says_how_far_it_got() -> None:
    entries = [
        {"id": f"c{i}", "messages": [{"role": "user", "content": "hello"}]} for i in range(5)
    ]
    data = json.dumps(entries).encode()
    cut = data[: data.index(b'"c3"') + 10]
    with pytest.raises(
        BadInput, match=r"test\.json: invalid JSON before byte .*after 3 conversations"
    ):
        parse_bytes(cut)


def test_invalid_utf8_is_bad_input() -> None:
    data = b'[{"id": "a", "messages": [{"role": "user", "content": "caf\xe9"}]}]'
    with pytest.raises(BadInput, match="not valid UTF-8"):
        parse_bytes(data)


def test_trailing_garbage_is_bad_input() -> None:
    data = json.dumps([{"id": "a", "messages": [{"role": "user", "content": "x"}]}]).encode()
    with pytest.raises(BadInput, match="after 1 conversations"):
        parse_bytes(data + b" ]]")


def test_error_messages_do_not_quote_export_content() -> None:
    data = b'[{"id": "a", "messages": [{"role": "user", "content": "my secret diary \xff"}]}]'
    with pytest.raises(BadInput) as caught:
        parse_bytes(data)
    assert "diary" not in str(caught.value)


# --------------------------------------------------------------------------- nesting guard


def test_deep_nesting_is_refused_without_crashing() -> None:
    depth = 100_000
    with pytest.raises(BadInput, match="nested more than"):
        parse_bytes(b"[" * depth + b"]" * depth)
    with pytest.raises(BadInput, match="nested more than"):
        parse_bytes(b'{"a":' * depth + b"1" + b"}" * depth)


def test_deep_nesting_inside_a_conversation_is_refused() -> None:
    deep = "[" * 5000 + "]" * 5000
    data = ('[{"id": "a", "messages": [], "extra": ' + deep + "}]").encode()
    with pytest.raises(BadInput, match="nested more than"):
        parse_bytes(data)


def test_moderate_nesting_and_brackets_in_strings_are_fine() -> None:
    nested: object = "leaf"
    for _ in range(100):
        nested = [nested]
    entry = {
        "id": "a",
        "extra": nested,
        "messages": [{"role": "user", "content": '[[[[ {{{{ \\" ]]]] ' * 10_000}],
    }
    convs, _ = parse([entry])
    assert convs[0].messages[0].text.startswith("[[[[")


def test_endless_json_string_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(formats, "MAX_JSON_STRING_BYTES", 1_000_000)
    data = b'[{"id": "a", "messages": [{"role": "user", "content": "' + b"x" * 3_000_000 + b'"}]}]'
    with pytest.raises(BadInput, match="JSON string runs past"):
        parse_bytes(data)


def _true_depth(data: bytes) -> int:
    depth = best = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in b"[{":
            depth += 1
            best = max(best, depth)
        elif byte in b"]}":
            depth -= 1
    return best


def _guard_bound(data: bytes, cuts: list[int]) -> int:
    """The largest depth the guard lets through, found by shrinking its limit."""
    lo, hi = 0, 2 * MAX_JSON_DEPTH
    while lo < hi:  # smallest limit the guard accepts
        mid = (lo + hi) // 2
        if _accepts(data, cuts, mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _accepts(data: bytes, cuts: list[int], limit: int) -> bool:
    guard = _NestingGuard("t")
    original = formats.MAX_JSON_DEPTH
    formats.MAX_JSON_DEPTH = limit  # type: ignore[misc]
    try:
        start = 0
        for cut in [*cuts, len(data)]:
            guard.feed(data[start:cut], start)
            start = cut
    except BadInput:
        return False
    finally:
        formats.MAX_JSON_DEPTH = original  # type: ignore[misc]
    return True


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab\n', max_size=8),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(alphabet='[]{}"\\k', max_size=4), children, max_size=4)
    ),
    max_leaves=40,
)


def test_escapes_and_brackets_in_strings_do_not_hide_deep_nesting() -> None:
    deep: object = []
    for _ in range(MAX_JSON_DEPTH + 10):
        deep = [deep]
    for trap in ['"]]]]', "\\", '\\"]]', "\\\\", "]}]}", '""', "x\\"]:
        encoded = json.dumps([trap, deep, trap]).encode()
        for size in (1, 2, 3, 7, 64, len(encoded)):
            guard = _NestingGuard("t")
            with pytest.raises(BadInput, match="nested more than"):
                for start in range(0, len(encoded), size):
                    guard.feed(encoded[start : start + size], start)


def test_brackets_in_a_string_spanning_buffers_are_not_depth() -> None:
    encoded = json.dumps(["[" * 5000, {"k": "{" * 5000}]).encode()
    for size in (1, 3, 100, 4096):
        guard = _NestingGuard("t")
        for start in range(0, len(encoded), size):
            guard.feed(encoded[start : start + size], start)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=json_values, data=st.data())
@example(value=['"]]]', [[[[[]]]]]], data=None)
@example(value=["\\", '\\"]', {"k]": [[[[1]]]]}], data=None)
def test_nesting_guard_never_underestimates(value: object, data: st.DataObject | None) -> None:
    encoded = json.dumps(value, ensure_ascii=False).encode()
    cuts = [] if data is None else sorted(data.draw(st.lists(st.integers(0, len(encoded)))))
    true = _true_depth(encoded)
    bound = _guard_bound(encoded, cuts)
    assert true <= bound <= 3 * true + 1


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=300))
def test_arbitrary_bytes_only_ever_raise_bad_input(raw: bytes) -> None:
    with contextlib.suppress(BadInput):
        parse_bytes(raw)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=json_values)
def test_arbitrary_json_only_ever_raises_bad_input(value: object) -> None:
    with contextlib.suppress(BadInput):
        parse_bytes(json.dumps(value).encode())


@settings(max_examples=100, deadline=None)
@given(
    entries=st.lists(
        st.fixed_dictionaries(
            {
                "mapping": st.dictionaries(
                    st.sampled_from(["a", "b", "c", "d"]),
                    st.fixed_dictionaries(
                        {
                            "parent": st.sampled_from([None, "a", "b", "c", "d", "zz", 3]),
                            "message": st.one_of(
                                st.none(),
                                st.just(gpt_message("user", "u")),
                                st.just(gpt_message("assistant", "a")),
                                st.integers(),
                            ),
                        }
                    ),
                    max_size=4,
                ),
                "current_node": st.sampled_from([None, "a", "b", "zz", 5]),
            }
        ),
        max_size=4,
    )
)
def test_random_chatgpt_trees_never_crash(entries: list[dict[str, Any]]) -> None:
    try:
        convs, _ = parse(entries)
    except BadInput:
        return
    for conv in convs:
        assert all(m.text in ("u", "a") for m in conv.messages)


def test_formats_are_tracked(tmp_path: Path) -> None:
    convs, stats = parse(
        [
            {"id": "s", "messages": [{"role": "user", "content": "x"}]},
            {"uuid": "c", "chat_messages": [{"sender": "human", "text": "y"}]},
        ]
    )
    assert len(convs) == 2
    assert stats.format == "mixed"
    assert stats.as_dict()["conversations"] == 2
