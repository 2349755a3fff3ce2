"""What the emulator draws for each result image, as a recipe it can keep.

With Pillow installed (the extra ``asyncimg[images]``):

* ``output_format`` ``jpeg`` and ``webp`` give real JPEG and WebP bytes, with
  ``output_compression`` as their quality (the API's default, 100, when not given);
* an edit keeps the input's pixels where the mask is opaque and paints the
  generated picture where it is transparent (the input's own transparent area
  when there is no mask), blending where the alpha is in between, so a test can
  see that its mask was honoured;
* a variation is the input mirrored left to right, with a quarter of the
  generated picture blended in (a different one for each index);
* :func:`partial_frame` renders a streaming partial image as an earlier, rougher
  (pixelated) version of the final one, in its format.

``output_format`` ``gif`` is an animated GIF of ``frame_count`` one-colour frames
and ``svg`` a small SVG (:func:`~asyncimg.testing._png.make_gif`, ``make_svg``),
with or without Pillow.

Without Pillow every other result is the PNG of :func:`asyncimg.testing._png.make_png`
(so ``jpeg`` and ``webp`` requests get PNG bytes, an edit ignores its image and
mask, a variation its input).
A PNG generation never needs Pillow: its bytes are the same either way.
"""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING, Any

import attrs

from .._decode import pillow
from ._png import b64_png, make_gif, make_png, make_svg

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["Recipe", "partial_frame"]

_PILLOW_FORMAT = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
_DEFAULT_QUALITY = 100  # the API's default output_compression
_VARIATION_MIX = 0.25
_ROUGHEST_BLOCK = 64  # pixels per block in the first partial image


def _bytes_repr(data: bytes | None) -> str:
    return "None" if data is None else f"<{len(data)} bytes>"


@attrs.frozen
class Recipe:
    """One result image: its size, seed and format, and the inputs of an edit or variation.

    Url results keep the recipe, not the bytes, and draw it when downloaded.
    """

    width: int
    height: int
    seed: str
    alpha: bool = False
    """RGBA with a transparent band (a transparent background was asked for)."""
    output_format: str = "png"
    compression: int | None = None
    image: bytes | None = attrs.field(default=None, repr=_bytes_repr)
    """The (first) input image of an edit or a variation."""
    mask: bytes | None = attrs.field(default=None, repr=_bytes_repr)
    variation: bool = False
    frame_count: int | None = None
    """Frames of a GIF (9 when not asked)."""
    frame_duration_ms: int | None = None
    """Milliseconds per GIF frame (200 when not asked)."""

    @property
    def plain(self) -> bool:
        """Whether the picture is the PNG of :func:`make_png` (no Pillow needed)."""
        return (self.output_format == "png" and self.image is None) or pillow() is None

    def render(self) -> bytes:
        """The image's bytes."""
        if self.output_format == "gif":
            return make_gif(
                self.width, self.height, self.seed,
                frames=self.frame_count or 9, duration_ms=self.frame_duration_ms or 200,
            )
        if self.output_format == "svg":
            return make_svg(self.width, self.height, self.seed)
        if self.plain:
            return make_png(self.width, self.height, self.seed, alpha=self.alpha)
        return _encode(self._picture(), self.output_format, self.compression)

    def b64(self) -> str:
        """The image's bytes as base64 text."""
        if self.plain and self.output_format not in ("gif", "svg"):
            return b64_png(self.width, self.height, self.seed, alpha=self.alpha)
        return base64.b64encode(self.render()).decode("ascii")

    def _picture(self) -> Image.Image:
        from PIL import Image

        painted = Image.open(
            io.BytesIO(make_png(self.width, self.height, self.seed, alpha=self.alpha))
        ).convert("RGBA")
        if self.image is None:
            return painted
        size = (self.width, self.height)
        source = _fitted(self.image, size)
        if self.variation:
            mirrored = source.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            return Image.blend(mirrored, painted, _VARIATION_MIX)
        keep = (source if self.mask is None else _fitted(self.mask, size)).getchannel("A")
        return Image.composite(source, painted, keep)


def _fitted(data: bytes, size: tuple[int, int]) -> Image.Image:
    from PIL import Image

    picture = Image.open(io.BytesIO(data)).convert("RGBA")
    if picture.size != size:
        picture = picture.resize(size, Image.Resampling.LANCZOS)
    return picture


def _encode(picture: Image.Image, output_format: str, compression: int | None) -> bytes:
    options: dict[str, Any] = {}
    if output_format == "png":
        options["compress_level"] = 1
    else:
        options["quality"] = _DEFAULT_QUALITY if compression is None else compression
        if output_format == "jpeg":
            picture = picture.convert("RGB")
    out = io.BytesIO()
    picture.save(out, _PILLOW_FORMAT[output_format], **options)
    return out.getvalue()


def partial_frame(final: bytes, index: int) -> bytes:
    """Partial image ``index`` (0-based) of a streamed image: ``final``, pixelated (Pillow).

    The first is the roughest (blocks of 64 pixels), each next one finer by half
    (down to 2 pixels); each is in the format of ``final`` (PNG, JPEG or WebP).
    Without Pillow the streaming module draws its own (``_streaming.partial_png``).
    """
    from PIL import Image

    with Image.open(io.BytesIO(final)) as picture:
        fmt = (picture.format or "PNG").lower()
        picture.load()
        block = max(2, _ROUGHEST_BLOCK >> index)
        small = (max(1, picture.width // block), max(1, picture.height // block))
        rough = picture.resize(small, Image.Resampling.BOX).resize(
            picture.size, Image.Resampling.NEAREST
        )
    return _encode(rough, fmt, None)
