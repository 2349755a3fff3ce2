"""Images made ready for the API, with Pillow (the extra ``asyncimg[images]``).

::

    from asyncimg.prepare import for_model, mask_from_box, square_png

    png = square_png("photo.jpg", size=1024)               # square RGBA PNG under 4 MB
    mask = mask_from_box((1024, 1024), (100, 100, 400, 400))  # transparent inside the box
    ready = for_model("dall-e-2", "photo.jpg", mask=mask)   # ready.image, ready.mask

Every function takes what the client takes as an image (a path, bytes, a binary
file, a ``(filename, bytes[, mime])`` tuple) and a Pillow ``Image``; it applies
the EXIF orientation, uses the first frame of an animation, and decodes every
pixel, so a broken file is refused here rather than by the server. What a model
needs comes from the validation table (:data:`asyncimg._validation.MODEL_RULES`).
The functions block (Pillow works on the calling thread): from async code, run
them with ``anyio.to_thread.run_sync`` or ``asyncio.to_thread``.

Importing this module without Pillow raises ImportError naming the extra.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Literal

import attrs

from ._exceptions import ValidationError
from ._files import ImageFile, ImageInput, pixel_problem, read_image, size_problem, sniff_mime
from ._validation import MODEL_RULES, ModelRules, rules_for

try:
    from PIL import Image, ImageFilter, ImageOps
except ImportError as exc:  # pragma: no cover - tested in a subprocess without Pillow
    raise ImportError(
        "asyncimg.prepare needs Pillow: pip install 'asyncimg[images]'", name=exc.name
    ) from exc

__all__ = [
    "MAX_EDGE",
    "AnyImage",
    "Fit",
    "Prepared",
    "for_model",
    "mask_from_box",
    "mask_from_image",
    "square_png",
]

MAX_EDGE = 4096
"""The largest edge :func:`square_png` makes, in pixels: more
than any model takes (the largest free size is 3840 wide), and a bound on the memory
(an RGBA square of 4096 is 64 MB; of 100000, 40 GB)."""

AnyImage = ImageInput | ImageFile | Image.Image
"""An image input the client takes, or a Pillow ``Image``."""

Fit = Literal["pad", "crop"]
"""``pad``: the whole picture, centred on a square of ``background``; ``crop``: the
centre square, the rest cut off."""

_RESAMPLE = Image.Resampling.LANCZOS
_FITS = ("pad", "crop")
_MIME_OF_FORMAT = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_PILLOW_FORMAT = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
_SIXTEEN_BIT = ("I", "I;16", "I;16L", "I;16B", "I;16N")
_OPAQUE = (0, 0, 0, 255)
_ORIENTATION = 0x0112  # the EXIF tag


@attrs.frozen
class Prepared:
    """An image (and its mask) as a model takes them: pass ``image`` and ``mask`` to the client."""

    image: bytes = attrs.field(repr=lambda d: f"<{len(d)} bytes>")
    mask: bytes | None = attrs.field(repr=lambda d: "None" if d is None else f"<{len(d)} bytes>")
    format: str
    """``png``, ``jpeg`` or ``webp``: the format of ``image`` (a mask is always PNG)."""
    size: tuple[int, int]
    """The width and height of ``image`` (and of ``mask``)."""


# ------------------------------------------------------------------ reading


def _check_positive(param: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError(param, f"{param} must be a positive whole number, not {value!r}")
    return value


def _check_edge(param: str, value: object) -> int:
    """A positive edge of at most :data:`MAX_EDGE`, checked before any pixel is allocated."""
    edge = _check_positive(param, value)
    if edge > MAX_EDGE:
        raise ValidationError(
            param, f"{param} may be at most {MAX_EDGE} pixels (no model takes more), not {edge}"
        )
    return edge


def _header(value: AnyImage, param: str) -> Image.Image:
    """``value`` opened, not yet decoded (a Pillow ``Image`` as it is).

    Raises:
        ValidationError: not an image Pillow reads, or over
            :data:`~asyncimg._files.MAX_IMAGE_PIXELS` by its header.
    """
    if isinstance(value, Image.Image):
        return value
    file = read_image(value, param)
    too_large = pixel_problem(file.data)
    if too_large is not None:
        raise ValidationError(param, f"{param}: {file.filename!r} {too_large}")
    try:
        image = Image.open(io.BytesIO(file.data))
    except Image.DecompressionBombError as exc:
        raise ValidationError(param, f"{param}: {file.filename!r} has too many pixels") from exc
    except OSError as exc:  # UnidentifiedImageError is one
        raise ValidationError(
            param, f"{param}: {file.filename!r} is not an image Pillow can read"
        ) from exc
    too_large = size_problem(*image.size)  # a format whose header we do not read
    if too_large is not None:
        image.close()
        raise ValidationError(param, f"{param}: {file.filename!r} {too_large}")
    return image


def _oriented_size(image: Image.Image) -> tuple[int, int]:
    """The size once the EXIF orientation is applied (5 to 8 turn it a quarter)."""
    width, height = image.size
    turned = image.getexif().get(_ORIENTATION, 1) in (5, 6, 7, 8)
    return (height, width) if turned else (width, height)


def _open(value: AnyImage, param: str, target: int | None = None, fit: str = "pad") -> Image.Image:
    """Decode ``value`` fully: first frame, EXIF orientation applied.

    With ``target`` (the edge of the square to come) a JPEG is decoded at the
    smallest scale libjpeg offers that is still at least that large.
    """
    image = _header(value, param)
    if target is not None and image is not value:  # never change the caller's Image
        width, height = image.size
        scale = target / (max(width, height) if fit == "pad" else min(width, height))
        if scale < 1:
            image.draft(None, (math.ceil(width * scale), math.ceil(height * scale)))
    try:
        image.load()
    except Exception as exc:  # Pillow reports corrupt data with many exception types
        raise ValidationError(
            param, f"{param}: does not decode ({exc or type(exc).__name__})"
        ) from exc
    return ImageOps.exif_transpose(image)


def _rgba(image: Image.Image) -> Image.Image:
    """Any mode as 8-bit RGBA; 16-bit grey is scaled down, not clipped."""
    if image.mode in _SIXTEEN_BIT:
        image = image.convert("I").point(lambda v: v / 257).convert("L")
    return image if image.mode == "RGBA" else image.convert("RGBA")


def _png(image: Image.Image, level: int = 1) -> bytes:
    """PNG bytes; zlib level 1 is 4x faster than Pillow's default 6 and, on photos, as small."""
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=level)
    return out.getvalue()


# ------------------------------------------------------------------ squares


def _square(image: Image.Image, edge: int, fit: str, background: tuple[int, ...]) -> Image.Image:
    if fit == "crop":
        return ImageOps.fit(image, (edge, edge), _RESAMPLE)
    return ImageOps.pad(image, (edge, edge), _RESAMPLE, color=background)


def _check_background(background: object) -> tuple[int, ...]:
    if (
        not isinstance(background, tuple)
        or len(background) not in (3, 4)
        or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255
                   for c in background)
    ):
        raise ValidationError(
            "background", f"background must be (R, G, B) or (R, G, B, A) in 0..255, not "
            f"{background!r}"
        )
    return background if len(background) == 4 else (*background, 255)


def _check_fit(fit: object) -> str:
    if fit not in _FITS:
        raise ValidationError("fit", f"fit must be 'pad' or 'crop', not {fit!r}")
    return str(fit)


def _square_edges() -> tuple[int, ...]:
    """The square edges of every model that needs square inputs (dall-e-2: 256, 512, 1024)."""
    return tuple(
        sorted({e for rules in MODEL_RULES.values() if rules.square_inputs
                for e in rules.square_edges})
    )


def _fitted_square(
    image: AnyImage,
    edge: int,
    fit: str,
    background: tuple[int, ...],
    max_bytes: int,
    smaller: Sequence[int],
    param: str = "image",
) -> tuple[bytes, int]:
    """The PNG and its edge: at ``edge``, else quantized, else at each of ``smaller``."""
    picture = _rgba(_open(image, param, edge, fit))
    tried = []
    for side in (edge, *sorted((e for e in smaller if e < edge), reverse=True)):
        square = _square(picture, side, fit, background)
        png = _png(square)
        if len(png) >= max_bytes:
            png = _png(square, 6)
        if len(png) < max_bytes:
            return png, side
        quantized = _png(square.quantize(256).convert("RGBA"))
        if len(quantized) < max_bytes:
            return quantized, side
        tried.append(f"{side}x{side}: {len(png)} bytes, {len(quantized)} with 256 colours")
    raise ValidationError(
        param,
        f"{param}: no square PNG of it is under {max_bytes} bytes (max_bytes); tried "
        + "; ".join(tried),
    )


def square_png(
    image: AnyImage,
    *,
    size: int = 1024,
    fit: Fit = "pad",
    background: tuple[int, ...] = (0, 0, 0, 0),
    max_bytes: int = 4_000_000,
) -> bytes:
    """A ``size`` x ``size`` RGBA PNG of ``image``, smaller than ``max_bytes``.

    The EXIF orientation is applied and the picture resized with Lanczos;
    ``fit="pad"`` keeps all of it, centred on ``background`` (transparent by
    default), ``fit="crop"`` keeps the centre square. When the PNG is not
    smaller than ``max_bytes`` it is quantized to 256 colours (still RGBA), then
    made at each smaller square size of the models that need squares (512, 256).

    Raises:
        ValidationError: the image cannot be read or decoded (``image``), an
            argument is wrong (named; ``size`` above :data:`MAX_EDGE` too), or no
            step fits under ``max_bytes``
            (the message gives each size tried and its bytes).
    """
    edge = _check_edge("size", size)
    limit = _check_positive("max_bytes", max_bytes)
    png, _side = _fitted_square(
        image, edge, _check_fit(fit), _check_background(background), limit, _square_edges()
    )
    return png


# -------------------------------------------------------------------- masks


def _mask_size(size: object) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if not isinstance(size, tuple) or len(size) != 2:
        raise ValidationError("size", f"size must be (width, height) or one edge, not {size!r}")
    return _check_positive("size", size[0]), _check_positive("size", size[1])


def mask_from_box(
    size: int | tuple[int, int], box: tuple[int, int, int, int], *, feather: float = 0
) -> bytes:
    """An RGBA PNG mask of ``size``: transparent inside ``box`` (the area to edit), opaque outside.

    ``size`` is ``(width, height)`` or one edge of a square; ``box`` is
    ``(x0, y0, x1, y1)`` in pixels, ``x1`` and ``y1`` excluded (as
    ``Image.crop`` reads a box); ``feather`` softens the edge with a Gaussian
    blur of that radius, in pixels.

    Raises:
        ValidationError: ``size`` is not positive, ``box`` is empty or outside
            the image, or ``feather`` is negative.
    """
    width, height = _mask_size(size)
    if (
        not isinstance(box, tuple)
        or len(box) != 4
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in box)
    ):
        raise ValidationError("box", f"box must be (x0, y0, x1, y1) in whole pixels, not {box!r}")
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValidationError(
            "box",
            f"box {box} must have 0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height} "
            f"(inside the {width}x{height} image, not empty)",
        )
    if isinstance(feather, bool) or not isinstance(feather, (int, float)) or not feather >= 0:
        raise ValidationError("feather", f"feather must be a radius >= 0, not {feather!r}")
    alpha = Image.new("L", (width, height), 255)
    alpha.paste(0, box)
    if feather:
        alpha = alpha.filter(ImageFilter.GaussianBlur(feather))
    mask = Image.new("RGBA", (width, height), _OPAQUE)
    mask.putalpha(alpha)
    return _png(mask)


def mask_from_image(image: AnyImage, *, invert: bool = False) -> bytes:
    """A black-and-white picture as an RGBA PNG mask: black marks the area to edit.

    As the API guide does it: the picture in grey becomes the alpha channel, so
    black is transparent (edited) and white opaque (kept); ``invert=True`` for a
    picture where white marks the edit.

    Raises:
        ValidationError: the image cannot be read or decoded.
    """
    grey = _open(image, "image")
    if grey.mode in _SIXTEEN_BIT:
        grey = _rgba(grey)
    grey = grey.convert("L")
    if invert:
        grey = ImageOps.invert(grey)
    mask = grey.convert("RGBA")
    mask.putalpha(grey)
    return _png(mask)


# ---------------------------------------------------------------- per model


def _lossless_or_lossy(
    picture: Image.Image, rules: ModelRules | None
) -> tuple[bytes, str, tuple[int, int]]:
    """PNG if it fits, else the model's lossy format (WebP keeps alpha), halved until it fits."""
    formats = rules.input_formats if rules is not None else tuple(_MIME_OF_FORMAT)
    limit = rules.max_image_bytes if rules is not None else None
    data = _png(picture)
    if "png" in formats and (limit is None or len(data) < limit):
        return data, "png", picture.size
    lossy = next(f for f in ("webp", "jpeg", "png") if f in formats)
    while True:
        out = io.BytesIO()
        converted = picture.convert("RGB") if lossy == "jpeg" else picture
        converted.save(out, _PILLOW_FORMAT[lossy], quality=90)
        data = out.getvalue()
        if limit is None or len(data) < limit or min(picture.size) <= 16:
            return data, lossy, picture.size
        picture = picture.resize((picture.width // 2, picture.height // 2), _RESAMPLE)


def _as_is(file: ImageFile, rules: ModelRules | None) -> str | None:
    """The format of ``file`` when the model takes its bytes unchanged, else None.

    Unchanged means: a format the model takes, under its byte limit, and no
    EXIF orientation to apply.
    """
    mime = sniff_mime(file.data)
    formats = rules.input_formats if rules is not None else tuple(_MIME_OF_FORMAT)
    found = next((f for f, m in _MIME_OF_FORMAT.items() if m == mime), None)
    if found is None or found not in formats:
        return None
    if rules is not None and len(file.data) >= rules.max_image_bytes:
        return None
    with Image.open(io.BytesIO(file.data)) as image:
        if image.getexif().get(_ORIENTATION, 1) != 1:
            return None
    return found


def for_model(
    model: str | None, image: AnyImage, *, mask: AnyImage | None = None, fit: Fit = "pad"
) -> Prepared:
    """``image`` (and ``mask``) as ``model``'s rules in the validation table need them.

    dall-e-2 (square inputs): a square RGBA PNG under its byte limit, at the
    smallest of its square sizes that holds the picture (else the largest), with
    ``fit`` as in :func:`square_png`; the mask gets the same geometry, its
    padding opaque (kept). GPT image models (and a model not in the table): the
    bytes unchanged when their format is taken, they are under the limit and no
    EXIF rotation is needed; otherwise a PNG, or a lossy format the model takes
    when the PNG is too large; the mask a PNG of the same size.

    Raises:
        ValidationError: ``model`` takes no input images (``model``), the
            mask's size differs from the image's (``mask``), or as
            :func:`square_png`.
    """
    rules = rules_for(model)
    if rules is not None and not rules.takes_images:
        raise ValidationError("model", f"model {rules.name!r} takes no input images")
    chosen_fit = _check_fit(fit)
    file = None if isinstance(image, Image.Image) else read_image(image, "image")
    source: AnyImage = image if file is None else file
    size = _oriented_size(_header(source, "image"))
    mask_picture = None if mask is None else _open(mask, "mask")
    if mask_picture is not None and mask_picture.size != size:
        raise ValidationError(
            "mask",
            f"mask is {mask_picture.width}x{mask_picture.height}; it must have the size of "
            f"the image, {size[0]}x{size[1]}",
        )
    if rules is not None and rules.square_inputs:
        edges = rules.square_edges
        edge = next((e for e in edges if e >= max(size)), edges[-1])
        data, side = _fitted_square(
            source, edge, chosen_fit, (0, 0, 0, 0), rules.max_image_bytes, edges
        )
        mask_data = None
        if mask_picture is not None:
            mask_data = _png(_square(_rgba(mask_picture), side, chosen_fit, _OPAQUE))
        return Prepared(data, mask_data, "png", (side, side))
    picture = _open(source, "image")
    kept = None if file is None else _as_is(file, rules)
    if file is not None and kept is not None:
        data, fmt, size = file.data, kept, picture.size
    else:
        rgba = _rgba(picture)
        data, fmt, size = _lossless_or_lossy(
            rgba if _has_alpha(picture) else rgba.convert("RGB"), rules
        )
    mask_data = None
    if mask_picture is not None:
        mask_rgba = _rgba(mask_picture)
        if mask_rgba.size != size:
            mask_rgba = mask_rgba.resize(size, _RESAMPLE)
        mask_data = _png(mask_rgba)
    return Prepared(data, mask_data, fmt, size)


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
