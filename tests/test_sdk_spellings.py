"""The official SDK's spellings on both clients: ``client.images``, raw responses,
``with_options``, SDK-shaped timeouts and dumps, against the emulator."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest

from asyncimg import AsyncImagesClient, ImagesClient, RateLimit, ValidationError
from asyncimg._sdk import split_timeout
from asyncimg.testing import Emulator, Fault, make_png
from asyncimg.testing.pytest_plugin import (  # noqa: F401
    EMULATOR_API_KEY,
    emulator,
    emulator_sync,
)


def client_for(emu: Emulator, **options: Any) -> AsyncImagesClient:
    return AsyncImagesClient(api_key=EMULATOR_API_KEY, base_url=emu.base_url, **options)


@attrs.frozen
class HttpxLikeTimeout:
    """The shape of ``httpx.Timeout(60, connect=5)``, without httpx."""

    connect: float | None = 5.0
    read: float | None = 60.0
    write: float | None = 60.0
    pool: float | None = 60.0


async def test_images_namespace_goes_through_the_client(emulator: Emulator) -> None:  # noqa: F811
    async with client_for(emulator, rate_limit=RateLimit(100, 60.0)) as client:
        # one implementation: the namespace holds the client's own methods
        assert client.images.generate == client.generate
        assert client.images.edit == client.edit
        r = await client.images.generate(prompt="a cat", model="gpt-image-1.5", n=2)
        assert len(r.data) == 2
        e = await client.images.edit(
            image=make_png(64, 64, "in"),
            mask=make_png(64, 64, "m", alpha=True),
            prompt="a hat",
            model="gpt-image-1.5",
        )
        assert len(e.data) == 1
        v = await client.images.create_variation(image=make_png(64, 64, "v"), n=2)
        assert len(v.data) == 2
        # the same limiter as client.generate: 2 + 1 + 2 images taken
        assert client.limiter.stats().sent == 5
        with pytest.raises(ValidationError):  # the same validation
            await client.images.generate(prompt="p", model="gpt-image-1.5", size="7x7")
    assert [r.path.rsplit("/", 1)[-1] for r in emulator.requests()] == [
        "generations",
        "edits",
        "variations",
    ]


async def test_raw_response_of_a_success(emulator: Emulator) -> None:  # noqa: F811
    async with client_for(emulator) as client:
        raw = await client.images.with_raw_response.generate(prompt="a cat", model="gpt-image-1.5")
        assert raw.status_code == 200
        assert raw.headers["X-Request-Id"] == raw.headers["x-request-id"]
        assert raw.request_id is not None
        assert raw.request_id.startswith("req_")
        assert raw.http_request.method == "POST"
        assert raw.http_request.url == emulator.base_url.rstrip("/") + "/images/generations"
        parsed = raw.parse()
        assert parsed.request_id == raw.request_id == parsed._request_id
        assert len(parsed.data) == 1

        raw = await client.images.with_raw_response.generate(
            prompt="a lantern", model="gpt-image-1.5", stream=True, partial_images=1
        )
        assert raw.status_code == 200
        assert raw.headers["content-type"].startswith("text/event-stream")
        types = [event.type async for event in raw.parse()]
        assert types[-1] == "image_generation.completed"

        raw = await client.images.with_raw_response.edit(
            image=make_png(64, 64, "in"), prompt="x", model="gpt-image-1.5"
        )
        assert raw.http_request.url.endswith("/images/edits")
        raw = await client.images.with_raw_response.create_variation(image=make_png(64, 64, "v"))
        assert raw.http_request.url.endswith("/images/variations")


async def test_images_namespace_streams(emulator: Emulator) -> None:  # noqa: F811
    async with client_for(emulator) as client:
        stream = await client.images.generate(
            prompt="a lantern", model="gpt-image-1.5", stream=True, partial_images=2
        )
        events = [event async for event in stream]
        stream = await client.images.edit(
            image=make_png(64, 64, "in"), prompt="x", model="gpt-image-1.5", stream=True
        )
        edits = [event async for event in stream]
    assert [e.type for e in events] == ["image_generation.partial_image"] * 2 + [
        "image_generation.completed"
    ]
    assert edits[-1].type == "image_edit.completed"


async def test_with_options_shares_the_session_and_limiter(emulator: Emulator) -> None:  # noqa: F811
    async with client_for(emulator, max_retries=0) as client:
        quick = client.with_options(timeout=HttpxLikeTimeout(read=30.0, write=20.0), max_retries=2)
        assert quick.timeout == 30.0
        assert client.timeout == 600.0
        assert quick.retry_policy.max_retries == 2
        assert client.retry_policy.max_retries == 0
        assert quick.limiter is client.limiter
        emulator.add_fault(Fault.status(500))
        r = await quick.images.generate(prompt="p", model="gpt-image-1.5")  # retried
        assert r.data
        tagged = client.with_options(default_headers={"X-Team": "art"}, model="gpt-image-1.5")
        await tagged.generate("q")
        assert client.copy(timeout=None).timeout is None
    # one session: the derived clients' requests came over the same pool, and
    # closing the original closed it for all of them
    with pytest.raises(Exception):  # noqa: B017,PT011 - the session is closed
        await quick.generate("after close", model="gpt-image-1.5")
    last = emulator.requests("generate")[-1]
    assert last.headers["X-Team"] == "art"
    assert last.json["model"] == "gpt-image-1.5"


def test_split_timeout_reads_sdk_shapes() -> None:
    parts = split_timeout(HttpxLikeTimeout())
    assert (parts.total, parts.connect, parts.names_connect) == (60.0, 5.0, True)
    assert split_timeout(HttpxLikeTimeout(read=None)).total is None
    assert split_timeout(12).total == 12

    @attrs.frozen
    class ClientTimeoutLike:
        total: float | None = 90.0
        sock_connect: float | None = 3.0

    assert (
        split_timeout(ClientTimeoutLike()).total,
        split_timeout(ClientTimeoutLike()).connect,
    ) == (90.0, 3.0)
    with pytest.raises(ValidationError, match="timeout"):
        split_timeout("60")
    with pytest.raises(ValidationError, match=r"timeout\.read"):
        split_timeout(HttpxLikeTimeout(read=-1.0))


async def test_client_takes_an_httpx_shaped_timeout(emulator: Emulator) -> None:  # noqa: F811
    client = client_for(emulator, timeout=HttpxLikeTimeout(connect=2.0, read=45.0, write=10.0))
    async with client:
        assert client.timeout == 45.0
        emulator.add_fault(Fault.delay(0.5))
        with pytest.raises(Exception) as info:  # noqa: PT011
            await client.generate("p", timeout=HttpxLikeTimeout(read=0.1, write=0.1), max_retries=0)
        assert isinstance(info.value, TimeoutError)


async def test_dumps_like_the_sdk(emulator: Emulator) -> None:  # noqa: F811
    async with client_for(emulator) as client:
        r = await client.images.generate(prompt="a cat", model="gpt-image-1.5")
        stream = await client.images.generate(prompt="a cat", model="gpt-image-1.5", stream=True)
        events = [event async for event in stream]
    dumped = r.model_dump()
    assert dumped["created"] == r.created
    assert dumped["data"][0]["b64_json"] == r.data[0].b64_json
    assert dumped["usage"]["input_tokens_details"]["text_tokens"] > 0
    assert "request_id" not in dumped
    assert "headers" not in dumped
    assert json.loads(r.model_dump_json()) == dumped
    assert None in dumped["data"][0].values()  # url: None, as pydantic dumps it
    assert None not in r.to_dict()["data"][0].values()  # to_dict leaves unset fields out
    assert json.loads(r.to_json()) == r.to_dict()
    assert r.model_dump(exclude_none=True) == r.to_dict()
    assert r.model_dump(include={"created"}) == {"created": r.created}
    completed = events[-1].model_dump(exclude_none=True)
    assert completed["type"] == "image_generation.completed"
    assert completed["usage"]["total_tokens"] > 0


def test_unknown_fields_are_dumped() -> None:
    from asyncimg import ImagesResponse

    r = ImagesResponse.from_json(
        {"created": 1, "data": [{"b64_json": "AA==", "seed": 7}], "new": {"a": 1}}
    )
    assert r.model_dump()["new"] == {"a": 1}
    assert r.to_dict()["data"] == [{"b64_json": "AA==", "seed": 7}]


def test_blocking_client_forwards_the_spellings(emulator_sync: Emulator) -> None:  # noqa: F811
    with ImagesClient(api_key=EMULATOR_API_KEY, base_url=emulator_sync.base_url) as client:
        r = client.images.generate(prompt="a cat", model="gpt-image-1.5")
        assert r.data
        raw = client.images.with_raw_response.edit(
            image=make_png(64, 64, "in"), prompt="x", model="gpt-image-1.5"
        )
        assert raw.status_code == 200
        assert raw.headers["X-REQUEST-ID"] == raw.parse().request_id
        events = list(client.images.generate(prompt="a", model="gpt-image-1.5", stream=True))
        assert events[-1].type == "image_generation.completed"
        raw = client.images.with_raw_response.generate(
            prompt="a", model="gpt-image-1.5", stream=True
        )
        assert [e.type for e in raw.parse()][-1] == "image_generation.completed"
        v = client.images.create_variation(image=make_png(64, 64, "v"))
        assert v.data
        quick = client.with_options(timeout=30.0, max_retries=1)
        assert quick.timeout == 30.0
        assert client.timeout == 600.0
        assert quick.limiter is client.limiter
        assert quick.images.generate(prompt="b", model="gpt-image-1.5").data
    assert len(emulator_sync.requests()) == 6


async def test_one_name_catches_the_local_and_the_server_refusal(emulator: Emulator) -> None:  # noqa: F811
    from asyncimg import BadRequestError, InvalidRequestError

    async with client_for(emulator) as client:
        # the model is in the rule table: refused before sending
        with pytest.raises(InvalidRequestError) as local:
            await client.images.generate(prompt="p", model="dall-e-2", size="1792x1024")
        assert isinstance(local.value, ValidationError)
        assert local.value.param == "size"
        assert not emulator.requests()
        # no model named: the server (its default model) refuses the same mistake
        with pytest.raises(InvalidRequestError) as remote:
            await client.images.generate(prompt="p", size="1792x1024")
        assert isinstance(remote.value, BadRequestError)
        assert remote.value.param == "size"
    assert len(emulator.requests()) == 1


async def test_b64_json_with_a_gpt_image_model_is_accepted_not_sent(emulator: Emulator) -> None:  # noqa: F811
    from asyncimg import ImageRef

    async with client_for(emulator) as client:
        r = await client.images.generate(
            prompt="p", model="gpt-image-1.5", response_format="b64_json"
        )
        assert r.data[0].b64_json
        e = await client.images.edit(
            image=make_png(64, 64, "in"),
            prompt="x",
            model="gpt-image-1.5",
            response_format="b64_json",
        )
        assert e.data[0].b64_json
        ref = ImageRef(
            url="data:image/png;base64,"
            + __import__("base64").b64encode(make_png(64, 64, "r")).decode()
        )
        j = await client.images.edit(image=ref, prompt="x", response_format="b64_json")
        assert j.data[0].b64_json
        with pytest.raises(ValidationError, match="return b64_json") as url:
            await client.images.generate(prompt="p", model="gpt-image-1.5", response_format="url")
        assert "not supported" in str(url.value)
    generate, edit, json_edit = emulator.requests()
    assert "response_format" not in generate.json
    assert "response_format" not in edit.fields
    assert "response_format" not in json_edit.json


async def test_a_retired_model_says_so(emulator: Emulator) -> None:  # noqa: F811
    from asyncimg import NotFoundError

    message = "The model `dall-e-3` does not exist or you do not have access to it."
    async with client_for(emulator, max_retries=0) as client:
        emulator.add_fault(Fault.status(404, code="model_not_found", message=message))
        with pytest.raises(NotFoundError) as info:
            await client.images.generate(prompt="p", model="dall-e-3")
        emulator.add_fault(Fault.status(404, code="model_not_found", message="nope"))
        with pytest.raises(NotFoundError) as unknown:
            await client.images.generate(prompt="p", model="my-model")
    assert message in str(info.value)
    assert "retired on 2026-05-12" in str(info.value)
    assert "gpt-image-2.5-sunburst" in info.value.message
    assert "retired" not in str(unknown.value)


async def test_a_response_with_its_headers_still_pickles(emulator: Emulator) -> None:  # noqa: F811
    import pickle

    async with client_for(emulator) as client:
        r = await client.generate("a cat", model="gpt-image-1.5")
    again = pickle.loads(pickle.dumps(r))
    assert again == r
    assert again.headers["X-REQUEST-ID"] == r.request_id
