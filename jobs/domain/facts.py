"""Facts about the user: the five categories and every form a fact takes.

The :class:`Facts` model is the single source of the categories. Each field
names one category, its item type, the description the model is given and
the heading it has in MEMORY (:class:`Category` metadata); everything else is
derived: :data:`CATEGORIES`, the ``record_facts`` tool schema
(:func:`tool_schema`), the MEMORY section list, fact counts. A category's
items are plain sentences (``str``) or small models whose methods give their
text, the thing they are about, their MEMORY bullet and the form they take
with a note on what they replaced — so per-category knowledge lives with the
item, not in every stage.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Final, TypeAlias, cast

from pydantic import BaseModel, ConfigDict, Field

from jobs.domain.schema import strict_schema

_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)
_OVER = re.compile(r"\bprefer(?:s|red)?\s+(.+?)\s+(?:over|to)\s+(.+?)[.!]?$", re.IGNORECASE)


def normalise(text: str) -> str:
    """Casefolded, punctuation-free, single-spaced: the key for duplicates."""
    return " ".join(_PUNCT.sub(" ", text.casefold()).split())


def sentence(text: str) -> str:
    """``text`` ending with a full stop (unless it already ends a sentence)."""
    text = text.strip()
    return text if not text or text[-1] in ".!?" else text + "."


#: The field of an answer's item that says where the fact was said: the ids of
#: the excerpts of a packed call (``c1``, ``c2``, in their headers) that state it.
SOURCES: Final = "sources"
_SOURCES_DESCRIPTION: Final = (
    'The id ("c2") of each conversation of the transcript that states the fact, '
    "when it holds several; else empty."
)


class Sentence(str):
    """A sentence fact (a preference, a belief) as an answer gave it, with the ids it cited.

    It is the plain string everywhere else (stored, compared, shown): the ids
    matter only between reading an answer and attributing its facts to the
    chunks of a packed call (:func:`sources_of`, :func:`uncited`).
    """

    sources: tuple[str, ...]

    def __new__(cls, text: str, sources: Iterable[str] = ()) -> Sentence:
        out = super().__new__(cls, text)
        out.sources = tuple(sources)
        return out


class StructuredFact(BaseModel):
    """A structured fact; lenient, since models send stray keys and whitespace."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    #: The field a bare string stands for, when a model sends one instead of an
    #: object (``None``: a bare string is not enough, e.g. for a date).
    from_string: ClassVar[str | None]
    #: A field the item is meaningless without (``None``: any field will do).
    required: ClassVar[str | None] = None

    #: The excerpts of a packed call the answer says state the fact (never stored).
    sources: list[str] = Field(
        default_factory=list, exclude=True, repr=False, description=_SOURCES_DESCRIPTION
    )

    def fields(self) -> dict[str, str]:
        return {
            name: str(getattr(self, name)) for name in type(self).model_fields if name != SOURCES
        }

    def text(self) -> str:
        return " — ".join(v for v in self.fields().values() if v)


class Project(StructuredFact):
    name: str = Field(
        default="", description="Short name of the project, product, job or ongoing effort."
    )
    description: str = Field(default="", description="One sentence: what it is.")
    details: str = Field(
        default="", description="Stack, status, people, dates or other specifics; may be empty."
    )

    from_string: ClassVar[str | None] = "description"

    def subject(self) -> str:
        return normalise(self.name) or normalise(self.text())

    def bullet(self) -> str:
        head = f"**{self.name}**" if self.name else ""
        rest = " ".join(sentence(t) for t in (self.description, self.details) if t)
        return f"{head}: {rest}" if head and rest else head or rest

    def with_note(self, note: str, when: str) -> Project:
        return self.model_copy(update={"details": (self.details + note).strip()})


class DateFact(StructuredFact):
    event: str = Field(
        default="", description="What happens or happened, from the user's point of view."
    )
    date: str = Field(
        default="", description="The date as precisely as known (ISO 2024-05-17 when exact)."
    )

    from_string: ClassVar[str | None] = None
    required: ClassVar[str | None] = "event"

    def subject(self) -> str:
        return normalise(self.event) or normalise(self.text())

    def bullet(self) -> str:
        return f"{self.date}: {sentence(self.event)}" if self.date else sentence(self.event)

    def with_note(self, note: str, when: str) -> DateFact:
        return self.model_copy(update={"event": self.event + note})


class Decision(StructuredFact):
    decision: str = Field(default="", description="What the user decided, in one sentence.")
    context: str = Field(default="", description="Why, and when if known; may be empty.")

    from_string: ClassVar[str | None] = "decision"
    required: ClassVar[str | None] = "decision"

    def subject(self) -> str:
        return normalise(self.decision)

    def bullet(self) -> str:
        return sentence(self.decision) + (
            f" Context: {sentence(self.context)}" if self.context else ""
        )

    def with_note(self, note: str, when: str) -> Decision:
        return self.model_copy(
            update={"decision": self.decision + when, "context": (self.context + note).strip()}
        )


#: One fact: a sentence (preferences, beliefs) or a structured item.
Item: TypeAlias = str | Project | DateFact | Decision


@dataclass(frozen=True, slots=True)
class Shown:
    """How a category appears to people: its MEMORY heading, and words that
    mean it in a heading a model wrote differently ("My Projects", "Timeline")."""

    heading: str
    cues: tuple[str, ...] = ()


class Facts(BaseModel):
    """The fact JSON: the extraction output and the reduce format."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    preferences: Annotated[
        list[str], Shown("Preferences", ("preference", "prefer", "likes", "habit", "style"))
    ] = Field(
        default_factory=list,
        description="Lasting likes, dislikes, habits and ways the user wants things done. "
        "One sentence each.",
    )
    projects: Annotated[list[Project], Shown("Projects", ("project", "work", "building"))] = Field(
        default_factory=list, description="Things the user is building, running or working on."
    )
    dates: Annotated[
        list[DateFact],
        Shown("Important Dates", ("date", "timeline", "event", "calendar", "birthday")),
    ] = Field(
        default_factory=list,
        description="Dates that matter to the user: birthdays, anniversaries, deadlines, "
        "launches, moves.",
    )
    beliefs: Annotated[
        list[str], Shown("Beliefs & Values", ("belief", "value", "principle", "conviction"))
    ] = Field(
        default_factory=list,
        description="Values, principles and convictions the user holds. One sentence each.",
    )
    decisions: Annotated[
        list[Decision], Shown("Decisions & Context", ("decision", "context", "choice"))
    ] = Field(
        default_factory=list,
        description="Choices the user made that shape future work or life.",
    )

    def count(self) -> int:
        return sum(len(getattr(self, c.key)) for c in CATEGORIES)

    def items(self) -> Iterator[tuple[Category, Item]]:
        """Every fact with its category, in category order."""
        for category in CATEGORIES:
            for item in getattr(self, category.key):
                yield category, item

    @classmethod
    def of(cls, items: Iterable[tuple[Category, Item]]) -> Facts:
        """Facts from (category, item) pairs (items are trusted, not re-validated)."""
        lists: dict[str, list[Any]] = {c.key: [] for c in CATEGORIES}
        for category, item in items:
            lists[category.key].append(item)
        return cls.model_construct(None, **lists)


@dataclass(frozen=True, slots=True)
class Category:
    """One of the five categories, as declared on :class:`Facts`."""

    key: str
    heading: str
    #: Words that mark a differently written heading as this category's.
    cues: tuple[str, ...]
    #: ``str`` for sentence categories, else the item model.
    item: type[str] | type[StructuredFact]

    @property
    def structured(self) -> bool:
        return self.item is not str

    def from_fields(self, fields: Mapping[str, str]) -> Item:
        """An item back from :func:`fields_of` (a sentence is ``{"text": ...}``)."""
        if self.item is str:
            return str(fields.get("text", ""))
        model = cast(type[Project | DateFact | Decision], self.item)
        known: dict[str, Any] = {
            k: v for k, v in fields.items() if k in model.model_fields and k != SOURCES
        }
        return model(**known)


def _categories() -> tuple[Category, ...]:
    out = []
    for key, info in Facts.model_fields.items():
        shown = next(m for m in info.metadata if isinstance(m, Shown))
        args = getattr(info.annotation, "__args__", (str,))
        out.append(Category(key, shown.heading, shown.cues, args[0]))
    return tuple(out)


CATEGORIES: tuple[Category, ...] = _categories()
BY_KEY: dict[str, Category] = {c.key: c for c in CATEGORIES}
#: MEMORY's five ``##`` sections, in order.
MEMORY_SECTIONS: tuple[str, ...] = tuple(c.heading for c in CATEGORIES)


# --------------------------------------------------------------------------- item forms


def text_of(item: Item) -> str:
    """A fact's words, whatever its category (to compare facts with text)."""
    return item if isinstance(item, str) else item.text()


def fields_of(item: Item) -> dict[str, str]:
    """A fact as flat string fields (a sentence is ``{"text": ...}``)."""
    return {"text": item} if isinstance(item, str) else item.fields()


def subject_of(item: Item) -> str:
    """What a fact is about: two facts with the same subject repeat or contradict."""
    if not isinstance(item, str):
        return item.subject()
    m = _OVER.search(item)
    if m:  # "prefer A over B" and "prefer B over A" are about the same choice
        return "prefer:" + "|".join(sorted([normalise(m.group(1)), normalise(m.group(2))]))
    return normalise(item)


def bullet_of(item: Item) -> str:
    """A fact as one MEMORY bullet (without the leading dash)."""
    return sentence(item) if isinstance(item, str) else item.bullet()


def with_note(item: Item, note: str, when: str) -> Item:
    """A fact carrying what it replaced (``note``) and, for decisions, its date (``when``)."""
    return item + note if isinstance(item, str) else item.with_note(note, when)


def sources_of(item: Item) -> tuple[str, ...]:
    """The excerpt ids an answer cited for a fact (none for a fact from anywhere else)."""
    if isinstance(item, StructuredFact):
        return tuple(item.sources)
    return item.sources if isinstance(item, Sentence) else ()


def uncited(item: Item) -> Item:
    """The fact without the ids it cited: what is stored and compared."""
    if isinstance(item, StructuredFact):
        return item.model_copy(update={SOURCES: []}) if item.sources else item
    return str(item) if isinstance(item, Sentence) else item


# --------------------------------------------------------------------------- tool schema


def tool_schema() -> dict[str, Any]:
    """The ``record_facts`` input schema, derived from :class:`Facts`.

    Every item may name the excerpts that state it (``sources``, optional,
    last): a structured item declares the field, and a sentence is asked for
    as ``{"text", "sources"}`` (a bare string is still read).
    """
    schema = strict_schema(Facts)
    structured = next(c for c in CATEGORIES if c.structured)
    cited = copy.deepcopy(schema["properties"][structured.key]["items"]["properties"][SOURCES])
    for category in CATEGORIES:
        prop = schema["properties"][category.key]
        if category.structured:
            item = prop["items"]
            item["properties"][SOURCES] = item["properties"].pop(SOURCES)
            item["required"].remove(SOURCES)
        else:
            prop["items"] = {
                "type": "object",
                "properties": {"text": prop["items"], SOURCES: copy.deepcopy(cited)},
                "required": ["text"],
                "additionalProperties": False,
            }
    return schema
