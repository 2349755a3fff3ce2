"""RedisLimiter against a real redis-server: the Lua logic with a fake clock, then the
limiter itself in real (short) time.

The logic tests call the script exactly as the limiter does, but pass the time
(milliseconds) instead of letting it read Redis's ``TIME``: the same code runs in
the same Redis, so the fake clock hides nothing but the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from asyncimg import (
    AsyncImagesClient,
    LimiterUnavailableError,
    RateLimit,
    ValidationError,
)
from asyncimg.testing import Emulator

from ._redis_server import RedisServer, redis_server_binary, running_redis

redis_asyncio = pytest.importorskip("redis.asyncio")

from asyncimg._redis import _SCRIPT, RedisLimiter, _Reply  # noqa: E402


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the module; each test uses its own limiter name."""
    with running_redis() as server:
        yield server


@pytest.fixture
def name() -> str:
    return "t-" + uuid.uuid4().hex[:12]


@pytest.fixture
async def r(redis_server: RedisServer) -> AsyncIterator[Any]:
    client = redis_asyncio.Redis.from_url(redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()


# -- the script, with a fake clock ---------------------------------------------------------

LIMIT, WINDOW, PER, LEASE = 5, 1000, 900, 500


class Lua:
    """The limiter's script for a budget of 5 images per 900 ms (+100 ms margin);
    ``burst`` 2 adds a window of 400 ms holding at most 2."""

    def __init__(self, r: Any, name: str, burst: int = 0) -> None:
        self.script = r.register_script(_SCRIPT)
        base = f"asyncimg:{{{name}}}:"
        self.keys = [base + k for k in ("st", "win", "held", "q", "ql", "ep", "sub")]
        self.channel = base + "wake"
        self.burst = (burst, WINDOW * burst // LIMIT)

    async def __call__(self, op: str, sid: str, now: int, *args: Any) -> _Reply:
        raw = await self.script(
            keys=self.keys,
            args=[op, sid, LIMIT, WINDOW, PER, LEASE, *self.burst, self.channel, now, *args],
        )
        return _Reply.from_redis(raw)

    async def take(self, sid: str, now: int, *tickets: str, held: tuple[str, ...] = ()) -> _Reply:
        return await self("take", sid, now, len(held), *held, *tickets)


def state(reply: _Reply) -> dict[str, int]:
    names = ("granted", "refunded", "sent", "waiting", "waiting_images", "held", "in_window",
             "available", "pauses", "paused_ms", "allow", "reset_ms", "server_limit", "last")
    return dict(zip(names, reply.state, strict=True))


@pytest.fixture
def lua(r: Any, name: str) -> Lua:
    return Lua(r, name)


async def test_fifo_a_small_request_does_not_overtake_a_big_one(lua: Lua) -> None:
    assert (await lua("acquire", "a", 0, "a:1:3")).granted == ("a:1:3",)
    b = await lua("acquire", "b", 10, "b:1:3")
    assert b.granted == ()
    assert b.mine == 2  # b heads the queue, and must wait
    c = await lua("acquire", "c", 20, "c:1:1")
    assert c.granted == ()  # 2 images are free, but b came first
    assert state(c)["waiting"] == 2
    await lua("settle", "a", 30, "s:a:1:3")
    b = await lua.take("b", 40, "b:1:3")
    assert b.granted == ()
    assert b.wait == pytest.approx(0.99)  # a's images leave at 30 + 1000
    b = await lua.take("b", 1030, "b:1:3")
    assert b.granted == ("b:1:3",)
    c = await lua.take("c", 1031, "c:1:1")
    assert c.granted == ("c:1:1",)
    assert state(c) | {"last": 0} == state(c) | {
        "granted": 7, "sent": 3, "waiting": 0, "held": 4, "in_window": 0, "available": 1,
    }


async def test_one_acquire_call_grants_in_order_then_queues_the_rest(lua: Lua) -> None:
    reply = await lua("acquire", "a", 0, "a:1:2", "a:2:2", "a:3:2", "a:4:1")
    assert reply.granted == ("a:1:2", "a:2:2")
    assert (state(reply)["waiting"], state(reply)["waiting_images"]) == (2, 3)
    assert reply.mine == 2  # a:4:1 would fit, but a:3:2 came first


async def test_one_settle_call_applies_its_items_in_order(lua: Lua) -> None:
    await lua("acquire", "a", 0, "a:1:2", "a:2:2")
    s = state(await lua("settle", "a", 5, "s:a:1:2", "r:a:2:2", "o:1:3000:1:-1", "p:100"))
    assert (s["sent"], s["refunded"], s["in_window"], s["held"]) == (2, 2, 2, 0)
    assert (s["allow"], s["paused_ms"], s["pauses"]) == (1, 100, 1)


async def test_the_window_counts_images_at_send_time(lua: Lua) -> None:
    await lua("acquire", "a", 0, "a:1:5")
    await lua("settle", "a", 200, "s:a:1:5")  # the window starts at the send, not the grant
    assert (await lua("acquire", "b", 1199, "b:1:1")).granted == ()
    assert (await lua.take("b", 1200, "b:1:1")).granted == ("b:1:1",)


async def test_a_dead_waiter_leaves_the_queue_after_its_lease(lua: Lua) -> None:
    await lua("acquire", "a", 0, "a:1:5")
    await lua("settle", "a", 0, "s:a:1:5")
    await lua("acquire", "dead", 10, "dead:1:2")  # then never heard of again
    await lua("acquire", "e", 20, "e:1:1")
    assert state(await lua.take("e", 300, "e:1:1"))["waiting"] == 2
    e = await lua.take("e", 600, "e:1:1")  # the dead one's lease lapsed at 510
    assert state(e)["waiting"] == 1
    assert state(e)["waiting_images"] == 1
    assert (await lua.take("e", 1000, "e:1:1")).granted == ("e:1:1",)


async def test_a_held_permit_of_a_dead_holder_counts_as_sent_at_its_lease_end(lua: Lua) -> None:
    await lua("acquire", "a", 0, "a:1:2")
    s = state(await lua("stats", "x", 499))
    assert (s["held"], s["in_window"], s["available"]) == (2, 0, 3)
    s = state(await lua("stats", "x", 600))  # lapsed at 500: it may have been sent
    assert (s["held"], s["in_window"], s["sent"], s["available"]) == (0, 2, 2, 3)
    assert state(await lua("stats", "x", 1499))["available"] == 3
    assert state(await lua("stats", "x", 1500))["available"] == 5


async def test_renewing_a_held_lease_keeps_it_held(lua: Lua) -> None:
    await lua("acquire", "a", 0, "a:1:2")
    await lua.take("a", 400, held=("a:1:2",))
    assert state(await lua("stats", "x", 800))["held"] == 2
    await lua("settle", "a", 850, "r:a:1:2")
    s = state(await lua("stats", "x", 851))
    assert (s["held"], s["refunded"], s["available"]) == (0, 2, 5)


async def test_a_refund_comes_back_at_once_and_wakes_the_next_process(r: Any, lua: Lua) -> None:
    pubsub = r.pubsub()
    await pubsub.subscribe(lua.channel)
    await lua("acquire", "a", 0, "a:1:5")
    await lua("acquire", "b", 1, "b:1:1")
    await lua("settle", "a", 2, "r:a:1:5")
    message = None
    for _ in range(20):
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message:
            break
    await pubsub.aclose()
    assert message is not None
    assert message["data"] == b"b"  # only the head's owner is told
    assert (await lua.take("b", 3, "b:1:1")).granted == ("b:1:1",)


async def test_a_cancelled_waiter_takes_nothing_and_unblocks_the_next(lua: Lua) -> None:
    await lua("acquire", "a", 0, "a:1:4")
    await lua("acquire", "b", 1, "b:1:2")
    await lua("acquire", "c", 2, "c:1:1")
    s = state(await lua("settle", "b", 3, "r:b:1:2"))
    assert (s["waiting"], s["waiting_images"], s["refunded"]) == (1, 1, 0)
    assert (await lua.take("c", 4, "c:1:1")).granted == ("c:1:1",)


async def test_a_pause_holds_everyone_until_it_ends(lua: Lua) -> None:
    await lua("settle", "a", 0, "p:300")
    b = await lua("acquire", "b", 10, "b:1:1")
    assert (b.granted, b.mine, b.wait) == ((), 2, pytest.approx(0.29))
    await lua("settle", "c", 100, "p:50")  # ends sooner: changes nothing
    s = state(await lua("settle", "c", 200, "p:200"))  # a 429 meanwhile: extends, no new pause
    assert (s["pauses"], s["paused_ms"]) == (1, 200)
    assert (await lua.take("b", 399, "b:1:1")).granted == ()
    assert (await lua.take("b", 400, "b:1:1")).granted == ("b:1:1",)


async def test_the_servers_word_caps_grants_until_its_reset(lua: Lua) -> None:
    s = state(await lua("settle", "a", 0, "o:1:2000:1:50"))
    assert (s["allow"], s["reset_ms"], s["server_limit"]) == (1, 2000, 50)
    assert (await lua("acquire", "a", 0, "a:1:1")).granted == ("a:1:1",)
    await lua("settle", "a", 0, "s:a:1:1")
    b = await lua("acquire", "b", 1, "b:1:1")
    assert b.granted == ()
    assert b.wait == pytest.approx(0.999)  # our own send leaves the window before the reset
    assert (await lua.take("b", 1000, "b:1:1")).granted == ("b:1:1",)


async def test_a_burst_spreads_the_budget(r: Any, name: str) -> None:
    lua = Lua(r, name, burst=2)
    assert (await lua("acquire", "a", 0, "a:1:2")).granted == ("a:1:2",)
    b = await lua("acquire", "b", 1, "b:1:1")
    assert b.granted == ()  # 3 of 5 are free, but the burst window holds 2
    await lua("settle", "a", 10, "s:a:1:2")
    b = await lua.take("b", 20, "b:1:1")
    assert (b.granted, b.wait) == ((), pytest.approx(0.39))  # 10 + 400 ms
    assert (await lua.take("b", 410, "b:1:1")).granted == ("b:1:1",)
    await lua("settle", "b", 410, "s:b:1:1")
    big = await lua("acquire", "c", 1000, "c:1:3")  # larger than the burst: sent alone
    assert big.granted == ()  # a's 2 are still in the window until 1010
    assert (await lua.take("c", 1010, "c:1:3")).granted == ("c:1:3",)  # b's burst ended at 810


async def test_a_lapsed_permit_stays_in_the_burst_window_too(r: Any, name: str) -> None:
    lua = Lua(r, name, burst=2)
    await lua("acquire", "dead", 0, "dead:1:2")  # never stamped: lapses at 500
    assert (await lua("acquire", "b", 600, "b:1:1")).granted == ()
    assert (await lua.take("b", 899, "b:1:1")).granted == ()
    assert (await lua.take("b", 900, "b:1:1")).granted == ("b:1:1",)  # 500 + 400


async def test_after_redis_lost_its_state_waiters_rejoin_and_stamps_count(r: Any, lua: Lua) -> None:
    await lua("acquire", "a", 0, "a:1:5")
    await lua("acquire", "b", 1, "b:1:1")
    await r.flushall()  # a restart without persistence
    await lua("settle", "a", 2, "s:a:1:5")  # the send still counts
    b = await lua.take("b", 3, "b:1:1")
    assert b.granted == ()
    assert (state(b)["waiting"], state(b)["in_window"]) == (1, 5)
    assert (await lua.take("b", 1002, "b:1:1")).granted == ("b:1:1",)


async def test_every_key_is_under_the_prefix_and_expires(r: Any, name: str) -> None:
    lua = Lua(r, name)
    await lua("acquire", "a", "", "a:1:1")  # Redis's own clock
    await lua("acquire", "b", "", "b:1:5")
    await lua("settle", "a", "", "s:a:1:1")
    keys = [k.decode() for k in await r.keys(f"*{name}*")]
    assert keys
    assert all(k.startswith(f"asyncimg:{{{name}}}:") for k in keys)
    for key in keys:
        assert 0 < await r.pttl(key) <= WINDOW + LEASE + 10000


# -- the limiter, in real time ----------------------------------------------------------------


def limiter(url: str, name: str, rate: RateLimit, **kwargs: Any) -> RedisLimiter:
    return RedisLimiter.from_url(url, rate=rate, name=name, **kwargs)


Shared = Callable[..., RedisLimiter]


@pytest.fixture
async def shared(
    redis_server: RedisServer, name: str
) -> AsyncIterator[Shared]:
    """Makes limiters on one budget (this test's name); all closed at the end."""
    made: list[RedisLimiter] = []

    def make(rate: RateLimit, **kwargs: Any) -> RedisLimiter:
        made.append(limiter(redis_server.url, name, rate, **kwargs))
        return made[-1]

    yield make
    for lim in made:
        await lim.aclose()


async def test_two_limiters_share_one_window(shared: Shared) -> None:
    rate = RateLimit(4, 0.4, margin=0.05)
    a, b = shared(rate), shared(rate)
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def send(lim: RedisLimiter) -> float:
        permit = await lim.acquire(1)
        permit.stamp()
        return loop.time() - start

    times = sorted(await asyncio.gather(*(send(a if i % 2 else b) for i in range(8))))
    assert max(times[:4]) < 0.3
    assert min(times[4:]) >= 0.44
    stats = await a.fetch_stats()
    assert (stats.sent, stats.granted, stats.waiting, stats.in_window) == (8, 8, 0, 4)
    assert stats.images_last_window == 4


async def test_a_burst_is_spread_across_processes(shared: Shared) -> None:
    rate = RateLimit(4, 0.4, margin=0.0, burst=2)  # at most 2 in any 0.2 s
    a, b = shared(rate), shared(rate)
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def send(lim: RedisLimiter) -> float:
        (await lim.acquire(1)).stamp()
        return loop.time() - start

    times = sorted(await asyncio.gather(*(send(a if i % 2 else b) for i in range(4))))
    assert max(times[:2]) < 0.15
    assert min(times[2:]) >= 0.19


async def test_concurrent_acquires_share_round_trips(shared: Shared) -> None:
    lim = shared(RateLimit(100, 10.0))
    permits = await asyncio.gather(*(lim.acquire(1) for _ in range(50)))
    for permit in permits:
        permit.stamp()
    stats = await lim.fetch_stats()
    assert (stats.granted, stats.sent) == (50, 50)
    assert lim.round_trips <= 6  # batched: not 100 calls, nor 50 connections


async def test_a_refund_elsewhere_wakes_a_waiter_at_once(shared: Shared) -> None:
    rate = RateLimit(1, 30.0)
    a = shared(rate, lease=6.0)  # renewals every 2 s: not what wakes
    b = shared(rate, lease=6.0)
    held = await a.acquire(1)
    waiter = asyncio.ensure_future(b.acquire(1))
    await asyncio.sleep(0.1)
    assert not waiter.done()
    started = time.monotonic()
    held.refund()
    permit = await asyncio.wait_for(waiter, 1.5)
    assert time.monotonic() - started < 1.0  # not the next renewal
    permit.refund()


async def test_a_waiter_behind_its_own_unsent_permits_wakes_when_they_are_sent(
    shared: Shared,
) -> None:
    lim = shared(RateLimit(2, 0.3, margin=0.0), lease=6.0)  # renewals every 2 s
    first, second = await lim.acquire(1), await lim.acquire(1)
    waiter = asyncio.ensure_future(lim.acquire(1))  # no expiry to wait for yet
    await asyncio.sleep(0.05)
    started = time.monotonic()
    first.stamp()
    second.stamp()
    (await asyncio.wait_for(waiter, 2.0)).refund()
    assert 0.25 <= time.monotonic() - started < 1.5  # the stamps' window, not a renewal


async def test_a_waiter_longer_than_its_lease_keeps_its_place(shared: Shared) -> None:
    rate = RateLimit(1, 1.0, margin=0.0)
    a, b, c = (shared(rate, lease=0.45) for _ in range(3))
    (await a.acquire(1)).stamp()
    first = asyncio.ensure_future(b.acquire(1))
    await asyncio.sleep(0.1)
    second = asyncio.ensure_future(c.acquire(1))
    permit = await asyncio.wait_for(first, 2.0)  # about 0.9 s: twice its lease
    assert not second.done()  # renewed, so never sent to the back of the queue
    assert b.stats().waited >= 0.7
    permit.refund()
    (await asyncio.wait_for(second, 0.5)).refund()


async def test_a_cancelled_waiter_takes_nothing(shared: Shared) -> None:
    rate = RateLimit(1, 30.0)
    a, b = shared(rate), shared(rate)
    held = await a.acquire(1)
    waiter = asyncio.ensure_future(b.acquire(1))
    await asyncio.sleep(0.05)
    waiter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiter
    held.refund()
    permit = await asyncio.wait_for(a.acquire(1), 0.5)  # nobody stands in the queue
    stats = await a.fetch_stats()
    assert (stats.waiting, stats.granted, stats.refunded, stats.held) == (0, 2, 1, 1)
    permit.refund()


async def test_a_pause_in_one_process_holds_the_others(shared: Shared) -> None:
    rate = RateLimit(10, 10.0)
    a, b = shared(rate), shared(rate)
    started = time.monotonic()
    a.pause(0.3)  # a 429's Retry-After
    await a.acquire(1)  # a's own next acquire waits until Redis has the pause
    assert time.monotonic() - started >= 0.28
    a.pause(0.3)
    await asyncio.sleep(0.05)  # the pause has reached Redis
    await b.acquire(1)
    assert time.monotonic() - started >= 0.58
    assert (await b.fetch_stats()).pauses == 2


async def test_aclose_leaves_no_task_and_fails_the_waiters(shared: Shared) -> None:
    lim = shared(RateLimit(1, 30.0))
    before = asyncio.all_tasks()
    (await lim.acquire(1)).stamp()
    waiter = asyncio.ensure_future(lim.acquire(1))  # starts the pump and the listener
    await asyncio.sleep(0.1)
    await lim.aclose()
    with pytest.raises(LimiterUnavailableError, match="closed"):
        await waiter
    assert asyncio.all_tasks() == before
    assert (await shared(RateLimit(1, 30.0)).fetch_stats()).waiting == 0  # it left the queue


def test_a_loop_that_ends_without_aclose_leaves_nothing_pending_nor_open(
    redis_server: RedisServer, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    made: list[asyncio.Task[Any]] = []

    def record(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        made.append(asyncio.Task(coro, loop=loop, **kwargs))
        return made[-1]

    async def main() -> None:
        asyncio.get_running_loop().set_task_factory(record)
        rate = RateLimit(1, 30.0)
        a, b = limiter(redis_server.url, name, rate), limiter(redis_server.url, name, rate)
        (await a.acquire(1)).stamp()  # a's settler
        waiter = asyncio.ensure_future(b.acquire(1))  # b's submitter, pump and listener
        await asyncio.sleep(0.1)
        assert not waiter.done()
        a.pause(0.0)  # a settler on its way as the loop ends; and no aclose()

    with caplog.at_level(logging.ERROR):
        asyncio.run(main())
        assert len(made) >= 5
        assert [task for task in made if not task.done()] == []
        made.clear()  # the last references to the limiters
        gc.collect()  # an unclosed connection warns here: an error, with filterwarnings
    assert [rec.getMessage() for rec in caplog.records] == []  # "Task was destroyed ..."


def test_a_limiter_serves_one_loop_after_another(redis_server: RedisServer, name: str) -> None:
    lim = limiter(redis_server.url, name, RateLimit(1, 0.3, margin=0.0))

    async def twice() -> float:
        started = time.monotonic()
        for _ in range(2):  # the second waits for the window: the pump, the listener
            (await asyncio.wait_for(lim.acquire(1), 2.0)).stamp()
        await lim.fetch_stats()  # what it told Redis has landed
        return time.monotonic() - started

    assert asyncio.run(twice()) >= 0.25
    assert asyncio.run(twice()) >= 0.25  # a new loop: new connections, no stale task
    assert asyncio.run(lim.fetch_stats()).sent == 4
    asyncio.run(lim.aclose())


@contextlib.asynccontextmanager
async def nonsense_server() -> AsyncIterator[str]:
    """A TCP server that answers ``+OK`` to every command: a Redis gone wrong."""
    held: list[asyncio.StreamWriter] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                count = int((await reader.readuntil(b"\r\n"))[1:])  # *N: an array
                for _ in range(count):
                    size = int((await reader.readuntil(b"\r\n"))[1:])  # $len
                    await reader.readexactly(size + 2)
                writer.write(b"+OK\r\n")
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_failing_background_task_fails_the_waiters_as_unavailable(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The answers make no sense to redis-py (it raises neither a RedisError nor an
    OSError): a bug's path, which used to leave the waiter hanging for ever."""
    with caplog.at_level(logging.ERROR, logger="asyncimg"):
        async with contextlib.AsyncExitStack() as stack:
            url = await stack.enter_async_context(nonsense_server())
            lim = await stack.enter_async_context(
                limiter(url, name, RateLimit(5, 1.0), timeout=0.5)
            )
            for _ in range(2):  # the tasks start afresh, and fail again
                with pytest.raises(
                    LimiterUnavailableError, match="background task failed"
                ) as info:
                    await asyncio.wait_for(lim.acquire(1), 2.0)
                cause = info.value.__cause__
                assert cause is not None
                assert not isinstance(cause, (OSError, LimiterUnavailableError))
            local = await stack.enter_async_context(
                limiter(url, name, RateLimit(5, 1.0), on_unavailable="local", local_share=1.0)
            )
            (await asyncio.wait_for(local.acquire(1), 2.0)).stamp()  # the local fallback
    assert len([rec for rec in caplog.records if rec.exc_info]) == 3  # each failure logged


async def test_the_client_goes_through_the_shared_limiter(
    redis_server: RedisServer, name: str
) -> None:
    async with (
        Emulator(images_per_minute=(2, 1.0)) as emu,
        limiter(redis_server.url, name, RateLimit(2, 1.0)) as lim,
        AsyncImagesClient(api_key="sk-x", base_url=emu.base_url, limiter=lim) as client,
    ):
        await client.generate("a lantern", model="dall-e-2", size="256x256", n=2)
        stats = await lim.fetch_stats()
        assert (stats.sent, stats.in_window, stats.server_limit) == (2, 2, 2)
        assert stats.server_remaining == 0  # the emulator's x-ratelimit-* headers, shared


async def test_a_request_larger_than_the_budget_is_refused_before_redis(name: str) -> None:
    lim = limiter("redis://127.0.0.1:1/0", name, RateLimit(2, 1.0))
    with pytest.raises(ValidationError) as info:
        await lim.acquire(3)
    assert info.value.param == "n"
    assert lim.round_trips == 0
    await lim.aclose()


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[str]:
    """A TCP server that accepts and never answers: a Redis that hangs."""
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("how", ["down", "hanging"])
async def test_redis_unavailable_raises_in_bounded_time_and_sends_nothing(
    how: str, name: str
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        if how == "down":
            url = f"redis://127.0.0.1:{closed_port()}/0"
        else:
            url = await stack.enter_async_context(silent_server())
        emu = await stack.enter_async_context(Emulator())
        lim = limiter(url, name, RateLimit(5, 1.0), timeout=0.3)
        client = await stack.enter_async_context(
            AsyncImagesClient(api_key="sk-x", base_url=emu.base_url, limiter=lim)
        )
        started = time.monotonic()
        with pytest.raises(LimiterUnavailableError):
            await client.generate("a lantern", model="dall-e-2", size="256x256")
        assert time.monotonic() - started < 1.0
        assert len(emu.journal) == 0
        await lim.aclose()


async def test_the_local_fallback_is_opt_in_warns_once_and_keeps_a_share(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    lim = limiter(
        f"redis://127.0.0.1:{closed_port()}/0", name, RateLimit(4, 30.0), timeout=0.2,
        on_unavailable="local", local_share=0.5,
    )
    with caplog.at_level(logging.WARNING, logger="asyncimg"):
        first = await lim.acquire(1)
        second = await lim.acquire(1)
        with pytest.raises(asyncio.TimeoutError):  # 2 of 4 is this process's share
            await asyncio.wait_for(lim.acquire(1), 0.1)
    first.stamp()
    second.stamp()
    warnings = [rec for rec in caplog.records if "local" in rec.getMessage()]
    assert len(warnings) == 1
    assert lim.stats().in_window == 2
    await lim.aclose()


async def test_after_the_fallback_the_limiter_goes_back_to_redis(name: str) -> None:
    server = RedisServer(redis_server_binary())  # its port is free: nothing listens yet
    lim = limiter(server.url, name, RateLimit(4, 30.0), timeout=0.2, lease=0.3,
                  on_unavailable="local", local_share=0.5)
    try:
        (await lim.acquire(1)).stamp()
        assert lim.round_trips == 0  # the local share
        server.start()
        await asyncio.sleep(0.35)  # the fallback lasts `lease` seconds
        before = lim.round_trips
        (await lim.acquire(1)).stamp()
        assert lim.round_trips > before  # Redis again
        # The shared window, with the image sent alone in it.
        assert (await lim.fetch_stats()).in_window == 2
    finally:
        await lim.aclose()
        server.kill()


def test_the_local_fallback_needs_a_share() -> None:
    with pytest.raises(ValueError, match="local_share"):
        RedisLimiter.from_url("redis://127.0.0.1/0", rate=RateLimit(), name="x",
                              on_unavailable="local")


@pytest.mark.parametrize("bad", ["", "a b", "a:b", "{a}", "sk-proj-abc123", "x" * 101])
def test_a_name_that_could_be_a_secret_or_break_a_key_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="name"):
        RedisLimiter.from_url("redis://127.0.0.1/0", rate=RateLimit(), name=bad)


def test_import_asyncimg_never_imports_redis() -> None:
    code = (
        "import sys, asyncimg\n"
        "assert 'redis' not in sys.modules, 'redis imported'\n"
        "asyncimg.RedisLimiter\n"
        "assert 'redis' not in sys.modules, 'redis imported by the attribute'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr


GUIDE = Path(__file__).resolve().parent.parent / "docs" / "guides" / "rate-limit.md"


@pytest.fixture
def recipe() -> str:
    """The rate-limit guide's FastAPI + gunicorn recipe."""
    pytest.importorskip("fastapi")
    (code,) = [c for c in re.findall(r"```python\n(.*?)```", GUIDE.read_text("utf-8"), re.DOTALL)
               if "RedisLimiter.from_url" in c and "FastAPI" in c]
    return code


async def test_the_readme_fastapi_recipe_runs(
    recipe: str, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = recipe
    async with Emulator(api_key="sk-recipe") as emu:
        monkeypatch.setenv("REDIS_URL", redis_server.url)
        monkeypatch.setenv("OPENAI_BASE_URL", emu.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-recipe")
        app: dict[str, Any] = {}
        exec(compile(code, str(GUIDE), "exec"), app)
        async with app["lifespan"](app["app"]):  # what each gunicorn worker runs
            answer = await app["draw"]("a lantern")
        assert answer["url"].startswith("http://127.0.0.1:")
        assert len(emu.requests("generate")) == 1


# -- Redis as it is deployed: its own server, configured as the test needs -----------------


async def _acl_user(server: RedisServer, *rules: str) -> str:
    """Create the user ``worker`` with ``rules``; returns a URL that logs in as it."""
    admin = redis_asyncio.Redis.from_url(server.url)
    try:
        await admin.execute_command("ACL", "SETUSER", "worker", "on", ">pw", *rules)
    finally:
        await admin.aclose()
    return f"redis://worker:pw@127.0.0.1:{server.port}/0"


async def test_a_refused_publish_leaves_the_state_whole_and_says_why(name: str) -> None:
    with running_redis() as server:
        url = await _acl_user(server, "resetchannels", "~asyncimg:*", "+@all")
        r = redis_asyncio.Redis.from_url(url)
        try:
            lua = Lua(r, name)
            assert (await lua("acquire", "a", 0, "a:1:5")).granted == ("a:1:5",)
            await lua("acquire", "b", 1, "b:1:1")
            # The refund frees room for b's waiter: the script would wake b, and may not.
            with pytest.raises(redis_asyncio.ResponseError, match=r"&asyncimg:\{"):
                await lua("settle", "a", 2, "r:a:1:5")
            after = state(await lua("stats", "a", 3))
            assert (after["held"], after["available"], after["refunded"]) == (0, LIMIT, 5)
            assert (after["waiting"], after["waiting_images"]) == (1, 1)
            assert (await lua.take("b", 4, "b:1:1")).granted == ("b:1:1",)
        finally:
            await r.aclose()


async def test_a_user_without_the_channel_fails_the_waiters_at_once(name: str) -> None:
    with running_redis() as server:
        url = await _acl_user(server, "resetchannels", "~asyncimg:*", "+@all")
        a = limiter(url, name, RateLimit(1, 60.0))
        b = limiter(url, name, RateLimit(1, 60.0))
        try:
            await a.acquire(1)
            start = time.monotonic()
            with pytest.raises(LimiterUnavailableError, match=r"&asyncimg:\{"):
                await asyncio.wait_for(b.acquire(1), 5)
            assert time.monotonic() - start < 1.0
        finally:
            await a.aclose()
            await b.aclose()


def _readme_acl_rules() -> list[str]:
    found = re.search(r"^ACL SETUSER images on >secret (.+)$", GUIDE.read_text(), re.MULTILINE)
    assert found is not None, "the rate-limit guide names the ACL rules"
    return found.group(1).split()


async def test_the_acl_rules_the_readme_names_are_enough(name: str) -> None:
    with running_redis() as server:
        url = await _acl_user(server, *_readme_acl_rules())
        a = limiter(url, name, RateLimit(1, 0.2, margin=0.01))
        b = limiter(url, name, RateLimit(1, 0.2, margin=0.01))
        try:
            permit = await a.acquire(1)
            waiter = asyncio.create_task(b.acquire(1))
            await asyncio.sleep(0.05)
            permit.refund()
            (await asyncio.wait_for(waiter, 1.0)).refund()
        finally:
            await a.aclose()
            await b.aclose()


@pytest.mark.parametrize("evicted", ["st", "held", "win", "q"])
async def test_a_key_evicted_while_tickets_are_held_pauses_a_window(
    r: Any, name: str, evicted: str
) -> None:
    lua = Lua(r, name)
    await lua("acquire", "a", 0, "a:1:3")
    await lua("settle", "a", 1, "s:a:1:3")  # 3 images in the window
    await lua("acquire", "a", 2, "a:2:2")  # 2 held
    await lua("acquire", "b", 3, "b:1:1")  # waiting
    await r.delete(f"asyncimg:{{{name}}}:{evicted}")  # what maxmemory's eviction does
    c = await lua("acquire", "c", 4, "c:1:1")
    assert c.granted == ()
    assert c.lost
    assert state(c)["paused_ms"] == WINDOW
    assert not (await lua("stats", "c", 5)).lost  # found once, then a fresh start
    assert (await lua.take("b", 4 + WINDOW, "b:1:1")).granted == ("b:1:1",)


async def test_a_restart_found_by_a_stamp_pauses_a_window(r: Any, lua: Lua) -> None:
    await lua("acquire", "a", 0, "a:1:5")
    await r.flushall()
    stamped = await lua("settle", "a", 1, "s:a:1:5")
    assert stamped.lost
    assert state(stamped)["in_window"] == 5


async def test_real_eviction_is_found_and_pauses_a_window(name: str) -> None:
    with running_redis("--maxmemory", "3mb", "--maxmemory-policy", "allkeys-lru") as server:
        r = redis_asyncio.Redis.from_url(server.url)
        try:
            lua = Lua(r, name)
            await lua("acquire", "a", 0, "a:1:5")
            keys = [f"asyncimg:{{{name}}}:{k}" for k in ("st", "held")]
            for i in range(2000):  # another writer fills the memory
                await r.set(f"filler:{i}", b"x" * 20_000)
                if await r.exists(*keys) < 2:
                    break
            else:
                pytest.fail("nothing of the limiter was evicted")
            # The other writer stops: what the limiter writes next is not evicted in turn.
            await r.delete(*[f"filler:{j}" for j in range(i + 1)])
            renewed = await lua.take("a", 1, held=("a:1:5",))
            assert renewed.lost
            assert (await lua("acquire", "c", 2, "c:1:5")).granted == ()
        finally:
            await r.aclose()


async def test_a_redis_that_evicts_any_key_is_refused_naming_the_setting(name: str) -> None:
    with running_redis("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru") as server:
        async with limiter(server.url, name, RateLimit(5, 1.0)) as lim:
            with pytest.raises(LimiterUnavailableError, match="maxmemory-policy is allkeys-lru"):
                await lim.acquire(1)


async def test_a_redis_that_evicts_keys_with_a_ttl_is_warned_of(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    with running_redis("--maxmemory", "64mb", "--maxmemory-policy", "volatile-lru") as server:
        async with limiter(server.url, name, RateLimit(5, 1.0)) as lim:
            (await lim.acquire(1)).refund()
    assert "maxmemory-policy is volatile-lru" in caplog.text


async def test_a_user_who_may_not_read_the_config_is_warned_of(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    with running_redis() as server:
        url = await _acl_user(server, "~asyncimg:*", "&asyncimg:*", "+@all", "-config")
        async with limiter(url, name, RateLimit(5, 1.0)) as lim:
            (await lim.acquire(1)).refund()
    assert "cannot read Redis's maxmemory-policy" in caplog.text


async def test_what_the_local_fallback_sent_counts_when_redis_returns(name: str) -> None:
    rate = RateLimit(4, 2.0, margin=0.1)
    with running_redis() as server:
        a = limiter(server.url, name, rate, on_unavailable="local", local_share=0.5,
                    lease=0.2, timeout=0.5)
        b = limiter(server.url, name, rate)
        try:
            (await a.acquire(1)).stamp()
            server.kill()
            for _ in range(2):  # Redis is gone: a goes on alone, at half the rate
                (await a.acquire(1)).stamp()
            server.start()  # back, empty
            await asyncio.sleep(0.25)  # a's fallback period (lease) is over
            (await a.acquire(1)).stamp()
            await a.fetch_stats()
            # The two images a sent alone are in the shared window with the new one.
            assert (await b.fetch_stats()).in_window == 3
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(b.acquire(2), 0.3)
        finally:
            await a.aclose()
            await b.aclose()


async def test_the_same_name_with_another_rate_is_refused(shared: Shared) -> None:
    slow, fast = shared(RateLimit(5, 2.0)), shared(RateLimit(20, 2.0))
    (await slow.acquire(1)).refund()
    with pytest.raises(LimiterUnavailableError,
                       match=r"is a budget of 5 images per 2000 ms.*this process gives 20"):
        await fast.acquire(1)
    (await slow.acquire(1)).refund()  # the budget is untouched


def _not_on(node: RedisServer, servers: list[RedisServer]) -> str:
    """A limiter name whose keys' slot lives on another node than ``node``."""
    out = subprocess.run(["redis-cli", "-p", str(node.port), "cluster", "slots"],
                         capture_output=True, text=True, timeout=5, check=True).stdout.split()
    # Each range: start, end, ip, port, id (flattened by redis-cli, one value per line).
    ranges = [(int(out[i]), int(out[i + 1]), int(out[i + 3])) for i in range(0, len(out), 5)]
    from redis.crc import key_slot

    for i in range(1000):
        name = f"t-cluster-{i}"
        slot = key_slot(f"asyncimg:{{{name}}}:st".encode())
        if any(lo <= slot <= hi and port != node.port for lo, hi, port in ranges):
            return name
    raise AssertionError("no name off the first node")


async def test_a_cluster_url_shares_one_budget_whichever_node_it_names() -> None:
    from ._redis_server import running_cluster

    with running_cluster(3) as servers:
        first = servers[0]
        name = _not_on(first, servers)
        rate = RateLimit(2, 30.0)
        async with limiter(f"redis://127.0.0.1:{first.port}/0", name, rate) as plain:
            with pytest.raises(LimiterUnavailableError, match=r"redis\+cluster://"):
                await plain.acquire(1)
        a = limiter(f"redis+cluster://127.0.0.1:{first.port}", name, rate)
        b = limiter(f"redis+cluster://127.0.0.1:{servers[2].port}", name, rate)
        try:
            await a.acquire(2)
            assert (await b.fetch_stats()).held == 2
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(b.acquire(1), 0.2)
        finally:
            await a.aclose()
            await b.aclose()


async def test_a_refused_settlement_writes_nothing(r: Any, lua: Lua) -> None:
    await lua("acquire", "a", 0, "a:1:2")
    with pytest.raises(redis_asyncio.ResponseError, match="unknown settlement x:junk"):
        await lua("settle", "a", 1, "s:a:1:2", "x:junk")
    after = state(await lua("stats", "a", 2))
    assert (after["held"], after["in_window"], after["sent"]) == (2, 0, 0)
    assert await r.zscore(lua.keys[1], "a:1:2") is None  # not in the window either
