"""The official ``openai`` SDK against the emulator: it must speak the API well enough."""

from __future__ import annotations

import base64
import io

import openai
import pytest

from asyncimg._files import image_info
from asyncimg.testing import CONTENT_POLICY_MARKER, Emulator, Fault, make_png
from asyncimg.testing.pytest_plugin import EMULATOR_API_KEY, emulator  # noqa: F401


def sdk(emu: Emulator, api_key: str = EMULATOR_API_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=emu.base_url, api_key=api_key, max_retries=0)


def size_of(b64: str | None) -> tuple[int, int]:
    assert b64 is not None
    info = image_info(base64.b64decode(b64))
    assert info is not None
    return info.width, info.height


async def test_generate_dall_e_and_gpt_image(emulator: Emulator) -> None:  # noqa: F811
    async with sdk(emulator) as client:
        result = await client.images.generate(prompt="a cat", n=2, size="256x256")
        assert len(result.data or []) == 2
        assert result.data is not None
        assert result.data[0].url is not None
        assert result.data[0].url.startswith(emulator.blob_base_url)

        result = await client.images.generate(
            prompt="a cat", model="gpt-image-1", size="1024x1536", quality="low"
        )
        assert result.data is not None
        assert size_of(result.data[0].b64_json) == (1024, 1536)
        assert (result.size, result.quality, result.output_format) == ("1024x1536", "low", "png")
        assert result.usage is not None
        assert result.usage.output_tokens > 0
        assert result.usage.input_tokens_details.text_tokens > 0

        raw = await client.images.with_raw_response.generate(
            prompt="a cat", model="dall-e-3", response_format="b64_json"
        )
        assert raw.headers["x-request-id"].startswith("req_")
        parsed = raw.parse()
        assert parsed.data is not None
        assert parsed.data[0].revised_prompt
    sent = emulator.requests("generate")[0]
    assert sent.json == {"prompt": "a cat", "n": 2, "size": "256x256"}


async def test_edit_with_mask_and_several_images(emulator: Emulator) -> None:  # noqa: F811
    image = make_png(256, 256, "in", alpha=True)
    mask = make_png(256, 256, "mask", alpha=True)
    async with sdk(emulator) as client:
        result = await client.images.edit(
            image=("in.png", image, "image/png"),
            mask=("mask.png", mask, "image/png"),
            prompt="add a hat",
            model="dall-e-2",
            size="512x512",
            response_format="b64_json",
        )
        assert result.data is not None
        assert size_of(result.data[0].b64_json) == (512, 512)

        result = await client.images.edit(
            image=[io.BytesIO(make_png(64, 64, "a")), ("b.png", make_png(64, 64, "b"))],
            prompt="merge",
            model="gpt-image-1",
            n=2,
        )
        assert result.data is not None
        assert len(result.data) == 2
    first, second = emulator.requests("edit")
    assert [(f.field, f.mime) for f in first.files] == [
        ("image", "image/png"),
        ("mask", "image/png"),
    ]
    assert first.fields["size"] == "512x512"
    assert [f.field for f in second.files] == ["image[]", "image[]"]


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the SDK deprecates it
async def test_create_variation(emulator: Emulator) -> None:  # noqa: F811
    async with sdk(emulator) as client:
        result = await client.images.create_variation(
            image=("v.png", make_png(128, 128, "v")), n=3, size="256x256"
        )
    assert result.data is not None
    assert len(result.data) == 3
    assert all(item.url for item in result.data)


async def test_sdk_errors(emulator: Emulator) -> None:  # noqa: F811
    async with sdk(emulator, api_key="sk-wrong-key-0000") as client:
        with pytest.raises(openai.AuthenticationError) as auth:
            await client.images.generate(prompt="p")
    assert auth.value.status_code == 401
    assert auth.value.code == "invalid_api_key"
    assert auth.value.request_id is not None
    assert auth.value.request_id.startswith("req_")

    async with sdk(emulator) as client:
        with pytest.raises(openai.BadRequestError) as bad:
            await client.images.generate(prompt="p", model="dall-e-2", size="1792x1024")
        assert bad.value.param == "size"

        with pytest.raises(openai.BadRequestError) as policy:
            await client.images.generate(prompt=CONTENT_POLICY_MARKER, model="gpt-image-1")
        assert policy.value.code == "moderation_blocked"

        emulator.add_fault(Fault.status(429, retry_after=1))
        with pytest.raises(openai.RateLimitError) as limited:
            await client.images.generate(prompt="p")
        assert limited.value.code == "rate_limit_exceeded"
        assert limited.value.response.headers["retry-after"] == "1"

        emulator.add_fault(Fault.status(429, code="insufficient_quota"))
        with pytest.raises(openai.RateLimitError) as quota:
            await client.images.generate(prompt="p")
        assert quota.value.code == "insufficient_quota"

        emulator.add_fault(Fault.status(500))
        with pytest.raises(openai.InternalServerError):
            await client.images.generate(prompt="p")

        emulator.add_fault(Fault.html(502))
        with pytest.raises(openai.InternalServerError) as html:
            await client.images.generate(prompt="p")
        assert html.value.status_code == 502

        emulator.add_fault(Fault.drop())
        with pytest.raises(openai.APIConnectionError):
            await client.images.generate(prompt="p")


async def test_sdk_retries_against_scripted_faults(emulator: Emulator) -> None:  # noqa: F811
    emulator.add_fault(Fault.status(503, retry_after=0.01, times=2))
    async with openai.AsyncOpenAI(
        base_url=emulator.base_url, api_key=EMULATOR_API_KEY, max_retries=2
    ) as client:
        result = await client.images.generate(prompt="p", response_format="b64_json")
    assert result.data is not None
    assert [e.status for e in emulator.requests("generate")] == [503, 503, 200]


async def test_sdk_rate_limit_from_the_emulator_limit() -> None:
    async with Emulator(images_per_minute=(2, 60.0)) as emu, sdk(emu, "any") as client:
        await client.images.generate(prompt="p", n=2)
        with pytest.raises(openai.RateLimitError) as limited:
            await client.images.generate(prompt="p")
    headers = limited.value.response.headers
    assert int(headers["retry-after"]) >= 1
    assert headers["x-ratelimit-remaining-images"] == "0"


def test_sync_sdk_once() -> None:
    import asyncio
    import threading

    ready = threading.Event()
    stop: asyncio.Event | None = None
    holder: dict[str, object] = {}

    async def run() -> None:
        nonlocal stop
        stop = asyncio.Event()
        async with Emulator(api_key=EMULATOR_API_KEY) as emu:
            holder["url"] = emu.base_url
            holder["loop"] = asyncio.get_running_loop()
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=asyncio.run, args=(run(),))
    thread.start()
    try:
        assert ready.wait(10)
        with openai.OpenAI(
            base_url=str(holder["url"]), api_key=EMULATOR_API_KEY, max_retries=0
        ) as client:
            result = client.images.generate(prompt="p", model="gpt-image-1", size="1024x1024")
        assert result.data is not None
        assert size_of(result.data[0].b64_json) == (1024, 1024)
    finally:
        loop = holder.get("loop")
        if isinstance(loop, asyncio.AbstractEventLoop) and stop is not None:
            loop.call_soon_threadsafe(stop.set)
        thread.join(10)


async def test_the_sdk_streams_generations_and_edits(emulator: Emulator) -> None:  # noqa: F811
    async with sdk(emulator) as client:
        stream = await client.images.generate(
            prompt="a lantern", model="gpt-image-1", stream=True, partial_images=2
        )
        events = [event async for event in stream]
        assert [e.type for e in events] == [
            "image_generation.partial_image", "image_generation.partial_image",
            "image_generation.completed",
        ]
        assert events[1].partial_image_index == 1  # type: ignore[union-attr]
        assert events[-1].usage.output_tokens > 0  # type: ignore[union-attr]
        assert size_of(events[-1].b64_json) == (1024, 1024)

        edits = await client.images.edit(
            image=("in.png", make_png(64, 64, "in"), "image/png"), prompt="a moon",
            model="gpt-image-1", stream=True, partial_images=1,
        )
        assert [e.type async for e in edits] == [
            "image_edit.partial_image", "image_edit.completed"
        ]
