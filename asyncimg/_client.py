"""AsyncImagesClient: generations, edits and variations, downloads and saving.

A call flows: build and validate the parameters (pure), take a concurrency
slot, take its images from the rate limiter, send, retry what is worth
retrying, parse. See ``DESIGN.md`` for the whole picture.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import functools
import inspect
import logging
import os
import platform
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar, overload
from urllib.parse import urlsplit

import attrs

from ._azure import azure_options
from ._body import Body, encode_form, encode_json
from ._callstats import CallStats
from ._checks import check_header_value, check_int, check_seconds
from ._config import (
    ProxyConfig,
    QueryValue,
    SSLOption,
    check_headers,
    check_query,
    merge_headers,
    redact_url,
    request_url,
    split_base_url,
    ssl_context,
    with_query,
    without_query,
)
from ._exceptions import (
    NO_KEY_NOTE,
    APIError,
    APIResponseValidationError,
    NotFoundError,
    ValidationError,
)
from ._files import ImageFile, ImageInput, file_extension, load_image, load_images
from ._fs import safe_stem, write_atomic, write_new
from ._gate import Gate
from ._keywords import EditKeywords, GenerateKeywords, Unpack, VariationKeywords
from ._limiter import Limiter, Permit, RateLimit, RateLimiter, RatePermit, note_answer
from ._models import Image, ImagesResponse
from ._offloop import OFF_LOOP_BYTES, blocking, off_loop, off_loop_if_large
from ._otel import CallInfo, Target, log_fields, trace_headers, watch
from ._otel import start as start_span
from ._params import EditParams, GenerateParams, JsonEditParams, Params, VariationParams
from ._refs import EditImages, by_reference, load_ref, load_refs
from ._retry import Decision, RetryPolicy, decide
from ._sdk import AsyncImages, TimeoutLike, split_timeout
from ._validation import retired_note, sends_response_format
from ._version import __version__

if TYPE_CHECKING:
    import aiohttp

    from ._batch import BatchItem, BatchIterator, PromptSource
    from ._cost import Budget, PriceTable
    from ._stream import CompletedImageEvent, ImageStream, PartialImageEvent
    from ._transport import OnWire, RawResponse

__all__ = ["DEFAULT_RATE_LIMIT", "AsyncImagesClient"]

logger = logging.getLogger("asyncimg")

DEFAULT_BASE_URL: Final = "https://api.openai.com/v1"
DEFAULT_RATE_LIMIT: Final = RateLimit(images=50, per=60.0)
"""The API's default for image models: 50 images per minute."""
DEFAULT_MAX_RESPONSE_BYTES: Final = 512 * 1024 * 1024
DEFAULT_CONNECT_TIMEOUT: Final = 5.0
"""Seconds to open a connection, as the official SDK: a host that drops packets
costs seconds, not a whole attempt's timeout."""

_T = TypeVar("_T")
_C = TypeVar("_C", bound="AsyncImagesClient")


class _Unset:
    """The type of :data:`_UNSET`: an argument left out (None means "no limit")."""


_UNSET: Final = _Unset()

TokenProvider = Callable[[], str | Awaitable[str]]
"""A sync or async callable returning a bearer token (an Entra ID token for Azure)."""

_CONTROL = re.compile(r"[\x00-\x20\x7f]")  # no space or control character in a URL


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


class AsyncImagesClient:
    """An async client for the OpenAI Images API and servers that speak it.

    Use it as ``async with AsyncImagesClient() as client:`` (or call
    :meth:`aclose`). Its aiohttp session is created on the running loop when
    first needed, so the client may be constructed anywhere.

    Args:
        api_key: default ``$OPENAI_API_KEY``. Required for the official API;
            a custom ``base_url`` may go without one.
        base_url: default ``$OPENAI_BASE_URL``, else ``https://api.openai.com/v1``.
        organization: ``$OPENAI_ORG_ID`` by default, sent as ``OpenAI-Organization``.
        project: ``$OPENAI_PROJECT_ID`` by default, sent as ``OpenAI-Project``.
        model: the model for every call that names none; None lets the server choose.
        rate_limit: images per window; None switches the limiter off.
        limiter: a limiter to share between clients (overrides ``rate_limit``).
        max_concurrency: a hard ceiling on requests in flight. None (the default)
            sizes it from the rate limit and the answer times seen (Little's law:
            ``images * (floor(latency / window) + 2)``, 16 to 512; 16 without a
            rate), so the limiter, not the ceiling, sets the pace.
        max_retries: retries after the first attempt (per call: ``max_retries=``).
        timeout: seconds for one attempt (per call: ``timeout=``); None: no limit.
            An ``httpx.Timeout``-shaped object is read too (its ``connect``
            sets ``connect_timeout``; see :func:`~asyncimg._sdk.split_timeout`).
        connect_timeout: seconds to open a connection, within ``timeout``
            (default 5, as the official SDK); None: no limit of its own.
        max_response_bytes: a larger response body is refused unread.
        default_headers: headers sent with every request (they replace the
            client's own of the same name); per call: ``extra_headers=``.
        default_query: query parameters added to every request's URL (a
            ``base_url`` may carry its own query too); per call: ``extra_query=``.
        token_provider: a sync or async callable returning a bearer token,
            asked again for every request (``Authorization: Bearer``; instead of
            ``api_key``); a sync one runs in a worker thread.
        proxy: an ``http(s)://[user:password@]host:port`` proxy for every request;
            without it ``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY`` and
            ``NO_PROXY`` are honoured, as read when the client is made.
        ssl: an ``ssl.SSLContext``, or the path of a CA bundle (file or
            directory) to trust instead of the system's; by default the system's
            CAs, or ``$SSL_CERT_FILE``/``$SSL_CERT_DIR`` when set.
        http_session: your own ``aiohttp.ClientSession`` to send through (its
            connector, proxy and TLS settings are then yours; made on the loop
            that runs this async client); the client never closes it. Not with
            ``proxy``/``ssl``.
        propagate_trace: send the current OpenTelemetry context as W3C
            ``traceparent``/``tracestate`` headers (with ``asyncimg[otel]``; the API
            does not need them, a gateway of yours might). Every call is traced
            with opentelemetry-api installed, whatever this says.

    Raises:
        ValidationError: an argument is invalid, or no API key is set for the official API.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        organization: str | None = None,
        project: str | None = None,
        model: str | None = None,
        rate_limit: RateLimit | None = DEFAULT_RATE_LIMIT,
        limiter: RateLimiter | None = None,
        max_concurrency: int | None = None,
        max_retries: int = 3,
        timeout: TimeoutLike = 600.0,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        default_headers: Mapping[str, str] | None = None,
        default_query: Mapping[str, QueryValue] | None = None,
        token_provider: TokenProvider | None = None,
        proxy: str | None = None,
        ssl: SSLOption = None,
        http_session: aiohttp.ClientSession | None = None,
        propagate_trace: bool = False,
    ) -> None:
        api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        organization = organization or os.environ.get("OPENAI_ORG_ID")
        project = project or os.environ.get("OPENAI_PROJECT_ID")
        if max_concurrency is not None:  # None: the automatic ceiling
            check_int("max_concurrency", max_concurrency, 1)
        check_int("max_retries", max_retries, 0)
        check_int("max_response_bytes", max_response_bytes, 1)
        parts = split_timeout(timeout)
        timeout = parts.total
        if parts.names_connect:
            connect_timeout = parts.connect
        check_seconds("connect_timeout", connect_timeout, none_ok=True)
        if token_provider is not None and not callable(token_provider):
            raise ValidationError("token_provider", "token_provider must be a callable")
        if not api_key and token_provider is None and base_url.rstrip("/") == DEFAULT_BASE_URL:
            raise ValidationError(
                "api_key", "no API key: pass api_key= or set OPENAI_API_KEY"
            )
        try:
            scheme, host, _port = _origin(base_url)
        except ValueError:  # a port out of range
            scheme, host = "", ""
        if scheme not in ("http", "https") or not host or _CONTROL.search(base_url):
            raise ValidationError(
                "base_url",
                f"base_url {redact_url(without_query(base_url))!r} is not an http:// or "
                "https:// URL",
            )
        if http_session is not None and (proxy is not None or ssl is not None):
            raise ValidationError(
                "http_session",
                "http_session= brings its own connection settings: configure the proxy and "
                "TLS on that session, not with proxy= or ssl=",
            )
        import aiohttp  # here, not at import: `import asyncimg` stays light

        from ._transport import Transport

        if http_session is not None and not isinstance(http_session, aiohttp.ClientSession):
            raise ValidationError("http_session", "http_session must be an aiohttp.ClientSession")
        self._base, self._base_query = split_base_url(base_url)
        self._default_query = check_query(default_query, "default_query")
        self._token_provider = token_provider
        proxies = ProxyConfig.build(proxy)
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.max_concurrency = max_concurrency
        self.timeout: float | None = timeout
        self.retry_policy = RetryPolicy(max_retries=max_retries)
        self.limiter: RateLimiter = limiter if limiter is not None else Limiter(rate_limit)
        self._origin = _origin(self.base_url)
        self._target = Target.of(self.base_url)
        self._propagate_trace = bool(propagate_trace)
        headers = {}
        if api_key:
            headers["Authorization"] = f"Bearer {check_header_value('api_key', api_key)}"
        if organization:
            headers["OpenAI-Organization"] = check_header_value("organization", organization)
        if project:
            headers["OpenAI-Project"] = check_header_value("project", project)
        self._headers: Mapping[str, str] = merge_headers(
            headers, check_headers(default_headers, "default_headers")
        )
        self._sends_credentials = token_provider is not None or any(
            name.lower() in ("authorization", "api-key") for name in self._headers
        )
        rate = getattr(self.limiter, "rate", None)  # optional in the limiter protocol
        self._gate = Gate(
            rate if isinstance(rate, RateLimit) else None, fixed=max_concurrency
        )
        watch(self, self._gate, self.limiter, self._target)
        user_agent = (
            f"asyncimg/{__version__} aiohttp/{aiohttp.__version__} "
            f"python/{platform.python_version()}"
        )
        self._batches: set[asyncio.Task[None]] = set()
        """The drivers of this client's ``generate_many`` batches: none outlives the client."""
        self._transport = Transport(
            max_connections=self._gate.ceiling + 4,
            max_response_bytes=max_response_bytes,
            user_agent=user_agent,
            connect_timeout=connect_timeout,
            proxies=proxies,
            ssl=None if ssl is None else ssl_context(ssl),
            session=http_session,
        )

    @classmethod
    def azure(
        cls: type[_C],
        *,
        endpoint: str | None = None,
        deployment: str | None = None,
        api_version: str | None = None,
        api_key: str | None = None,
        token_provider: TokenProvider | None = None,
        **options: Any,
    ) -> _C:
        """A client for an Azure OpenAI resource (the official SDK's ``AzureOpenAI``).

        Requests go to ``{endpoint}/openai/deployments/{deployment}/images/...``
        with ``?api-version=``; without ``deployment`` each call's ``model``
        names the deployment. The key goes as ``api-key``; ``token_provider``
        (a sync or async callable returning an Entra ID token) instead gives
        ``Authorization: Bearer``, asked again for every request. Left out:
        ``$AZURE_OPENAI_ENDPOINT``, ``$AZURE_OPENAI_API_KEY``,
        ``$OPENAI_API_VERSION``. ``options`` are the other client arguments.

        Raises:
            ValidationError: the endpoint, the version or a credential is missing,
                or an argument is invalid.
        """
        return cls(
            **azure_options(
                endpoint=endpoint,
                deployment=deployment,
                api_version=api_version,
                api_key=api_key,
                token_provider=token_provider,
                options=options,
            )
        )

    @functools.cached_property
    def images(self) -> AsyncImages:
        """The official SDK's spelling of the calls: ``client.images.generate(prompt=...)``,
        ``.edit(image=..., prompt=...)``, ``.create_variation(image=...)``, and
        ``client.images.with_raw_response.<call>(...)`` for the HTTP answer."""
        return AsyncImages(self)

    def with_options(
        self: _C,
        *,
        timeout: TimeoutLike | _Unset = _UNSET,
        max_retries: int | None = None,
        model: str | None = None,
        default_headers: Mapping[str, str] | None = None,
        default_query: Mapping[str, QueryValue] | None = None,
    ) -> _C:
        """A client with other defaults that shares this one's session, limiter and
        concurrency ceiling (the official SDK's ``with_options``/``copy``).

        ``timeout`` (seconds, None for no limit, or an ``httpx.Timeout``-shaped
        object, whose ``connect`` part is ignored: the connection pool is
        shared), ``max_retries`` and ``model`` replace this client's;
        ``default_headers`` and ``default_query`` are added over its own.
        Arguments left out keep this client's values. Close the original
        client, not the copy: they share one session.

        Raises:
            ValidationError: an argument is invalid.
        """
        clone = copy.copy(self)
        clone.__dict__.pop("images", None)  # the namespace must call the clone
        if not isinstance(timeout, _Unset):
            clone.timeout = split_timeout(timeout).total
        if max_retries is not None:
            clone.retry_policy = self._policy(max_retries)
        if model is not None:
            clone.model = model
        if default_headers is not None:
            clone._headers = merge_headers(
                self._headers, check_headers(default_headers, "default_headers")
            )
        if default_query is not None:
            clone._default_query = {
                **self._default_query, **check_query(default_query, "default_query")
            }
        return clone

    copy = with_options

    def endpoint_url(self, path: str) -> str:
        """The URL a request to ``path`` goes to, without any query (which may carry a
        key) and with any password in it hidden: for logs and raw responses."""
        return redact_url(without_query(self.base_url)) + path

    def __repr__(self) -> str:
        return (
            f"AsyncImagesClient(base_url={redact_url(without_query(self.base_url))!r}, "
            f"model={self.model!r}, max_concurrency={self.max_concurrency})"
        )

    @property
    def max_in_flight(self) -> int:
        """The most requests this client ever has in flight: ``max_concurrency``,
        else the automatic ceiling's maximum (it sizes itself below that)."""
        return self._gate.ceiling

    @property
    def max_results_held(self) -> int | None:
        """How many finished results ``generate_many`` holds for a slow consumer
        before it starts no more: None with a fixed ``max_concurrency`` (the
        batch's own window bounds them)."""
        return self._gate.ready_limit

    async def __aenter__(self) -> AsyncImagesClient:
        self._transport.session  # noqa: B018 - create the session on this loop
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Cancel the batches still running, then close the HTTP session and its
        connections. Safe to call twice."""
        batches = [task for task in self._batches if not task.done()]
        for task in batches:
            task.cancel()
        if batches:
            await asyncio.wait(batches)
        await self._transport.aclose()

    async def close(self) -> None:
        """The same as :meth:`aclose`: the official SDK's name for it."""
        await self.aclose()

    # -- the three calls ---------------------------------------------------------------

    @overload
    async def generate(
        self, prompt: str, *, stream: Literal[True], **kwargs: Unpack[GenerateKeywords]
    ) -> ImageStream: ...
    @overload
    async def generate(
        self,
        prompt: str,
        *,
        stream: Literal[False] | None = None,
        **kwargs: Unpack[GenerateKeywords],
    ) -> ImagesResponse: ...
    @overload
    async def generate(
        self, prompt: str, *, stream: bool | None = None, **kwargs: Unpack[GenerateKeywords]
    ) -> ImagesResponse | ImageStream: ...
    async def generate(
        self, prompt: str, *, stream: bool | None = None, **kwargs: Unpack[GenerateKeywords]
    ) -> ImagesResponse | ImageStream:
        """Create images from a prompt (``POST /images/generations``).

        Every parameter of the API is a keyword; None is not sent. ``extra_body``
        adds parameters this version does not know, ``extra_headers`` and
        ``extra_query`` headers and query parameters (over the client's
        defaults); ``timeout`` and ``max_retries`` override the client's for
        this call. ``stream=True``
        (GPT image models) returns an :class:`~asyncimg.ImageStream` of
        ``partial_images`` partial images and then the final one, once its
        first event has arrived.

        Raises:
            ValidationError: a parameter breaks the model's rules (nothing sent).
            APIStatusError: the server refused (a subclass per status).
            APIConnectionError: no usable answer after the retries.
        """
        fields, options = self._fields(kwargs)
        params = GenerateParams.build(prompt=prompt, stream=stream, **fields)
        if params.stream:
            return await self._stream(params, options)
        return await self._call(params, options)

    @overload
    async def edit(
        self,
        image: EditImages,
        prompt: str,
        *,
        stream: Literal[True],
        **kwargs: Unpack[EditKeywords],
    ) -> ImageStream: ...
    @overload
    async def edit(
        self,
        image: EditImages,
        prompt: str,
        *,
        stream: Literal[False] | None = None,
        **kwargs: Unpack[EditKeywords],
    ) -> ImagesResponse: ...
    @overload
    async def edit(
        self,
        image: EditImages,
        prompt: str,
        *,
        stream: bool | None = None,
        **kwargs: Unpack[EditKeywords],
    ) -> ImagesResponse | ImageStream: ...
    async def edit(
        self,
        image: EditImages,
        prompt: str,
        *,
        stream: bool | None = None,
        **kwargs: Unpack[EditKeywords],
    ) -> ImagesResponse | ImageStream:
        """Edit or extend one image, or up to 16 for the GPT image models (``POST /images/edits``).

        ``image`` is a path, bytes, a binary file, a ``(filename, bytes[, mime])``
        tuple, an :class:`~asyncimg.ImageRef`, or a list of those; ``mask``
        likewise (a PNG whose transparent areas mark what to edit); ``markup``
        a file (a transparent PNG drawn over the first image to guide the edit,
        GPT Image 2.5, not with ``mask``).
        ``stream=True`` as for :meth:`generate`.

        When the image, one of the images or the mask is an ImageRef (a URL or
        a file id), the edit is sent as JSON, the GPT image models' form, and
        local images in the same call travel in it as ``data:`` URLs;
        ``moderation`` is taken only by such an edit, ``response_format`` never.
        Otherwise the files are uploaded as multipart form data.

        Raises:
            ValidationError: an image or a parameter breaks the model's rules.
            APIStatusError: the server refused (a subclass per status).
            APIConnectionError: no usable answer after the retries.
        """
        fields, options = self._fields(kwargs)
        mask = fields.pop("mask", None)
        markup = fields.pop("markup", None)
        moderation = fields.pop("moderation", None)
        params: EditParams | JsonEditParams
        if by_reference(image, mask):
            if markup is not None:
                raise ValidationError(
                    "markup",
                    "markup is uploaded as a file with the images: upload them too, not as "
                    "ImageRef (an edit by reference is sent as JSON)",
                )
            response_format = fields.pop("response_format", None)
            if response_format not in (None, "b64_json"):
                raise ValidationError(
                    "response_format",
                    f"response_format {response_format!r} is not available for an edit of "
                    "images by reference (ImageRef): only the GPT image models take one, and "
                    "they return b64_json (ask for that, or leave response_format out)",
                )
            params = JsonEditParams.build(
                image_refs=await load_refs(image, "image"),
                mask=None if mask is None else await load_ref(mask, "mask"),
                prompt=prompt, moderation=moderation, stream=stream, **fields
            )
        else:
            if moderation is not None:
                raise ValidationError(
                    "moderation",
                    "moderation is taken only by an edit of images by reference (ImageRef, "
                    "sent as JSON), not by an upload of files",
                )
            images = await load_images(image, "image")  # type: ignore[arg-type]
            mask_file = None if mask is None else await load_image(mask, "mask")
            markup_file = None if markup is None else await load_image(markup, "markup")
            params = await _build(
                EditParams,
                _bytes_of((*images, mask_file, markup_file)),
                image=images, prompt=prompt, mask=mask_file, markup=markup_file, stream=stream,
                **fields
            )
        if params.stream:
            return await self._stream(params, options)
        return await self._call(params, options)

    async def create_variation(
        self, image: ImageInput | ImageFile, **kwargs: Unpack[VariationKeywords]
    ) -> ImagesResponse:
        """Create variations of an image (``POST /images/variations``, dall-e-2).

        Raises:
            ValidationError: the image or a parameter breaks the model's rules.
            APIStatusError: the server refused (a subclass per status).
            APIConnectionError: no usable answer after the retries.
        """
        fields, options = self._fields(kwargs)
        file = await load_image(image, "image")
        params = await _build(VariationParams, _bytes_of((file,)), image=(file,), **fields)
        return await self._call(params, options)

    def generate_many(
        self,
        /,
        prompts: PromptSource,
        *,
        ordered: bool = False,
        budget: Budget | None = None,
        prices: PriceTable | None = None,
        **params: Unpack[GenerateKeywords],
    ) -> BatchIterator[BatchItem]:
        """Generate images for many prompts, at most ``max_concurrency`` at once.

        ``prompts`` is an iterable or async iterable of strings or mappings
        (``{"prompt": ..., **params}``), pulled lazily. Yields one
        :class:`~asyncimg.BatchItem` per prompt as it finishes (in input order
        with ``ordered=True``); a failure is an item with ``.error``, never an
        exception that ends the batch. Leaving the loop early cancels the rest;
        ``async with client.generate_many(...) as items:`` (or ``aclose()``)
        waits for that to finish, and closing the client cancels what is left.

        With a ``budget`` (:class:`~asyncimg.Budget`, USD), each item's estimated cost
        (``prices``, default the shipped table) is reserved before it is sent and settled
        with what it cost; an item that would take the spend over the budget is not
        sent and comes back with a ValidationError (``param`` ``max_cost``).

        Raises:
            ValidationError: ``params`` names a parameter generate does not take.
        """
        from ._batch import generate_many

        return generate_many(self, prompts, ordered=ordered, params=params, tasks=self._batches,
                             budget=budget, prices=prices)

    # -- results -----------------------------------------------------------------------

    async def download(self, image: Image, *, timeout: TimeoutLike = None) -> bytes:
        """The bytes of one result: ``b64_json`` decoded, or ``url`` fetched with retries.

        The API key is sent only to a URL on the API's own origin. A download
        takes nothing from the rate limit, and its retries wait on their own
        (the server's wait, else backoff): a 429 from a file host never pauses
        the image calls.

        Raises:
            ValidationError: ``timeout`` is not a positive number of seconds.
            APIResponseValidationError: the base64 does not decode, or the image has neither.
            APIStatusError: the URL answered an error (403 once it has expired).
            APIConnectionError: no usable answer after the retries.
        """
        attempt_timeout = self._attempt_timeout(timeout)
        if image.b64_json is not None:
            if len(image.b64_json) > OFF_LOOP_BYTES:
                return await off_loop(decode_b64, image)
            return decode_b64(image)
        if image.url is None:
            raise APIResponseValidationError(
                "the image has neither b64_json nor url", status_code=200
            )
        own_origin = _origin(image.url) == self._origin
        # The client's credentials go only to the API's own origin: its headers
        # (token included) and its default query (which may carry a key).
        url = with_query(image.url, self._default_query) if own_origin else image.url

        async def attempt(on_wire: OnWire) -> RawResponse:
            headers = await self._request_headers({}) if own_origin else {}
            return await self._transport.request(
                "GET", url, headers=headers, timeout=attempt_timeout, on_wire=on_wire
            )

        return await self._send(
            attempt, _body, images=0, policy=self.retry_policy,
            what=f"GET {without_query(url)}",
            call=CallInfo.http(Target.of(url), "download", "GET", urlsplit(url).path),
        )

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Mapping[str, Any] | None = None,
        data: Mapping[str, str] | None = None,
        files: Mapping[str, tuple[str, bytes, str]] | None = None,
        params: Mapping[str, QueryValue] | None = None,
        max_retries: int | None = None,
        timeout: TimeoutLike = None,
    ) -> RawResponse:
        """Send a request to ``{base_url}{path}`` through the client's one request path.

        It gets what an image call gets: the client's headers (a fresh token from
        ``token_provider``), the base URL's query, ``default_query`` and
        ``params``, the retry policy (``max_retries`` for this request). It takes
        nothing from the rate limit: the Files and Batches endpoints, for which
        the Batch API support uses it, have limits of their own. The body is
        ``json``, or a multipart form of text fields ``data`` and ``files``
        (field name -> ``(filename, bytes, mime)``), or none.

        Raises:
            ValidationError: an argument is invalid (nothing is sent).
            APIStatusError: the server refused (a subclass per status).
            APIConnectionError: no usable answer after the retries.
        """
        if json is not None and (data is not None or files is not None):
            raise ValidationError("json", "send json= or a form (data=, files=), not both")
        attempt_timeout = self._attempt_timeout(timeout)
        policy = self._policy(max_retries)
        url = request_url(
            self._base, path, self._base_query, self._default_query,
            check_query(params, "params"), model=self.model,
        )
        body: Body | None = None
        if json is not None:
            body = encode_json(json, {})
        elif data is not None or files is not None:
            body = encode_form(
                tuple((data or {}).items()),
                tuple((name, name, *file) for name, file in (files or {}).items()),
                {},
            )

        async def attempt(on_wire: OnWire) -> RawResponse:
            return await self._transport.request(
                method, url, headers=await self._request_headers({}), body=body,
                timeout=attempt_timeout, on_wire=on_wire,
            )

        return await self._send(
            attempt, _raw, images=0, policy=policy, what=f"{method} {path}",
            call=CallInfo.http(self._target, "request", method, path),
        )

    async def save(
        self,
        response: ImagesResponse,
        directory: str | os.PathLike[str],
        *,
        stem: str | None = None,
        overwrite: bool = False,
    ) -> list[Path]:
        """Write every image of ``response`` into ``directory``; returns the paths.

        Files are named ``{stem}-{i}.{ext}``: the extension from the bytes'
        signature (png, jpg, webp, gif, svg, else bin; never the response's
        ``output_format``), the stem defaults to the request id, else
        ``image-{created}-{random}``, and is made safe so that it cannot leave
        the directory; every path is checked to stay inside it. An existing file
        is never replaced: a taken name gets ``-1``, ``-2``, ... before its
        extension; with ``overwrite=True`` it is replaced instead (the batch
        runner does so for an item it redoes). Each file is written under a
        temporary name and linked into place, so a reader never sees a
        half-written image; its mode follows the umask, as ``open()`` would.

        Raises:
            APIResponseValidationError, APIStatusError, APIConnectionError: as :meth:`download`.
            OSError: the directory cannot be written.
        """
        folder = Path(directory)
        default = f"image-{response.created or 0}-{secrets.token_hex(4)}"
        base = safe_stem(stem or response.request_id or default)
        paths = []
        for i, image in enumerate(response.data):
            data = await self.download(image)
            ext = file_extension(data)
            paths.append(
                await blocking(write_new, folder, f"{base}-{i}", ext, data, overwrite)
            )
        return paths

    async def save_event(
        self,
        event: PartialImageEvent | CompletedImageEvent,
        directory: str | os.PathLike[str],
        *,
        stem: str | None = None,
    ) -> Path:
        """Write the image of one streamed event into ``directory``; returns the path.

        A partial image is named ``{stem}-partial-{i}.{ext}``, the final one
        ``{stem}-0.{ext}`` (as :meth:`save` names it); the stem defaults to the
        stream's request id; the extension comes from the bytes, as :meth:`save`
        chooses it. Written atomically, like :meth:`save`.

        Raises:
            APIResponseValidationError: the event's base64 does not decode.
            OSError: the directory cannot be written.
        """
        from ._stream import PartialImageEvent

        data = decode_b64(Image(b64_json=event.b64_json))
        base = safe_stem(stem or event.request_id or f"image-{event.created_at or 0}")
        ext = file_extension(data)
        if isinstance(event, PartialImageEvent):
            name = f"{base}-partial-{event.partial_image_index or 0}.{ext}"
        else:
            name = f"{base}-0.{ext}"
        path = Path(directory) / name
        await blocking(write_atomic, path, data)
        return path

    # -- the engine --------------------------------------------------------------------

    def _fields(self, kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], _CallOptions]:
        """A call's keywords split into the request's fields and the call's options.

        The client's model stands in for a missing one.
        """
        fields = dict(kwargs)
        options = _CallOptions(
            timeout=fields.pop("timeout", None),
            max_retries=fields.pop("max_retries", None),
            extra_headers=fields.pop("extra_headers", None),
            extra_query=fields.pop("extra_query", None),
            stats=fields.pop("stats", None),
        )
        if fields.get("model") is None:
            fields["model"] = self.model
        if not sends_response_format(fields["model"], fields.get("response_format")):
            fields.pop("response_format", None)  # b64_json: what a GPT image model returns
        return fields, options

    async def _request_headers(self, extra: Mapping[str, str]) -> Mapping[str, str]:
        """The client's headers, a fresh bearer token when a provider is set, then ``extra``.

        Raises:
            ValidationError: the token provider gave no token (nothing is sent).
        """
        if self._propagate_trace:
            extra = merge_headers(extra, trace_headers())
        provider = self._token_provider
        if provider is None:
            return merge_headers(self._headers, extra) if extra else self._headers
        if inspect.iscoroutinefunction(provider) or inspect.iscoroutinefunction(
            type(provider).__call__  # an object whose __call__ is async
        ):
            token = await provider()  # type: ignore[misc]
        else:
            token = await blocking(provider)
            if inspect.isawaitable(token):
                token = await token
        if not isinstance(token, str) or not token:
            raise ValidationError(
                "token_provider", f"token_provider returned {type(token).__name__}, not a token"
            )
        return merge_headers(self._headers, {"Authorization": f"Bearer {token}"}, extra)

    def _prepare(
        self, params: Params, options: _CallOptions
    ) -> tuple[RetryPolicy, float | None, str, Mapping[str, str]]:
        """Check a call's options (before any budget is taken): its retry policy,
        its attempt timeout, its URL and its extra headers.

        Raises:
            ValidationError: an option is invalid, or no deployment can be named.
        """
        policy = self._policy(options.max_retries)
        attempt_timeout = self._attempt_timeout(options.timeout)
        url = request_url(
            self._base,
            params.path,
            self._base_query,
            self._default_query,
            check_query(options.extra_query, "extra_query"),
            model=params.model,
        )
        return policy, attempt_timeout, url, check_headers(options.extra_headers, "extra_headers")

    async def _call(self, params: Params, options: _CallOptions) -> ImagesResponse:
        # Everything that can be refused is refused here, before any budget is taken:
        # the retry count, the timeout, the URL, the headers and the whole body as bytes.
        policy, attempt_timeout, url, extra = self._prepare(params, options)
        body = await _encode(params)

        async def attempt(on_wire: OnWire) -> RawResponse:
            return await self._transport.request(
                "POST", url, headers=await self._request_headers(extra), body=body,
                timeout=attempt_timeout, decode_json=True, on_wire=on_wire,
            )

        try:
            return await self._send(
                attempt, parse_images_response, images=params.images, policy=policy,
                what=f"POST {params.path}", stats=options.stats, call=self._image_call(params),
            )
        except NotFoundError as exc:
            _say_if_retired(exc, params.model)
            raise

    def _image_call(self, params: Params) -> CallInfo:
        """What an image call is, for its span, metrics and log records."""
        return CallInfo.image(
            self._target, params.path, params.model, getattr(params, "n", None),
            getattr(params, "stream", None),
        )

    def _attempt_timeout(self, timeout: TimeoutLike) -> float | None:
        """A call's ``timeout=`` (seconds or an httpx-shaped object), else the client's.

        Raises:
            ValidationError: not a timeout.
        """
        if timeout is None:
            return self.timeout
        return split_timeout(timeout).total

    def _policy(self, max_retries: int | None) -> RetryPolicy:
        if max_retries is None:
            return self.retry_policy
        check_int("max_retries", max_retries, 0)
        return attrs.evolve(self.retry_policy, max_retries=max_retries)

    async def _stream(
        self, params: GenerateParams | EditParams | JsonEditParams, options: _CallOptions
    ) -> ImageStream:
        """Open a stream and wait for its first event; retried until that event has come."""
        from ._stream import ImageStream
        from ._transport import RawResponse

        policy, attempt_timeout, url, extra = self._prepare(params, options)
        body = await _encode(params)
        opened: list[ImageStream] = []

        async def attempt(on_wire: OnWire) -> RawResponse:
            response = await self._transport.open_stream(
                url, headers=await self._request_headers(extra), body=body,
                timeout=attempt_timeout, on_wire=on_wire,
            )
            stream = ImageStream(
                response, timeout=attempt_timeout, what=f"POST {params.path}",
                kind="image_generation" if isinstance(params, GenerateParams) else "image_edit",
                max_event_bytes=self._transport.max_response_bytes,
            )
            await stream.prime()
            opened.append(stream)
            return RawResponse(stream.status, stream.headers)

        try:
            return await self._send(
                attempt, lambda _: opened.pop(), images=params.images, policy=policy,
                what=f"POST {params.path} (stream)", stats=options.stats,
                call=self._image_call(params),
            )
        except NotFoundError as exc:
            _say_if_retired(exc, params.model)
            raise

    async def _send(
        self,
        attempt: Callable[[OnWire], Awaitable[RawResponse]],
        parse: Callable[[RawResponse], _T],
        *,
        images: int,
        policy: RetryPolicy,
        what: str,
        stats: CallStats | None = None,
        call: CallInfo | None = None,
    ) -> _T:
        """The one request path: every request the library sends goes through here.

        ``attempt(on_wire)`` sends one attempt (its headers, with a fresh token,
        built by the caller through :meth:`_request_headers`); this loop applies
        the retry policy (a 429 pauses the limiter for every caller), and for a
        request that spends ``images`` takes a concurrency slot and the images
        from the limiter per attempt, stamping the permit when the request is on
        the wire (``on_wire``) and refunding it when nothing was written.
        ``stats``, when given, records each attempt. ``call`` says what the call
        is for its OpenTelemetry span (``_otel.py``), current while it runs, and
        its log records.
        """
        span = None if call is None else start_span(call, stats)
        if span is not None:
            stats = span.stats  # the span's attempts and limiter wait come from it
        number = 0
        held: list[Permit] = []  # a 429's permit, with its slot, kept for the retry
        try:
            while True:
                number += 1
                started = time.monotonic()
                try:
                    raw = await self._attempt(attempt, images, stats, held)
                    logger.debug(
                        "%s attempt %d: %d in %.3fs (request id %s)",
                        what, number, raw.status, time.monotonic() - started, raw.request_id,
                        extra=log_fields(call, raw.request_id, number)
                        if logger.isEnabledFor(logging.DEBUG) else None,
                    )
                    result = parse(raw)
                    if span is not None:
                        span.succeeded(raw.request_id, raw.status, result)
                    return result
                except APIError as exc:
                    decision = decide(exc, number, policy, now=time.time())
                    status = getattr(exc, "status_code", None)
                    if not self._sends_credentials and status is not None:
                        decision = _without_credentials(exc, decision, number)
                    if stats is not None:
                        stats.statuses.append(status)
                    fields = log_fields(call, exc.request_id, number)
                    logger.debug(
                        "%s attempt %d: %s %s (request id %s)",
                        what, number, status or type(exc).__name__, exc.message, exc.request_id,
                        extra=fields,
                    )
                    if not decision.retry:
                        raise
                    logger.info(
                        "%s: retrying after attempt %d (%s) in %.2fs",
                        what, number, decision.reason, decision.wait, extra=fields,
                    )
                    pause_all = decision.pause_all and images > 0
                    if span is not None:
                        span.retry(exc, number, decision.reason, decision.wait, pause_all)
                    if pause_all:
                        self.limiter.pause(decision.wait)
                    else:  # a download's 429 is its host's, not the image budget's
                        await asyncio.sleep(decision.wait)
                    if decision.then:
                        await asyncio.sleep(decision.then)
        except BaseException as exc:
            if span is not None:
                span.failed(exc)
            raise
        finally:
            if held:  # refused, and not retried (or cancelled during the pause)
                held.pop().refund()
                self._gate.release()

    async def _attempt(
        self,
        attempt: Callable[[OnWire], Awaitable[RawResponse]],
        images: int,
        stats: CallStats | None,
        held: list[Permit],
    ) -> RawResponse:
        """Send one attempt through the gate and the limiter.

        ``held`` carries a 429's permit (and its slot) from one attempt to its
        retry: the retry waits for the pause only, not behind later requests. An
        attempt refused so leaves its permit in ``held`` and keeps the slot.
        """
        if images == 0:
            if stats is not None:
                stats.sent.append((time.time(), 0))
            return await attempt(None)
        gate = self._gate
        asked = time.monotonic()
        permit: RatePermit
        if held:
            permit = held[0]
            await permit.resumed()
            held.clear()
        else:
            await gate.acquire()
            try:
                # The slot first, then the images; the permit is stamped when the
                # request is on the wire, not before a pooled connection or the
                # upload, and refunded if nothing was written.
                permit = await self.limiter.acquire(images)
            except BaseException:
                gate.release()
                raise
        try:
            if stats is not None:
                stats.waited += time.monotonic() - asked
                stats.sent.append((time.time(), images))
            sent: list[int] = []

            def on_wire() -> None:
                permit.stamp()
                sent.append(gate.sent())
                if stats is not None:  # the moment it left, not when it was granted
                    stats.sent[-1] = (time.time(), images)

            try:
                raw = await attempt(on_wire)
            except APIError as exc:
                headers = getattr(exc, "headers", None)
                if headers:
                    self.limiter.observe_headers(headers)
                status = getattr(exc, "status_code", 0)
                if note_answer(permit, headers, status) and isinstance(permit, Permit):
                    held.append(permit)
                raise
            finally:
                if not held:
                    permit.refund()
                if sent:
                    gate.answered(sent[0])
            self.limiter.observe_headers(raw.headers)
            waited = time.monotonic() - raw.received if raw.received else 0.0
            note_answer(permit, raw.headers, raw.status, waited)
            return raw
        finally:
            if not held:
                gate.release()


def _without_credentials(error: APIError, decision: Decision, attempt: int) -> Decision:
    """What a client that sent no key does with ``error``: say so, retry a 5xx once at most.

    A 401, 403 or 5xx that answers a request without credentials (a custom base
    URL and no key) is most likely the missing key (a gateway may answer 500):
    its message gets :data:`NO_KEY_NOTE` once it is final.
    """
    status = getattr(error, "status_code", 0)
    if status >= 500 and attempt >= 2:
        decision = Decision(False, reason=f"status {status} without credentials, retried once")
    if not decision.retry and (status in (401, 403) or status >= 500):
        error.message = f"{error.message} ({NO_KEY_NOTE})"
        error.args = (error.message,)
    return decision


@attrs.frozen
class _CallOptions:
    """What a call takes besides the API's parameters (``RequestOptions`` less ``extra_body``)."""

    timeout: TimeoutLike = None
    max_retries: int | None = None
    extra_headers: Mapping[str, str] | None = None
    extra_query: Mapping[str, QueryValue] | None = None
    stats: CallStats | None = None


def _say_if_retired(exc: NotFoundError, model: str | None) -> None:
    """Add to ``exc``'s message that ``model`` was retired, when it answers one
    with ``model_not_found``, and what replaces it."""
    note = retired_note(model) if exc.code == "model_not_found" else None
    if note is not None:
        exc.message = f"{exc.message} ({note})"
        exc.args = (exc.message,)


def parse_images_response(raw: RawResponse) -> ImagesResponse:
    """Turn a successful, decoded response into an :class:`ImagesResponse`.

    Raises:
        APIResponseValidationError: the body is not an images response.
    """
    return ImagesResponse.from_json(
        raw.json, request_id=raw.request_id, status_code=raw.status, headers=raw.headers
    )


def _body(raw: RawResponse) -> bytes:
    return raw.body


def _raw(raw: RawResponse) -> RawResponse:
    return raw


_B64_PIECE: Final = 1 << 20
"""Base64 is decoded in pieces of this many characters (a multiple of 4): binascii
holds the GIL for a whole call, so one 20 MB call in a worker thread would stall
the event loop for its ~80 ms; between pieces the loop gets its turn."""


def decode_b64(image: Image, index: int | None = None) -> bytes:
    """Decode an image's ``b64_json`` (strictly: base64 characters and final padding only).

    Raises:
        APIResponseValidationError: the text is not valid base64.
    """
    text = image.b64_json or ""
    try:
        if len(text) <= _B64_PIECE:
            return base64.b64decode(text, validate=True)
        pieces = []
        for start in range(0, len(text), _B64_PIECE):
            piece = text[start : start + _B64_PIECE]
            if start + _B64_PIECE < len(text) and "=" in piece:
                raise ValueError("padding before the end")
            pieces.append(base64.b64decode(piece, validate=True))
        return b"".join(pieces)
    except (binascii.Error, ValueError):
        name = "image" if index is None else f"image {index}"
        raise APIResponseValidationError(
            f"{name}: b64_json is not valid base64 ({len(text)} characters)", status_code=200
        ) from None


async def _encode(params: Params) -> Body:
    """The body of ``params`` as bytes (off the loop for a large upload).

    Raises:
        ValidationError: a value cannot be sent.
    """
    if isinstance(params, JsonEditParams):  # images by reference: data URLs are the bulk
        refs = (*params.image_refs, params.mask)
        size = sum(len(ref.url or "") for ref in refs if ref is not None)
    else:
        size = _bytes_of(
            (*getattr(params, "image", ()), getattr(params, "mask", None),
             getattr(params, "markup", None))
        )
    return await off_loop_if_large(params.encode, size)


_FP = TypeVar("_FP", EditParams, VariationParams)


async def _build(cls: type[_FP], upload_bytes: int, /, **kwargs: Any) -> _FP:
    """``cls.build(**kwargs)``: checking large uploads (inflating a PNG) runs off the loop."""
    return await off_loop_if_large(functools.partial(cls.build, **kwargs), upload_bytes)


def _bytes_of(files: Iterable[ImageFile | None]) -> int:
    """The bytes an upload of ``files`` carries (None: no mask)."""
    return sum(len(f.data) for f in files if f is not None)
