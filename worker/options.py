"""The pipeline's knobs: one model with each knob's type, bounds and default.

The defaults come from the environment (``FULLPASS_<NAME>``, e.g.
``FULLPASS_CONCURRENCY``); an import may override any of them in
``imports.options`` (jsonb), which users write themselves. Both go through
this one model, so a knob's bounds live in one place:

* the database refuses a bad ``options`` at insert time with a clear error:
  ``fullpass migrate`` stores this model's JSON schema in
  ``public.fullpass_options_schema`` and the insert trigger checks every key
  against it (unknown keys, wrong types, out-of-range numbers, size);
* the worker validates the same way when it claims a stage
  (:meth:`Options.merged`), strictly: ``{"batch": "no"}`` is an error, not
  ``true``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Tier = Literal["micro", "medium", "macro"]

#: Largest ``imports.options`` accepted, as JSON text.
MAX_OPTIONS_BYTES = 4096


class Options(BaseModel):
    """Every per-import knob, with its bounds and default."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    concurrency: int = Field(
        default=10, ge=1, le=100, description="LLM calls in flight for the import"
    )
    batch: bool = Field(
        default=False, description="send the map step through the Message Batches API"
    )
    batch_poll_seconds: float = Field(
        default=60.0, ge=0.1, le=3600, description="how often a parked map step checks its batches"
    )
    pack_tokens: int = Field(
        default=10_000,
        ge=1,
        le=50_000,
        description="condensed transcript tokens packed into one call",
    )
    paste_chars: int = Field(
        default=2000,
        ge=0,
        le=200_000,
        description="a user turn longer than this has its pasted code, logs and documents cut "
        "to their first line and what is said in the first person, and a paste sent before "
        "is sent once (0: sent whole)",
    )
    reduce_max_tokens: int = Field(
        default=150_000,
        ge=100,
        le=1_000_000,
        description="above this, reduce asks the model to merge",
    )
    reduce_batch_tokens: int = Field(
        default=50_000, ge=100, le=200_000, description="facts per consolidation call"
    )
    sample_conversations: int = Field(
        default=200, ge=1, le=1000, description="conversations sampled for the persona sections"
    )
    sample_tokens: int = Field(
        default=30_000,
        ge=1000,
        le=1_000_000,
        description="tokens of conversation excerpts sent for the persona sections at most",
    )
    context_window_tokens: int = Field(
        default=200_000, ge=20_000, le=1_000_000, description="the model's context window"
    )
    min_conversations: int = Field(
        default=50,
        ge=0,
        le=1_000_000,
        description="an export with fewer conversations is stored and searchable but builds "
        "no memory (0: always build it)",
    )
    message_chars: int = Field(
        default=5000, ge=200, le=200_000, description="characters of a message kept in chunks"
    )
    fanout: int = Field(
        default=6,
        ge=1,
        le=64,
        description="workers a long map step or embedding may be spread over (1: one worker)",
    )
    page_chunks: int = Field(
        default=300,
        ge=10,
        le=100_000,
        description="chunks in one page of a spread work list (a longer list is spread)",
    )
    chunk_tiers: tuple[Tier, ...] = Field(
        default=("medium",),
        min_length=1,
        max_length=3,
        description="chunk sizes to store",
        json_schema_extra={"uniqueItems": True},
    )

    @field_validator("chunk_tiers")
    @classmethod
    def _distinct(cls, tiers: tuple[Tier, ...]) -> tuple[Tier, ...]:
        if len(set(tiers)) != len(tiers):
            raise ValueError("tiers must not repeat")
        return tiers

    def merged(self, overrides: Mapping[str, Any]) -> Options:
        """These options with an import's ``options`` on top, validated strictly.

        Raises :class:`InvalidOptions` with a message naming the bad keys.
        """
        check_size(overrides)
        try:
            return Options.model_validate({**self.model_dump(), **_as_json(overrides)})
        except ValidationError as exc:
            raise InvalidOptions(describe(exc)) from None


class EnvOptions(Options, BaseSettings):
    """The defaults, read from ``FULLPASS_<NAME>`` environment variables."""

    model_config = SettingsConfigDict(
        env_prefix="FULLPASS_", extra="ignore", strict=False, frozen=True
    )


class InvalidOptions(ValueError):
    """An ``options`` object the pipeline does not accept (the message says why)."""


def check_size(options: Mapping[str, Any]) -> None:
    if len(json.dumps(options, default=str)) > MAX_OPTIONS_BYTES:
        raise InvalidOptions(f"options are larger than {MAX_OPTIONS_BYTES} bytes")


def _as_json(options: Mapping[str, Any]) -> dict[str, Any]:
    """Lists as JSON has them become tuples where the model wants tuples."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}


def describe(exc: ValidationError) -> str:
    """One line per problem: ``options.batch: Input should be a valid boolean``."""
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in error["loc"]) or "options"
        problems.append(f"options.{where}: {error['msg']}")
    return "; ".join(problems)


def options_schema() -> dict[str, Any]:
    """The JSON schema the database checks ``imports.options`` against."""
    schema = Options.model_json_schema()
    schema["maxBytes"] = MAX_OPTIONS_BYTES
    return schema
