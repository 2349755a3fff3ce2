"""AsyncImagesClient: generations, edits and variations, downloads and saving.

A call flows: build and validate the parameters (pure), take a concurrency
slot, take its images from the rate limiter, send, retry what is worth
retrying, parse. See ``DESIGN.md`` for the whole picture.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import inspect
import logging
import os
import platform
import re
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import urlsplit

import aiohttp
import attrs

from ._azure import azure_options
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
)
from ._exceptions import APIError, APIResponseValidationError, ValidationError
from ._files import EXTENSIONS, ImageFile, ImageInput, load_image, load_images, sniff_mime
from ._limiter import Limiter, RateLimit, RateLimiter
from ._models import Image, ImagesResponse
from ._params import EditParams, GenerateParams, JsonEditParams, Params, VariationParams
from ._refs import ImageRef, by_reference, load_ref, load_refs
from ._retry import RetryPolicy, count_attempt, count_status, decide
from ._transport import RawResponse, Transport, without_query
from ._version import __version__

if TYPE_CHECKING:
    from ._models import BatchItem, PromptSource

__all__ = ["DEFAULT_RATE_LIMIT", "AsyncImagesClient"]

logger = logging.getLogger("asyncimg")

DEFAULT_BASE_URL: Final = "https://api.openai.com/v1"
DEFAULT_RATE_LIMIT: Final = RateLimit(images=50, per=60.0)
"""The API's default for image models: 50 images per minute."""
DEFAULT_MAX_RESPONSE_BYTES: Final = 512 * 1024 * 1024

_T = TypeVar("_T")
_C = TypeVar("_C", bound="AsyncImagesClient")

TokenProvider = Callable[[], str | Awaitable[str]]
"""A sync or async callable returning a bearer token (an Entra ID token for Azure)."""

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+|\.{2,}")
_DASHES = re.compile(r"-{2,}")


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


def safe_stem(stem: str) -> str:
    """A file name stem that cannot leave its directory: no separators, no leading dots."""
    cleaned = _DASHES.sub("-", _UNSAFE.sub("-", stem)).strip(".-")
    return cleaned[:120] or "image"


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
        max_concurrency: requests in flight at once.
        max_retries: retries after the first attempt (per call: ``max_retries=``).
        timeout: seconds for one attempt (per call: ``timeout=``).
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
            connector, proxy and TLS settings are then yours); the client never
            closes it. Not with ``proxy``/``ssl``.

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
        max_concurrency: int = 16,
        max_retries: int = 3,
        timeout: float | None = 600.0,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        default_headers: Mapping[str, str] | None = None,
        default_query: Mapping[str, QueryValue] | None = None,
        token_provider: TokenProvider | None = None,
        proxy: str | None = None,
        ssl: SSLOption = None,
        http_session: aiohttp.ClientSession | None = None,
    ) -> None:
        api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        organization = organization or os.environ.get("OPENAI_ORG_ID")
        project = project or os.environ.get("OPENAI_PROJECT_ID")
        if not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ValidationError("max_concurrency", "max_concurrency must be an integer >= 1")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValidationError("max_retries", "max_retries must be an integer >= 0")
        if timeout is not None and timeout <= 0:
            raise ValidationError("timeout", "timeout must be a positive number of seconds")
        if token_provider is not None and not callable(token_provider):
            raise ValidationError("token_provider", "token_provider must be a callable")
        if not api_key and token_provider is None and base_url.rstrip("/") == DEFAULT_BASE_URL:
            raise ValidationError(
                "api_key", "no API key: pass api_key= or set OPENAI_API_KEY"
            )
        if http_session is not None and (proxy is not None or ssl is not None):
            raise ValidationError(
                "http_session",
                "http_session= brings its own connection settings: configure the proxy and "
                "TLS on that session, not with proxy= or ssl=",
            )
        if http_session is not None and not isinstance(http_session, aiohttp.ClientSession):
            raise ValidationError("http_session", "http_session must be an aiohttp.ClientSession")
        self._base, self._base_query = split_base_url(base_url)
        self._default_query = check_query(default_query, "default_query")
        self._token_provider = token_provider
        proxies = ProxyConfig.build(proxy)
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.retry_policy = RetryPolicy(max_retries=max_retries)
        self.limiter: RateLimiter = limiter if limiter is not None else Limiter(rate_limit)
        self._origin = _origin(self.base_url)
        headers = {}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        if organization:
            headers["OpenAI-Organization"] = organization
        if project:
            headers["OpenAI-Project"] = project
        self._headers: Mapping[str, str] = merge_headers(
            headers, check_headers(default_headers, "default_headers")
        )
        self._gate: asyncio.Semaphore | None = None
        user_agent = (
            f"asyncimg/{__version__} aiohttp/{aiohttp.__version__} "
            f"python/{platform.python_version()}"
        )
        self._transport = Transport(
            max_connections=max_concurrency + 4,
            max_response_bytes=max_response_bytes,
            user_agent=user_agent,
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

    def __repr__(self) -> str:
        return (
            f"AsyncImagesClient(base_url={redact_url(without_query(self.base_url))!r}, "
            f"model={self.model!r}, "
            f"max_concurrency={self.max_concurrency})"
        )

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
        """Close the HTTP session and its connections. Safe to call twice."""
        await self._transport.aclose()

    # -- the three calls ---------------------------------------------------------------

    async def generate(
        self,
        prompt: str,
        *,
        model: str | None = None,
        n: int | None = None,
        size: str | None = None,
        quality: str | None = None,
        response_format: str | None = None,
        output_format: str | None = None,
        output_compression: int | None = None,
        background: str | None = None,
        moderation: str | None = None,
        style: str | None = None,
        user: str | None = None,
        extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        extra_query: Mapping[str, QueryValue] | None = None,
        timeout: float | None = None,
        max_retries: int | None = None,
    ) -> ImagesResponse:
        """Create images from a prompt (``POST /images/generations``).

        Every parameter of the API is a keyword; None is not sent. ``extra_body``
        adds parameters this version does not know, ``extra_headers`` and
        ``extra_query`` headers and query parameters (over the client's
        defaults); ``timeout`` and ``max_retries`` override the client's for
        this call.

        Raises:
            ValidationError: a parameter breaks the model's rules (nothing sent).
            APIStatusError: the server refused (a subclass per status).
            APIConnectionError: no usable answer after the retries.
        """
        params = GenerateParams.build(
            prompt=prompt,
            model=model if model is not None else self.model,
            n=n,
            size=size,
            quality=quality,
            response_format=response_format,
            output_format=output_format,
            output_compression=output_compression,
            background=background,
            moderation=moderation,
            style=style,
            user=user,
            extra_body=extra_body,
        )
        return await self._call(params, timeout, max_retries, extra_headers, extra_query)

    async def edit(
        self,
        image: ImageInput | ImageFile | ImageRef | Sequence[ImageInput | ImageFile | ImageRef],
        prompt: str,
        *,
        mask: ImageInput | ImageFile | ImageRef | None = None,
        model: str | None = None,
        n: int | None = None,
        size: str | None = None,
        quality: str | None = None,
        response_format: str | None = None,
        output_format: str | None = None,
        output_compression: int | None = None,
        background: str | None = None,
        input_fidelity: str | None = None,
        moderation: str | None = None,
        user: str | None = None,
        extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        extra_query: Mapping[str, QueryValue] | None = None,
        timeout: float | None = None,
        max_retries: int | None = None,
    ) -> ImagesResponse:
        """Edit or extend one image, or up to 16 for the GPT image models (``POST /images/edits``).

        ``image`` is a path, bytes, a binary file, a ``(filename, bytes[, mime])``
        tuple, an :class:`~asyncimg.ImageRef`, or a list of those; ``mask``
        likewise (a PNG whose transparent areas mark what to edit).

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
        common: dict[str, Any] = {
            "prompt": prompt,
            "model": model if model is not None else self.model,
            "n": n,
            "size": size,
            "quality": quality,
            "output_format": output_format,
            "output_compression": output_compression,
            "background": background,
            "input_fidelity": input_fidelity,
            "user": user,
            "extra_body": extra_body,
        }
        params: EditParams | JsonEditParams
        if by_reference(image, mask):
            if response_format is not None:
                raise ValidationError(
                    "response_format",
                    "response_format is not taken by an edit of images by reference (ImageRef); "
                    "the GPT image models always return b64_json",
                )
            params = JsonEditParams.build(
                image_refs=await load_refs(image, "image"),
                mask=None if mask is None else await load_ref(mask, "mask"),
                moderation=moderation,
                **common,
            )
        else:
            if moderation is not None:
                raise ValidationError(
                    "moderation",
                    "moderation is taken only by an edit of images by reference (ImageRef, "
                    "sent as JSON), not by an upload of files",
                )
            params = EditParams.build(
                image=await load_images(image, "image"),  # type: ignore[arg-type]
                mask=None if mask is None else await load_image(mask, "mask"),  # type: ignore[arg-type]
                response_format=response_format,
                **common,
            )
        return await self._call(params, timeout, max_retries, extra_headers, extra_query)

    async def create_variation(
        self,
        image: ImageInput | ImageFile,
        *,
        model: str | None = None,
        n: int | None = None,
        size: str | None = None,
        response_format: str | None = None,
        user: str | None = None,
        extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        extra_query: Mapping[str, QueryValue] | None = None,
        timeout: float | None = None,
        max_retries: int | None = None,
    ) -> ImagesResponse:
        """Create variations of an image (``POST /images/variations``, dall-e-2).

        Raises:
            ValidationError: the image or a parameter breaks the model's rules.
            APIStatusError: the server refused (a subclass per status).
            APIConnectionError: no usable answer after the retries.
        """
        params = VariationParams.build(
            image=(await load_image(image, "image"),),
            model=model if model is not None else self.model,
            n=n,
            size=size,
            response_format=response_format,
            user=user,
            extra_body=extra_body,
        )
        return await self._call(params, timeout, max_retries, extra_headers, extra_query)

    def generate_many(
        self,
        /,
        prompts: PromptSource,
        *,
        ordered: bool = False,
        **params: Any,
    ) -> AsyncIterator[BatchItem]:
        """Generate images for many prompts, at most ``max_concurrency`` at once.

        ``prompts`` is an iterable or async iterable of strings or mappings
        (``{"prompt": ..., **params}``), pulled lazily. Yields one
        :class:`~asyncimg.BatchItem` per prompt as it finishes (in input order
        with ``ordered=True``); a failure is an item with ``.error``, never an
        exception that ends the batch. Leaving the loop early cancels the rest.

        Raises:
            ValidationError: ``params`` names a parameter generate does not take.
        """
        from ._batch import generate_many

        return generate_many(self, prompts, ordered=ordered, params=params)

    # -- results -----------------------------------------------------------------------

    async def download(self, image: Image, *, timeout: float | None = None) -> bytes:
        """The bytes of one result: ``b64_json`` decoded, or ``url`` fetched with retries.

        The API key is sent only to a URL on the API's own origin.

        Raises:
            APIResponseValidationError: the base64 does not decode, or the image has neither.
            APIStatusError: the URL answered an error (403 once it has expired).
            APIConnectionError: no usable answer after the retries.
        """
        if image.b64_json is not None:
            return decode_b64(image)
        if image.url is None:
            raise APIResponseValidationError(
                "the image has neither b64_json nor url", status_code=200
            )
        url = image.url
        headers = await self._request_headers({}) if _origin(url) == self._origin else {}
        return await self._with_retries(
            lambda: self._transport.request(
                "GET", url, headers=headers, timeout=timeout or self.timeout
            ),
            _body,
            images=0,
            max_retries=None,
            what=f"GET {without_query(url)}",
        )

    async def save(
        self,
        response: ImagesResponse,
        directory: str | os.PathLike[str],
        *,
        stem: str | None = None,
    ) -> list[Path]:
        """Write every image of ``response`` into ``directory``; returns the paths.

        Files are named ``{stem}-{i}.{ext}`` (the extension from the bytes; the
        stem defaults to the request id or the creation time and is made safe so
        that it cannot leave the directory). Each file is written to a temporary
        name and renamed, so a reader never sees a half-written image.

        Raises:
            APIResponseValidationError, APIStatusError, APIConnectionError: as :meth:`download`.
            OSError: the directory cannot be written.
        """
        from anyio import to_thread  # on first use: `import asyncimg` stays light

        folder = Path(directory)
        base = safe_stem(stem or response.request_id or f"image-{response.created or 0}")
        paths = []
        for i, image in enumerate(response.data):
            data = await self.download(image)
            ext = EXTENSIONS.get(sniff_mime(data) or "", response.output_format or "png")
            path = folder / f"{base}-{i}.{ext}"
            await to_thread.run_sync(write_atomic, path, data)
            paths.append(path)
        return paths

    # -- the engine --------------------------------------------------------------------

    async def _request_headers(self, extra: Mapping[str, str]) -> Mapping[str, str]:
        """The client's headers, a fresh bearer token when a provider is set, then ``extra``.

        Raises:
            ValidationError: the token provider gave no token (nothing is sent).
        """
        provider = self._token_provider
        if provider is None:
            return merge_headers(self._headers, extra) if extra else self._headers
        if inspect.iscoroutinefunction(provider) or inspect.iscoroutinefunction(
            type(provider).__call__  # an object whose __call__ is async
        ):
            token = await provider()  # type: ignore[misc]
        else:
            from anyio import to_thread  # on first use: `import asyncimg` stays light

            token = await to_thread.run_sync(provider)
            if inspect.isawaitable(token):
                token = await token
        if not isinstance(token, str) or not token:
            raise ValidationError(
                "token_provider", f"token_provider returned {type(token).__name__}, not a token"
            )
        return merge_headers(self._headers, {"Authorization": f"Bearer {token}"}, extra)

    def _get_gate(self) -> asyncio.Semaphore:
        # asyncio's semaphore: anyio's always yields to the loop once per acquire.
        gate = self._gate
        if gate is None:
            gate = self._gate = asyncio.Semaphore(self.max_concurrency)
        return gate

    async def _call(
        self,
        params: Params,
        timeout: float | None,
        max_retries: int | None,
        extra_headers: Mapping[str, str] | None = None,
        extra_query: Mapping[str, QueryValue] | None = None,
    ) -> ImagesResponse:
        url = request_url(
            self._base,
            params.path,
            self._base_query,
            self._default_query,
            check_query(extra_query, "extra_query"),
            model=params.model,
        )
        extra = check_headers(extra_headers, "extra_headers")
        json_body: dict[str, Any] | None = None
        form = None
        if isinstance(params, (GenerateParams, JsonEditParams)):
            json_body = params.to_json()
        else:
            form = params.to_form()
        attempt_timeout = timeout if timeout is not None else self.timeout

        async def attempt() -> RawResponse:
            return await self._transport.request(
                "POST",
                url,
                headers=await self._request_headers(extra),
                json_body=json_body,
                form=form,
                timeout=attempt_timeout,
                decode_json=True,
            )

        return await self._with_retries(
            attempt, parse_images_response, images=params.images, max_retries=max_retries,
            what=f"POST {params.path}",
        )

    async def _with_retries(
        self,
        send: Callable[[], Awaitable[RawResponse]],
        parse: Callable[[RawResponse], _T],
        *,
        images: int,
        max_retries: int | None,
        what: str,
    ) -> _T:
        policy = self.retry_policy
        if max_retries is not None:
            if not isinstance(max_retries, int) or max_retries < 0:
                raise ValidationError("max_retries", "max_retries must be an integer >= 0")
            policy = attrs.evolve(policy, max_retries=max_retries)
        attempt = 0
        while True:
            attempt += 1
            started = time.monotonic()
            try:
                raw = await self._attempt(send, images)
                logger.debug(
                    "%s attempt %d: %d in %.3fs (request id %s)",
                    what, attempt, raw.status, time.monotonic() - started, raw.request_id,
                )
                return parse(raw)
            except APIError as exc:
                decision = decide(exc, attempt, policy, now=time.time())
                status = getattr(exc, "status_code", None)
                count_status(status)
                logger.debug(
                    "%s attempt %d: %s %s (request id %s)",
                    what, attempt, status or type(exc).__name__, exc.message, exc.request_id,
                )
                if not decision.retry:
                    raise
                logger.info(
                    "%s: retrying after attempt %d (%s) in %.2fs",
                    what, attempt, decision.reason, decision.wait,
                )
                if decision.pause_all:
                    self.limiter.pause(decision.wait)
                else:
                    await asyncio.sleep(decision.wait)

    async def _attempt(
        self, send: Callable[[], Awaitable[RawResponse]], images: int
    ) -> RawResponse:
        if images == 0:
            return await send()
        async with self._get_gate():
            # The slot first, then the images: a permit is stamped the moment it
            # is granted, so no budget sits idle waiting for a slot and a pause
            # that begins meanwhile holds back every request not yet sent.
            permit = await self.limiter.acquire(images)
            count_attempt(images)
            try:
                permit.stamp()
                raw = await send()
            except APIError as exc:
                headers = getattr(exc, "headers", None)
                if headers:
                    self.limiter.observe_headers(headers)
                raise
            finally:
                permit.refund()
            self.limiter.observe_headers(raw.headers)
            return raw


def parse_images_response(raw: RawResponse) -> ImagesResponse:
    """Turn a successful, decoded response into an :class:`ImagesResponse`.

    Raises:
        APIResponseValidationError: the body is not an images response.
    """
    return ImagesResponse.from_json(raw.json, request_id=raw.request_id, status_code=raw.status)


def _body(raw: RawResponse) -> bytes:
    return raw.body


def decode_b64(image: Image, index: int | None = None) -> bytes:
    """Decode an image's ``b64_json``.

    Raises:
        APIResponseValidationError: the text is not valid base64.
    """
    text = image.b64_json or ""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        name = "image" if index is None else f"image {index}"
        raise APIResponseValidationError(
            f"{name}: b64_json is not valid base64 ({len(text)} characters)", status_code=200
        ) from None


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory.

    Raises:
        OSError: the file cannot be written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise

