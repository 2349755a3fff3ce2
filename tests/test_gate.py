"""The concurrency ceiling: Little's-law sizing, FIFO slots, growth as requests age.

The sizing tests run on a FakeClock: time moves only when the test says so. The
client tests at the end use the emulator for a fraction of a second.
"""

from __future__ import annotations

import asyncio

import pytest

from asyncimg import AsyncImagesClient, RateLimit
from asyncimg._gate import AUTO_CEILING, AUTO_FLOOR, Gate, auto_limit
from asyncimg.testing import Emulator, FakeClock

from .conftest import TEST_KEY


async def settle(rounds: int = 20) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


# -- the pure sizing --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "latency", "expected"),
    [
        (None, 0.0, AUTO_FLOOR),
        (None, 500.0, AUTO_FLOOR),
        (RateLimit(50, 60.0), 0.0, 100),            # one window in flight, one waiting
        (RateLimit(50, 60.0), 30.0, 100),           # half a window
        (RateLimit(50, 60.0), 60.0, 100),           # a window is per + margin = 60.6 s
        (RateLimit(50, 60.0), 61.0, 150),
        (RateLimit(50, 60.0), 180.0, 200),          # three windows (60.6 s each) not reached
        (RateLimit(50, 60.0), 182.0, 250),
        (RateLimit(5, 60.0), 120.0, AUTO_FLOOR),    # a small limit keeps the floor
        (RateLimit(500, 60.0), 0.0, AUTO_CEILING),  # a large one stops at the ceiling
        (RateLimit(50, 6.0), float("inf"), AUTO_CEILING),
        (RateLimit(50, 6.0), -1.0, 100),
    ],
)
def test_auto_limit_is_littles_law_clamped(
    rate: RateLimit | None, latency: float, expected: int
) -> None:
    assert auto_limit(rate, latency) == expected


# -- the gate ---------------------------------------------------------------------------


async def test_a_fixed_ceiling_is_hard_and_fifo() -> None:
    gate = Gate(RateLimit(50, 60.0), fixed=2, clock=FakeClock())
    assert gate.ceiling == 2
    await gate.acquire()
    await gate.acquire()
    order: list[int] = []

    async def wait(i: int) -> None:
        await gate.acquire()
        order.append(i)

    tasks = [asyncio.ensure_future(wait(i)) for i in range(3)]
    await settle()
    assert order == []
    assert gate.in_use == 2
    gate.release()
    await settle()
    assert order == [0]
    gate.release()
    gate.release()
    await settle()
    assert order == [0, 1, 2]
    await asyncio.gather(*tasks)
    assert gate.in_use == 2


async def test_the_auto_limit_follows_answer_times() -> None:
    clock = FakeClock()
    gate = Gate(RateLimit(20, 10.0, margin=0.0), clock=clock)
    assert gate.ceiling == AUTO_CEILING
    assert gate.limit() == 40
    assert gate.latency() == 0.0
    token = gate.sent()
    clock.advance(25.0)
    assert gate.latency() == 25.0  # the oldest unanswered request's age
    assert gate.limit() == 20 * (2 + 2)
    gate.answered(token)
    assert gate.latency() == 25.0  # now an answer time
    other = gate.sent()
    clock.advance(1.0)
    gate.answered(other, measured=False)
    assert gate.latency() == 25.0


async def test_answer_times_are_forgotten_after_32_answers() -> None:
    clock = FakeClock()
    gate = Gate(RateLimit(20, 10.0, margin=0.0), clock=clock)
    slow = gate.sent()
    clock.advance(35.0)
    gate.answered(slow)
    assert gate.limit() == 100
    for _ in range(32):
        token = gate.sent()
        clock.advance(1.0)
        gate.answered(token)
    assert gate.latency() == 1.0
    assert gate.limit() == 40


async def test_waiters_held_back_are_let_in_as_the_oldest_request_ages() -> None:
    """No release happens, yet the next window's burst is not blocked by the ceiling."""
    clock = FakeClock()
    gate = Gate(RateLimit(20, 10.0, margin=0.0), clock=clock)
    for _ in range(40):
        await gate.acquire()
        gate.sent()
    waiter = asyncio.ensure_future(gate.acquire())
    await settle()
    assert not waiter.done()
    clock.advance(9.9)
    await settle()
    assert not waiter.done()
    clock.advance(0.1)  # the oldest is one window old: the ceiling is 60 now
    await settle()
    assert waiter.done()
    assert gate.in_use == 41


async def test_waiters_queued_before_anything_was_sent_are_let_in_too() -> None:
    clock = FakeClock()
    gate = Gate(RateLimit(20, 10.0, margin=0.0), clock=clock)
    for _ in range(40):
        await gate.acquire()
    waiter = asyncio.ensure_future(gate.acquire())  # queued while nothing is on its way
    await settle()
    for _ in range(20):
        gate.sent()
    clock.advance(10.0)
    await settle()
    assert waiter.done()


async def test_a_cancelled_waiter_takes_nothing() -> None:
    gate = Gate(None, fixed=1, clock=FakeClock())
    await gate.acquire()
    waiter = asyncio.ensure_future(gate.acquire())
    await settle()
    waiter.cancel()
    await settle()
    gate.release()
    assert gate.in_use == 0
    await gate.acquire()
    assert gate.in_use == 1


async def test_without_a_rate_the_automatic_ceiling_is_the_floor() -> None:
    clock = FakeClock()
    gate = Gate(None, clock=clock)
    token = gate.sent()
    clock.advance(1000.0)
    assert gate.limit() == AUTO_FLOOR == gate.ceiling
    gate.answered(token)


# -- the client -------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, "4"])
def test_max_concurrency_is_none_or_a_positive_int(bad: object) -> None:
    from asyncimg import ValidationError

    with pytest.raises(ValidationError) as info:
        AsyncImagesClient(api_key=TEST_KEY, base_url="http://127.0.0.1:9/v1",
                          max_concurrency=bad)  # type: ignore[arg-type]
    assert info.value.param == "max_concurrency"


async def test_by_default_the_limit_not_a_cap_of_16_sets_the_pace() -> None:
    """40 concurrent awaits under a 40-image limit are all in flight at once."""
    async with Emulator(api_key=TEST_KEY, latency=0.3) as emu, AsyncImagesClient(
        api_key=TEST_KEY, base_url=emu.base_url, rate_limit=RateLimit(40, 2.0)
    ) as client:
        assert client.max_concurrency is None
        peak = 0

        async def watch() -> None:
            nonlocal peak
            for _ in range(30):
                peak = max(peak, client._gate.in_use)
                await asyncio.sleep(0.01)

        watcher = asyncio.ensure_future(watch())
        await asyncio.gather(
            *(client.generate(f"p{i}", model="dall-e-2", size="256x256") for i in range(40))
        )
        await watcher
    assert peak == 40
    assert emu.max_images_in_window(2.0) == 40


async def test_generate_many_is_not_capped_at_16_by_default() -> None:
    async with Emulator(api_key=TEST_KEY, latency=0.5) as emu, AsyncImagesClient(
        api_key=TEST_KEY, base_url=emu.base_url, rate_limit=RateLimit(30, 2.0)
    ) as client:
        loop = asyncio.get_running_loop()
        started = loop.time()
        items = [item async for item in client.generate_many(
            [f"p{i}" for i in range(30)], model="dall-e-2", size="256x256"
        )]
        elapsed = loop.time() - started
    assert all(item.error is None for item in items)
    assert elapsed < 0.5 * 2 - 0.05  # one round of answers, not two (16 + 14)


async def test_generate_many_holds_few_unread_results_for_a_slow_consumer() -> None:
    """The ceiling is large (512); the results waiting for the consumer are not."""
    async with Emulator(api_key=TEST_KEY) as emu, AsyncImagesClient(
        api_key=TEST_KEY, base_url=emu.base_url, rate_limit=RateLimit(1000, 1.0)
    ) as client:
        assert client._gate.ceiling == AUTO_CEILING
        batch = client.generate_many([f"p{i}" for i in range(300)], model="dall-e-2",
                                     size="256x256")
        async with batch:
            first = await batch.__anext__()
            await asyncio.sleep(0.3)  # a slow consumer: the rest would all be answered
            sent = len(emu.journal)
        assert first.error is None
    assert sent <= 2 * AUTO_FLOOR + AUTO_CEILING // 8
