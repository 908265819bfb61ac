"""The ``offline`` provider's writing: MEMORY and the persona sections from templates.

MEMORY is the shared deterministic rendering of the facts (the same one the
memory stage falls back on); the sections are filled from MEMORY's bullets
and the users' own words in the sampled conversations.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Final

from jobs.domain.facts import Facts, normalise
from jobs.domain.memory import fallback_memory, memory_sections
from jobs.domain.rules import (
    ADVERBS,
    INSTRUCTION_PREFIX,
    WS,
    I,
    consolidate,
    date_sort_key,
    is_background,
    is_third_person,
    wordset,
)
from jobs.domain.sections import Section, Sections
from jobs.domain.transcript import turns

MODEL: Final = "offline-rules-v1"

# --------------------------------------------------------------------------- MEMORY


def write_memory(facts: Facts) -> str:
    """MEMORY markdown: a title, a note on how it was written, the five sections.

    The sections come from the shared deterministic renderer (the same one
    the memory stage falls back on), fed with deduplicated facts and the
    dates in chronological order.
    """
    facts = consolidate(facts)
    ordered = facts.model_copy(
        update={"dates": sorted(facts.dates, key=lambda d: date_sort_key(d.date))}
    )
    note = (
        f"_Written by the offline rule-based writer ({MODEL}) from {facts.count()} facts "
        "the user stated; no language model was involved._"
    )
    return f"# MEMORY\n\n{note}\n\n{fallback_memory(ordered)}"


# --------------------------------------------------------------------------- sections

_BULLET: Final = re.compile(r"^\s*[-*+]\s+(?P<text>.+?)\s*$")
_MORE: Final = re.compile(r"^\u2026?and \d+ more\.?$")
_BOLD_HEAD: Final = re.compile(r"^\*\*(?P<name>.+?)\*\*\s*[:\u2014\u2013-]?\s*(?P<rest>.*)$")
_DATED: Final = re.compile(r"^(?P<date>[^:]{4,40}):\s+(?P<event>.+)$")
#: MEMORY writes "X. Context: because Y."; persona points read better as "X because Y".
_CONTEXT_REASON: Final = re.compile(
    r"\.\s+Context:\s+(?=(?:because|since|given|due\s+to|so|after|as|in\s+order)\b)"
)
_CONTEXT_OTHER: Final = re.compile(r"\.?\s+Context:\s+")
_WORD: Final = re.compile(r"[^\W\d_]{4,}")

_STOPWORDS: Final = wordset(
    """about above after again against also always another anything around because been before
    being below between both cannot could does doing down during each even every from further
    going good great have having hello help here how however into just know like little look
    made make many maybe more most much must need never next none only other over please
    pretty really right same should since some something still such sure take than thank thanks
    that their them then there these they thing things think this those though through today
    under until very want were what when where which while will with within without would yeah
    your yours user assistant said says okay well than able sorry first last back then also"""
)

#: Tools and stacks, as they are usually written. Matched case-insensitively,
#: except the ones in :data:`_TOOLS_EXACT`, which are ordinary English words
#: in lower case ("go", "rust" in "rust stains", "express", "swift").
_TOOLS: Final = (
    "Python",
    "JavaScript",
    "TypeScript",
    "Kotlin",
    "Ruby",
    "PHP",
    "C++",
    "C#",
    "Scala",
    "Elixir",
    "Haskell",
    "Julia",
    "SQL",
    "Bash",
    "HTML",
    "CSS",
    "Tailwind CSS",
    "Tailwind",
    "React",
    "Next.js",
    "Vue",
    "Nuxt",
    "Svelte",
    "Angular",
    "Node.js",
    "Django",
    "Flask",
    "FastAPI",
    "Laravel",
    "Postgres",
    "PostgreSQL",
    "MySQL",
    "SQLite",
    "MongoDB",
    "Mongo",
    "Redis",
    "ClickHouse",
    "Supabase",
    "Firebase",
    "DynamoDB",
    "Elasticsearch",
    "Kafka",
    "Docker",
    "Kubernetes",
    "Terraform",
    "AWS",
    "GCP",
    "Azure",
    "Vercel",
    "Netlify",
    "Heroku",
    "Cloudflare",
    "Linux",
    "Ubuntu",
    "macOS",
    "Windows",
    "iOS",
    "Android",
    "Git",
    "GitHub",
    "GitLab",
    "vim",
    "Neovim",
    "Emacs",
    "VS Code",
    "VSCode",
    "IntelliJ",
    "PyCharm",
    "Xcode",
    "Jupyter",
    "pandas",
    "NumPy",
    "PyTorch",
    "TensorFlow",
    "Excel",
    "Notion",
    "Obsidian",
    "Figma",
    "Slack",
    "Jira",
    "Airtable",
    "WordPress",
    "Shopify",
    "Stripe",
    "ChatGPT",
    "Claude",
    "LangChain",
    "pytest",
    "unittest",
    "Jest",
    "Playwright",
    "GraphQL",
    "SwiftUI",
    "CloudKit",
)
_TOOLS_EXACT: Final = ("Go", "Rust", "Swift", "Java", "Express", "Rails", "Spring", "Deno", "Bun")
_TOOL_DISPLAY: Final[dict[str, str]] = {t.casefold(): t for t in (*_TOOLS, *_TOOLS_EXACT)}
_TOOL_EDGE_BEFORE: Final = r"(?<![\w.+#])"
_TOOL_EDGE_AFTER: Final = r"(?![\w+#]|\.\w)"
_TOOL: Final = re.compile(
    _TOOL_EDGE_BEFORE
    + "(?:(?i:"
    + "|".join(re.escape(t) for t in sorted(_TOOLS, key=len, reverse=True))
    + ")|"
    + "|".join(_TOOLS_EXACT)
    + ")"
    + _TOOL_EDGE_AFTER
)
#: "written with Next.js and Supabase", "using FastAPI, Postgres": the named stack.
_STACK: Final = re.compile(
    r"\b(?:with|using|in|on|via)\s+(?P<list>[A-Z][\w.+#-]*(?:(?:,\s*|\s+and\s+|\s+or\s+|\s+)"
    r"[A-Z][\w.+#-]*)*)"
)
_STACK_SPLIT: Final = re.compile(r",\s*|\s+and\s+|\s+or\s+")

_SUBJECT_LEAD: Final = re.compile(
    rf"^(?P<subj>I|(?:the\s+)?user)\s+(?P<adv>(?:(?:{ADVERBS})\s+)*)(?P<verb>[\w']+)\b",
    I,
)
_CONTRACTION_LEAD: Final = re.compile(
    r"^(?:I'm|I\s+am|I've|I\s+have|I'd|I\s+was|I'll|(?:the\s+)?user\s+(?:is|has|was))\b", I
)
_LEAD_REPLACEMENT: Final[dict[str, str]] = {
    "i'm": "Is",
    "i am": "Is",
    "i've": "Has",
    "i have": "Has",
    "i'd": "Would",
    "i was": "Was",
    "i'll": "Will",
    "user is": "Is",
    "user has": "Has",
    "user was": "Was",
}
_INNER_FIRST_PERSON: Final = re.compile(
    r"\b(?:I'm|I\s+am|I\s+was|I've|I'd|I'll|I|me|my|mine|myself)\b|\bMy\b"
    r"|\b(?i:(?:the\s+)?user's)(?!\w)"
)
_INNER_REPLACEMENT: Final[dict[str, str]] = {
    "i'm": "they're",
    "i am": "they are",
    "i was": "they were",
    "i've": "they've",
    "i'd": "they'd",
    "i'll": "they'll",
    "i": "they",
    "me": "them",
    "my": "their",
    "mine": "theirs",
    "myself": "themselves",
    "user's": "their",
    "the user's": "their",
}
_FIRST_PERSON_LEAD: Final = re.compile(r"(?:I\b|I'|Im\b|(?:the\s+)?user\b(?!'))", I)
_MODALS: Final = wordset(
    "can could will would should must might may cannot can't won't never shall"
)
_NOT_VERBS: Final = wordset(
    "really strongly definitely generally usually mostly much just actually personally always "
    "still totally absolutely genuinely honestly also very kind of kinda never only mainly "
    "primarily exclusively typically normally"
)


def third_person(sentence: str) -> str:
    """A first-person fact as a description of the user ("I prefer X" -> "Prefers X").

    Persona sections describe the user; MEMORY keeps their own words. Leaves
    sentences it does not recognise in their original wording apart from
    possessives, which is still correct English.
    """
    text = sentence.strip()
    lead = _CONTRACTION_LEAD.match(text)
    if lead is not None:
        key = WS.sub(" ", lead.group().casefold()).removeprefix("the ")
        text = _LEAD_REPLACEMENT[key] + text[lead.end() :]
    elif (m := _SUBJECT_LEAD.match(text)) is not None:
        words = [*m.group("adv").split(), m.group("verb")]
        if is_third_person(m.group("subj")):
            rebuilt = words
        else:
            rebuilt = []
            for index, word in enumerate(words):
                low = word.casefold()
                if low in _NOT_VERBS and index < len(words) - 1:
                    rebuilt.append(word)
                    continue
                rebuilt.append(_conjugate(word))
                rebuilt.extend(words[index + 1 :])
                break
        text = " ".join(rebuilt) + text[m.end() :]
    text = _INNER_FIRST_PERSON.sub(
        lambda x: _INNER_REPLACEMENT[WS.sub(" ", x.group().casefold())], text
    )
    return text[:1].upper() + text[1:]


def _conjugate(verb: str) -> str:
    low = verb.casefold()
    irregular = {"have": "has", "do": "does", "don't": "doesn't", "be": "is", "am": "is"}
    if low in irregular:
        return irregular[low]
    if low in _MODALS or not low.isalpha():
        return verb
    if low.endswith(("s", "sh", "ch", "x", "z", "o")):
        return verb + "es"
    if low.endswith("y") and len(low) > 1 and low[-2] not in "aeiou":
        return verb[:-1] + "ies"
    return verb + "s"


@dataclass(slots=True)
class _Profile:
    """What the persona sections are written from: MEMORY's bullets and sample stats."""

    preferences: list[str]
    projects: list[tuple[str, str]]
    dates: list[tuple[str, str]]
    beliefs: list[str]
    decisions: list[str]
    background: list[str]
    samples: int
    topics: list[str]
    sample_tools: Counter[str]

    @property
    def fact_count(self) -> int:
        return (
            len(self.preferences)
            + len(self.projects)
            + len(self.dates)
            + len(self.beliefs)
            + len(self.decisions)
            + len(self.background)
        )


def _memory_bullets(memory: str) -> dict[str, list[str]]:
    bodies, _ = memory_sections(memory)
    out: dict[str, list[str]] = {}
    for name, lines in bodies.items():
        items = []
        for line in lines:
            m = _BULLET.match(line)
            if m is None:
                continue
            text = m.group("text")
            if not _MORE.match(text):
                items.append(text)
        out[name] = items
    return out


def _profile(memory: str, samples: list[str]) -> _Profile:
    bullets = _memory_bullets(memory)
    projects = []
    for item in bullets.get("Projects", []):
        m = _BOLD_HEAD.match(item)
        projects.append((m.group("name"), m.group("rest")) if m else ("", item))
    dates = []
    for item in bullets.get("Important Dates", []):
        m = _DATED.match(item)
        dates.append((m.group("date"), m.group("event")) if m else ("", item))
    decisions: list[str] = []
    background: list[str] = []
    for item in bullets.get("Decisions & Context", []):
        if is_background(item):
            background.append(item)
        else:
            decisions.append(_CONTEXT_OTHER.sub(" \u2014 ", _CONTEXT_REASON.sub(" ", item)))
    words: Counter[str] = Counter()
    tools: Counter[str] = Counter()
    for sample in samples:
        text = _user_text(sample)
        words.update(w for w in _WORD.findall(text.casefold()) if w not in _STOPWORDS)
        tools.update({_TOOL_DISPLAY[t.casefold()] for t in _TOOL.findall(text)})
    topics = [w for w, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0]))[:8]]
    return _Profile(
        preferences=bullets.get("Preferences", []),
        projects=projects,
        dates=dates,
        beliefs=bullets.get("Beliefs & Values", []),
        decisions=decisions,
        background=background,
        samples=len(samples),
        topics=topics,
        sample_tools=tools,
    )


def _user_text(sample: str) -> str:
    """The user's words of a sample conversation (all of it when it has no speakers)."""
    said = [text for speaker, text in turns(sample) if speaker == "user"]
    return "\n".join(said) if said or any(turns(sample)) else sample


def _join(names: list[str]) -> str:
    if len(names) <= 2:
        return " and ".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def _user_section(p: _Profile) -> Section:
    names = [n for n, _ in p.projects if n]
    summary = [
        third_person(p.background[0])
        if p.background
        else "Who the user is, from what they have said about themselves."
    ]
    if names:
        summary.append(f"Works on {_join(names[:4])}.")
    if p.topics:
        summary.append(f"Talks most about {_join(p.topics[:5])}.")
    summary.append(
        f"Written from {p.fact_count} remembered facts and {p.samples} sample conversations "
        "by the offline rule-based writer, in the user's own words."
    )
    points = [third_person(b) for b in p.background[:4]]
    for name, description in p.projects[:5]:
        label = f"Works on {name}" if name else "Works on"
        points.append(f"{label}: {description}" if description else f"{label}.")
    points += [third_person(x) for x in p.preferences[:4]]
    points += [
        f"Important date: {d} \u2014 {e}" if d else f"Important date: {e}" for d, e in p.dates[:3]
    ]
    if not points:
        points.append("Has not said much about themselves yet: ask rather than assume.")
    return Section(title="USER", summary=" ".join(summary), points=points[:12])


def _soul_section(p: _Profile) -> Section:
    if not p.beliefs:
        return Section(
            title="SOUL",
            summary="The user has not stated their convictions yet.",
            points=[
                "No stated beliefs yet: stay neutral on contested questions.",
                "Let the user's own values surface before reflecting any back.",
            ],
        )
    points = [third_person(b) for b in p.beliefs[:8]]
    reasons = [d for d in p.decisions if any(w in d for w in (" because ", " since ", " so that "))]
    points += [f"Acts on reasons, e.g.: {third_person(d)}" for d in reasons[:2]]
    return Section(
        title="SOUL",
        summary=(
            f"What the user values, from {len(p.beliefs)} convictions they stated. These should "
            "shape judgement calls and tone; they are the user's words, not inferences."
        ),
        points=points[:12],
    )


_TONE_RULES: Final = (
    (
        re.compile(r"\b(?:concise|short|brief|terse|bullet|tl;?dr|to the point)\b", I),
        "Lead with the answer and keep it short; bullet points where they help.",
    ),
    (
        re.compile(r"\b(?:detailed|thorough|in-depth|in depth|step[- ]by[- ]step|explain)\b", I),
        "Explain thoroughly, step by step, when the topic calls for it.",
    ),
    (re.compile(r"\b(?:formal|professional)\b", I), "Use a professional, formal register."),
    (re.compile(r"\b(?:casual|informal|friendly|humou?r)\b", I), "Keep the tone casual and warm."),
    (
        re.compile(r"\b(?:honest|direct|blunt|candid|pushback|push back)\b", I),
        "Be direct and candid; disagree openly when warranted.",
    ),
)


_TONE_ADVICE: Final = frozenset(advice for _, advice in _TONE_RULES)


def _identity_section(p: _Profile) -> Section:
    said = " ".join(p.preferences + p.beliefs)
    points = [advice for pattern, advice in _TONE_RULES if pattern.search(said)]
    names = [n for n, _ in p.projects if n]
    if names:
        points.append(f"Act as a knowledgeable collaborator on {_join(names[:4])}.")
    if p.beliefs:
        points.append("Respect the user's stated values; do not lecture them back.")
    points += [
        "Use what MEMORY holds naturally instead of asking the user to repeat themselves.",
        "Be plain about uncertainty: this profile was derived by rules from the user's words.",
    ]
    style = [x for x in points if x in _TONE_ADVICE]
    summary = "The assistant presents itself as a direct, practical collaborator who remembers "
    summary += "the user's context" + (
        f" and follows their stated style: {style[0][0].lower()}{style[0][1:]}" if style else "."
    )
    return Section(title="IDENTITY", summary=summary, points=points[:12])


def _agreement(preference: str) -> str:
    """A stated preference as an instruction to the assistant."""
    if preference.startswith(INSTRUCTION_PREFIX):
        return preference.removeprefix(INSTRUCTION_PREFIX)
    described = third_person(preference)
    if _FIRST_PERSON_LEAD.match(preference):
        return f"Respect that the user {described[:1].lower()}{described[1:]}"
    return f"Keep in mind: {described}"


def _agents_section(p: _Profile) -> Section:
    points = [_agreement(x) for x in p.preferences[:6]]
    points += [f"Build on the decision: {third_person(d)}" for d in p.decisions[:4]]
    if p.dates:
        points.append("Keep the user's important dates in mind when planning or scheduling.")
    points += [
        "Check MEMORY before asking for context the user already gave.",
        "Confirm before doing anything hard to undo.",
    ]
    return Section(
        title="AGENTS",
        summary=(
            "Working agreements for any agent acting for this user, derived from their stated "
            "preferences and decisions."
        ),
        points=points[:12],
    )


def _tools_section(p: _Profile) -> Section:
    found: dict[str, str] = {}
    project_names = {normalise(n) for n, _ in p.projects if n}

    def add(tool: str, where: str) -> None:
        tool = tool.strip(" .,")
        key = tool.casefold()
        display = _TOOL_DISPLAY.get(key, tool)
        words = f" {normalise(display)} "
        if (
            len(tool) > 1
            and normalise(tool) not in project_names
            and not any(words in f" {normalise(known)} " for known in found)
        ):
            found[display] = where

    for name, description in p.projects:
        for m in _STACK.finditer(description):
            for tool in _STACK_SPLIT.split(m.group("list")):
                add(tool, f"used in {name}" if name else "used in a project")
        for tool in _TOOL.findall(description):
            add(tool, f"used in {name}" if name else "used in a project")
    for source, items in (("preferences", p.preferences), ("decisions", p.decisions)):
        for item in items:
            for tool in _TOOL.findall(item):
                add(tool, f"named in the user's {source}")
    for tool, count in sorted(p.sample_tools.items(), key=lambda kv: (-kv[1], kv[0])):
        if count >= 2 or p.samples < 4:
            add(tool, f"mentioned in {count} of {p.samples} sample conversations")
    points = [f"{tool} \u2014 {where}" for tool, where in found.items()][:12]
    if not points:
        return Section(
            title="TOOLS",
            summary="The user has not named specific tools or stacks yet.",
            points=["No tools or stacks mentioned yet: ask before assuming one."],
        )
    return Section(
        title="TOOLS",
        summary=(
            f"Tools and stacks the user has mentioned ({len(found)}); prefer them in examples "
            "and suggestions."
        ),
        points=points,
    )


def write_sections(memory: str, samples: list[str]) -> Sections:
    """The five persona sections, from MEMORY (parsed back) and the sampled conversations."""
    p = _profile(memory, samples)
    return Sections(
        soul=_soul_section(p),
        identity=_identity_section(p),
        user=_user_section(p),
        agents=_agents_section(p),
        tools=_tools_section(p),
    )
