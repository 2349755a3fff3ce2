"""Every problem with a request is a ValidationError naming the parameter, raised before
anything is sent and before any rate budget is taken (the body is built first)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import math
import socket
import time
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from asyncimg import APITimeoutError, AsyncImagesClient, RateLimit, ValidationError
from asyncimg.testing import Emulator, make_png

from .conftest import TEST_KEY

PNG = make_png(256, 256, "before-sending", alpha=True)


@pytest.fixture
async def limited(emu: Emulator) -> AsyncIterator[AsyncImagesClient]:
    async with AsyncImagesClient(api_key=TEST_KEY, base_url=emu.base_url,
                                 rate_limit=RateLimit(images=50, per=60.0)) as client:
        yield client


async def refused(client: AsyncImagesClient, emu: Emulator, call: Any, param: str) -> str:
    """Run ``call``; it must raise a ValidationError naming ``param``, with nothing spent."""
    with pytest.raises(ValidationError) as info:
        await call
    assert info.value.param == param
    stats = client.limiter.stats()
    assert (stats.granted, stats.sent, stats.held) == (0, 0, 0)
    assert emu.journal[:] == []
    return str(info.value)


# -- item 7: the whole request is built before the permit ------------------------------


async def test_a_value_json_cannot_carry_is_refused_before_the_permit(
    limited: AsyncImagesClient, emu: Emulator
) -> None:
    message = await refused(
        limited, emu, limited.generate("a cat", n=5, extra_body={"seed": Decimal(7)}),
        "extra_body",
    )
    assert "seed" in message


async def test_a_file_name_with_a_line_break_is_refused(
    limited: AsyncImagesClient, emu: Emulator
) -> None:
    await refused(limited, emu, limited.edit(("a\r\nb.png", PNG), "a hat"), "image")
    await refused(limited, emu, limited.edit([PNG, ("x\n.png", PNG)], "a hat"), "image[1]")
    await refused(limited, emu, limited.edit(PNG, "a hat", mask=("m\r.png", PNG)), "mask")


async def test_a_quote_in_a_file_name_is_escaped_and_sent(
    limited: AsyncImagesClient, emu: Emulator
) -> None:
    await limited.edit(('say "hi".png', PNG), "a hat", model="dall-e-2")
    (entry,) = emu.requests("edit")
    assert entry.files[0].filename == "say %22hi%22.png"


@pytest.mark.parametrize("key", ["sk-abc\n", " sk-abc", "sk-a\x00bc", "sk-\u00e9\u2603"])
def test_an_api_key_that_cannot_be_a_header_is_refused(key: str) -> None:
    with pytest.raises(ValidationError) as info:
        AsyncImagesClient(api_key=key)
    assert info.value.param == "api_key"
    assert key not in str(info.value)


def test_organization_and_project_are_checked_as_headers() -> None:
    with pytest.raises(ValidationError, match="organization"):
        AsyncImagesClient(api_key="sk-abc", organization="org-1\n")
    with pytest.raises(ValidationError, match="project"):
        AsyncImagesClient(api_key="sk-abc", project="proj\r\n")


async def test_generate_many_yields_the_failure_as_an_item(
    limited: AsyncImagesClient, emu: Emulator
) -> None:
    items = [item async for item in limited.generate_many(
        ["a cat", "a dog"], extra_body={"seed": Decimal(7)})]
    assert len(items) == 2
    assert all(isinstance(item.error, ValidationError) for item in items)
    assert limited.limiter.stats().granted == 0


# -- item 9: timeouts --------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf, "5", True])
async def test_a_bad_per_call_timeout_is_refused(
    limited: AsyncImagesClient, emu: Emulator, bad: object
) -> None:
    await refused(limited, emu, limited.generate("a cat", timeout=bad), "timeout")  # type: ignore[arg-type]
    await refused(limited, emu, limited.edit(PNG, "a hat", timeout=bad), "timeout")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf, "5", True])
async def test_a_bad_download_timeout_is_refused(
    limited: AsyncImagesClient, emu: Emulator, bad: object
) -> None:
    from asyncimg import Image

    with pytest.raises(ValidationError) as info:
        await limited.download(Image(url=emu.base_url + "/x.png"), timeout=bad)  # type: ignore[arg-type]
    assert info.value.param == "timeout"
    assert emu.journal[:] == []


@pytest.mark.parametrize("name", ["timeout", "connect_timeout"])
@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf, "5", True])
def test_a_bad_client_timeout_is_refused(name: str, bad: object) -> None:
    with pytest.raises(ValidationError) as info:
        AsyncImagesClient(api_key="sk-abc", **{name: bad})
    assert info.value.param == name


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A port whose accept queue is full: a new connection's SYN is dropped, so it hangs."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.05)
    yield port
    for s in [*fillers, server]:
        s.close()


async def test_the_connect_timeout_bounds_a_connection_that_hangs(black_hole: int) -> None:
    async with AsyncImagesClient(api_key=TEST_KEY, base_url=f"http://127.0.0.1:{black_hole}/v1",
                                 rate_limit=None, max_retries=0, timeout=30.0,
                                 connect_timeout=0.2) as client:
        started = time.monotonic()
        with pytest.raises(APITimeoutError, match="connecting timed out"):
            await client.generate("a cat")
        assert time.monotonic() - started < 2.0


def test_the_default_connect_timeout_is_the_sdks() -> None:
    client = AsyncImagesClient(api_key="sk-abc")
    timeout = client._transport._timeout(600.0)
    assert (timeout.total, timeout.sock_connect) == (600.0, 5.0)


# -- item 10: bools are not integers ----------------------------------------------------


@pytest.mark.parametrize("name", ["max_retries", "max_concurrency", "max_response_bytes"])
def test_a_bool_is_not_an_integer_argument(name: str) -> None:
    with pytest.raises(ValidationError) as info:
        AsyncImagesClient(api_key="sk-abc", **{name: True})
    assert info.value.param == name


def test_a_retry_policy_refuses_a_bool() -> None:
    from asyncimg._retry import RetryPolicy

    with pytest.raises(ValidationError, match="max_retries"):
        RetryPolicy(max_retries=True)


async def test_a_bool_per_call_max_retries_is_refused(
    limited: AsyncImagesClient, emu: Emulator
) -> None:
    await refused(limited, emu, limited.generate("a cat", max_retries=True), "max_retries")


# -- item 12: files and text the API cannot take ----------------------------------------


async def test_a_text_mode_file_is_refused(
    limited: AsyncImagesClient, emu: Emulator, tmp_path: Path
) -> None:
    path = tmp_path / "cat.png"
    path.write_bytes(PNG)
    with path.open(encoding="utf-8") as text:
        message = await refused(limited, emu, limited.edit(text, "a hat"), "image")
    assert "'rb'" in message


async def test_a_closed_file_is_refused(limited: AsyncImagesClient, emu: Emulator) -> None:
    closed = io.BytesIO(PNG)
    closed.close()
    message = await refused(limited, emu, limited.edit(PNG, "a hat", mask=closed), "mask")
    assert "closed" in message


async def test_a_file_positioned_past_the_image_says_why(
    limited: AsyncImagesClient, emu: Emulator
) -> None:
    f = io.BytesIO(PNG)
    f.seek(100)
    message = await refused(limited, emu, limited.edit(f, "a hat"), "image")
    assert "position 100" in message
    f = io.BytesIO(b"header" + PNG)
    f.seek(6)  # the image starts here: read from the current position, as the SDK
    await limited.edit(f, "a hat", model="dall-e-2")


@pytest.mark.parametrize("call", ["generate", "edit"])
async def test_a_prompt_with_a_lone_surrogate_is_refused_without_echoing_it(
    limited: AsyncImagesClient, emu: Emulator, call: str
) -> None:
    prompt = "a secret plan " * 20 + "\ud800"
    coro = limited.generate(prompt) if call == "generate" else limited.edit(PNG, prompt)
    message = await refused(limited, emu, coro, "prompt")
    assert "surrogate" in message
    assert "secret plan" not in message


# -- item 18: the SDK's name for closing ------------------------------------------------


async def test_close_is_aclose(emu: Emulator) -> None:
    client = AsyncImagesClient(api_key=TEST_KEY, base_url=emu.base_url)
    await client.generate("a cat", model="dall-e-2")
    await client.close()
    with pytest.raises(RuntimeError, match="closed"):
        await client.generate("a cat")
    await client.close()  # twice is fine
    await asyncio.sleep(0)


@pytest.mark.parametrize(
    "url", ["not a url", "ftp://host/v1", "http://", "http://a b/v1", "http://h:99999/v1",
            "http://host/v1\n"])
def test_a_base_url_that_cannot_be_requested_is_refused(url: str) -> None:
    with pytest.raises(ValidationError) as info:
        AsyncImagesClient(api_key="sk-abc", base_url=url)
    assert info.value.param == "base_url"
