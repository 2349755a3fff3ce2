"""The decode check of uploads: with Pillow installed, an image must decode fully.

Pillow is optional (``asyncimg[images]``). Without it this check is skipped at no
cost (one failed import per process, remembered); the structural checks that
need no Pillow live in :mod:`asyncimg._files` and :mod:`asyncimg._validation`.
"""

from __future__ import annotations

import functools
import io
from types import ModuleType

from ._files import pixel_problem

__all__ = ["decode_problem", "pillow"]


@functools.cache
def pillow() -> ModuleType | None:
    """``PIL.Image``, or None when Pillow is not installed (one import attempt per process)."""
    try:
        from PIL import Image
    except ImportError:
        return None
    return Image


def decode_problem(data: bytes) -> str | None:
    """Why ``data`` does not decode as an image, or None (also when Pillow is not installed;
    the pixel ceiling is checked then too).

    All the image data is decoded, so a truncated file or corrupt image data is
    found, not only a bad header. A JPEG is decoded at 1/8 scale: libjpeg still
    reads every coefficient, in half the time (12 MP: 60 ms instead of 105 ms).
    An image whose header says it has more than
    :data:`~asyncimg._files.MAX_IMAGE_PIXELS` pixels is refused undecoded.
    """
    too_large = pixel_problem(data)  # with or without Pillow: read from the header
    if too_large is not None:
        return too_large
    image_module = pillow()
    if image_module is None:
        return None
    try:
        with image_module.open(io.BytesIO(data)) as image:
            image.draft(None, (1, 1))  # JPEG only: the smallest scale that covers 1x1
            image.load()
    except image_module.DecompressionBombError:
        return "has too many pixels to decode"
    except Exception as exc:  # Pillow reports corrupt data with many exception types
        return f"does not decode ({exc or type(exc).__name__})"
    return None
