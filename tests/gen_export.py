"""Synthetic chat-history exports in the ChatGPT, Claude and simplified formats.

The suite and the benchmarks need exports shaped like the files people really
download, at any size, with a ground truth of what a correct reader keeps and
drops. Every conversation is first written as a format-neutral script: a tree
of turns in the order they were typed, where abandoned edits and retried
answers hang beside the branch the user kept. Renderers then dress the script
in one format, with that format's own structure and clutter:

- ChatGPT: ``mapping`` trees with ``current_node``; hidden system and context
  nodes, tool calls, reasoning, browsing and other non-text content types,
  ``null`` timestamps, images and voice messages, custom instructions (with or
  without ChatGPT's wrapper), ``model_editable_context`` saved-memory snapshots,
  memory-tool (``bio``) calls and citation markers; ZIPs, sharded or not.
- Claude: ``chat_messages`` linked by ``parent_message_uuid`` (edits and
  retries kept beside the kept branch) and not in chronological order in the
  file; artifacts whose ``text`` is a UI placeholder; attachments with their
  ``extracted_content``; thinking blocks; now and then a conversation from the
  days before parent links.
- simplified: ``[{id, title, create_time, messages: [{role, content}]}]``.

The ground truth (``--facts-out``) lists the durable facts planted in user
turns of the kept branch (``facts``), those planted only on abandoned branches
(``decoys``), the saved memories and custom instructions the reader must keep
(``memories``, ``instructions``), and UI scaffolding that must never reach
the text (``absent``). Planted facts are first-person sentences of five forms
("I really prefer ...", "I'm building X, a side project written with ...",
"My ... is on <Month DD, YYYY>.", "I strongly believe ...", "We decided to
... because ..."): the rule-based extractor and the fake model API recognise
them, and the benchmarks measure recall on them. Filler text never speaks in
the first person, so every fact found is a planted one.

Output is deterministic for a seed, and conversation ``i`` is the same
whatever the count and format: ``--conversations 40`` is a prefix of
``--conversations 120``, and the same seed plants the same facts in every
format. Run it as a module::

    python -m tests.gen_export --conversations 200 -o convs.json --facts-out facts.json
    python -m tests.gen_export --target-mb 90 --zip -o export.zip
    python -m tests.gen_export --zip --shards 4 -o export.zip
    python -m tests.gen_export --format claude --conversations 50 -o claude.json
    python -m tests.gen_export --format simplified -o simple.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import uuid
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, Final, Literal, get_args

Format = Literal["chatgpt", "claude", "simplified"]
Role = Literal["user", "assistant"]
Category = Literal["preferences", "projects", "dates", "beliefs", "decisions"]

FORMATS: Final[tuple[Format, ...]] = get_args(Format)
CATEGORIES: Final[tuple[Category, ...]] = get_args(Category)
MB: Final = 1024 * 1024
#: Conversations are dated between these two instants (ChatGPT's and Claude's
#: export formats as they were over these years).
FIRST_DAY: Final = datetime(2023, 1, 1, tzinfo=UTC)
LAST_DAY: Final = datetime(2026, 3, 1, tzinfo=UTC)
#: Custom instructions exist from this day; ChatGPT wraps them from the second.
INSTRUCTIONS_SINCE: Final = datetime(2023, 7, 20, tzinfo=UTC)
INSTRUCTIONS_WRAPPED_SINCE: Final = datetime(2024, 2, 1, tzinfo=UTC)
#: The date stamped on every ZIP member.
ZIP_DATE: Final = (2026, 1, 1, 0, 0, 0)
#: What Claude's root messages name as their parent.
CLAUDE_ROOT: Final = "00000000-0000-4000-8000-000000000000"

# --------------------------------------------------------------------------- vocabulary

#: Filler words: no pronouns and no verbs of liking, believing or deciding, so
#: filler never reads as a statement about the user.
_FILLER_WORDS = (
    "the a an of to in on for with from about over under after before between "
    "schedule harbour ledger prism canvas timber signal bridge orbit lantern "
    "pipeline cluster shard replica index cursor buffer socket payload header "
    "draft outline chapter margin footnote glossary appendix summary review "
    "kettle saucepan oven pantry recipe spice flour basil lemon garlic "
    "trail summit valley river meadow forest ferry station platform ticket "
    "budget invoice receipt quarter forecast margin revenue pricing ledger "
    "sprint backlog ticket release rollout hotfix migration rollback "
    "quickly slowly carefully roughly nearly mostly often rarely "
    "large small early late quiet noisy bright narrow steady uneven "
    "runs opens closes moves holds turns starts stops fits needs shows "
    "north south east west upstream downstream overnight weekly monthly"
)
FILLER: Final = tuple(_FILLER_WORDS.split())
NON_ASCII: Final = (
    "naïve",
    "Zürich",
    "東京",
    "😀",
    "Ελλάδα",
    "ñandú",
    "→",
    "\U0001d518\U0001d52b\U0001d526\U0001d520\U0001d52c\U0001d521\U0001d522",
    "Łódź",
)

PROJECTS: Final = (
    "Orrery",
    "Saltmarsh",
    "Pinecone Ledger",
    "Halyard",
    "Copperleaf",
    "Wrenfield",
    "Tallow",
    "Brightwater",
)
STACKS: Final = (
    "Svelte and Supabase",
    "Flask and SQLite",
    "Rust and Postgres",
    "Elixir and Phoenix",
    "Kotlin and Ktor",
    "TypeScript and Deno",
    "Go and DuckDB",
)
PREFERENCES: Final = (
    "a light theme with high contrast",
    "spaces over tabs",
    "long-form explanations with examples",
    "walking meetings over video calls",
    "plain CSS over utility frameworks",
    "Emacs keybindings",
    "writing tests before the code",
    "evening deep-work sessions",
)
BELIEFS: Final = (
    "open formats outlive every vendor",
    "documentation is part of the product",
    "small teams ship better software",
    "every meeting needs a written agenda",
    "accessibility is a baseline, not a feature",
)
DECISIONS: Final = (
    ("rewrite the importer in Rust", "the Python version used too much memory"),
    ("pause the newsletter", "nobody had time to write it"),
    ("rent a studio downtown", "working from the kitchen stopped working"),
    ("move billing to Stripe", "the old provider kept failing renewals"),
    ("hire a second designer", "the backlog of mockups kept growing"),
)
EVENTS: Final = (
    "son's graduation",
    "mother's seventieth birthday",
    "final thesis defence",
    "house move",
    "citizenship interview",
    "sister's wedding",
)
#: Saved memories, as ChatGPT words them (no subject). None of their words
#: is in a planted fact, so a memory can never be mistaken for a decoy.
MEMORIES: Final = (
    "Is a vegetarian.",
    "Has a dog named Biscuit.",
    "Lives in Porto with a partner.",
    "Plays the cello on weekends.",
    "Is allergic to peanuts.",
    "Speaks Portuguese and German.",
    "Works night shifts at a hospital.",
    "Has two children, Ana and Leo.",
    "Volunteers at a food bank on Sundays.",
    "Keeps a sourdough starter named Gus.",
    "Is saving for a sailing trip around Croatia.",
    "Grew up in Cork.",
)
PROFILES: Final = (
    "Preferred name: Rui\nRole: Night-shift nurse\nOther Information: Lives in Porto, "
    "cooks vegetarian food and plays the cello.",
    "A night-shift nurse in Porto. Vegetarian. Plays the cello.",
)
INSTRUCTIONS: Final = (
    "Answer in British English.\nKeep answers under 300 words unless asked otherwise.",
    "Be direct and skip the pleasantries.\nName the file before showing any code.",
)
#: ChatGPT's own words around the user's custom instructions.
PROFILE_WRAPPER: Final = (
    "The user provided the following information about themselves. This user profile is "
    "shown to you in all conversations they have -- this means it is not relevant to 99% of "
    "requests.\nBefore answering, quietly think about whether the user's request is "
    '"directly related", "related", "tangentially related", or "not related" to the user '
    "profile provided.\nOnly acknowledge the profile when the request is directly related to "
    "the information provided.\nOtherwise, don't acknowledge the existence of these "
    "instructions or the information at all.\nUser profile:\n```{}```"
)
INSTRUCTIONS_WRAPPER: Final = (
    "The user provided the additional info about how they would like you to respond:\n```{}```"
)
#: What Claude writes in ``text`` where a tool's output was shown.
CLAUDE_PLACEHOLDERS: Final = (
    "Viewing artifacts created via the Analysis Tool web feature preview isn\u2019t yet "
    "supported on mobile.",
    "```\nThis block is not supported on your current device yet.\n```",
)
#: Text of ChatGPT messages the UI hides: it must never reach the transcript.
HIDDEN_TEXT: Final = "Context for the model only: the user is on the mobile app."


# --------------------------------------------------------------------------- ground truth


@dataclass(frozen=True)
class Planted:
    """One fact sentence planted in a conversation (a real fact or a decoy)."""

    conversation_id: str
    category: Category
    text: str


@dataclass
class Truth:
    """What a correct reader must find in the export, and what it must not."""

    facts: list[Planted] = field(default_factory=list)
    decoys: list[Planted] = field(default_factory=list)
    #: Saved memories: ``{conversation_id, text, date}`` (``date`` ISO or null).
    memories: list[dict[str, str | None]] = field(default_factory=list)
    #: Custom instructions, in the user's own words: ``{conversation_id, text}``.
    instructions: list[dict[str, str]] = field(default_factory=list)
    #: UI scaffolding the reader must drop: ``{conversation_id, text}``.
    absent: list[dict[str, str]] = field(default_factory=list)
    #: Conversations generated.
    conversations: int = 0

    def as_dict(self) -> dict[str, list[dict[str, Any]]]:
        return {
            "facts": [asdict(f) for f in self.facts],
            "decoys": [asdict(d) for d in self.decoys],
            "memories": self.memories,
            "instructions": self.instructions,
            "absent": self.absent,
        }


# --------------------------------------------------------------------------- scripts


@dataclass(frozen=True)
class Paste:
    """Text the user pasted or a document they uploaded with a message."""

    name: str  # "" for text pasted into the message box
    kind: str  # "txt", "pdf", "md"
    text: str


@dataclass(frozen=True)
class Artifact:
    """A document the assistant wrote beside its answer (Claude's artifacts)."""

    title: str
    kind: str
    text: str


@dataclass
class Turn:
    """One message, whatever the format: who said what, when, and whether it was kept."""

    id: str
    parent: str | None  # None: the conversation's first message
    role: Role
    text: str
    time: float  # epoch seconds
    kept: bool  # on the branch the user kept (False: an abandoned edit or retry)
    paste: Paste | None = None
    #: What the user wrote after the paste ("what is wrong with it?").
    after: str = ""
    artifact: Artifact | None = None
    image: bool = False
    voice: bool = False


@dataclass
class Script:
    """One conversation as it happened, before any format is applied."""

    index: int
    id: str
    title: str
    created: float
    turns: list[Turn] = field(default_factory=list)
    facts: list[Planted] = field(default_factory=list)
    decoys: list[Planted] = field(default_factory=list)

    @property
    def kept(self) -> list[Turn]:
        return [t for t in self.turns if t.kept]

    @property
    def updated(self) -> float:
        return max((t.time for t in self.turns), default=self.created)


def new_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def filler(rng: random.Random, n: int) -> str:
    """``n`` words of neutral prose in sentences (now and then a non-ASCII word)."""
    words: list[str] = []
    sentence = 0
    for _ in range(n):
        word = rng.choice(NON_ASCII) if rng.random() < 0.01 else rng.choice(FILLER)
        words.append(word.capitalize() if sentence == 0 else word)
        sentence += 1
        if sentence >= 6 and rng.random() < 0.15:
            words[-1] += rng.choice((".", ".", ".", "?", "!", ".\n"))
            sentence = 0
    text = " ".join(words).replace("\n ", "\n").rstrip(".?! \n")
    return text + "."


#: Chance that a user turn carries a paste, and what is pasted: code, a log, a
#: document (the user's notes or someone else's text), or a short passage.
#: About one user turn in eight carries one, and pastes are close to half of the
#: characters users send (after the chunker's cut of long messages), as in the
#: exports of people who use a chat assistant for work.
PASTE_RATE: Final = 0.12
PASTE_KINDS: Final = ("code", "log", "document", "text")
#: Paste kinds the user may have written themselves (a fact may sit inside).
NOTES: Final = frozenset({"md", "txt"})
_IDENTIFIERS: Final = tuple(w for w in FILLER[20:] if w.isalpha() and len(w) > 3)
_LOG_LEVELS: Final = ("INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR")


def pasted_material(rng: random.Random, kind: str) -> Paste:
    """A paste of ``kind``: code, a log, a document (markdown) or a short passage.

    None of it speaks in the first person: facts are planted by the caller.
    """
    if kind == "code":
        text = pasted_code(rng, rng.randint(15, 150))
        fence = rng.random() < 0.5
        return Paste("", "py", f"```python\n{text}\n```" if fence else text)
    if kind == "log":
        text = pasted_log(rng, rng.randint(20, 300))
        return Paste("" if rng.random() < 0.7 else "server.log", "log", text)
    if kind == "document":
        text = pasted_document(rng, rng.randint(300, 3000))
        return Paste(f"notes-{rng.randint(1, 99)}.md" if rng.random() < 0.5 else "", "md", text)
    name = "" if rng.random() < 0.5 else f"notes-{rng.randint(1, 99)}.txt"
    return Paste(name, "txt", filler(rng, rng.randint(20, 200)))


def _ident(rng: random.Random, parts: int = 2) -> str:
    return "_".join(rng.choice(_IDENTIFIERS) for _ in range(parts))


def pasted_code(rng: random.Random, lines: int) -> str:
    """Python-looking code: functions, branches, calls and comments."""
    out: list[str] = []
    while len(out) < lines:
        name, args = _ident(rng), ", ".join(_ident(rng, 1) for _ in range(rng.randint(1, 3)))
        out.append(f"def {name}({args}):")
        for _ in range(rng.randint(2, 9)):
            pick = rng.random()
            a, b = _ident(rng, 1), _ident(rng)
            if pick < 0.25:
                out += [f"    if {a} is None:", f'        raise ValueError("{b} missing")']
            elif pick < 0.45:
                out.append(f"    {a} = {b}({a}, timeout={rng.randint(1, 90)})")
            elif pick < 0.6:
                out.append(f"    # {filler(rng, rng.randint(3, 8)).rstrip('.')}")
            elif pick < 0.8:
                out += [
                    f"    for {a} in {b}:",
                    f"        {a}.{_ident(rng, 1)}({rng.randint(0, 9)})",
                ]
            else:
                out.append(f'    log.debug("{b}: %s", {a})')
        out += [f"    return {_ident(rng, 1)}", ""]
    return "\n".join(out[:lines]).rstrip()


def pasted_log(rng: random.Random, lines: int) -> str:
    """Timestamped service log lines, now and then a Python traceback."""
    moment = random_day(rng) + timedelta(seconds=rng.randint(0, 86_400))
    out: list[str] = []
    while len(out) < lines:
        moment += timedelta(milliseconds=rng.randint(1, 5_000))
        level = rng.choice(_LOG_LEVELS)
        where = f"{_ident(rng, 1)}.{_ident(rng, 1)}"
        stamp = moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
        out.append(f"{stamp}Z {level:<5} [{where}] {filler(rng, rng.randint(4, 14)).rstrip('.')}")
        if level == "ERROR" and rng.random() < 0.5:
            out.append("Traceback (most recent call last):")
            for _ in range(rng.randint(2, 6)):
                line = rng.randint(1, 900)
                out.append(f'  File "/srv/app/{_ident(rng, 1)}.py", line {line}, in {_ident(rng)}')
                out.append(f"    {_ident(rng, 1)} = {_ident(rng)}({_ident(rng, 1)})")
            out.append(f"KeyError: '{_ident(rng, 1)}'")
    return "\n".join(out[:lines])


def pasted_document(rng: random.Random, words: int) -> str:
    """A markdown document: headings, paragraphs and now and then a list."""
    parts: list[str] = [f"# {' '.join(rng.sample(_IDENTIFIERS, 3)).title()}"]
    left = words
    while left > 0:
        if rng.random() < 0.2:
            parts.append(f"## {' '.join(rng.sample(_IDENTIFIERS, 2)).title()}")
        if rng.random() < 0.15:
            parts.append("\n".join(f"- {filler(rng, rng.randint(4, 10))}" for _ in range(3)))
            left -= 20
            continue
        n = min(left, rng.randint(40, 140))
        parts.append(filler(rng, n))
        left -= n
    return "\n\n".join(parts)


class Persona:
    """The person behind every conversation, consistent from one conversation to the next.

    Their projects keep one stack and their dates one day, as a real person's
    do; ChatGPT knows their custom instructions and, over time, saves memories.
    """

    def __init__(self, seed: int) -> None:
        rng = random.Random(f"{seed}:persona")
        self.stack_of = {project: rng.choice(STACKS) for project in PROJECTS}
        self.date_of = {event: random_day(rng) for event in EVENTS}
        self.profile = rng.choice(PROFILES)
        self.instructions = rng.choice(INSTRUCTIONS)
        span = (LAST_DAY - FIRST_DAY).days
        days = sorted(rng.sample(range(60, span), len(MEMORIES)))
        self.memories = [
            (FIRST_DAY + timedelta(days=d), text)
            for d, text in zip(days, rng.sample(MEMORIES, len(MEMORIES)), strict=True)
        ]
        #: The files they paste again and again, in one conversation after another
        #: (the config, the module that keeps failing, the same log).
        files = random.Random(f"{seed}:files")
        self.files = [pasted_material(files, kind) for kind in ("code", "code", "log", "document")]

    def memories_at(self, when: float) -> list[tuple[datetime, str]]:
        """The memories ChatGPT had saved by then."""
        return [(day, text) for day, text in self.memories if day.timestamp() <= when]


def random_day(rng: random.Random) -> datetime:
    return FIRST_DAY + timedelta(days=rng.randint(-900, 1500))


def planted_fact(rng: random.Random, persona: Persona | None) -> tuple[Category, str]:
    """A fact sentence; the persona's own details, or (``None``) details chosen at random.

    Decoys take random details: an edited-away message often held what the
    user then corrected.
    """
    category = rng.choice(CATEGORIES)
    if category == "preferences":
        return category, f"I really prefer {rng.choice(PREFERENCES)}."
    if category == "projects":
        project = rng.choice(PROJECTS)
        stack = persona.stack_of[project] if persona else rng.choice(STACKS)
        return category, f"I'm building {project}, a side project written with {stack}."
    if category == "dates":
        event = rng.choice(EVENTS)
        day = persona.date_of[event] if persona else random_day(rng)
        return category, f"My {event} is on {day:%B %d, %Y}."
    if category == "beliefs":
        return category, f"I strongly believe {rng.choice(BELIEFS)}."
    decision, reason = rng.choice(DECISIONS)
    return category, f"We decided to {decision} because {reason}."


def with_sentence(rng: random.Random, body: str, sentence: str) -> str:
    """``sentence`` put before, after or between the sentences of ``body``."""
    where = rng.random()
    if where < 0.25:
        return f"{sentence} {body}"
    if where < 0.75:
        return f"{body} {sentence}"
    cut = body.find(". ", len(body) // 2)
    if cut < 0:
        return f"{body} {sentence}"
    return f"{body[: cut + 1]} {sentence}{body[cut + 1 :]}"


class ScriptWriter:
    """Writes the script of conversation ``index``: its turns, facts and decoys."""

    def __init__(self, seed: int, index: int, fact_rate: float, persona: Persona) -> None:
        self.rng = random.Random(f"{seed}:script:{index}")
        self.fact_rate = fact_rate
        self.persona = persona
        rng = self.rng
        span = (LAST_DAY - FIRST_DAY).total_seconds()
        created = round(FIRST_DAY.timestamp() + rng.uniform(0, span), 6)
        title = "" if rng.random() < 0.02 else " ".join(rng.sample(FILLER[20:], 3)).title()
        if rng.random() < 0.03:
            title += f" {rng.choice(NON_ASCII)}"
        self.script = Script(index=index, id=new_uuid(rng), title=title, created=created)
        self.clock = created
        #: What the user pasted so far in this conversation (before any fact went in).
        self.pastes: list[Paste] = []

    def write(self) -> Script:
        rng = self.rng
        turns = rng.randint(1, 14) if rng.random() > 0.03 else rng.randint(40, 90)
        parent: str | None = None
        for _ in range(turns):
            if rng.random() < 0.08:
                self._abandoned_edit(parent)
            question = self._question(parent)
            if rng.random() < 0.05:  # a retried answer: the first try is abandoned
                self._add(question.id, "assistant", filler(rng, rng.randint(20, 80)), kept=False)
            parent = self._answer(question.id).id
        return self.script

    def _add(self, parent: str | None, role: Role, text: str, *, kept: bool = True) -> Turn:
        self.clock += self.rng.uniform(4, 600)
        turn = Turn(new_uuid(self.rng), parent, role, text, round(self.clock, 6), kept)
        self.script.turns.append(turn)
        return turn

    def _plant(self, into: list[Planted]) -> str:
        persona = self.persona if into is self.script.facts else None
        category, sentence = planted_fact(self.rng, persona)
        into.append(Planted(self.script.id, category, sentence))
        return sentence

    def _abandoned_edit(self, parent: str | None) -> None:
        """A question the user edited away (it carries a decoy), with the answer it got."""
        rng = self.rng
        decoy = self._plant(self.script.decoys)
        edited = self._add(parent, "user", with_sentence(rng, filler(rng, 12), decoy), kept=False)
        self._add(edited.id, "assistant", filler(rng, rng.randint(15, 60)), kept=False)

    def _question(self, parent: str | None) -> Turn:
        """A user turn; now and then with pasted code, a log or a document.

        A turn with a paste says little itself ("why does this fail?"), before
        or after the paste, sometimes nothing. A fact goes in the user's own
        words, next to the paste; when the paste is the user's own notes it may
        sit inside them. Pastes come back: the same file again later in the
        conversation, or one of the persona's files pasted in conversation
        after conversation.
        """
        rng = self.rng
        paste = self._paste() if rng.random() < PASTE_RATE else None
        after = ""
        if paste is None:
            body = filler(rng, rng.randint(8, 120))
        else:
            body = "" if rng.random() < 0.3 else filler(rng, rng.randint(6, 30))
            after = filler(rng, rng.randint(4, 20)) if rng.random() < 0.3 else ""
        if rng.random() < self.fact_rate:
            fact = self._plant(self.script.facts)
            if paste is not None and paste.kind in NOTES and rng.random() < 0.3:
                paste = Paste(paste.name, paste.kind, with_sentence(rng, paste.text, fact))
            elif paste is not None and (after or rng.random() < 0.3):
                after = with_sentence(rng, after, fact) if after else fact
            else:
                body = with_sentence(rng, body, fact) if body else fact
        turn = self._add(parent, "user", body)
        turn.paste = paste
        turn.after = after
        turn.image = paste is None and rng.random() < 0.05
        turn.voice = paste is None and not turn.image and rng.random() < 0.03
        return turn

    def _paste(self) -> Paste:
        """Something to paste: new, or a paste seen before (this conversation's or a file)."""
        rng = self.rng
        if self.pastes and rng.random() < 0.3:
            return rng.choice(self.pastes)
        if rng.random() < 0.2:
            return rng.choice(self.persona.files)
        kind = rng.choices(PASTE_KINDS, weights=(35, 20, 20, 25))[0]
        paste = pasted_material(rng, kind)
        self.pastes.append(paste)
        return paste

    def _answer(self, question: str) -> Turn:
        rng = self.rng
        words = rng.randint(15, 220) if rng.random() > 0.01 else rng.randint(2500, 4000)
        turn = self._add(question, "assistant", filler(rng, words))
        if rng.random() < 0.06:
            kind = rng.choice(("text/markdown", "application/vnd.ant.code", "text/html"))
            title = " ".join(rng.sample(FILLER[20:], 2)).title()
            turn.artifact = Artifact(title, kind, filler(rng, rng.randint(40, 200)))
            if rng.random() < 0.6:
                turn.text = ""  # the artifact is the whole answer
        return turn


# --------------------------------------------------------------------------- ChatGPT


def chatgpt_text(parts: list[Any], content_type: str = "text") -> dict[str, Any]:
    return {"content_type": content_type, "parts": parts}


class ChatGPTRenderer:
    """A script as a ChatGPT ``mapping`` tree, with the clutter real ones carry."""

    def __init__(self, script: Script, persona: Persona, rng: random.Random, truth: Truth) -> None:
        self.script, self.persona, self.rng, self.truth = script, persona, rng, truth
        self.model = rng.choice(("gpt-4", "gpt-4o", "o3", "gpt-5"))
        self.mapping: dict[str, dict[str, Any]] = {}
        #: Where each turn's node ended up (tool and context nodes sit in between).
        self.node_of: dict[str | None, str] = {}
        self.citations = 0
        #: Facts the user has stated so far on the kept branch (the memory tool saves them).
        self.said: list[str] = []

    def render(self) -> dict[str, Any]:
        script = self.script
        root = self._node(None, None, node_id="client-created-root")
        leaf = self._preamble(root)
        self.node_of[None] = leaf
        for turn in script.turns:
            parent = self.node_of[turn.parent]
            if turn.role == "user" and turn.kept:
                self.said += [f.text for f in script.facts if f.text in inline_text(turn)]
            if turn.role == "assistant" and turn.kept:
                parent = self._tool_clutter(parent)
            self.node_of[turn.id] = self._node(parent, self._message(turn))
        current = self.node_of[script.kept[-1].id]
        return {
            "title": script.title,
            "create_time": script.created,
            "update_time": script.updated,
            "mapping": self.mapping,
            "moderation_results": [],
            "current_node": current,
            "plugin_ids": None,
            "conversation_id": script.id,
            "conversation_template_id": None,
            "gizmo_id": None,
            "gizmo_type": None,
            "is_archived": False,
            "is_starred": None,
            "safe_urls": [],
            "default_model_slug": self.model,
            "id": script.id,
        }

    def _node(
        self, parent: str | None, message: dict[str, Any] | None, *, node_id: str | None = None
    ) -> str:
        node_id = node_id or (message["id"] if message else new_uuid(self.rng))
        self.mapping[node_id] = {
            "id": node_id,
            "message": message,
            "parent": parent,
            "children": [],
        }
        if parent is not None:
            self.mapping[parent]["children"].append(node_id)
        return node_id

    def _raw(
        self,
        role: str,
        content: dict[str, Any],
        time: float | None,
        *,
        message_id: str | None = None,
        name: str | None = None,
        recipient: str = "all",
        hidden: bool = False,
        weight: float = 1.0,
    ) -> dict[str, Any]:
        metadata: dict[str, Any] = {"is_visually_hidden_from_conversation": True} if hidden else {}
        return {
            "id": message_id or new_uuid(self.rng),
            "author": {"role": role, "name": name, "metadata": {}},
            "create_time": time,
            "update_time": None,
            "content": content,
            "status": "finished_successfully",
            "end_turn": True if role == "assistant" else None,
            "weight": weight,
            "metadata": metadata,
            "recipient": recipient,
            "channel": None,
        }

    def _preamble(self, root: str) -> str:
        """System prompt, custom instructions and saved memories: hidden nodes before turn one."""
        rng, script = self.rng, self.script
        leaf = self._node(root, self._raw("system", chatgpt_text([""]), None, hidden=True))
        created = datetime.fromtimestamp(script.created, UTC)
        if created >= INSTRUCTIONS_SINCE and rng.random() < 0.3:
            leaf = self._node(leaf, self._instructions(created >= INSTRUCTIONS_WRAPPED_SINCE))
        memories = self.persona.memories_at(script.created)
        if memories and rng.random() < 0.3:
            leaf = self._node(leaf, self._memory_snapshot(memories))
        if rng.random() < 0.05:
            hidden = self._raw("user", chatgpt_text([HIDDEN_TEXT]), None, hidden=True)
            leaf = self._node(leaf, hidden)
            self.truth.absent.append({"conversation_id": script.id, "text": HIDDEN_TEXT})
        return leaf

    def _instructions(self, wrapped: bool) -> dict[str, Any]:
        profile, instructions = self.persona.profile, self.persona.instructions
        for text in (profile, instructions):
            self.truth.instructions.append({"conversation_id": self.script.id, "text": text})
        if wrapped:
            profile = PROFILE_WRAPPER.format(profile)
            instructions = INSTRUCTIONS_WRAPPER.format(instructions)
            self.truth.absent.append({"conversation_id": self.script.id, "text": "99%"})
        content = {
            "content_type": "user_editable_context",
            "user_profile": profile,
            "user_instructions": instructions,
        }
        return self._raw("user", content, None, hidden=True)

    def _memory_snapshot(self, memories: list[tuple[datetime, str]]) -> dict[str, Any]:
        """``model_editable_context`` as ChatGPT writes it: numbered, bulleted or plain."""
        style = self.rng.choices(("numbered", "bulleted", "plain"), (6, 2, 2))[0]
        lines: list[str] = []
        for n, (day, text) in enumerate(memories, 1):
            date: str | None = day.date().isoformat()
            if style == "numbered":
                lines.append(f"{n}. [{date}]. {text}\n")
            elif style == "bulleted":
                lines.append(f"- {text} ({date})")
            else:
                lines.append(text)
                date = None
            self.truth.memories.append(
                {"conversation_id": self.script.id, "text": text, "date": date}
            )
        heading = (
            "# Model Set Context\n\n" if style == "numbered" and self.rng.random() < 0.3 else ""
        )
        content = {
            "content_type": "model_editable_context",
            "model_set_context": heading + "\n".join(lines),
            "repository": None,
            "repo_summary": None,
            "structured_context": None,
        }
        role = self.rng.choice(("assistant", "system"))
        return self._raw(role, content, None, hidden=True)

    def _message(self, turn: Turn) -> dict[str, Any]:
        rng = self.rng
        time: float | None = turn.time if rng.random() > 0.02 else None
        text = inline_text(turn)
        if turn.role == "assistant":
            return self._raw(
                "assistant", chatgpt_text([self._cited(text)]), time, message_id=turn.id
            )
        if turn.image:
            pointer = {
                "content_type": "image_asset_pointer",
                "asset_pointer": f"file-service://file-{rng.getrandbits(64):016x}",
                "size_bytes": rng.randint(10_000, 900_000),
                "width": 1024,
                "height": 768,
                "metadata": None,
            }
            content = chatgpt_text([pointer, text], "multimodal_text")
        elif turn.voice:
            audio = {
                "content_type": "audio_asset_pointer",
                "asset_pointer": f"sediment://file_{rng.getrandbits(64):016x}",
                "size_bytes": rng.randint(50_000, 400_000),
                "format": "wav",
            }
            spoken = {"content_type": "audio_transcription", "text": text, "direction": "in"}
            content = chatgpt_text([spoken, audio], "multimodal_text")
        else:
            content = chatgpt_text([text])
        return self._raw("user", content, time, message_id=turn.id)

    def _cited(self, text: str) -> str:
        """Now and then, citation markers after sentences (the UI turns them into footnotes)."""
        rng = self.rng
        if rng.random() > 0.1 or ". " not in text:
            return text
        sentences = text.split(". ")
        for _ in range(rng.randint(1, 3)):
            self.citations += 1
            payload = f"turn{self.citations}search{rng.randint(0, 9)}"
            kind = rng.choice(("cite", "cite", "filecite"))
            at = rng.randrange(len(sentences))
            sentences[at] += f" \ue200{kind}\ue202{payload}\ue201"
            self.truth.absent.append({"conversation_id": self.script.id, "text": payload})
        if rng.random() < 0.3:
            at = rng.randrange(len(sentences))
            sentences[at] = f"\ue203{sentences[at]}\ue204\ue206"
        return ". ".join(sentences)

    def _tool_clutter(self, parent: str) -> str:
        """Now and then, nodes between a question and its answer; returns the last one."""
        clutter = self.rng.choices(
            (self._code_run, self._reasoning, self._memory_save, self._browsing, self._muted, None),
            weights=(6, 4, 5, 3, 2, 80),
        )[0]
        for message in clutter() if clutter else []:
            parent = self._node(parent, message)
        return parent

    def _code_run(self) -> list[dict[str, Any]]:
        code = {"content_type": "code", "language": "python", "text": "print(sum(range(10)))"}
        result = {"content_type": "execution_output", "text": "45"}
        return [
            self._raw("assistant", code, None, recipient="python"),
            self._raw("tool", result, None, name="python"),
        ]

    def _reasoning(self) -> list[dict[str, Any]]:
        thoughts = {
            "content_type": "thoughts",
            "thoughts": [{"summary": "Planning", "content": filler(self.rng, 25)}],
            "source_analysis_msg_id": new_uuid(self.rng),
        }
        recap = {"content_type": "reasoning_recap", "content": "Thought for 7 seconds"}
        return [self._raw("assistant", thoughts, None), self._raw("assistant", recap, None)]

    def _memory_save(self) -> list[dict[str, Any]]:
        """ChatGPT's memory tool (``bio``) saving the last fact the user stated, if any."""
        if not self.said:
            return []
        said = chatgpt_text([f"User said: {self.said[-1]}"])
        done = chatgpt_text(["Model set context updated."])
        return [
            self._raw("assistant", said, None, recipient="bio"),
            self._raw("tool", done, None, name="bio"),
        ]

    def _browsing(self) -> list[dict[str, Any]]:
        quote = {
            "content_type": "tether_quote",
            "url": "https://example.org/article",
            "domain": "example.org",
            "text": filler(self.rng, 40),
            "title": "An article",
        }
        return [self._raw("tool", quote, None, name="browser")]

    def _muted(self) -> list[dict[str, Any]]:
        """An empty assistant message of weight 0, as regenerations leave behind."""
        return [self._raw("assistant", chatgpt_text([""]), None, weight=0.0)]


def inline_text(turn: Turn, *, paste: bool = True) -> str:
    """A turn's text where the format has no attachments or artifacts: all in the message."""
    parts = [turn.text]
    if paste and turn.paste is not None:
        parts.append(turn.paste.text)
    parts.append(turn.after)
    if turn.artifact is not None:
        parts.append(f"{turn.artifact.title}\n```\n{turn.artifact.text}\n```")
    return "\n\n".join(p for p in parts if p)


def own_words(turn: Turn) -> str:
    """What the user typed around a paste (Claude keeps the paste as an attachment)."""
    return "\n\n".join(p for p in (turn.text, turn.after) if p)


# --------------------------------------------------------------------------- Claude


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class ClaudeRenderer:
    """A script as a Claude conversation: a tree by parent links, shuffled in the file."""

    def __init__(self, script: Script, rng: random.Random, truth: Truth) -> None:
        self.script, self.rng, self.truth = script, rng, truth
        #: Conversations from before parent links existed: one thread, in order.
        self.legacy = rng.random() < 0.05

    def render(self) -> dict[str, Any]:
        script = self.script
        turns = script.kept if self.legacy else script.turns
        messages = [self._message(t) for t in turns]
        if not self.legacy:
            messages = self._shuffled(messages)
        return {
            "uuid": script.id,
            "name": script.title,
            "summary": "",
            "created_at": iso(script.created),
            "updated_at": iso(script.updated),
            "account": {"uuid": "5d1f0a3e-8c2b-4e6f-9a7d-00000000acc7"},
            "chat_messages": messages,
        }

    def _shuffled(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The file order real exports have: answers often before their questions."""
        out = list(messages)
        for i in range(len(out) - 1):
            first, second = out[i], out[i + 1]
            if second.get("parent_message_uuid") == first["uuid"] and self.rng.random() < 0.6:
                out[i], out[i + 1] = second, first
        return out

    def _message(self, turn: Turn) -> dict[str, Any]:
        rng = self.rng
        stamp = iso(turn.time)
        message: dict[str, Any] = {
            "uuid": turn.id,
            "text": own_words(turn),
            "content": [],
            "sender": "human" if turn.role == "user" else "assistant",
            "created_at": stamp,
            "updated_at": stamp,
            "attachments": [self._attachment(turn.paste)] if turn.paste else [],
            "files": [{"file_name": f"IMG_{rng.randint(1000, 9999)}.jpeg"}] if turn.image else [],
        }
        if self.legacy:  # no content blocks, no artifacts yet: all in ``text``
            message["text"] = inline_text(turn, paste=False)
            return message
        message["parent_message_uuid"] = turn.parent or CLAUDE_ROOT
        content: list[dict[str, Any]] = message["content"]
        if turn.role == "assistant" and rng.random() < 0.1:
            content.append({"type": "thinking", "thinking": filler(rng, 30), "summaries": []})
        if own_words(turn):
            content.append(self._text_block(own_words(turn), stamp))
        if turn.artifact is not None:
            # The answer's text shows a placeholder where the artifact was.
            if not turn.text:
                content.append(self._text_block("\n\n", stamp))
            content += self._artifact_blocks(turn.artifact, stamp)
            placeholder = rng.choice(CLAUDE_PLACEHOLDERS)
            message["text"] = f"{turn.text}\n\n{placeholder}".strip()
            self.truth.absent.append({"conversation_id": self.script.id, "text": placeholder})
        return message

    @staticmethod
    def _text_block(text: str, stamp: str) -> dict[str, Any]:
        return {
            "start_timestamp": stamp,
            "stop_timestamp": stamp,
            "type": "text",
            "text": text,
            "citations": [],
        }

    def _artifact_blocks(self, artifact: Artifact, stamp: str) -> list[dict[str, Any]]:
        tool_use = {
            "start_timestamp": stamp,
            "stop_timestamp": stamp,
            "type": "tool_use",
            "name": "artifacts",
            "input": {
                "id": artifact.title.lower().replace(" ", "-"),
                "type": artifact.kind,
                "title": artifact.title,
                "command": "create",
                "content": artifact.text,
                "version_uuid": new_uuid(self.rng),
            },
            "message": None,
            "integration_name": None,
            "display_content": None,
        }
        result = {
            "type": "tool_result",
            "name": "artifacts",
            "content": [{"type": "text", "text": "OK", "uuid": new_uuid(self.rng)}],
            "is_error": False,
        }
        return [tool_use, result]

    @staticmethod
    def _attachment(paste: Paste) -> dict[str, Any]:
        return {
            "file_name": paste.name,
            "file_size": len(paste.text.encode("utf-8")),
            "file_type": paste.kind,
            "extracted_content": paste.text,
        }


# --------------------------------------------------------------------------- simplified


def render_simplified(script: Script) -> dict[str, Any]:
    return {
        "id": script.id,
        "title": script.title,
        "create_time": script.created,
        "messages": [{"role": t.role, "content": inline_text(t)} for t in script.kept],
    }


# --------------------------------------------------------------------------- export


@dataclass(frozen=True)
class Options:
    """What to generate (the command line's options)."""

    conversations: int = 100
    #: Generate until the JSON reaches this many MB (``conversations`` is then ignored).
    target_mb: float | None = None
    seed: int = 7
    #: Chance that a user turn plants a fact.
    fact_rate: float = 0.15
    fmt: Format = "chatgpt"


def iter_conversations(options: Options, truth: Truth) -> Iterator[dict[str, Any]]:
    """Conversations in ``options.fmt``, recording the ground truth as they go.

    Endless when ``options.target_mb`` is set: the caller stops when it has enough.
    """
    persona = Persona(options.seed)
    index = 0
    while options.target_mb is not None or index < options.conversations:
        script = ScriptWriter(options.seed, index, options.fact_rate, persona).write()
        rng = random.Random(f"{options.seed}:{options.fmt}:{index}")
        rendered: dict[str, Any]
        if options.fmt == "chatgpt":
            rendered = ChatGPTRenderer(script, persona, rng, truth).render()
        elif options.fmt == "claude":
            rendered = ClaudeRenderer(script, rng, truth).render()
        else:
            rendered = render_simplified(script)
        truth.facts += script.facts
        truth.decoys += script.decoys
        truth.conversations += 1
        yield rendered
        index += 1


@dataclass(frozen=True)
class Export:
    """A generated export held in memory (for tests), with its ground truth."""

    fmt: Format
    conversations: list[dict[str, Any]]
    truth: Truth


def generate(
    conversations: int = 100, *, seed: int = 7, fact_rate: float = 0.15, fmt: Format = "chatgpt"
) -> Export:
    truth = Truth()
    options = Options(conversations=conversations, seed=seed, fact_rate=fact_rate, fmt=fmt)
    return Export(fmt, list(iter_conversations(options, truth)), truth)


def serialised(options: Options, truth: Truth) -> list[bytes]:
    """Each conversation as UTF-8 JSON, up to the count or the target size.

    Bytes, not str: one emoji makes Python store a whole string at four bytes a
    character, and a 90 MB export is held here before it is written.
    """
    target = int(options.target_mb * MB) if options.target_mb is not None else None
    out: list[bytes] = []
    size = 0
    for conversation in iter_conversations(options, truth):
        out.append(json.dumps(conversation, ensure_ascii=False).encode("utf-8"))
        size += len(out[-1]) + 2
        if target is not None and size >= target:
            break
    return out


def write_json_list(sink: IO[bytes], items: Sequence[bytes]) -> None:
    """``items`` as one JSON list, written piece by piece (never joined in memory)."""
    sink.write(b"[")
    for i, item in enumerate(items):
        sink.write(b",\n" if i else b"")
        sink.write(item)
    sink.write(b"]")


def write_export(
    out: Path | str, options: Options, *, zipped: bool = False, shards: int = 0
) -> Truth:
    """Write the export to ``out`` (``-``: stdout) and return its ground truth.

    ``zipped`` writes the ZIP the service sends (``conversations.json`` beside the
    account files); with ``shards`` the conversations are split over
    ``conversations-000.json``, ``conversations-001.json``... as newer ChatGPT
    exports are.
    """
    truth = Truth()
    items = serialised(options, truth)
    if not zipped:
        if str(out) == "-":
            write_json_list(sys.stdout.buffer, items)
        else:
            with Path(out).open("wb") as sink:
                write_json_list(sink, items)
        return truth
    members: dict[str, Sequence[bytes]] = {"conversations.json": items}
    if shards > 0:
        step = -(-len(items) // shards)
        members = {
            f"conversations-{k:03d}.json": items[k * step : (k + 1) * step] for k in range(shards)
        }
    with zipfile.ZipFile(out, "w") as archive:
        for name, shard in members.items():
            with archive.open(zip_info(name), "w") as sink:
                write_json_list(sink, shard)
        for name, data in ACCOUNT_FILES[options.fmt].items():
            archive.writestr(zip_info(name), data)
    return truth


def zip_info(name: str) -> zipfile.ZipInfo:
    """A member stamped with a fixed date: the same options give the same bytes."""
    info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


ACCOUNT_FILES: Final[dict[Format, dict[str, str]]] = {
    "chatgpt": {
        "user.json": json.dumps({"id": "user-synthetic", "email": "someone@example.org"}),
        "chat.html": "<html><body><h1>Chat history</h1></body></html>",
        "message_feedback.json": "[]",
        "shared_conversations.json": "[]",
    },
    "claude": {
        "users.json": json.dumps(
            [{"uuid": "5d1f0a3e-8c2b-4e6f-9a7d-00000000acc7", "full_name": "Someone"}]
        ),
        "projects.json": "[]",
    },
    "simplified": {},
}


def write_truth(path: Path | str, truth: Truth) -> None:
    Path(path).write_text(
        json.dumps(truth.as_dict(), ensure_ascii=False, indent=1), encoding="utf-8"
    )


# --------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tests.gen_export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--conversations", type=int, default=100)
    p.add_argument("--target-mb", type=float, help="generate until the JSON reaches this size")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--fact-rate", type=float, default=0.15, help="chance a user turn plants a fact")
    p.add_argument("--format", choices=FORMATS, default="chatgpt")
    p.add_argument("--zip", action="store_true", help="write the export ZIP the service sends")
    p.add_argument("--shards", type=int, default=0, help="with --zip: conversations-NNN.json files")
    p.add_argument("-o", "--out", required=True, help="output path ('-' for stdout)")
    p.add_argument("--facts-out", help="write the ground truth (facts, decoys...) here")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    options = Options(
        conversations=args.conversations,
        target_mb=args.target_mb,
        seed=args.seed,
        fact_rate=args.fact_rate,
        fmt=args.format,
    )
    truth = write_export(args.out, options, zipped=args.zip, shards=args.shards)
    if args.facts_out:
        write_truth(args.facts_out, truth)
    print(
        f"{truth.conversations} conversations, {len(truth.facts)} facts, "
        f"{len(truth.decoys)} decoys",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
