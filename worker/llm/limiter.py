"""Adaptive concurrency for LLM calls: back off on overload, creep back up.

Rate limits (429) and overload (529) are account- or fleet-wide signals, so
hammering on at the same concurrency only buys more of them. The limiter
halves its limit when one arrives, makes every caller wait out the server's
``retry-after`` before starting a new request, and then regains one slot per
run of consecutive successes (additive increase, multiplicative decrease, as
in TCP).

Two limiters gate every call: the one of the import the call is made for
(:func:`llm_scope`, shared by every stage and lane job of that import running
in the process: ``FULLPASS_CONCURRENCY`` or the import's ``concurrency``
option), and the process-wide one (:func:`global_limiter`,
``FULLPASS_GLOBAL_CONCURRENCY``) across all imports. A 429/529 halves the
limit of the import that got it only; its ``retry-after`` cool-down is held by
the process-wide limiter, so every import of the process waits it out.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType

#: Permits held by the current task, innermost last (see ``AdaptiveLimiter.__aexit__``).
_HELD: ContextVar[tuple[Permit, ...]] = ContextVar("fullpass_llm_permits", default=())


class Permit:
    """One in-flight slot; report how the call went before leaving the block.

    Leaving the ``async with`` block normally counts as a success; leaving it
    with an exception counts as neither success nor overload unless
    :meth:`overloaded` was called (a 400 says nothing about capacity).
    """

    __slots__ = ("_done", "_epoch", "_limiter", "_overloaded")

    def __init__(self, limiter: AdaptiveLimiter, epoch: int) -> None:
        self._limiter = limiter
        self._epoch = epoch
        self._overloaded = False
        self._done = False

    def overloaded(self, retry_after: float | None = None) -> None:
        """The call got a 429/529; ``retry_after`` is the server's wait, in seconds."""
        if not self._overloaded:
            self._overloaded = True
            self._limiter.record_overload(retry_after, epoch=self._epoch)

    def release(self, *, success: bool) -> None:
        if self._done:
            return
        self._done = True
        if success and not self._overloaded:
            self._limiter.record_success()
        self._limiter._release()

    async def __aenter__(self) -> Permit:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release(success=exc_type is None)


class AdaptiveLimiter:
    """An async limiter on in-flight calls whose limit adapts to overload signals.

    ``async with limiter as permit:`` waits for a slot (and for any cool-down)
    and yields a :class:`Permit`; ``await limiter.acquire()`` does the same for
    callers that release by hand (``permit.release(success=...)``). Waiters
    are served first come, first served.
    """

    def __init__(
        self,
        limit: int,
        *,
        increase_after: int = 20,
        adaptive: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``adaptive=False``: a fixed limit that only shares cool-downs (no halving)."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        if increase_after < 1:
            raise ValueError("increase_after must be at least 1")
        self.max_limit = limit
        self.increase_after = increase_after
        self.adaptive = adaptive
        self._clock = clock
        self._limit = limit
        self._in_flight = 0
        self._successes = 0
        # Bumped on every decrease: an overload reported by a call that started
        # before the last decrease is the same burst and must not halve again.
        self._epoch = 0
        self._cooldown_until = 0.0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._wakeup: asyncio.TimerHandle | None = None
        self.overloads = 0

    @property
    def limit(self) -> int:
        """The current effective limit (between 1 and :attr:`max_limit`)."""
        return self._limit

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return sum(1 for f in self._waiters if not f.done())

    def resize(self, max_limit: int) -> None:
        """Change the ceiling; a limit not lowered by overload moves with it."""
        if max_limit < 1:
            raise ValueError("limit must be at least 1")
        at_ceiling = self._limit == self.max_limit
        self.max_limit = max_limit
        self._limit = max_limit if at_ceiling else min(self._limit, max_limit)
        self._dispatch()

    def cooldown_remaining(self) -> float:
        return max(0.0, self._cooldown_until - self._clock())

    async def acquire(self) -> Permit:
        """Wait for the cool-down and a free slot, then take the slot."""
        while True:
            wait = self.cooldown_remaining()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            if not self._waiters and self._in_flight < self._limit:
                self._in_flight += 1
                return Permit(self, self._epoch)
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(future)
            self._schedule_dispatch()
            try:
                await future
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():
                    # A slot was handed to us just as we were cancelled: pass it on.
                    self._in_flight -= 1
                    self._dispatch()
                else:
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(future)
                raise
            return Permit(self, self._epoch)

    async def __aenter__(self) -> Permit:
        permit = await self.acquire()
        _HELD.set((*_HELD.get(), permit))
        return permit

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # The permit this task took in __aenter__: a context variable is
        # per task, so concurrent tasks sharing the limiter never mix them up.
        held = _HELD.get()
        for index in range(len(held) - 1, -1, -1):
            if held[index]._limiter is self:
                permit = held[index]
                _HELD.set(held[:index] + held[index + 1 :])
                permit.release(success=exc_type is None)
                return

    def record_success(self) -> None:
        self._successes += 1
        if self._successes >= self.increase_after:
            self._successes = 0
            if self._limit < self.max_limit:
                self._limit += 1
                self._dispatch()

    def record_overload(
        self, retry_after: float | None = None, *, epoch: int | None = None
    ) -> None:
        """Halve the limit (once per burst) and start a cool-down of ``retry_after``."""
        self.overloads += 1
        self._successes = 0
        if retry_after is not None and retry_after > 0:
            self._cooldown_until = max(self._cooldown_until, self._clock() + retry_after)
        if self.adaptive and (epoch is None or epoch == self._epoch):
            self._limit = max(1, self._limit // 2)
            self._epoch += 1

    def _release(self) -> None:
        self._in_flight -= 1
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand free slots to waiters in order, unless cooling down."""
        if self.cooldown_remaining() > 0:
            self._schedule_dispatch()
            return
        while self._waiters and self._in_flight < self._limit:
            future = self._waiters.popleft()
            if future.done():
                continue
            self._in_flight += 1
            future.set_result(None)

    def _schedule_dispatch(self) -> None:
        """Make sure waiters get dispatched when the current cool-down ends."""
        wait = self.cooldown_remaining()
        if wait <= 0:
            self._dispatch_soon()
            return
        if self._wakeup is not None and not self._wakeup.cancelled():
            if self._wakeup.when() >= asyncio.get_running_loop().time() + wait - 1e-3:
                return
            self._wakeup.cancel()
        self._wakeup = asyncio.get_running_loop().call_later(wait, self._on_wakeup)

    def _dispatch_soon(self) -> None:
        if self._waiters and self._in_flight < self._limit:
            self._dispatch()

    def _on_wakeup(self) -> None:
        self._wakeup = None
        self._dispatch()


_GLOBAL: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AdaptiveLimiter] = (
    weakref.WeakKeyDictionary()
)


def global_limiter(limit: int) -> AdaptiveLimiter:
    """The process-wide limiter of the running event loop.

    Keyed by loop because asyncio primitives must not cross loops (tests and
    benchmarks run several). The first caller's ``limit`` sizes it; later
    callers share it as is.
    """
    loop = asyncio.get_running_loop()
    limiter = _GLOBAL.get(loop)
    if limiter is None:
        limiter = _GLOBAL[loop] = AdaptiveLimiter(limit, adaptive=False)
    return limiter


@dataclass(slots=True)
class _Shared:
    limiter: AdaptiveLimiter
    users: int = 0


#: The limiter of each import with a job running, per event loop.
_IMPORTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Hashable, _Shared]] = (
    weakref.WeakKeyDictionary()
)
#: The limiter of the import the current task works for (see :func:`llm_scope`).
_SCOPE: ContextVar[AdaptiveLimiter | None] = ContextVar("fullpass_llm_scope", default=None)


#: What a request of the current task awaits once it holds its slots, just
#: before it is sent (see :func:`llm_scope`).
_GUARD: ContextVar[Callable[[], Awaitable[None]] | None] = ContextVar(
    "fullpass_llm_guard", default=None
)


@contextlib.contextmanager
def llm_scope(
    import_id: Hashable,
    concurrency: int,
    *,
    guard: Callable[[], Awaitable[None]] | None = None,
) -> Iterator[AdaptiveLimiter]:
    """Run the block's LLM calls under the limiter of ``import_id``.

    Every job of the same import running in this process (the stage's own and
    its lanes) shares one limiter of ``concurrency`` slots; it lives while any
    of them runs, so what it learnt from a 429 carries over between them. A
    job that brings another ``concurrency`` (the import's options changed on
    a requeue) resizes it. Must be entered with the event loop running.

    ``guard``: awaited by every request once it holds its slots (and its
    budget), right before it is sent, and again before each retry: the job's
    lease check, raising when the job no longer owns its stage. A request may
    wait long for a slot or a backoff, and the job may lose its stage
    meanwhile (handed to another worker after this one stalled): checked
    only before the wait, it would pay for chunks another worker has
    already done.
    """
    loop = asyncio.get_running_loop()
    shared_by_import = _IMPORTS.setdefault(loop, {})
    shared = shared_by_import.get(import_id)
    if shared is None:
        shared = shared_by_import[import_id] = _Shared(AdaptiveLimiter(concurrency))
    elif shared.limiter.max_limit != concurrency:
        shared.limiter.resize(concurrency)
    shared.users += 1
    token = _SCOPE.set(shared.limiter)
    guarded = _GUARD.set(guard)
    try:
        yield shared.limiter
    finally:
        _GUARD.reset(guarded)
        _SCOPE.reset(token)
        shared.users -= 1
        if shared.users == 0 and shared_by_import.get(import_id) is shared:
            del shared_by_import[import_id]


def scope_limiter() -> AdaptiveLimiter | None:
    """The limiter of the import the current task works for, if any."""
    return _SCOPE.get()


async def check_guard() -> None:
    """Await the current scope's guard, if any (see :func:`llm_scope`)."""
    guard = _GUARD.get()
    if guard is not None:
        await guard()
