"""Cut a conversation into overlapping, searchable chunks.

A conversation is rendered as a transcript (``User: ...`` / ``Assistant: ...``)
and cut into windows of about ``target_tokens`` (1 token ~ 4 characters). Cuts
prefer, in order: a message boundary in the second half of the window, the last
line or sentence end, the last space; a hard cut happens only inside a
"sentence" longer than a whole chunk. Consecutive chunks share up to
``overlap_tokens`` of text, starting at a sentence or word boundary, so a fact
that straddles a cut is whole in at least one chunk. A chunk that starts inside
a message repeats the speaker (``User (continued): ...``): the extractor must
know who said what.

Everything is deterministic, so chunk ids (``uuid5`` of conversation, tier and
index) and hashes are stable across re-runs of the same export.
"""

from __future__ import annotations

import hashlib
import math
import re
import uuid
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from jobs.domain.transcript import CONTINUED, label
from jobs.ingest.model import Chunk, Conversation, Message, Tier

CHARS_PER_TOKEN: Final = 4
#: Window sizes of the tiers, matching the app's own: micro ~200 characters,
#: macro ~5,000 characters; ``medium`` (the full pass's) follows
#: ``ChunkConfig.target_tokens`` (2,000 tokens).
TIER_TOKENS: Final[Mapping[Tier, int]] = {"micro": 50, "medium": 2000, "macro": 1250}
MIN_TARGET_TOKENS: Final = 64
#: Of a message cut at ``message_chars``, the share kept from its end.
TAIL_SHARE: Final = 0.3

_MESSAGE_SEPARATOR: Final = "\n\n"
#: The end of a line or of a sentence (closing quotes and brackets stay with it).
_BOUNDARY = re.compile(
    r"\n\s*"
    r"|[.!?\u2026]+[\"'\u201d\u2019)\]]*\s+"
    r"|[\u3002\uff01\uff1f]+[\"'\u201d\u2019\uff09\u300d\u300f)\]]*\s*"
)
_NON_SPACE = re.compile(r"\S")


def estimate_tokens(text: str) -> int:
    """Token estimate used for budgets everywhere: 1 token = 4 characters, rounded up."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


@dataclass(frozen=True)
class ChunkConfig:
    """How conversations are chunked (defaults: the design's 2000/200 tokens, medium tier)."""

    target_tokens: int = 2000
    overlap_tokens: int = 200
    tiers: tuple[Tier, ...] = ("medium",)
    #: A conversation updated within this many days counts as recent (``is_recent``).
    recent_days: int = 183
    #: A message longer than this is cut in the stored chunks, as the app's
    #: own formatter does (a pasted book is not what retrieval should return).
    message_chars: int = 5000

    def __post_init__(self) -> None:
        if self.target_tokens < MIN_TARGET_TOKENS:
            raise ValueError(f"target_tokens must be at least {MIN_TARGET_TOKENS}")
        if not 0 <= self.overlap_tokens * 2 < self.target_tokens:
            raise ValueError("overlap_tokens must be >= 0 and under half of target_tokens")
        if not self.tiers or len(set(self.tiers)) != len(self.tiers):
            raise ValueError("tiers must be a non-empty tuple without repeats")
        unknown = [t for t in self.tiers if t not in TIER_TOKENS]
        if unknown:
            raise ValueError(f"unknown chunk tiers: {unknown}")

    def budget(self, tier: Tier) -> tuple[int, int]:
        """(window, overlap) in tokens for ``tier``; overlap keeps the medium ratio."""
        if tier == "medium":
            return self.target_tokens, self.overlap_tokens
        window = TIER_TOKENS[tier]
        return window, self.overlap_tokens * window // self.target_tokens


def extraction_tier(tiers: Sequence[Tier]) -> Tier:
    """The tier the map step reads: medium when stored, else the first stored one."""
    return "medium" if "medium" in tiers else tiers[0]


def render_transcript(messages: Sequence[Message]) -> str:
    """The conversation as text, one ``Label: text`` paragraph per message."""
    return _Transcript(messages).text


def _capped(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters: its start and its end, whole lines (or
    words) on both sides of a marker saying how much was left out. The end is kept
    because what a user types after a long paste is in their own words."""
    if len(text) <= limit:
        return text
    tail_chars = int(limit * TAIL_SHARE)
    head = _whole_end(text[: limit - tail_chars])
    tail = _whole_start(text[len(text) - tail_chars :])
    left = len(text) - len(head) - len(tail)
    return f"{head}\n[… {left:,} characters left out …]\n{tail}"


def _whole_end(text: str) -> str:
    """``text`` up to its last line break (else space) in its second half."""
    half = len(text) // 2
    cut = text.rfind("\n", half)
    if cut < 0:
        cut = text.rfind(" ", half)
    return (text[:cut] if cut >= 0 else text).rstrip()


def _whole_start(text: str) -> str:
    """``text`` from after its first line break (else space) in its first half."""
    half = len(text) // 2
    cut = text.find("\n", 0, half)
    if cut < 0:
        cut = text.find(" ", 0, half)
    return (text[cut + 1 :] if cut >= 0 else text).lstrip()


class _Transcript:
    """Rendered text plus where each message (and its text after the label) starts."""

    def __init__(self, messages: Sequence[Message], message_chars: int = 5000) -> None:
        lines: list[str] = []
        self.messages: list[Message] = []
        self.labels: list[str] = []
        self.starts: list[int] = []
        self.text_starts: list[int] = []
        pos = 0
        for message in messages:
            body = _capped(message.text.strip(), message_chars)
            if not body:
                continue
            name = label(message)
            if lines:
                pos += len(_MESSAGE_SEPARATOR)
            self.messages.append(message)
            self.labels.append(name)
            self.starts.append(pos)
            self.text_starts.append(pos + len(name) + 2)
            line = f"{name}: {body}"
            lines.append(line)
            pos += len(line)
        self.text = _MESSAGE_SEPARATOR.join(lines)

    def message_at(self, pos: int) -> int:
        return bisect_right(self.starts, pos) - 1


@dataclass(frozen=True, slots=True)
class _Span:
    start: int
    end: int  # exclusive, trailing whitespace excluded
    prefix: str  # speaker reminder when the span starts inside a message
    first_message: int
    last_message: int


def _plan(t: _Transcript, window_chars: int, overlap_chars: int) -> list[_Span]:
    """Where the chunks of one tier start and end in the transcript."""
    text = t.text
    n = len(text)
    spans: list[_Span] = []
    pos = _skip_space(text, 0)
    prev_cut = 0
    while pos < n:
        index = t.message_at(pos)
        prefix = ""
        if pos > t.starts[index]:
            prefix = t.labels[index] + CONTINUED
            # A hard cut can land inside the label itself: restart at the message text.
            pos = max(pos, t.text_starts[index])
        limit = pos + window_chars - len(prefix)
        cut = n if limit >= n else _find_cut(t, pos, limit, prev_cut)
        end = pos + len(text[pos:cut].rstrip())
        spans.append(_Span(pos, end, prefix, index, t.message_at(end - 1)))
        if cut >= n:
            break
        pos = _skip_space(text, _overlap_start(text, pos, cut, end, overlap_chars))
        prev_cut = cut
    return spans


def _skip_space(text: str, pos: int) -> int:
    match = _NON_SPACE.search(text, pos)
    return match.start() if match else len(text)


def _find_cut(t: _Transcript, pos: int, limit: int, prev_cut: int) -> int:
    """The best end for a window ``[pos, limit)``; always past ``prev_cut`` (progress)."""
    text = t.text
    # Never cut inside the speaker label the window starts with ("User:|...").
    floor = max(pos, prev_cut, t.text_starts[t.message_at(pos)]) + 1
    half = pos + (limit - pos) // 2
    # 1. A message boundary in the second half keeps whole messages together.
    k = bisect_right(t.starts, limit) - 1
    if k >= 0 and t.starts[k] >= max(half, floor):
        return t.starts[k]
    # 2. The last line or sentence end (the later half first: it is where the answer usually is).
    for lo, hi in ((max(half, floor - 1), limit), (pos, max(half, floor - 1))):
        last: re.Match[str] | None = None
        for last in _BOUNDARY.finditer(text, lo, hi):  # noqa: B007 - keeps the last match
            pass
        if last is not None and last.end() >= floor:
            return last.end()
    # 3. The last space, so no word is split.
    space = max(text.rfind(" ", floor, limit), text.rfind("\t", floor, limit))
    if space >= floor:
        return space + 1
    # 4. One "sentence" longer than a chunk: cut it.
    return limit


def _overlap_start(text: str, pos: int, cut: int, end: int, overlap_chars: int) -> int:
    """Where the next chunk starts: up to ``overlap_chars`` back from ``cut``, on a boundary."""
    lo = max(cut - overlap_chars, pos + 1)
    if overlap_chars <= 0 or lo >= end:
        return cut
    match = _BOUNDARY.search(text, lo, end)
    if match is not None and match.end() < end:
        return match.end()
    space = text.find(" ", lo, end)
    if 0 <= space < end - 1:
        return space + 1
    return lo


def chunk_conversation(
    conv: Conversation, *, namespace: uuid.UUID, now: datetime, config: ChunkConfig
) -> list[Chunk]:
    """The chunks of ``conv`` for every tier in ``config``, in (tier, index) order."""
    transcript = _Transcript(conv.messages, config.message_chars)
    if not transcript.starts:
        return []
    recent = _is_recent(conv, now, config.recent_days)
    chunks: list[Chunk] = []
    for tier in config.tiers:
        window, overlap = config.budget(tier)
        spans = _plan(transcript, window * CHARS_PER_TOKEN, overlap * CHARS_PER_TOKEN)
        filed = -1  # saved messages up to this index went with an earlier chunk
        for index, span in enumerate(spans):
            content = span.prefix + transcript.text[span.start : span.end]
            saved = tuple(
                m
                for m in transcript.messages[
                    max(filed + 1, span.first_message) : span.last_message + 1
                ]
                if m.kind != "text"
            )
            filed = max(filed, span.last_message)
            chunks.append(
                Chunk(
                    id=str(uuid.uuid5(namespace, f"{conv.id}/{tier}/{index}")),
                    conversation_id=conv.id,
                    title=conv.title,
                    content=content,
                    token_count=estimate_tokens(content),
                    chunk_index=index,
                    total_chunks=len(spans),
                    chunk_tier=tier,
                    message_count=span.last_message - span.first_message + 1,
                    is_recent=recent,
                    created_at=conv.created_at,
                    content_hash=hashlib.sha256(content.encode("utf-8")).hexdigest(),
                    saved=saved,
                )
            )
    return chunks


def _is_recent(conv: Conversation, now: datetime, days: int) -> bool:
    when = conv.updated_at or conv.created_at
    if when is None:
        return False
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return when >= now - timedelta(days=days)
