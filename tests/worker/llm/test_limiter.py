"""AdaptiveLimiter: bounded concurrency, halving on overload, cool-down, recovery."""

from __future__ import annotations

import asyncio
import time

import pytest

from worker.llm.limiter import AdaptiveLimiter, global_limiter, llm_scope, scope_limiter


async def run_many(limiter: AdaptiveLimiter, n: int, hold: float = 0.01) -> int:
    """Run ``n`` tasks through the limiter; return the highest concurrency seen."""
    active = peak = 0

    async def one() -> None:
        nonlocal active, peak
        async with limiter:
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(hold)
            active -= 1

    await asyncio.gather(*(one() for _ in range(n)))
    return peak


async def test_bounds_in_flight_calls() -> None:
    limiter = AdaptiveLimiter(3)
    assert await run_many(limiter, 12) == 3
    assert limiter.in_flight == 0
    assert limiter.waiting == 0


async def test_overload_halves_once_per_burst_down_to_one() -> None:
    limiter = AdaptiveLimiter(8)
    permits = [await limiter.acquire() for _ in range(3)]
    for permit in permits:  # three 429s from the same burst: one decrease
        permit.overloaded()
        permit.release(success=False)
    assert limiter.limit == 4
    for expected in (2, 1, 1):
        permit = await limiter.acquire()
        permit.overloaded()
        permit.release(success=False)
        assert limiter.limit == expected
    assert limiter.overloads == 6


async def test_recovers_one_slot_per_run_of_successes_up_to_the_maximum() -> None:
    limiter = AdaptiveLimiter(4, increase_after=3)
    limiter.record_overload()
    assert limiter.limit == 2
    for _ in range(3):
        async with limiter:
            pass
    assert limiter.limit == 3
    await run_many(limiter, 20, hold=0)
    assert limiter.limit == 4  # never above the original


async def test_failures_that_are_not_overloads_do_not_count_as_successes() -> None:
    limiter = AdaptiveLimiter(4, increase_after=2)
    limiter.record_overload()
    for _ in range(4):
        with pytest.raises(RuntimeError):
            async with limiter:
                raise RuntimeError("a 400")
    assert limiter.limit == 2
    assert limiter.in_flight == 0


async def test_overload_resets_the_success_run() -> None:
    limiter = AdaptiveLimiter(4, increase_after=3)
    limiter.record_overload()
    for _ in range(2):
        async with limiter:
            pass
    limiter.record_overload()
    for _ in range(2):
        async with limiter:
            pass
    assert limiter.limit == 1


async def test_cool_down_delays_every_new_call() -> None:
    limiter = AdaptiveLimiter(4)
    permit = await limiter.acquire()
    permit.overloaded(retry_after=0.2)
    permit.release(success=False)
    assert limiter.cooldown_remaining() > 0.1
    started = time.monotonic()
    await run_many(limiter, 3, hold=0)
    assert time.monotonic() - started >= 0.18


async def test_waiters_blocked_by_a_cool_down_are_woken_when_it_ends() -> None:
    limiter = AdaptiveLimiter(1)
    holder = await limiter.acquire()
    waiter = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0.01)
    holder.overloaded(retry_after=0.1)
    holder.release(success=False)  # frees the slot, but the cool-down holds it back
    await asyncio.sleep(0.03)
    assert not waiter.done()
    permit = await asyncio.wait_for(waiter, 1.0)
    permit.release(success=True)
    assert limiter.in_flight == 0


async def test_waiters_are_served_in_order() -> None:
    limiter = AdaptiveLimiter(1)
    order: list[int] = []

    async def one(i: int) -> None:
        async with limiter:
            order.append(i)
            await asyncio.sleep(0.005)

    await asyncio.gather(*(one(i) for i in range(6)))
    assert order == list(range(6))


async def test_cancelled_waiters_do_not_leak_slots() -> None:
    limiter = AdaptiveLimiter(1)
    holder = await limiter.acquire()
    waiters = [asyncio.create_task(limiter.acquire()) for _ in range(3)]
    await asyncio.sleep(0.01)
    waiters[0].cancel()
    holder.release(success=True)  # handed to waiters[1] (waiters[0] is cancelled)
    waiters[2].cancel()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert isinstance(results[2], asyncio.CancelledError)
    permit = results[1]
    assert not isinstance(permit, BaseException)
    permit.release(success=True)
    assert limiter.in_flight == 0
    assert await run_many(limiter, 3) == 1


async def test_nested_limiters_release_the_right_permits() -> None:
    outer, inner = AdaptiveLimiter(2), AdaptiveLimiter(1)

    async def one() -> None:
        async with outer, inner:
            await asyncio.sleep(0.005)

    await asyncio.gather(*(one() for _ in range(5)))
    assert outer.in_flight == inner.in_flight == 0


def test_global_limiter_is_one_per_event_loop() -> None:
    async def limiters() -> tuple[AdaptiveLimiter, AdaptiveLimiter]:
        return global_limiter(7), global_limiter(3)

    # A fresh event loop each: the suite's shared loop may already have one.
    first, again = asyncio.run(limiters())
    assert again is first and first.max_limit == 7
    other, _ = asyncio.run(limiters())
    assert other is not first


def test_invalid_limits_are_rejected() -> None:
    with pytest.raises(ValueError, match="limit"):
        AdaptiveLimiter(0)
    with pytest.raises(ValueError, match="increase_after"):
        AdaptiveLimiter(1, increase_after=0)


async def test_an_imports_jobs_share_one_limiter_while_any_runs() -> None:
    assert scope_limiter() is None
    with llm_scope("import-a", 3) as first:
        assert scope_limiter() is first
        with llm_scope("import-a", 3) as second, llm_scope("import-b", 3) as other:
            assert second is first
            assert other is not first
            assert scope_limiter() is other
        assert scope_limiter() is first
    assert scope_limiter() is None
    with llm_scope("import-a", 3) as later:
        assert later is not first  # the last job left: a new run starts afresh


async def test_jobs_of_one_import_in_separate_tasks_share_its_slots() -> None:
    active = peak = 0

    async def job() -> None:
        nonlocal active, peak
        with llm_scope("import-a", 2) as limiter:
            for _ in range(3):
                async with limiter:
                    active += 1
                    peak = max(peak, active)
                    await asyncio.sleep(0.01)
                    active -= 1

    await asyncio.gather(job(), job(), job())
    assert peak == 2


async def test_overload_halves_only_its_imports_limit_and_cools_down_the_process() -> None:
    process = AdaptiveLimiter(20, adaptive=False)
    with llm_scope("a", 8) as a, llm_scope("b", 8) as b:
        permits = [await a.acquire(), await process.acquire()]
        for permit in permits:
            permit.overloaded(0.2)
            permit.release(success=False)
        assert (a.limit, b.limit, process.limit) == (4, 8, 20)
        started = time.monotonic()
        async with b, process:  # import b waits out the process's cool-down
            assert time.monotonic() - started >= 0.15


async def test_a_new_concurrency_resizes_the_imports_limiter() -> None:
    with llm_scope("a", 4) as limiter:
        with llm_scope("a", 6):
            assert (limiter.max_limit, limiter.limit) == (6, 6)
        limiter.record_overload()
        with llm_scope("a", 10):
            assert (limiter.max_limit, limiter.limit) == (10, 3)  # earned back call by call
        with llm_scope("a", 2):
            assert (limiter.max_limit, limiter.limit) == (2, 2)
