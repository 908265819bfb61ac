"""Turn a model's answer into validated pydantic models, leniently.

A forced tool call is the normal case, but models (and proxies) still produce
free text, fenced JSON, JSON buried in prose, stringified nested arrays or a
stray wrong-typed item. A single bad item should cost that item, not the whole
chunk, so validation here drops what it cannot use and only rejects an answer
(:class:`BadAnswer`) when nothing usable is left. The MEMORY helpers make the
document's shape a guarantee rather than a hope: exactly the five ``##``
sections, in order, whatever the model wrote.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from worker.llm.base import (
    MEMORY_SECTIONS,
    NO_DATA,
    SECTION_NAMES,
    DateFact,
    Decision,
    Facts,
    Project,
    Section,
    Sections,
)

FACT_CATEGORIES = ("preferences", "projects", "dates", "beliefs", "decisions")

#: Rough size cap of the fallback MEMORY (design: 1,000-5,000 tokens, ~4 chars each).
FALLBACK_MAX_CHARS = 20_000


class BadAnswer(ValueError):
    """The answer holds nothing usable; ``str(exc)`` is a short, safe reason."""


# --------------------------------------------------------------------------- blocks


def _get(block: object, name: str) -> Any:
    """Read a field of a content block, whether an SDK model or a plain dict."""
    if isinstance(block, Mapping):
        return block.get(name)
    return getattr(block, name, None)


def answer_text(content: Iterable[object]) -> str:
    """The concatenated text blocks of an answer."""
    return "\n".join(
        str(_get(b, "text") or "") for b in content if _get(b, "type") == "text"
    ).strip()


def tool_inputs(content: Iterable[object], tool: str) -> list[object]:
    """Inputs of the answer's ``tool_use`` blocks, the named tool's first."""
    named: list[object] = []
    other: list[object] = []
    for block in content:
        if _get(block, "type") != "tool_use":
            continue
        (named if _get(block, "name") == tool else other).append(_get(block, "input"))
    return named + other


# --------------------------------------------------------------------------- JSON in text

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_-]*)[ \t]*\n(.*?)(?:\n[ \t]*```|\Z)", re.S)


def json_objects(text: str) -> list[dict[str, Any]]:
    """Every JSON object a text plausibly contains, best candidates first.

    Order: fenced blocks, then the whole text, then the outermost objects found
    by scanning for ``{`` and decoding from there (skipping what an object
    already covered, so nested objects are not returned separately).
    """
    found: list[dict[str, Any]] = []

    def add(obj: object) -> None:
        if isinstance(obj, dict) and obj not in found:
            found.append(obj)

    for match in _FENCE.finditer(text):
        add(_loads(match.group(2)))
    add(_loads(text))
    decoder = json.JSONDecoder()
    pos = text.find("{")
    while pos != -1:
        try:
            obj, end = decoder.raw_decode(text, pos)
        except ValueError:
            pos = text.find("{", pos + 1)
            continue
        add(obj)
        pos = text.find("{", end)
    return found


def _loads(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _payloads(content: Iterable[object] | str, tool: str) -> list[object]:
    """Candidate payloads: tool inputs first, then JSON found in the text."""
    if isinstance(content, str):
        return list(json_objects(content))
    blocks = list(content)
    return [*tool_inputs(blocks, tool), *json_objects(answer_text(blocks))]


def _first_valid(
    content: Iterable[object] | str, tool: str, build: Callable[[object], Any], what: str
) -> Any:
    candidates = _payloads(content, tool)
    if not candidates:
        raise BadAnswer(f"no {tool} call and no JSON object in the answer")
    reasons = []
    for candidate in candidates:
        try:
            return build(candidate)
        except BadAnswer as exc:
            reasons.append(str(exc))
    raise BadAnswer(f"{what}: {reasons[0]}")


# --------------------------------------------------------------------------- facts


def _clean_str(value: object) -> str | None:
    if isinstance(value, str):
        text = " ".join(value.split())
        return text or None
    return None


def _as_list(value: object) -> list[object] | None:
    """A category's items, or ``None`` when the category is not a list at all.

    Models sometimes send a nested array as a JSON string; accept that.
    """
    if value is None:
        return []
    if isinstance(value, str):
        value = _loads(value)
    return list(value) if isinstance(value, list) else None


def _fields(item: object, names: Sequence[str]) -> dict[str, str] | None:
    if isinstance(item, str):
        text = _clean_str(item)
        return {names[0]: text} if text else None
    if not isinstance(item, Mapping):
        return None
    out = {name: _clean_str(item.get(name)) or "" for name in names}
    return out if any(out.values()) else None


def facts_from_obj(obj: object) -> Facts:
    """Validate one decoded payload as :class:`Facts`, dropping unusable items.

    Rejects the payload only when it is not an object, has none of the five
    categories, or when every category present has the wrong type.
    """
    if not isinstance(obj, Mapping):
        raise BadAnswer(f"facts are a {type(obj).__name__}, not an object")
    if not any(k in obj for k in FACT_CATEGORIES):
        for wrapper in ("facts", "input", "result"):
            if isinstance(obj.get(wrapper), Mapping):
                return facts_from_obj(obj[wrapper])
        if obj:
            raise BadAnswer("none of the fact categories in the answer")
        return Facts()
    lists = {k: _as_list(obj.get(k)) for k in FACT_CATEGORIES if k in obj}
    bad = sorted(k for k, v in lists.items() if v is None)
    if len(bad) == len(lists):
        raise BadAnswer(f"wrong types for {', '.join(bad)}")
    items = {k: v or [] for k, v in lists.items()}

    def strings(key: str) -> list[str]:
        return _dedupe(s for s in (_clean_str(i) for i in items.get(key, [])) if s)

    projects = [
        Project(**f)
        for f in (_fields(i, ("description", "name", "details")) for i in items.get("projects", []))
        if f
    ]
    dates = [
        DateFact(**f)
        for f in (
            _fields(i, ("event", "date")) if isinstance(i, Mapping) else None
            for i in items.get("dates", [])
        )
        if f and f["event"]
    ]
    decisions = [
        Decision(**f)
        for f in (_fields(i, ("decision", "context")) for i in items.get("decisions", []))
        if f and f["decision"]
    ]
    return Facts(
        preferences=strings("preferences"),
        projects=projects,
        dates=dates,
        beliefs=strings("beliefs"),
        decisions=decisions,
    )


def _dedupe(values: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for value in values:
        key = value.casefold()
        if key not in seen:
            seen.add(key)
            out.append(value)
    return out


def parse_facts(content: Iterable[object] | str, tool: str = "record_facts") -> Facts:
    """Facts from an answer's content blocks (or a raw text answer)."""
    result: Facts = _first_valid(content, tool, facts_from_obj, "invalid facts")
    return result


# --------------------------------------------------------------------------- sections


def _section_from(value: object) -> Section | None:
    if isinstance(value, str):
        text = _clean_str(value)
        return Section(summary=text) if text else None
    if not isinstance(value, Mapping):
        return None
    points = value.get("points")
    if isinstance(points, str):
        points = _loads(points) if points.lstrip().startswith("[") else [points]
    return Section(
        title=_clean_str(value.get("title")) or "",
        summary=_clean_str(value.get("summary")) or "",
        points=[p for p in (_clean_str(x) for x in (points or [])) if p]
        if isinstance(points, list)
        else [],
    )


def sections_from_obj(obj: object) -> Sections:
    """Validate one payload as :class:`Sections`; all five must be present."""
    if not isinstance(obj, Mapping):
        raise BadAnswer(f"sections are a {type(obj).__name__}, not an object")
    if not any(k in obj for k in SECTION_NAMES):
        for wrapper in ("sections", "input", "result"):
            if isinstance(obj.get(wrapper), Mapping):
                return sections_from_obj(obj[wrapper])
    parsed = {name: _section_from(obj.get(name)) for name in SECTION_NAMES}
    missing = [name for name, section in parsed.items() if section is None]
    if missing:
        raise BadAnswer(f"missing or invalid sections: {', '.join(missing)}")
    return Sections(**{name: s for name, s in parsed.items() if s is not None})


def parse_sections(content: Iterable[object] | str, tool: str = "write_sections") -> Sections:
    result: Sections = _first_valid(content, tool, sections_from_obj, "invalid sections")
    return result


# --------------------------------------------------------------------------- MEMORY

_HEADING = re.compile(r"^#{1,2}[ \t]+(.+?)[ \t]*#*[ \t]*$")
_WHOLE_FENCE = re.compile(r"^\s*```[A-Za-z]*\s*\n(.*)\n\s*```\s*$", re.S)

_KEYWORDS: dict[str, tuple[str, ...]] = {
    "Preferences": ("preference", "prefer", "likes", "habit", "style"),
    "Projects": ("project", "work", "building"),
    "Important Dates": ("date", "timeline", "event", "calendar", "birthday"),
    "Beliefs & Values": ("belief", "value", "principle", "conviction"),
    "Decisions & Context": ("decision", "context", "choice"),
}


def _canonical(heading: str) -> str | None:
    """The MEMORY section a model's heading means, if any."""
    key = re.sub(r"[^a-z]+", " ", heading.casefold().replace("&", " and ")).strip()
    for name in MEMORY_SECTIONS:
        if key == re.sub(r"[^a-z]+", " ", name.casefold().replace("&", " and ")).strip():
            return name
    for name, words in _KEYWORDS.items():
        if any(word in key for word in words):
            return name
    return None


def memory_sections(markdown: str) -> tuple[dict[str, list[str]], list[str]]:
    """Split MEMORY markdown into canonical sections' body lines.

    Returns the bodies keyed by canonical name (only the sections found) and
    the preamble before the first ``##`` heading. A ``##`` heading that maps
    to no section keeps its content, demoted to a ``###`` subsection of the
    section before it, so reshaping never loses text.
    """
    fenced = _WHOLE_FENCE.match(markdown)
    if fenced:
        markdown = fenced.group(1)
    bodies: dict[str, list[str]] = {}
    preamble: list[str] = []
    current: list[str] = preamble
    in_code = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
        match = None if in_code else _HEADING.match(line)
        if match:
            name = _canonical(match.group(1))
            if name is not None:
                current = bodies.setdefault(name, [])
                continue
            if current is not preamble:
                current.append(f"### {match.group(1)}")
                continue
        current.append(line.rstrip())
    return bodies, preamble


def _body(lines: list[str]) -> str:
    text = "\n".join(lines).strip()
    return text if text and text != NO_DATA else ""


def normalise_memory(markdown: str, facts: Facts) -> str:
    """Rebuild MEMORY with exactly the five sections, in order.

    Sections the model left out or left empty are filled from ``facts`` (so a
    fact never silently disappears from MEMORY), or say "No data yet." when
    there is nothing for them. The preamble (a title or chatter) is dropped:
    the document is the five sections and nothing else.
    """
    bodies, _ = memory_sections(markdown)
    rendered = _render_fact_sections(facts, FALLBACK_MAX_CHARS)
    parts = []
    for name in MEMORY_SECTIONS:
        body = _body(bodies.get(name, [])) or rendered[name] or NO_DATA
        parts.append(f"## {name}\n\n{body}\n")
    return "\n".join(parts)


def fallback_memory(facts: Facts) -> str:
    """A minimal, deterministic MEMORY rendered from facts without a model.

    Used when the MEMORY call keeps failing, so the pass still ends with a
    usable document. Each section is capped to a fair share of
    :data:`FALLBACK_MAX_CHARS` so that a huge fact set still yields a document
    of the intended size.
    """
    rendered = _render_fact_sections(facts, FALLBACK_MAX_CHARS)
    return "\n".join(f"## {name}\n\n{rendered[name] or NO_DATA}\n" for name in MEMORY_SECTIONS)


def _render_fact_sections(facts: Facts, max_chars: int) -> dict[str, str]:
    def sentence(text: str) -> str:
        text = text.strip()
        return text if not text or text[-1] in ".!?" else text + "."

    def project(p: Project) -> str:
        head = f"**{p.name}**" if p.name else ""
        rest = " ".join(sentence(t) for t in (p.description, p.details) if t)
        return f"{head}: {rest}" if head and rest else head or rest

    def date(d: DateFact) -> str:
        return f"{d.date}: {sentence(d.event)}" if d.date else sentence(d.event)

    def decision(d: Decision) -> str:
        return sentence(d.decision) + (f" Context: {sentence(d.context)}" if d.context else "")

    lines = {
        "Preferences": [sentence(p) for p in facts.preferences],
        "Projects": [project(p) for p in facts.projects],
        "Important Dates": [date(d) for d in facts.dates],
        "Beliefs & Values": [sentence(b) for b in facts.beliefs],
        "Decisions & Context": [decision(d) for d in facts.decisions],
    }
    share = max_chars // len(MEMORY_SECTIONS)
    out = {}
    for name in MEMORY_SECTIONS:
        bullets: list[str] = []
        used = 0
        items = [line for line in lines[name] if line]
        for index, line in enumerate(items):
            bullet = f"- {line}"
            if used + len(bullet) > share and bullets:
                bullets.append(f"- …and {len(items) - index} more.")
                break
            bullets.append(bullet)
            used += len(bullet) + 1
        out[name] = "\n".join(bullets)
    return out
