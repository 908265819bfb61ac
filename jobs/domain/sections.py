"""The five persona sections (soul, identity, user, agents, tools).

:class:`Sections` is the single source of the sections: their names, what
each is for (the description the model is given) and their fields; the
``write_sections`` tool schema is derived from it. The app stores each
section as a JSON object in its column (``soul_md``, ``identity_md``, ...) and
parses it in its chat route: :meth:`Section.to_json` is that object, and
:func:`soulprint_text` the markdown of all five followed by MEMORY.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from jobs.domain.schema import strict_schema


class Section(BaseModel):
    """One regenerated persona section."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    title: str = Field(default="", description="A short heading for the section.")
    summary: str = Field(default="", description="Two to four sentences.")
    points: list[str] = Field(
        default_factory=list, description="Five to twelve specific, concrete bullet points."
    )

    def to_json(self) -> str:
        """The section as the app stores it: ``{"title": ..., "summary": ..., "points": [...]}``."""
        return json.dumps(self.model_dump(), ensure_ascii=False)

    def to_markdown(self, name: str) -> str:
        """``# NAME: title``, the summary, the points: one top-level block per section."""
        heading = f"# {name.upper()}: {self.title}" if self.title else f"# {name.upper()}"
        lines = [heading, ""]
        if self.summary:
            lines += [self.summary, ""]
        lines += [f"- {p}" for p in self.points]
        return "\n".join(lines).strip() + "\n"


class Sections(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    soul: Section = Field(
        default_factory=Section,
        description="The user's values, outlook, temperament and what they care about most.",
    )
    identity: Section = Field(
        default_factory=Section,
        description="Who the user is: roles, work, expertise, life situation, projects.",
    )
    user: Section = Field(
        default_factory=Section,
        description="Practical profile: preferences, routines, important dates, constraints.",
    )
    agents: Section = Field(
        default_factory=Section,
        description="How an AI assistant should work with this user: tone, format, level of "
        "detail, what to avoid, standing decisions to respect.",
    )
    tools: Section = Field(
        default_factory=Section,
        description="Technologies, tools, platforms and workflows the user relies on.",
    )


SECTION_NAMES: tuple[str, ...] = tuple(Sections.model_fields)
#: What each section is for, as the model is told.
SECTION_PURPOSE: dict[str, str] = {
    name: info.description or "" for name, info in Sections.model_fields.items()
}


def tool_schema() -> dict[str, Any]:
    """The ``write_sections`` input schema, derived from :class:`Sections`."""
    return strict_schema(Sections)


def soulprint_text(sections: Sections, memory_md: str) -> str:
    """All five sections, then MEMORY under a heading of the same level.

    Every block is a ``#`` heading, so MEMORY's ``##`` sections read as parts
    of MEMORY, not as sub-sections of TOOLS.
    """
    parts = [getattr(sections, name).to_markdown(name).strip() for name in SECTION_NAMES]
    if memory_md.strip():
        parts.append("# MEMORY\n\n" + memory_md.strip())
    return "\n\n".join(parts) + "\n"
