"""The image rate limiter: window invariant, FIFO, cancellation, server feedback.

Every test runs on a FakeClock: time moves only when the test says so.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncimg._clock import MonotonicClock
from asyncimg._exceptions import ValidationError
from asyncimg._limiter import (
    MAX_LAG_MARGIN,
    MAX_MARGIN,
    Limiter,
    LimiterStats,
    Permit,
    RateLimit,
    RateLimiter,
    RatePermit,
    note_answer,
)
from asyncimg._ratelimit_headers import parse_duration
from asyncimg.testing import FakeClock


async def settle(rounds: int = 50) -> None:
    """Let every task that can run, run (time does not move)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def make(
    images: int = 10,
    per: float = 10.0,
    margin: float = 0.0,
    burst: int | None = None,
    backfill: bool = True,
) -> tuple[Limiter, FakeClock]:
    clock = FakeClock()
    rate = RateLimit(images, per, margin=margin, burst=burst)
    return Limiter(rate, clock=clock, backfill=backfill), clock


async def take(limiter: Limiter, n: int) -> Permit:
    """Acquire what must be granted at once (fails, rather than hangs, if it is not)."""
    return await asyncio.wait_for(limiter.acquire(n), timeout=1.0)


def spawn(aw: Awaitable[Permit]) -> asyncio.Task[Permit]:
    async def run() -> Permit:
        return await aw

    return asyncio.ensure_future(run())


# -- RateLimit --------------------------------------------------------------------------


def test_rate_limit_defaults() -> None:
    rate = RateLimit()
    assert (rate.images, rate.per, rate.burst) == (50, 60.0, None)
    assert rate.margin == pytest.approx(0.6)
    assert rate.window == pytest.approx(60.6)
    assert RateLimit(20, 2.0).margin == pytest.approx(0.02)
    assert RateLimit(20, 2.0, margin=None).margin == pytest.approx(0.02)
    assert RateLimit(20, 2.0, margin=0).margin == 0
    assert RateLimit(20, 2.0, burst=20).burst == 20
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        rate.images = 3  # type: ignore[misc]
    assert RateLimit(5, 1.0) == RateLimit(5, 1.0, margin=0.01)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"images": 0},
        {"images": -1},
        {"images": 2.5},
        {"images": True},
        {"per": 0},
        {"per": -1.0},
        {"per": math.inf},
        {"per": math.nan},
        {"margin": -0.1},
        {"margin": math.inf},
        {"burst": 0},
        {"burst": 51},
        {"burst": 2.0},
    ],
)
def test_rate_limit_refuses_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each message names its field
        RateLimit(**kwargs)  # type: ignore[arg-type]


# -- parse_duration ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("0s", 0.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("1.5s", 1.5),
        ("2m", 120.0),
        ("300us", 0.0003),
        ("300µs", 0.0003),
        ("500ns", 5e-7),
        ("1d", 86400.0),
        ("17ms", 0.017),
        ("2", 2.0),
        ("0.25", 0.25),
        (" 3s ", 3.0),
        ("1m30s", 90.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "1x", "abc", "-1s", "-2", "1s2", "1 s", "inf", "nan"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


# -- the window -------------------------------------------------------------------------


async def test_budget_counts_images_and_returns_after_per_plus_margin() -> None:
    limiter, clock = make(images=10, per=10.0, margin=1.0)
    a = await take(limiter, 4)
    b = await take(limiter, 6)
    a.stamp()
    clock.advance(2.0)
    b.stamp()  # sent at t=2
    waiter = spawn(limiter.acquire(4))
    await settle()
    assert not waiter.done()
    clock.advance(8.9)  # t=10.9: a's window (0 + 10 + 1) not over yet
    await settle()
    assert not waiter.done()
    clock.advance(0.1)  # t=11.0: a's 4 images are back
    await settle()
    assert waiter.done()
    assert waiter.result().images == 4
    small = spawn(limiter.acquire(1))
    await settle()
    assert not small.done()  # b's 6 images come back at 2 + 11 = 13
    clock.advance_to(13.0)
    await settle()
    assert small.done()


async def test_unstamped_permit_holds_budget_until_stamped() -> None:
    limiter, clock = make(images=3, per=10.0)
    held = await take(limiter, 3)
    waiter = spawn(limiter.acquire(1))
    clock.advance(100.0)
    await settle()
    assert not waiter.done()  # taken, not sent: holds the budget however long
    held.stamp()  # sent at t=100: back at t=110
    clock.advance(9.99)
    await settle()
    assert not waiter.done()
    clock.advance(0.01)
    await settle()
    assert waiter.done()
    assert held.stamped_at == 100.0


async def test_fifo_big_request_is_not_starved_by_small_ones() -> None:
    limiter, clock = make(images=10, per=10.0, backfill=False)
    first = await take(limiter, 8)
    first.stamp()
    big = spawn(limiter.acquire(5))
    await settle()
    smalls = [spawn(limiter.acquire(1)) for _ in range(5)]
    await settle()
    # Two images are free, but the big waiter came first: nobody passes it.
    assert not big.done()
    assert not any(t.done() for t in smalls)
    assert limiter.stats().waiting == 6
    clock.advance(10.0)
    await settle()
    assert big.done()
    assert all(t.done() for t in smalls)  # 5 + 5 = 10 fit together, in order
    assert limiter.stats().in_use == 10


async def test_backfill_uses_only_what_the_blocked_head_leaves_spare() -> None:
    limiter, clock = make(images=10, per=10.0)
    (await take(limiter, 8)).stamp()
    big = spawn(limiter.acquire(5))
    await settle()
    smalls = [spawn(limiter.acquire(1)) for _ in range(5)]
    await settle()
    # At t=10 the head fits with 5 to spare; 2 are free now: two small ones pass.
    assert not big.done()
    assert [t.done() for t in smalls] == [True, True, False, False, False]
    clock.advance(9.999)
    await settle()
    assert not big.done()
    clock.advance(0.001)
    await settle()
    assert big.done()  # at t=10, as under strict FIFO
    assert all(t.done() for t in smalls)  # 2 + 5 + 3 = 10


async def test_backfill_takes_the_largest_that_fits_first() -> None:
    limiter, _clock = make(images=10, per=10.0)
    (await take(limiter, 4)).stamp()
    (await take(limiter, 3)).stamp()
    unsent = await take(limiter, 3)
    head = spawn(limiter.acquire(4))
    await settle()
    one = spawn(limiter.acquire(1))
    await settle()
    three = spawn(limiter.acquire(3))
    await settle()
    assert [t.done() for t in (head, one, three)] == [False, False, False]  # nothing is free
    unsent.refund()  # 3 free now; the head fits at t=10 with 3 to spare
    await settle()
    # First fit would let the 1 in and leave 2 idle (the 3 does not fit in them); the
    # small one is kept for a gap the 3 cannot fill.
    assert (head.done(), one.done(), three.done()) == (False, False, True)
    assert limiter.stats().available == 0


async def test_backfill_never_takes_what_the_head_needs() -> None:
    limiter, clock = make(images=10, per=10.0)
    (await take(limiter, 6)).stamp()
    clock.advance(5.0)
    (await take(limiter, 3)).stamp()
    big = spawn(limiter.acquire(5))  # fits at t=10 (6 expire): 7 free, 2 spare
    await settle()
    two = spawn(limiter.acquire(2))  # within the spare, but only 1 is free now
    one = spawn(limiter.acquire(1))
    another = spawn(limiter.acquire(1))  # the spare left is 1, the free 0
    await settle()
    assert not big.done()
    assert not two.done()
    assert one.done()
    assert not another.done()
    clock.advance(5.0)  # t=10
    await settle()
    assert big.done()  # at t=10, as under strict FIFO: 3 + 1 + 5 in use
    assert not two.done()  # the head now; it fits at t=15 with 2 to spare
    assert another.done()  # so the last free image goes to the one behind it
    assert limiter.stats().in_use == 10
    clock.advance(5.0)
    await settle()
    assert two.done()


async def test_backfill_a_stream_of_small_requests_does_not_starve_a_big_one() -> None:
    limiter, clock = make(images=10, per=10.0)
    (await take(limiter, 10)).stamp()
    big = spawn(limiter.acquire(10))
    await settle()
    smalls = []
    for _ in range(9):
        smalls.append(spawn(limiter.acquire(1)))
        clock.advance(1.0)
        await settle()
    assert not any(t.done() for t in smalls)  # no spare at t=10: nothing passes
    clock.advance(1.0)
    await settle()
    assert big.done()


@pytest.mark.parametrize(
    ("headers", "passed"),
    [
        ({"x-ratelimit-remaining-images": "2", "x-ratelimit-reset-images": "20s"}, 2),
        ({"x-ratelimit-remaining-images": "1", "x-ratelimit-reset-images": "20s"}, 1),
        ({"x-ratelimit-remaining-images": "0", "x-ratelimit-reset-images": "20s"}, 0),
        ({"x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "20s"}, 0),
    ],
)
async def test_backfill_within_the_servers_allowance(
    headers: dict[str, str], passed: int
) -> None:
    limiter, clock = make(images=10, per=10.0)
    (await take(limiter, 8)).stamp()
    limiter.observe_headers(headers)
    big = spawn(limiter.acquire(5))
    await settle()
    smalls = [spawn(limiter.acquire(1)) for _ in range(3)]
    await settle()
    assert not big.done()
    assert sum(t.done() for t in smalls) == passed
    clock.advance(10.0)  # the 8 leave both windows: the head fits, as it would in order
    await settle()
    assert big.done()
    for t in smalls:
        t.cancel()
    await settle()


async def test_backfill_may_delay_the_head_by_the_margin_at_most() -> None:
    """One burst is stamped over a few ms: what its first permit frees is not all."""
    limiter, clock = make(images=10, per=10.0, margin=0.5)
    (await take(limiter, 1)).stamp()
    clock.advance(0.2)
    (await take(limiter, 7)).stamp()
    big = spawn(limiter.acquire(3))  # fits at 10.5 with nothing spare; at 10.7 with 7
    await settle()
    smalls = [spawn(limiter.acquire(1)) for _ in range(2)]
    await settle()
    assert all(t.done() for t in smalls)
    clock.advance(10.5 - 0.2)
    await settle()
    assert not big.done()
    clock.advance(0.2)  # t=10.7: within the margin of 10.5
    await settle()
    assert big.done()


async def test_a_pause_widens_the_margin_of_later_sends_up_to_a_cap() -> None:
    limiter, clock = make(images=1, per=10.0, margin=0.1)

    async def window_of_one_send() -> float:
        permit = await take(limiter, 1)
        permit.stamp()
        start = clock.now()
        waiter = spawn(limiter.acquire(1))
        await settle()
        clock.advance_to(clock.next_deadline or start)
        await settle()
        assert waiter.done()
        waiter.result().refund()
        return clock.now() - start

    assert await window_of_one_send() == pytest.approx(10.1)
    limiter.pause(1.0)
    limiter.pause(2.0)  # the same pause: it widens once
    clock.advance(3.0)
    assert await window_of_one_send() == pytest.approx(10.2)
    for _ in range(5):
        limiter.pause(0.5)
        clock.advance(1.0)
    assert await window_of_one_send() == pytest.approx(10.0 * (1 + MAX_MARGIN))


async def test_without_backfill_the_order_is_strict() -> None:
    limiter, _ = make(images=10, per=10.0, backfill=False)
    (await take(limiter, 8)).stamp()
    big = spawn(limiter.acquire(5))
    await settle()
    small = spawn(limiter.acquire(1))
    await settle()
    assert not small.done()
    big.cancel()
    small.cancel()
    await settle()


async def test_fifo_grant_order_follows_arrival_order() -> None:
    limiter, clock = make(images=4, per=1.0)
    blocker = await take(limiter, 4)
    order: list[int] = []

    async def client(i: int, n: int) -> None:
        permit = await limiter.acquire(n)
        order.append(i)
        permit.stamp()

    tasks = [asyncio.ensure_future(client(i, n)) for i, n in enumerate([3, 1, 4, 2, 2, 1, 3])]
    await settle()
    blocker.stamp()
    for _ in range(20):
        clock.advance(1.0)
        await settle()
    assert all(t.done() for t in tasks)
    assert order == list(range(7))


async def test_oversize_request_is_refused_at_once() -> None:
    limiter, _ = make(images=10)
    with pytest.raises(ValidationError) as info:
        await asyncio.wait_for(limiter.acquire(11), timeout=1.0)  # refused, never left to hang
    assert info.value.param == "n"
    assert "11" in str(info.value)
    stats = limiter.stats()
    assert (stats.granted, stats.waiting, stats.in_use) == (0, 0, 0)
    assert (await take(limiter, 10)).images == 10  # the whole budget is fine


@pytest.mark.parametrize("n", [0, -1, 1.5, True, "2", None])
async def test_bad_counts_are_refused(n: object) -> None:
    limiter, _ = make()
    with pytest.raises(ValidationError) as info:
        await asyncio.wait_for(limiter.acquire(n), timeout=1.0)  # type: ignore[arg-type]
    assert info.value.param == "n"


async def test_refusal_does_not_queue_behind_waiters() -> None:
    limiter, _ = make(images=2)
    await take(limiter, 2)
    waiter = spawn(limiter.acquire(1))
    await settle()
    with pytest.raises(ValidationError):
        await asyncio.wait_for(limiter.acquire(3), timeout=1.0)
    assert limiter.stats().waiting == 1
    waiter.cancel()
    await settle()


# -- cancellation -----------------------------------------------------------------------


async def test_cancelled_head_waiter_takes_nothing_and_delays_nobody() -> None:
    limiter, _ = make(images=10, backfill=False)
    (await take(limiter, 7)).stamp()
    big = spawn(limiter.acquire(5))
    await settle()
    small = spawn(limiter.acquire(2))
    await settle()
    assert not small.done()  # behind the big one
    big.cancel()
    await settle()
    assert big.cancelled()
    assert small.done()  # served at once: 7 + 2 <= 10
    stats = limiter.stats()
    assert (stats.granted, stats.waiting, stats.waiting_images) == (9, 0, 0)


async def test_cancelled_waiter_in_the_middle_is_skipped() -> None:
    limiter, clock = make(images=4, per=1.0)
    (await take(limiter, 4)).stamp()
    a = spawn(limiter.acquire(3))
    await settle()
    b = spawn(limiter.acquire(4))
    await settle()
    c = spawn(limiter.acquire(1))
    await settle()
    b.cancel()
    await settle()
    assert not a.done()
    assert not c.done()  # b's leaving does not let c pass a
    assert limiter.stats().waiting == 2
    clock.advance(1.0)
    await settle()
    assert a.done()
    assert c.done()  # 3 + 1: the cancelled 4 took nothing
    assert limiter.stats().granted == 8


async def test_waiter_cancelled_after_grant_but_before_resuming_gives_back() -> None:
    limiter, _ = make(images=3)
    blocker = await take(limiter, 3)
    waiter = spawn(limiter.acquire(2))
    await settle()
    blocker.refund()  # grants the waiter synchronously ...
    waiter.cancel()  # ... which is cancelled before it could run
    await settle()
    assert waiter.cancelled()
    stats = limiter.stats()
    assert stats.in_use == 0
    assert stats.refunded == 5
    assert (await take(limiter, 3)).images == 3


async def test_timeout_while_waiting_takes_nothing() -> None:
    limiter, _ = make(images=1)
    (await take(limiter, 1)).stamp()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(limiter.acquire(1), timeout=0.001)
    stats = limiter.stats()
    assert (stats.waiting, stats.granted) == (0, 1)


async def test_refund_gives_back_at_once_and_serves_the_next() -> None:
    limiter, _ = make(images=5)
    permit = await take(limiter, 5)
    waiter = spawn(limiter.acquire(5))
    await settle()
    assert not waiter.done()
    permit.refund()
    await settle()
    assert waiter.done()
    assert permit.refunded
    permit.refund()  # twice: no-op
    assert limiter.stats().refunded == 5
    with pytest.raises(RuntimeError):
        permit.stamp()


async def test_stamped_permit_stays_spent() -> None:
    limiter, clock = make(images=5, per=10.0)
    permit = await take(limiter, 5)
    permit.stamp()
    permit.stamp()  # idempotent
    permit.refund()  # sent: stays spent
    assert permit.stamped
    assert not permit.refunded
    waiter = spawn(limiter.acquire(1))
    await settle()
    assert not waiter.done()
    assert limiter.stats().refunded == 0
    clock.advance(10.0)
    await settle()
    assert waiter.done()


# -- pauses -----------------------------------------------------------------------------


async def test_concurrent_pauses_merge_into_one() -> None:
    limiter, clock = make(images=10)
    limiter.pause(5.0)
    limiter.pause(3.0)  # inside the first: merged, not counted
    limiter.pause(5.0)
    assert limiter.stats().pauses == 1
    assert limiter.stats().paused_for == 5.0
    waiters = [spawn(limiter.acquire(1)) for _ in range(3)]
    await settle()
    clock.advance(2.0)
    limiter.pause(4.0)  # ends at 6: extends the pause under way, not a new one
    assert limiter.stats().pauses == 1
    assert limiter.stats().paused_for == 4.0
    clock.advance(3.5)  # t=5.5
    await settle()
    assert not any(w.done() for w in waiters)
    clock.advance(0.5)  # t=6
    await settle()
    assert all(w.done() for w in waiters)  # all at once, one cool-down
    assert limiter.stats().paused_for == 0.0


async def test_pause_blocks_the_fast_path() -> None:
    limiter, clock = make(images=10)
    limiter.pause(1.0)
    waiter = spawn(limiter.acquire(1))
    await settle()
    assert not waiter.done()
    clock.advance(1.0)
    await settle()
    assert waiter.done()
    with pytest.raises(ValueError):  # noqa: PT011
        limiter.pause(-1.0)
    with pytest.raises(ValueError):  # noqa: PT011
        limiter.pause(math.nan)


async def test_rate_none_never_waits_for_budget_but_pauses() -> None:
    clock = FakeClock()
    limiter = Limiter(None, clock=clock)
    assert limiter.rate is None
    permits = [await take(limiter, 1000) for _ in range(100)]
    for p in permits:
        p.stamp()
    limiter.observe_headers({"x-ratelimit-remaining-images": "0", "x-ratelimit-reset-images": "9s"})
    assert (await take(limiter, 5)).images == 5
    limiter.pause(2.0)
    waiter = spawn(limiter.acquire(1))
    await settle()
    assert not waiter.done()
    clock.advance(2.0)
    await settle()
    assert waiter.done()
    stats = limiter.stats()
    assert stats.sent == 100_000
    assert stats.available is None
    assert stats.images_per_minute is None
    assert stats.pauses == 1


# -- server headers ---------------------------------------------------------------------


async def test_remaining_zero_blocks_until_reset() -> None:
    limiter, clock = make(images=10)
    limiter.observe_headers(
        {
            "x-ratelimit-limit-images": "10",
            "x-ratelimit-remaining-images": "0",
            "x-ratelimit-reset-images": "2s",
        }
    )
    stats = limiter.stats()
    assert (stats.server_remaining, stats.server_reset_in, stats.server_limit) == (0, 2.0, 10)
    waiter = spawn(limiter.acquire(1))
    await settle()
    clock.advance(1.99)
    await settle()
    assert not waiter.done()
    clock.advance(0.01)
    await settle()
    assert waiter.done()
    assert limiter.stats().server_remaining is None


async def test_remaining_caps_grants_until_reset() -> None:
    limiter, clock = make(images=10)
    limiter.observe_headers(
        {"X-RateLimit-Remaining-Images": "3", "X-RateLimit-Reset-Images": "1m0s"}
    )
    a = await take(limiter, 2)
    b = spawn(limiter.acquire(2))
    await settle()
    assert not b.done()  # 1 left
    a.refund()  # the server never saw those two
    await settle()
    assert b.done()
    clock.advance(60.0)
    assert (await take(limiter, 8)).images == 8  # reset passed: local budget only


async def test_headers_never_raise_the_budget() -> None:
    limiter, _ = make(images=5)
    limiter.observe_headers(
        {"x-ratelimit-remaining-images": "500", "x-ratelimit-reset-images": "1s"}
    )
    await take(limiter, 5)
    waiter = spawn(limiter.acquire(1))
    await settle()
    assert not waiter.done()
    waiter.cancel()
    await settle()


async def test_requests_headers_are_a_fallback_counted_in_requests() -> None:
    limiter, clock = make(images=50)
    limiter.observe_headers(
        {"x-ratelimit-remaining-requests": "2", "x-ratelimit-reset-requests": "500ms"}
    )
    await take(limiter, 4)
    await take(limiter, 4)  # two requests of 4 images
    waiter = spawn(limiter.acquire(1))
    await settle()
    assert not waiter.done()
    clock.advance(0.5)
    await settle()
    assert waiter.done()


async def test_newer_headers_replace_older_and_wake_waiters() -> None:
    limiter, _ = make(images=10)
    limiter.observe_headers(
        {"x-ratelimit-remaining-images": "0", "x-ratelimit-reset-images": "30s"}
    )
    waiter = spawn(limiter.acquire(2))
    await settle()
    assert not waiter.done()
    limiter.observe_headers(
        {"x-ratelimit-remaining-images": "5", "x-ratelimit-reset-images": "30s"}
    )
    await settle()
    assert waiter.done()
    assert limiter.stats().server_remaining == 3


async def test_allowance_grows_back_as_our_sends_leave_the_window() -> None:
    # A saturated server answers remaining=0 with a long reset; our own window moving
    # on must free the allowance too, or the limiter would stall until the reset.
    limiter, clock = make(images=4, per=10.0)
    (await take(limiter, 3)).stamp()
    limiter.observe_headers(
        {"x-ratelimit-remaining-images": "0", "x-ratelimit-reset-images": "30s"}
    )
    waiter = spawn(limiter.acquire(2))
    await settle()
    clock.advance(9.99)
    await settle()
    assert not waiter.done()
    clock.advance(0.01)  # our 3 images left the window: the server freed them too
    await settle()
    assert waiter.done()
    assert limiter.stats().server_remaining == 1
    more = spawn(limiter.acquire(2))
    await settle()
    assert not more.done()  # 2 > 1 until the reset at 30 s
    clock.advance_to(29.99)
    await settle()
    assert not more.done()
    clock.advance_to(30.0)
    await settle()
    assert more.done()


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"content-type": "application/json"},
        {"x-ratelimit-remaining-images": "0"},  # no reset: unknown horizon, ignored
        {"x-ratelimit-remaining-images": "zero", "x-ratelimit-reset-images": "1s"},
        {"x-ratelimit-remaining-images": "0", "x-ratelimit-reset-images": "soon"},
        {"x-ratelimit-remaining-images": "0", "x-ratelimit-reset-images": "0s"},
    ],
)
async def test_unusable_headers_are_ignored(headers: dict[str, str]) -> None:
    limiter, _ = make(images=10)
    limiter.observe_headers(headers)
    assert limiter.stats().server_remaining is None
    assert (await take(limiter, 10)).images == 10


# -- burst spreading --------------------------------------------------------------------


async def test_burst_spreads_the_budget() -> None:
    # 10 images per 10 s, at most 2 per 2 s.
    limiter, clock = make(images=10, per=10.0, burst=2)
    (await take(limiter, 1)).stamp()
    (await take(limiter, 1)).stamp()
    waiter = spawn(limiter.acquire(1))
    await settle()
    assert not waiter.done()
    clock.advance(1.99)
    await settle()
    assert not waiter.done()
    clock.advance(0.01)
    await settle()
    assert waiter.done()
    waiter.result().stamp()
    # A request larger than the burst goes alone once its short window is empty.
    big = spawn(limiter.acquire(3))
    await settle()
    assert not big.done()
    clock.advance(2.0)
    await settle()
    assert big.done()


# -- stats ------------------------------------------------------------------------------


async def test_stats() -> None:
    limiter, clock = make(images=10, per=10.0, margin=1.0)
    empty = limiter.stats()
    assert isinstance(empty, LimiterStats)
    assert empty == LimiterStats(
        granted=0, refunded=0, sent=0, waiting=0, waiting_images=0, held=0, in_window=0,
        in_use=0, available=10, pauses=0, paused_for=0.0, server_remaining=None,
        server_reset_in=None, server_limit=None, images_last_window=0, images_per_minute=0.0,
        waited=0.0,
    )  # fmt: skip
    a = await take(limiter, 3)
    a.stamp()
    b = await take(limiter, 2)
    c = await take(limiter, 4)
    c.refund()
    waiter = spawn(limiter.acquire(9))
    await settle()
    s = limiter.stats()
    assert (s.granted, s.refunded, s.sent) == (9, 4, 3)
    assert (s.waiting, s.waiting_images) == (1, 9)
    assert (s.held, s.in_window, s.in_use, s.available) == (2, 3, 5, 5)
    assert s.images_last_window == 3
    assert s.images_per_minute == pytest.approx(18.0)
    clock.advance(10.0)  # a was sent 10 s ago: out of the last window, still holding budget
    s = limiter.stats()
    assert (s.images_last_window, s.in_window) == (0, 3)
    clock.advance(1.0)
    b.stamp()
    await settle()
    s = limiter.stats()
    assert (s.in_window, s.held, s.images_last_window) == (2, 0, 2)
    assert not waiter.done()  # 2 + 9 > 10
    waiter.cancel()
    await settle()


# -- protocols and the default clock ----------------------------------------------------


async def test_limiter_satisfies_the_protocols() -> None:
    limiter: RateLimiter = Limiter(RateLimit(2, 1.0))
    permit = await asyncio.wait_for(limiter.acquire(1), timeout=1.0)
    assert isinstance(permit, RatePermit)
    assert "held" in repr(permit)
    permit.refund()
    assert "refunded" in repr(permit)


async def test_monotonic_clock_really_waits() -> None:
    # The only real wait in this file: 30 ms.
    limiter = Limiter(RateLimit(1, 0.03, margin=0.0))
    assert isinstance(limiter._clock, MonotonicClock)
    started = time.monotonic()
    (await take(limiter, 1)).stamp()
    await take(limiter, 1)
    elapsed = time.monotonic() - started
    assert 0.025 <= elapsed < 1.0
    await limiter._clock.sleep_until(time.monotonic() + 0.001)


def test_one_limiter_serves_successive_event_loops() -> None:
    clock = FakeClock()
    limiter = Limiter(RateLimit(2, 1.0, margin=0.0), clock=clock)  # no loop here

    async def use() -> None:
        (await take(limiter, 2)).stamp()
        waiter = spawn(limiter.acquire(1))
        await settle()
        clock.advance(1.0)
        await settle()
        waiter.result().stamp()
        clock.advance(1.0)

    asyncio.run(use())
    asyncio.run(use())
    assert limiter.stats().sent == 6


def test_fake_clock() -> None:
    clock = FakeClock(5.0)
    seen: list[float] = []
    clock.call_at(7.0, lambda: seen.append(clock.now()))
    cancelled = clock.call_at(6.0, lambda: seen.append(-1.0))

    def chain() -> None:
        clock.call_at(6.8, lambda: seen.append(clock.now()))

    clock.call_at(6.5, chain)
    cancelled.cancel()
    assert clock.next_deadline == 6.5
    clock.advance(3.0)
    assert seen == [6.8, 7.0]
    assert clock.now() == 8.0
    assert clock.next_deadline is None
    with pytest.raises(ValueError):  # noqa: PT011
        clock.advance(-1.0)


# -- the invariant under random traffic -------------------------------------------------

_client = st.tuples(
    st.integers(0, 8),  # arrival gap, in half-seconds
    st.integers(1, 12),  # n (clipped to the budget)
    st.integers(0, 6),  # hold before sending, in half-seconds
    st.sampled_from(["stamp", "stamp", "stamp", "refund", "cancel"]),
    st.integers(0, 12),  # cancel after, in half-seconds (for "cancel")
)


def _max_in_window(stamps: list[tuple[float, int]], width: float) -> int:
    """The most images stamped in any half-open window [t, t + width)."""
    stamps = sorted(stamps)
    worst = 0
    for i, (start, _) in enumerate(stamps):
        total = sum(n for s, n in stamps[i:] if s < start + width - 1e-9)
        worst = max(worst, total)
    return worst


async def _simulate(
    rate: RateLimit,
    clients: list[tuple[int, int, int, str, int]],
    pauses: list[tuple[int, int]],
    headers: list[tuple[int, int, int]] | None = None,
    backfill: bool = False,
) -> tuple[list[tuple[float, int]], Limiter]:
    """Run the clients on a FakeClock; check liveness, strict FIFO, leaks; return the stamps."""
    clock = FakeClock()
    limiter = Limiter(rate, clock=clock, backfill=backfill)
    stamps: list[tuple[float, int]] = []
    calls: list[int] = []  # indices in order of acquire calls
    granted: dict[int, float] = {}
    tasks: dict[int, asyncio.Task[None]] = {}

    async def client(i: int, at: float, n: int, hold: float, outcome: str) -> None:
        await clock.sleep_until(at)
        calls.append(i)
        permit = await limiter.acquire(n)
        granted[i] = clock.now()
        await clock.sleep_until(clock.now() + hold)
        try:
            if outcome == "refund":
                return
            permit.stamp()
            stamps.append((clock.now(), n))
        finally:
            permit.refund()

    async def canceller(i: int, at: float) -> None:
        await clock.sleep_until(at)
        if i not in granted:
            tasks[i].cancel()

    async def pauser(at: float, seconds: float) -> None:
        await clock.sleep_until(at)
        limiter.pause(seconds)

    async def server(at: float, remaining: int, reset: float) -> None:
        await clock.sleep_until(at)
        limiter.observe_headers(
            {
                "x-ratelimit-remaining-images": str(remaining),
                "x-ratelimit-reset-images": f"{reset}s",
            }
        )

    helpers = []
    at = 0.0
    for i, (gap, n, hold, outcome, cancel_after) in enumerate(clients):
        at += gap / 2
        n = min(n, rate.images)
        tasks[i] = asyncio.ensure_future(client(i, at, n, hold / 2, outcome))
        if outcome == "cancel":
            helpers.append(asyncio.ensure_future(canceller(i, at + cancel_after / 2)))
    helpers += [asyncio.ensure_future(pauser(a / 2, s / 2)) for a, s in pauses]
    helpers += [asyncio.ensure_future(server(a / 2, r, d / 2)) for a, r, d in headers or []]
    for _ in range(100_000):
        await settle(10)
        deadline = clock.next_deadline
        if deadline is None:
            break
        clock.advance_to(deadline)
    await settle()
    # Liveness: nobody is left hanging.
    assert all(t.done() for t in tasks.values()), "a waiter hangs"
    assert all(t.done() for t in helpers)
    for i, task in tasks.items():
        assert task.cancelled() == (clients[i][3] == "cancel" and i not in granted)
        if not task.cancelled():
            assert task.exception() is None
    # Nothing leaks: all budget is back once every window is over.
    clock.advance(rate.window + 1)
    stats = limiter.stats()
    assert (stats.waiting, stats.held, stats.in_use) == (0, 0, 0)
    assert stats.available == rate.images
    # FIFO: a client that called acquire earlier was granted no later.
    order = [granted[i] for i in calls if i in granted]
    assert backfill or order == sorted(order), "served out of order"
    return stamps, limiter


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    images=st.integers(1, 12),
    margin=st.sampled_from([0.0, 0.5]),
    clients=st.lists(_client, min_size=1, max_size=25),
    pauses=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 8)), max_size=3),
    headers=st.lists(
        st.tuples(st.integers(0, 40), st.integers(0, 12), st.integers(0, 20)), max_size=3
    ),
    backfill=st.booleans(),
)
def test_window_invariant_under_random_traffic(
    images: int,
    margin: float,
    clients: list[tuple[int, int, int, str, int]],
    pauses: list[tuple[int, int]],
    headers: list[tuple[int, int, int]],
    backfill: bool,
) -> None:
    rate = RateLimit(images, 5.0, margin=margin)
    stamps, limiter = asyncio.run(_simulate(rate, clients, pauses, headers, backfill))
    assert _max_in_window(stamps, rate.per) <= images
    if margin:  # with a margin, even the closed window [t, t + per] holds
        assert _max_in_window(stamps, rate.per + 1e-6) <= images
    assert limiter.stats().sent == sum(n for _, n in stamps)


@settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    burst=st.integers(1, 6),
    clients=st.lists(_client, min_size=1, max_size=20),
)
def test_burst_invariant_under_random_traffic(
    burst: int, clients: list[tuple[int, int, int, str, int]]
) -> None:
    rate = RateLimit(12, 6.0, margin=0.0, burst=burst)
    small = [(gap, min(n, burst), hold, outcome, c) for gap, n, hold, outcome, c in clients]
    stamps, _ = asyncio.run(_simulate(rate, small, []))
    assert _max_in_window(stamps, rate.per) <= rate.images
    assert _max_in_window(stamps, rate.per * burst / rate.images) <= burst


async def test_waited_is_wall_time_with_anyone_waiting() -> None:
    limiter, clock = make(images=2, per=10.0, margin=0.0)
    first = await take(limiter, 2)
    first.stamp()
    waiters = [spawn(limiter.acquire(1)) for _ in range(3)]  # three at once: counted once
    await settle()
    clock.advance(4.0)
    assert limiter.stats().waited == 4.0
    clock.advance(6.0)  # t=10: the window frees 2; one waiter is left
    await settle()
    assert sum(w.done() for w in waiters) == 2
    cancelled = next(w for w in waiters if not w.done())
    clock.advance(1.0)
    cancelled.cancel()
    await settle()
    assert limiter.stats().waiting == 0
    clock.advance(5.0)  # nobody waits: the figure stands still
    assert limiter.stats().waited == 11.0


async def test_stats_in_use_is_the_budget_in_use_and_empties_after_the_window() -> None:
    limiter, clock = make(images=10, per=10.0)
    held = await take(limiter, 2)
    sent = await take(limiter, 3)
    sent.stamp()
    stats = limiter.stats()
    assert not hasattr(stats, "in_flight")  # the old name said "in flight" after the run
    assert (stats.held, stats.in_window, stats.in_use) == (2, 3, 5)
    held.stamp()
    clock.advance(10.0)
    assert limiter.stats().in_use == 0


async def test_a_repeated_header_counts_its_first_value_as_everywhere_else() -> None:
    from multidict import CIMultiDict

    limiter, _clock = make(images=10)
    limiter.observe_headers(CIMultiDict([
        ("X-RateLimit-Remaining-Images", "2"), ("x-ratelimit-remaining-images", "9"),
        ("X-RATELIMIT-RESET-IMAGES", "1m0s"),
    ]))
    assert limiter.stats().server_remaining == 2


# -- preload: what an earlier run spent --------------------------------------------------


async def test_preload_counts_sends_still_in_the_window() -> None:
    limiter, clock = make(images=4, per=10.0)
    # Three images 2 s ago, one 9 s ago, and one 11 s ago (its window has closed).
    assert limiter.preload([(2.0, 3), (9.0, 1), (11.0, 5)]) == 4
    assert limiter.stats().available == 0
    waiter = spawn(limiter.acquire(1))
    await settle()
    assert not waiter.done()
    clock.advance(0.99)  # the send 9 s ago leaves at 1.0 s from the start
    await settle()
    assert not waiter.done()
    clock.advance(0.02)
    await settle()
    assert waiter.done()
    waiter.result().stamp()
    more = spawn(limiter.acquire(3))
    await settle()
    assert not more.done()
    clock.advance(7.0)  # the three of 2 s ago leave at 8 s
    await settle()
    assert more.done()


async def test_preload_refuses_odd_sends_and_does_nothing_without_a_rate() -> None:
    limiter, _ = make()
    with pytest.raises(ValueError, match="seconds_ago"):
        limiter.preload([(-1.0, 1)])
    with pytest.raises(ValueError, match="images"):
        limiter.preload([(1.0, 0)])
    assert Limiter(None).preload([(1.0, 3)]) == 0


# -- a 429's refused request is not counted; the margin from measured lags ---------------


async def test_a_refused_permit_is_held_for_its_retry_ahead_of_the_waiters() -> None:
    limiter, clock = make(images=4, per=10.0)
    first, refused = await take(limiter, 2), await take(limiter, 2)
    first.stamp()
    refused.stamp()
    waiter = spawn(limiter.acquire(2))
    await settle()
    assert refused.keep_for_retry()  # the server answered 429: it did not count this one
    limiter.pause(1.0)  # the 429's wait, decided in the same step
    stats = limiter.stats()
    assert (stats.in_window, stats.held, stats.refunded, stats.granted) == (2, 2, 2, 6)
    resumed = asyncio.ensure_future(refused.resumed())
    clock.advance(0.99)
    await settle()
    assert not resumed.done()
    clock.advance(0.01)
    await settle()
    assert resumed.done()  # after the pause, not after anyone's window
    assert not waiter.done()  # the images stayed with the refused request
    refused.stamp()  # the retry is on the wire: its window starts now
    assert refused.stamped_at == 1.0
    clock.advance(9.0)  # `first` leaves at 10.0
    await settle()
    assert waiter.done()
    clock.advance(0.9)
    assert limiter.stats().in_window == 2  # the retry leaves at 11.0, its first send at 10.0
    clock.advance(0.2)
    assert limiter.stats().in_window == 0


async def test_a_held_retry_that_is_not_sent_gives_its_images_back() -> None:
    limiter, _clock = make(images=2, per=10.0)
    refused = await take(limiter, 2)
    refused.stamp()
    assert refused.keep_for_retry()
    waiter = spawn(limiter.acquire(1))
    await settle()
    assert not waiter.done()
    refused.refund()  # the retry was given up (no retries left, or cancelled)
    await settle()
    assert waiter.done()
    assert limiter.stats().available == 1


async def test_keep_for_retry_needs_a_stamp_and_an_open_window() -> None:
    limiter, clock = make(images=2, per=10.0)
    held = await take(limiter, 1)
    assert not held.keep_for_retry()
    assert limiter.stats().held == 1
    held.stamp()
    clock.advance(11.0)
    assert not held.keep_for_retry()  # the answer came after its window: spent
    assert held.refunded
    assert limiter.stats().available == 2
    assert not held.keep_for_retry()  # once only


async def test_a_retry_whose_burst_window_is_over_is_not_held() -> None:
    limiter, clock = make(images=4, per=10.0, burst=2)
    permit = await take(limiter, 1)
    permit.stamp()
    clock.advance(6.0)  # the burst window (5 s) is over, the minute's (10 s) is not
    assert not permit.keep_for_retry()
    assert limiter.stats().in_window == 0
    assert limiter.stats().available == 4


async def test_resumed_returns_at_once_without_a_pause() -> None:
    limiter, _clock = make(images=1, per=10.0)
    permit = await take(limiter, 1)
    await asyncio.wait_for(permit.resumed(), 0.1)


async def test_the_margin_grows_to_the_spread_of_measured_lags_up_to_the_cap() -> None:
    limiter, clock = make(images=1, per=10.0)
    for lag in (0.05, 0.25):
        permit = await take(limiter, 1)
        permit.stamp()
        clock.advance(3.0 + lag)
        note_answer(permit, {"openai-processing-ms": "3000"}, 200)
        clock.advance(10.0)
    permit = await take(limiter, 1)
    permit.stamp()
    waiter = spawn(limiter.acquire(1))
    clock.advance(10.19)
    await settle()
    assert not waiter.done()  # the window is per + 0.2 s (0.25 - 0.05) now
    clock.advance(0.02)
    await settle()
    assert waiter.done()
    (await waiter).stamp()
    note_answer(permit, {"openai-processing-ms": "0"}, 200)  # a lag of 10.2 s: capped
    assert limiter._span == pytest.approx(10.0 + 10.0 * MAX_LAG_MARGIN)


async def test_note_answer_dates_the_count_from_when_the_headers_arrived() -> None:
    limiter, clock = make(images=1, per=10.0)
    permit = await take(limiter, 1)
    permit.stamp()
    waiter = spawn(limiter.acquire(1))
    clock.advance(3.0)
    # 1 s at the server; the answer then waited 0.5 s in the client: counted by 1.5 at
    # the latest, not by 2.0.
    note_answer(permit, {"openai-processing-ms": "1000"}, 200, waited=0.5)
    clock.advance(8.49)
    await settle()
    assert not waiter.done()
    clock.advance(0.02)
    await settle()
    assert waiter.done()


async def test_note_answer_reads_the_header_and_the_status() -> None:
    limiter, _clock = make(images=2, per=10.0)
    permit = await take(limiter, 1)
    permit.stamp()
    note_answer(permit, {"openai-processing-ms": "junk"}, 200)
    note_answer(permit, None, 500)
    assert permit.stamped
    assert note_answer(permit, {}, 429)  # held for the retry
    assert (permit.stamped, permit.refunded) == (False, False)
    assert limiter.stats().held == 1
    permit.refund()
    assert limiter.stats().available == 2


async def test_an_answer_moves_the_window_to_when_the_server_counted_it() -> None:
    limiter, clock = make(images=2, per=10.0)
    early, late = await take(limiter, 1), await take(limiter, 1)
    early.stamp()
    late.stamp()
    waiter = spawn(limiter.acquire(2))
    clock.advance(2.0)
    # The server spent 1.5 s of the 2: it counted `late` 0.5 s after its stamp at the latest.
    note_answer(late, {"openai-processing-ms": "1500"}, 200)
    note_answer(early, {"openai-processing-ms": "2000"}, 200)  # counted at the stamp
    clock.advance(8.4)
    await settle()
    assert not waiter.done()  # `late` leaves the window at 10.5, not 10
    assert limiter.stats().in_window == 1
    clock.advance(0.2)
    await settle()
    assert waiter.done()
