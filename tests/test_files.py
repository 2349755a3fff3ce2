"""Image inputs: sniffing, header reading and every input kind (pure, bar the async loaders)."""

from __future__ import annotations

import io
import os
import pathlib
import struct
import zlib
from collections.abc import Iterator
from typing import IO, Any

import pytest

from asyncimg._exceptions import ValidationError
from asyncimg._files import (
    ImageFile,
    ImageInfo,
    image_info,
    load_image,
    load_images,
    sniff_mime,
)

# ------------------------------------------------------------------ test images

_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png(width: int = 4, height: int = 3, colour_type: int = 6, *, trns: bool = False) -> bytes:
    """A valid 8-bit PNG of any colour type, with a ``tRNS`` chunk when asked."""
    raw = b"".join(b"\x00" + bytes(width * _CHANNELS[colour_type]) for _ in range(height))
    out = b"\x89PNG\r\n\x1a\n" + _chunk(
        b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    )
    if colour_type == 3:
        out += _chunk(b"PLTE", bytes(3))
    if trns:
        out += _chunk(b"tRNS", b"\x00" if colour_type == 3 else bytes(6))
    return out + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")


def jpeg(width: int = 640, height: int = 480, sof: int = 0xC0, *, fill: bool = False) -> bytes:
    """JPEG headers: SOI, APP0, DQT, an optional fill byte, then a frame header."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    dqt = b"\xff\xdb" + struct.pack(">H", 67) + bytes(65)
    frame = bytes([0xFF, sof]) + struct.pack(">HBHHB", 17, 8, height, width, 3) + bytes(9)
    return b"\xff\xd8" + app0 + dqt + (b"\xff" if fill else b"") + frame + b"\xff\xd9"


def _riff(chunk: bytes, body: bytes) -> bytes:
    payload = b"WEBP" + chunk + struct.pack("<I", len(body)) + body
    return b"RIFF" + struct.pack("<I", len(payload)) + payload


def webp_vp8(width: int = 300, height: int = 200) -> bytes:
    body = b"\x10\x02\x00" + b"\x9d\x01\x2a" + struct.pack("<HH", width, height) + bytes(10)
    return _riff(b"VP8 ", body)


def webp_vp8l(width: int = 300, height: int = 200, *, alpha: bool = False) -> bytes:
    bits = (width - 1) | ((height - 1) << 14) | (int(alpha) << 28)
    return _riff(b"VP8L", b"\x2f" + bits.to_bytes(4, "little") + bytes(8))


def webp_vp8x(width: int = 3000, height: int = 2000, *, alpha: bool = False) -> bytes:
    flags = 0x10 if alpha else 0
    body = bytes([flags, 0, 0, 0]) + (width - 1).to_bytes(3, "little")
    body += (height - 1).to_bytes(3, "little")
    return _riff(b"VP8X", body)


PNG = png()


# ------------------------------------------------------------------ sniffing


@pytest.mark.parametrize(
    ("data", "mime"),
    [
        (PNG, "image/png"),
        (jpeg(), "image/jpeg"),
        (webp_vp8(), "image/webp"),
        (webp_vp8l(), "image/webp"),
        (webp_vp8x(), "image/webp"),
        (b"GIF89a" + bytes(20), "image/gif"),
        (b"GIF87a" + bytes(20), "image/gif"),
        (b"GIF8", None),
        (b'<?xml version="1.0"?>\n<!-- by hand -->\n<svg xmlns="http://www.w3.org/2000/svg"/>',
         "image/svg+xml"),
        (b"\xef\xbb\xbf  <svg width='1'></svg>", "image/svg+xml"),
        (b"<svgx/>", None),
        (b"<html><svg></svg></html>", None),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", None),
        (b"<html>", None),
        (b"", None),
        (b"\x89PNG", None),
        (b"\xff\xd8", None),
    ],
)
def test_sniff_mime(data: bytes, mime: str | None) -> None:
    assert sniff_mime(data) == mime


# ------------------------------------------------------------------ image_info


@pytest.mark.parametrize(
    ("colour_type", "trns", "alpha"),
    [
        (0, False, False),
        (0, True, True),
        (2, False, False),
        (2, True, True),
        (3, False, False),
        (3, True, True),
        (4, False, True),
        (6, False, True),
    ],
)
def test_png_alpha_from_colour_type_and_trns(colour_type: int, trns: bool, alpha: bool) -> None:
    assert image_info(png(17, 9, colour_type, trns=trns)) == ImageInfo("png", 17, 9, alpha)


def test_a_trns_chunk_after_idat_is_not_looked_for() -> None:
    data = png(2, 2, 2)
    iend = data.rindex(b"IEND") - 4
    late = data[:iend] + _chunk(b"tRNS", bytes(6)) + data[iend:]
    info = image_info(late)
    assert info is not None
    assert info.has_alpha is False


@pytest.mark.parametrize(
    "data",
    [
        b"\x89PNG\r\n\x1a\n",
        b"\x89PNG\r\n\x1a\n" + bytes(40),
        PNG[:20],
    ],
)
def test_png_with_a_bad_header_has_no_info(data: bytes) -> None:
    assert image_info(data) is None


@pytest.mark.parametrize("sof", [0xC0, 0xC1, 0xC2, 0xC3, 0xC9, 0xCF])
def test_jpeg_size_from_its_frame_header(sof: int) -> None:
    assert image_info(jpeg(640, 480, sof)) == ImageInfo("jpeg", 640, 480, False)


def test_jpeg_fill_bytes_before_a_marker_are_skipped() -> None:
    assert image_info(jpeg(33, 44, fill=True)) == ImageInfo("jpeg", 33, 44, False)


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xd8\xff\xd9" + bytes(20),  # ends before any frame
        b"\xff\xd8\xff\xda\x00\x08" + bytes(20),  # a scan before any frame
        b"\xff\xd8\xff\xe0\x00\x10" + bytes(5),  # truncated
        b"\xff\xd8\xff\xe0\x00\x04\x00\x00\x12\x34" + bytes(10),  # garbage where a marker goes
    ],
)
def test_jpeg_without_a_frame_header_has_no_info(data: bytes) -> None:
    assert sniff_mime(data) == "image/jpeg"
    assert image_info(data) is None


@pytest.mark.parametrize(
    ("data", "info"),
    [
        (webp_vp8(300, 200), ImageInfo("webp", 300, 200, False)),
        (webp_vp8l(300, 200), ImageInfo("webp", 300, 200, False)),
        (webp_vp8l(1, 16384, alpha=True), ImageInfo("webp", 1, 16384, True)),
        (webp_vp8x(3000, 2000), ImageInfo("webp", 3000, 2000, False)),
        (webp_vp8x(16777216, 1, alpha=True), ImageInfo("webp", 16777216, 1, True)),
    ],
)
def test_webp_info(data: bytes, info: ImageInfo) -> None:
    assert image_info(data) == info


@pytest.mark.parametrize(
    "data", [webp_vp8()[:24], webp_vp8l()[:22], webp_vp8x()[:26], _riff(b"ALPH", bytes(20))]
)
def test_webp_with_a_short_or_unknown_chunk_has_no_info(data: bytes) -> None:
    assert image_info(data) is None


@pytest.mark.parametrize("data", [b"", b"GIF89a" + bytes(20), b"hello world"])
def test_unknown_bytes_have_no_info(data: bytes) -> None:
    assert image_info(data) is None


# ------------------------------------------------------------------ ImageFile


@pytest.mark.parametrize(
    ("data", "mime", "name"),
    [
        (PNG, "image/png", "image.png"),
        (jpeg(), "image/jpeg", "image.jpg"),
        (webp_vp8(), "image/webp", "image.webp"),
        (b"hello", "application/octet-stream", "image.bin"),
    ],
)
def test_image_file_from_bytes_sniffs_and_names(data: bytes, mime: str, name: str) -> None:
    file = ImageFile.from_bytes(data)
    assert (file.filename, file.data, file.mime) == (name, data, mime)


def test_the_mime_type_comes_from_the_bytes_not_the_name() -> None:
    file = ImageFile.from_bytes(jpeg(), "photo.png")
    assert file.filename == "photo.png"
    assert file.mime == "image/jpeg"


def test_image_file_info_and_repr() -> None:
    file = ImageFile.from_bytes(png(5, 6), "a.png")
    assert file.info == ImageInfo("png", 5, 6, True)
    assert f"<{len(file.data)} bytes>" in repr(file)
    assert ImageFile.from_bytes(b"x").info is None


# ------------------------------------------------------------------ load_image


async def test_load_a_str_path(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "cat.png"
    path.write_bytes(PNG)
    assert await load_image(str(path)) == ImageFile("cat.png", PNG, "image/png")


async def test_load_a_pathlike(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "cat.jpg"
    path.write_bytes(jpeg())
    assert await load_image(path) == ImageFile("cat.jpg", jpeg(), "image/jpeg")


async def test_load_a_custom_pathlike(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "x.webp"
    path.write_bytes(webp_vp8())

    class P(os.PathLike[str]):
        def __fspath__(self) -> str:
            return str(path)

    assert (await load_image(P())).mime == "image/webp"


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
async def test_load_bytes_like(kind: Any) -> None:
    file = await load_image(kind(PNG))
    assert file == ImageFile("image.png", PNG, "image/png")
    assert type(file.data) is bytes


async def test_load_a_bytesio() -> None:
    assert await load_image(io.BytesIO(PNG)) == ImageFile("image.png", PNG, "image/png")


async def test_load_a_named_bytesio() -> None:
    buffer = io.BytesIO(jpeg())
    buffer.name = "/some/dir/photo.jpg"
    assert (await load_image(buffer)).filename == "photo.jpg"


@pytest.fixture
def binary_file(tmp_path: pathlib.Path) -> Iterator[IO[bytes]]:
    """A PNG file opened 'rb' (opened here: async tests should not block on open())."""
    path = tmp_path / "open.png"
    path.write_bytes(PNG)
    with open(path, "rb") as fh:
        yield fh


@pytest.fixture
def text_file(tmp_path: pathlib.Path) -> Iterator[IO[str]]:
    """A PNG file opened in text mode, by mistake."""
    path = tmp_path / "text.png"
    path.write_bytes(PNG[:8])
    with open(path, encoding="latin-1") as fh:
        yield fh


async def test_load_an_open_binary_file(binary_file: IO[bytes]) -> None:
    file = await load_image(binary_file)
    assert file == ImageFile("open.png", PNG, "image/png")


async def test_load_a_two_tuple() -> None:
    assert await load_image(("named.png", PNG)) == ImageFile("named.png", PNG, "image/png")


async def test_load_a_two_tuple_sniffs_the_mime_from_the_bytes() -> None:
    assert (await load_image(("named.png", jpeg()))).mime == "image/jpeg"


async def test_load_a_three_tuple_keeps_the_given_mime() -> None:
    file = await load_image(("x.png", PNG, "image/x-custom"))
    assert file == ImageFile("x.png", PNG, "image/x-custom")


async def test_an_image_file_passes_through() -> None:
    file = ImageFile("a.png", PNG, "image/png")
    assert await load_image(file) is file


@pytest.mark.parametrize(
    "value",
    [
        42,
        None,
        3.5,
        {"image": PNG},
        ("a.png",),
        ("a.png", PNG, "image/png", "extra"),
        (PNG, "a.png"),
        ("a.png", "not bytes"),
        ("a.png", PNG, 7),
    ],
)
async def test_bad_kinds_are_refused_naming_the_parameter(value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        await load_image(value, "mask")
    assert info.value.param == "mask"
    assert str(info.value).startswith("mask:")


async def test_a_text_mode_file_is_refused(text_file: IO[str]) -> None:
    with pytest.raises(ValidationError, match="open it 'rb'") as info:
        await load_image(text_file)  # type: ignore[arg-type]
    assert info.value.param == "image"


async def test_a_stringio_is_refused() -> None:
    with pytest.raises(ValidationError, match="text mode"):
        await load_image(io.StringIO("abc"))  # type: ignore[arg-type]


@pytest.mark.parametrize("as_path", [str, pathlib.Path])
async def test_a_missing_path_is_refused(tmp_path: pathlib.Path, as_path: Any) -> None:
    missing = tmp_path / "nope.png"
    with pytest.raises(ValidationError, match="cannot read") as info:
        await load_image(as_path(missing))
    assert info.value.param == "image"
    assert "nope.png" in str(info.value)


async def test_a_directory_is_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValidationError, match="cannot read"):
        await load_image(tmp_path)


# ------------------------------------------------------------------ load_images


async def test_load_images_of_one_image() -> None:
    assert await load_images(PNG) == (ImageFile("image.png", PNG, "image/png"),)


async def test_load_images_of_a_file_tuple_is_one_image() -> None:
    files = await load_images(("a.png", PNG))
    assert [f.filename for f in files] == ["a.png"]


async def test_load_images_of_a_list(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "p.png"
    path.write_bytes(PNG)
    files = await load_images([str(path), PNG, ("t.jpg", jpeg()), io.BytesIO(webp_vp8())])
    assert [f.filename for f in files] == ["p.png", "image.png", "t.jpg", "image.webp"]
    assert [f.mime for f in files] == ["image/png", "image/png", "image/jpeg", "image/webp"]


async def test_load_images_of_a_tuple_of_paths(tmp_path: pathlib.Path) -> None:
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(PNG)
    b.write_bytes(PNG)
    files = await load_images((str(a), str(b)))
    assert [f.filename for f in files] == ["a.png", "b.png"]


async def test_load_images_of_a_list_of_file_tuples() -> None:
    files = await load_images([("a.png", PNG), ("b.png", PNG, "image/png")])
    assert [f.filename for f in files] == ["a.png", "b.png"]


async def test_load_images_names_the_failing_item() -> None:
    with pytest.raises(ValidationError) as info:
        await load_images([PNG, PNG, 42])  # type: ignore[list-item]
    assert info.value.param == "image[2]"
    assert str(info.value).startswith("image[2]:")


async def test_load_images_names_a_missing_path_by_index(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValidationError) as info:
        await load_images([PNG, tmp_path / "missing.png"])
    assert info.value.param == "image[1]"


@pytest.mark.parametrize("empty", [[], ()])
async def test_load_images_of_nothing_is_refused(empty: Any) -> None:
    with pytest.raises(ValidationError, match="at least one image") as info:
        await load_images(empty)
    assert info.value.param == "image"
