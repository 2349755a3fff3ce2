"""The emulator's pictures with Pillow: real JPEG/WebP, masks honoured, derived variations."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageStat

from asyncimg import AsyncImagesClient
from asyncimg._files import sniff_mime
from asyncimg.prepare import mask_from_box
from asyncimg.testing import Emulator
from asyncimg.testing._pictures import Recipe, partial_frame
from asyncimg.testing._png import make_png

from .conftest import TEST_KEY
from .pictures import decode, encode, python_without_pillow, quadrants


@pytest.fixture
async def client() -> AsyncIterator[AsyncImagesClient]:
    async with Emulator(api_key=TEST_KEY) as emu, AsyncImagesClient(
        api_key=TEST_KEY, base_url=emu.base_url, rate_limit=None
    ) as c:
        yield c


def _mean_difference(a: Image.Image, b: Image.Image) -> float:
    diff = ImageChops.difference(a.convert("RGB"), b.convert("RGB"))
    return sum(ImageStat.Stat(diff).mean) / 3


@pytest.mark.parametrize(("fmt", "mime"), [("jpeg", "image/jpeg"), ("webp", "image/webp")])
async def test_output_format_gives_real_bytes_of_that_format(
    client: AsyncImagesClient, fmt: str, mime: str
) -> None:
    r = await client.generate("a lantern", model="gpt-image-1", output_format=fmt,
                              size="1024x1024")
    data = base64.b64decode(r.data[0].b64_json or "")
    assert sniff_mime(data) == mime
    picture = decode(data)
    assert picture.format == fmt.upper()
    assert picture.size == (1024, 1024)
    assert r.output_format == fmt


async def test_output_compression_is_honoured(client: AsyncImagesClient) -> None:
    sizes = []
    for compression in (10, 95):
        r = await client.generate("a lantern", model="gpt-image-1", output_format="jpeg",
                                  output_compression=compression)
        sizes.append(len(base64.b64decode(r.data[0].b64_json or "")))
    assert sizes[0] < 0.75 * sizes[1]


async def test_png_generations_are_unchanged(client: AsyncImagesClient) -> None:
    r = await client.generate("a lantern", model="dall-e-2", size="256x256",
                              response_format="b64_json")
    assert base64.b64decode(r.data[0].b64_json or "") == make_png(256, 256, "a lantern#0")


async def test_an_edit_keeps_the_outside_of_the_mask_and_paints_the_inside(
    client: AsyncImagesClient,
) -> None:
    source = quadrants(256, 256, "RGBA")
    mask = mask_from_box(256, (0, 0, 128, 128))  # the red quadrant
    r = await client.edit(encode(source), "a sun", mask=mask, model="dall-e-2",
                          size="256x256", response_format="b64_json")
    out = decode(base64.b64decode(r.data[0].b64_json or "")).convert("RGBA")
    kept = ImageChops.difference(out, source)
    kept.paste((0, 0, 0, 0), (0, 0, 128, 128))
    assert kept.getbbox(alpha_only=False) is None  # not one pixel outside the box changed
    inside = _mean_difference(out.crop((0, 0, 128, 128)), source.crop((0, 0, 128, 128)))
    assert inside > 40  # the box was painted


async def test_without_a_mask_the_transparent_area_is_edited(
    client: AsyncImagesClient,
) -> None:
    source = quadrants(256, 256, "RGBA")
    source.paste((0, 0, 0, 0), (0, 0, 256, 128))  # the top half transparent
    r = await client.edit(encode(source), "a sky", model="dall-e-2", size="256x256")
    assert r.data[0].url is not None
    out = decode(await client.download(r.data[0])).convert("RGBA")  # url results too
    assert out.crop((0, 128, 256, 256)).tobytes() == source.crop((0, 128, 256, 256)).tobytes()
    assert out.crop((0, 0, 256, 128)).getextrema()[3] == (255, 255)  # painted, opaque


async def test_a_variation_is_derived_from_its_input(client: AsyncImagesClient) -> None:
    source = quadrants(256, 256, "RGBA")
    other = quadrants(256, 256, "RGBA").transpose(Image.Transpose.ROTATE_90)
    r = await client.create_variation(encode(source), n=2, model="dall-e-2", size="256x256",
                                      response_format="b64_json")
    first, second = (decode(base64.b64decode(i.b64_json or "")) for i in r.data)
    mirrored = source.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    assert _mean_difference(first, mirrored) < 0.5 * _mean_difference(first, other)
    assert first.tobytes() != second.tobytes()


def test_partial_frames_are_rougher_versions_of_the_final() -> None:
    recipe = Recipe(256, 256, "a lantern", output_format="webp",
                    image=encode(quadrants(256, 256)), variation=True)
    data = recipe.render()
    final = decode(data)
    partials = [decode(partial_frame(data, index)) for index in range(3)]
    assert all(p.format == "WEBP" and p.size == final.size for p in partials)
    errors = [_mean_difference(p, final) for p in partials]
    assert errors[0] > errors[1] > errors[2] > 0


async def test_streamed_partials_are_rougher_versions_in_the_format_asked(
    client: AsyncImagesClient,
) -> None:
    stream = await client.generate("a lantern", model="gpt-image-1", stream=True,
                                   partial_images=3, output_format="webp")
    async with stream:
        pictures = [decode(base64.b64decode(event.b64_json or "")) async for event in stream]
    assert [p.format for p in pictures] == ["WEBP"] * 4
    errors = [_mean_difference(p, pictures[-1]) for p in pictures[:-1]]
    assert errors[0] > errors[1] > errors[2] > 0


def test_without_pillow_every_picture_is_a_png(tmp_path: Path) -> None:
    code = (
        "from asyncimg.testing._pictures import Recipe\n"
        "r = Recipe(64, 64, 's', output_format='jpeg', image=b'x')\n"
        "assert r.render().startswith(b'\\x89PNG')\n"
    )
    python_without_pillow(code, tmp_path)


@pytest.mark.subprocess
def test_a_png_generation_never_loads_pillow() -> None:
    """The API has no cold start: the emulator's first PNG answer must not import Pillow
    (50 ms, far more on a loaded machine, which made the first window's answers late)."""
    import subprocess
    import sys

    script = (
        "import asyncio, sys\n"
        "from asyncimg import AsyncImagesClient\n"
        "from asyncimg.testing import Emulator\n"
        "async def main():\n"
        "    async with Emulator(api_key='sk-t') as emu, AsyncImagesClient(\n"
        "            api_key='sk-t', base_url=emu.base_url) as c:\n"
        "        await c.generate('p', model='dall-e-2', size='256x256',\n"
        "                         response_format='b64_json')\n"
        "asyncio.run(main())\n"
        "print('PIL' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "False"
