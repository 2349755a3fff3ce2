"""Against servers that write headers as real ones do: capitalised names, Retry-After
alone, an HTTP date (the emulator's ``header_style``); and downloads' own retries."""

from __future__ import annotations

import asyncio
import time

import pytest

from asyncimg import AsyncImagesClient, Image, RateLimit, RateLimitError
from asyncimg._retry import RetryPolicy
from asyncimg.testing import Emulator, Fault
from asyncimg.testing._headers import canonical_name, styled_headers

from .conftest import TEST_KEY

FAST = RetryPolicy(max_retries=3, initial=0.001, maximum=0.002)


def test_styled_headers() -> None:
    built = {"x-request-id": "req_1", "Retry-After": "1", "retry-after-ms": "250"}
    assert styled_headers(built, "openai", 0.0) == built
    assert styled_headers(built, "canonical", 0.0) == {
        "X-Request-Id": "req_1", "Retry-After": "0.25",
    }
    dated = styled_headers(built, "http-date", 1_700_000_000.0)
    assert dated["Retry-After"] == "Tue, 14 Nov 2023 22:13:21 GMT"
    assert canonical_name("x-ratelimit-reset-images") == "X-Ratelimit-Reset-Images"
    with pytest.raises(ValueError, match="header style"):
        Emulator(header_style="shouting")  # type: ignore[arg-type]


@pytest.mark.parametrize("style", ["canonical", "openai"])
async def test_sixteen_callers_ride_out_a_server_limit(style: str) -> None:
    """The server's own window (8 images per 0.2 s) answers 429 with its Retry-After;
    every caller waits that long and succeeds, instead of burning its retries on backoff."""
    async with Emulator(api_key=TEST_KEY, images_per_minute=(8, 0.2),
                        header_style=style) as emu:  # type: ignore[arg-type]
        async with AsyncImagesClient(api_key=TEST_KEY, base_url=emu.base_url,
                                     rate_limit=None) as client:
            client.retry_policy = FAST
            results = await asyncio.gather(
                *[client.generate(f"cat {i}", model="dall-e-2", size="256x256")
                  for i in range(16)],
                return_exceptions=True,
            )
        assert [r for r in results if isinstance(r, BaseException)] == []
        assert emu.requests(status=429)
        assert emu.requests(status=429)[0].status == 429


async def test_an_http_date_over_the_cap_is_raised_at_once() -> None:
    async with Emulator(api_key=TEST_KEY, header_style="http-date") as emu:
        emu.add_fault(Fault.status(429, retry_after=300, times=3))
        async with AsyncImagesClient(api_key=TEST_KEY, base_url=emu.base_url,
                                     rate_limit=None) as client:
            client.retry_policy = FAST
            started = time.monotonic()
            with pytest.raises(RateLimitError) as info:
                await client.generate("a cat", model="dall-e-2")
        assert time.monotonic() - started < 30.0  # not the 300 s asked
        assert len(emu.requests("generate")) == 1
        assert "GMT" in info.value.headers["retry-after"]
        assert "retry-after-ms" not in info.value.headers


async def test_a_download_429_waits_on_its_own_and_never_pauses_the_images() -> None:
    async with Emulator(api_key=TEST_KEY, header_style="canonical") as emu:
        async with AsyncImagesClient(api_key=TEST_KEY, base_url=emu.base_url,
                                     rate_limit=RateLimit(images=100, per=60.0)) as client:
            client.retry_policy = FAST
            response = await client.generate("a cat", model="dall-e-2", size="256x256",
                                             response_format="url")
            emu.add_fault(Fault.status(429, retry_after=0.05, path="/blobs/"))
            data = await client.download(response.data[0])
            assert data.startswith(b"\x89PNG")
            assert client.limiter.stats().pauses == 0
        tries = emu.requests("/blobs/")
        assert [e.status for e in tries] == [429, 200]
        assert tries[1].time - tries[0].time >= 0.045


async def test_a_download_429_without_a_wait_backs_off(emu: Emulator) -> None:
    async with AsyncImagesClient(api_key=TEST_KEY, base_url=emu.base_url,
                                 rate_limit=RateLimit(images=100, per=60.0)) as client:
        client.retry_policy = RetryPolicy(max_retries=2, initial=0.1, maximum=0.1)
        response = await client.generate("a cat", model="dall-e-2", size="256x256",
                                         response_format="url")
        emu.add_fault(Fault.status(429, path="/blobs/"))
        await client.download(Image(url=response.data[0].url))
        assert client.limiter.stats().pauses == 0
    tries = emu.requests("/blobs/")
    assert tries[1].time - tries[0].time >= 0.009  # the 10 % floor of the 0.1 s step


async def test_a_complete_2xx_that_does_not_parse_is_sent_once(emu: Emulator) -> None:
    """A proxy or server answering events where JSON was asked for: billed, so not re-sent."""
    from asyncimg import APIResponseValidationError

    events = 'event: image_generation.completed\ndata: {"b64_json": "AAAA"}\n\n'
    emu.add_fault(Fault.status(200, body=events, times=5))
    async with AsyncImagesClient(api_key=TEST_KEY, base_url=emu.base_url,
                                 rate_limit=RateLimit(images=50, per=60.0)) as client:
        client.retry_policy = FAST
        with pytest.raises(APIResponseValidationError):
            await client.generate("a cat", n=4)
        assert client.limiter.stats().sent == 4  # one attempt's images, not four attempts'
    assert len(emu.requests("generate")) == 1
