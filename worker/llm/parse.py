"""Turn a model's answer into validated pydantic models, leniently.

A forced tool call is the normal case, but models (and proxies) still produce
free text, fenced JSON, JSON buried in prose, stringified nested arrays or a
stray wrong-typed item. A single bad item should cost that item, not the whole
chunk, so validation here drops what it cannot use and only rejects an answer
(:class:`BadAnswer`) when nothing usable is left.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

from jobs.domain.facts import (
    CATEGORIES,
    SOURCES,
    Category,
    DateFact,
    Decision,
    Facts,
    Item,
    Project,
    Sentence,
    StructuredFact,
)
from jobs.domain.sections import SECTION_NAMES, Section, Sections


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


def _fields(item: object, model: type[StructuredFact]) -> dict[str, str] | None:
    """An item's string fields; a bare string fills the field it stands for."""
    if isinstance(item, str):
        text = _clean_str(item)
        return {model.from_string: text} if text and model.from_string else None
    if not isinstance(item, Mapping):
        return None
    out = {name: _clean_str(item.get(name)) or "" for name in model.model_fields if name != SOURCES}
    if model.required is not None and not out[model.required]:
        return None
    return out if any(out.values()) else None


#: At most this many ids are read from an item's ``sources``, each this long at most.
_MAX_SOURCES = 8
_MAX_SOURCE_CHARS = 16


def _sources(item: object) -> list[str]:
    """The excerpt ids an item cites (a lone string is one id); anything else is none."""
    value = item.get(SOURCES) if isinstance(item, Mapping) else None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return []
    ids = (_clean_str(v) for v in value[:_MAX_SOURCES])
    return [i for i in ids if i and len(i) <= _MAX_SOURCE_CHARS]


def _sentence(item: object) -> str | None:
    """A sentence fact: a string, or ``{"text", "sources"}`` (kept with its ids)."""
    if isinstance(item, Mapping):
        text = _clean_str(item.get("text"))
        return Sentence(text, _sources(item)) if text else None
    return _clean_str(item)


def _category_items(category: Category, raw: list[object]) -> list[Item]:
    if not category.structured:
        return list(_dedupe(s for s in (_sentence(i) for i in raw) if s))
    model = cast(type[Project | DateFact | Decision], category.item)
    return [model(**f, sources=_sources(i)) for i in raw if (f := _fields(i, model))]


def facts_from_obj(obj: object) -> Facts:
    """Validate one decoded payload as :class:`Facts`, dropping unusable items.

    Rejects the payload only when it is not an object, has none of the five
    categories, or when every category present has the wrong type.
    """
    if not isinstance(obj, Mapping):
        raise BadAnswer(f"facts are a {type(obj).__name__}, not an object")
    if not any(c.key in obj for c in CATEGORIES):
        for wrapper in ("facts", "input", "result"):
            if isinstance(obj.get(wrapper), Mapping):
                return facts_from_obj(obj[wrapper])
        if obj:
            raise BadAnswer("none of the fact categories in the answer")
        return Facts()
    lists = {c.key: _as_list(obj.get(c.key)) for c in CATEGORIES if c.key in obj}
    bad = sorted(k for k, v in lists.items() if v is None)
    if len(bad) == len(lists):
        raise BadAnswer(f"wrong types for {', '.join(bad)}")
    return Facts.of(
        (category, item)
        for category in CATEGORIES
        for item in _category_items(category, lists.get(category.key) or [])
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
