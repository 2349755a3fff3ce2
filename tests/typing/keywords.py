"""Type-checked, never run (``make lint`` runs mypy --strict on tests/typing).

Each call's keywords come from one TypedDict declaration (PEP 692): mypy must
see every keyword, reject unknown ones and wrong types, on the async and the
blocking client alike. An unneeded ``type: ignore`` is itself an error
(``warn_unused_ignores``), so each ignore below proves mypy refuses that line.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from typing_extensions import assert_type

from asyncimg import (
    AsyncImagesClient,
    BatchItem,
    BatchIterator,
    CompletedImageEvent,
    ImagesClient,
    ImagesResponse,
    ImageStream,
    ImageStreamEvent,
    PartialImageEvent,
    UnknownEvent,
)


async def async_calls(client: AsyncImagesClient) -> None:
    r = await client.generate(
        "a cat", model="gpt-image-1", n=1, size="1024x1024", quality="high",
        response_format=None, output_format="png", output_compression=50,
        background="auto", moderation="low", style=None, user="u",
        extra_body={"x": 1}, timeout=5.0, max_retries=0,
    )
    assert_type(r, ImagesResponse)
    e = await client.edit(b"png", "a cat", mask=b"png", input_fidelity="high", n=2)
    assert_type(e, ImagesResponse)
    v = await client.create_variation(b"png", n=2, size="256x256")
    assert_type(v, ImagesResponse)
    assert_type(client.generate_many(["a"], n=1, size="256x256"), BatchIterator[BatchItem])

    await client.generate("a cat", sizes="1024x1024")  # type: ignore[call-overload]
    await client.generate("a cat", n="2")  # type: ignore[call-overload]
    await client.generate("a cat", input_fidelity="high")  # type: ignore[call-overload]
    await client.create_variation(b"png", quality="high")  # type: ignore[call-arg]
    await client.edit(b"png", "a cat", style="vivid")  # type: ignore[call-overload]
    client.generate_many(["a"], siz="256x256")  # type: ignore[call-arg]


def blocking_calls(client: ImagesClient) -> None:
    assert_type(client.generate("a cat", n=1, timeout=1.0), ImagesResponse)
    assert_type(client.edit(b"png", "a cat", mask=b"png"), ImagesResponse)
    assert_type(client.create_variation(b"png", n=1), ImagesResponse)
    assert_type(client.generate_many(["a"], n=1), Iterator[BatchItem])

    client.generate("a cat", sizes="1024x1024")  # type: ignore[call-overload]
    client.edit(b"png", "a cat", n=None, quality=3)  # type: ignore[call-overload]


async def streams(client: AsyncImagesClient) -> None:
    stream = await client.generate("a lantern", stream=True, partial_images=2)
    assert_type(stream, ImageStream)
    async with stream:
        async for event in stream:
            assert_type(event, PartialImageEvent | CompletedImageEvent | UnknownEvent)
    assert_type(await stream.final(), CompletedImageEvent)
    edited = await client.edit(b"png", "a moon", stream=True, partial_images=1, mask=b"m")
    assert_type(edited, ImageStream)
    assert_type(await client.generate("a", stream=False), ImagesResponse)
    flag: bool = True
    assert_type(await client.generate("a", stream=flag), ImagesResponse | ImageStream)
    await client.generate("a", stream=True, partial_images="2")  # type: ignore[call-overload]
    client.generate_many(["a"], stream=True)  # type: ignore[call-arg]


def blocking_streams(client: ImagesClient) -> None:
    events = client.generate("a lantern", stream=True, partial_images=2)
    assert_type(events, Iterator[PartialImageEvent | CompletedImageEvent | UnknownEvent])
    for event in events:
        if isinstance(event, PartialImageEvent | CompletedImageEvent):
            assert_type(client.save_event(event, "out"), Path)
    assert_type(client.edit(b"png", "a moon", stream=True), Iterator[ImageStreamEvent])
    flag: bool = False
    either = client.generate("a", stream=flag)
    assert_type(either, ImagesResponse | Iterator[ImageStreamEvent])
    client.generate("a", stream=True, partial_images=None, size=3)  # type: ignore[call-overload]
