"""JSON edits: ImageRef (url / file_id), their validation, and the emulator answering them."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import aiohttp
import pytest

from asyncimg import AsyncImagesClient, BadRequestError, ImageRef, ValidationError
from asyncimg._files import ImageFile, image_info
from asyncimg._params import JsonEditParams, from_wire
from asyncimg._refs import MAX_IMAGE_URL_LENGTH
from asyncimg.testing import Emulator, emulator_thread, make_png

from .conftest import TEST_KEY

PNG = make_png(64, 64, "ref-source", alpha=True)
DATA_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()


# ------------------------------------------------------------------ pure


def test_image_ref_takes_exactly_one_of_url_and_file_id() -> None:
    assert ImageRef(url="https://example.com/a.png").to_json() == {
        "image_url": "https://example.com/a.png"
    }
    assert ImageRef(file_id="file-1").to_json() == {"file_id": "file-1"}
    with pytest.raises(ValidationError, match="exactly one"):
        ImageRef()
    with pytest.raises(ValidationError, match="exactly one"):
        ImageRef(url="https://example.com/a.png", file_id="file-1")
    with pytest.raises(ValidationError) as info:
        ImageRef(file_id="  ")
    assert info.value.param == "file_id"


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("ftp://example.com/a.png", "neither an http\\(s\\) URL nor a data: URL"),
        ("example.com/a.png", "neither an http\\(s\\) URL"),
        ("https://", "neither an http\\(s\\) URL"),
        ("data:image/png,rawbytes", "must be base64"),
    ],
)
def test_image_ref_refuses_other_urls(url: str, fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment) as info:
        ImageRef(url=url)
    assert info.value.param == "url"


def test_image_ref_url_length_limit_is_the_spec_s() -> None:
    prefix = "data:image/png;base64,"
    ImageRef(url=prefix + "A" * (MAX_IMAGE_URL_LENGTH - len(prefix)))
    with pytest.raises(ValidationError, match="20971520"):
        ImageRef(url=prefix + "A" * (MAX_IMAGE_URL_LENGTH - len(prefix) + 1))


def test_image_ref_repr_shortens_a_data_url() -> None:
    ref = ImageRef(url=DATA_URL)
    assert len(repr(ref)) < 160
    assert "characters" in repr(ref)


def test_a_local_file_becomes_a_data_url_and_one_too_large_is_refused() -> None:
    ref = ImageRef.from_file(ImageFile.from_bytes(PNG, "a.png"))
    assert ref.url == DATA_URL
    with pytest.raises(ValidationError, match="not a PNG, JPEG or WebP") as info:
        ImageRef.from_file(ImageFile.from_bytes(b"GIF89a...", "a.gif"), "image[1]")
    assert info.value.param == "image[1]"
    big = ImageFile("big.png", PNG[:64] + b"\0" * (MAX_IMAGE_URL_LENGTH * 3 // 4), "image/png")
    with pytest.raises(ValidationError, match="as a data URL") as info:
        ImageRef.from_file(big, "mask")
    assert info.value.param == "mask"


def test_json_edit_body_and_its_rules() -> None:
    params = JsonEditParams.build(
        image_refs=(ImageRef(url="https://example.com/a.png"), ImageRef(file_id="file-2")),
        mask=ImageRef(file_id="file-m"),
        prompt="add a moon",
        model="gpt-image-1.5",
        moderation="low",
        size="1024x1024",
    )
    assert params.to_json() == {
        "images": [{"image_url": "https://example.com/a.png"}, {"file_id": "file-2"}],
        "mask": {"file_id": "file-m"},
        "prompt": "add a moon",
        "model": "gpt-image-1.5",
        "size": "1024x1024",
        "moderation": "low",
    }
    assert params.images == 1  # the cost against the limiter is n, not the inputs
    refs = (ImageRef(file_id="file-1"),)
    with pytest.raises(ValidationError, match="only the GPT image models") as info:
        JsonEditParams.build(image_refs=refs, prompt="p", model="dall-e-2")
    assert info.value.param == "image"
    with pytest.raises(ValidationError, match="at most 16") as info:
        JsonEditParams.build(image_refs=refs * 17, prompt="p", model="gpt-image-1")
    with pytest.raises(ValidationError, match="image is required"):
        JsonEditParams.build(image_refs=(), prompt="p")
    with pytest.raises(ValidationError) as info:
        JsonEditParams.build(image_refs=refs, prompt="p", model="gpt-image-1", moderation="off")
    assert info.value.param == "moderation"
    with pytest.raises(ValidationError, match="extra_body repeats") as info:
        JsonEditParams.build(image_refs=refs, prompt="p", extra_body={"images": []})
    assert info.value.param == "images"
    # A model the table does not know (a compatible server) is not refused.
    JsonEditParams.build(image_refs=refs * 16, prompt="p", model="my-model")


def test_from_wire_reads_a_json_edit_as_the_client_wrote_it() -> None:
    body = {
        "images": [{"image_url": DATA_URL}, {"file_id": "file-9"}],
        "mask": {"file_id": "file-m"},
        "prompt": "p",
        "model": "gpt-image-1",
        "moderation": "auto",
        "stream": False,
    }
    params = from_wire("edit", body, as_json=True)
    assert isinstance(params, JsonEditParams)
    assert params.to_json() == body
    with pytest.raises(ValidationError) as info:
        from_wire("edit", {"prompt": "p", "images": [{"image_url": "x", "file_id": "y"}]},
                  as_json=True)
    assert info.value.param == "images[0]"
    with pytest.raises(ValidationError) as info:
        from_wire("edit", {"prompt": "p", "images": [{"url": "https://a/b.png"}]}, as_json=True)
    assert info.value.param == "images[0].url"


# ------------------------------------------------------ client + emulator


async def test_a_json_edit_by_data_url_and_file_id(
    emu: Emulator, client: AsyncImagesClient
) -> None:
    file_id = emu.add_file(make_png(64, 64, "uploaded"), "up.png")
    mask_id = emu.add_file(make_png(64, 64, "mask", alpha=True), "mask.png")
    r = await client.edit(
        [ImageRef(url=DATA_URL), ImageRef(file_id=file_id)],
        "merge them",
        mask=ImageRef(file_id=mask_id),
        model="gpt-image-1.5",
        moderation="low",
        size="1024x1024",
    )
    assert r.data[0].b64_json
    info = image_info(base64.b64decode(r.data[0].b64_json))
    assert info is not None
    assert (info.width, info.height) == (1024, 1024)
    assert r.usage is not None
    assert r.usage.input_tokens_details is not None
    assert r.usage.input_tokens_details.image_tokens == 3 * 194  # two images and the mask
    sent = emu.requests("edit")[-1]
    assert sent.headers["Content-Type"] == "application/json"
    assert sent.json["images"] == [{"image_url": DATA_URL}, {"file_id": file_id}]
    assert sent.json["mask"] == {"file_id": mask_id}
    assert sent.json["moderation"] == "low"
    assert sent.files == ()


async def test_a_file_uploaded_to_the_files_api_is_an_edit_s_file_id(
    emu: Emulator, client: AsyncImagesClient
) -> None:
    form = aiohttp.FormData()
    form.add_field("purpose", "vision")
    form.add_field("file", make_png(32, 32, "upload"), filename="photo.png")
    async with aiohttp.ClientSession() as session, session.post(
        emu.base_url + "/files", data=form, headers={"Authorization": f"Bearer {TEST_KEY}"}
    ) as resp:
        assert resp.status == 200
        file_id = (await resp.json())["id"]
    r = await client.edit(ImageRef(file_id=file_id), "p", model="gpt-image-1")
    assert r.data[0].b64_json


async def test_a_batch_of_json_edits(emu: Emulator, client: AsyncImagesClient) -> None:
    from asyncimg._batch.api import batch_api_line, submit_batch

    body = JsonEditParams.build(
        image_refs=(ImageRef(url=DATA_URL),), prompt="a hat", model="gpt-image-1"
    ).to_json()
    job = await submit_batch(client, [batch_api_line("e-0", "edit", body)], endpoint="edit")
    await job.wait(poll_interval=0)
    (result,) = [r async for r in job.results()]
    assert result.ok, result.error


async def test_local_files_beside_refs_travel_as_data_urls(
    emu: Emulator, client: AsyncImagesClient
) -> None:
    r = await client.edit([PNG, ImageRef(url=DATA_URL)], "p", model="gpt-image-1",
                          mask=("m.png", make_png(64, 64, "m", alpha=True)))
    assert r.data
    sent = emu.requests("edit")[-1].json
    assert sent["images"] == [{"image_url": DATA_URL}, {"image_url": DATA_URL}]
    assert sent["mask"]["image_url"].startswith("data:image/png;base64,")


async def test_the_emulator_fetches_its_own_url_results(
    emu: Emulator, client: AsyncImagesClient
) -> None:
    first = await client.generate("a cat", model="dall-e-2", size="256x256")
    url = first.data[0].url
    assert url is not None
    r = await client.edit(ImageRef(url=url), "give it a hat", model="gpt-image-1")
    assert r.data[0].b64_json


async def test_urls_it_cannot_fetch_and_unknown_file_ids_are_the_api_s_errors(
    emu: Emulator, client: AsyncImagesClient
) -> None:
    with pytest.raises(BadRequestError) as info:
        await client.edit(ImageRef(url="https://example.com/a.png"), "p", model="gpt-image-1")
    assert info.value.code == "invalid_image_url"
    assert info.value.param == "images[0].image_url"
    assert "Error while downloading https://example.com/a.png" in info.value.message
    with pytest.raises(BadRequestError) as info:
        await client.edit(ImageRef(file_id="file-nope"), "p", model="gpt-image-1")
    assert info.value.param == "images[0].file_id"
    assert "No such File object: file-nope" in info.value.message
    not_png = "data:image/png;base64," + base64.b64encode(b"plain text").decode()
    with pytest.raises(BadRequestError) as info:
        await client.edit(ImageRef(url=not_png), "p", model="gpt-image-1")
    assert info.value.code == "invalid_image_format"
    assert emu.arrivals == []  # refused before any budget was spent


async def test_refs_are_refused_before_sending_where_the_spec_refuses_them(
    emu: Emulator, client: AsyncImagesClient
) -> None:
    ref = ImageRef(file_id="file-1")
    with pytest.raises(ValidationError) as info:
        await client.edit(ref, "p", model="dall-e-2")
    assert info.value.param == "image"
    with pytest.raises(ValidationError) as info:
        await client.edit(ref, "p", response_format="url")
    assert info.value.param == "response_format"
    with pytest.raises(ValidationError) as info:
        await client.edit([ref] * 17, "p")
    assert info.value.param == "image"
    with pytest.raises(ValidationError, match="only by an edit of images by reference") as info:
        await client.edit(PNG, "p", model="gpt-image-1", moderation="low")
    assert info.value.param == "moderation"
    with pytest.raises(ValidationError) as info:
        await client.edit([ref, b"not an image"], "p")
    assert info.value.param == "image[1]"
    assert len(emu.journal) == 0


def test_the_blocking_client_sends_json_edits_too(emu_thread_url: str) -> None:
    from asyncimg import ImagesClient

    with ImagesClient(api_key=TEST_KEY, base_url=emu_thread_url, rate_limit=None) as client:
        r = client.edit(ImageRef(url=DATA_URL), "p", model="gpt-image-1")
    assert r.data[0].b64_json


@pytest.fixture
def emu_thread_url() -> Iterator[str]:
    """An emulator on a thread of its own (the blocking client has its own loop)."""
    with emulator_thread(api_key=TEST_KEY) as emulator:
        yield emulator.base_url


async def test_a_json_edit_streams_with_the_call_s_headers_and_query(
    emu: Emulator, client: AsyncImagesClient
) -> None:
    stream = await client.edit(
        ImageRef(url=DATA_URL), "add a moon", model="gpt-image-1", stream=True,
        partial_images=1, extra_headers={"X-Trace": "t1"}, extra_query={"q": "1"},
    )
    async with stream:
        events = [event async for event in stream]
    assert [event.type for event in events] == ["image_edit.partial_image", "image_edit.completed"]
    sent = emu.requests("edit")[-1]
    assert sent.json["stream"] is True
    assert sent.json["images"] == [{"image_url": DATA_URL}]
    assert sent.headers["X-Trace"] == "t1"
    assert sent.query == {"q": "1"}
