"""Transcripts: how a conversation is written for a model, and read back.

A conversation is rendered as turns, each a paragraph starting with its
speaker's label (``User:``, ``Assistant:``, ``Saved memory:``,
``Custom instructions:``; ``System:`` for lines the pipeline adds, such as the
header of each conversation in a packed call). A chunk that starts inside a
message repeats the speaker (``User (continued): ...``). This module is the
one place that knows the labels: the chunker writes them (:func:`label`),
and everything that reads a transcript (the map step's condensing, the rules,
the test fake) parses them with :func:`turn_spans`. It also splits a turn
into sentences, the unit the fact rules work on.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Final, Literal

from jobs.ingest.model import Message, MessageKind, Role

#: Who says a turn: the user, the assistant, a fact ChatGPT saved about the
#: user, the user's custom instructions, or the pipeline itself.
Speaker = Literal["user", "assistant", "memory", "instructions", "system"]

LABELS: Final[Mapping[Speaker, str]] = {
    "user": "User",
    "assistant": "Assistant",
    "memory": "Saved memory",
    "instructions": "Custom instructions",
    "system": "System",
}
_SPEAKER_OF: Final[Mapping[tuple[Role, MessageKind], Speaker]] = {
    ("user", "text"): "user",
    ("assistant", "text"): "assistant",
    ("user", "memory"): "memory",
    ("assistant", "memory"): "memory",
    ("user", "instructions"): "instructions",
    ("assistant", "instructions"): "instructions",
}
CONTINUED: Final = " (continued): "
#: The speakers whose words are the user's (their own or saved about them).
USERS_WORDS: Final = frozenset({"user", "memory", "instructions"})

_BY_LABEL: Final = {text: speaker for speaker, text in LABELS.items()}
#: A label at the start of a line. Lines without one continue the turn before.
_LABEL: Final = re.compile(
    r"^(?P<label>"
    + "|".join(re.escape(text) for text in sorted(_BY_LABEL, key=len, reverse=True))
    + r")(?: \(continued\))?:[ \t]?",
    re.M,
)


def label(message: Message) -> str:
    """How a message is introduced in a transcript line."""
    return LABELS[_SPEAKER_OF[(message.role, message.kind)]]


def turn_spans(transcript: str) -> Iterator[tuple[Speaker, int, int]]:
    """Each turn's speaker and where its text starts and ends.

    Text before the first label belongs to a turn that started in an earlier
    chunk and whose speaker is unknown: it is skipped, because it may be the
    assistant's.
    """
    speaker: Speaker | None = None
    start = 0
    for m in _LABEL.finditer(transcript):
        if speaker is not None:
            yield speaker, start, m.start()
        speaker = _BY_LABEL[m.group("label")]
        start = m.end()
    if speaker is not None:
        yield speaker, start, len(transcript)


def turns(transcript: str) -> Iterator[tuple[Speaker, str]]:
    """Each turn's speaker and text."""
    for speaker, start, end in turn_spans(transcript):
        yield speaker, transcript[start:end].strip()


def first_label(text: str) -> re.Match[str] | None:
    """The label ``text`` starts with, if any."""
    return _LABEL.match(text)


# --------------------------------------------------------------------------- condensing

#: What the map step keeps of an assistant turn: enough to give the user's
#: replies their context.
ASSISTANT_CONTEXT_CHARS: Final = 120
#: What it keeps of any other turn.
MAX_MESSAGE_CHARS: Final = 5000


def condense_transcript(
    content: str,
    *,
    assistant_chars: int = ASSISTANT_CONTEXT_CHARS,
    max_message_chars: int = MAX_MESSAGE_CHARS,
) -> str:
    """Keep user turns (capped per message), trim assistant turns to an excerpt.

    Returns "" when the chunk holds no user text at all: nothing to extract.
    """
    out: list[str] = []
    speaker: Speaker | None = None
    budget = 0
    has_user = False
    for line in content.splitlines():
        m = _LABEL.match(line)
        if m:
            speaker = _BY_LABEL[m.group("label")]
            budget = assistant_chars if speaker == "assistant" else max_message_chars
        if speaker == "assistant":
            if budget <= 0:
                continue
            piece = line[:budget]
            budget -= len(line)
            out.append(piece + ("…" if budget < 0 else ""))
        else:
            if budget <= 0:
                continue
            piece = line[:budget]
            budget -= len(line) + 1
            if piece.strip() and speaker in USERS_WORDS:
                has_user = True
            out.append(piece)
    return "\n".join(out).strip() if has_user else ""


#: How far back from the end of a chunk its overlap with the next one is looked for.
OVERLAP_SEARCH_CHARS = 1600
_OVERLAP_PROBE_CHARS = 64


def novel_part(previous: str, content: str) -> str:
    """``content`` without the text it repeats from the end of ``previous``.

    Consecutive chunks of a conversation overlap (~200 tokens) so that search
    finds a fact whole; for extraction that text is sent once, with the
    earlier chunk, and the facts in it are not recorded twice. The rest keeps
    its speaker ("User (continued): ..."). Returns ``content`` unchanged when
    it does not start with the end of ``previous``; "" when it holds nothing
    else.
    """
    label = _LABEL.match(content)
    continued = label is not None and "(continued)" in label.group(0)
    body = content[label.end() :] if label is not None and continued else content
    probe = body[:_OVERLAP_PROBE_CHARS]
    if len(probe) < 16:
        return content
    at = previous.find(probe, max(0, len(previous) - OVERLAP_SEARCH_CHARS))
    if at < 0 or not body.startswith(previous[at:]):
        return content
    rest = body[len(previous) - at :].lstrip()
    if not rest or _LABEL.match(rest):
        return rest
    speakers = _LABEL.findall(previous[at:])
    if speakers:
        return f"{speakers[-1]} (continued): {rest}"
    if label is not None and continued:
        return f"{label.group(1)} (continued): {rest}"
    return rest


# --------------------------------------------------------------------------- sentences

#: Sentence ends: terminal punctuation (and closing quotes) before whitespace,
#: or a line break. "Next.js" and "3.5" do not end a sentence. (Starting with a
#: character class lets the regex engine skip quickly to candidates.)
_BOUNDARY: Final = re.compile(r"[.!?\n](?:(?<=\n)|[.!?]*[\"')\]\u201d]*(?=\s))")
#: Words whose period ends an abbreviation, not a sentence.
_ABBREVIATIONS: Final = frozenset(
    [
        "e.g",
        "i.e",
        "etc",
        "vs",
        "mr",
        "mrs",
        "ms",
        "dr",
        "prof",
        "st",
        "jr",
        "sr",
        "approx",
        "incl",
        "no",
        "jan",
        "feb",
        "mar",
        "apr",
        "jun",
        "jul",
        "aug",
        "sep",
        "sept",
        "oct",
        "nov",
        "dec",
    ]
)


def sentences(text: str) -> Iterator[str]:
    """Sentences of a turn: split at ``.``, ``!``, ``?`` and line breaks."""
    for start, end in sentence_spans(text):
        yield text[start:end]


def sentence_spans(text: str) -> Iterator[tuple[int, int]]:
    """Where each sentence of ``text`` starts and ends, surrounding space excluded."""
    start = 0
    for m in _BOUNDARY.finditer(text):
        if not is_abbreviation(text, start, m.start(), m.end()):
            yield from _stripped(text, start, m.end())
            start = m.end()
    yield from _stripped(text, start, len(text))


def sentence_around(text: str, at: int, lo: int, hi: int) -> tuple[int, int] | None:
    """The sentence of ``text[lo:hi]`` that holds index ``at`` (same rules as above).

    Looking around one index is much cheaper than splitting a whole turn when
    only a few of its sentences can hold a fact.
    """
    start = lo
    for end_mark in (". ", "! ", "? ", "\n"):
        k = text.rfind(end_mark, start, at)
        while end_mark == ". " and k != -1 and is_abbreviation(text, start, k, k + 1):
            k = text.rfind(end_mark, start, k)
        if k != -1:
            start = k + len(end_mark)
    end = hi
    pos = at
    while (m := _BOUNDARY.search(text, pos, hi)) is not None:
        if not is_abbreviation(text, start, m.start(), m.end()):
            end = m.end()
            break
        pos = m.end()
    return next(_stripped(text, start, end), None)


def is_abbreviation(text: str, start: int, stop: int, end: int) -> bool:
    """Whether the period at ``stop`` ends an abbreviation or an initial, not a sentence.

    ("e.g.", "Dr.", "J.", "U.S.")
    """
    if end - stop != 1 or text[stop] != ".":
        return False
    space = text.rfind(" ", start, stop)
    if stop - space > 6:
        return False
    word = text[max(start, space + 1) : stop].lstrip("(\"'")
    return (
        word.casefold() in _ABBREVIATIONS
        or (len(word) == 1 and word.isupper())
        or (len(word) > 2 and word[-2] == ".")
    )


def _stripped(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    piece = text[start:end]
    body = piece.strip()
    if body:
        first = start + len(piece) - len(piece.lstrip())
        yield first, first + len(body)
