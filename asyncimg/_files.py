"""Image inputs: whatever the caller passes becomes an :class:`ImageFile`.

An image may be a path (``str`` or ``os.PathLike``), ``bytes``, a binary file
object (``io.BytesIO`` included) or a ``(filename, bytes[, mime])`` tuple. The
MIME type always comes from the bytes, never from the name. Image headers (PNG,
JPEG, WebP) are read here without Pillow.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import stat
import struct
import zlib
from collections.abc import Sequence
from typing import IO, Union

import attrs

from ._exceptions import ValidationError
from ._offloop import blocking

__all__ = [
    "EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "MAX_INPUT_BYTES",
    "MAX_PNG_EDGE",
    "ImageFile",
    "ImageInfo",
    "ImageInput",
    "file_extension",
    "image_info",
    "load_image",
    "load_images",
    "pixel_problem",
    "png_problem",
    "read_image",
    "size_problem",
    "sniff_mime",
]

ImageInput = Union[
    str,
    "os.PathLike[str]",
    bytes,
    bytearray,
    memoryview,
    IO[bytes],
    tuple[str, bytes],
    tuple[str, bytes, str],
]
"""Anything accepted where an image is expected."""

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXTENSIONS = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/webp": "webp",
    "image/gif": "gif",
    "image/svg+xml": "svg",
}
"""The file extension for each MIME type an image may have (GIF and SVG: results only):
the only extensions of files we write (:func:`file_extension`)."""

_UNKNOWN_EXTENSION = "bin"
"""The extension of a file whose bytes are of no format we know."""

_SVG_HEAD = re.compile(
    rb"\s*(?:<\?xml[^>]*\?>\s*)?(?:(?:<!--.*?-->|<!DOCTYPE[^>]*>)\s*)*<svg[\s>/]", re.DOTALL
)
_SVG_SNIFF_BYTES = 4096


def sniff_mime(data: bytes) -> str | None:
    """The MIME type of PNG, JPEG, WebP or GIF bytes (by their signature), or of SVG
    text (an ``<svg`` root element, after an optional XML declaration, comments and
    doctype), or None for anything else."""
    if data.startswith(_PNG_SIGNATURE):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if _SVG_HEAD.match(data.removeprefix(b"\xef\xbb\xbf")[:_SVG_SNIFF_BYTES]):
        return "image/svg+xml"
    return None


def file_extension(data: bytes) -> str:
    """The extension for a file of ``data``, from its signature alone (pure).

    Only ever one of :data:`EXTENSIONS`' values (GIF and SVG included), or
    ``"bin"`` for bytes of no known format: never anything a server said.
    """
    return EXTENSIONS.get(sniff_mime(data) or "", _UNKNOWN_EXTENSION)


@attrs.frozen
class ImageInfo:
    """What an image's header says: format, size and whether it has an alpha channel."""

    format: str
    width: int
    height: int
    has_alpha: bool


def _png_info(data: bytes) -> ImageInfo | None:
    if len(data) < 33 or data[12:16] != b"IHDR":
        return None
    width, height, _depth, colour_type = struct.unpack(">IIBB", data[16:26])
    has_alpha = colour_type in (4, 6)
    pos = 8
    while not has_alpha and pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        if kind == b"tRNS":
            has_alpha = True
        elif kind in (b"IDAT", b"IEND"):
            break
        pos += 12 + length
    return ImageInfo("png", width, height, has_alpha)


MAX_PNG_EDGE = 16384
"""The widest and tallest PNG accepted as an input: far above what an image model
takes, far below the 2^31-1 a header may claim."""

_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
          (0, 1, 1, 2))
_INFLATE_STEP = 1 << 20


def _scanline_bytes(width: int, height: int, bits: int, interlaced: bool) -> int:
    """How many bytes the image data inflates to: each row, plus its filter byte."""
    passes = _ADAM7 if interlaced else ((0, 0, 1, 1),)
    total = 0
    for x0, y0, dx, dy in passes:
        cols = -(-(width - x0) // dx) if width > x0 else 0
        rows = -(-(height - y0) // dy) if height > y0 else 0
        if cols and rows:
            total += rows * (1 + (cols * bits + 7) // 8)
    return total


def png_problem(data: bytes) -> str | None:
    """Why ``data`` is not a well-formed PNG, or None when it is (pure, no Pillow).

    Checks the chunk structure (every CRC, IHDR first and sane, PLTE where the
    colour type needs it, the IDAT chunks together, IEND present) and inflates
    the image data to check it is exactly what the header's size implies, which
    catches a truncated file, garbage data and a header that claims more
    pixels than there are. Sides above :data:`MAX_PNG_EDGE` are refused unread.
    """
    if not data.startswith(_PNG_SIGNATURE):
        return "it does not start with the PNG signature"
    view = memoryview(data)  # slices of it copy nothing
    pos, n = len(_PNG_SIGNATURE), len(data)
    expected = 0
    inflater = zlib.decompressobj()
    inflated = 0
    seen: list[bytes] = []
    colour_type = -1
    while True:
        if pos + 12 > n:
            return "it is truncated (no IEND chunk)"
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 8 + length
        if length > 0x7FFFFFFF or end + 4 > n:
            return f"it is truncated inside the {kind!r} chunk"
        body = view[pos + 8 : end]
        (crc,) = struct.unpack(">I", data[end : end + 4])
        if zlib.crc32(body, zlib.crc32(kind)) != crc:
            return f"the CRC of the {kind.decode('latin-1')!r} chunk is wrong"
        pos = end + 4
        if not seen and kind != b"IHDR":
            return "its first chunk is not IHDR"
        if kind == b"IHDR":
            if seen or length != 13:
                return "its IHDR chunk is repeated or malformed"
            width, height, depth, colour_type, method, filt, interlace = struct.unpack(
                ">IIBBBBB", body
            )
            if not (0 < width <= MAX_PNG_EDGE and 0 < height <= MAX_PNG_EDGE):
                return (
                    f"its header says {width}x{height}; each side must be 1..{MAX_PNG_EDGE}"
                )
            if depth not in _DEPTHS.get(colour_type, ()) or method or filt or interlace > 1:
                return "its IHDR chunk holds an invalid colour type or bit depth"
            bits = _CHANNELS[colour_type] * depth
            expected = _scanline_bytes(width, height, bits, interlace == 1)
        elif kind == b"IDAT":
            if seen[-1] != b"IDAT" and b"IDAT" in seen:
                return "its IDAT chunks are not consecutive"
            if colour_type == 3 and b"PLTE" not in seen:
                return "a palette image without a PLTE chunk before its data"
            try:
                chunk: bytes | memoryview = body
                while chunk:
                    inflated += len(inflater.decompress(chunk, _INFLATE_STEP))
                    if inflated > expected:
                        return "its image data is larger than its header says"
                    chunk = inflater.unconsumed_tail
            except zlib.error:
                return "its image data is corrupt"
        elif kind == b"IEND":
            break
        seen.append(kind)
    if b"IDAT" not in seen:
        return "it has no image data (IDAT)"
    if not inflater.eof or inflated != expected:
        return (
            f"its image data holds {inflated} bytes where its "
            f"{width}x{height} header needs {expected}"
        )
    return None


# Start-of-frame markers (they carry the size): SOF0-3, 5-7, 9-11, 13-15;
# C4 (DHT), C8 (JPG) and CC (DAC) are not frames.
_SOF_MARKERS = frozenset(
    {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
)


def _jpeg_info(data: bytes) -> ImageInfo | None:
    pos = 2
    while pos + 9 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # a fill byte before the marker
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _SOF_MARKERS:
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return ImageInfo("jpeg", width, height, False)
        pos += 2 + length
    return None


def _webp_info(data: bytes) -> ImageInfo | None:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        flags = data[20]
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return ImageInfo("webp", width, height, bool(flags & 0x10))
    if chunk == b"VP8 " and len(data) >= 30:
        width, height = struct.unpack("<HH", data[26:30])
        return ImageInfo("webp", width & 0x3FFF, height & 0x3FFF, False)
    if chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        width = (bits & 0x3FFF) + 1
        height = ((bits >> 14) & 0x3FFF) + 1
        return ImageInfo("webp", width, height, bool((bits >> 28) & 1))
    return None


MAX_IMAGE_PIXELS = 8192 * 8192
"""The most pixels (width times height) of an image this library decodes: 64
megapixels, above any phone or camera photo (48-61 MP), eight times the largest
picture a model makes (3840x2160), far below a decompression bomb (a 641 KB PNG
of 13000x13000 decodes to 676 MB). Checked in the header, before decoding."""


def pixel_problem(data: bytes) -> str | None:
    """Why ``data`` has too many pixels to decode (its header says so), or None (pure).

    None also when the header cannot be read (the format checks say why).
    """
    info = image_info(data)
    return None if info is None else size_problem(info.width, info.height)


def size_problem(width: int, height: int) -> str | None:
    """Why an image of ``width`` x ``height`` is too large to decode, or None (pure)."""
    if width * height <= MAX_IMAGE_PIXELS:
        return None
    return (
        f"is {width}x{height} pixels: over the {MAX_IMAGE_PIXELS // 2**20}-megapixel "
        "ceiling of what is decoded"
    )


def image_info(data: bytes) -> ImageInfo | None:
    """Read the header of PNG, JPEG or WebP bytes; None if it cannot be read.

    For PNG, alpha means colour type 4 or 6, or a ``tRNS`` chunk.
    """
    mime = sniff_mime(data)
    if mime == "image/png":
        return _png_info(data)
    if mime == "image/jpeg":
        return _jpeg_info(data)
    if mime == "image/webp":
        return _webp_info(data)
    return None


@attrs.frozen
class ImageFile:
    """An image ready to upload: a file name, its bytes and the MIME type of those bytes."""

    filename: str
    data: bytes = attrs.field(repr=lambda d: f"<{len(d)} bytes>")
    mime: str = "application/octet-stream"

    @classmethod
    def from_bytes(cls, data: bytes, filename: str | None = None) -> ImageFile:
        """Wrap bytes; the MIME type is sniffed, and a name made up when none is given."""
        mime = sniff_mime(data) or "application/octet-stream"
        if not filename:
            filename = f"image.{EXTENSIONS.get(mime, 'bin')}"
        return cls(filename, bytes(data), mime)

    @property
    def info(self) -> ImageInfo | None:
        """The header of the image, or None when it is not PNG, JPEG or WebP."""
        return image_info(self.data)


def _describe(value: object) -> str:
    return type(value).__name__


MAX_INPUT_BYTES = 64 * 2**20
"""The largest image file read from a path (64 MiB): above what any model takes
(50 MB); the model's own limit is checked after."""


class _NotAnImageFile(Exception):
    """The path names something that is no regular file, or one too large to read."""


def _read_path(path: str) -> bytes:
    """The bytes of the regular file at ``path``, checked before any byte is read.

    Opened without blocking (a FIFO opens at once, with no writer) and checked
    with ``fstat``: anything but a regular file, or one over
    :data:`MAX_INPUT_BYTES` (a sparse file of 2 GB), is refused unread.

    Raises:
        OSError: the file cannot be opened or read.
        _NotAnImageFile: not a regular file, or too large.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _NotAnImageFile("is not a regular file (a FIFO, a device or a directory?)")
        size = info.st_size
        data = f.read(MAX_INPUT_BYTES + 1) if size <= MAX_INPUT_BYTES else b""
        if max(size, len(data)) > MAX_INPUT_BYTES:  # checked again: it may have grown
            raise _NotAnImageFile(
                f"is {max(size, len(data))} bytes, over the {MAX_INPUT_BYTES // 2**20} MiB "
                "read from a path"
            )
        return data


def read_image(value: ImageInput | ImageFile, param: str = "image") -> ImageFile:
    """Turn one image input into an :class:`ImageFile`, reading paths and files at once.

    The blocking twin of :func:`load_image`, for code off the event loop
    (:mod:`asyncimg.prepare`, and :func:`load_image`'s worker thread).

    Raises:
        ValidationError: as :func:`load_image`.
    """
    file = _from_value(value, param)
    if file is not None:
        return file
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        try:
            data = _read_path(path)
        except OSError as exc:
            raise ValidationError(param, f"{param}: cannot read {path!r}: {exc.strerror}") from exc
        except _NotAnImageFile as exc:
            raise ValidationError(param, f"{param}: {path!r} {exc}") from None
        return ImageFile.from_bytes(data, os.path.basename(path))
    data, position = _read_file_object(value, param)
    if position and sniff_mime(data) is None:
        raise ValidationError(
            param,
            f"{param}: read from the file object's position {position}, and the bytes "
            "there are not a PNG, JPEG or WebP image; seek(0) first?",
        )
    name = getattr(value, "name", None)
    filename = os.path.basename(name) if isinstance(name, str) else None
    return ImageFile.from_bytes(data, filename)


async def load_image(value: ImageInput | ImageFile, param: str = "image") -> ImageFile:
    """Turn one image input into an :class:`ImageFile`.

    Paths and file objects (other than ``BytesIO``) are read in a worker
    thread so that the event loop never blocks; a file object is read from its
    current position, as the official SDK does.

    Raises:
        ValidationError: the value is of no accepted kind, a path cannot be read,
            a file object is closed, in text mode, or positioned past the
            image's start.
    """
    file = _from_value(value, param)
    if file is not None:
        return file
    if isinstance(value, io.BytesIO):
        return read_image(value, param)  # in memory: nothing blocks
    return await blocking(read_image, value, param)


def _from_value(value: ImageInput | ImageFile, param: str) -> ImageFile | None:
    """The inputs that need no reading; None for a path or a file object.

    Raises:
        ValidationError: a malformed tuple, or a value of no accepted kind.
    """
    if isinstance(value, ImageFile):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return ImageFile.from_bytes(bytes(value))
    if isinstance(value, (str, os.PathLike)) or callable(getattr(value, "read", None)):
        return None
    if isinstance(value, tuple):
        if (
            len(value) in (2, 3)
            and isinstance(value[0], str)
            and isinstance(value[1], (bytes, bytearray, memoryview))
            and (len(value) == 2 or isinstance(value[2], str))
        ):
            file = ImageFile.from_bytes(bytes(value[1]), value[0])
            if len(value) == 3:
                file = attrs.evolve(file, mime=value[2])
            return file
        raise ValidationError(
            param, f"{param}: a tuple must be (filename, bytes) or (filename, bytes, mime)"
        )
    raise ValidationError(
        param,
        f"{param}: expected a path, bytes, a binary file or a (filename, bytes) tuple, "
        f"got {_describe(value)}",
    )


def _read_file_object(value: object, param: str) -> tuple[bytes, int]:
    """Read a file object from its current position, as the official SDK does."""
    if getattr(value, "closed", False):
        raise ValidationError(param, f"{param}: the file object is closed")
    if isinstance(value, io.TextIOBase) or "b" not in getattr(value, "mode", "b"):
        raise ValidationError(param, f"{param}: the file is open in text mode; open it 'rb'")
    position = 0
    with contextlib.suppress(OSError, ValueError, AttributeError):
        position = value.tell()  # type: ignore[attr-defined]
    try:
        data = value.read()  # type: ignore[attr-defined]
    except UnicodeDecodeError:
        raise ValidationError(
            param, f"{param}: the file gave text, not bytes; open it 'rb'"
        ) from None
    except (OSError, ValueError) as exc:
        raise ValidationError(param, f"{param}: cannot read the file object: {exc}") from None
    if not isinstance(data, (bytes, bytearray)):
        raise ValidationError(
            param, f"{param}: the file object gave {_describe(data)}, not bytes; open it 'rb'"
        )
    return bytes(data), position


def _is_file_tuple(value: object) -> bool:
    """A ``(filename, bytes[, mime])`` tuple, as opposed to a tuple of several images."""
    return (
        isinstance(value, tuple)
        and len(value) in (2, 3)
        and isinstance(value[0], str)
        and isinstance(value[1], (bytes, bytearray, memoryview))
    )


async def load_images(
    value: ImageInput | ImageFile | Sequence[ImageInput | ImageFile], param: str = "image"
) -> tuple[ImageFile, ...]:
    """Load one image or a list of them; several are named ``image[0]``, ``image[1]``, ...

    Raises:
        ValidationError: as :func:`load_image`, or the list is empty.
    """
    if isinstance(value, (list, tuple)) and not _is_file_tuple(value):
        if not value:
            raise ValidationError(param, f"{param}: at least one image is required")
        return tuple([await load_image(item, f"{param}[{i}]") for i, item in enumerate(value)])
    return (await load_image(value, param),)  # type: ignore[arg-type]
