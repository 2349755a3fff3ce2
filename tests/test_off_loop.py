"""Work above OFF_LOOP_BYTES (JSON bodies, base64, uploads to check) runs off the event loop."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import struct
import threading
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp import web

import asyncimg._client
import asyncimg._transport
import asyncimg._validation
from asyncimg import AsyncImagesClient
from asyncimg._offloop import OFF_LOOP_BYTES, ThreadedIterator

RAW = os.urandom(OFF_LOOP_BYTES)  # its base64 is 4/3 of the threshold


@pytest.fixture
async def big_server() -> AsyncIterator[str]:
    body = json.dumps({"created": 1, "data": [{"b64_json": base64.b64encode(RAW).decode()}]})

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text=body, content_type="application/json")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/images/generations", answer)
    app.router.add_post("/v1/images/edits", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/v1"
    await runner.cleanup()


def spy(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[int]:
    """Record the thread each call of ``module.name`` runs on."""
    threads: list[int] = []
    original = getattr(module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.get_ident())
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return threads


async def test_a_large_body_and_its_base64_are_decoded_off_the_loop(
    big_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed = spy(monkeypatch, asyncimg._transport, "_decode_joined")
    decoded = spy(monkeypatch, asyncimg._client, "decode_b64")
    async with AsyncImagesClient(api_key="sk-test", base_url=big_server,
                                 rate_limit=None) as client:
        response = await client.generate("a cat")
        assert await client.download(response.data[0]) == RAW
    loop_thread = threading.get_ident()
    assert parsed
    assert decoded
    assert loop_thread not in parsed + decoded


async def test_a_large_upload_is_checked_off_the_loop(
    big_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked = spy(monkeypatch, asyncimg._validation, "png_problem")
    side = 1100  # random RGBA pixels do not compress: about 4.8 MB
    raw = b"".join(b"\x00" + os.urandom(side * 4) for _ in range(side))
    head = struct.pack(">IIBBBBB", side, side, 8, 6, 0, 0, 0)
    big = b"\x89PNG\r\n\x1a\n" + b"".join(
        struct.pack(">I", len(d)) + k + d + struct.pack(">I", zlib.crc32(k + d))
        for k, d in ((b"IHDR", head), (b"IDAT", zlib.compress(raw, 1)), (b"IEND", b""))
    )
    assert len(big) > OFF_LOOP_BYTES
    images = [big]
    async with AsyncImagesClient(api_key="sk-test", base_url=big_server,
                                 rate_limit=None) as client:
        await client.edit(images, "a hat", model="gpt-image-1")
    assert checked
    assert threading.get_ident() not in checked


def test_base64_in_pieces_is_strict() -> None:
    from asyncimg import APIResponseValidationError, Image

    text = base64.b64encode(RAW).decode()
    assert asyncimg._client.decode_b64(Image(b64_json=text)) == RAW
    broken = text[:1000] + "==" + text[1002:]
    with pytest.raises(APIResponseValidationError):
        asyncimg._client.decode_b64(Image(b64_json=broken))


async def test_a_file_object_is_read_off_the_loop(tmp_path: Any) -> None:
    from asyncimg._files import load_image
    from asyncimg.testing import make_png

    threads: list[int] = []

    class Spied(io.FileIO):
        def read(self, size: int = -1) -> bytes:
            threads.append(threading.get_ident())
            return super().read(size)

    path = tmp_path / "cat.png"
    path.write_bytes(make_png(16, 16, "cat"))
    with Spied(path, "rb") as f:
        image = await load_image(f)
    assert image.mime == "image/png"
    assert threads
    assert threading.get_ident() not in threads


async def test_the_input_is_read_ahead_within_bounds_and_errors_come_in_turn() -> None:
    read: list[int] = []

    def items() -> Iterator[int]:
        for i in range(1, 11):
            read.append(i)
            if i == 8:
                raise ValueError("line 8")
            yield i

    reader = ThreadedIterator(items(), ahead=3)
    assert await reader.next() == 1
    for _ in range(200):  # the thread fills its buffer, then waits for room
        if len(read) >= 4:
            break
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.02)
    assert len(read) == 4  # 1 taken, 3 ahead
    assert [await reader.next() for _ in range(6)] == [2, 3, 4, 5, 6, 7]
    with pytest.raises(ValueError, match="line 8"):
        await reader.next()
    assert await reader.next() is None
    assert await reader.next() is None
    assert read == list(range(1, 9))
    reader.close()
