"""With Pillow installed, an upload that does not decode fully is refused before sending."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from asyncimg import AsyncImagesClient, ValidationError
from asyncimg._decode import decode_problem
from asyncimg._files import ImageFile, png_problem
from asyncimg._params import EditParams
from asyncimg.testing import Emulator

from .conftest import TEST_KEY
from .pictures import chunk, encode, photo, python_without_pillow


def _bad_filter_png() -> bytes:
    """Every chunk well formed and the data of the right size (the Pillow-free check
    passes it), but each row names PNG filter type 9, which does not exist."""
    rows = b"".join(b"\x09" + bytes(16 * 4) for _ in range(16))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 8, 6, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def _broken() -> dict[str, bytes]:
    jpeg = encode(photo(120, 90), "JPEG")
    webp = encode(photo(120, 90), "WEBP")
    return {
        "truncated JPEG": jpeg[: len(jpeg) * 2 // 3],
        "truncated WebP": webp[: len(webp) // 2],
        "PNG with an unknown row filter": _bad_filter_png(),
    }


@pytest.mark.parametrize("name", list(_broken()))
def test_a_broken_upload_is_refused_by_validation(name: str) -> None:
    data = _broken()[name]
    if data.startswith(b"\x89PNG"):
        assert png_problem(data) is None  # the structural check passes it: only decoding tells
    assert decode_problem(data) is not None
    with pytest.raises(ValidationError, match="does not decode") as caught:
        EditParams.build(
            image=(ImageFile.from_bytes(data, "in"),), prompt="p", model="gpt-image-1"
        )
    assert caught.value.param == "image"
    with pytest.raises(ValidationError) as caught:
        EditParams.build(
            image=(ImageFile.from_bytes(encode(photo(8, 8))),), prompt="p",
            mask=ImageFile.from_bytes(data, "m"), model="my-own-model",
        )
    assert caught.value.param == "mask"  # every model, the mask too


def test_whole_images_pass() -> None:
    for fmt in ("PNG", "JPEG", "WEBP"):
        assert decode_problem(encode(photo(40, 30), fmt)) is None


async def test_nothing_is_sent_for_a_broken_upload() -> None:
    data = _broken()["truncated JPEG"]
    async with Emulator(api_key=TEST_KEY) as emu, AsyncImagesClient(
        api_key=TEST_KEY, base_url=emu.base_url
    ) as client:
        with pytest.raises(ValidationError):
            await client.edit(data, "a hat", model="gpt-image-1")
        assert emu.requests() == []
        assert client.limiter is not None
        assert client.limiter.stats().granted == 0


def test_without_pillow_the_check_is_skipped_at_no_cost(tmp_path: Path) -> None:
    data = _broken()["truncated JPEG"]
    code = (
        "import sys\n"
        "from asyncimg._files import ImageFile\n"
        "from asyncimg._params import EditParams\n"
        f"data = {data!r}\n"
        "for _ in range(3):\n"
        "    image = (ImageFile.from_bytes(data),)\n"
        "    EditParams.build(image=image, prompt='p', model='gpt-image-1')\n"
        "finder = sys.meta_path[0]\n"
        "assert 'PIL' not in sys.modules\n"
        "print(type(finder).attempts)\n"
    )
    done = python_without_pillow(code, tmp_path)
    assert done.stdout.strip() == "1"  # one failed import, remembered
