"""The emulator's JSON edits: image references resolved as the API resolves them.

An edit sent as ``application/json`` names its images by reference
(``{"image_url": ...}`` or ``{"file_id": ...}``). :class:`RefResolver` turns
each into bytes: a ``data:`` URL is decoded; a URL of the emulator's own blob
store is read from it (an expired or unknown one cannot be downloaded); any
other URL cannot be fetched (the emulator has no network) and is answered as
the API answers a URL it cannot download; a ``file_id`` must name a file
uploaded to the emulator's Files API (``POST /v1/files``, or
``Emulator.add_file``), else it is the API's unknown-file error.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable

import attrs

from .._files import ImageFile, sniff_mime
from .._refs import ImageRef

__all__ = ["RefError", "RefResolver"]

_IMAGE_MIMES = frozenset({"image/png", "image/jpeg", "image/webp"})


@attrs.frozen
class RefError(Exception):
    """Why a reference cannot be used: the API's error fields (a 400)."""

    message: str
    param: str
    code: str


def _shown(url: str) -> str:
    return url if len(url) <= 100 else f"{url[:80]}..."


@attrs.frozen
class RefResolver:
    """How each reference is looked up.

    ``own_blob(url)`` gives the bytes of one of the emulator's url results,
    ``b""`` for one of its urls that is expired or unknown, and None for a URL
    that is not the emulator's; ``uploaded(file_id)`` the bytes of an uploaded
    file, or None.
    """

    own_blob: Callable[[str], bytes | None]
    uploaded: Callable[[str], bytes | None]

    def resolve(self, ref: ImageRef, param: str) -> ImageFile:
        """The image a reference names.

        Raises:
            RefError: it cannot be fetched, decoded, found, or is not an image.
        """
        if ref.file_id is not None:
            data = self.uploaded(ref.file_id)
            if data is None:
                raise RefError(
                    f"No such File object: {ref.file_id}", f"{param}.file_id", "invalid_file_id"
                )
            return self._checked(ImageFile.from_bytes(data), param, f"file {ref.file_id}")
        url = ref.url or ""
        if url[:5].lower() == "data:":
            payload = url.partition(",")[2]
            try:
                data = base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError):
                raise RefError(
                    f"Invalid base64 in the data URL of {param}.",
                    f"{param}.image_url",
                    "invalid_image_url",
                ) from None
            return self._checked(ImageFile.from_bytes(data), param, "the data URL")
        blob = self.own_blob(url)
        if not blob:
            raise RefError(
                f"Error while downloading {_shown(url)}.", f"{param}.image_url", "invalid_image_url"
            )
        return self._checked(ImageFile.from_bytes(blob), param, _shown(url))

    @staticmethod
    def _checked(file: ImageFile, param: str, what: str) -> ImageFile:
        if sniff_mime(file.data) not in _IMAGE_MIMES:
            raise RefError(
                f"Invalid image file or mode for {param} ({what}): supported formats are "
                "'image/jpeg', 'image/png' and 'image/webp'.",
                param,
                "invalid_image_format",
            )
        return file
