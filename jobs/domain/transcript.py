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

import hashlib
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
    paste_chars: int = 0,
    seen: set[str] | None = None,
    enough: int = 0,
) -> str:
    """Keep user turns (capped per message), trim assistant turns to an excerpt.

    Assistant turns after the last of the user's words are left out: they
    give context to nothing. A user turn longer than ``paste_chars`` (0: none)
    has its pasted material cut (:func:`cut_pastes`, with ``seen``). Returns
    "" when the chunk holds no user text at all: nothing to extract.

    ``enough`` (0: all) stops at the first turn boundary where at least that
    many characters of the result are settled, and returns them: a prefix of
    the whole result, at least ``enough`` long (for a caller that keeps only
    the head of a long conversation; ``seen`` then learns only the pastes of
    the turns read).
    """
    out: list[str] = []
    speaker: Speaker | None = None
    budget = 0
    has_user = False
    turn_start = 0  # where the current turn starts in ``out``
    words_end = 0  # where the last turn that is not the assistant's ends in ``out``
    # With ``enough``: the characters of out[:settled] (each line and its newline).
    # At a turn boundary every line before words_end is final and in the result.
    settled = settled_chars = 0

    def end_turn() -> None:
        nonlocal words_end
        if speaker == "user" and paste_chars and turn_start < len(out):
            turn = "\n".join(out[turn_start:])
            if len(turn) > paste_chars:
                out[turn_start:] = [cut_pastes(turn, seen)]
                words_end = len(out)

    for line in content.splitlines():
        m = _LABEL.match(line)
        if m:
            end_turn()
            if enough and has_user:
                settled_chars += sum(len(kept) + 1 for kept in out[settled:words_end])
                settled = words_end
                if settled_chars > enough:
                    head = "\n".join(out[:words_end]).strip()
                    if len(head) >= enough:
                        return head
            turn_start = len(out)
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
            words_end = len(out)
    end_turn()
    return "\n".join(out[:words_end]).strip() if has_user else ""


# --------------------------------------------------------------------------- pastes

#: A user turn longer than this has its pasted material cut (the option's default).
PASTE_CHARS: Final = 2000
#: A prose paragraph at the start or end of a turn up to this long is the user's own words.
OWN_WORDS_CHARS: Final = 1200
#: What is kept of a cut block's first line: enough to say what was pasted.
PASTE_HINT_CHARS: Final = 80
_FENCE: Final = re.compile(r"^\s*(```|~~~)")
_ATTACHMENT: Final = re.compile(r"^\[Attachment(?::[^\]]*)?\]\s*$")
#: A line that reads as code, markup or a log rather than as prose.
_MACHINE_LINE: Final = re.compile(
    r"^(?:[ \t]{2,}\S|\t"  # indented
    r"|\d{4}-\d{2}-\d{2}[T ]\d|\[?\d{2}:\d{2}:\d{2}"  # timestamped
    r"|(?:def|class|import|from|return|if|for|while|function|const|let|var|public|private"
    r"|SELECT|INSERT|UPDATE|CREATE|#include|package|func|fn|use)\b"
    r"|[{}\])<]|//|/\*|\$ |>>> |Traceback |\w+(?:Error|Exception)\b)"
    r"|[{};:,(\[=>]\s*$"  # ends like code
    r"|\b(?:INFO|DEBUG|WARN|WARNING|ERROR|TRACE|FATAL)\b"
    r"| = |==|=>|->|\w\(.*\)",
)
#: Words by which the user speaks of themselves: their sentences stay, pasted or not.
_FIRST_PERSON: Final = re.compile(
    r"\b(?:I|I['\u2019](?:m|ve|d|ll)|[Mm]e|[Mm]y|[Mm]ine|[Mm]yself|[Ww]e|[Ww]e['\u2019](?:re|ve)"
    r"|[Oo]urs?|[Uu]s)\b"
)


def cut_pastes(turn: str, seen: set[str] | None = None) -> str:
    """A long user turn with its pasted code, logs and documents cut down.

    The user's own words stay whole: the short prose paragraphs a turn starts
    and ends with ("here is the log, why does it fail?"). Pasted material
    (a fenced block, an attachment, a run of code or log lines, any other
    paragraph) keeps its first line, to say what it was, and every sentence
    or line in which someone speaks in the first person ("I", "my", "we",
    ...), where facts about the user sit; the rest becomes one marker with its
    size. Material already in ``seen`` (sent earlier in the import) becomes a
    marker alone; material not seen yet is added to it (a hash of it: the set
    stays small however much was pasted).
    """
    label = _LABEL.match(turn)
    head = turn[: label.end()] if label else ""
    blocks = _blocks(turn[len(head) :])
    out: list[str] = []
    for i, (kind, text) in enumerate(blocks):
        edge = i == 0 or i == len(blocks) - 1
        if kind == "prose" and (len(blocks) == 1 or edge) and len(text) <= OWN_WORDS_CHARS:
            out.append(text)
            continue
        folded = " ".join(text.split())
        key = hashlib.blake2b(folded.encode(), digest_size=16).hexdigest()
        if seen is not None and len(folded) > OWN_WORDS_CHARS and key in seen:
            out.append(f"[… the same pasted text as earlier, {len(text):,} characters …]")
            continue
        if seen is not None:
            seen.add(key)
        out.append(_cut_block(kind, text))
    return head + "\n\n".join(out) + turn[len(turn.rstrip()) :]


def _blocks(text: str) -> list[tuple[str, str]]:
    """``text`` as blocks: ``fenced``, ``attachment`` (to the next one), ``machine`` or ``prose``.

    Paragraphs (split at blank lines) of code or log lines in a row make one
    ``machine`` block, blank lines and all.
    """
    blocks: list[tuple[str, str]] = []
    lines = text.split("\n")
    i = 0
    paragraph: list[str] = []

    def flush() -> None:
        if not paragraph:
            return
        body = "\n".join(paragraph)
        kind = "machine" if _machine(paragraph) else "prose"
        if kind == "machine" and blocks and blocks[-1][0] == "machine":
            blocks[-1] = ("machine", blocks[-1][1] + "\n\n" + body)
        else:
            blocks.append((kind, body))
        paragraph.clear()

    while i < len(lines):
        line = lines[i]
        if _FENCE.match(line):
            flush()
            end = next((j for j in range(i + 1, len(lines)) if _FENCE.match(lines[j])), len(lines))
            blocks.append(("fenced", "\n".join(lines[i : end + 1])))
            i = end + 1
        elif _ATTACHMENT.match(line):
            flush()
            end = next(
                (j for j in range(i + 1, len(lines)) if _ATTACHMENT.match(lines[j])), len(lines)
            )
            blocks.append(("attachment", "\n".join(lines[i:end]).strip()))
            i = end
        elif not line.strip():
            flush()
            i += 1
        else:
            paragraph.append(line)
            i += 1
    flush()
    return blocks


def _machine(lines: list[str]) -> bool:
    """Whether most of a paragraph's lines (3 or more) read as code or a log."""
    return len(lines) >= 3 and sum(1 for x in lines if _MACHINE_LINE.search(x)) >= 0.6 * len(lines)


def _cut_block(kind: str, text: str) -> str:
    """A block's first sentence or line (cut short) and its first-person ones, whole."""
    if kind == "prose":
        pieces = list(sentence_spans(text))
    else:
        pieces = [(m.start(), m.end()) for m in re.finditer(r"[^\n]+", text)]
    out: list[str] = []
    dropped = 0
    for n, (start, end) in enumerate(pieces):
        piece = text[start:end].strip()
        if _speaks_for_self(piece) or (n == 0 and len(piece) <= PASTE_HINT_CHARS):
            if dropped:
                out.append(_omitted(dropped))
                dropped = 0
            out.append(piece)
        elif n == 0:
            out.append(piece[:PASTE_HINT_CHARS].rstrip() + "…")
            dropped += len(piece) - PASTE_HINT_CHARS
        else:
            dropped += end - start + 1
    if dropped:
        out.append(_omitted(dropped))
    cut = "\n".join(out)
    return cut if len(cut) < len(text) else text


def _speaks_for_self(sentence: str) -> bool:
    return bool(_FIRST_PERSON.search(sentence))


def _omitted(chars: int) -> str:
    return f"[… {chars:,} characters of pasted text left out …]"


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
