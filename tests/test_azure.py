"""Azure OpenAI: a fake Azure endpoint (paths, query, headers, tokens), the emulator's Azure
mode, content-filter errors, the blocking client and ``asyncimg serve --azure``."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from asyncimg import (
    AsyncImagesClient,
    AuthenticationError,
    ContentPolicyError,
    ImageRef,
    NotFoundError,
    ValidationError,
)
from asyncimg.testing import CONTENT_POLICY_MARKER, Emulator, emulator_thread, make_png
from asyncimg.testing._azure import azure_content_filter

AZURE_KEY = "azure-key-0123456789-SECRET"
VERSION = "2025-04-01-preview"
B64 = __import__("base64").b64encode(make_png(8, 8, "x")).decode()


class FakeAzure:
    """An Azure-shaped server that records every request as it arrived."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append(
            {
                "path": request.path,
                "query": dict(request.query),
                "headers": dict(request.headers),
                "body": body,
            }
        )
        if CONTENT_POLICY_MARKER.encode() in body:
            error = azure_content_filter("a prompt")
            return web.json_response(error, status=400)
        return web.json_response({"created": 1, "data": [{"b64_json": B64}]})

    async def __aenter__(self) -> FakeAzure:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


@pytest.fixture
async def fake() -> AsyncIterator[FakeAzure]:
    async with FakeAzure() as server:
        yield server


@pytest.fixture(autouse=True)
def _no_ambient_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", "AZURE_OPENAI_ENDPOINT",
                 "OPENAI_API_VERSION"):
        monkeypatch.delenv(name, raising=False)


async def test_paths_query_and_the_key_as_api_key(
    fake: FakeAzure, monkeypatch: pytest.MonkeyPatch, log_lines: list[str]
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-must-not-go-to-azure")
    async with AsyncImagesClient.azure(
        endpoint=fake.url + "/", deployment="img-dep", api_version=VERSION, api_key=AZURE_KEY,
        rate_limit=None, default_query={"tenant": "t1"},
    ) as client:
        await client.generate("a lantern", extra_query={"trace": "1"})
        await client.edit(make_png(8, 8, "in", alpha=True), "a moon", model="dall-e-2")
        await client.edit(ImageRef(file_id="file-1"), "a moon", model="gpt-image-1")
    paths = [s["path"] for s in fake.seen]
    assert paths == [
        "/openai/deployments/img-dep/images/generations",
        "/openai/deployments/img-dep/images/edits",
        "/openai/deployments/img-dep/images/edits",
    ]
    assert fake.seen[0]["query"] == {"api-version": VERSION, "tenant": "t1", "trace": "1"}
    assert fake.seen[1]["query"] == {"api-version": VERSION, "tenant": "t1"}
    for seen in fake.seen:
        assert seen["headers"]["api-key"] == AZURE_KEY
        assert "Authorization" not in seen["headers"]
    assert fake.seen[1]["headers"]["Content-Type"].startswith("multipart/form-data")
    assert json.loads(fake.seen[2]["body"])["images"] == [{"file_id": "file-1"}]
    assert not [line for line in log_lines if AZURE_KEY in line]


async def test_the_sdk_s_environment_variables(
    fake: FakeAzure, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", fake.url)
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", AZURE_KEY)
    monkeypatch.setenv("OPENAI_API_VERSION", "2024-02-01")
    async with AsyncImagesClient.azure(deployment="d", rate_limit=None) as client:
        await client.generate("p")
    assert fake.seen[0]["path"] == "/openai/deployments/d/images/generations"
    assert fake.seen[0]["query"] == {"api-version": "2024-02-01"}
    assert fake.seen[0]["headers"]["api-key"] == AZURE_KEY


async def test_without_a_deployment_the_model_names_it(fake: FakeAzure) -> None:
    async with AsyncImagesClient.azure(
        endpoint=fake.url, api_version=VERSION, api_key=AZURE_KEY, rate_limit=None
    ) as client:
        await client.generate("p", model="gpt-image-1")
        with pytest.raises(ValidationError) as info:
            await client.generate("p")
        assert info.value.param == "model"
    assert [s["path"] for s in fake.seen] == ["/openai/deployments/gpt-image-1/images/generations"]


@pytest.mark.parametrize("kind", ["sync", "async", "async object"])
async def test_a_token_provider_is_asked_for_every_request(fake: FakeAzure, kind: str) -> None:
    calls: list[int] = []

    def sync_provider() -> str:
        calls.append(1)
        return f"token-{len(calls)}"

    async def async_provider() -> str:
        await asyncio.sleep(0)
        return sync_provider()

    class Credential:
        async def __call__(self) -> str:
            return sync_provider()

    provider = {"sync": sync_provider, "async": async_provider, "async object": Credential()}[kind]
    async with AsyncImagesClient.azure(
        endpoint=fake.url, deployment="d", api_version=VERSION, token_provider=provider,
        rate_limit=None,
    ) as client:
        for _ in range(3):
            await client.generate("p")
    assert [s["headers"]["Authorization"] for s in fake.seen] == [
        "Bearer token-1", "Bearer token-2", "Bearer token-3"
    ]
    assert all("api-key" not in s["headers"] for s in fake.seen)


async def test_a_token_provider_that_gives_no_token_sends_nothing(fake: FakeAzure) -> None:
    async with AsyncImagesClient.azure(
        endpoint=fake.url, deployment="d", api_version=VERSION, token_provider=lambda: None,
        rate_limit=None,
    ) as client:
        with pytest.raises(ValidationError) as info:
            await client.generate("p")
    assert info.value.param == "token_provider"
    assert fake.seen == []


async def test_content_filter_is_a_content_policy_error_with_its_details(fake: FakeAzure) -> None:
    async with AsyncImagesClient.azure(
        endpoint=fake.url, deployment="d", api_version=VERSION, api_key=AZURE_KEY,
        rate_limit=None,
    ) as client:
        with pytest.raises(ContentPolicyError) as info:
            await client.generate(f"a {CONTENT_POLICY_MARKER} prompt")
    error = info.value
    assert error.code == "contentFilter"
    assert error.param == "prompt"
    assert error.inner_error is not None
    assert error.inner_error["code"] == "ResponsibleAIPolicyViolation"
    results = error.content_filter_results
    assert results is not None
    assert results["violence"] == {"filtered": True, "severity": "high"}
    assert results["hate"] == {"filtered": False, "severity": "safe"}


# ------------------------------------------------------------ the emulator in Azure mode


@pytest.fixture
async def azure_emu() -> AsyncIterator[Emulator]:
    async with Emulator(azure=True, api_key=AZURE_KEY) as emulator:
        yield emulator


async def test_the_emulator_serves_azure_paths(azure_emu: Emulator) -> None:
    async with AsyncImagesClient.azure(
        endpoint=azure_emu.endpoint, deployment="dalle", api_version=VERSION, api_key=AZURE_KEY,
        rate_limit=None, max_retries=0,
    ) as client:
        r = await client.generate("a lantern", model="dall-e-2", size="256x256")
        assert r.data[0].url is not None
        assert len(await client.download(r.data[0])) > 0
        r = await client.edit(ImageRef(url=r.data[0].url), "a moon", model="gpt-image-1")
        assert r.data[0].b64_json
        with pytest.raises(ContentPolicyError) as info:
            await client.generate(CONTENT_POLICY_MARKER)
        assert info.value.code == "contentFilter"
        assert info.value.content_filter_results is not None
        assert info.value.content_filter_results["violence"]["filtered"] is True
    sent = azure_emu.requests("/openai/deployments/dalle/images/generations")
    assert sent[0].query == {"api-version": VERSION}
    assert AZURE_KEY not in json.dumps(sent[0].headers)  # the journal masks api-key too


async def test_the_emulator_checks_the_key_and_the_api_version(azure_emu: Emulator) -> None:
    async with AsyncImagesClient.azure(
        endpoint=azure_emu.endpoint, deployment="d", api_version=VERSION, api_key="wrong",
        rate_limit=None, max_retries=0,
    ) as client:
        with pytest.raises(AuthenticationError) as auth:
            await client.generate("p")
    assert auth.value.code == "401"
    path = "/openai/deployments/d/images/generations"
    async with aiohttp.ClientSession() as session:
        async with session.post(azure_emu.endpoint + path, json={"prompt": "p"},
                                headers={"api-key": AZURE_KEY}) as r:
            assert r.status == 404
        async with session.post(azure_emu.endpoint + path + "?api-version=latest",
                                json={"prompt": "p"}, headers={"api-key": AZURE_KEY}) as r:
            assert r.status == 400
            assert (await r.json())["error"]["message"] == "API version not supported"
        async with session.post(azure_emu.endpoint + path + f"?api-version={VERSION}",
                                json={"prompt": "p"},
                                headers={"Authorization": f"Bearer {AZURE_KEY}"}) as r:
            assert r.status == 401  # the key as a bearer token: Azure wants api-key
            assert "Access token" in (await r.json())["error"]["message"]
    async with AsyncImagesClient(base_url=azure_emu.base_url, api_key=AZURE_KEY,
                                 rate_limit=None, max_retries=0) as plain:
        with pytest.raises(NotFoundError):
            await plain.generate("p")  # /v1 is not served in Azure mode


async def test_the_emulator_takes_an_entra_token_as_bearer_not_the_key() -> None:
    path = "/openai/deployments/d/images/generations?api-version=" + VERSION
    async with Emulator(azure=True, api_key=AZURE_KEY, azure_token="entra-token") as emu:
        async with aiohttp.ClientSession() as session:
            for auth, status in ((f"Bearer {AZURE_KEY}", 401), ("Bearer entra-token", 200),
                                 ("Bearer other", 401)):
                async with session.post(emu.endpoint + path, json={"prompt": "p"},
                                        headers={"Authorization": auth}) as r:
                    assert r.status == status, auth
        async with AsyncImagesClient.azure(
            endpoint=emu.endpoint, deployment="d", api_version=VERSION,
            token_provider=lambda: "entra-token", rate_limit=None,
        ) as client:
            assert len((await client.generate("p")).data) == 1


@pytest.fixture
def azure_emu_in_thread() -> Iterator[Emulator]:
    with emulator_thread(azure=True, api_key=AZURE_KEY) as emulator:
        yield emulator


def test_the_blocking_client_has_azure_too(azure_emu_in_thread: Emulator) -> None:
    from asyncimg import ImagesClient

    with ImagesClient.azure(
        endpoint=azure_emu_in_thread.endpoint, deployment="d", api_version=VERSION,
        api_key=AZURE_KEY, rate_limit=None,
    ) as client:
        assert isinstance(client, ImagesClient)
        r = client.generate("a lantern", model="gpt-image-1")
    assert r.data[0].b64_json
    with pytest.raises(ValidationError) as info:
        ImagesClient.azure(deployment="d", api_version=VERSION, api_key=AZURE_KEY)
    assert info.value.param == "endpoint"


def test_serve_azure_from_the_command_line() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "asyncimg", "serve", "--azure", "--port", "0",
         "--api-key", AZURE_KEY],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "Azure OpenAI" in line, line + (proc.stderr.read() if proc.stderr else "")
        found = re.search(r"listening on (http://127\.0\.0\.1:[0-9]+)", line)
        assert found is not None, line
        endpoint_url = found.group(1)
        from asyncimg import ImagesClient

        with ImagesClient.azure(
            endpoint=endpoint_url, deployment="d", api_version=VERSION, api_key=AZURE_KEY,
            rate_limit=None,
        ) as client:
            assert client.generate("a lantern", model="gpt-image-1").data[0].b64_json
    finally:
        proc.terminate()
        proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


async def test_the_official_sdk_s_azure_client_against_the_emulator(azure_emu: Emulator) -> None:
    import openai

    async with openai.AsyncAzureOpenAI(
        azure_endpoint=azure_emu.endpoint, azure_deployment="img", api_version=VERSION,
        api_key=AZURE_KEY, max_retries=0,
    ) as sdk:
        generated = await sdk.images.generate(prompt="a lantern", model="gpt-image-1")
        assert generated.data is not None
        assert generated.data[0].b64_json
        edited = await sdk.images.edit(
            image=("in.png", make_png(64, 64, "in", alpha=True), "image/png"),
            prompt="add a moon", model="gpt-image-1",
        )
        assert edited.data is not None
        assert edited.data[0].b64_json
        with pytest.raises(openai.BadRequestError) as info:
            await sdk.images.generate(prompt=CONTENT_POLICY_MARKER, model="gpt-image-1")
        assert info.value.code == "contentFilter"
    paths = [e.path for e in azure_emu.journal]
    assert paths == ["/openai/deployments/img/images/generations",
                     "/openai/deployments/img/images/edits",
                     "/openai/deployments/img/images/generations"]


def test_the_blocking_azure_has_the_async_signature_and_doc() -> None:
    import inspect

    from asyncimg import ImagesClient

    assert inspect.signature(ImagesClient.azure) == inspect.signature(AsyncImagesClient.azure)
    assert ImagesClient.azure.__doc__ == AsyncImagesClient.azure.__doc__
