"""The fleet's shared budget of API calls, kept in PostgreSQL (revision 0010).

An organisation's rate limits (requests and input tokens per minute) are
shared by every worker calling the API with its key, so no worker can keep
them alone: before each Messages call, a worker draws the call's request and
estimated input tokens from one budget row (:meth:`FleetBudget.draw`, one
short statement) and waits the time the database tells it, which lines the
fleet's calls up at the configured rate. The API's answers correct the row
(:meth:`FleetBudget.observe`: what its ``anthropic-ratelimit-*-remaining``
headers say is left, and input tokens drawn beyond what the call counted),
and a 429 with ``retry-after`` pauses the whole fleet
(:meth:`FleetBudget.pause`).

The budget never blocks calls for good: when the database does not answer a
draw within a couple of seconds the call goes ahead under the worker's local
limits only (its limiters, their halving and cool-downs), and the next call
tries the budget again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar

from worker.redact import error_text
from worker.settings import Settings

logger = logging.getLogger("fullpass.llm")

T = TypeVar("T")

#: Seconds a budget statement may take before the call goes ahead without it.
DB_TIMEOUT = 2.0
#: The longest a caller waits on one draw (a budget far in deficit, e.g. after
#: its limits were lowered, is corrected by the API's answers instead).
MAX_WAIT = 120.0
#: How often a failing budget is reported in the log, at most.
WARN_EVERY = 60.0


class BudgetStore(Protocol):
    """The statements the budget runs (:class:`worker.store.Store` has them)."""

    async def rate_draw(
        self, name: str, rpm: int | None, itpm: int | None, tokens: int, burst: float
    ) -> tuple[float, float]: ...

    async def rate_observe(
        self,
        name: str,
        rpm: int | None,
        itpm: int | None,
        burst: float,
        *,
        requests_left: int | None,
        tokens_left: int | None,
        refund: int,
    ) -> None: ...

    async def rate_pause(self, name: str, seconds: float) -> None: ...


class FleetBudget:
    """One worker's side of the shared budget ``name`` of ``rpm`` and ``itpm`` per minute."""

    def __init__(
        self,
        store: BudgetStore,
        *,
        name: str = "anthropic",
        rpm: int | None = None,
        itpm: int | None = None,
        burst_seconds: float = 5.0,
        timeout: float = DB_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rpm is None and itpm is None:
            raise ValueError("a budget needs a requests or an input-tokens limit")
        self._store = store
        self.name = name
        self.rpm = rpm
        self.itpm = itpm
        self.burst_seconds = burst_seconds
        self._timeout = timeout
        self._clock = clock
        #: When the fleet's pause ends, as far as this worker knows (clock time).
        self._paused_until = 0.0
        self._pending: dict[str, Any] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._warned = -math.inf
        #: Draws made, draws that fell back to local limits, seconds waited on draws.
        self.draws = 0
        self.fallbacks = 0
        self.waited = 0.0

    @classmethod
    def from_settings(cls, settings: Settings, store: BudgetStore) -> FleetBudget | None:
        """The budget ``FULLPASS_RATE_*`` configure (None: no limit set)."""
        if settings.rate_rpm is None and settings.rate_itpm is None:
            return None
        return cls(
            store,
            name=settings.rate_budget,
            rpm=settings.rate_rpm,
            itpm=settings.rate_itpm,
            burst_seconds=settings.rate_burst_seconds,
        )

    # ------------------------------------------------------------------ calls

    async def draw(self, tokens: int) -> float:
        """Take a call of ``tokens`` input tokens; wait until it may go. Returns the wait."""
        started = self._clock()
        drawn = await self._guard(
            self._store.rate_draw(self.name, self.rpm, self.itpm, tokens, self.burst_seconds)
        )
        self.draws += 1
        wait = 0.0
        if drawn is None:
            self.fallbacks += 1
        else:
            wait, paused = drawn
            if paused > 0:
                self._paused_until = max(self._paused_until, started + paused)
            wait = min(wait, MAX_WAIT)
        if wait > 0:
            await asyncio.sleep(wait)
        # A pause that began elsewhere while this call waited its turn.
        for _ in range(3):  # a pause that moves on keeps the caller a few times, no more
            left = self._paused_until - self._clock()
            if left <= 0:
                break
            await asyncio.sleep(min(left, MAX_WAIT))
        waited = self._clock() - started
        self.waited += waited
        return waited

    def observe(
        self, headers: Mapping[str, str], *, drawn: int = 0, counted: int | None = None
    ) -> None:
        """Correct the budget by an answer: its remaining headers, and tokens drawn too many.

        ``drawn`` is the estimate the call drew, ``counted`` the input tokens
        the API counted (uncached input and cache writes); the difference goes
        back. Written in the background, the latest headers and the summed
        refunds in one statement.
        """
        self._adopt_limits(headers)
        requests_left = _int(headers.get("anthropic-ratelimit-requests-remaining"))
        tokens_left = _int(headers.get("anthropic-ratelimit-input-tokens-remaining"))
        refund = drawn - counted if counted is not None and self.itpm is not None else 0
        if requests_left is None and tokens_left is None and refund == 0:
            return
        pending = self._pending or {"requests_left": None, "tokens_left": None, "refund": 0}
        if requests_left is not None:
            pending["requests_left"] = requests_left
        if tokens_left is not None:
            pending["tokens_left"] = tokens_left
        pending["refund"] += refund
        self._pending = pending
        if self._writer is None or self._writer.done():
            self._writer = self._spawn(self._write_observations())

    def pause(self, seconds: float) -> None:
        """The API answered 429 with ``retry-after``: the fleet waits ``seconds``."""
        if seconds <= 0:
            return
        self._paused_until = max(self._paused_until, self._clock() + seconds)
        self._spawn(self._write_pause(seconds))

    def paused_for(self) -> float:
        return max(0.0, self._paused_until - self._clock())

    async def aclose(self) -> None:
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    # ------------------------------------------------------------------ plumbing

    def _adopt_limits(self, headers: Mapping[str, str]) -> None:
        """A limit the API reports below the configured one is the one that holds."""
        rpm = _int(headers.get("anthropic-ratelimit-requests-limit"))
        itpm = _int(headers.get("anthropic-ratelimit-input-tokens-limit"))
        if rpm and self.rpm is not None and rpm < self.rpm:
            logger.warning(
                "the API allows %s requests a minute, not %s: using %s", rpm, self.rpm, rpm
            )
            self.rpm = rpm
        if itpm and self.itpm is not None and itpm < self.itpm:
            logger.warning(
                "the API allows %s input tokens a minute, not %s: using %s", itpm, self.itpm, itpm
            )
            self.itpm = itpm

    async def _write_observations(self) -> None:
        while self._pending is not None:
            pending, self._pending = self._pending, None
            await self._guard(
                self._store.rate_observe(
                    self.name, self.rpm, self.itpm, self.burst_seconds, **pending
                )
            )

    async def _write_pause(self, seconds: float) -> None:
        await self._guard(self._store.rate_pause(self.name, seconds))

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _guard(self, statement: Awaitable[T]) -> T | None:
        """The statement's result, or None when the database did not answer in time."""
        try:
            return await asyncio.wait_for(statement, self._timeout)
        except Exception as exc:
            now = self._clock()
            if now - self._warned >= WARN_EVERY:
                self._warned = now
                logger.warning(
                    "rate budget %r unavailable (%s); calls go ahead under this worker's "
                    "own limits until it answers again",
                    self.name,
                    error_text(exc) if not isinstance(exc, TimeoutError) else "timed out",
                )
            return None


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return max(0, int(float(value)))
    except ValueError:
        return None
