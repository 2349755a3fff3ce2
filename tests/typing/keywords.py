"""Type-checked, never run (``make lint`` runs mypy --strict on tests/typing).

Each call's keywords come from one TypedDict declaration (PEP 692): mypy must
see every keyword, reject unknown ones and wrong types, on the async and the
blocking client alike. An unneeded ``type: ignore`` is itself an error
(``warn_unused_ignores``), so each ignore below proves mypy refuses that line.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

from typing_extensions import assert_type

from asyncimg import AsyncImagesClient, BatchItem, ImagesClient, ImagesResponse


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
    assert_type(client.generate_many(["a"], n=1, size="256x256"), AsyncIterator[BatchItem])

    await client.generate("a cat", sizes="1024x1024")  # type: ignore[call-arg]
    await client.generate("a cat", n="2")  # type: ignore[arg-type]
    await client.generate("a cat", input_fidelity="high")  # type: ignore[call-arg]
    await client.create_variation(b"png", quality="high")  # type: ignore[call-arg]
    await client.edit(b"png", "a cat", style="vivid")  # type: ignore[call-arg]
    client.generate_many(["a"], siz="256x256")  # type: ignore[call-arg]


def blocking_calls(client: ImagesClient) -> None:
    assert_type(client.generate("a cat", n=1, timeout=1.0), ImagesResponse)
    assert_type(client.edit(b"png", "a cat", mask=b"png"), ImagesResponse)
    assert_type(client.create_variation(b"png", n=1), ImagesResponse)
    assert_type(client.generate_many(["a"], n=1), Iterator[BatchItem])

    client.generate("a cat", sizes="1024x1024")  # type: ignore[call-arg]
    client.edit(b"png", "a cat", n=None, quality=3)  # type: ignore[arg-type]
