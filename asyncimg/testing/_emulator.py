"""The emulator: an aiohttp.web server that answers like the OpenAI Images API.

Endpoints (under ``base_url``, which ends in ``/v1``):

* ``POST /v1/images/generations`` (JSON), ``POST /v1/images/edits`` and
  ``POST /v1/images/variations`` (multipart: ``image`` or ``image[]``,
  ``mask``, text fields); with ``stream: true`` (GPT image models) a generation
  or an edit answers server-sent events: partial images, then the completed
  one (:mod:`asyncimg.testing._streaming`, ``Fault.drop_stream``);
* ``POST /v1/images/edits`` as ``application/json`` too: images by reference
  (``images: [{"image_url"} | {"file_id"}]``, see :mod:`._refs`);
* with ``azure=True``, the Azure OpenAI paths instead
  (``/openai/deployments/<name>/images/...?api-version=``, key as ``api-key``,
  see :mod:`._azure`);
* ``/v1/files`` and ``/v1/batches``: the Files and Batch APIs, at a pace tests
  set (:mod:`asyncimg.testing._batches`, ``Emulator.batches``);
* ``GET /blobs/<name>.png?se=...`` serves ``url`` results. Like the API's
  blob store it is another origin (a second port, ``blob_base_url``) and needs
  no key. An expired url answers 403 with an Azure-like XML ``AuthenticationFailed``
  error; an unknown one 404 ``BlobNotFound``.

Each request is judged in this order: a scripted :class:`Fault` that replaces
the answer; the key (401); the content type and body (400); the parameters,
with the client's own rules (:func:`asyncimg._params.from_wire`, 400); the
images-per-window limit (429); the content policy (a prompt containing
:data:`CONTENT_POLICY_MARKER` gives 400 ``content_policy_violation`` for the
dall-e models, ``moderation_blocked`` for the GPT image models). A request that
passes the limit is recorded in ``arrivals`` and spends budget, even if the
content policy then refuses it. A request is counted when its body has been
read, as a real server must (the model, and so the limit, is in the body).

The model that answers a request without ``model`` follows the spec's
defaults: dall-e-2 for generations and variations, gpt-image-1.5 for edits;
but a parameter only one family takes picks it (``style``: dall-e-3;
``response_format``: dall-e-2; ``output_format``, ``output_compression``,
``background``, ``moderation``, ``input_fidelity`` or a quality of
low/medium/high: gpt-image-1.5). The rules applied are those of the model
that answers: a request without ``model`` gets the default model's rules, as at
the API (a generation of 300x300, of n=11 or of a 3000-character prompt, or a
non-square variation, is refused as dall-e-2 refuses it).

Images are real PNGs of the requested size (``auto``: 1024x1024), RGBA when a
transparent background is asked for. With Pillow installed, ``output_format``
``jpeg`` and ``webp`` give real JPEG and WebP bytes (``output_compression`` as
their quality), edits keep the input outside the mask and paint inside it, and
variations are derived from the input (:mod:`asyncimg.testing._pictures`);
without Pillow those are PNGs too, and the response still reports the format
asked for.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import collections
import contextlib
import datetime
import hashlib
import json
import math
import random
import re
import secrets
import signal
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NoReturn, overload

import attrs
from aiohttp import BodyPartReader, web

from .._exceptions import ValidationError
from .._files import ImageFile, sniff_mime
from .._params import (
    EditParams,
    Endpoint,
    GenerateParams,
    JsonEditParams,
    Params,
    VariationParams,
    from_wire,
)
from .._validation import validate
from ._azure import azure_content_filter, azure_refusal, azure_route
from ._batches import BatchAPI
from ._faults import Fault, path_matches
from ._headers import HeaderStyle, styled_headers
from ._pictures import Recipe
from ._png import MAX_PIXELS
from ._refs import RefError, RefResolver
from ._streaming import sse_events, write_events

__all__ = [
    "CONTENT_POLICY_MARKER",
    "Emulator",
    "Journal",
    "JournalEntry",
    "UploadedFile",
    "format_duration",
    "mask_key",
    "serve",
]

CONTENT_POLICY_MARKER = "forbidden-content"
"""A prompt containing this (any case) is refused by the emulator's content policy."""

OPENAI_VERSION = "2020-10-01"
_GPT_DEFAULT = "gpt-image-1.5"
_GPT_ONLY = ("output_format", "output_compression", "background", "moderation", "input_fidelity")
_GPT_QUALITIES = ("low", "medium", "high")
_DEFAULT_SIZE = (1024, 1024)
_SIZE_RE = re.compile(r"^([0-9]+)x([0-9]+)$")
_MAX_BODY = 256 * 1024 * 1024
_ROUTES: Mapping[str, Endpoint] = {
    "/v1/images/generations": "generate",
    "/v1/images/edits": "edit",
    "/v1/images/variations": "variation",
}
# Output tokens of a 1024x1024 image by quality (gpt-image-1's published table).
_OUTPUT_TOKENS = {"low": 272, "medium": 1056, "high": 4160}
_BAD_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
    "sent was not valid JSON. If you have trouble figuring out how to fix this, please "
    "contact us through our help center at help.openai.com.)"
)
_NGINX = (
    "<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
    "<center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)
_BLOB_ERROR = (
    '<?xml version="1.0" encoding="utf-8"?>'
    "<Error><Code>{code}</Code><Message>{msg}</Message></Error>"
)
_DEFAULT_ERRORS: Mapping[int, tuple[str, str, str | None]] = {
    400: ("Invalid request.", "invalid_request_error", None),
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    403: ("You are not allowed to make this request.", "invalid_request_error", None),
    404: ("The requested resource was not found.", "invalid_request_error", None),
    408: ("Request timed out.", "timeout", None),
    409: ("The request conflicts with another request.", "invalid_request_error", None),
    422: ("The request could not be processed.", "invalid_request_error", None),
    429: (
        "Rate limit reached for images per min. Please try again later.",
        "requests",
        "rate_limit_exceeded",
    ),
    500: (
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
    ),
    502: ("Bad gateway.", "server_error", None),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
    504: ("Gateway timeout.", "server_error", None),
}
_QUOTA_ERRORS: Mapping[str, str] = {
    "insufficient_quota": (
        "You exceeded your current quota, please check your plan and billing details. For more "
        "information on this error, read the docs: "
        "https://platform.openai.com/docs/guides/error-codes/api-errors."
    ),
    "billing_hard_limit_reached": "Billing hard limit has been reached.",
}


def mask_key(key: str) -> str:
    """Mask an API key as the API does in its errors: the first 3 and last 4 characters.

    Keys of 8 characters or fewer are masked entirely.
    """
    if len(key) <= 8:
        return "*" * len(key)
    return f"{key[:3]}{'*' * min(len(key) - 7, 20)}{key[-4:]}"


def format_duration(seconds: float) -> str:
    """A duration as the API's ``x-ratelimit-reset-*`` headers write it.

    ``0.02`` -> ``20ms``, ``1`` -> ``1s``, ``1.5`` -> ``1.5s``, ``360`` -> ``6m0s``,
    ``3725`` -> ``1h2m5s``.
    """
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, math.ceil(seconds * 1000))}ms"
    millis = math.ceil(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    if minutes:
        return f"{minutes}m{secs}"
    return secs


def _parse_rate(value: object) -> tuple[int, float] | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        images, per = value, 60.0
    elif isinstance(value, tuple) and len(value) == 2:
        images, per = value
    elif hasattr(value, "images") and hasattr(value, "per"):
        images, per = value.images, value.per
    else:
        raise TypeError(
            "images_per_minute must be an int, an (images, per_seconds) pair or a RateLimit, "
            f"not {type(value).__name__}"
        )
    if not isinstance(images, int) or images < 1 or not float(per) > 0:
        raise ValueError(f"a rate limit needs images >= 1 and per > 0, not ({images}, {per})")
    return images, float(per)


# ------------------------------------------------------------------- journal


@attrs.frozen
class UploadedFile:
    """A file part of a multipart request, as the emulator received it."""

    field: str
    filename: str | None
    mime: str
    """The MIME type sniffed from the bytes, else the part's own Content-Type."""
    size: int


@attrs.frozen
class JournalEntry:
    """One request the emulator received, and what it answered.

    ``headers`` has ``Authorization`` and ``api-key`` masked (:func:`mask_key`);
    ``json`` is the decoded body of a generation or a JSON edit (None otherwise
    or when it was not JSON);
    ``fields`` are a form's text fields; ``status`` is None when no status was
    sent (a dropped connection, or the client went away first); ``fault`` names
    the scripted fault applied, if any; ``time`` is the emulator's clock at
    arrival.
    """

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    json: Any
    fields: Mapping[str, str]
    files: tuple[UploadedFile, ...]
    status: int | None
    time: float
    request_id: str
    fault: str | None = None
    images: int = 0
    """Images the request asked for (0 when it was not a valid images request)."""
    events: int | None = None
    """Server-sent events written (None: not a streamed answer)."""


class Journal(Sequence[JournalEntry]):
    """The requests the emulator received, in the order their answers finished.

    With ``maxlen`` it keeps only the latest ``maxlen`` (a long-running emulator
    stays small); None keeps every entry.
    """

    def __init__(self, maxlen: int | None = None) -> None:
        self._entries: collections.deque[JournalEntry] = collections.deque(maxlen=maxlen)

    def append(self, entry: JournalEntry) -> None:
        """Record one entry (the emulator does this)."""
        self._entries.append(entry)

    def clear(self) -> None:
        """Forget every entry."""
        self._entries.clear()

    @overload
    def __getitem__(self, index: int) -> JournalEntry: ...

    @overload
    def __getitem__(self, index: slice) -> list[JournalEntry]: ...

    def __getitem__(self, index: int | slice) -> JournalEntry | list[JournalEntry]:
        if isinstance(index, slice):
            return list(self._entries)[index]
        return self._entries[index]

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[JournalEntry]:
        return iter(list(self._entries))

    def __repr__(self) -> str:
        return f"<Journal of {len(self._entries)} requests>"

    def filter(
        self,
        path: str | None = None,
        *,
        method: str | None = None,
        status: int | None = None,
    ) -> list[JournalEntry]:
        """The entries for ``path`` (an endpoint name, a path, or a prefix ending in ``/``).

        With ``path`` None every entry matches; ``method`` and ``status`` narrow it.
        """
        return [
            e
            for e in self._entries
            if (path is None or path_matches(path, e.path))
            and (method is None or e.method == method.upper())
            and (status is None or e.status == status)
        ]


# ------------------------------------------------------------------ answers


@attrs.define
class _Answer:
    status: int
    body: bytes
    headers: dict[str, str] = attrs.field(factory=dict)
    content_type: str = "application/json"
    events: tuple[bytes, ...] | None = None
    """A streamed answer's server-sent events (``body`` is then empty)."""


class _Refusal(Exception):
    """Raised inside request handling to answer an error at once."""

    def __init__(self, answer: _Answer) -> None:
        super().__init__(answer.status)
        self.answer = answer


class _Closing(Exception):
    """The emulator is closing: the handler drops its connection."""


def _error_body(message: str, type_: str, param: str | None, code: str | None) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    ).encode()


def _refuse(
    status: int,
    message: str,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> NoReturn:
    raise _Refusal(_Answer(status, _error_body(message, type_, param, code), dict(headers or {})))


def _fault_answer(fault: Fault) -> _Answer:
    status = fault.status_code
    headers = dict(fault.headers)
    if fault.retry_after is not None:
        headers.setdefault("Retry-After", str(max(0, math.ceil(fault.retry_after))))
        headers.setdefault("retry-after-ms", str(round(fault.retry_after * 1000)))
    if fault.should_retry is not None:
        headers.setdefault("x-should-retry", "true" if fault.should_retry else "false")
    if fault.as_html:
        reason = web.Response(status=status).reason
        page = _NGINX.format(status=status, reason=reason)
        return _Answer(status, page.encode(), headers, "text/html")
    body = fault.body
    if isinstance(body, Mapping):
        return _Answer(status, json.dumps(body).encode(), headers)
    if isinstance(body, str):
        body = body.encode()
    if isinstance(body, bytes):
        content_type = "application/json" if body[:1] in (b"{", b"[") else "text/plain"
        return _Answer(status, body, headers, content_type)
    message, type_, code = _DEFAULT_ERRORS.get(
        status,
        (
            f"HTTP {status}",
            "server_error" if status >= 500 else "invalid_request_error",
            None,
        ),
    )
    if fault.code is not None:
        code = fault.code
        if code in _QUOTA_ERRORS:
            message, type_ = _QUOTA_ERRORS[code], code
    if fault.message is not None:
        message = fault.message
    return _Answer(status, _error_body(message, type_, None, code), headers)


def _effective_model(endpoint: Endpoint, params: Params) -> str:
    if params.model is not None:
        return params.model
    gpt_quality = getattr(params, "quality", None) in _GPT_QUALITIES
    named = [getattr(params, k, None) for k in _GPT_ONLY]
    named += [params.extra_body.get(k) for k in _GPT_ONLY]
    if gpt_quality or any(value is not None for value in named):
        return _GPT_DEFAULT
    if getattr(params, "style", None) is not None:
        return "dall-e-3"
    if getattr(params, "response_format", None) is not None:
        return "dall-e-2"
    return _GPT_DEFAULT if endpoint == "edit" else "dall-e-2"


def _is_gpt(model: str) -> bool:
    return model.startswith(("gpt-image", "chatgpt-image"))


def _size_of(size: str | None) -> tuple[int, int]:
    if size is None or size == "auto":
        return _DEFAULT_SIZE
    found = _SIZE_RE.match(size)
    if not found:
        _refuse(400, f"Invalid size {size!r}.", param="size")
    width, height = int(found.group(1)), int(found.group(2))
    if width < 1 or height < 1 or width * height > MAX_PIXELS:
        _refuse(
            400,
            f"size {size!r} is larger than the emulator draws (at most {MAX_PIXELS} pixels).",
            param="size",
        )
    return width, height


def _text_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


# ------------------------------------------------------------------ emulator


class Emulator:
    """A local server that answers like the OpenAI Images API (see the module doc).

    Use it as ``async with Emulator(...) as emu:`` (or ``await emu.start()`` and
    ``await emu.close()``) and point a client at ``emu.base_url``.

    Args:
        api_key: the key to expect as ``Authorization: Bearer``; None accepts
            any request, with or without a key.
        host: where to listen (``127.0.0.1``).
        port: the API's port; 0 picks a free one. Url results are served on a
            second, always free, port (another origin, like the real blob store).
        images_per_minute: None for no limit; an int (images per 60 s), an
            ``(images, per_seconds)`` pair, or anything with ``images`` and
            ``per`` (a :class:`asyncimg.RateLimit`) for a scaled window.
        url_ttl: seconds a ``url`` result stays downloadable (the API's 60 minutes).
        latency: seconds to wait before each answer; may be changed at any time.
        latency_sigma: 0 for a fixed ``latency``; else each answer waits a lognormal
            time whose median is ``latency`` (``latency * exp(N(0, sigma))``), the
            spread of real image models.
        download_latency: seconds before each ``url`` download answers (real blob
            stores answer in milliseconds, whatever the model took).
        clock: a ``() -> float`` in seconds for url expiry, the rate window,
            ``arrivals`` and the journal (``time.monotonic`` by default); inject
            one to test expiry without sleeping.
        azure: serve the Azure OpenAI paths under :attr:`endpoint` instead of
            ``/v1``, checking ``api-version`` and the key as ``api-key``.
        journal_size: the journal and ``arrivals`` keep the latest this many
            requests (None: all, which grows without bound).
        max_urls: url results kept downloadable; beyond it the oldest are
            forgotten (answering 404 ``BlobNotFound``). Memory stays flat however
            long the emulator runs.
        header_style: how response headers are written (see
            :mod:`asyncimg.testing._headers`): ``"openai"`` (lower case, with
            ``retry-after-ms``), ``"canonical"`` (capitalised names,
            ``Retry-After`` alone) or ``"http-date"`` (``Retry-After`` as a date).

    Attributes (for tests): ``journal`` (:class:`Journal`), ``arrivals``
    (``(time, images)`` of every request that passed the limit), ``latency``,
    ``url_ttl``, ``rate_limit`` (``(images, per)`` or None); the methods
    :meth:`add_fault`, :meth:`requests`, :meth:`max_images_in_window`,
    :meth:`reset`.

    Raises:
        TypeError, ValueError: ``images_per_minute`` cannot be read, or
            ``header_style`` is unknown.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        images_per_minute: object = None,
        url_ttl: float = 3600.0,
        latency: float = 0.0,
        latency_sigma: float = 0.0,
        download_latency: float = 0.0,
        clock: Callable[[], float] | None = None,
        azure: bool = False,
        journal_size: int | None = 10_000,
        max_urls: int = 10_000,
        header_style: HeaderStyle = "openai",
    ) -> None:
        if journal_size is not None and journal_size < 1:
            raise ValueError(f"journal_size must be >= 1 or None, not {journal_size}")
        if max_urls < 1:
            raise ValueError(f"max_urls must be >= 1, not {max_urls}")
        styled_headers({}, header_style, 0.0)  # refuses an unknown style now
        self.header_style: HeaderStyle = header_style
        self.api_key = api_key
        self.azure = azure
        self.host = host
        self.port = port
        self.rate_limit: tuple[int, float] | None = _parse_rate(images_per_minute)
        self.url_ttl = url_ttl
        self.latency = latency
        self.latency_sigma = latency_sigma
        self.download_latency = download_latency
        self._rng = random.Random()
        self.clock: Callable[[], float] = clock or time.monotonic
        self.journal = Journal(journal_size)
        self.journal_size = journal_size
        self.arrivals: list[tuple[float, int]] = []
        """``(time, images)`` of the requests that passed the rate limit, in order (the
        time its body was read; the latest ``journal_size`` or more: trimmed when it
        reaches twice that)."""
        self.max_urls = max_urls
        self._window: collections.deque[tuple[float, int]] = collections.deque()
        self._faults: list[list[Any]] = []  # [fault, uses left]
        # Insertion-ordered, so the oldest url is the first to go.
        self._blobs: dict[str, tuple[Recipe, float]] = {}
        self.batches = BatchAPI(self._render_batch_line, self.clock)
        """The Files and Batch APIs (:class:`BatchAPI`): set ``batches.pace`` to steer batches."""
        self._refs = RefResolver(self._own_blob, self.batches.file_data)
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()
        self._api_port: int | None = None
        self._blob_port: int | None = None

    def __repr__(self) -> str:
        state = self.base_url if self._runner is not None else "not started"
        return f"<Emulator {state}>"

    # -------------------------------------------------------------- lifecycle

    @property
    def base_url(self) -> str:
        """The API's base url, ``http://HOST:PORT/v1``.

        Raises:
            RuntimeError: the emulator is not started.
        """
        if self._api_port is None:
            raise RuntimeError("the emulator is not started")
        return f"http://{self._url_host}:{self._api_port}/v1"

    @property
    def endpoint(self) -> str:
        """The origin, ``http://HOST:PORT``: an Azure mode emulator's ``endpoint=``.

        Raises:
            RuntimeError: the emulator is not started.
        """
        return self.base_url[: -len("/v1")]

    @property
    def blob_base_url(self) -> str:
        """Where ``url`` results are served: ``http://HOST:OTHER_PORT`` (another origin).

        Raises:
            RuntimeError: the emulator is not started.
        """
        if self._blob_port is None:
            raise RuntimeError("the emulator is not started")
        return f"http://{self._url_host}:{self._blob_port}"

    @property
    def _url_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=_MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def start(self) -> None:
        """Start listening (on ``port``, and on a free port for url results).

        Raises:
            RuntimeError: already started.
            OSError: the port cannot be bound.
        """
        if self._runner is not None:
            raise RuntimeError("the emulator is already started")
        self._closing = asyncio.Event()
        runner = web.AppRunner(
            self._make_app(), access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await runner.setup()
        try:
            api = web.TCPSite(runner, self.host, self.port)
            await api.start()
            blobs = web.TCPSite(runner, self.host, 0)
            await blobs.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._api_port = self._bound_port(api)
        self._blob_port = self._bound_port(blobs)

    @staticmethod
    def _bound_port(site: web.TCPSite) -> int:
        server = site._server
        sockets = getattr(server, "sockets", None) or ()
        for sock in sockets:
            port: int = sock.getsockname()[1]
            return port
        raise RuntimeError("the emulator's socket is not bound")

    async def close(self) -> None:
        """Stop listening; answers still waiting (delays, latency) drop their connections.

        Safe to call twice.
        """
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._closing.set()
        await runner.cleanup()
        self._api_port = self._blob_port = None

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------------------------ test helpers

    def add_fault(self, *faults: Fault) -> None:
        """Queue faults; each request uses the first queued fault that matches its path."""
        for fault in faults:
            if not isinstance(fault, Fault):
                raise TypeError(f"expected a Fault, not {type(fault).__name__}")
            self._faults.append([fault, fault.times])

    @property
    def faults(self) -> list[Fault]:
        """The faults still queued (each once, however many uses it has left)."""
        return [fault for fault, _left in self._faults]

    def add_file(self, data: bytes, filename: str = "upload.png", purpose: str = "vision") -> str:
        """Keep ``data`` as if uploaded with ``POST /v1/files``; returns its ``file_id``.

        A JSON edit may then name it as ``ImageRef(file_id=...)``.
        """
        return self.batches.add_file(data, filename, purpose)

    def clear_faults(self) -> None:
        """Forget every queued fault."""
        self._faults.clear()

    def reset(self) -> None:
        """Forget the journal, the arrivals, the rate window, the faults and the urls."""
        self.journal.clear()
        self.arrivals.clear()
        self._window.clear()
        self._faults.clear()
        self._blobs.clear()
        self.batches.reset()

    def requests(
        self,
        path: str | None = None,
        *,
        method: str | None = None,
        status: int | None = None,
    ) -> list[JournalEntry]:
        """Journal entries for ``path`` (``"generate"``, ``"/v1/images/edits"``, ...).

        See :meth:`Journal.filter`.
        """
        return self.journal.filter(path, method=method, status=status)

    def max_images_in_window(self, per: float | None = None) -> int:
        """The most images accepted in any window of ``per`` seconds (the limit's by default).

        A window is half-open, ``[t, t + per)``, as the emulator's own limit counts.

        Raises:
            ValueError: ``per`` is not given and no limit is configured.
        """
        if per is None:
            if self.rate_limit is None:
                raise ValueError("give per= (no rate limit is configured)")
            per = self.rate_limit[1]
        times = [t for t, _n in self.arrivals]
        counts = [n for _t, n in self.arrivals]
        order = sorted(range(len(times)), key=times.__getitem__)
        times = [times[i] for i in order]
        counts = [counts[i] for i in order]
        prefix = [0]
        for n in counts:
            prefix.append(prefix[-1] + n)
        best = 0
        for i, start in enumerate(times):
            end = bisect.bisect_left(times, start + per)
            best = max(best, prefix[end] - prefix[i])
        return best

    # ---------------------------------------------------------------- handling

    def _take_fault(self, path: str) -> Fault | None:
        for slot in self._faults:
            fault, left = slot
            if path_matches(fault.path, path):
                if left <= 1:
                    self._faults.remove(slot)
                else:
                    slot[1] = left - 1
                return fault  # type: ignore[no-any-return]
        return None

    async def _sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        try:
            await asyncio.wait_for(self._closing.wait(), seconds)
        except asyncio.TimeoutError:
            return
        raise _Closing

    def _latency_for(self, path: str) -> float:
        if path.startswith("/blobs/"):
            return self.download_latency
        if self.latency_sigma > 0 and self.latency > 0:
            return self.latency * math.exp(self._rng.gauss(0.0, self.latency_sigma))
        return self.latency

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        arrived = self.clock()
        request_id = f"req_{secrets.token_hex(16)}"
        record: dict[str, Any] = {
            "json": None,
            "fields": {},
            "files": (),
            "status": None,
            "fault": None,
            "images": 0,
        }
        try:
            answer, fault = await self._judge(request, arrived, record)
            record["fault"] = fault.kind if fault is not None else None
            if request.path.startswith(("/v1/", "/openai/")):
                for name, value in self._rate_headers(arrived).items():
                    answer.headers.setdefault(name, value)
            answer.headers["x-request-id"] = request_id
            answer.headers["openai-version"] = OPENAI_VERSION
            await self._sleep(self._latency_for(request.path))
            answer.headers["openai-processing-ms"] = str(
                round((time.perf_counter() - started) * 1000)
            )
            return await self._deliver(request, answer, fault, record)
        except _Closing:
            self._drop(request)
            return web.Response(status=503)
        finally:
            self.journal.append(
                JournalEntry(
                    method=request.method,
                    path=request.path,
                    query=dict(request.query),
                    headers=self._redacted(request.headers),
                    time=arrived,
                    request_id=request_id,
                    **record,
                )
            )

    @staticmethod
    def _redacted(headers: Mapping[str, str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, value in headers.items():
            if name.lower() in ("authorization", "api-key"):
                scheme, _, token = value.partition(" ")
                value = f"{scheme} {mask_key(token)}" if token else mask_key(value)
            out[name] = value
        return out

    @staticmethod
    def _drop(request: web.Request) -> None:
        transport = request.transport
        if transport is not None:
            transport.close()

    async def _deliver(
        self,
        request: web.Request,
        answer: _Answer,
        fault: Fault | None,
        record: dict[str, Any],
    ) -> web.StreamResponse:
        kind = fault.kind if fault is not None else None
        if kind == "drop":
            self._drop(request)
            return web.Response(status=answer.status)
        if kind == "delay":
            assert fault is not None
            await self._sleep(fault.seconds)
        if answer.events is not None:
            stream = web.StreamResponse(status=answer.status, headers=answer.headers)
            stream.content_type = answer.content_type
            try:
                await stream.prepare(request)
                record["status"] = answer.status
                await write_events(request, stream, answer.events, fault, record, self._sleep)
            except ConnectionError:
                pass  # the client went away
            return stream
        body = answer.body
        if kind == "truncated":
            body = body[: len(body) // 2]
        headers = styled_headers(answer.headers, self.header_style, time.time())
        if not any(name.lower() == "content-type" for name in headers):
            headers["Content-Type"] = answer.content_type
        if kind not in ("drop_mid_body", "trickle"):
            record["status"] = answer.status
            return web.Response(status=answer.status, body=body, headers=headers)
        assert fault is not None
        response = web.StreamResponse(status=answer.status, headers=headers)
        response.content_length = len(body)
        try:
            await response.prepare(request)
            record["status"] = answer.status
            if kind == "drop_mid_body":
                await response.write(body[: len(body) // 2])
                self._drop(request)
                return response
            step = max(1, math.ceil(len(body) / fault.chunks))
            for start in range(0, len(body), step):
                await self._sleep(fault.seconds)
                await response.write(body[start : start + step])
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away
        return response

    async def _judge(
        self, request: web.Request, arrived: float, record: dict[str, Any]
    ) -> tuple[_Answer, Fault | None]:
        """Read the request into ``record`` and decide the answer (and the fault, if any)."""
        endpoint = self._endpoint_of(request.path) if request.method == "POST" else None
        fields: dict[str, Any] = {}
        files: dict[str, tuple[ImageFile, ...]] = {}
        read_error: _Answer | None = None
        try:
            if endpoint is not None:
                fields, files = await self._read_body(request, endpoint, record)
        except _Refusal as refusal:
            read_error = refusal.answer
        fault = self._take_fault(request.path)
        if fault is not None and fault.kind in ("status", "drop"):
            return _fault_answer(fault), fault
        try:
            if request.path.startswith("/blobs/") and request.method in ("GET", "HEAD"):
                return self._blob(request.path[len("/blobs/") :], arrived), fault
            if request.path.startswith(("/v1/files", "/v1/batches")):
                self._check_key(request)
                status, body, content_type = await self.batches.handle(request)
                return _Answer(status, body, {}, content_type), fault
            if endpoint is None:
                _refuse(404, f"Invalid URL ({request.method} {request.path})")
            self._check_key(request)
            if read_error is not None:
                return read_error, fault
            # Counted once the body is in, as a real server must (the model is in it).
            as_json = endpoint == "edit" and record["json"] is not None
            answer = self._answer(endpoint, fields, files, self.clock(), record, as_json=as_json)
            return answer, fault
        except _Refusal as refusal:
            return refusal.answer, fault

    async def _read_body(
        self, request: web.Request, endpoint: Endpoint, record: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, tuple[ImageFile, ...]]]:
        content_type = request.content_type
        if endpoint == "generate" or (endpoint == "edit" and content_type == "application/json"):
            raw = await request.read()
            if content_type != "application/json":
                _refuse(
                    400,
                    f"Invalid Content-Type header ({content_type or 'none'}), expected "
                    "application/json.",
                )
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                _refuse(400, _BAD_JSON)
            record["json"] = body
            if not isinstance(body, dict):
                _refuse(400, _BAD_JSON)
            return body, {}
        if content_type != "multipart/form-data":
            await request.read()
            _refuse(
                400,
                f"Invalid Content-Type header ({content_type or 'none'}), expected "
                "multipart/form-data or application/json.",
            )
        fields: dict[str, Any] = {}
        found: dict[str, list[ImageFile]] = {}
        uploads: list[UploadedFile] = []
        try:
            # Parts are read into memory (no temporary files left behind when a
            # client gives up mid-upload and the handler is cancelled).
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader) or part.name is None:
                    continue
                data = bytes(await part.read(decode=True))
                if part.filename is None:
                    fields[part.name] = data.decode("utf-8", "replace")
                    continue
                declared = part.headers.get("Content-Type")
                mime = sniff_mime(data) or declared or "application/octet-stream"
                uploads.append(UploadedFile(part.name, part.filename, mime, len(data)))
                key = "image[]" if part.name.startswith("image[") else part.name
                found.setdefault(key, []).append(ImageFile(part.filename or "upload", data, mime))
        except (ValueError, AssertionError) as exc:
            _refuse(400, f"Could not parse the multipart form: {exc}")
        record["fields"] = dict(fields)
        record["files"] = tuple(uploads)
        return fields, {k: tuple(v) for k, v in found.items()}

    def _endpoint_of(self, path: str) -> Endpoint | None:
        if self.azure:
            route = azure_route(path)
            return None if route is None else route[1]
        return _ROUTES.get(path)

    def _check_key(self, request: web.Request) -> None:
        if self.azure:
            refusal = azure_refusal(request.headers, request.query, self.api_key)
            if refusal is not None:
                status, body = refusal
                raise _Refusal(_Answer(status, json.dumps(body).encode()))
            return
        if self.api_key is None:
            return
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            _refuse(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), "
                "or as the password field (with blank username) if you're accessing the API "
                "from your browser and are prompted for a username and password. You can obtain "
                "an API key from https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            )
        if not secrets.compare_digest(token.encode(), self.api_key.encode()):
            _refuse(
                401,
                f"Incorrect API key provided: {mask_key(token)}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            )

    def _own_blob(self, url: str) -> bytes | None:
        """A url result's bytes for a JSON edit; b"" when expired or unknown; None if not ours."""
        prefix = f"{self.blob_base_url}/blobs/"
        if not url.startswith(prefix):
            return None
        answer = self._blob(url[len(prefix) :].split("?", 1)[0], self.clock())
        return answer.body if answer.status == 200 else b""

    def _blob(self, name: str, now: float) -> _Answer:
        stored = self._blobs.get(name)
        xml = _BLOB_ERROR
        if stored is None:
            body = xml.format(code="BlobNotFound", msg="The specified blob does not exist.")
            return _Answer(404, body.encode(), {}, "application/xml")
        recipe, expires = stored
        if now >= expires:
            body = xml.format(
                code="AuthenticationFailed",
                msg="Server failed to authenticate the request. Signed expiry time has passed.",
            )
            return _Answer(403, body.encode(), {}, "application/xml")
        data = recipe.render()
        return _Answer(200, data, {}, sniff_mime(data) or "image/png")

    def _rate_headers(self, now: float) -> dict[str, str]:
        if self.rate_limit is None:
            return {}
        limit, per = self.rate_limit
        window = self._window
        while window and window[0][0] <= now - per:
            window.popleft()
        used = sum(n for _t, n in window)
        reset = window[-1][0] + per - now if window else 0.0
        return {
            "x-ratelimit-limit-images": str(limit),
            "x-ratelimit-remaining-images": str(max(0, limit - used)),
            "x-ratelimit-reset-images": format_duration(reset),
        }

    def _admit(self, images: int, now: float) -> dict[str, str]:
        """Spend ``images`` from the window, or refuse with 429; give the rate headers."""
        headers = self._rate_headers(now)
        if self.rate_limit is not None:
            limit, per = self.rate_limit
            used = sum(n for _t, n in self._window)
            if used + images > limit:
                wait = per
                if images <= limit:
                    freed = 0
                    for t, n in self._window:
                        freed += n
                        if used - freed + images <= limit:
                            wait = t + per - now
                            break
                wait = max(wait, 0.001)
                headers["Retry-After"] = str(max(1, math.ceil(wait)))
                headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
                _refuse(
                    429,
                    f"Rate limit reached for images per min: Limit {limit}, Used {used}, "
                    f"Requested {images}. Please try again in {format_duration(wait)}.",
                    type_="requests",
                    code="rate_limit_exceeded",
                    headers=headers,
                )
            self._window.append((now, images))
        self.arrivals.append((now, images))
        if self.journal_size is not None and len(self.arrivals) >= 2 * self.journal_size:
            del self.arrivals[: -self.journal_size]
        return self._rate_headers(now)

    def _answer(
        self,
        endpoint: Endpoint,
        fields: Mapping[str, Any],
        files: Mapping[str, tuple[ImageFile, ...]],
        now: float,
        record: dict[str, Any],
        *,
        as_json: bool = False,
        admit: bool = True,
    ) -> _Answer:
        try:
            params = from_wire(endpoint, fields, files, as_json=as_json)
        except ValidationError as exc:
            _refuse(400, str(exc), param=exc.param)
        inputs = self._inputs(params)
        model = _effective_model(endpoint, params)
        if params.model is None:  # the default model's rules apply, as at the API
            try:
                validate(attrs.evolve(params, model=model))
            except ValidationError as exc:
                _refuse(400, f"{exc} (the default model is {model})", param=exc.param)
        gpt = _is_gpt(model)
        stream = getattr(params, "stream", None)
        if stream and not gpt:
            _refuse(400, "Streaming is only supported for the GPT image models.", param="stream")
        width, height = _size_of(params.size)
        images = params.images
        record["images"] = images
        headers = self._admit(images, now) if admit else {}
        prompt: str = getattr(params, "prompt", "") or ""
        if CONTENT_POLICY_MARKER in prompt.lower():
            if self.azure:
                refusal = json.dumps(azure_content_filter(prompt)).encode()
                raise _Refusal(_Answer(400, refusal, headers))
            if gpt:
                _refuse(
                    400,
                    "Your request was rejected by the safety system. If you believe this is "
                    "an error, contact us at help.openai.com and include the request ID.",
                    type_="image_generation_user_error",
                    code="moderation_blocked",
                    headers=headers,
                )
            _refuse(
                400,
                "Your request was rejected as a result of our safety system. Your prompt may "
                "contain text that is not allowed by our safety system.",
                type_="image_generation_user_error",
                code="content_policy_violation",
                headers=headers,
            )
        seed = self._seed(params, inputs)
        background = getattr(params, "background", None) or params.extra_body.get("background")
        alpha = gpt and background == "transparent"
        as_url = not gpt and getattr(params, "response_format", None) != "b64_json"
        output_format = getattr(params, "output_format", None) or "png"
        first = inputs[0].data if inputs else None
        mask = self._mask(params)
        data: list[dict[str, Any]] = []
        for index in range(images):
            recipe = Recipe(
                width, height, f"{seed}#{index}", alpha, output_format,
                getattr(params, "output_compression", None), first,
                mask, isinstance(params, VariationParams),
            )
            item: dict[str, Any] = {}
            if as_url:
                item["url"] = self._store(recipe, now)
            else:
                item["b64_json"] = recipe.b64()
            if model == "dall-e-3":
                item["revised_prompt"] = f"A detailed, vivid rendering of: {prompt}"
            data.append(item)
        body: dict[str, Any] = {"created": int(time.time()), "data": data}
        if gpt:
            quality = getattr(params, "quality", None)
            quality = quality if quality in _GPT_QUALITIES else "medium"
            body["background"] = "transparent" if alpha else "opaque"
            body["output_format"] = output_format
            body["quality"] = quality
            body["size"] = f"{width}x{height}"
            body["usage"] = self._usage(params, inputs, quality, width, height, images)
        if stream:
            partials = getattr(params, "partial_images", None) or 0
            events = sse_events(
                body, endpoint=endpoint, partial_images=partials, created_at=body["created"]
            )
            return _Answer(200, b"", headers, "text/event-stream", events)
        return _Answer(200, json.dumps(body).encode(), headers)

    def _inputs(self, params: Params) -> tuple[ImageFile, ...]:
        """The input images (not the mask) of an edit or variation; a JSON edit's fetched.

        Raises:
            _Refusal: a reference (or a JSON edit's mask) cannot be used.
        """
        if isinstance(params, GenerateParams):
            return ()
        if not isinstance(params, JsonEditParams):
            return params.image
        try:
            files = tuple(
                self._refs.resolve(ref, f"images[{i}]") for i, ref in enumerate(params.image_refs)
            )
            if params.mask is not None:
                self._refs.resolve(params.mask, "mask")
        except RefError as exc:
            _refuse(400, exc.message, param=exc.param, code=exc.code)
        return files

    def _mask(self, params: Params) -> bytes | None:
        """The mask's bytes of an edit (a JSON edit's fetched, after :meth:`_inputs` checked it)."""
        mask = getattr(params, "mask", None)
        if mask is None:
            return None
        if isinstance(mask, ImageFile):
            return mask.data
        return self._refs.resolve(mask, "mask").data

    def _render_batch_line(self, path: str, body: Mapping[str, Any]) -> tuple[int, bytes]:
        """Answer one Batch API line as its endpoint would, outside the images limit."""
        record: dict[str, Any] = {}
        try:
            endpoint = _ROUTES[path]
            answer = self._answer(endpoint, body, {}, self.clock(), record, admit=False,
                                  as_json=endpoint == "edit")  # a batch's edits are JSON edits
        except _Refusal as refusal:
            answer = refusal.answer
        return answer.status, answer.body

    @staticmethod
    def _seed(params: Params, inputs: tuple[ImageFile, ...]) -> str:
        if isinstance(params, GenerateParams):
            return params.prompt
        digest = hashlib.sha256(b"".join(f.data for f in inputs)).hexdigest()[:16]
        if isinstance(params, (EditParams, JsonEditParams)):
            return f"edit:{digest}:{params.prompt}"
        return f"variation:{digest}"

    @staticmethod
    def _usage(
        params: Params,
        inputs: tuple[ImageFile, ...],
        quality: str,
        width: int,
        height: int,
        images: int,
    ) -> dict[str, Any]:
        text = _text_tokens(getattr(params, "prompt", "") or "")
        image_in = 194 * len(inputs) + (194 if getattr(params, "mask", None) else 0)
        per_image = math.ceil(_OUTPUT_TOKENS[quality] * width * height / (1024 * 1024))
        output = per_image * images
        return {
            "input_tokens": text + image_in,
            "output_tokens": output,
            "total_tokens": text + image_in + output,
            "input_tokens_details": {"text_tokens": text, "image_tokens": image_in},
            "output_tokens_details": {"image_tokens": output, "text_tokens": 0},
        }

    def _store(self, recipe: Recipe, now: float) -> str:
        name = f"img-{secrets.token_urlsafe(18)}.png"
        # Keep the recipe, not the bytes: a long run of url results stays small in memory.
        self._blobs[name] = (recipe, now + self.url_ttl)
        while len(self._blobs) > self.max_urls:
            del self._blobs[next(iter(self._blobs))]
        expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(
            seconds=self.url_ttl
        )
        se = expiry.strftime("%Y-%m-%dT%H%%3A%M%%3A%SZ")
        sig = base64.urlsafe_b64encode(hashlib.sha256(name.encode()).digest()[:24]).decode()
        return f"{self.blob_base_url}/blobs/{name}?se={se}&sp=r&sig={sig}"


# --------------------------------------------------------------------- serve


async def _serve_forever(options: Mapping[str, Any], ready: Callable[[Emulator], None]) -> None:
    stop = asyncio.Event()
    with contextlib.suppress(NotImplementedError, RuntimeError):  # no signals here: Ctrl-C only
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with Emulator(**options) as emu:
        ready(emu)
        await stop.wait()


def serve(host: str = "127.0.0.1", port: int = 8089, **emulator_options: Any) -> None:
    """Run an emulator until Ctrl-C or SIGTERM (blocking); prints its base urls first.

    ``emulator_options`` are :class:`Emulator`'s other arguments.

    Raises:
        OSError: the port cannot be bound.
    """

    def ready(emu: Emulator) -> None:
        if emu.azure:
            print(
                f"asyncimg emulator (Azure OpenAI) listening on {emu.endpoint}: "
                f"{emu.endpoint}/openai/deployments/NAME/images/...?api-version=... "
                f"(url results on {emu.blob_base_url}; Ctrl-C or SIGTERM to stop)",
                flush=True,
            )
            return
        print(
            f"asyncimg emulator listening on {emu.base_url} (url results on "
            f"{emu.blob_base_url}; Ctrl-C or SIGTERM to stop)",
            flush=True,
        )

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever({"host": host, "port": port, **emulator_options}, ready))
