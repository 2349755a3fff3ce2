"""The blob store: where ``url`` results are downloaded.

Like the API's blob store it is another origin (the emulator's second port,
``Emulator.blob_base_url``) and needs no key: ``GET /blobs/<name>.png?se=...&sp=r&sig=...``
answers the image. A url stays downloadable ``url_ttl`` seconds (the API's 60
minutes) by the emulator's clock; after that it answers 403 with an Azure-like
XML ``AuthenticationFailed`` error, and an unknown one 404 ``BlobNotFound``.
Only the latest ``max_urls`` urls are kept (the oldest go first, then answer
404), each as its :class:`Recipe`, not its bytes: memory stays flat however long
the emulator runs. A JSON edit may name one of its url results by
``image_url`` (:meth:`BlobStore.own`).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import secrets
from collections.abc import Callable

from .._files import sniff_mime
from ._errors import Answer
from ._pictures import Recipe

__all__ = ["BlobStore"]

_BLOB_ERROR = (
    '<?xml version="1.0" encoding="utf-8"?>'
    "<Error><Code>{code}</Code><Message>{msg}</Message></Error>"
)


class BlobStore:
    """The url results: stored by :meth:`store`, downloaded through :meth:`answer`.

    ``origin`` gives the store's base url (``http://HOST:PORT``) when it is needed.
    """

    def __init__(self, origin: Callable[[], str]) -> None:
        self._origin = origin
        # Insertion-ordered, so the oldest url is the first to go.
        self._blobs: dict[str, tuple[Recipe, float]] = {}

    def __len__(self) -> int:
        return len(self._blobs)

    def clear(self) -> None:
        """Forget every url."""
        self._blobs.clear()

    def store(self, recipe: Recipe, now: float, *, ttl: float, keep: int) -> str:
        """Keep ``recipe`` downloadable ``ttl`` seconds from ``now``; its signed-looking url.

        Only the latest ``keep`` urls stay; older ones are forgotten.
        """
        name = f"img-{secrets.token_urlsafe(18)}.png"
        # Keep the recipe, not the bytes: a long run of url results stays small in memory.
        self._blobs[name] = (recipe, now + ttl)
        while len(self._blobs) > keep:
            del self._blobs[next(iter(self._blobs))]
        expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=ttl)
        se = expiry.strftime("%Y-%m-%dT%H%%3A%M%%3A%SZ")
        sig = base64.urlsafe_b64encode(hashlib.sha256(name.encode()).digest()[:24]).decode()
        return f"{self._origin()}/blobs/{name}?se={se}&sp=r&sig={sig}"

    def answer(self, name: str, now: float) -> Answer:
        """The answer to ``GET /blobs/<name>`` at ``now``: the image, 403 or 404."""
        stored = self._blobs.get(name)
        xml = _BLOB_ERROR
        if stored is None:
            body = xml.format(code="BlobNotFound", msg="The specified blob does not exist.")
            return Answer(404, body.encode(), {}, "application/xml")
        recipe, expires = stored
        if now >= expires:
            body = xml.format(
                code="AuthenticationFailed",
                msg="Server failed to authenticate the request. Signed expiry time has passed.",
            )
            return Answer(403, body.encode(), {}, "application/xml")
        data = recipe.render()
        return Answer(200, data, {}, sniff_mime(data) or "image/png")

    def own(self, url: str, now: float) -> bytes | None:
        """A url result's bytes for a JSON edit; b"" when expired or unknown; None if not ours."""
        prefix = f"{self._origin()}/blobs/"
        if not url.startswith(prefix):
            return None
        answer = self.answer(url[len(prefix) :].split("?", 1)[0], now)
        return answer.body if answer.status == 200 else b""
