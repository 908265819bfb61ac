"""Retries, error kinds and secret-free messages for providers behind a network.

A provider classifies each failed attempt as a :class:`RequestFailed` of one
kind; this module decides what follows, the same way for every service:

==============  ===========================================================
kind            what happens
==============  ===========================================================
``throttled``   retried with :func:`worker.retry.backoff` (the service's
                ``retry-after`` as a floor), then :class:`Transient` with
                ``retry_after`` set
``unavailable`` 5xx, timeouts, connection errors: retried, then
                :class:`Transient`
``operator``    refused credentials, unknown model, exhausted quota:
                :class:`NeedsOperator` at once
``too_long``    the service found an input too long despite the bound:
                the request is split in two, a single text is halved, and
                tried again (so a long chunk never fails an import)
``input``       the service rejected the input: :class:`Unusable`
==============  ===========================================================
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from abc import abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Final, Literal

from worker.embeddings.base import InputKind
from worker.embeddings.batching import BatchingEmbedder, GroupResult, gather_all
from worker.errors import FullpassError, NeedsOperator, Transient, Unusable
from worker.llm.limiter import check_guard
from worker.redact import redact
from worker.retry import backoff, retry_async

logger = logging.getLogger("fullpass.embeddings")

FailureKind = Literal["throttled", "unavailable", "operator", "too_long", "input"]

_RETRYABLE: Final = frozenset({"throttled", "unavailable"})
#: A text is not halved below this many characters: a service that refuses
#: that little refuses the text, not its length.
MIN_SHRINK_CHARS: Final = 64
_MAX_MESSAGE_CHARS: Final = 300


class RequestFailed(Exception):
    """One failed attempt, classified by the provider (never leaves this package)."""

    def __init__(self, kind: FailureKind, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.kind: FailureKind = kind
        self.message = message
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.kind in _RETRYABLE


class RemoteEmbedder(BatchingEmbedder):
    """A :class:`BatchingEmbedder` whose requests go over the network.

    ``max_retries`` is the number of retries after the first attempt. The
    backoff knobs exist so tests can run retries in milliseconds;
    ``max_retry_after`` caps a service's requested wait. ``secrets`` are
    values that must never appear in a message (keys, secret access keys).
    """

    def __init__(
        self,
        *,
        model: str,
        dimension: int,
        max_batch: int,
        max_input_chars: int,
        concurrency: int,
        max_retries: int,
        max_request_chars: int | None = None,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        max_retry_after: float = 120.0,
        secrets: Sequence[str] = (),
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        super().__init__(
            model=model,
            dimension=dimension,
            max_batch=max_batch,
            max_input_chars=max_input_chars,
            concurrency=concurrency,
            max_request_chars=max_request_chars,
        )
        self.max_retries = max(0, max_retries)
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._max_retry_after = max_retry_after
        self._secrets = [s for s in secrets if s]
        self._rng = rng
        self._sleep = sleep

    @abstractmethod
    async def _request(self, texts: list[str], kind: InputKind) -> GroupResult:
        """One attempt; raises :class:`RequestFailed` for anything but an answer."""

    async def _embed_group(self, texts: list[str], kind: InputKind) -> GroupResult:
        try:
            return await self._with_retries(texts, kind)
        except RequestFailed as failure:
            if failure.kind != "too_long":
                raise
            return await self._shrink(texts, kind, failure)

    async def _shrink(
        self, texts: list[str], kind: InputKind, failure: RequestFailed
    ) -> GroupResult:
        """Split a request the service found too long, or halve its one text."""
        if len(texts) > 1:
            middle = len(texts) // 2
            logger.info(
                "%s: %s; splitting %d texts in two",
                self.label,
                self._safe(str(failure)),
                len(texts),
            )
            halves = await gather_all(
                self._embed_group(part, kind) for part in (texts[:middle], texts[middle:])
            )
            (first, first_usage), (second, second_usage) = halves
            return _concat(first, second), first_usage + second_usage
        text = texts[0]
        if len(text) <= MIN_SHRINK_CHARS:
            raise self._error(RequestFailed("input", failure.message), attempts=1) from None
        logger.info(
            "%s: %s; retrying with the first %d characters",
            self.label,
            self._safe(str(failure)),
            len(text) // 2,
        )
        return await self._embed_group([text[: len(text) // 2]], kind)

    async def _with_retries(self, texts: list[str], kind: InputKind) -> GroupResult:
        attempts = self.max_retries + 1
        made = 0

        async def attempt() -> GroupResult:
            nonlocal made
            made += 1
            async with self._slots:
                # The job's lease, checked once the request holds its slot (it may
                # have waited long for it, or for a backoff): a job that lost its
                # stage sends nothing more.
                await check_guard()
                return await self._request(texts, kind)

        try:
            return await retry_async(
                attempt,
                attempts=attempts,
                base=self._backoff_base,
                cap=self._backoff_max,
                retryable=lambda exc: isinstance(exc, RequestFailed) and exc.retryable,
                retry_after=self._retry_after,
                on_retry=self._log_retry,
                sleep=self._sleep,
                rng=self._rng,
            )
        except RequestFailed as failure:
            if failure.kind == "too_long":
                raise
            raise self._error(failure, attempts=made) from None

    def _retry_after(self, exc: BaseException) -> float | None:
        if not isinstance(exc, RequestFailed) or exc.retry_after is None:
            return None
        return min(exc.retry_after, self._max_retry_after)

    def _log_retry(self, exc: BaseException, attempt: int, delay: float) -> None:
        logger.warning(
            "%s: %s; retry %d/%d in %.2fs",
            self.label,
            self._safe(str(exc)),
            attempt,
            self.max_retries,
            delay,
        )

    def _error(self, failure: RequestFailed, *, attempts: int) -> FullpassError:
        """The error the caller sees for a failure that is final."""
        message = self._safe(f"{self.label}: {failure.message}")
        if failure.retryable and attempts > 1:
            message += f" (gave up after {attempts} attempts)"
        if failure.kind == "throttled":
            wait = self._retry_after(failure)
            if wait is None:
                wait = backoff(attempts, base=self._backoff_base, cap=self._backoff_max)
            return Transient(message, retry_after=wait)
        if failure.kind == "unavailable":
            return Transient(message, retry_after=self._retry_after(failure))
        if failure.kind == "operator":
            return NeedsOperator(message)
        return Unusable(message)

    def _safe(self, text: str) -> str:
        """``text`` without secrets, on one line, bounded."""
        for secret in self._secrets:
            text = text.replace(secret, "[REDACTED]")
        text = redact(" ".join(text.split()))
        if len(text) > _MAX_MESSAGE_CHARS:
            text = text[: _MAX_MESSAGE_CHARS - 1] + "…"
        return text


def _concat(first: object, second: object) -> object:
    """Two halves' vectors as one list (a half that is no list is left for the check to refuse)."""
    if isinstance(first, list) and isinstance(second, list):
        return [*first, *second]
    return first if not isinstance(first, list) else second


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The service's requested wait: ``retry-after-ms``, or ``retry-after`` in seconds or a date."""
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        return max(0.0, float(lowered["retry-after-ms"]) / 1000)
    except (KeyError, TypeError, ValueError):
        pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    parsed = email.utils.parsedate_tz(value)
    if parsed is None:
        return None
    return max(0.0, email.utils.mktime_tz(parsed) - time.time())


def failure_for_status(
    status: int, message: str, *, retry_after: float | None = None, too_long: bool = False
) -> RequestFailed:
    """The kind of an HTTP error status, for services that say little more."""
    kind: FailureKind
    if status == 429:
        kind = "throttled"
    elif status in (408, 409) or status >= 500:
        kind = "unavailable"
    elif status in (401, 402, 403, 404):
        kind = "operator"
    elif too_long:
        kind = "too_long"
    else:
        kind = "input"
    return RequestFailed(kind, message, retry_after=retry_after)
