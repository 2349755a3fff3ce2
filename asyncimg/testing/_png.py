"""A small pure-Python PNG encoder, and the emulator's deterministic pictures.

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

__all__ = ["MAX_PIXELS", "b64_png", "encode_png", "make_png"]

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
