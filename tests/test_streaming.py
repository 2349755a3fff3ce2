"""stream=True against real servers on 127.0.0.1: the emulator, and small hand-made ones."""

from __future__ import annotations

import asyncio
import base64
import gc
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from asyncimg import (
    APIConnectionError,
    APIResponseValidationError,
    APITimeoutError,
    AsyncImagesClient,
    BadRequestError,
    CompletedImageEvent,
    ImageStream,
    PartialImageEvent,
    RateLimit,
    RateLimitError,
    ResponseTooLargeError,
    ValidationError,
)
from asyncimg._files import image_info
from asyncimg._retry import RetryPolicy
from asyncimg.testing import Emulator, Fault, make_png

from .conftest import TEST_KEY

GPT = "gpt-image-1"


def png_size(b64: str | None) -> tuple[int, int]:
    assert b64 is not None
    info = image_info(base64.b64decode(b64))
    assert info is not None
    return info.width, info.height


async def entry_when_done(emu: Emulator, count: int = 1, within: float = 2.0) -> object:
    """The journal's last entry, once ``count`` requests have ended on the server."""
    deadline = time.monotonic() + within
    while len(emu.requests()) < count:
        assert time.monotonic() < deadline, "the server never saw the request end"
        await asyncio.sleep(0.01)
    return emu.requests()[-1]


async def test_partials_then_the_completed_event_with_usage(
    client: AsyncImagesClient, emu: Emulator
) -> None:
    stream = await client.generate("a lantern", model=GPT, stream=True, partial_images=2,
                                   size="1024x1536", quality="low")
    assert isinstance(stream, ImageStream)
    async with stream:
        events = [event async for event in stream]
    assert [e.type for e in events] == [
        "image_generation.partial_image", "image_generation.partial_image",
        "image_generation.completed",
    ]
    partials, final = events[:2], events[2]
    assert isinstance(final, CompletedImageEvent)
    assert [p.partial_image_index for p in partials] == [0, 1]  # type: ignore[union-attr]
    assert final.usage is not None
    assert final.usage.output_tokens
    assert (final.size, final.quality, final.output_format) == ("1024x1536", "low", "png")
    for event in events:
        assert png_size(event.b64_json) == (1024, 1536)  # type: ignore[union-attr]
    images = {e.b64_json for e in events}  # type: ignore[union-attr]
    assert len(images) == 3, "each partial differs from the others and from the final"
    (sent,) = emu.requests()
    assert sent.json["stream"] is True
    assert sent.json["partial_images"] == 2
    assert sent.events == 3
    assert final.request_id == sent.request_id == stream.request_id


async def test_edit_streams_and_zero_partials_is_just_the_final(
    client: AsyncImagesClient, emu: Emulator
) -> None:
    image = make_png(64, 64, "in")
    stream = await client.edit(image, "add a moon", model=GPT, stream=True, partial_images=0)
    async with stream:
        events = [event async for event in stream]
    assert [e.type for e in events] == ["image_edit.completed"]
    (sent,) = emu.requests("edit")
    assert (sent.fields["stream"], sent.fields["partial_images"]) == ("true", "0")


async def test_final_skips_the_partials_and_save_event_writes_each_image(
    client: AsyncImagesClient, tmp_path: Path
) -> None:
    stream = await client.generate("a kite", model=GPT, stream=True, partial_images=1)
    first = await stream.__anext__()
    assert isinstance(first, PartialImageEvent)
    partial_path = await client.save_event(first, tmp_path, stem="kite")
    final = await stream.final()
    final_path = await client.save_event(final, tmp_path, stem="kite")
    assert (partial_path.name, final_path.name) == ("kite-partial-0.png", "kite-0.png")
    assert final_path.read_bytes() == base64.b64decode(final.b64_json or "")
    assert partial_path.read_bytes() != final_path.read_bytes()
    default = await client.save_event(final, tmp_path)
    assert default.name == f"{final.request_id}-0.png"


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"model": GPT, "partial_images": 4}, "partial_images"),
        ({"model": GPT, "partial_images": -1}, "partial_images"),
        ({"model": "dall-e-2"}, "stream"),
        ({"model": "dall-e-3"}, "stream"),
    ],
)
async def test_bad_streaming_parameters_are_refused_before_sending(
    client: AsyncImagesClient, emu: Emulator, kwargs: dict[str, object], param: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        await client.generate("a cat", stream=True, **kwargs)  # type: ignore[call-overload]
    assert caught.value.param == param
    with pytest.raises(ValidationError) as caught:
        await client.generate("a cat", model="dall-e-2", extra_body={"stream": True})
    assert caught.value.param == "stream"
    assert emu.requests() == []
    assert client.limiter.stats().granted == 0


async def test_the_limiter_counts_the_images_when_the_stream_is_sent(emu: Emulator) -> None:
    async with AsyncImagesClient(
        api_key=TEST_KEY, base_url=emu.base_url, rate_limit=RateLimit(10, 60.0)
    ) as c:
        stream = await c.generate("a", model=GPT, n=3, stream=True)
        assert c.limiter.stats().sent == 3
        await stream.aclose()


async def test_a_drop_before_the_first_event_is_retried(
    client: AsyncImagesClient, emu: Emulator
) -> None:
    emu.add_fault(Fault.drop_stream(0))
    stream = await client.generate("a", model=GPT, stream=True, partial_images=1)
    final = await stream.final()
    assert final.b64_json
    assert [r.events for r in emu.requests()] == [0, 2]


async def test_a_drop_after_an_event_raises_and_is_never_resent(
    client: AsyncImagesClient, emu: Emulator
) -> None:
    emu.add_fault(Fault.drop_stream(1))
    stream = await client.generate("a", model=GPT, stream=True, partial_images=2)
    async with stream:
        first = await stream.__anext__()
        assert isinstance(first, PartialImageEvent)
        with pytest.raises(APIConnectionError):
            await stream.__anext__()
    assert len(emu.requests()) == 1


async def test_break_closes_the_connection_at_once(
    client: AsyncImagesClient, emu: Emulator
) -> None:
    emu.add_fault(Fault.trickle(1.0))  # 4 events, 1 s apart: 3 s to the end
    stream = await client.generate("a", model=GPT, stream=True, partial_images=3)
    started = time.monotonic()
    async for _event in stream:
        break
    entry = await entry_when_done(emu)
    assert time.monotonic() - started < 2.5
    assert entry.events == 1  # type: ignore[attr-defined]


async def test_cancelling_a_consumer_closes_the_connection(
    client: AsyncImagesClient, emu: Emulator
) -> None:
    emu.add_fault(Fault.trickle(0.3))
    stream = await client.generate("a", model=GPT, stream=True, partial_images=3)

    async def consume() -> None:
        async for _event in stream:
            pass

    task = asyncio.ensure_future(consume())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    entry = await entry_when_done(emu)
    assert entry.events is not None  # type: ignore[attr-defined]
    assert entry.events < 4  # type: ignore[attr-defined]
    assert stream._response is None


async def test_timeout_bounds_the_wait_between_events_not_the_whole_stream(
    client: AsyncImagesClient, emu: Emulator
) -> None:
    emu.add_fault(Fault.trickle(0.06))  # 4 events: 0.24 s in all, more than the timeout
    stream = await client.generate("a", model=GPT, stream=True, partial_images=3, timeout=0.2)
    assert (await stream.final()).b64_json

    emu.add_fault(Fault.trickle(0.4, path="generate"))
    stream = await client.generate(
        "a", model=GPT, stream=True, partial_images=3, timeout=0.5, max_retries=0
    )
    stream._timeout = 0.1  # past the first event: the next one is 0.4 s away
    with pytest.raises(APITimeoutError):
        await stream.final()


async def test_a_partials_base64_is_dropped_while_the_next_event_is_awaited(
    client: AsyncImagesClient, emu: Emulator
) -> None:
    emu.add_fault(Fault.trickle(0.3))
    stream = await client.generate("a", model=GPT, stream=True, partial_images=2)
    events = aiter(stream)
    first = await anext(events)
    assert isinstance(first, PartialImageEvent)
    ref = weakref.ref(first)
    del first
    waiting = asyncio.ensure_future(anext(events))  # the next event is 0.3 s away
    await asyncio.sleep(0.1)
    gc.collect()
    assert ref() is None, "the consumed partial is still held while the stream waits"
    assert isinstance(await waiting, PartialImageEvent)
    await stream.aclose()


# -- hand-made servers: what the emulator does not send ---------------------------------


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_post("/v1/images/generations", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}/v1"

    yield start
    for runner in runners:
        await runner.cleanup()


def sse_handler(events: list[bytes], calls: list[int]) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        calls.append(1)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in events:
            await response.write(event)
        await response.write_eof()
        return response

    return handler


PARTIAL = b'event: image_generation.partial_image\ndata: {"type": "image_generation.partial_image", "b64_json": "QUJD", "partial_image_index": 0}\n\n'  # noqa: E501


@pytest.mark.parametrize(
    ("error", "cls"),
    [
        (b'event: error\ndata: {"error": {"message": "bad", "type": "invalid_request_error"}}\n\n',
         BadRequestError),
        (b'data: {"type": "error", "code": "rate_limit_exceeded", "message": "slow"}\n\n',
         RateLimitError),
    ],
)
async def test_an_error_mid_stream_raises_its_status_error_after_the_events_before_it(
    serve: Callable[[Handler], Awaitable[str]], error: bytes, cls: type[Exception]
) -> None:
    calls: list[int] = []
    url = await serve(sse_handler([PARTIAL + error], calls))
    async with AsyncImagesClient(api_key="k", base_url=url, rate_limit=None) as c:
        stream = await c.generate("a", model=GPT, stream=True, partial_images=1)
        events: list[object] = []

        async def consume() -> None:
            async for event in stream:
                events.append(event)

        with pytest.raises(cls):
            await consume()
    assert [e.type for e in events] == ["image_generation.partial_image"]  # type: ignore[attr-defined]
    assert calls == [1]


async def test_a_stream_that_ends_without_the_final_image_is_an_error(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    calls: list[int] = []
    url = await serve(sse_handler([PARTIAL], calls))
    async with AsyncImagesClient(api_key="k", base_url=url, rate_limit=None) as c:
        stream = await c.generate("a", model=GPT, stream=True, partial_images=1)
        with pytest.raises(APIConnectionError, match="before the completed image"):
            await stream.final()
    assert calls == [1]


async def test_an_error_status_before_the_stream_is_retried_like_any_call(
    client: AsyncImagesClient, emu: Emulator
) -> None:
    client.retry_policy = RetryPolicy(max_retries=2, initial=0.001, maximum=0.004)
    emu.add_fault(Fault.status(503))
    stream = await client.generate("a", model=GPT, stream=True)
    assert (await stream.final()).b64_json
    assert [r.status for r in emu.requests()] == [503, 200]


async def test_a_server_that_does_not_stream_gives_its_images_as_completed_events(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    calls: list[int] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        calls.append(1)
        if len(calls) == 2:
            return web.json_response({"not": "images"})
        return web.json_response({
            "created": 7, "size": "1024x1024", "usage": {"total_tokens": 3},
            "data": [{"b64_json": "QUJD"}, {"url": "http://127.0.0.1:9/x.png"}],
        })

    url = await serve(handler)
    async with AsyncImagesClient(api_key="k", base_url=url, rate_limit=None, max_retries=0) as c:
        stream = await c.generate("a", model=GPT, stream=True, n=2)
        async with stream:
            events = [event async for event in stream]
        with pytest.raises(APIResponseValidationError):
            await c.generate("a", model=GPT, stream=True)
    assert [(e.type, e.b64_json, e.created_at) for e in events] == [
        ("image_generation.completed", "QUJD", 7), ("image_generation.completed", None, 7)
    ]
    assert events[1].extra == {"url": "http://127.0.0.1:9/x.png"}  # type: ignore[union-attr]
    assert events[0].usage is not None  # type: ignore[union-attr]
    assert calls == [1, 1]


def test_a_partial_is_an_earlier_rougher_version_of_the_final() -> None:
    from asyncimg.testing._streaming import _rows, partial_png

    final = make_png(64, 96, "seed")
    _, _, _, rows = _rows(final)
    early, late = (_rows(partial_png(final, step, 2))[3] for step in (0, 1))
    grey = bytes([0x80] * 64 * 3)
    assert early[:32] != rows[:32] and early[0] == rows[0]  # noqa: PT018 - coarse, same start
    assert early[32:] == [grey] * 64
    assert late[64:] == [grey] * 32
    assert late[:64] != early[:64]
    jpeg = b"\xff\xd8\xff\xe0" + bytes(60)
    assert partial_png(jpeg, 0, 2) == jpeg  # not ours to redraw: sent as it is
    with pytest.raises(ValueError, match="chunks"):
        Fault.drop_stream(-1)


async def test_an_event_over_max_response_bytes_is_refused(emu: Emulator) -> None:
    async with AsyncImagesClient(
        api_key=TEST_KEY, base_url=emu.base_url, rate_limit=None, max_retries=0,
        max_response_bytes=2000,
    ) as c:
        with pytest.raises(ResponseTooLargeError, match="max_response_bytes=2000"):
            await c.generate("a", model=GPT, stream=True)
