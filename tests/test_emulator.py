"""The emulator, driven with a raw aiohttp client: shapes, images, urls, limits, faults."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import attrs
import pytest

import asyncimg
from asyncimg._files import image_info
from asyncimg.testing import (
    CONTENT_POLICY_MARKER,
    Emulator,
    Fault,
    JournalEntry,
    encode_png,
    format_duration,
    make_png,
    mask_key,
)
from asyncimg.testing.pytest_plugin import EMULATOR_API_KEY, emulator  # noqa: F401

KEY = EMULATOR_API_KEY
AUTH = {"Authorization": f"Bearer {KEY}"}
GEN = "/images/generations"
EDIT = "/images/edits"
VAR = "/images/variations"


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def post(
    session: aiohttp.ClientSession,
    emu: Emulator,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    form: aiohttp.FormData | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, Any]:
    """POST and return (status, headers, decoded JSON or text)."""
    kwargs: dict[str, Any] = {"headers": AUTH if headers is None else headers}
    if form is not None:
        kwargs["data"] = form
    else:
        kwargs["json"] = body
    async with session.post(emu.base_url + path, **kwargs) as r:
        text = await r.text()
        try:
            decoded: Any = json.loads(text)
        except ValueError:
            decoded = text
        return r.status, r.headers, decoded


def png_of(item: dict[str, Any]) -> bytes:
    return base64.b64decode(item["b64_json"])


def form_with(fields: dict[str, str], files: list[tuple[str, bytes, str]]) -> aiohttp.FormData:
    form = aiohttp.FormData(default_to_multipart=True)
    for name, value in fields.items():
        form.add_field(name, value)
    for name, data, filename in files:
        form.add_field(name, data, filename=filename, content_type="image/png")
    return form


def assert_error(body: Any, *, type_: str | None = None, code: str | None = None) -> None:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    if type_ is not None:
        assert body["error"]["type"] == type_
    assert body["error"]["code"] == code


# ------------------------------------------------------------------ the PNGs


def test_make_png_has_the_size_asked_and_is_deterministic() -> None:
    data = make_png(300, 200, "a cat")
    info = image_info(data)
    assert info is not None
    assert (info.format, info.width, info.height, info.has_alpha) == ("png", 300, 200, False)
    assert make_png(300, 200, "a cat") is data  # cached
    assert make_png(300, 200, "a dog") != data
    rgba = image_info(make_png(64, 64, "x", alpha=True))
    assert rgba is not None
    assert rgba.has_alpha


def test_a_1024_png_is_cheap() -> None:
    make_png.cache_clear()
    started = time.perf_counter()
    make_png(1024, 1024, "fresh seed for timing")
    assert time.perf_counter() - started < 2.0  # about 30 ms idle; a bound load cannot break


def test_encode_png_and_make_png_refuse_bad_sizes() -> None:
    with pytest.raises(ValueError, match="rows do not make"):
        encode_png(2, 2, [b"\x00" * 6])
    with pytest.raises(ValueError, match="positive size"):
        encode_png(0, 1, [])
    with pytest.raises(ValueError, match="cannot draw"):
        make_png(5000, 5000)


def test_mask_key_and_format_duration() -> None:
    assert mask_key("sk-abcdefghijklmnopqrstuvwxyz") == "sk-" + "*" * 20 + "wxyz"
    assert mask_key("short") == "*****"
    assert [format_duration(s) for s in (0, 0.02, 1, 1.5, 360, 3725)] == [
        "0s",
        "20ms",
        "1s",
        "1.5s",
        "6m0s",
        "1h2m5s",
    ]


# ------------------------------------------------------------------- success


async def test_generation_dall_e_2_answers_urls_with_api_headers(
    emulator: Emulator,  # noqa: F811
    session: aiohttp.ClientSession,
) -> None:
    status, headers, body = await post(session, emulator, GEN, {"prompt": "a cat", "n": 2})
    assert status == 200
    assert re.fullmatch(r"req_[0-9a-f]{32}", headers["x-request-id"])
    assert headers["openai-version"] == "2020-10-01"
    assert int(headers["openai-processing-ms"]) >= 0
    assert "x-ratelimit-limit-images" not in headers  # no limit configured
    assert set(body) == {"created", "data"}
    assert abs(body["created"] - time.time()) < 60
    assert len(body["data"]) == 2
    for item in body["data"]:
        assert set(item) == {"url"}
        assert item["url"].startswith(emulator.blob_base_url + "/blobs/")
        assert not item["url"].startswith(emulator.base_url)  # another origin
        async with session.get(item["url"]) as r:
            assert r.status == 200
            assert r.content_type == "image/png"
            info = image_info(await r.read())
        assert info is not None
        assert (info.width, info.height) == (1024, 1024)


async def test_generation_b64_json_has_the_requested_size(
    emulator: Emulator,  # noqa: F811
    session: aiohttp.ClientSession,
) -> None:
    status, _, body = await post(
        session,
        emulator,
        GEN,
        {"prompt": "a cat", "model": "dall-e-2", "size": "256x256", "response_format": "b64_json"},
    )
    assert status == 200
    info = image_info(png_of(body["data"][0]))
    assert info is not None
    assert (info.format, info.width, info.height) == ("png", 256, 256)


async def test_dall_e_3_adds_revised_prompt(
    emulator: Emulator,  # noqa: F811
    session: aiohttp.ClientSession,
) -> None:
    status, _, body = await post(
        session,
        emulator,
        GEN,
        {
            "prompt": "a lighthouse",
            "model": "dall-e-3",
            "size": "1792x1024",
            "response_format": "b64_json",
            "quality": "hd",
            "style": "natural",
        },
    )
    assert status == 200
    (item,) = body["data"]
    assert "a lighthouse" in item["revised_prompt"]
    info = image_info(png_of(item))
    assert info is not None
    assert (info.width, info.height) == (1792, 1024)


async def test_gpt_image_models_answer_b64_with_usage_and_settings(
    emulator: Emulator,  # noqa: F811
    session: aiohttp.ClientSession,
) -> None:
    status, _, body = await post(
        session,
        emulator,
        GEN,
        {
            "prompt": "a fox in the snow",
            "model": "gpt-image-1",
            "n": 3,
            "size": "1536x1024",
            "quality": "high",
            "background": "transparent",
            "output_format": "webp",
        },
    )
    assert status == 200
    assert set(body) == {
        "created",
        "data",
        "background",
        "output_format",
        "quality",
        "size",
        "usage",
    }
    assert (body["background"], body["output_format"], body["quality"], body["size"]) == (
        "transparent",
        "webp",
        "high",
        "1536x1024",
    )
    usage = body["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert set(usage["input_tokens_details"]) == {"text_tokens", "image_tokens"}
    assert usage["output_tokens_details"]["image_tokens"] == usage["output_tokens"]
    assert len(body["data"]) == 3
    for item in body["data"]:
        assert set(item) == {"b64_json"}
        info = image_info(png_of(item))  # PNG bytes even for webp: documented
        assert info is not None
        assert (info.width, info.height, info.has_alpha) == (1536, 1024, True)


async def test_gpt_defaults_auto_size_and_a_gpt_only_parameter_picks_gpt(
    emulator: Emulator,  # noqa: F811
    session: aiohttp.ClientSession,
) -> None:
    status, _, body = await post(
        session, emulator, GEN, {"prompt": "p", "output_format": "jpeg", "size": "auto"}
    )
    assert status == 200
    assert (body["output_format"], body["size"], body["background"]) == (
        "jpeg",
        "1024x1024",
        "opaque",
    )
    assert "b64_json" in body["data"][0]


async def test_generations_are_deterministic_per_prompt_size_and_index(
    emulator: Emulator,  # noqa: F811
    session: aiohttp.ClientSession,
) -> None:
    def ask(prompt: str, size: str = "512x512") -> dict[str, Any]:
        return {"prompt": prompt, "n": 2, "size": size, "response_format": "b64_json"}

    _, _, first = await post(session, emulator, GEN, ask("same"))
    _, _, again = await post(session, emulator, GEN, ask("same"))
    _, _, other = await post(session, emulator, GEN, ask("different"))
    _, _, bigger = await post(session, emulator, GEN, ask("same", "1024x1024"))
    a = [item["b64_json"] for item in first["data"]]
    assert a == [item["b64_json"] for item in again["data"]]
    assert a[0] != a[1]
    assert a[0] != other["data"][0]["b64_json"]
    assert a[0] != bigger["data"][0]["b64_json"]


async def test_edit_with_mask_dall_e_2(
    emulator: Emulator,  # noqa: F811
    session: aiohttp.ClientSession,
) -> None:
    image = make_png(256, 256, "input", alpha=True)
    mask = make_png(256, 256, "mask", alpha=True)
    form = form_with(
        {"prompt": "add a hat", "model": "dall-e-2", "size": "512x512", "n": "2"},
        [("image", image, "in.png"), ("mask", mask, "mask.png")],
    )
    status, _, body = await post(session, emulator, EDIT, form=form)
    assert status == 200, body
    assert len(body["data"]) == 2
    async with session.get(body["data"][0]["url"]) as r:
        info = image_info(await r.read())
    assert info is not None
    assert (info.width, info.height) == (512, 512)
    (entry,) = emulator.requests("edit")
    assert entry.fields == {"prompt": "add a hat", "model": "dall-e-2", "size": "512x512", "n": "2"}
    assert [(f.field, f.filename, f.mime, f.size) for f in entry.files] == [
        ("image", "in.png", "image/png", len(image)),
        ("mask", "mask.png", "image/png", len(mask)),
    ]
    assert entry.images == 2


async def test_edit_gpt_with_several_images_and_default_model(
    emulator: Emulator,  # noqa: F811
    session: aiohttp.ClientSession,
) -> None:
    images = [("image[]", make_png(64, 64, f"in{i}"), f"in{i}.png") for i in range(3)]
    status, _, body = await post(
        session,
        emulator,
        EDIT,
        form=form_with({"prompt": "merge them", "model": "gpt-image-1"}, images),
    )
    assert status == 200, body
    assert body["usage"]["input_tokens_details"]["image_tokens"] > 0
    assert "b64_json" in body["data"][0]
    # No model: edits default to gpt-image-1.5 (the spec's default), so b64_json.
    status, _, body = await post(
        session, emulator, EDIT, form=form_with({"prompt": "x"}, images[:1])
    )
    assert status == 200
    assert "b64_json" in body["data"][0]
    assert body["output_format"] == "png"


async def test_variation_answers_urls_of_the_size_asked(
    emulator: Emulator,  # noqa: F811
    session: aiohttp.ClientSession,
) -> None:
    form = form_with({"size": "256x256"}, [("image", make_png(128, 128, "v"), "v.png")])
    status, _, body = await post(session, emulator, VAR, form=form)
    assert status == 200, body
    async with session.get(body["data"][0]["url"]) as r:
        info = image_info(await r.read())
    assert info is not None
    assert (info.width, info.height) == (256, 256)


# ---------------------------------------------------------------------- urls


async def test_urls_expire_after_url_ttl(session: aiohttp.ClientSession) -> None:
    clock = FakeClock()
    async with Emulator(url_ttl=60.0, clock=clock) as emu:
        _, _, body = await post(session, emu, GEN, {"prompt": "p"}, headers={})
        url = body["data"][0]["url"]
        clock.now += 59.9
        async with session.get(url) as r:
            assert r.status == 200
        clock.now += 0.1
        async with session.get(url) as r:
            assert r.status == 403
            assert r.content_type == "application/xml"
            assert "AuthenticationFailed" in await r.text()
        async with session.get(emu.blob_base_url + "/blobs/img-nope.png") as r:
            assert r.status == 404
            assert "BlobNotFound" in await r.text()
        downloads = emu.requests("/blobs/")
        assert [e.status for e in downloads] == [200, 403, 404]


# ------------------------------------------------------------------- refusals


async def test_missing_or_wrong_key_is_401_and_the_key_is_masked(
    emulator: Emulator,  # noqa: F811
    session: aiohttp.ClientSession,
) -> None:
    status, headers, body = await post(session, emulator, GEN, {"prompt": "p"}, headers={})
    assert status == 401
    assert headers["x-request-id"].startswith("req_")
    assert_error(body, type_="invalid_request_error", code="invalid_api_key")
    wrong = "sk-proj-this-is-the-wrong-key-9876"
    status, _, body = await post(
        session, emulator, GEN, {"prompt": "p"}, headers={"Authorization": f"Bearer {wrong}"}
    )
    assert status == 401
    assert_error(body, code="invalid_api_key")
    assert "Incorrect API key provided: sk-" in body["error"]["message"]
    assert wrong not in body["error"]["message"]
    assert "9876" in body["error"]["message"]
    assert emulator.arrivals == []


async def test_no_api_key_configured_accepts_anything(session: aiohttp.ClientSession) -> None:
    async with Emulator() as emu:
        status, _, _ = await post(session, emu, GEN, {"prompt": "p"}, headers={})
        assert status == 200


async def test_validation_errors_are_400_in_the_api_shape(
    emulator: Emulator,  # noqa: F811
    session: aiohttp.ClientSession,
) -> None:
    status, headers, body = await post(
        session, emulator, GEN, {"prompt": "p", "model": "dall-e-2", "size": "300x300"}
    )
    assert status == 400
    assert headers["x-request-id"].startswith("req_")
    assert_error(body, type_="invalid_request_error", code=None)
    assert body["error"]["param"] == "size"
    assert "300x300" in body["error"]["message"]

    status, _, body = await post(session, emulator, GEN, {"model": "dall-e-2"})
    assert (status, body["error"]["param"]) == (400, "prompt")

    status, _, body = await post(session, emulator, GEN, {"prompt": "p", "n": "two"})
    assert (status, body["error"]["param"]) == (400, "n")

    form = form_with({"prompt": "p", "n": "lots"}, [("image", make_png(8, 8, "i"), "i.png")])
    status, _, body = await post(session, emulator, EDIT, form=form)
    assert (status, body["error"]["param"]) == (400, "n")

    status, _, body = await post(session, emulator, EDIT, form=form_with({"prompt": "p"}, []))
    assert (status, body["error"]["param"]) == (400, "image")

    status, _, body = await post(session, emulator, GEN, {"prompt": "p", "stream": True})
    assert (status, body["error"]["param"]) == (400, "stream")
    assert emulator.arrivals == []


async def test_malformed_json_wrong_content_type_and_unknown_paths(
    emulator: Emulator,  # noqa: F811
    session: aiohttp.ClientSession,
) -> None:
    url = emulator.base_url + GEN
    json_headers = {**AUTH, "Content-Type": "application/json"}
    async with session.post(url, data=b'{"prompt": ', headers=json_headers) as r:
        assert r.status == 400
        body = await r.json()
    assert_error(body, type_="invalid_request_error")
    assert "could not parse the JSON body" in body["error"]["message"]
    async with session.post(url, data=b"[1, 2]", headers=json_headers) as r:
        assert r.status == 400
    async with session.post(url, data=b"prompt=p", headers=AUTH) as r:
        assert r.status == 400
        assert "Content-Type" in (await r.json())["error"]["message"]
    async with session.post(emulator.base_url + EDIT, json={"prompt": "p"}, headers=AUTH) as r:
        assert r.status == 400  # a JSON edit needs its images (by reference)
        assert (await r.json())["error"]["param"] == "images"
    async with session.post(emulator.base_url + EDIT, data=b"prompt=p", headers=AUTH) as r:
        assert r.status == 400
        assert "multipart/form-data or application/json" in (await r.json())["error"]["message"]
    async with session.get(url, headers=AUTH) as r:
        assert r.status == 404
        assert_error(await r.json(), type_="invalid_request_error")
    async with session.post(emulator.base_url + "/images/nothing", headers=AUTH) as r:
        assert r.status == 404
        assert "Invalid URL (POST /v1/images/nothing)" in (await r.json())["error"]["message"]


@pytest.mark.parametrize(
    ("model", "code"),
    [
        ("dall-e-2", "content_policy_violation"),
        ("dall-e-3", "content_policy_violation"),
        ("gpt-image-1", "moderation_blocked"),
    ],
)
async def test_content_policy_marker(
    emulator: Emulator,  # noqa: F811
    session: aiohttp.ClientSession,
    model: str,
    code: str,
) -> None:
    prompt = f"a picture of {CONTENT_POLICY_MARKER.upper()} things"
    status, _, body = await post(session, emulator, GEN, {"prompt": prompt, "model": model})
    assert status == 400
    assert_error(body, code=code)


# ------------------------------------------------------------------ rate limit


async def test_rate_limit_answers_429_with_retry_after_and_headers(
    session: aiohttp.ClientSession,
) -> None:
    clock = FakeClock()
    async with Emulator(images_per_minute=(3, 2.0), clock=clock) as emu:
        status, headers, _ = await post(session, emu, GEN, {"prompt": "p", "n": 2}, headers={})
        assert status == 200
        assert headers["x-ratelimit-limit-images"] == "3"
        assert headers["x-ratelimit-remaining-images"] == "1"
        assert headers["x-ratelimit-reset-images"] == "2s"
        clock.now += 0.5
        status, headers, body = await post(session, emu, GEN, {"prompt": "p", "n": 2}, headers={})
        assert status == 429
        assert_error(body, type_="requests", code="rate_limit_exceeded")
        assert body["error"]["message"].startswith("Rate limit reached for images per min")
        assert headers["Retry-After"] == "2"  # 1.5 s rounded up
        assert headers["retry-after-ms"] == "1500"
        assert headers["x-ratelimit-remaining-images"] == "1"
        assert headers["x-ratelimit-reset-images"] == "1.5s"
        status, _, _ = await post(session, emu, GEN, {"prompt": "p", "n": 1}, headers={})
        assert status == 200  # one image still fits
        clock.now += 1.5  # the first request (2 images) leaves the window
        status, headers, _ = await post(session, emu, GEN, {"prompt": "p", "n": 2}, headers={})
        assert status == 200
        assert headers["x-ratelimit-remaining-images"] == "0"
        # A request larger than the whole limit can never pass: it waits a full window.
        status, headers, _ = await post(session, emu, GEN, {"prompt": "p", "n": 4}, headers={})
        assert status == 429
        assert headers["retry-after-ms"] == "2000"
        assert emu.arrivals == [(1000.0, 2), (1000.5, 1), (1002.0, 2)]
        assert emu.max_images_in_window() == 3
        assert emu.max_images_in_window(10.0) == 5
        assert len(emu.requests(GEN, status=429)) == 2


async def test_rate_limit_accepts_an_int_or_a_rate_limit_object() -> None:
    @attrs.frozen
    class RateLimitLike:
        images: int
        per: float

    assert Emulator(images_per_minute=50).rate_limit == (50, 60.0)
    assert Emulator(images_per_minute=RateLimitLike(20, 2.0)).rate_limit == (20, 2.0)
    with pytest.raises(ValueError, match="rate limit"):
        Emulator(images_per_minute=(0, 1.0))
    with pytest.raises(TypeError, match="images_per_minute"):
        Emulator(images_per_minute="fast")
    with pytest.raises(ValueError, match="give per"):
        Emulator().max_images_in_window()


async def test_a_content_policy_refusal_spends_budget(session: aiohttp.ClientSession) -> None:
    async with Emulator(images_per_minute=(5, 60.0)) as emu:
        status, headers, _ = await post(
            session, emu, GEN, {"prompt": CONTENT_POLICY_MARKER, "n": 2}, headers={}
        )
        assert status == 400
        assert headers["x-ratelimit-remaining-images"] == "3"
        assert [n for _t, n in emu.arrivals] == [2]


# -------------------------------------------------------------------- faults


async def test_status_faults_with_default_bodies_and_headers(
    emulator: Emulator,  # noqa: F811
    session: aiohttp.ClientSession,
) -> None:
    emulator.add_fault(
        Fault.status(500),
        Fault.status(429, code="insufficient_quota"),
        Fault.status(503, retry_after=0.25, should_retry=False, headers={"x-extra": "1"}),
        Fault.status(429, retry_after=2, message="slow down"),
    )
    status, headers, body = await post(session, emulator, GEN, {"prompt": "p"})
    assert status == 500
    assert headers["x-request-id"].startswith("req_")
    assert_error(body, type_="server_error", code=None)
    status, _, body = await post(session, emulator, GEN, {"prompt": "p"})
    assert status == 429
    assert_error(body, type_="insufficient_quota", code="insufficient_quota")
    assert "quota" in body["error"]["message"]
    status, headers, body = await post(session, emulator, GEN, {"prompt": "p"})
    assert status == 503
    assert (headers["Retry-After"], headers["retry-after-ms"]) == ("1", "250")
    assert (headers["x-should-retry"], headers["x-extra"]) == ("false", "1")
    status, headers, body = await post(session, emulator, GEN, {"prompt": "p"})
    assert (status, headers["Retry-After"], body["error"]["message"]) == (429, "2", "slow down")
    assert_error(body, type_="requests", code="rate_limit_exceeded")
    status, _, _ = await post(session, emulator, GEN, {"prompt": "p"})
    assert status == 200
    assert [e.fault for e in emulator.journal] == ["status"] * 4 + [None]
    assert emulator.faults == []


async def test_status_fault_with_a_custom_body_and_html_pages(
    emulator: Emulator,  # noqa: F811
    session: aiohttp.ClientSession,
) -> None:
    emulator.add_fault(
        Fault.status(418, body={"error": "teapot"}),
        Fault.status(500, body="plain words"),
        Fault.html(502),
        Fault.status(504, html=True),
    )
    assert (await post(session, emulator, GEN, {"prompt": "p"}))[::2] == (
        418,
        {"error": "teapot"},
    )
    assert (await post(session, emulator, GEN, {"prompt": "p"}))[::2] == (500, "plain words")
    for status_code, reason in ((502, "Bad Gateway"), (504, "Gateway Timeout")):
        async with session.post(emulator.base_url + GEN, json={"prompt": "p"}) as r:
            assert r.status == status_code
            assert r.content_type == "text/html"
            text = await r.text()
        assert f"<title>{status_code} {reason}</title>" in text
        assert "nginx" in text


async def test_faults_apply_times_and_paths(
    emulator: Emulator,  # noqa: F811
    session: aiohttp.ClientSession,
) -> None:
    emulator.add_fault(Fault.status(500, times=2, path="variation"))
    emulator.add_fault(Fault.status(502, path="/images/edits"))
    image = make_png(32, 32, "v")
    assert (await post(session, emulator, GEN, {"prompt": "p"}))[0] == 200
    for _ in range(2):
        form = form_with({}, [("image", image, "v.png")])
        assert (await post(session, emulator, VAR, form=form))[0] == 500
    form = form_with({}, [("image", image, "v.png")])
    assert (await post(session, emulator, VAR, form=form))[0] == 200
    form = form_with({"prompt": "p"}, [("image", image, "v.png")])
    assert (await post(session, emulator, EDIT, form=form))[0] == 502
    assert emulator.faults == []
    emulator.add_fault(Fault.drop())
    emulator.clear_faults()
    assert emulator.faults == []
    with pytest.raises(TypeError, match="Fault"):
        emulator.add_fault("boom")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="times"):
        Fault.drop(times=0)


async def test_a_status_fault_skips_auth_and_spends_no_budget(
    session: aiohttp.ClientSession,
) -> None:
    async with Emulator(api_key=KEY, images_per_minute=(1, 60.0)) as emu:
        emu.add_fault(Fault.status(500))
        assert (await post(session, emu, GEN, {"prompt": "p"}, headers={}))[0] == 500
        assert emu.arrivals == []


async def test_drop_closes_the_connection_before_any_reply(
    emulator: Emulator,  # noqa: F811
    session: aiohttp.ClientSession,
) -> None:
    emulator.add_fault(Fault.drop())
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await post(session, emulator, GEN, {"prompt": "p"})
    (entry,) = emulator.journal
    assert (entry.status, entry.fault, entry.json) == (None, "drop", {"prompt": "p"})
    assert (await post(session, emulator, GEN, {"prompt": "p"}))[0] == 200


async def test_drop_mid_body_sends_headers_then_part_of_the_body(
    emulator: Emulator,  # noqa: F811
    session: aiohttp.ClientSession,
) -> None:
    emulator.add_fault(Fault.drop_mid_body())
    async with session.post(emulator.base_url + GEN, json={"prompt": "p"}, headers=AUTH) as r:
        assert r.status == 200
        assert r.headers["x-request-id"].startswith("req_")
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()
    assert emulator.journal[0].fault == "drop_mid_body"


async def test_truncated_is_a_complete_transfer_of_broken_json(
    emulator: Emulator,  # noqa: F811
    session: aiohttp.ClientSession,
) -> None:
    emulator.add_fault(Fault.truncated())
    async with session.post(emulator.base_url + GEN, json={"prompt": "p"}, headers=AUTH) as r:
        assert r.status == 200
        raw = await r.read()
        assert int(r.headers["Content-Length"]) == len(raw)
    with pytest.raises(ValueError):  # noqa: PT011
        json.loads(raw)
    assert raw.startswith(b'{"created":')


async def test_delay_outlasts_a_client_timeout(
    emulator: Emulator,  # noqa: F811
    session: aiohttp.ClientSession,
) -> None:
    emulator.add_fault(Fault.delay(5.0), Fault.delay(0.05))
    started = time.perf_counter()
    with pytest.raises(asyncio.TimeoutError):
        async with session.post(
            emulator.base_url + GEN,
            json={"prompt": "p"},
            headers=AUTH,
            timeout=aiohttp.ClientTimeout(total=0.1),
        ):
            pass
    assert time.perf_counter() - started < 2
    started = time.perf_counter()
    assert (await post(session, emulator, GEN, {"prompt": "p"}))[0] == 200
    assert time.perf_counter() - started >= 0.05
    for _ in range(50):  # the timed-out request is journaled once its handler is cancelled
        if len(emulator.journal) == 2:
            break
        await asyncio.sleep(0.01)
    assert sorted(str(e.status) for e in emulator.journal) == ["200", "None"]


async def test_trickle_sends_the_body_slowly_in_chunks(
    emulator: Emulator,  # noqa: F811
    session: aiohttp.ClientSession,
) -> None:
    emulator.add_fault(Fault.trickle(0.02, chunks=5))
    started = time.perf_counter()
    async with session.post(emulator.base_url + GEN, json={"prompt": "p"}, headers=AUTH) as r:
        assert r.status == 200
        pieces = [chunk async for chunk in r.content.iter_any()]
    assert time.perf_counter() - started >= 0.1
    assert len(pieces) >= 2
    body = json.loads(b"".join(pieces))
    assert "url" in body["data"][0]


async def test_latency_is_applied_and_can_change_after_start(
    emulator: Emulator,  # noqa: F811
    session: aiohttp.ClientSession,
) -> None:
    emulator.latency = 0.05
    started = time.perf_counter()
    await post(session, emulator, GEN, {"prompt": "p"})
    assert time.perf_counter() - started >= 0.05


async def test_close_does_not_wait_for_a_pending_delay(session: aiohttp.ClientSession) -> None:
    emu = Emulator()
    await emu.start()
    emu.add_fault(Fault.delay(30.0))
    pending = asyncio.ensure_future(post(session, emu, GEN, {"prompt": "p"}, headers={}))
    for _ in range(100):
        await asyncio.sleep(0.01)
        if emu.faults == []:
            break
    started = time.perf_counter()
    await emu.close()
    await emu.close()  # twice is fine
    assert time.perf_counter() - started < 2
    with pytest.raises(aiohttp.ClientError):
        await pending
    with pytest.raises(RuntimeError, match="not started"):
        _ = emu.base_url


# ------------------------------------------------------------------- journal


async def test_journal_records_and_redacts_and_resets(
    emulator: Emulator,  # noqa: F811
    session: aiohttp.ClientSession,
) -> None:
    await post(session, emulator, GEN, {"prompt": "one", "n": 2})
    await post(session, emulator, GEN, {"prompt": "two"}, headers={})
    first, second = emulator.journal
    assert isinstance(first, JournalEntry)
    assert (first.method, first.path, first.status, first.images) == (
        "POST",
        "/v1/images/generations",
        200,
        2,
    )
    assert first.json == {"prompt": "one", "n": 2}
    assert first.request_id.startswith("req_")
    assert KEY not in json.dumps(dict(first.headers))
    assert first.headers["Authorization"] == f"Bearer {mask_key(KEY)}"
    assert second.status == 401
    assert "Authorization" not in second.headers
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        first.status = 500  # type: ignore[misc]
    assert len(emulator.requests("generate")) == 2
    assert len(emulator.requests("/images/generations", status=401)) == 1
    assert emulator.requests("edit") == []
    assert emulator.journal[-1:] == [second]
    assert "2 requests" in repr(emulator.journal)
    emulator.journal.clear()
    assert len(emulator.journal) == 0
    await post(session, emulator, GEN, {"prompt": "three"})
    emulator.add_fault(Fault.drop())
    emulator.reset()
    assert (len(emulator.journal), emulator.arrivals, emulator.faults) == (0, [], [])


# --------------------------------------------------------------- processes


def test_import_asyncimg_does_not_import_the_emulator() -> None:
    code = (
        "import sys, asyncimg; "
        "assert 'asyncimg.testing' not in sys.modules; "
        "assert 'aiohttp.web' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_asyncimg_testing_imports_a_name_when_it_is_used() -> None:
    code = (
        "import sys, asyncimg.testing as t; "
        "assert 'aiohttp.web' not in sys.modules; "
        "assert 'asyncimg.testing._emulator' not in sys.modules; "
        "t.Emulator; "
        "assert 'aiohttp.web' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_every_public_name_of_asyncimg_testing_is_there() -> None:
    import asyncimg.testing as testing

    for name in testing.__all__:
        assert getattr(testing, name) is not None
        assert name in dir(testing)
    with pytest.raises(AttributeError, match="no_such_name"):
        testing.no_such_name  # noqa: B018


def test_asyncimg_help_does_not_import_the_emulator() -> None:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "asyncimg", "--help"],
        capture_output=True, text=True, check=True, timeout=60,
    )
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}
    assert "asyncimg.cli" in imported  # the measure sees the command's imports
    assert "aiohttp.web" not in imported
    assert "asyncimg.testing._emulator" not in imported


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_python_m_asyncimg_testing_serves_until_interrupted() -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "asyncimg.testing", "--port", str(port), "--api-key", "sk-x"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/v1" in line

        async def ask() -> int:
            async with (
                aiohttp.ClientSession() as s,
                s.post(
                    f"http://127.0.0.1:{port}/v1/images/generations",
                    json={"prompt": "p"},
                    headers={"Authorization": "Bearer sk-x"},
                ) as r,
            ):
                return r.status

        assert asyncio.run(ask()) == 200
        proc.send_signal(2)  # SIGINT, as Ctrl-C
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


# -- latencies (issue 12) ---------------------------------------------------------------


def test_latency_spread_and_download_latency_are_separate() -> None:
    import random
    import statistics

    emu = Emulator(latency=2.0, latency_sigma=0.5, download_latency=0.01)
    emu._rng = random.Random(5)
    draws = [emu._latency_for("/v1/images/generations") for _ in range(400)]
    assert 1.7 < statistics.median(draws) < 2.3  # lognormal around the median
    assert max(draws) > 3.0
    assert min(draws) < 1.3
    assert emu._latency_for("/blobs/abc") == 0.01
    fixed = Emulator(latency=2.0)
    assert {fixed._latency_for("/v1/images/edits") for _ in range(5)} == {2.0}
    assert fixed._latency_for("/blobs/abc") == 0.0


async def test_url_downloads_do_not_wait_the_generation_latency() -> None:
    async with Emulator(api_key=KEY, latency=0.6) as emu, asyncimg.AsyncImagesClient(
        api_key=KEY, base_url=emu.base_url, rate_limit=None
    ) as client:
        response = await client.generate("p", model="dall-e-2", size="256x256",
                                         response_format="url")
        loop = asyncio.get_running_loop()
        started = loop.time()
        data = await client.download(response.data[0])
        assert loop.time() - started < 0.5  # not the 0.6 s of a generation
    assert data.startswith(b"\x89PNG")


async def test_a_request_is_counted_once_its_body_is_read() -> None:
    ticks = iter(range(1000))
    async with Emulator(api_key=KEY, images_per_minute=50,
                        clock=lambda: float(next(ticks))) as emu, asyncimg.AsyncImagesClient(
        api_key=KEY, base_url=emu.base_url, rate_limit=None
    ) as client:
        await client.generate("p", model="dall-e-2", size="256x256")
    (entry,) = emu.journal
    ((counted, images),) = emu.arrivals
    assert images == 1
    assert counted > entry.time  # read after the headers' arrival, not at it


async def test_files_and_batches_answer_after_their_own_latency_not_the_images() -> None:
    fixed = Emulator(latency=30.0, api_latency=0.02)
    assert fixed._latency_for("/v1/batches/batch_1") == 0.02
    assert fixed._latency_for("/v1/files") == 0.02
    assert fixed._latency_for("/v1/images/generations") == 30.0
    async with Emulator(api_key=KEY, latency=30.0) as emu, aiohttp.ClientSession() as session:
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with session.get(emu.base_url + "/batches", headers=AUTH) as r:
            assert r.status == 200
        assert loop.time() - started < 1.0


async def test_an_unknown_model_is_404_model_not_found_unless_any_model(
    session: aiohttp.ClientSession,
) -> None:
    async with Emulator(api_key=KEY) as emu:
        status, _, body = await post(session, emu, GEN, {"prompt": "p", "model": "dall-e-4"})
        assert status == 404
        assert_error(body, type_="invalid_request_error", code="model_not_found")
        assert "dall-e-4" in body["error"]["message"]
        assert emu.arrivals == []
    async with Emulator(api_key=KEY, any_model=True) as emu:
        status, _, body = await post(session, emu, GEN, {"prompt": "p", "model": "my-sd-xl",
                                                         "size": "64x48",
                                                         "response_format": "b64_json"})
        assert status == 200
        assert len(body["data"]) == 1


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 11}, "n"),
        ({"n": 1000, "size": "7x9"}, "n"),
        ({"n": 0}, "n"),
        ({"output_format": "bogus", "response_format": "b64_json"}, "output_format"),
        ({"output_format": "bogus", "response_format": "url"}, "output_format"),
        ({"quality": "ultra"}, "quality"),
    ],
)
async def test_the_spec_bounds_hold_for_every_model(
    session: aiohttp.ClientSession, extra: dict[str, Any], param: str
) -> None:
    for model in ("my-sd-xl", "dall-e-4", None):
        async with Emulator(api_key=KEY, any_model=model != "dall-e-4") as emu:
            body_in = {"prompt": "p", **extra, **({} if model is None else {"model": model})}
            status, _, body = await post(session, emu, GEN, body_in)
            assert status == 400, model
            if model is not None:  # else the default model's own rules may speak first
                assert body["error"]["param"] == param, model


async def test_a_multipart_part_header_with_a_control_character_is_400(
    emulator: Emulator,  # noqa: F811
) -> None:
    boundary = "b0undary"
    body = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="prompt"\r\n'
        "X-Bad: a\x01b\r\n\r\n"
        "p\r\n"
        f"--{boundary}--\r\n"
    ).encode()
    headers = {**AUTH, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    async with aiohttp.ClientSession() as session, session.post(
        emulator.base_url + EDIT, data=body, headers=headers
    ) as r:
        assert r.status == 400
        assert "multipart" in (await r.json())["error"]["message"]


async def test_a_request_is_counted_at_once_and_its_images_drawn_after_the_latency(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As the API: the limit counts a request when it arrives, the picture is made while
    the client waits. Drawn first, each picture of a burst held back the count of the
    requests behind it (4 ms a 256x256 PNG, far more on a loaded machine)."""
    from asyncimg.testing import _emulator

    drawn: list[float] = []

    def images_answer(*args: Any) -> Any:
        drawn.append(time.monotonic())
        return real(*args)

    real = _emulator.images_answer
    monkeypatch.setattr(_emulator, "images_answer", images_answer)
    async with Emulator(api_key=KEY, latency=0.2, images_per_minute=10) as emu:
        async with asyncimg.AsyncImagesClient(api_key=KEY, base_url=emu.base_url) as c:
            await asyncio.gather(*(c.generate(f"p{i}", model="dall-e-2", size="256x256",
                                              response_format="b64_json") for i in range(3)))
        counted = sorted(t for t, _n in emu.arrivals)
    assert len(drawn) == 3
    assert min(drawn) - max(counted) >= 0.15  # all three counted before any was drawn
