"""generate_many: lazy input, bounded concurrency, order, per-item failure, cleanup."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Iterator

import pytest

from asyncimg import AsyncImagesClient, BatchItem, ContentPolicyError, ValidationError
from asyncimg._batch.many import BatchIterator
from asyncimg.testing import CONTENT_POLICY_MARKER, Emulator, Fault

from .conftest import TEST_KEY


def _batch_tasks() -> list[asyncio.Task[object]]:
    names = ("_drive", "run_one", "make_item")
    return [
        t for t in asyncio.all_tasks()
        if not t.done() and any(n in repr(t.get_coro()) for n in names)
    ]


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_unordered_all_items_once(client: AsyncImagesClient) -> None:
    prompts = [f"prompt {i}" for i in range(25)]
    items = [item async for item in client.generate_many(prompts, size="256x256")]
    assert sorted(i.index for i in items) == list(range(25))
    assert all(i.ok and i.error is None and i.response is not None for i in items)
    assert {i.prompt for i in items} == set(prompts)


async def test_ordered_yields_input_order(emu: Emulator) -> None:
    async with AsyncImagesClient(
        api_key=TEST_KEY, base_url=emu.base_url, rate_limit=None, max_concurrency=4
    ) as client:
        # The first item is slow: later ones finish first but wait for it.
        emu.add_fault(Fault.delay(0.2))
        items = [i async for i in client.generate_many(
            (f"p{i}" for i in range(12)), ordered=True
        )]
    assert [i.index for i in items] == list(range(12))
    assert [i.prompt for i in items] == [f"p{i}" for i in range(12)]


async def test_async_iterable_and_mappings(client: AsyncImagesClient) -> None:
    async def source() -> AsyncIterator[object]:
        yield "plain"
        yield {"prompt": "mapped", "size": "512x512"}
        yield {"prompt": "bad", "colour": "red"}
        yield {"size": "256x256"}
        yield 42

    items = sorted(
        [i async for i in client.generate_many(source(), size="256x256")],  # type: ignore[arg-type]
        key=lambda i: i.index,
    )
    assert [i.ok for i in items] == [True, True, False, False, False]
    # The effective parameters, as a manifest line has them: the batch's under the item's.
    assert items[0].params == {"size": "256x256"}
    assert items[1].params == {"size": "512x512"}
    assert items[1].response is not None
    assert items[1].response.size in (None, "512x512")
    assert isinstance(items[2].error, ValidationError)
    assert items[2].error.param == "colour"
    assert items[2].prompt == "bad"
    assert isinstance(items[3].error, ValidationError)
    assert items[3].error.param == "prompt"
    assert isinstance(items[4].error, ValidationError)


async def test_bad_batch_param_raises_up_front(client: AsyncImagesClient) -> None:
    with pytest.raises(ValidationError) as info:
        client.generate_many(["a"], colour="red")
    assert info.value.param == "colour"
    with pytest.raises(ValidationError):
        client.generate_many("not a list of prompts")


async def test_failures_are_items(client: AsyncImagesClient, emu: Emulator) -> None:
    emu.add_fault(Fault.status(400, times=1))
    prompts = ["one", f"two {CONTENT_POLICY_MARKER}", "x" * 1001, "four"]
    items = {i.index: i async for i in client.generate_many(prompts, model="dall-e-2")}
    assert len(items) == 4
    assert isinstance(items[1].error, ContentPolicyError)
    assert isinstance(items[2].error, ValidationError)
    assert items[2].error.param == "prompt"
    assert items[1].response is None
    assert sum(i.ok for i in items.values()) == 1  # one more ate the scripted 400


async def test_at_most_max_concurrency_in_flight(emu: Emulator) -> None:
    emu.latency = 0.05
    peak = 0
    current = 0
    original = emu._handle

    async def counting(request):  # type: ignore[no-untyped-def]
        nonlocal peak, current
        current += 1
        peak = max(peak, current)
        try:
            return await original(request)
        finally:
            current -= 1

    emu._handle = counting  # type: ignore[method-assign]
    await emu.close()
    await emu.start()
    async with AsyncImagesClient(
        api_key=TEST_KEY, base_url=emu.base_url, rate_limit=None, max_concurrency=3
    ) as client:
        items = [i async for i in client.generate_many([f"p{i}" for i in range(15)])]
    assert len(items) == 15
    assert peak == 3


async def test_break_cancels_everything(emu: Emulator) -> None:
    emu.latency = 0.5
    async with AsyncImagesClient(
        api_key=TEST_KEY, base_url=emu.base_url, max_concurrency=4
    ) as client:
        emu.latency = 0.0
        emu.add_fault(Fault.delay(0.0))
        got = 0
        # The first answers come fast, the rest hang: break while they are in flight.
        emu.latency = 0.3
        async for item in client.generate_many(f"p{i}" for i in range(1_000_000)):
            got += 1
            assert item.ok
            break
        gc.collect()
        await _settle()
        assert _batch_tasks() == []
        stats = client.limiter.stats()
        assert stats.held == 0
        assert stats.waiting == 0
        # Only the items in flight were ever sent, not the million.
        assert stats.granted <= 2 * client.max_concurrency
    assert got == 1


async def test_closing_the_client_ends_a_batch_left_open(emu: Emulator) -> None:
    emu.latency = 0.3
    client = AsyncImagesClient(base_url=emu.base_url, api_key=TEST_KEY, max_concurrency=4)
    items = client.generate_many([f"p{i}" for i in range(100)], size="256x256")
    first = await items.__anext__()  # the batch runs on; the consumer walks away
    assert first.ok
    await client.aclose()
    await _settle()
    assert _batch_tasks() == []
    stats = client.limiter.stats()
    assert stats.held == 0
    assert stats.waiting == 0
    await items.aclose()


async def test_aclose_and_context_manager(emu: Emulator) -> None:
    emu.latency = 0.3
    async with AsyncImagesClient(
        api_key=TEST_KEY, base_url=emu.base_url, rate_limit=None, max_concurrency=4
    ) as client:
        batch = client.generate_many([f"p{i}" for i in range(10)])
        assert isinstance(batch, BatchIterator)
        async with batch:
            task = asyncio.ensure_future(batch.__anext__())
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert _batch_tasks() == []
        with pytest.raises(StopAsyncIteration):
            await batch.__anext__()


async def test_consumer_cancelled(emu: Emulator) -> None:
    emu.latency = 0.5
    async with AsyncImagesClient(
        api_key=TEST_KEY, base_url=emu.base_url, max_concurrency=4
    ) as client:

        async def consume() -> None:
            async for _ in client.generate_many(f"p{i}" for i in range(100)):
                pass

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        gc.collect()
        await _settle()
        assert _batch_tasks() == []
        assert client.limiter.stats().held == 0


async def test_bug_in_source_propagates(client: AsyncImagesClient) -> None:
    def source() -> Iterator[str]:
        yield "fine"
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        async for _ in client.generate_many(source()):
            pass
    await _settle()
    assert _batch_tasks() == []


async def test_memory_bounded_window() -> None:
    started: list[int] = []
    release = asyncio.Event()

    async def work(index: int, spec: int) -> int:
        started.append(index)
        if index == 0:
            await release.wait()
        return index

    batch = BatchIterator(iter(range(1000)), work, concurrency=4, ordered=True)
    task = asyncio.ensure_future(batch.__anext__())
    await asyncio.sleep(0.05)
    # The head is stuck: at most the window (2 * concurrency) has started.
    assert len(started) == 8
    release.set()
    assert await task == 0
    rest = [i async for i in batch]
    assert rest == list(range(1, 1000))


def test_batch_item_needs_exactly_one_outcome() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        BatchItem(0, "p", {}, None, None)


async def test_items_count_their_attempts(client: AsyncImagesClient, emu: Emulator) -> None:
    emu.add_fault(Fault.status(503, times=2))
    items = [i async for i in client.generate_many(["one"], model="dall-e-2")]
    bad = [i async for i in client.generate_many([{"prompt": "x" * 1001, "model": "dall-e-2"}])]
    assert [i.attempts for i in items] == [3]
    assert items[0].ok
    assert [i.attempts for i in bad] == [0]
    assert isinstance(bad[0].error, ValidationError)
