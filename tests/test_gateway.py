"""Behind a gateway (LiteLLM, Azure API Management): its errors, call ids and usage.

Each test runs a small server of its own that answers as the gateway was seen
to answer.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from asyncimg import (
    AsyncImagesClient,
    AuthenticationError,
    BadRequestError,
    InternalServerError,
    PermissionDeniedError,
)
from asyncimg._exceptions import REQUEST_ID_HEADERS, error_from_response

Handler = Callable[[web.Request], web.Response]


@pytest.fixture
async def gateway() -> AsyncIterator[Callable[[Handler], Any]]:
    runners: list[web.AppRunner] = []
    seen: list[web.Request] = []

    async def start(handler: Handler) -> tuple[str, list[web.Request]]:
        async def handle(request: web.Request) -> web.Response:
            seen.append(request)
            await request.read()
            return handler(request)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}/v1", seen

    yield start
    for runner in runners:
        await runner.cleanup()


def _litellm_error(status: int) -> web.Response:
    inner = {"error": {"message": "bad", "type": "invalid_request_error"}}
    body = {"error": {"message": f"{status}: {json.dumps(inner)}", "type": None,
                      "param": None, "code": str(status)}}
    return web.json_response(body, status=status, headers={"x-litellm-call-id": "call-123",
                                                          "retry-after-ms": "1"})


def test_a_code_that_repeats_the_status_is_printed_once() -> None:
    error = _litellm_error(400)
    assert isinstance(error.body, bytes)
    exc = error_from_response(400, error.body, request_id="call-1")
    assert str(exc).startswith('Error 400: {"error"')
    assert "400 400" not in str(exc)
    azure = error_from_response(401, b'{"error": {"code": "401", "message": "Access denied"}}')
    assert str(azure) == "Error 401: Access denied"
    kept = error_from_response(400, b'{"error": {"code": "invalid_size", "message": "no"}}')
    assert str(kept) == "Error 400 invalid_size: no"


@pytest.mark.parametrize(
    ("status", "cls", "attempts"),
    [(500, InternalServerError, 2), (401, AuthenticationError, 1),
     (403, PermissionDeniedError, 1)],
)
async def test_no_key_sent_is_said_and_a_5xx_is_retried_once(
    gateway: Any, status: int, cls: type[Exception], attempts: int
) -> None:
    base_url, seen = await gateway(lambda _: _litellm_error(status))
    async with AsyncImagesClient(base_url=base_url, api_key="", rate_limit=None,
                                 max_retries=3) as client:
        with pytest.raises(cls) as info:
            await client.generate("p", model="dall-e-2")
    assert "no API key was sent: set OPENAI_API_KEY or api_key=" in str(info.value)
    assert len(seen) == attempts
    assert "Authorization" not in seen[0].headers
    assert info.value.request_id == "call-123"  # type: ignore[attr-defined]


async def test_a_5xx_with_a_key_is_retried_as_usual_and_says_nothing_of_keys(
    gateway: Any,
) -> None:
    base_url, seen = await gateway(lambda _: _litellm_error(500))
    async with AsyncImagesClient(base_url=base_url, api_key="sk-1", rate_limit=None,
                                 max_retries=2) as client:
        with pytest.raises(InternalServerError) as info:
            await client.generate("p", model="dall-e-2")
    assert "no API key" not in str(info.value)
    assert len(seen) == 3


async def test_a_400_without_a_key_is_not_blamed_on_the_key(gateway: Any) -> None:
    base_url, _ = await gateway(lambda _: _litellm_error(400))
    async with AsyncImagesClient(base_url=base_url, api_key="", rate_limit=None) as client:
        with pytest.raises(BadRequestError) as info:
            await client.generate("p", model="dall-e-2")
    assert "no API key" not in str(info.value)


@pytest.mark.parametrize("header", REQUEST_ID_HEADERS)
async def test_the_request_id_is_the_first_id_header_present(gateway: Any, header: str) -> None:
    later = REQUEST_ID_HEADERS[REQUEST_ID_HEADERS.index(header) + 1 :]

    def answer(_: web.Request) -> web.Response:
        headers = {header: "the-id", **{name: f"not-{name}" for name in later}}
        return web.json_response({"created": 1, "data": [{"url": "http://x/1.png"}]},
                                 headers=headers)

    base_url, _ = await gateway(answer)
    async with AsyncImagesClient(base_url=base_url, api_key="sk-1", rate_limit=None) as client:
        response = await client.generate("p", model="dall-e-2")
    assert response.request_id == "the-id"


async def test_an_all_zero_usage_is_unknown_not_free(gateway: Any) -> None:
    usages = iter([
        {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0,
         "input_tokens_details": {"text_tokens": 0, "image_tokens": 0}},
        {"input_tokens": 5, "output_tokens": 272, "total_tokens": 277},
    ])

    def answer(_: web.Request) -> web.Response:
        return web.json_response({"created": 1, "data": [{"b64_json": "AAAA"}],
                                  "usage": next(usages)})

    base_url, _ = await gateway(answer)
    async with AsyncImagesClient(base_url=base_url, api_key="sk-1", rate_limit=None) as client:
        assert (await client.generate("p", model="dall-e-2")).usage is None
        assert (await client.generate("p", model="dall-e-2")).usage is None
        usage = (await client.generate("p", model="gpt-image-1")).usage
    assert usage is not None
    assert usage.output_tokens == 272
