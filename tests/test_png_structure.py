"""PNG inputs are checked for structure without Pillow: chunks, CRCs, data that fits the header."""

from __future__ import annotations

import struct
import zlib

import pytest

from asyncimg import AsyncImagesClient, RateLimit, ValidationError
from asyncimg._files import MAX_PNG_EDGE, png_problem
from asyncimg.testing import Emulator, make_png

from .conftest import TEST_KEY

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def ihdr(width: int, height: int, depth: int = 8, colour: int = 6, interlace: int = 0) -> bytes:
    return chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace))


def png(width: int, height: int, *, rows: int | None = None, colour: int = 6,
        idat: bytes | None = None) -> bytes:
    channels = {0: 1, 2: 3, 6: 4}[colour]
    raw = b"".join(b"\x00" + b"\x7f" * (width * channels) for _ in range(rows or height))
    data = zlib.compress(raw) if idat is None else idat
    head = SIGNATURE + ihdr(width, height, colour=colour)
    return head + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def test_well_formed_pngs_pass() -> None:
    assert png_problem(png(16, 16)) is None
    assert png_problem(png(3, 5, colour=2)) is None
    assert png_problem(make_png(256, 256, "x", alpha=True)) is None
    assert png_problem(make_png(64, 32, "y")) is None


def test_an_interlaced_png_passes() -> None:
    # Adam7 data for a 3x3 greyscale image: seven passes, each row with its filter byte.
    passes = [(1, 1), (0, 0), (0, 0), (1, 1), (1, 2), (2, 1), (1, 3)]  # (rows, cols) per pass
    raw = b"".join((b"\x00" + b"\x10" * cols) * rows for rows, cols in passes)
    data = SIGNATURE + ihdr(3, 3, colour=0, interlace=1) + chunk(b"IDAT", zlib.compress(raw))
    assert png_problem(data + chunk(b"IEND", b"")) is None


GOOD = png(16, 16)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (GOOD[: len(GOOD) // 2], "truncated"),
        (GOOD[:-12], "no IEND"),
        (png(16, 16, idat=b"garbage, not zlib at all"), "corrupt"),
        (png(256, 256, rows=16, idat=zlib.compress(b"\x00" + b"\x7f" * 64 * 16)),
         "header needs"),
        (png(0, 0, rows=1), "each side must be"),
        (SIGNATURE + ihdr(2**31 - 1, 2**31 - 1) + chunk(b"IEND", b""), "each side must be"),
        (SIGNATURE + ihdr(MAX_PNG_EDGE + 1, 16) + chunk(b"IEND", b""), "each side must be"),
        (SIGNATURE + ihdr(16, 16, depth=3) + chunk(b"IEND", b""), "bit depth"),
        (SIGNATURE + chunk(b"IHDR", b"\x00" * 13, crc=1) + chunk(b"IEND", b""), "CRC"),
        (SIGNATURE + chunk(b"IEND", b""), "first chunk is not IHDR"),
        (SIGNATURE + ihdr(16, 16) + chunk(b"IEND", b""), "no image data"),
        (png(16, 16, rows=32), "larger than its header"),
    ],
    ids=["truncated", "no-iend", "garbage-idat", "256-over-16", "zero", "huge", "over-ceiling",
         "bad-depth", "bad-crc", "no-ihdr", "no-idat", "too-much-data"],
)
def test_broken_pngs_are_named(data: bytes, fragment: str) -> None:
    problem = png_problem(data)
    assert problem is not None
    assert fragment in problem


async def test_a_broken_png_is_refused_before_any_budget(emu: Emulator) -> None:
    async with AsyncImagesClient(api_key=TEST_KEY, base_url=emu.base_url,
                                 rate_limit=RateLimit(images=10, per=60.0)) as client:
        broken = png(256, 256, rows=16, idat=zlib.compress(b"\x00" + b"\x7f" * 1024 * 16))
        for model in ("dall-e-2", "gpt-image-1", None):
            with pytest.raises(ValidationError, match="not a valid PNG") as info:
                await client.edit(broken, "a hat", model=model)
            assert info.value.param == "image"
            with pytest.raises(ValidationError, match="not a valid PNG") as info:
                await client.edit(GOOD, "a hat", mask=broken[:-12], model=model)
            assert info.value.param == "mask"
        assert client.limiter.stats().granted == 0
    assert emu.journal[:] == []
