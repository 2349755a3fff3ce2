"""ImageRef: an input image by reference (a URL or an uploaded file id), for JSON edits.

An edit whose image (or one of its images, or its mask) is an :class:`ImageRef`
is sent as ``application/json`` (the spec's ``EditImageBodyJsonParam``) instead
of multipart: ``{"images": [{"image_url": ...} | {"file_id": ...}], "mask": {...}}``.
Local images given in the same call travel inside that JSON as ``data:`` URLs
(:meth:`ImageRef.from_file`). Everything here is pure.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any, Final, TypeAlias
from urllib.parse import urlsplit

import attrs

from ._exceptions import ValidationError
from ._files import ImageFile, ImageInput, _is_file_tuple, load_image, sniff_mime

__all__ = [
    "MAX_IMAGE_URL_LENGTH",
    "EditImages",
    "ImageRef",
    "MaskImage",
    "by_reference",
    "load_ref",
    "load_refs",
]

MAX_IMAGE_URL_LENGTH: Final = 20_971_520
"""The longest ``image_url`` the API takes (the spec's ``maxLength``), data URLs included."""

_KNOWN_MIMES = frozenset({"image/png", "image/jpeg", "image/webp"})

EditImages: TypeAlias = (
    "ImageInput | ImageFile | ImageRef | Sequence[ImageInput | ImageFile | ImageRef]"
)
"""What ``edit`` takes as its image: one image (a local one or a reference) or a list."""
MaskImage: TypeAlias = "ImageInput | ImageFile | ImageRef"
"""What ``edit`` takes as its mask."""


def _short(url: str | None) -> str:
    if url is None or len(url) <= 80:
        return repr(url)
    return repr(f"{url[:60]}...<{len(url)} characters>")


def _url_problem(url: str) -> str | None:
    if len(url) > MAX_IMAGE_URL_LENGTH:
        return (
            f"url is {len(url)} characters; the API takes at most {MAX_IMAGE_URL_LENGTH}"
        )
    if url[:5].lower() == "data:":
        if ";base64," not in url[: url.find(",") + 1]:
            return "url: a data URL must be base64 (data:image/png;base64,...)"
        return None
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return f"url {_short(url)} is neither an http(s) URL nor a data: URL"
    return None


@attrs.frozen
class ImageRef:
    """An input image the server fetches itself: ``ImageRef(url=...)`` or ``ImageRef(file_id=...)``.

    ``url`` is an ``http(s)`` URL or a base64 ``data:`` URL of at most
    20,971,520 characters; ``file_id`` names a file uploaded with the Files API.
    Give exactly one.

    Raises:
        ValidationError: neither or both are given, or the url is refused.
    """

    url: str | None = attrs.field(default=None, kw_only=True, repr=_short)
    file_id: str | None = attrs.field(default=None, kw_only=True)

    def __attrs_post_init__(self) -> None:
        if (self.url is None) == (self.file_id is None):
            raise ValidationError("url", "ImageRef takes exactly one of url= or file_id=")
        if self.url is not None:
            if not isinstance(self.url, str):
                raise ValidationError("url", f"url must be str, not {type(self.url).__name__}")
            problem = _url_problem(self.url)
            if problem is not None:
                raise ValidationError("url", problem)
        elif not isinstance(self.file_id, str) or not self.file_id.strip():
            raise ValidationError("file_id", "file_id must be a non-empty string")

    @classmethod
    def from_file(cls, file: ImageFile, param: str = "image") -> ImageRef:
        """A local image as a ``data:`` URL, to travel inside a JSON edit.

        Raises:
            ValidationError: the bytes are not PNG, JPEG or WebP, or the data URL
                would be longer than the API takes.
        """
        mime = sniff_mime(file.data)
        if mime not in _KNOWN_MIMES:
            raise ValidationError(
                param, f"{param}: {file.filename!r} is not a PNG, JPEG or WebP image"
            )
        prefix = f"data:{mime};base64,"
        length = len(prefix) + 4 * ((len(file.data) + 2) // 3)
        if length > MAX_IMAGE_URL_LENGTH:
            raise ValidationError(
                param,
                f"{param}: {file.filename!r} is {len(file.data)} bytes; as a data URL in a "
                f"JSON edit it would be {length} characters, over the {MAX_IMAGE_URL_LENGTH} "
                "the API takes (upload it without ImageRefs, or with the Files API)",
            )
        return cls(url=prefix + base64.b64encode(file.data).decode("ascii"))

    @classmethod
    def from_json(cls, value: object, param: str) -> ImageRef:
        """Read ``{"image_url": ...}`` or ``{"file_id": ...}`` as a server receives it.

        Raises:
            ValidationError: the value is not such an object (``param`` names it).
        """
        if not isinstance(value, Mapping):
            raise ValidationError(param, f"{param} must be an object with image_url or file_id")
        unknown = set(value) - {"image_url", "file_id"}
        if unknown:
            name = sorted(unknown)[0]
            raise ValidationError(f"{param}.{name}", f"Unknown parameter: '{param}.{name}'.")
        try:
            return cls(url=value.get("image_url"), file_id=value.get("file_id"))
        except ValidationError as exc:
            raise ValidationError(param, f"{param}: {exc.message}") from None

    def to_json(self) -> dict[str, Any]:
        """The wire form: ``{"image_url": url}`` or ``{"file_id": id}``."""
        if self.url is not None:
            return {"image_url": self.url}
        return {"file_id": self.file_id}


def by_reference(image: object, mask: object = None) -> bool:
    """Whether an edit is a JSON edit: its image, one of its images, or its mask is an ImageRef."""
    if isinstance(image, (list, tuple)) and any(isinstance(item, ImageRef) for item in image):
        return True
    return isinstance(image, ImageRef) or isinstance(mask, ImageRef)


async def load_refs(value: EditImages, param: str = "image") -> tuple[ImageRef, ...]:
    """One image or a list of them as references; local images become ``data:`` URLs.

    Raises:
        ValidationError: as :func:`~asyncimg._files.load_image`, or as
            :meth:`ImageRef.from_file` for a local image.
    """
    if isinstance(value, (list, tuple)) and not _is_file_tuple(value):
        if not value:
            raise ValidationError(param, f"{param}: at least one image is required")
        return tuple([await load_ref(item, f"{param}[{i}]") for i, item in enumerate(value)])
    return (await load_ref(value, param),)  # type: ignore[arg-type]


async def load_ref(value: MaskImage, param: str) -> ImageRef:
    """One image (a mask) as a reference; a local one becomes a ``data:`` URL.

    Raises:
        ValidationError: as :func:`~asyncimg._files.load_image` or :meth:`ImageRef.from_file`.
    """
    if isinstance(value, ImageRef):
        return value
    return ImageRef.from_file(await load_image(value, param), param)
