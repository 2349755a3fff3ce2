"""Hostile and flaky servers and inputs (issue 29): every test runs a server of its own.

Nothing a server says becomes a path; credentials never follow a redirect to
another origin; a connection the server already closed costs no budget.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import attrs
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


# -- 2. credentials never follow a redirect to another origin ---------------------------

SECRET_HEADERS = {"Authorization", "api-key", "X-Secret-Default", "X-Secret-Extra"}


class Landing:
    """The other origin a redirect points to: it records the headers of every request."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, str]]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.path, dict(request.headers)))
        if request.path.startswith("/v1/images/"):
            b64 = base64.b64encode(make_png(4, 4, "landed")).decode()
            return web.json_response({"created": 1, "data": [{"b64_json": b64}]})
        if request.path.startswith("/file"):
            return web.Response(body=make_png(4, 4, "landed"), content_type="image/png")
        return web.json_response({"object": "list", "data": []})


@pytest.fixture
async def redirecting() -> AsyncIterator[tuple[str, Landing, list[dict[str, str]]]]:
    """The API's origin, answering every request with a redirect (``?status=``, default
    307) to the same path on a second server of its own (another port); with the
    second server's record and the headers the first one got."""
    landing = Landing()
    other, other_origin = await serve({"/{tail:.*}": landing.handle})
    at_api: list[dict[str, str]] = []

    async def redirect(request: web.Request) -> web.StreamResponse:
        at_api.append(dict(request.headers))
        status = int(request.query.get("status", "307"))
        return web.Response(status=status, headers={"Location": other_origin + request.path})

    api, api_origin = await serve({"/{tail:.*}": redirect})
    yield api_origin, landing, at_api
    await api.cleanup()
    await other.cleanup()


def _secrets_in(headers: dict[str, str]) -> set[str]:
    lower = {k.lower() for k in headers}
    return {name for name in SECRET_HEADERS if name.lower() in lower}


@pytest.mark.parametrize("status", [302, 307])
async def test_no_credential_header_follows_a_redirect_to_another_origin(
    redirecting: tuple[str, Landing, list[dict[str, str]]], status: int
) -> None:
    api_origin, landing, at_api = redirecting
    async with AsyncImagesClient(
        api_key=KEY, base_url=f"{api_origin}/v1", rate_limit=None, max_retries=0,
        default_headers={"api-key": KEY, "X-Secret-Default": "d"},
        default_query={"status": str(status)},
    ) as client:
        response = await client.generate("x", model="dall-e-2",
                                         extra_headers={"X-Secret-Extra": "e"})
        own_url = f"{api_origin}/file.png?status={status}"
        image = await client.download(attrs.evolve(response.data[0], b64_json=None, url=own_url))
        await client.request("GET", "/files", params={"status": str(status)})
        await client.request("POST", "/batches", json={"x": 1})
    assert image == make_png(4, 4, "landed")
    assert _secrets_in(at_api[0]) == SECRET_HEADERS  # the API's origin got them all
    assert all(_secrets_in(h) == SECRET_HEADERS - {"X-Secret-Extra"} for h in at_api[1:])
    assert len(landing.seen) == 4
    assert [method for method, _, _ in landing.seen] == (
        ["POST", "GET", "GET", "POST"] if status == 307 else ["GET", "GET", "GET", "GET"])
    for _, path, headers in landing.seen:
        assert _secrets_in(headers) == set(), path
        assert KEY not in json.dumps(headers)


async def test_a_redirect_within_the_origin_keeps_the_headers() -> None:
    seen: list[dict[str, str]] = []

    async def moved(request: web.Request) -> web.StreamResponse:
        return web.Response(status=307, headers={"Location": "/v1/images/landed"})

    async def landed(request: web.Request) -> web.StreamResponse:
        seen.append(dict(request.headers))
        b64 = base64.b64encode(make_png(4, 4, "x")).decode()
        return web.json_response({"created": 1, "data": [{"b64_json": b64}]})

    runner, origin = await serve({"/v1/images/generations": moved, "/v1/images/landed": landed})
    try:
        async with AsyncImagesClient(api_key=KEY, base_url=f"{origin}/v1", rate_limit=None,
                                     default_headers={"api-key": KEY}) as client:
            await client.generate("x", model="dall-e-2")
    finally:
        await runner.cleanup()
    (headers,) = seen
    assert headers["Authorization"] == f"Bearer {KEY}"
    assert headers["api-key"] == KEY


def test_a_redirect_to_another_scheme_or_a_loop_is_not_followed() -> None:
    from yarl import URL

    from asyncimg._transport import Hop, RedirectError, follow_redirect

    hop = Hop("POST", URL("http://127.0.0.1:1/v1/x"), {"api-key": "k", "Accept": "a"})
    with pytest.raises(RedirectError):
        follow_redirect(hop, 307, "file:///etc/passwd")
    same = follow_redirect(hop, 307, "/v1/y")
    assert same.headers == hop.headers
    assert str(same.url) == "http://127.0.0.1:1/v1/y"
    other = follow_redirect(hop, 303, "https://127.0.0.1:1/v1/y")  # another scheme
    assert (other.method, other.headers, other.body) == ("GET", {"Accept": "a"}, None)


# -- 10. a keep-alive connection the server already closed costs nothing ---------------

class ClosingServer:
    """A raw HTTP/1.1 server that answers one request per connection, then closes it
    without saying so (no ``Connection: close``), as a server whose keep-alive timeout
    is short does. ``on_next``: it closes only when the next request arrives (the
    worst moment, every time); else right after the answer."""

    def __init__(self, on_next: bool) -> None:
        self.on_next = on_next
        self.answered = 0
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            b64 = base64.b64encode(make_png(4, 4, "k")).decode()
            body = json.dumps({"created": 1, "data": [{"b64_json": b64}]}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
            self.answered += 1
            if self.on_next:
                await reader.read(1)  # the next request's first byte: close now
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.mark.parametrize("max_retries", [0, 2])
@pytest.mark.parametrize("on_next", [True, False])
async def test_a_connection_the_server_closed_is_retried_at_once_and_costs_no_budget(
    on_next: bool, max_retries: int
) -> None:
    from asyncimg import RateLimit

    server = ClosingServer(on_next)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        async with AsyncImagesClient(
            api_key=KEY, base_url=f"http://127.0.0.1:{port}/v1", max_retries=max_retries,
            rate_limit=RateLimit(1000, 60.0),
        ) as client:
            for _ in range(30):
                await client.generate("x", model="dall-e-2")
            stats = client.limiter.stats()
    finally:
        listener.close()
        await listener.wait_closed()
    assert server.answered == 30
    assert (stats.granted, stats.sent, stats.refunded) == (30, 30, 0)


# -- 3. decompression bombs are refused from the header, undecoded -----------------------

def bomb_png(width: int = 13000, height: int = 13000, header_only: bool = False) -> bytes:
    """A small PNG (zlib-compressed zeros, 8-bit grey) of ``width`` x ``height`` pixels
    (``header_only``: its signature and IHDR chunk)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(body, zlib.crc32(kind))
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    if header_only:
        return b"\x89PNG\r\n\x1a\n" + ihdr
    packer = zlib.compressobj(9)
    row = bytes(1 + width)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    return b"\x89PNG\r\n\x1a\n" + ihdr + chunk(b"IDAT", data) + chunk(b"IEND", b"")


_PEAK = """
import asyncio, json, resource, sys
from pathlib import Path
import asyncimg, asyncimg.prepare
from asyncimg._batch.thumbs import make_thumbnails

what, path = sys.argv[1], Path(sys.argv[2])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
outcome = "accepted"
try:
    if what == "prepare":
        asyncimg.prepare.square_png(path)
    elif what == "edit":
        async def edit():
            async with asyncimg.AsyncImagesClient(
                api_key="k", base_url="http://127.0.0.1:9/v1", max_retries=0
            ) as client:
                await client.edit(path, "x", model="gpt-image-1")
        asyncio.run(edit())
    else:
        shown = make_thumbnails(path.parent, [path.name, "copy.png"])
        outcome = "thumbnailed" if ".thumbs/" in str(shown) else "not thumbnailed"
except asyncimg.ValidationError as exc:
    outcome = "refused: " + str(exc)
except asyncimg.APIError as exc:
    outcome = "sent: " + type(exc).__name__
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"grew_mb": (peak - before) / 1024, "outcome": outcome}))
"""


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    path.write_bytes(bomb_png())
    (path.parent / "copy.png").write_bytes(path.read_bytes())
    return path


@pytest.mark.subprocess
@pytest.mark.parametrize("what", ["prepare", "edit", "report"])
def test_a_decompression_bomb_is_refused_from_its_header(bomb: Path, what: str) -> None:
    assert bomb.stat().st_size < 300_000
    done = subprocess.run([sys.executable, "-c", _PEAK, what, str(bomb)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "DecompressionBombWarning" not in done.stderr
    result = json.loads(done.stdout)
    if what == "report":
        assert result["outcome"] == "not thumbnailed"
    else:
        assert result["outcome"].startswith("refused"), result
        assert "13000x13000 pixels: over the 64-megapixel ceiling" in result["outcome"]
    assert result["grew_mb"] < 40, result  # decoded, it is 161 MB of grey (RGBA: 645 MB)


def test_an_image_under_the_ceiling_still_decodes() -> None:
    from asyncimg._decode import decode_problem
    from asyncimg._files import MAX_IMAGE_PIXELS, pixel_problem

    assert MAX_IMAGE_PIXELS == 8192 * 8192
    assert pixel_problem(bomb_png(8192, 8192, header_only=True)) is None
    assert pixel_problem(bomb_png(8193, 8192, header_only=True)) is not None
    assert decode_problem(bomb_png(600, 400)) is None


# -- 4. symlinks planted in DIR never make the report write elsewhere -------------------

def _report_dir(tmp_path: Path) -> tuple[Path, Path]:
    """A batch directory with one large image; and a victim file outside it."""
    from asyncimg._batch.manifest import MANIFEST_NAME

    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "big-0.png").write_bytes(make_png(512, 512, "big"))
    line = {"id": "big", "line": 1, "prompt": "p", "status": "ok", "files": ["big-0.png"]}
    (folder / MANIFEST_NAME).write_text(json.dumps(line) + "\n")
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    return folder, victim


def test_planted_temporary_file_symlinks_are_never_written_through(tmp_path: Path) -> None:
    from asyncimg._batch.report import write_report

    folder, victim = _report_dir(tmp_path)
    (folder / ".index.html.part").symlink_to(victim)
    (folder / ".thumbs").mkdir()
    for suffix in ("webp", "png"):
        (folder / ".thumbs" / f".big-0.{suffix}.part").symlink_to(victim)
    page = write_report(folder)
    assert victim.read_text() == "mine"
    assert page.read_text().startswith("<!doctype html>")
    assert sorted(p.name for p in (folder / ".thumbs").iterdir() if not p.is_symlink()) in (
        ["big-0.webp", "cache.json"], ["big-0.png", "cache.json"])


def test_a_thumbs_symlink_out_of_the_directory_is_refused(tmp_path: Path) -> None:
    from asyncimg._batch.report import write_report

    folder, _ = _report_dir(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (folder / ".thumbs").symlink_to(elsewhere)
    with pytest.raises(OSError, match="not a directory of its own"):
        write_report(folder)
    assert list(elsewhere.iterdir()) == []


# -- 5. resume counts only files inside DIR ----------------------------------------------

def test_resume_counts_only_files_inside_the_directory(tmp_path: Path) -> None:
    from asyncimg._batch.manifest import MANIFEST_NAME, Manifest

    out = tmp_path / "out"
    out.mkdir()
    secret = tmp_path / "victim" / "secret.png"
    secret.parent.mkdir()
    secret.write_bytes(b"not ours")
    (out / "link-0.png").symlink_to(secret)
    (out / "d-0.png").write_bytes(make_png(4, 4, "d"))
    files = {"a": ["../victim/secret.png"], "b": [str(secret)], "c": ["link-0.png"],
             "d": ["d-0.png"], "e": ["/etc/passwd"]}
    (out / MANIFEST_NAME).write_text("".join(
        json.dumps({"id": i, "line": n, "prompt": "p", "status": "ok", "files": f}) + "\n"
        for n, (i, f) in enumerate(files.items(), 1)))
    (out / f".{MANIFEST_NAME}.compact.part").symlink_to(secret)  # planted
    manifest = Manifest(out)
    manifest.open()
    manifest.close()
    assert manifest.done == {"d"}
    assert secret.read_bytes() == b"not ours"
    assert [json.loads(x)["id"] for x in (out / MANIFEST_NAME).read_text().splitlines()] == ["d"]


# -- 6. a key in the base URL is never shown; userinfo is refused -------------------------

def test_the_sync_clients_repr_shows_no_key_from_the_base_url() -> None:
    from asyncimg import ImagesClient

    with ImagesClient(api_key=KEY, base_url="http://127.0.0.1:9/v1?api-key=SECRET-IN-QUERY",
                      rate_limit=None) as client:
        shown = repr(client)
    assert shown.startswith("ImagesClient(base_url='http://127.0.0.1:9/v1'")
    assert "SECRET" not in shown


def test_a_base_url_with_userinfo_is_a_validation_error() -> None:
    from asyncimg import ValidationError

    with pytest.raises(ValidationError) as info:
        AsyncImagesClient(api_key=KEY, base_url="http://user:PASSWORD@127.0.0.1:9/v1")
    assert info.value.param == "base_url"
    assert "PASSWORD" not in str(info.value)
    assert "carries a user or password" in str(info.value)


@pytest.mark.subprocess
def test_the_cli_says_so_for_a_base_url_with_userinfo(tmp_path: Path) -> None:
    done = _cli("generate", "--base-url", "http://user:PASSWORD@127.0.0.1:9/v1", "-o",
                str(tmp_path), "x")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "carries a user or password" in done.stderr
    assert "PASSWORD" not in done.stderr


# -- 13. a FIFO, a huge sparse file: refused before a byte is read -----------------------

async def test_a_fifo_as_an_image_is_refused_at_once(tmp_path: Path) -> None:
    from asyncimg import ValidationError

    fifo = tmp_path / "image.png"
    os.mkfifo(fifo)
    try:
        async with AsyncImagesClient(api_key=KEY, base_url="http://127.0.0.1:9/v1") as client:
            with pytest.raises(ValidationError, match="is not a regular file"):
                await asyncio.wait_for(client.edit(fifo, "x", model="gpt-image-1"), 5)
    finally:  # had a reader blocked on it (the bug), a writer that closes releases it
        with contextlib.suppress(OSError):  # ENXIO: no reader, as it should be
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


@pytest.mark.subprocess
def test_a_huge_sparse_file_is_refused_unread(tmp_path: Path) -> None:
    sparse = tmp_path / "huge.png"
    with open(sparse, "wb") as f:
        f.write(make_png(4, 4, "s"))
        f.truncate(2 * 2**30)  # 2 GiB, no block on disk
    script = (
        "import resource, sys\n"
        "from asyncimg import ValidationError\n"
        "from asyncimg._files import read_image\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    read_image(sys.argv[1])\n"
        "except ValidationError as exc:\n"
        "    print(exc)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(sparse)], capture_output=True,
                          text=True, timeout=60, check=False)
    message, grew_mb = done.stdout.splitlines()  # growth: a child starts at its parent's peak
    assert "is 2147483648 bytes, over the 64 MiB read from a path" in message
    assert int(grew_mb) < 40  # read, it is 2 GB
