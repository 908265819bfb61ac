"""Chunker: sizes, boundaries, overlap, ids and metadata, plus property tests."""

from __future__ import annotations

import hashlib
import itertools
import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs.ingest.chunker import (
    ChunkConfig,
    _plan,
    _Transcript,
    chunk_conversation,
    estimate_tokens,
    render_transcript,
)
from jobs.ingest.model import Chunk, Conversation, Message

NS = uuid.UUID("12345678-1234-5678-1234-567812345678")
NOW = datetime(2025, 6, 1, tzinfo=UTC)
WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
]


def sentence(i: int, words: int = 12) -> str:
    return " ".join(WORDS[(i + k) % len(WORDS)] for k in range(words)).capitalize() + f" {i}."


def conversation(*texts: str, conv_id: str = "c1", days_ago: int = 10) -> Conversation:
    when = NOW - timedelta(days=days_ago)
    messages = [
        Message(role="user" if i % 2 == 0 else "assistant", text=t) for i, t in enumerate(texts)
    ]
    return Conversation(
        id=conv_id, title="Title", created_at=when, updated_at=when, messages=messages
    )


def chunks_of(conv: Conversation, **config: object) -> list[Chunk]:
    return chunk_conversation(conv, namespace=NS, now=NOW, config=ChunkConfig(**config))  # type: ignore[arg-type]


def test_estimate_tokens() -> None:
    assert [estimate_tokens(s) for s in ("", "a", "abcd", "abcde")] == [0, 1, 1, 2]


def test_short_conversation_is_one_chunk_with_metadata() -> None:
    conv = conversation("Hello there.", "Hi! How can I help?")
    [chunk] = chunks_of(conv)
    assert chunk.content == "User: Hello there.\n\nAssistant: Hi! How can I help?"
    assert chunk.id == str(uuid.uuid5(NS, "c1/medium/0"))
    assert chunk.content_hash == hashlib.sha256(chunk.content.encode()).hexdigest()
    assert (chunk.chunk_index, chunk.total_chunks, chunk.chunk_tier) == (0, 1, "medium")
    assert chunk.token_count == estimate_tokens(chunk.content)
    assert chunk.message_count == 2
    assert chunk.is_recent and chunk.created_at == conv.created_at
    assert (chunk.conversation_id, chunk.title) == ("c1", "Title")


def test_special_kinds_are_labelled() -> None:
    conv = Conversation(
        id="c",
        title="",
        created_at=None,
        updated_at=None,
        messages=[
            Message(role="user", text="Be brief.", kind="instructions"),
            Message(role="assistant", text="Likes tea.", kind="memory"),
            Message(role="user", text="  "),
        ],
    )
    assert (
        render_transcript(conv.messages)
        == "Custom instructions: Be brief.\n\nSaved memory: Likes tea."
    )
    [chunk] = chunk_conversation(conv, namespace=NS, now=NOW, config=ChunkConfig())
    assert chunk.message_count == 2 and not chunk.is_recent and chunk.created_at is None


def test_empty_conversation_has_no_chunks() -> None:
    assert chunks_of(conversation()) == []


def test_long_conversation_is_split_at_sentences_with_overlap() -> None:
    texts = [" ".join(sentence(m * 100 + i) for i in range(40)) for m in range(12)]
    chunks = chunks_of(conversation(*texts), target_tokens=500, overlap_tokens=50)
    assert len(chunks) > 5
    assert [c.chunk_index for c in chunks] == list(range(len(chunks)))
    assert {c.total_chunks for c in chunks} == {len(chunks)}
    for chunk in chunks:
        assert len(chunk.content) <= 500 * 4
        assert chunk.content.endswith(".")  # never inside a sentence
    for before, after in itertools.pairwise(chunks):
        body = re.sub(r"^(User|Assistant)( \(continued\))?: ", "", after.content)
        assert body[:40] in before.content  # overlapping text
        overlap = len(before.content) - before.content.rindex(body[:40])
        assert overlap <= 50 * 4 + 1
    continued = [c for c in chunks if "(continued): " in c.content.split("\n")[0]]
    assert continued, "chunks starting inside a message repeat the speaker"


def test_every_sentence_survives_and_message_counts_add_up() -> None:
    texts = [" ".join(sentence(m * 100 + i) for i in range(30)) for m in range(6)]
    chunks = chunks_of(conversation(*texts), target_tokens=300, overlap_tokens=30)
    joined = "\n".join(c.content for c in chunks)
    for m in range(6):
        for i in range(30):
            assert sentence(m * 100 + i) in joined
    assert all(1 <= c.message_count <= 2 for c in chunks)


def test_a_sentence_longer_than_a_chunk_is_hard_split() -> None:
    blob = "x" * 3000  # no space, no punctuation
    chunks = chunks_of(conversation(blob), target_tokens=200, overlap_tokens=0)
    assert all(len(c.content) <= 800 for c in chunks)
    rebuilt = "".join(re.sub(r"^User( \(continued\))?: ", "", c.content) for c in chunks)
    assert rebuilt == blob


def test_words_are_not_split_when_a_space_exists() -> None:
    text = " ".join(["word"] * 1000)  # no sentence ends
    chunks = chunks_of(conversation(text), target_tokens=100, overlap_tokens=10)
    for chunk in chunks:
        body = re.sub(r"^User( \(continued\))?: ", "", chunk.content)
        assert set(body.split(" ")) == {"word"}


def test_message_boundaries_are_preferred() -> None:
    texts = [" ".join(sentence(m * 100 + i) for i in range(4)) for m in range(30)]
    chunks = chunks_of(conversation(*texts), target_tokens=400, overlap_tokens=0)
    assert all(c.content.startswith(("User: ", "Assistant: ")) for c in chunks)


def test_deterministic_and_tiered() -> None:
    texts = [" ".join(sentence(m * 1000 + i) for i in range(300)) for m in range(10)]
    conv = conversation(*texts)
    config = dict(tiers=("micro", "medium", "macro"), message_chars=100_000)
    first, second = chunks_of(conv, **config), chunks_of(conv, **config)
    assert first == second
    by_tier: dict[str, list[Chunk]] = {}
    for chunk in first:
        by_tier.setdefault(chunk.chunk_tier, []).append(chunk)
    # The app's tiers: micro ~200 characters, medium ~2,000 tokens, macro ~5,000 characters.
    assert len(by_tier["micro"]) > len(by_tier["macro"]) > len(by_tier["medium"]) >= 1
    assert max(len(c.content) for c in by_tier["micro"]) <= 200
    assert max(len(c.content) for c in by_tier["macro"]) <= 5000
    assert max(len(c.content) for c in by_tier["medium"]) <= 8000
    assert sum(len(c.content) for c in by_tier["macro"]) / len(by_tier["macro"]) > 3500
    assert len({c.id for c in first}) == len(first)
    for tier, chunks in by_tier.items():
        assert [c.chunk_index for c in chunks] == list(range(len(chunks)))
        assert chunks[0].id == str(uuid.uuid5(NS, f"c1/{tier}/0"))


def test_stored_messages_are_cut_where_the_app_cuts_them() -> None:
    long = "word " * 3000  # 15,000 characters
    chunks = chunks_of(conversation(long, "short answer"), tiers=("macro",))
    text = "".join(c.content for c in chunks)
    assert text.count("word") <= 1000 + 150  # 5,000 characters of it, plus the chunk overlap
    assert "characters left out" in text and "short answer" in text
    wide = chunks_of(conversation(long), tiers=("macro",), message_chars=20_000)
    assert "".join(c.content for c in wide).count("word") >= 3000


def test_words_after_a_long_paste_survive_the_cut() -> None:
    paste = "\n".join(
        f"2025-01-0{i % 9 + 1} INFO step {i} finished in {i * 7} ms" for i in range(400)
    )
    said = "Anyway, unrelated: I just adopted a beagle called Pixel."
    message = f"Here is the log, why does it fail?\n\n{paste}\n\n{said}"
    assert len(message) > 15_000
    text = "".join(c.content for c in chunks_of(conversation(message), tiers=("macro",)))
    assert "Here is the log, why does it fail?" in text
    assert said in text  # the user's own words after the paste are kept
    cut = re.search(r"\[… ([\d,]+) characters left out …\]", text)
    assert cut is not None
    left_out = int(cut.group(1).replace(",", ""))
    transcript = _Transcript(conversation(message).messages, 5000).text
    kept = len(transcript) - len("User: ") - len(cut.group(0)) - 2
    assert kept == len(message) - left_out
    assert 4_900 < kept <= 5_000  # the message's first and last characters, 5,000 in all
    # whole lines on both sides of the cut: no word is broken in two
    assert re.search(r"\n\[… [\d,]+ characters left out …\]\n2025-", transcript)


@pytest.mark.parametrize(("days_ago", "recent"), [(0, True), (183, True), (184, False)])
def test_is_recent(days_ago: int, recent: bool) -> None:
    [chunk] = chunks_of(conversation("hi", days_ago=days_ago))
    assert chunk.is_recent is recent


def test_is_recent_uses_update_time_first() -> None:
    conv = conversation("hi", days_ago=400)
    conv.updated_at = NOW - timedelta(days=1)
    assert chunks_of(conv)[0].is_recent


@pytest.mark.parametrize(
    "bad",
    [
        dict(target_tokens=10),
        dict(overlap_tokens=1000),
        dict(overlap_tokens=-1),
        dict(tiers=()),
        dict(tiers=("medium", "medium")),
        dict(tiers=("huge",)),
    ],
)
def test_config_validation(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ChunkConfig(**bad)  # type: ignore[arg-type]


def test_budgets_per_tier() -> None:
    config = ChunkConfig(tiers=("micro", "medium", "macro"))
    assert config.budget("medium") == (2000, 200)
    assert config.budget("micro") == (50, 5)  # ~200 characters
    assert config.budget("macro") == (1250, 125)  # ~5,000 characters


# --------------------------------------------------------------------------- properties

texts = st.text(
    alphabet=st.sampled_from([*list("abc xyz.!?\n\t"), "東", "😀", "。", "”"]), max_size=600
)
sentences = st.lists(
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=25).map(lambda w: " ".join(w) + "."),
    min_size=1,
    max_size=40,
).map(" ".join)


def _messages(bodies: list[str]) -> list[Message]:
    return [
        Message(role="user" if i % 2 == 0 else "assistant", text=body)
        for i, body in enumerate(bodies)
    ]


@settings(max_examples=150, deadline=None)
@given(
    bodies=st.lists(texts, max_size=8),
    window=st.integers(64, 300),
    overlap_ratio=st.floats(0, 0.49),
)
def test_plan_never_loses_text_and_respects_the_limit(
    bodies: list[str], window: int, overlap_ratio: float
) -> None:
    transcript = _Transcript(_messages(bodies))
    window_chars = window * 4
    overlap_chars = int(window * overlap_ratio) * 4
    spans = _plan(transcript, window_chars, overlap_chars)
    text = transcript.text
    covered = bytearray(len(text))
    for span in spans:
        assert len(span.prefix) + (span.end - span.start) <= window_chars
        assert not text[span.start].isspace() and not text[span.end - 1].isspace()
        covered[span.start : span.end] = b"\x01" * (span.end - span.start)
    for i, ch in enumerate(text):
        if not ch.isspace():
            assert covered[i], f"character {i} ({ch!r}) is in no chunk"
    starts = [s.start for s in spans]
    ends = [s.end for s in spans]
    assert starts == sorted(set(starts)) and ends == sorted(set(ends))  # progress, no repeats


@settings(max_examples=100, deadline=None)
@given(bodies=st.lists(sentences, min_size=1, max_size=6), window=st.integers(64, 200))
def test_plan_overlaps_consecutive_chunks(bodies: list[str], window: int) -> None:
    transcript = _Transcript(_messages(bodies))
    overlap_chars = window // 10 * 4
    spans = _plan(transcript, window * 4, overlap_chars)
    for before, after in itertools.pairwise(spans):
        # Chunks end before at most two separator characters, so any overlap budget
        # beyond that leaves shared text.
        if overlap_chars > 2:
            assert after.start < before.end
        assert before.end - after.start <= overlap_chars


@settings(max_examples=100, deadline=None)
@given(bodies=st.lists(texts, min_size=1, max_size=5), window=st.integers(64, 300))
def test_chunks_match_spans_and_are_deterministic(bodies: list[str], window: int) -> None:
    conv = Conversation(
        id="p", title="", created_at=None, updated_at=None, messages=_messages(bodies)
    )
    config = ChunkConfig(target_tokens=window, overlap_tokens=window // 10)
    chunks = chunk_conversation(conv, namespace=NS, now=NOW, config=config)
    assert chunks == chunk_conversation(conv, namespace=NS, now=NOW, config=config)
    transcript = _Transcript(conv.messages)
    spans = _plan(transcript, window * 4, window // 10 * 4)
    assert [c.content for c in chunks] == [
        s.prefix + transcript.text[s.start : s.end] for s in spans
    ]
    assert all(c.token_count <= window for c in chunks)
    assert all(c.message_count >= 1 for c in chunks)
