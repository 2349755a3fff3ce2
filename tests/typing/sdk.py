"""Type-checked, never run: the official SDK's spellings keep the real signatures
(``client.images``, raw responses, ``with_options``) on both clients."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from typing_extensions import assert_type

from asyncimg import (
    AsyncImagesClient,
    ImagesClient,
    ImagesResponse,
    ImageStream,
    ImageStreamEvent,
    RawAPIResponse,
)


class PhasedTimeout:
    connect: float | None = 5.0
    read: float | None = 60.0
    write: float | None = 60.0


async def async_calls(client: AsyncImagesClient) -> None:
    r = await client.images.generate(
        prompt="a cat", model="gpt-image-2.5-sunburst", quality="xhigh", complexity="high",
        output_format="gif", frame_count=4, frame_duration_ms=100, safety_identifier="h",
        timeout=PhasedTimeout(),
    )
    assert_type(r, ImagesResponse)
    s = await client.images.generate(prompt="a cat", stream=True)
    assert_type(s, ImageStream)
    e = await client.images.edit(image=b"png", prompt="x", markup=b"png", svg={"model": "m"})
    assert_type(e, ImagesResponse)
    v = await client.images.create_variation(image=b"png", n=2)
    assert_type(v, ImagesResponse)
    raw = await client.images.with_raw_response.generate(prompt="a cat")
    assert_type(raw, RawAPIResponse)
    assert_type(client.with_options(timeout=PhasedTimeout(), max_retries=1), AsyncImagesClient)
    await client.images.generate(prompt="a cat", frame_count="4")  # type: ignore[call-overload]
    await client.images.generate(prompt="a cat", colour="red")  # type: ignore[call-overload]


def blocking_calls(client: ImagesClient) -> None:
    r = client.images.generate(prompt="a cat", quality="max")
    assert_type(r, ImagesResponse)
    events = client.images.generate(prompt="a cat", stream=True)
    assert_type(events, Iterator[ImageStreamEvent])
    e = client.images.edit(image=b"png", prompt="x")
    assert_type(e, ImagesResponse)
    assert_type(client.images.with_raw_response.edit(image=b"png", prompt="x"), RawAPIResponse)
    assert_type(client.with_options(timeout=30.0), ImagesClient)
    assert_type(r.model_dump(), dict[str, Any])
