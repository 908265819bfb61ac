"""The one backoff rule, and the one retry loop built on it.

Every retried thing in fullpass (a stage, an HTTP call to a model, storage or
an embeddings service, a webhook) waits ``base · 2^(attempt-1)`` seconds,
±25 % jitter so that many workers do not retry in step, capped at ``cap``,
and never less than what the service asked for (``retry-after``).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

JITTER = 0.25


def backoff(
    attempt: int,
    *,
    base: float,
    cap: float = 300.0,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 1)."""
    delay = min(cap, base * 2 ** max(attempt - 1, 0))
    uniform = rng.uniform if rng is not None else random.uniform
    delay *= uniform(1 - JITTER, 1 + JITTER)
    if retry_after is not None and retry_after > delay:
        delay = retry_after
    return round(max(0.0, float(delay)), 3)


async def retry_async(
    call: Callable[[], Awaitable[T]],
    *,
    attempts: int,
    base: float,
    cap: float = 60.0,
    retryable: Callable[[BaseException], bool],
    retry_after: Callable[[BaseException], float | None] = lambda exc: None,
    on_retry: Callable[[BaseException, int, float], None] | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    rng: random.Random | None = None,
) -> T:
    """``await call()`` up to ``attempts`` times while it raises a retryable error.

    The last error is raised as is. ``on_retry(exc, attempt, delay)`` is told
    about each retry (for a log line) before the wait.
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    attempt = 1
    while True:
        try:
            return await call()
        except Exception as exc:
            if attempt >= attempts or not retryable(exc):
                raise
            delay = backoff(attempt, base=base, cap=cap, retry_after=retry_after(exc), rng=rng)
            if on_retry is not None:
                on_retry(exc, attempt, delay)
            await sleep(delay)
            attempt += 1
