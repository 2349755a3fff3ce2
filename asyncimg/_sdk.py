"""The official SDK's spellings: ``client.images``, raw responses, SDK-shaped timeouts.

Code written for ``openai.AsyncOpenAI().images`` runs on an
:class:`~asyncimg.AsyncImagesClient` after changing the import and the
constructor:

* :class:`AsyncImages` (``client.images``) holds the client's own
  ``generate``/``edit``/``create_variation``, which take the SDK's keywords
  (``prompt=``, ``image=``, ``mask=``, ...): one implementation, one limiter,
  one request path.
* ``client.images.with_raw_response.<call>(...)`` answers a
  :class:`RawAPIResponse`: the HTTP status and headers of the success, a little
  about the request, and ``parse()``.
* :func:`split_timeout` reads a timeout shaped like ``httpx.Timeout`` (or
  ``aiohttp.ClientTimeout``) by duck typing, without importing either.

The blocking client gets the same namespaces by forwarding (``asyncimg._sync``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import attrs

from ._checks import check_seconds
from ._exceptions import ValidationError
from ._models import ImagesResponse

if TYPE_CHECKING:
    from ._client import AsyncImagesClient
    from ._files import ImageFile, ImageInput
    from ._keywords import EditKeywords, GenerateKeywords, Unpack, VariationKeywords
    from ._refs import EditImages
    from ._stream import ImageStream

__all__ = [
    "AsyncImages",
    "AsyncImagesWithRawResponse",
    "PhasedTimeout",
    "RawAPIResponse",
    "RequestInfo",
    "TimeoutLike",
    "TimeoutParts",
    "TotalTimeout",
    "split_timeout",
]


class PhasedTimeout(Protocol):
    """The shape of ``httpx.Timeout``: seconds (or None) per phase."""

    @property
    def connect(self) -> float | None: ...
    @property
    def read(self) -> float | None: ...
    @property
    def write(self) -> float | None: ...


class TotalTimeout(Protocol):
    """The shape of ``aiohttp.ClientTimeout``: a total (and ``sock_connect``)."""

    @property
    def total(self) -> float | None: ...


TimeoutLike: TypeAlias = "float | PhasedTimeout | TotalTimeout | None"
"""Seconds, None (no limit), or an object shaped like ``httpx.Timeout`` /
``aiohttp.ClientTimeout`` (see :func:`split_timeout`)."""

_PHASES = ("connect", "read", "write", "pool")


@attrs.frozen
class TimeoutParts:
    """A timeout read by :func:`split_timeout`."""

    total: float | None
    """Seconds for one attempt (the client's ``timeout``); None: no limit."""
    connect: float | None = None
    """Seconds to open a connection (the client's ``connect_timeout``)."""
    names_connect: bool = False
    """Whether the value named a connect timeout at all (a number does not)."""


def split_timeout(value: object, param: str = "timeout") -> TimeoutParts:
    """A timeout as seconds for one attempt and seconds to connect.

    A number or None is the attempt's timeout as it is. An object with the
    SDK's shape (``httpx.Timeout``: any of ``connect``, ``read``, ``write``,
    ``pool``) gives ``connect`` as the
    connect timeout, and as the attempt's timeout the larger of ``read`` and
    ``write`` (None, no limit, if either is None: httpx's "no limit" for that
    phase); ``pool`` has no equivalent (the client's own concurrency gate
    queues requests) and is ignored. An object with ``total``
    (``aiohttp.ClientTimeout``) gives ``total``, and ``sock_connect`` or
    ``connect`` as the connect timeout.

    Raises:
        ValidationError: the value is neither, or a number in it is not a
            positive number of seconds.
    """
    if value is None or isinstance(value, (int, float)):
        check_seconds(param, value, none_ok=True)
        return TimeoutParts(value)
    if hasattr(value, "total"):
        connect = getattr(value, "sock_connect", None) or getattr(value, "connect", None)
        return TimeoutParts(
            _checked(param, value.total), _checked(f"{param}.connect", connect), True
        )
    if any(hasattr(value, phase) for phase in _PHASES):
        read = _checked(f"{param}.read", getattr(value, "read", None))
        write = _checked(f"{param}.write", getattr(value, "write", None))
        total = None if read is None or write is None else max(read, write)
        return TimeoutParts(
            total, _checked(f"{param}.connect", getattr(value, "connect", None)), True
        )
    raise ValidationError(
        param,
        f"{param} must be seconds, None or a timeout object with connect/read/write/pool "
        f"(httpx.Timeout) or total (aiohttp.ClientTimeout), not {type(value).__name__}",
    )


def _checked(param: str, value: object) -> float | None:
    if value is not None and not isinstance(value, (int, float)):
        raise ValidationError(param, f"{param} must be seconds or None, not {value!r}")
    check_seconds(param, value, none_ok=True)
    return None if value is None else float(value)


@attrs.frozen
class RequestInfo:
    """What a raw response tells of its request (the SDK's ``http_request``)."""

    method: str
    url: str
    """The endpoint's URL, without the query (which may carry a key)."""


@attrs.frozen
class RawAPIResponse:
    """A call's HTTP answer (``client.images.with_raw_response.<call>(...)``).

    ``headers`` are case-insensitive (every value of a repeated name kept);
    ``parse()`` gives what the call itself returns: an
    :class:`~asyncimg.ImagesResponse`, or an :class:`~asyncimg.ImageStream`
    (the events, on the blocking client) for ``stream=True``.
    """

    status_code: int | None
    headers: Mapping[str, str] = attrs.field(repr=False)
    http_request: RequestInfo
    parsed: Any = attrs.field(repr=False)

    @property
    def request_id(self) -> str | None:
        """The server's ``x-request-id``."""
        return self.headers.get("x-request-id")

    @property
    def method(self) -> str:
        """The request's method."""
        return self.http_request.method

    @property
    def url(self) -> str:
        """The request's URL (without its query)."""
        return self.http_request.url

    def parse(self) -> Any:
        """What the call returns (an ImagesResponse, or the stream for ``stream=True``)."""
        return self.parsed


class AsyncImages:
    """``client.images``: the official SDK's ``images`` resource.

    Its ``generate``, ``edit`` and ``create_variation`` are the client's own
    methods (``image`` and ``prompt`` may be passed by keyword, as the SDK
    does): the same keywords, validation, limiter and retries, and ``stream=True``.
    """

    def __init__(self, client: AsyncImagesClient) -> None:
        self._client = client
        self.generate = client.generate
        self.edit = client.edit
        self.create_variation = client.create_variation

    @property
    def with_raw_response(self) -> AsyncImagesWithRawResponse:
        """The same calls, answering a :class:`RawAPIResponse`."""
        return AsyncImagesWithRawResponse(self._client)


class AsyncImagesWithRawResponse:
    """``client.images.with_raw_response``: each call answers a :class:`RawAPIResponse`."""

    def __init__(self, client: AsyncImagesClient) -> None:
        self._client = client

    async def generate(
        self, *, prompt: str, stream: bool | None = None, **kwargs: Unpack[GenerateKeywords]
    ) -> RawAPIResponse:
        """``images.generate(...)`` with its HTTP answer (see :class:`RawAPIResponse`)."""
        result = await self._client.generate(prompt, stream=stream, **kwargs)
        return self._raw("/images/generations", result)

    async def edit(
        self,
        *,
        image: EditImages,
        prompt: str,
        stream: bool | None = None,
        **kwargs: Unpack[EditKeywords],
    ) -> RawAPIResponse:
        """``images.edit(...)`` with its HTTP answer (see :class:`RawAPIResponse`)."""
        result = await self._client.edit(image, prompt, stream=stream, **kwargs)
        return self._raw("/images/edits", result)

    async def create_variation(
        self, *, image: ImageInput | ImageFile, **kwargs: Unpack[VariationKeywords]
    ) -> RawAPIResponse:
        """``images.create_variation(...)`` with its HTTP answer."""
        result = await self._client.create_variation(image, **kwargs)
        return self._raw("/images/variations", result)

    def _raw(self, path: str, result: ImagesResponse | ImageStream) -> RawAPIResponse:
        request = RequestInfo("POST", self._client.endpoint_url(path))
        if not isinstance(result, ImagesResponse):
            return RawAPIResponse(result.status, result.headers, request, result)
        return RawAPIResponse(result.status_code, result.headers, request, result)
