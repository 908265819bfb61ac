"""The part of every provider that is not about its service.

:class:`BatchingEmbedder` applies the rules of :mod:`worker.embeddings.base`
(bounding, blank texts, splitting into requests, checking the answer) and
bounds how many requests are in flight at once; a provider only says how to
embed one request's worth of non-blank, bounded texts.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Iterable, Sequence
from functools import partial
from typing import TypeVar

from worker.embeddings.base import (
    Embedded,
    EmbedUsage,
    InputKind,
    bound,
    check_vectors,
    is_blank,
    split_batches,
    usage_total,
    zero_vector,
)

T = TypeVar("T")

#: Answers with more numbers than this are checked in a thread: checking
#: 256 vectors of 1536 floats holds the interpreter for tens of milliseconds,
#: which the event loop (heartbeats, other requests) should not wait out.
CHECK_IN_THREAD_ABOVE = 100_000

#: One request's result: its vectors (as answered, not yet checked) and what it cost.
GroupResult = tuple[object, EmbedUsage]


class BatchingEmbedder(ABC):
    """Base of the providers: implements :class:`~worker.embeddings.base.Embedder`.

    ``concurrency`` bounds the requests (or model runs) in flight at once
    across every caller of this instance. ``max_request_chars``, when set,
    also bounds the characters of one request.
    """

    name: str = ""

    def __init__(
        self,
        *,
        model: str,
        dimension: int,
        max_batch: int,
        max_input_chars: int,
        concurrency: int,
        max_request_chars: int | None = None,
    ) -> None:
        if dimension < 1 or max_batch < 1 or max_input_chars < 1 or concurrency < 1:
            raise ValueError("dimension, max_batch, max_input_chars and concurrency must be >= 1")
        self.model = model
        self.dimension = dimension
        self.max_batch = max_batch
        self.max_input_chars = max_input_chars
        self.concurrency = concurrency
        self._max_request_chars = max_request_chars
        self._slots = asyncio.Semaphore(concurrency)

    @property
    def label(self) -> str:
        """How messages name this provider: kind and model."""
        return f"{self.name} embeddings ({self.model})"

    # ------------------------------------------------------------------ protocol

    async def embed_documents(self, texts: Sequence[str]) -> Embedded:
        return await self._embed(texts, "document")

    async def embed_query(self, text: str) -> list[float]:
        return (await self._embed([text], "query")).vectors[0]

    @abstractmethod
    async def aclose(self) -> None:
        """Release connections and threads."""

    # ------------------------------------------------------------------ for providers

    @abstractmethod
    async def _embed_group(self, texts: list[str], kind: InputKind) -> GroupResult:
        """Embed one request's worth (<= ``max_batch`` non-blank, bounded texts)."""

    # ------------------------------------------------------------------ internals

    async def _embed(self, texts: Sequence[str], kind: InputKind) -> Embedded:
        if isinstance(texts, str):  # a str is a Sequence[str]: one vector per character
            raise TypeError("embed_documents takes a sequence of texts, not a string")
        bounded = [bound(text, self.max_input_chars) for text in texts]
        live = [position for position, text in enumerate(bounded) if not is_blank(text)]
        vectors = [zero_vector(self.dimension) for _ in bounded]
        live_texts = [bounded[position] for position in live]
        groups = split_batches(live_texts, self.max_batch, self._max_request_chars)
        results = await gather_all(
            self._checked_group([live_texts[i] for i in group], kind) for group in groups
        )
        for group, (group_vectors, _) in zip(groups, results, strict=True):
            for index, vector in zip(group, group_vectors, strict=True):
                vectors[live[index]] = vector
        return Embedded(vectors, usage_total([usage for _, usage in results]), self.model)

    async def _checked_group(
        self, texts: list[str], kind: InputKind
    ) -> tuple[list[list[float]], EmbedUsage]:
        raw, usage = await self._embed_group(texts, kind)
        check = partial(
            check_vectors, raw, expected=len(texts), dimension=self.dimension, source=self.label
        )
        if len(texts) * self.dimension > CHECK_IN_THREAD_ABOVE:
            return await asyncio.to_thread(check), usage
        return check(), usage


async def gather_all(calls: Iterable[Awaitable[T]]) -> list[T]:
    """Await all ``calls`` concurrently; on the first failure cancel the rest and raise it.

    Unlike a bare :func:`asyncio.gather`, nothing is left running in the
    background after a failure, and unlike a task group the caller gets the
    error itself rather than an exception group.
    """
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
