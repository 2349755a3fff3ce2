"""Real pictures for the tests, made with Pillow in the test (nothing shipped)."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

from PIL import Image

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)
CORNERS = (RED, GREEN, BLUE, WHITE)
"""The colours of :func:`quadrants`: top left, top right, bottom left, bottom right."""

# Hides Pillow from a Python started with this directory on PYTHONPATH.
BLOCKER = '''
import sys

class _NoPillow:
    attempts = 0

    def find_spec(self, name, path=None, target=None):
        if name == "PIL" or name.startswith("PIL."):
            _NoPillow.attempts += 1
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NoPillow())
'''


def without_pillow(directory: Path) -> dict[str, str]:
    """Environment variables for a subprocess in which ``import PIL`` fails."""
    (directory / "sitecustomize.py").write_text(BLOCKER)
    return {"PYTHONPATH": str(directory)}


def python_without_pillow(code: str, directory: Path) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh Python that cannot import Pillow (``directory`` holds the blocker).

    Fails the test when the code exits non-zero; returns the run for its output.
    """
    done = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **without_pillow(directory)},
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    return done


def encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def quadrants(width: int = 80, height: int = 60, mode: str = "RGB") -> Image.Image:
    """Four flat quadrants, one colour each (:data:`CORNERS`), so orientation shows."""
    image = Image.new("RGB", (width, height))
    w, h = width // 2, height // 2
    boxes = ((0, 0, w, h), (w, 0, width, h), (0, h, w, height), (w, h, width, height))
    for colour, box in zip(CORNERS, boxes, strict=True):
        image.paste(colour, box)
    return image.convert(mode)


def photo(width: int, height: int) -> Image.Image:
    """A photo-like RGB picture: smooth gradients with sensor-like noise."""
    ramp = Image.linear_gradient("L").resize((width, height))
    noise = Image.effect_noise((width, height), 40)
    return Image.merge("RGB", (ramp, noise, ramp.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))


def noise(edge: int, sigma: int = 100) -> Image.Image:
    """Incompressible RGB noise: the worst case for PNG size."""
    return Image.merge("RGB", [Image.effect_noise((edge, edge), sigma) for _ in range(3)])


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png16_rgba(width: int, height: int, pixel: tuple[int, int, int, int]) -> bytes:
    """A 16-bit-per-channel RGBA PNG of one colour (Pillow cannot write these)."""
    row = b"\x00" + struct.pack(">4H", *pixel) * width
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 6, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


def corner_colours(image: Image.Image) -> tuple[tuple[int, ...], ...]:
    """The colours near the four corners, each snapped to the nearest of :data:`CORNERS`."""
    rgb = image.convert("RGB")
    w, h = rgb.size
    points = ((w // 8, h // 8), (w - 1 - w // 8, h // 8), (w // 8, h - 1 - h // 8),
              (w - 1 - w // 8, h - 1 - h // 8))

    def nearest(colour: tuple[int, ...]) -> tuple[int, ...]:
        seen = colour[:3]
        return min(CORNERS, key=lambda c: sum((a - b) ** 2 for a, b in zip(c, seen, strict=True)))

    return tuple(nearest(rgb.getpixel(p)) for p in points)  # type: ignore[arg-type]


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image
