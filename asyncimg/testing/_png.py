"""A small pure-Python PNG encoder, and the emulator's deterministic pictures
(animated GIFs and SVGs too, for ``output_format`` gif and svg).

Pictures are a few vertical bands whose colours blend from top to bottom; the
colours come from a SHA-256 of a seed (the prompt and the image's index), so
the same seed and size always give the same bytes. Rows are built by bytes
multiplication and repeated rows are shared, never pixel by pixel, so a
1024x1024 image costs a few milliseconds; encoded images are kept in an LRU
cache so that big batches with repeated prompts cost nothing.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import struct
import zlib
from xml.sax.saxutils import escape

__all__ = ["MAX_PIXELS", "b64_png", "encode_png", "make_gif", "make_png", "make_svg"]

MAX_PIXELS = 4096 * 4096
"""The largest picture :func:`make_png` draws (width times height)."""

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_LEVELS = 64  # distinct rows per band: the vertical gradient is quantised


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def encode_png(width: int, height: int, rows: list[bytes], *, alpha: bool = False) -> bytes:
    """Encode 8-bit RGB (or RGBA when ``alpha``) rows, each ``width`` pixels, as a PNG.

    Raises:
        ValueError: the size is not positive or the rows do not match it.
    """
    channels = 4 if alpha else 3
    if width <= 0 or height <= 0:
        raise ValueError(f"a PNG needs a positive size, not {width}x{height}")
    if len(rows) != height or any(len(row) != width * channels for row in rows):
        raise ValueError(f"rows do not make a {width}x{height} image")
    colour_type = 6 if alpha else 2
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    # Filter type 0 (None) before every row; identical rows are the same object.
    raw = b"\x00" + b"\x00".join(rows)
    return b"".join(
        (
            _SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(raw, 1)),
            _chunk(b"IEND", b""),
        )
    )


def _mix(a: int, b: int, t: float) -> int:
    return int(a + (b - a) * t) & 0xFF


@functools.lru_cache(maxsize=256)
def make_png(width: int, height: int, seed: str = "", *, alpha: bool = False) -> bytes:
    """A deterministic ``width`` x ``height`` PNG for ``seed`` (cached, LRU of 256).

    With ``alpha`` the image is RGBA and its first band is fully transparent
    (handy as an edit input that needs transparency).

    Raises:
        ValueError: the size is not positive or larger than :data:`MAX_PIXELS`.
    """
    if width <= 0 or height <= 0 or width * height > MAX_PIXELS:
        raise ValueError(f"cannot draw a {width}x{height} image")
    digest = hashlib.sha256(seed.encode("utf-8")).digest()
    top = digest[0:3]
    bottom = digest[3:6]
    n_bands = min(width, 3 + digest[6] % 6)
    edges = [width * k // n_bands for k in range(n_bands + 1)]
    shifts = digest[7 : 7 + n_bands * 3]
    rows_by_level: dict[int, bytes] = {}
    rows: list[bytes] = []
    for y in range(height):
        level = y * _LEVELS // height
        row = rows_by_level.get(level)
        if row is None:
            t = level / (_LEVELS - 1)
            parts = []
            for k in range(n_bands):
                pixel = bytes(_mix(top[c], bottom[c], t) ^ shifts[3 * k + c] for c in range(3))
                if alpha:
                    pixel += b"\x00" if k == 0 else b"\xff"
                parts.append(pixel * (edges[k + 1] - edges[k]))
            row = rows_by_level[level] = b"".join(parts)
        rows.append(row)
    return encode_png(width, height, rows, alpha=alpha)


@functools.lru_cache(maxsize=256)
def b64_png(width: int, height: int, seed: str = "", *, alpha: bool = False) -> str:
    """:func:`make_png` as base64 text (cached too).

    Raises:
        ValueError: as :func:`make_png`.
    """
    return base64.b64encode(make_png(width, height, seed, alpha=alpha)).decode("ascii")


_GIF_MIN_CODE_SIZE = 4  # a 16-colour table: one colour per frame, at most 16 frames
_GIF_MAX_CODE = 4096


def _lzw_run(pixel: int, count: int) -> bytes:
    """The GIF LZW data of ``count`` pixels all of colour ``pixel``, in sub-blocks.

    A run needs no dictionary search: greedy LZW emits runs of length 1, 2, 3, ...
    (each emission adds the run one longer), so a frame of a million pixels is
    about 1,400 codes.
    """
    clear = 1 << _GIF_MIN_CODE_SIZE
    width = _GIF_MIN_CODE_SIZE + 1
    next_code = clear + 2
    codes_of_run = {1: pixel}  # run length -> code
    longest = 1
    bits = acc = 0
    out = bytearray()

    def emit(code: int) -> None:
        nonlocal acc, bits
        acc |= code << bits
        bits += width
        while bits >= 8:
            out.append(acc & 0xFF)
            acc >>= 8
            bits -= 8

    emit(clear)
    left = count
    while left:
        take = min(longest, left)
        emit(codes_of_run[take])
        left -= take
        if left and next_code < _GIF_MAX_CODE:
            longest = take + 1
            codes_of_run[longest] = next_code
            next_code += 1
            if next_code > (1 << width) and width < 12:
                width += 1
    emit(clear + 1)  # end of information
    if bits:
        out.append(acc & 0xFF)
    blocks = bytearray([_GIF_MIN_CODE_SIZE])
    for start in range(0, len(out), 255):
        piece = out[start : start + 255]
        blocks.append(len(piece))
        blocks += piece
    blocks.append(0)
    return bytes(blocks)


def make_gif(
    width: int, height: int, seed: str = "", *, frames: int = 9, duration_ms: int = 200
) -> bytes:
    """A deterministic animated GIF: ``frames`` frames of ``width`` x ``height``, each
    one colour from ``seed``, shown ``duration_ms`` each (rounded to 10 ms), looping.

    Raises:
        ValueError: the size is not positive or larger than :data:`MAX_PIXELS`, or
            ``frames`` is not 1 to 16.
    """
    if width <= 0 or height <= 0 or width * height > MAX_PIXELS or width > 0xFFFF:
        raise ValueError(f"cannot draw a {width}x{height} image")
    if not 1 <= frames <= 16:
        raise ValueError(f"a GIF of the emulator has 1 to 16 frames, not {frames}")
    digest = hashlib.sha256(seed.encode("utf-8")).digest()
    palette = bytes(digest[(3 * i) % 30 + k] ^ (i * 37 & 0xFF) for i in range(16) for k in range(3))
    delay = min(0xFFFF, round(duration_ms / 10))
    parts = [
        b"GIF89a",
        struct.pack("<HHBBB", width, height, 0xF0 | (_GIF_MIN_CODE_SIZE - 1), 0, 0),
        palette,
        b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00",  # loop forever
    ]
    for index in range(frames):
        parts.append(b"\x21\xf9\x04" + struct.pack("<BHBB", 0x04, delay, 0, 0))
        parts.append(b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0))
        parts.append(_lzw_run(index, width * height))
    parts.append(b"\x3b")
    return b"".join(parts)


def make_svg(width: int, height: int, seed: str = "") -> bytes:
    """A small, valid, deterministic SVG of ``width`` x ``height`` for ``seed``."""
    digest = hashlib.sha256(seed.encode("utf-8")).hexdigest()
    title = escape(seed[:200])
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">'
        f"<title>{title}</title>"
        f'<rect width="{width}" height="{height}" fill="#{digest[:6]}"/>'
        f'<circle cx="{width // 2}" cy="{height // 2}" r="{min(width, height) // 3}" '
        f'fill="#{digest[6:12]}"/>'
        f"</svg>\n"
    ).encode()
