"""What the pipeline asks of a language model, independent of the provider.

Two providers implement :class:`LLMProvider`: ``anthropic`` (Claude through the
official SDK) and ``offline`` (deterministic rules, no network). Stages depend
on this protocol only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import date
from typing import Generic, Protocol, TypeVar, runtime_checkable

from jobs.domain.facts import Facts
from jobs.domain.sections import Sections
from worker.errors import FullpassError, NeedsOperator, Transient, Unusable
from worker.settings import ModelPrice

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens of one or more calls (``input_tokens``: the uncached ones) and their cost."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    calls: int = 0
    #: US dollars at the model's list price (None: the model has no known price).
    cost_usd: float | None = 0.0

    def __add__(self, other: Usage) -> Usage:
        cost = (
            None
            if self.cost_usd is None or other.cost_usd is None
            else self.cost_usd + other.cost_usd
        )
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_read_tokens + other.cache_read_tokens,
            self.cache_creation_tokens + other.cache_creation_tokens,
            self.calls + other.calls,
            cost,
        )

    @property
    def tokens(self) -> int:
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_read_tokens
            + self.cache_creation_tokens
        )

    def priced(self, price: ModelPrice | None, *, batch: bool = False) -> Usage:
        """These tokens with their cost at ``price`` (None: unknown, unless nothing was used)."""
        if not self.tokens:
            cost: float | None = 0.0
        elif price is None:
            cost = None
        else:
            cost = price.cost(
                input_tokens=self.input_tokens,
                output_tokens=self.output_tokens,
                cache_read_tokens=self.cache_read_tokens,
                cache_creation_tokens=self.cache_creation_tokens,
                batch=batch,
            )
        return replace(self, cost_usd=cost)


@dataclass(frozen=True, slots=True)
class LLMResult(Generic[T]):
    value: T
    usage: Usage = field(default_factory=Usage)
    model: str = ""


@dataclass(frozen=True, slots=True)
class ExtractionInput:
    """One unit of extraction work: a chunk's transcript, ready for the prompt."""

    chunk_id: str
    conversation_id: str
    title: str
    transcript: str
    conversation_date: date | None


class LLMError(FullpassError):
    """A model call failed after the provider's own retries; the message is safe to record.

    ``usage`` is what the failed call still cost (attempts that returned an
    answer, e.g. unusable ones), so token accounting stays honest. What the
    pipeline does next depends on the kind (see :mod:`worker.errors`).
    """

    def __init__(
        self, message: str, *, usage: Usage | None = None, retry_after: float | None = None
    ) -> None:
        Exception.__init__(self, message)
        self.usage = usage if usage is not None else Usage()
        self.retry_after = retry_after


class ModelUnavailable(LLMError, Transient):
    """The service is failing (rate limits, overload, 5xx, timeouts): the same call may
    succeed later, so the stage is retried with what was not finished."""


class ModelRefused(LLMError, NeedsOperator):
    """The service refuses the account or the configuration (key, billing, permissions,
    unknown model): every call fails until an operator fixes it."""


class UnusableAnswer(LLMError, Unusable):
    """This request's answer (or the request itself) cannot be used; others are fine."""


class LLMProvider(Protocol):
    """The five things the pipeline asks of a model."""

    #: Recorded as ``chunk_facts.model``: says honestly what produced the facts.
    model: str

    async def extract_facts(self, item: ExtractionInput) -> LLMResult[Facts]: ...

    async def consolidate(self, facts: Facts) -> LLMResult[Facts]: ...

    async def write_memory(self, facts: Facts) -> LLMResult[str]: ...

    async def write_sections(self, memory: str, samples: list[str]) -> LLMResult[Sections]: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class BatchProvider(Protocol):
    """A provider that can also run extractions as an asynchronous batch (half price)."""

    async def submit_batch(self, items: list[ExtractionInput]) -> str: ...

    async def batch_status(self, batch_id: str) -> str: ...

    def batch_results(
        self, batch_id: str
    ) -> AsyncIterator[tuple[str, LLMResult[Facts] | LLMError]]: ...
