"""AsyncImagesClient against the emulator: every endpoint, every input kind, the wire."""

from __future__ import annotations

import base64
import contextlib
import io
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from asyncimg import (
    AsyncImagesClient,
    AuthenticationError,
    BadRequestError,
    ContentPolicyError,
    Image,
    ImagesResponse,
    NotFoundError,
    PermissionDeniedError,
    RateLimit,
    ValidationError,
    __version__,
)
from asyncimg._files import image_info
from asyncimg.testing import CONTENT_POLICY_MARKER, Emulator, Fault, make_png

from .conftest import TEST_KEY

RGBA_256 = make_png(256, 256, "source", alpha=True)
RGB_256 = make_png(256, 256, "opaque")
MASK_256 = make_png(256, 256, "mask", alpha=True)


def png_of(data: bytes) -> tuple[int, int]:
    info = image_info(data)
    assert info is not None
    assert info.format == "png"
    return info.width, info.height


# -- construction ---------------------------------------------------------------------


def test_defaults_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", TEST_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1/")
    monkeypatch.setenv("OPENAI_ORG_ID", "org-1")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-1")
    client = AsyncImagesClient()
    assert client.base_url == "http://127.0.0.1:9/v1"
    assert client._headers == {
        "Authorization": f"Bearer {TEST_KEY}",
        "OpenAI-Organization": "org-1",
        "OpenAI-Project": "proj-1",
    }
    assert client.limiter.rate == RateLimit(images=50, per=60.0)


def test_the_official_api_needs_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ValidationError) as info:
        AsyncImagesClient()
    assert info.value.param == "api_key"
    AsyncImagesClient(base_url="http://127.0.0.1:9/v1")  # a compatible server may go without


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"max_retries": -1}, "max_retries"),
        ({"timeout": 0}, "timeout"),
    ],
)
def test_bad_constructor_arguments(kwargs: dict[str, Any], param: str) -> None:
    with pytest.raises(ValidationError) as info:
        AsyncImagesClient(api_key="k", **kwargs)
    assert info.value.param == param


def test_repr_never_shows_the_key() -> None:
    client = AsyncImagesClient(api_key=TEST_KEY)
    assert TEST_KEY not in repr(client)
    assert TEST_KEY not in repr(client.limiter)


def test_the_session_is_created_on_the_loop_not_in_init() -> None:
    client = AsyncImagesClient(api_key="k")  # no running loop: must not fail
    assert client._transport._session is None


async def test_closed_client_refuses_calls(emu: Emulator) -> None:
    client = AsyncImagesClient(api_key=TEST_KEY, base_url=emu.base_url, rate_limit=None)
    await client.generate("a cat", model="dall-e-2")
    await client.aclose()
    await client.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await client.generate("a cat", model="dall-e-2")


# -- generations -------------------------------------------------------------------------


async def test_generate_b64_gives_real_pngs(client: AsyncImagesClient, emu: Emulator) -> None:
    r = await client.generate(
        "a white siamese cat", model="dall-e-2", n=2, size="256x256",
        response_format="b64_json",
    )
    assert isinstance(r, ImagesResponse)
    assert len(r.data) == 2
    assert r.request_id is not None
    assert r.request_id.startswith("req_")
    for image in r.data:
        assert png_of(await client.download(image)) == (256, 256)
    (entry,) = emu.requests("generate")
    assert entry.json == {
        "prompt": "a white siamese cat", "model": "dall-e-2", "n": 2, "size": "256x256",
        "response_format": "b64_json",
    }
    assert entry.request_id == r.request_id


async def test_none_is_never_sent_and_extra_body_is(client: AsyncImagesClient,
                                                    emu: Emulator) -> None:
    await client.generate("a fox", extra_body={"seed_hint": 3})
    (entry,) = emu.requests("generate")
    assert entry.json == {"prompt": "a fox", "seed_hint": 3}


async def test_client_model_is_the_default(emu: Emulator) -> None:
    async with AsyncImagesClient(api_key=TEST_KEY, base_url=emu.base_url, model="dall-e-3",
                                 rate_limit=None) as c:
        r = await c.generate("a heron")
        await c.generate("a heron", model="dall-e-2")
    assert [e.json["model"] for e in emu.requests("generate")] == ["dall-e-3", "dall-e-2"]
    assert r.data[0].revised_prompt


async def test_gpt_image_fields(client: AsyncImagesClient) -> None:
    r = await client.generate(
        "a lighthouse", model="gpt-image-1", size="1024x1536", quality="low",
        background="opaque", output_format="png", moderation="low",
    )
    assert r.data[0].b64_json is not None
    assert r.data[0].url is None
    assert (r.size, r.quality, r.background, r.output_format) == (
        "1024x1536", "low", "opaque", "png",
    )
    assert r.usage is not None
    assert r.usage.total_tokens
    assert png_of(await client.download(r.data[0])) == (1024, 1536)


async def test_headers_on_the_wire(emu: Emulator) -> None:
    async with AsyncImagesClient(api_key=TEST_KEY, base_url=emu.base_url, organization="org-9",
                                 project="proj-9", rate_limit=None) as c:
        await c.generate("a cat")
    (entry,) = emu.requests("generate")
    headers = {k.lower(): v for k, v in entry.headers.items()}
    assert headers["openai-organization"] == "org-9"
    assert headers["openai-project"] == "proj-9"
    assert headers["user-agent"].startswith(f"asyncimg/{__version__} ")
    assert headers["content-type"] == "application/json"
    assert TEST_KEY not in str(entry.headers)  # the journal masks it; it was sent though
    assert headers["authorization"].startswith("Bearer sk-")


async def test_url_results_download_without_the_key(client: AsyncImagesClient,
                                                    emu: Emulator) -> None:
    r = await client.generate("an owl", model="dall-e-2", size="512x512")
    image = r.data[0]
    assert image.url is not None
    assert image.b64_json is None
    assert png_of(await client.download(image)) == (512, 512)
    (blob,) = emu.requests(method="GET")
    assert "authorization" not in {k.lower() for k in blob.headers}


async def test_a_url_on_the_api_origin_gets_the_key(client: AsyncImagesClient,
                                                    emu: Emulator) -> None:
    url = emu.base_url + "/no-such-file.png"
    with pytest.raises(NotFoundError):
        await client.download(Image(url=url))
    (entry,) = emu.requests(method="GET")
    assert {k.lower(): v for k, v in entry.headers.items()}["authorization"].startswith("Bearer")


async def test_save_writes_atomically_and_safely(client: AsyncImagesClient,
                                                 tmp_path: Path) -> None:
    r = await client.generate("two cats", model="dall-e-2", n=2, size="256x256",
                              response_format="b64_json")
    paths = await client.save(r, tmp_path / "out", stem="../../escape/../me")
    assert [p.name for p in paths] == ["escape-me-0.png", "escape-me-1.png"]
    assert all(p.parent == tmp_path / "out" for p in paths)
    assert sorted(os.listdir(tmp_path / "out")) == ["escape-me-0.png", "escape-me-1.png"]
    assert png_of(paths[0].read_bytes()) == (256, 256)
    default = await client.save(r, tmp_path)
    assert default[0].name == f"{r.request_id}-0.png"


async def test_bad_base64_names_the_image(client: AsyncImagesClient) -> None:
    from asyncimg import APIResponseValidationError

    with pytest.raises(APIResponseValidationError, match="base64"):
        await client.download(Image(b64_json="not base64!!"))
    good = base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()
    assert await client.download(Image(b64_json=good)) == b"\x89PNG\r\n\x1a\n"


# -- edits and variations --------------------------------------------------------------


def _inputs(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "lounge.png"
    path.write_bytes(RGBA_256)
    with open(path, "rb") as opened:
        opened_bytes = opened.read()
    return {
        "str path": str(path),
        "PathLike": path,
        "bytes": RGBA_256,
        "bytearray": bytearray(RGBA_256),
        "BytesIO": io.BytesIO(RGBA_256),
        "file": lambda: open(path, "rb"),
        "2-tuple": ("lounge.png", opened_bytes),
        "3-tuple": ("lounge.png", RGBA_256, "image/png"),
    }


@pytest.mark.parametrize(
    "kind",
    ["str path", "PathLike", "bytes", "bytearray", "BytesIO", "file", "2-tuple", "3-tuple"],
)
async def test_edit_and_variation_take_every_input_kind(
    client: AsyncImagesClient, emu: Emulator, tmp_path: Path, kind: str
) -> None:
    value = _inputs(tmp_path)[kind]
    opened = value() if callable(value) else None
    try:
        r = await client.edit(opened or value, "a flamingo in the pool", model="dall-e-2",
                              size="256x256", response_format="b64_json")
    finally:
        if opened is not None:
            opened.close()
    assert png_of(await client.download(r.data[0])) == (256, 256)
    value = _inputs(tmp_path)[kind]
    opened = value() if callable(value) else None
    try:
        r = await client.create_variation(opened or value, n=2, size="256x256",
                                          model="dall-e-2")
    finally:
        if opened is not None:
            opened.close()
    assert len(r.data) == 2
    edit_entry, variation_entry = emu.requests("/v1/images/")
    (file,) = edit_entry.files
    assert (file.field, file.mime, file.size) == ("image", "image/png", len(RGBA_256))
    assert file.filename
    assert file.filename.endswith(".png")
    assert edit_entry.fields == {"prompt": "a flamingo in the pool", "model": "dall-e-2",
                                 "size": "256x256", "response_format": "b64_json"}
    assert variation_entry.fields == {"model": "dall-e-2", "n": "2", "size": "256x256"}


async def test_edit_with_a_mask(client: AsyncImagesClient, emu: Emulator) -> None:
    await client.edit(("lounge.png", RGB_256), "A sunlit lounge", mask=("mask.png", MASK_256),
                      model="dall-e-2")
    (entry,) = emu.requests("edit")
    assert [(f.field, f.filename) for f in entry.files] == [
        ("image", "lounge.png"), ("mask", "mask.png"),
    ]


async def test_edit_with_several_images_uses_image_brackets(client: AsyncImagesClient,
                                                             emu: Emulator) -> None:
    jpeg_like = make_png(512, 512, "b")
    r = await client.edit([RGB_256, jpeg_like, ("c.png", RGBA_256)], "a gift basket",
                          model="gpt-image-1", input_fidelity="high", quality="low")
    assert r.data[0].b64_json
    (entry,) = emu.requests("edit")
    assert [f.field for f in entry.files] == ["image[]"] * 3
    assert entry.fields["input_fidelity"] == "high"


async def test_mime_comes_from_the_bytes_not_the_name(client: AsyncImagesClient,
                                                      emu: Emulator) -> None:
    await client.create_variation(("photo.jpg", RGBA_256), model="dall-e-2")
    (entry,) = emu.requests("variation")
    assert entry.files[0].mime == "image/png"


# -- validation: refused before anything is sent or any budget spent -------------------

BAD_CALLS: list[tuple[str, str, dict[str, Any]]] = [
    ("generate", "prompt", {"prompt": "x" * 1001, "model": "dall-e-2"}),
    ("generate", "prompt", {"prompt": "   "}),
    ("generate", "n", {"prompt": "p", "n": 11, "model": "dall-e-2"}),
    ("generate", "n", {"prompt": "p", "n": 0}),
    ("generate", "n", {"prompt": "p", "n": 2, "model": "dall-e-3"}),
    ("generate", "size", {"prompt": "p", "size": "300x300", "model": "dall-e-2"}),
    ("generate", "size", {"prompt": "p", "size": "huge"}),
    ("generate", "response_format", {"prompt": "p", "response_format": "png"}),
    ("generate", "response_format", {"prompt": "p", "response_format": "url",
                                     "model": "gpt-image-1"}),
    ("generate", "quality", {"prompt": "p", "quality": "hd", "model": "gpt-image-1"}),
    ("generate", "style", {"prompt": "p", "style": "vivid", "model": "dall-e-2"}),
    ("generate", "background", {"prompt": "p", "background": "transparent",
                                "output_format": "jpeg", "model": "gpt-image-1"}),
    ("generate", "output_compression", {"prompt": "p", "output_compression": 101}),
    ("generate", "n", {"prompt": "p", "n": "2"}),
    ("edit", "image", {"image": RGB_256, "prompt": "p", "model": "dall-e-2"}),
    ("edit", "image", {"image": make_png(256, 128, "r", alpha=True), "prompt": "p",
                       "model": "dall-e-2"}),
    ("edit", "mask", {"image": RGBA_256, "mask": make_png(512, 512, "m", alpha=True),
                      "prompt": "p", "model": "dall-e-2"}),
    ("edit", "image", {"image": [RGBA_256] * 17, "prompt": "p"}),
    ("edit", "image", {"image": b"GIF89a not an image", "prompt": "p"}),
    ("edit", "model", {"image": RGBA_256, "prompt": "p", "model": "dall-e-3"}),
    ("variation", "image", {"image": make_png(256, 128, "r"), "model": "dall-e-2"}),
    ("variation", "size", {"image": RGB_256, "size": "1792x1024", "model": "dall-e-2"}),
    ("variation", "image", {"image": 42}),
]


@pytest.mark.parametrize(("method", "param", "kwargs"), BAD_CALLS)
async def test_bad_input_never_reaches_the_server(
    emu: Emulator, method: str, param: str, kwargs: dict[str, Any]
) -> None:
    async with AsyncImagesClient(api_key=TEST_KEY, base_url=emu.base_url,
                                 rate_limit=RateLimit(images=10, per=60)) as c:
        call = {"generate": c.generate, "edit": c.edit, "variation": c.create_variation}[method]
        with pytest.raises(ValidationError) as info:
            await call(**kwargs)
        assert info.value.param == param
        assert param in str(info.value)
        assert c.limiter.stats().granted == 0
    assert len(emu.journal) == 0


async def test_dall_e_2_size_message(client: AsyncImagesClient) -> None:
    with pytest.raises(ValidationError, match=r"size '300x300' is not one of 256x256, "
                                              r"512x512, 1024x1024 for dall-e-2"):
        await client.generate("p", model="dall-e-2", size="300x300")


async def test_unknown_models_are_not_blocked(client: AsyncImagesClient, emu: Emulator) -> None:
    with pytest.raises(BadRequestError) as info:  # the server's answer, not the client's
        await client.generate("p", model="my-sd-xl", size="768x768", quality="ultra", n=12)
    assert info.value.param == "n"
    assert emu.requests("generate")[0].json["model"] == "my-sd-xl"


# -- errors from the server ---------------------------------------------------------------


async def test_wrong_key_is_an_authentication_error(emu: Emulator) -> None:
    async with AsyncImagesClient(api_key="sk-wrong-key-123456", base_url=emu.base_url,
                                 rate_limit=None) as c:
        with pytest.raises(AuthenticationError) as info:
            await c.generate("p")
    error = info.value
    assert error.status_code == 401
    assert error.code == "invalid_api_key"
    assert error.request_id
    assert error.request_id.startswith("req_")
    assert "sk-wrong-key-123456" not in str(error)
    assert len(emu.journal) == 1  # 401 is not retried


async def test_content_policy(client: AsyncImagesClient) -> None:
    with pytest.raises(ContentPolicyError) as info:
        await client.generate(f"a {CONTENT_POLICY_MARKER} scene", model="dall-e-2")
    assert info.value.code == "content_policy_violation"
    with pytest.raises(ContentPolicyError) as info:
        await client.generate(f"a {CONTENT_POLICY_MARKER} scene", model="gpt-image-1")
    assert info.value.code == "moderation_blocked"


@pytest.mark.parametrize(
    ("status", "cls"),
    [(400, BadRequestError), (403, PermissionDeniedError), (404, NotFoundError)],
)
async def test_server_errors_map_to_the_tree(client: AsyncImagesClient, emu: Emulator,
                                             status: int, cls: type[Exception]) -> None:
    emu.add_fault(Fault.status(status, code="some_code", message="refused here"))
    with pytest.raises(cls) as info:
        await client.generate("p")
    assert info.value.message == "refused here"  # type: ignore[attr-defined]
    assert info.value.code == "some_code"  # type: ignore[attr-defined]
    assert len(emu.journal) == 1


async def test_server_side_validation_answers_in_the_api_shape(client: AsyncImagesClient) -> None:
    # A parameter only the server knows is wrong: it answers 400 with param set.
    with pytest.raises(BadRequestError) as info:
        await client.generate("p", model="dall-e-2", extra_body={"size": "3x3"})
    assert info.value.param == "size"


async def test_the_concurrency_gate_caps_requests_in_flight(emu: Emulator) -> None:
    import anyio

    emu.latency = 0.05
    async with AsyncImagesClient(api_key=TEST_KEY, base_url=emu.base_url, rate_limit=None,
                                 max_concurrency=3) as c:
        peak = 0

        async def one() -> None:
            nonlocal peak
            await c.generate("p", model="dall-e-2", size="256x256")

        async def watch() -> None:
            nonlocal peak
            for _ in range(40):
                peak = max(peak, c._gate.in_use)
                await anyio.sleep(0.005)

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            for _ in range(9):
                tg.start_soon(one)
    assert peak == 3
    assert len(emu.journal) == 9


@pytest.mark.parametrize("method", ["generate", "edit", "variation"])
async def test_every_rule_runs_before_any_io(emu: Emulator, method: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # Every rule of the table lives in _validation.validate (each is tested there,
    # pure); here: whatever validate refuses, the client refuses before any I/O.
    from asyncimg import _params

    seen: list[object] = []

    def refuse(params: object) -> None:
        seen.append(params)
        raise ValidationError("rule", "refused by the rule under test")

    monkeypatch.setattr(_params, "validate", refuse)
    async with AsyncImagesClient(api_key=TEST_KEY, base_url=emu.base_url,
                                 rate_limit=RateLimit(images=10, per=60)) as c:
        call = {
            "generate": lambda: c.generate("p", model="dall-e-2"),
            "edit": lambda: c.edit(RGBA_256, "p", model="dall-e-2"),
            "variation": lambda: c.create_variation(RGB_256, model="dall-e-2"),
        }[method]
        with pytest.raises(ValidationError, match="rule under test"):
            await call()
        assert c.limiter.stats().granted == 0
    assert len(seen) == 1
    assert len(emu.journal) == 0


async def test_one_limiter_shared_by_two_clients_holds_at_the_server() -> None:
    import asyncio

    from asyncimg import Limiter

    rate = RateLimit(images=6, per=0.4, margin=0.05)
    shared = Limiter(rate)
    async with Emulator(api_key=TEST_KEY, images_per_minute=(6, 0.4)) as emu:
        clients = [
            AsyncImagesClient(api_key=TEST_KEY, base_url=emu.base_url, limiter=shared,
                              max_retries=0)
            for _ in range(2)
        ]
        async with clients[0], clients[1]:
            await asyncio.gather(*[
                c.generate("p", model="dall-e-2", size="256x256", n=n)
                for c in clients for n in (1, 2, 1, 3, 1)
            ])
        assert emu.max_images_in_window(0.4) <= 6
        assert not emu.requests(status=429)
    assert shared.stats().sent == 16


@contextlib.asynccontextmanager
async def client_with_fault(
    limiter: Any, fault: Fault
) -> AsyncIterator[tuple[Emulator, AsyncImagesClient]]:
    """An emulator that answers with ``fault``, and a client on it sharing ``limiter``."""
    async with Emulator(api_key=TEST_KEY) as emu:
        emu.add_fault(fault)
        async with AsyncImagesClient(api_key=TEST_KEY, base_url=emu.base_url,
                                     limiter=limiter) as client:
            yield emu, client


async def test_a_refused_request_gives_its_images_back_for_the_retry() -> None:
    """A 429 means the server did not count the request: its permit is not spent."""
    import asyncio

    from asyncimg import Limiter

    limiter = Limiter(RateLimit(images=2, per=60.0))
    async with client_with_fault(limiter, Fault.status(429, retry_after=0.05)) as (emu, client):
        await client.generate("p", model="dall-e-2", size="256x256")
        # Without the refund the refused attempt and the retry spend both images,
        # and this one waits the whole 60 s window.
        await asyncio.wait_for(client.generate("q", model="dall-e-2", size="256x256"), 5)
    assert [e.status for e in emu.requests("generate")] == [429, 200, 200]
    assert limiter.stats().refunded == 1


async def test_a_refused_request_keeps_its_place_ahead_of_later_ones() -> None:
    """A 429's retry goes after the server's wait, not behind the requests queued since."""
    import asyncio

    from asyncimg import Limiter

    limiter = Limiter(RateLimit(images=2, per=60.0))
    async with client_with_fault(limiter, Fault.status(429, retry_after=0.05)) as (emu, client):
        first = [asyncio.ensure_future(client.generate(p, model="dall-e-2", size="256x256"))
                 for p in ("a", "b")]
        await asyncio.sleep(0)
        later = asyncio.ensure_future(client.generate("c", model="dall-e-2", size="256x256"))
        # Given back to the queue, the refused request's image would go to "c", and
        # its retry would wait for the next window (60 s).
        await asyncio.wait_for(asyncio.gather(*first), 5)
        assert not later.done()
        assert limiter.stats().waiting == 1
        later.cancel()
        with pytest.raises(asyncio.CancelledError):
            await later
    assert sorted(e.status for e in emu.requests("generate")) == [200, 200, 429]
    assert limiter.stats().in_use == 2  # the two sends; nothing held, nothing leaked


async def test_a_request_refused_twice_also_backs_off_by_itself() -> None:
    from asyncimg import Limiter, RetryPolicy

    limiter = Limiter(RateLimit(images=10, per=60.0))
    fault = Fault.status(429, retry_after=0.01, times=2)
    async with client_with_fault(limiter, fault) as (emu, client):
        client.retry_policy = RetryPolicy(initial=0.2, jitter=0.0)
        await client.generate("p", model="dall-e-2", size="256x256")
    times = [e.time for e in emu.requests("generate")]
    assert [e.status for e in emu.requests("generate")] == [429, 429, 200]
    assert times[1] - times[0] < 0.15  # the first refusal: the server's 10 ms
    assert times[2] - times[1] >= 0.2  # refused again: 10 ms, then its own 0.2 s
    assert limiter.stats().in_use == 1
