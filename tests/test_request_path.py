"""One request path: every request the library sends carries the client's settings.

A server of the test's own records each request. A client with a token provider,
default headers and a default query sends every kind of request the library
knows (the three image calls, a stream, a download from the API's origin, the
Files and Batches requests of the Batch API); each must carry the fresh token,
the default header and the default query parameter.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from asyncimg import AsyncImagesClient, CallStats, Image, batch_api_line, submit_batch
from asyncimg._batch.api import file_lines, find_batch, retrieve
from asyncimg.testing import encode_png

PNG = encode_png(2, 2, [b"\x00" * 6] * 2)
B64 = base64.b64encode(PNG).decode()


class Recorder:
    """An aiohttp server that answers every endpoint plausibly and records what came."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, str], dict[str, str]]] = []
        self.base = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.seen.append(
            (request.method, request.path, dict(request.headers), dict(request.query))
        )
        path = request.path
        if path.startswith("/v1/images/"):
            body = await request.json() if request.content_type == "application/json" else {}
            if body.get("stream"):
                event = {"type": "image_generation.completed", "b64_json": B64,
                         "created_at": 1, "usage": {"input_tokens": 1, "output_tokens": 2,
                                                    "total_tokens": 3}}
                resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
                await resp.prepare(request)
                await resp.write(
                    f"event: image_generation.completed\ndata: {json.dumps(event)}\n\n".encode()
                )
                await resp.write_eof()
                return resp
            return web.json_response(
                {"created": 1, "data": [{"url": f"{self.base}/v1/blob/one.png"}]}
            )
        if path == "/v1/blob/one.png":
            return web.Response(body=PNG, content_type="image/png")
        if path == "/v1/files":
            return web.json_response({"id": "file-in", "object": "file"})
        batch = {"id": "batch_1", "object": "batch", "endpoint": "/v1/images/generations",
                 "input_file_id": "file-in", "output_file_id": "file-out",
                 "status": "completed", "created_at": 1,
                 "request_counts": {"total": 1, "completed": 1, "failed": 0}}
        if path in ("/v1/batches", "/v1/batches/batch_1", "/v1/batches/batch_1/cancel"):
            if request.method == "GET" and path == "/v1/batches":
                return web.json_response({"data": [batch], "has_more": False})
            return web.json_response(batch)
        if path == "/v1/files/file-out/content":
            line = {"custom_id": "a", "response": {"status_code": 200, "body": {
                "created": 1, "data": [{"b64_json": B64}]}}}
            return web.Response(body=json.dumps(line).encode() + b"\n")
        return web.json_response({"error": {"message": "no such path"}}, status=404)


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    rec = Recorder()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    rec.base = f"http://127.0.0.1:{port}"
    try:
        yield rec
    finally:
        await runner.cleanup()


async def test_every_request_carries_the_token_the_headers_and_the_query(
    recorder: Recorder,
) -> None:
    tokens = iter(f"token-{i}" for i in range(1000))

    async def token_provider() -> str:
        return next(tokens)

    async with AsyncImagesClient(
        base_url=recorder.base + "/v1",
        token_provider=token_provider,
        default_headers={"X-Team": "images"},
        default_query={"tenant": "t1"},
        rate_limit=None,
        max_retries=0,
    ) as client:
        r = await client.generate("a lantern", model="dall-e-2", size="256x256")
        await client.download(r.data[0])
        await client.edit(PNG, "add a moon", model="gpt-image-1.5")
        await client.create_variation(PNG, model="dall-e-2", size="256x256")
        stream = await client.generate("a lantern", model="gpt-image-1.5", stream=True)
        async with stream:
            [event async for event in stream]
        job = await submit_batch(client, [batch_api_line("a", "generate", {"prompt": "p"})])
        await retrieve(client, job.id)
        await find_batch(client, "file-in")
        results = [result async for result in job.results()]
        await file_lines(client, "file-out")
        await job.cancel()

    assert results[0].custom_id == "a"
    paths = [(method, path) for method, path, _, _ in recorder.seen]
    assert paths == [
        ("POST", "/v1/images/generations"),
        ("GET", "/v1/blob/one.png"),
        ("POST", "/v1/images/edits"),
        ("POST", "/v1/images/variations"),
        ("POST", "/v1/images/generations"),
        ("POST", "/v1/files"),
        ("POST", "/v1/batches"),
        ("GET", "/v1/batches/batch_1"),
        ("GET", "/v1/batches"),
        ("GET", "/v1/files/file-out/content"),
        ("GET", "/v1/files/file-out/content"),
        ("POST", "/v1/batches/batch_1/cancel"),
    ]
    authorizations = []
    for method, path, headers, query in recorder.seen:
        what = f"{method} {path}"
        assert headers.get("Authorization", "").startswith("Bearer token-"), what
        assert headers.get("X-Team") == "images", what
        assert query.get("tenant") == "t1", what
        authorizations.append(headers["Authorization"])
    # A fresh token for every request: the provider is asked each time.
    assert len(set(authorizations)) == len(authorizations)


async def test_a_download_from_another_origin_carries_no_credentials(
    recorder: Recorder,
) -> None:
    async with AsyncImagesClient(
        base_url="http://localhost:9/v1", api_key="sk-secret", rate_limit=None,
        default_query={"tenant": "t1"},
    ) as client:
        assert await client.download(Image(url=recorder.base + "/v1/blob/one.png")) == PNG
    (_, _, headers, query) = recorder.seen[0]
    assert "Authorization" not in headers
    assert query == {}


async def test_request_takes_nothing_from_the_rate_limit(recorder: Recorder) -> None:
    async with AsyncImagesClient(base_url=recorder.base + "/v1", api_key="k") as client:
        before = client.limiter.stats()
        raw = await client.request("GET", "/batches/batch_1")
        after = client.limiter.stats()
    assert raw.status == 200
    assert json.loads(raw.body)["id"] == "batch_1"
    assert after.granted == before.granted


async def test_call_stats_record_each_attempt(recorder: Recorder) -> None:
    stats = CallStats()
    async with AsyncImagesClient(base_url=recorder.base + "/v1", api_key="k") as client:
        await client.generate("a lantern", model="dall-e-2", size="256x256", stats=stats)
    assert stats.attempts == 1
    assert stats.sent[0][1] == 1
    assert stats.rate_limited == 0
    assert stats.waited >= 0.0


async def test_request_refuses_a_body_of_two_kinds() -> None:
    from asyncimg import ValidationError

    async with AsyncImagesClient(base_url="http://127.0.0.1:9/v1", api_key="k") as client:
        with pytest.raises(ValidationError) as caught:
            await client.request("POST", "/files", json={"a": 1}, data={"b": "2"})
    assert caught.value.param == "json"
