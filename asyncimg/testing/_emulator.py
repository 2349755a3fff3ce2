"""The emulator: an aiohttp.web server that answers like the OpenAI Images API.

Endpoints (under ``base_url``, which ends in ``/v1``), each surface in a module
of its own behind :class:`Emulator`:

* ``POST /v1/images/generations``, ``/v1/images/edits`` (multipart, or JSON
  with images by reference, :mod:`._refs`) and ``/v1/images/variations``: the
  bodies, the model defaults, the content policy, the images and their usage
  are in :mod:`._images`; ``stream: true`` answers server-sent events
  (:mod:`._streaming`);
* with ``azure=True``, the Azure OpenAI paths instead
  (``/openai/deployments/<name>/images/...?api-version=``, :mod:`._azure`);
* ``/v1/files`` and ``/v1/batches``: the Files API (:mod:`._files`) and the
  Batch API, at a pace tests set (:mod:`._batches`, ``Emulator.batches``);
* ``GET /blobs/<name>.png?se=...``: ``url`` results, on another origin (a
  second port, ``blob_base_url``) with no key (:mod:`._blobs`).

Each request is judged in this order: a scripted :class:`Fault` that replaces
the answer (:mod:`._faults`, answered by :mod:`._errors`); the key (401,
:mod:`._keys`); the content type and body (400); the parameters, with the
client's own rules (:func:`asyncimg._params.from_wire`) and those of the model
that answers (400, :mod:`._images`); the images-per-window limit (429,
:mod:`._ratelimit`); the content policy (a prompt containing
:data:`CONTENT_POLICY_MARKER`: 400). A request that passes the limit is
recorded in ``arrivals`` and spends budget, even if the content policy then
refuses it. A request is counted when its body has been read, as a real server
must (the model, and so the limit, is in the body). The answer then waits
``latency``, goes out as a delivery fault says (:mod:`._delivery`), and the
request is written in the journal (:mod:`._journal`).
"""

from __future__ import annotations

import asyncio
import functools
import math
import random
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from .._files import ImageFile
from .._params import Endpoint
from ._azure import azure_route
from ._batches import BatchAPI
from ._blobs import BlobStore
from ._delivery import deliver, drop
from ._errors import Answer, Closing, Refusal, fault_answer, refuse
from ._faults import Fault, FaultQueue
from ._headers import HeaderStyle, styled_headers
from ._images import ROUTES, images_answer, judge_images, police, read_body
from ._journal import Journal, JournalEntry, journal_entry
from ._keys import check_key
from ._ratelimit import ImagesWindow, Limit, parse_rate
from ._refs import RefResolver

__all__ = ["Emulator"]

OPENAI_VERSION = "2020-10-01"
_MAX_BODY = 256 * 1024 * 1024


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
        any_model: take any model name, as a compatible server does (only the
            spec's bounds apply to a name not in the table); by default a model
            the API does not have is refused with 404 ``model_not_found``.
        azure_token: in Azure mode, the Entra ID token to accept as
            ``Authorization: Bearer`` (the key itself is refused there, as Azure
            refuses it).
        api_latency: seconds before each Files and Batches answer (the real
            API answers those at once, whatever an image takes: not ``latency``).

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
        any_model: bool = False,
        azure_token: str | None = None,
        api_latency: float = 0.0,
    ) -> None:
        if journal_size is not None and journal_size < 1:
            raise ValueError(f"journal_size must be >= 1 or None, not {journal_size}")
        if max_urls < 1:
            raise ValueError(f"max_urls must be >= 1, not {max_urls}")
        styled_headers({}, header_style, 0.0)  # refuses an unknown style now
        self.header_style: HeaderStyle = header_style
        self.api_key = api_key
        self.azure = azure
        self.any_model = any_model
        self.azure_token = azure_token
        self.api_latency = api_latency
        self.host = host
        self.port = port
        self.rate_limit: Limit | None = parse_rate(images_per_minute)
        self.url_ttl = url_ttl
        self.latency = latency
        self.latency_sigma = latency_sigma
        self.download_latency = download_latency
        self._rng = random.Random()
        self.clock: Callable[[], float] = clock or time.monotonic
        self.journal = Journal(journal_size)
        self.journal_size = journal_size
        self.max_urls = max_urls
        self._window = ImagesWindow(journal_size)
        self._faults = FaultQueue()
        self._blobs = BlobStore(lambda: self.blob_base_url)
        self.batches = BatchAPI(self._render_batch_line, self.clock)
        """The Files and Batch APIs (:class:`BatchAPI`): set ``batches.pace`` to steer batches."""
        self._refs = RefResolver(
            lambda url: self._blobs.own(url, self.clock()), self.batches.file_data
        )
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()
        self._api_port: int | None = None
        self._blob_port: int | None = None

    def __repr__(self) -> str:
        state = self.base_url if self._runner is not None else "not started"
        return f"<Emulator {state}>"

    @property
    def arrivals(self) -> list[tuple[float, int]]:
        """``(time, images)`` of the requests that passed the rate limit, in order.

        The time is when its body was read; the latest ``journal_size`` are kept,
        or more (trimmed when it reaches twice that).
        """
        return self._window.arrivals

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
        """Queue faults; each request uses the first queued fault that matches its path.

        Raises:
            TypeError: one is not a :class:`Fault`.
        """
        self._faults.add(*faults)

    @property
    def faults(self) -> list[Fault]:
        """The faults still queued (each once, however many uses it has left)."""
        return self._faults.faults

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
        return self._window.max_images_in_window(self.rate_limit, per)

    # ---------------------------------------------------------------- handling

    async def _sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        try:
            await asyncio.wait_for(self._closing.wait(), seconds)
        except asyncio.TimeoutError:
            return
        raise Closing

    def _latency_for(self, path: str) -> float:
        if path.startswith("/blobs/"):
            return self.download_latency
        if path.startswith(("/v1/files", "/v1/batches")):
            return self.api_latency
        if self.latency_sigma > 0 and self.latency > 0:
            return self.latency * math.exp(self._rng.gauss(0.0, self.latency_sigma))
        return self.latency

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        arrived = self.clock()
        request_id = f"req_{secrets.token_hex(16)}"
        record: dict[str, Any] = {"json": None, "fields": {}, "files": (), "status": None,
                                  "fault": None, "images": 0}  # the journal's, as learnt
        try:
            judged, fault = await self._judge(request, arrived, record)
            record["fault"] = fault.kind if fault is not None else None
            await self._sleep(self._latency_for(request.path))
            # The images are drawn after the latency, as the API makes them while the
            # client waits: drawing them first would hold back the count of the requests
            # behind this one in a burst by each picture's rendering time.
            answer = judged if isinstance(judged, Answer) else judged()
            if request.path.startswith(("/v1/", "/openai/")):
                for name, value in self._window.headers(self.rate_limit, arrived).items():
                    answer.headers.setdefault(name, value)
            answer.headers["x-request-id"] = request_id
            answer.headers["openai-version"] = OPENAI_VERSION
            answer.headers["openai-processing-ms"] = str(
                round((time.perf_counter() - started) * 1000)
            )
            return await deliver(
                request, answer, fault, record, sleep=self._sleep, header_style=self.header_style
            )
        except Closing:
            drop(request)
            return web.Response(status=503)
        finally:
            self.journal.append(journal_entry(request, arrived, request_id, record))

    async def _judge(
        self, request: web.Request, arrived: float, record: dict[str, Any]
    ) -> tuple[Answer | Callable[[], Answer], Fault | None]:
        """Read the request into ``record`` and decide the answer (and the fault, if any).

        A request that passed is counted now; its answer is made when called."""
        endpoint = self._endpoint_of(request.path) if request.method == "POST" else None
        fields: dict[str, Any] = {}
        files: dict[str, tuple[ImageFile, ...]] = {}
        read_error: Answer | None = None
        try:
            if endpoint is not None:
                fields, files = await read_body(request, endpoint, record)
        except Refusal as refusal:
            read_error = refusal.answer
        fault = self._faults.take(request.path)
        if fault is not None and fault.kind in ("status", "drop"):
            return fault_answer(fault), fault
        try:
            if request.path.startswith("/blobs/") and request.method in ("GET", "HEAD"):
                return self._blobs.answer(request.path[len("/blobs/") :], arrived), fault
            if request.path.startswith(("/v1/files", "/v1/batches")):
                self._check_key(request)
                return await self.batches.handle(request), fault
            if endpoint is None:
                refuse(404, f"Invalid URL ({request.method} {request.path})")
            self._check_key(request)
            if read_error is not None:
                return read_error, fault
            # Counted once the body is in, as a real server must (the model is in it).
            as_json = endpoint == "edit" and record["json"] is not None
            answer = self._answer(endpoint, fields, files, self.clock(), record, as_json=as_json)
            return answer, fault
        except Refusal as refusal:
            return refusal.answer, fault

    def _check_key(self, request: web.Request) -> None:
        check_key(request.headers, request.query, self.api_key, azure=self.azure,
                  azure_token=self.azure_token)

    def _endpoint_of(self, path: str) -> Endpoint | None:
        if self.azure:
            route = azure_route(path)
            return None if route is None else route[1]
        return ROUTES.get(path)

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
    ) -> Callable[[], Answer]:
        """Judge an images request whose body is read (parameters, limit, policy), and
        count it; returns what makes its answer (draws its images) when called.

        Raises:
            Refusal: it is refused (400, 429).
        """
        judged = judge_images(endpoint, fields, files, self._refs, as_json=as_json,
                              any_model=self.any_model or self.azure)
        images = judged.params.images
        record["images"] = images
        headers = self._window.admit(self.rate_limit, images, now) if admit else {}
        police(judged, headers, azure=self.azure)
        store = functools.partial(self._blobs.store, now=now, ttl=self.url_ttl, keep=self.max_urls)
        return functools.partial(images_answer, judged, headers, store)

    def _render_batch_line(self, path: str, body: Mapping[str, Any]) -> tuple[int, bytes]:
        """Answer one Batch API line as its endpoint would, outside the images limit."""
        record: dict[str, Any] = {}
        try:
            endpoint = ROUTES[path]
            answer = self._answer(endpoint, body, {}, self.clock(), record, admit=False,
                                  as_json=endpoint == "edit")()  # a batch's edits are JSON edits
        except Refusal as refusal:
            answer = refusal.answer
        return answer.status, answer.body
