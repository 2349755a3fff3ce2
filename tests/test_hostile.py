"""Hostile and flaky servers and inputs (issue 29): every test runs a server of its own.

Nothing a server says becomes a path; credentials never follow a redirect to
another origin; a connection the server already closed costs no budget.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from asyncimg import AsyncImagesClient, CompletedImageEvent
from asyncimg.testing import make_png

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-hostile-test-key"
ESCAPE = "/../../escaped"
"""An ``output_format`` that, taken as an extension, leaves the output directory."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture(autouse=True)
def _no_ambient_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy",
                 "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)


async def serve(routes: dict[str, Handler]) -> tuple[web.AppRunner, str]:
    """A server of the test's own on 127.0.0.1: ``routes`` maps a path to its handler
    (any method); returns the runner and its origin."""
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_route("*", path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


def _files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# -- 1. a server's output_format never becomes a path -----------------------------------

NOT_AN_IMAGE = b"the server's bytes, of no image format"


async def _hostile_generation(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    b64 = base64.b64encode(NOT_AN_IMAGE).decode()
    if body.get("stream"):
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        event = {"type": "image_generation.completed", "b64_json": b64,
                 "output_format": ESCAPE, "created_at": 1}
        await resp.write(
            f"event: image_generation.completed\ndata: {json.dumps(event)}\n\n".encode()
        )
        await resp.write_eof()
        return resp
    return web.json_response(
        {"created": 1, "data": [{"b64_json": b64}], "output_format": ESCAPE},
        headers={"x-request-id": "req_hostile"},
    )


@pytest.fixture
async def hostile() -> AsyncIterator[str]:
    runner, origin = await serve({"/v1/images/generations": _hostile_generation})
    yield origin + "/v1"
    await runner.cleanup()


def test_the_extension_comes_from_the_bytes_alone() -> None:
    from asyncimg._files import file_extension

    assert file_extension(make_png(4, 4, "x")) == "png"
    assert file_extension(b"\xff\xd8\xff\xe0rest") == "jpg"
    assert file_extension(b"RIFF\0\0\0\0WEBPVP8 ") == "webp"
    assert file_extension(b"GIF89a\x01\x00\x01\x00") == "gif"
    assert file_extension(b'\xef\xbb\xbf <?xml version="1.0"?>\n<svg xmlns="x"/>') == "svg"
    assert file_extension(b"<html><body>no svg</body></html>") == "bin"
    assert file_extension(NOT_AN_IMAGE) == "bin"


@pytest.mark.parametrize("overwrite", [False, True])
async def test_save_never_writes_where_output_format_points(
    hostile: str, tmp_path: Path, overwrite: bool
) -> None:
    async with AsyncImagesClient(api_key=KEY, base_url=hostile, rate_limit=None) as client:
        response = await client.generate("x", model="gpt-image-1")
        (path,) = await client.save(response, tmp_path / "out", overwrite=overwrite)
    assert path == tmp_path / "out" / "req_hostile-0.bin"
    assert _files_under(tmp_path) == ["out/req_hostile-0.bin"]
    assert path.read_bytes() == NOT_AN_IMAGE


async def test_save_event_never_writes_where_output_format_points(
    hostile: str, tmp_path: Path
) -> None:
    async with AsyncImagesClient(api_key=KEY, base_url=hostile, rate_limit=None) as client:
        stream = await client.generate("x", model="gpt-image-1", stream=True)
        async with stream:
            events = [e async for e in stream]
        assert isinstance(events[-1], CompletedImageEvent)
        path = await client.save_event(events[-1], tmp_path / "out", stem="s")
    assert path == tmp_path / "out" / "s-0.bin"
    assert _files_under(tmp_path) == ["out/s-0.bin"]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["OPENAI_API_KEY"] = KEY
    return subprocess.run(
        [sys.executable, "-m", "asyncimg", *args], cwd=ROOT, capture_output=True, text=True,
        env=env, timeout=60, check=False,
    )


@pytest.mark.subprocess
@pytest.mark.parametrize("command", ["batch", "stream"])
async def test_the_cli_never_writes_where_output_format_points(
    hostile: str, tmp_path: Path, command: str
) -> None:
    out = tmp_path / "out"
    common = ("--base-url", hostile, "--model", "gpt-image-1", "--rate", "off", "-o", str(out))
    if command == "batch":
        prompts = tmp_path / "p.txt"
        prompts.write_text("one\ntwo\n")
        done = await asyncio.to_thread(_cli, "batch", *common, "-q", str(prompts))
    else:
        done = await asyncio.to_thread(_cli, "generate", *common, "--stream", "x")
    assert done.returncode == 0, done.stderr
    outside = [f for f in _files_under(tmp_path) if not f.startswith("out/")]
    assert outside == ["p.txt"] if command == "batch" else outside == []
    images = [f for f in _files_under(out) if f.endswith("-0.bin")]
    assert len(images) == (2 if command == "batch" else 1), _files_under(out)
    assert not [f for f in _files_under(out) if "escaped" in f or "/" in f]


def test_a_name_that_would_leave_its_directory_is_refused(tmp_path: Path) -> None:
    from asyncimg._fs import write_atomic, write_new

    for bad in ("x./../../escaped", "a/b", "a\0b"):
        with pytest.raises(OSError, match="would leave"):
            write_new(tmp_path / "out", "x", bad, b"data", overwrite=True)
        with pytest.raises(OSError, match="would leave"):
            write_new(tmp_path / "out", "x", bad, b"data")
    with pytest.raises(OSError, match="would leave"):
        write_atomic(tmp_path / "out" / "..", b"data")
    assert _files_under(tmp_path) == []
