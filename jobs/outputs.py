"""What each stage hands to the next: one typed output model per stage.

A stage's output is stored as ``import_stages.output`` (jsonb) when the stage
finishes and read back, validated, by the stages after it
(:meth:`Outputs.get`). A missing or malformed output is a bug or a damaged
row, never something to paper over with defaults: it raises
:class:`MissingOutput` (the stage is retried, then the import fails with
that message) instead of, say, publishing an empty MEMORY.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from jobs.ingest.chunker import extraction_tier
from jobs.ingest.model import Tier
from worker.errors import FullpassError


class MissingOutput(FullpassError):
    """An earlier stage's output is missing or does not have its shape."""


class StageOutput(BaseModel):
    """Base of the stage outputs: which stage writes it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    stage: ClassVar[str]
    #: Whether the output's ``cost_usd`` is the stage's cost (not booked call by call).
    books_cost: ClassVar[bool] = False

    def import_counts(self) -> dict[str, int]:
        """Figures this output gives the import row (``conversation_count``...)."""
        return {}


class Skipped(StageOutput):
    """A stage that had nothing to do for this import, and why (shown in import_progress)."""

    stage: ClassVar[str] = ""
    skipped: str


class FannedOut(StageOutput):
    """A stage spread over lanes: kept while they run (the stage then runs again)."""

    stage: ClassVar[str] = ""
    pages: int
    lanes: int
    #: Chunks already done when it fanned out, and in all.
    done: int
    total: int


class DownloadOutput(StageOutput):
    """Where the export landed on the machine that downloaded it (and how to check it)."""

    stage: ClassVar[str] = "download"
    path: str
    size: int
    sha256: str
    source: str
    host: str


class ChunkOutput(StageOutput):
    stage: ClassVar[str] = "chunk"
    conversations: int
    chunks: int
    tiers: list[str]
    #: What reading the export counted (formats, skipped parts, problems).
    stats: dict[str, Any] = Field(default_factory=dict)

    def import_counts(self) -> dict[str, int]:
        return {"conversation_count": self.conversations, "chunk_count": self.chunks}

    @property
    def extraction_tier(self) -> str:
        """The tier the map step reads (see :func:`jobs.ingest.chunker.extraction_tier`)."""
        return extraction_tier(cast(list[Tier], self.tiers))


class Parked(StageOutput):
    """A stage waiting on work done elsewhere: what it keeps until it runs again."""

    stage: ClassVar[str] = ""
    saved: dict[str, Any]


class BatchState(BaseModel):
    """A map step waiting on Message Batches: kept in the running stage's output."""

    model_config = ConfigDict(extra="ignore")

    ids: list[str]
    submitted: int
    #: custom_id of each request -> the [chunk id, content hash] pairs it carries.
    groups: dict[str, list[list[str]]]
    polls: int = 0


class ExtractOutput(StageOutput):
    stage: ClassVar[str] = "extract"
    tier: str
    chunks: int
    calls: int
    extracted_now: int
    skipped_no_user_text: int
    failed_chunks: int
    #: Chunks whose facts an earlier import of the user's had (no call made).
    reused: int = 0
    facts: int
    input_tokens: int
    output_tokens: int
    model: str
    batch: dict[str, Any] | None = None


class ReduceOutput(StageOutput):
    stage: ClassVar[str] = "reduce"
    #: The reduced facts by category, each with its provenance (see jobs.reduce.Fact).
    facts: dict[str, list[dict[str, Any]]]
    fact_count: int
    merged_from_chunks: int
    after_dedup: int
    consolidation_rounds: int
    tokens: int

    def import_counts(self) -> dict[str, int]:
        return {"fact_count": self.fact_count}


class EmbedOutput(StageOutput):
    stage: ClassVar[str] = "embed"
    books_cost: ClassVar[bool] = True
    provider: str
    model: str
    dimension: int
    chunks: int
    #: Chunks embedded by this pass (the others had an embedding of the model).
    embedded_now: int
    calls: int
    tokens: int
    #: At the model's list price (None: no price known).
    cost_usd: float | None = None


class MemoryOutput(StageOutput):
    stage: ClassVar[str] = "memory"
    memory_md: str
    fallback: bool
    model: str | None
    error: str | None = None


class RegenerateOutput(StageOutput):
    stage: ClassVar[str] = "regenerate"
    sections: dict[str, Any]
    markdown: dict[str, str]
    soulprint_text: str
    sampled_conversations: int
    sample_chars: int
    model: str


class FinalizeOutput(StageOutput):
    stage: ClassVar[str] = "finalize"
    published: bool
    memory_chars: int


OutputT = TypeVar("OutputT", bound=StageOutput)


class Outputs:
    """The outputs of the finished stages of one import, read as their models."""

    def __init__(self, raw: Mapping[str, Mapping[str, Any]]) -> None:
        self._raw = raw

    def get(self, kind: type[OutputT]) -> OutputT:
        raw = self._raw.get(kind.stage)
        if raw is None:
            raise MissingOutput(f"the {kind.stage} stage has no output: it has not finished")
        try:
            return kind.model_validate(raw)
        except ValidationError as exc:
            fields = ", ".join(str(e["loc"][0]) for e in exc.errors() if e["loc"])
            raise MissingOutput(
                f"the {kind.stage} stage's output is malformed ({fields or 'not an object'})"
            ) from None

    def skipped(self, stage: str) -> str | None:
        """Why ``stage`` was skipped (None: it was not)."""
        reason = (self._raw.get(stage) or {}).get("skipped")
        return str(reason) if reason is not None else None
