"""Type-checked, never run: the batch API is typed as its docs say it is used.

``generate_many`` returns a :class:`~asyncimg.BatchIterator`: an async iterator
and an async context manager with ``aclose()``; the public types that public
parameters take are importable from ``asyncimg``.
"""

from __future__ import annotations

from typing_extensions import assert_type

from asyncimg import (
    AsyncImagesClient,
    BatchItem,
    BatchIterator,
    CallStats,
    ImagesResponse,
    RawResponse,
)


async def many(client: AsyncImagesClient) -> None:
    async with client.generate_many(["a", {"prompt": "b", "n": 2}], size="256x256") as items:
        assert_type(items, BatchIterator[BatchItem])
        async for item in items:
            assert_type(item, BatchItem)
            assert_type(item.response, ImagesResponse | None)
    loose = client.generate_many(["a"], ordered=True)
    await loose.aclose()


async def one_request_path(client: AsyncImagesClient) -> None:
    stats = CallStats()
    await client.generate("a lantern", stats=stats)
    assert_type(stats.attempts, int)
    raw = await client.request("GET", "/batches/batch_1", params={"limit": 10})
    assert_type(raw, RawResponse)
    assert_type(client.max_in_flight, int)
