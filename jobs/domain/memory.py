"""MEMORY: the curated markdown document of a user's facts.

MEMORY always has exactly the five ``##`` sections of :data:`MEMORY_SECTIONS`,
in order, whatever a model wrote: :func:`normalise_memory` reshapes an
answer (headings recognised by meaning, sections it left out filled from the
facts), and :func:`fallback_memory` renders one from the facts alone, so the
pass ends with a usable document even when the model keeps failing.
"""

from __future__ import annotations

import re

from jobs.domain.facts import CATEGORIES, MEMORY_SECTIONS, Facts, bullet_of

NO_DATA = "No data yet."

#: Rough size cap of the fallback MEMORY (1,000-5,000 tokens, ~4 chars each).
FALLBACK_MAX_CHARS = 20_000

_HEADING = re.compile(r"^#{1,2}[ \t]+(.+?)[ \t]*#*[ \t]*$")
_WHOLE_FENCE = re.compile(r"^\s*```[A-Za-z]*\s*\n(.*)\n\s*```\s*$", re.S)


def _canonical(heading: str) -> str | None:
    """The MEMORY section a model's heading means, if any."""
    key = re.sub(r"[^a-z]+", " ", heading.casefold().replace("&", " and ")).strip()
    for name in MEMORY_SECTIONS:
        if key == re.sub(r"[^a-z]+", " ", name.casefold().replace("&", " and ")).strip():
            return name
    for category in CATEGORIES:
        if any(cue in key for cue in category.cues):
            return category.heading
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
    share = max_chars // len(MEMORY_SECTIONS)
    out = {}
    for category in CATEGORIES:
        items = [line for line in map(bullet_of, getattr(facts, category.key)) if line]
        bullets: list[str] = []
        used = 0
        for index, line in enumerate(items):
            bullet = f"- {line}"
            if used + len(bullet) > share and bullets:
                bullets.append(f"- …and {len(items) - index} more.")
                break
            bullets.append(bullet)
            used += len(bullet) + 1
        out[category.heading] = "\n".join(bullets)
    return out
