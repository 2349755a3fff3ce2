"""The decode check of uploads: with Pillow installed, an image must decode fully.

Pillow is optional (``asyncimg[images]``). Without it this check is skipped at no
cost (one failed import per process, remembered); the structural checks that
need no Pillow live in :mod:`asyncimg._files` and :mod:`asyncimg._validation`.
"""

from __future__ import annotations

import functools
import io
from types import ModuleType

__all__ = ["decode_problem"]


@functools.cache
def _pillow() -> ModuleType | None:
    try:
        from PIL import Image
    except ImportError:
        return None
    return Image


def decode_problem(data: bytes) -> str | None:
    """Why ``data`` does not decode as an image, or None (also when Pillow is not installed).

    Every pixel is decoded, so a truncated file or corrupt image data is found,
    not only a bad header.
    """
    image_module = _pillow()
    if image_module is None:
        return None
    try:
        with image_module.open(io.BytesIO(data)) as image:
            image.load()
    except image_module.DecompressionBombError:
        return "has too many pixels to decode"
    except Exception as exc:  # Pillow reports corrupt data with many exception types
        return f"does not decode ({exc or type(exc).__name__})"
    return None
