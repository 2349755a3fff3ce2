"""Sending one request over aiohttp, and turning aiohttp's errors into ours.

The :class:`Transport` owns one ``aiohttp.ClientSession``, created on the
running loop the first time it is needed and closed by :meth:`Transport.aclose`.
Every aiohttp, asyncio and OS error is translated in one place,
:func:`transport_error`, most specific first, into an error that does not chain
back to aiohttp's (which holds the request headers, the API key among them).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from types import SimpleNamespace

import aiohttp
import attrs
from multidict import CIMultiDictProxy
from yarl import URL

from ._body import Body
from ._config import ProxyConfig, ssl_context, without_query
from ._exceptions import (
    APIConnectionError,
    APIResponseValidationError,
    APITimeoutError,
    ResponseTooLargeError,
    error_from_response,
    request_id_of,
)
from ._json import loads_images_json
from ._offloop import OFF_LOOP_BYTES, off_loop

__all__ = [
    "MAX_REDIRECTS",
    "Hop",
    "OnWire",
    "RawResponse",
    "RedirectError",
    "Transport",
    "follow_redirect",
    "map_transport_errors",
    "transport_error",
]


@attrs.frozen
class RawResponse:
    """A status, its headers, and the body: as bytes, or already decoded as JSON."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes = attrs.field(default=b"", repr=lambda b: f"<{len(b)} bytes>")
    json: object = attrs.field(default=None, repr=False)
    """The decoded body, when the request asked for JSON (``body`` is then empty)."""
    received: float = attrs.field(default=0.0, repr=False)
    """``time.monotonic()`` when the status and headers arrived, before the body was read
    (0.0: not recorded)."""

    @property
    def request_id(self) -> str | None:
        """The server's request id, if it sent one (see :func:`request_id_of`)."""
        return request_id_of(self.headers)


OnWire = Callable[[], None] | None
"""Called once by :meth:`Transport.request` when the request is on the wire (:class:`_Wire`)."""


class _Wire:
    """When a request is on the wire, told by aiohttp's trace hooks.

    The callback runs once, as soon as the last byte of the body (by the request's
    ``Content-Length``) has been handed to the connection; without a length, when
    the response begins or the request fails after its headers were written. It
    never runs for a request that wrote nothing (no connection, DNS failure,
    connect timeout): nothing can have reached the server. ``reused`` says
    whether the current try went out on a pooled connection.
    """

    __slots__ = ("callback", "left", "reused", "started")

    def __init__(self, callback: Callable[[], None] | None) -> None:
        self.callback: Callable[[], None] | None = callback
        self.left: int | None = None  # body bytes still to hand over; None: length unknown
        self.started = False  # the headers went out
        self.reused = False  # this try's connection came from the pool

    def fire(self) -> None:
        callback, self.callback = self.callback, None
        if callback is not None:
            callback()

    def headers_sent(self, headers: Mapping[str, str]) -> None:
        self.started = True
        length = headers.get("Content-Length")
        self.left = int(length) if length is not None and length.isdigit() else None
        if self.left == 0:
            self.fire()

    def chunk_sent(self, size: int) -> None:
        if self.left is not None:
            self.left -= size
            if self.left <= 0:
                self.fire()


async def _on_sent(
    session: aiohttp.ClientSession, ctx: SimpleNamespace,
    params: aiohttp.TraceRequestHeadersSentParams | aiohttp.TraceRequestChunkSentParams,
) -> None:
    wire = ctx.trace_request_ctx
    if not isinstance(wire, _Wire):
        return
    if isinstance(params, aiohttp.TraceRequestHeadersSentParams):
        wire.headers_sent(params.headers)
    else:
        wire.chunk_sent(len(params.chunk))


async def _on_reused(
    session: aiohttp.ClientSession, ctx: SimpleNamespace,
    params: aiohttp.TraceConnectionReuseconnParams,
) -> None:
    wire = ctx.trace_request_ctx
    if isinstance(wire, _Wire):
        wire.reused = True


@contextlib.contextmanager
def _on_the_wire(on_wire: OnWire, traced: bool = True) -> Iterator[_Wire]:
    """The :class:`_Wire` of one request (``on_wire`` its callback, if given); on the
    way out it fires if anything went out (the server may have counted it).

    Not ``traced`` (a caller's session, without our trace hooks), it fires at once:
    the request counts as sent from its start, the cautious side."""
    wire = _Wire(on_wire)
    if not traced:
        wire.fire()
    try:
        yield wire
    finally:
        if wire.started:
            wire.fire()


def _trace_config() -> aiohttp.TraceConfig:
    config = aiohttp.TraceConfig()
    config.on_request_headers_sent.append(_on_sent)
    config.on_request_chunk_sent.append(_on_sent)
    config.on_connection_reuseconn.append(_on_reused)
    config.freeze()
    return config


MAX_REDIRECTS = 10
"""The most redirects one request follows."""

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_KEPT_ACROSS_ORIGINS = frozenset({"user-agent", "accept"})
"""The only headers a request keeps when a redirect sends it to another origin."""


@attrs.frozen
class Hop:
    """One request of a redirect chain: what is sent, and where."""

    method: str
    url: URL
    headers: Mapping[str, str] = attrs.field(repr=False)
    body: Body | None = attrs.field(default=None, repr=False)


class RedirectError(Exception):
    """A redirect that is not followed (no http(s) URL, or too many)."""


def follow_redirect(hop: Hop, status: int, location: str) -> Hop:
    """The request to send after ``hop`` was answered ``status`` with ``location`` (pure).

    A 303 (and a 301/302 to a POST) becomes a GET without a body, as browsers
    and aiohttp do; a 307/308 repeats the method and body. Sent to another
    origin (scheme, host or port), the request keeps no header but
    ``User-Agent`` and ``Accept``: the API key (``Authorization``, ``api-key``)
    and every default or extra header stay with the API's origin.

    Raises:
        RedirectError: ``location`` is not an http(s) URL.
    """
    try:
        target = hop.url.join(URL(location))
        origin = target.origin()
    except ValueError:
        raise RedirectError(f"a redirect to {without_query(location)!r}, not a URL") from None
    if target.scheme not in ("http", "https"):
        raise RedirectError(f"a redirect to a {target.scheme or 'relative'} URL")
    method, body = hop.method, hop.body
    if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
        method, body = "GET", None
    headers = hop.headers
    if origin != hop.url.origin():
        headers = {k: v for k, v in headers.items() if k.lower() in _KEPT_ACROSS_ORIGINS}
    return Hop(method, target, headers, body)


_TRANSPORT_ERRORS = (asyncio.TimeoutError, aiohttp.ClientError, OSError, RedirectError)
"""What aiohttp, asyncio and the OS raise while sending; :func:`transport_error` maps them."""


def transport_error(exc: BaseException, what: str, timeout: float | None) -> APIConnectionError:
    """The asyncimg error for an aiohttp/asyncio/OS error raised while sending (pure).

    The caller raises the result outside its ``except`` block, so that neither
    ``__cause__`` nor ``__context__`` leads back to aiohttp's exception: those
    hold the request (``ClientResponseError.request_info.headers`` holds the
    API key, a connection key may hold proxy credentials). What they said is in
    the message instead.
    """
    if isinstance(exc, RedirectError):
        return APIConnectionError(f"{what}: {exc}")
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return APITimeoutError(f"{what}: connecting timed out")
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return APITimeoutError(f"{what} timed out after {timeout} s")
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cause = exc.certificate_error
        reason = getattr(cause, "verify_message", None) or str(cause)
        return APIConnectionError(
            f"{what}: the server's TLS certificate is not trusted ({reason}); pass ssl= "
            "an ssl.SSLContext or the CA bundle to trust, or set SSL_CERT_FILE"
        )
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return APIConnectionError(
            f"{what}: cannot connect to the proxy {exc.host}:{exc.port}: {exc.os_error}"
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        return APIConnectionError(f"{what}: cannot connect: {exc.os_error}")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return APIConnectionError(f"{what}: the server closed the connection")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return APIConnectionError(f"{what}: the response body broke off")
    if isinstance(exc, aiohttp.ClientResponseError):
        return APIConnectionError(f"{what}: bad response: {exc.status} {exc.message}")
    return APIConnectionError(f"{what}: {type(exc).__name__}: {exc}")


@contextlib.contextmanager
def map_transport_errors(what: str, timeout: float | None) -> Iterator[None]:
    """Translate errors raised while reading a response already open (a stream's events).

    Those errors (a timeout, a body that broke off) carry no request; a request
    itself is sent with :func:`transport_error` raised outside the ``except``
    block, so that its error does not even have a ``__context__``.

    Raises:
        APITimeoutError, APIConnectionError: as :func:`transport_error`.
    """
    try:
        yield
    except _TRANSPORT_ERRORS as exc:
        raise transport_error(exc, what, timeout) from None


def _parse(
    buf: bytes | bytearray, size: int, status: int, headers: CIMultiDictProxy[str]
) -> object:
    try:
        return loads_images_json(buf, size)
    except (ValueError, UnicodeDecodeError) as exc:
        raise APIResponseValidationError(
            f"the {status} response is not valid JSON ({size} bytes): {exc}",
            status_code=status,
            request_id=request_id_of(headers),
        ) from None


def _decode_joined(
    chunks: list[bytes], size: int, status: int, headers: CIMultiDictProxy[str]
) -> object:
    """Join and decode a large body: run in a worker thread, so no shared buffer."""
    return _parse(b"".join(chunks), size, status, headers)


_ONE_WRITE = 1024 * 1024
"""A request body up to this size is handed to aiohttp as bytes, a larger one as a stream."""


def _encode(
    headers: Mapping[str, str], body: Body | None
) -> tuple[bytes | io.BytesIO | None, dict[str, str]]:
    """What aiohttp sends for ``body`` (already encoded), and the headers to send with it.

    aiohttp writes bytes in one piece (and warns above 1 MiB); a BytesIO over the
    same buffer (no copy) is written in chunks.
    """
    send_headers = dict(headers)
    if body is None:
        return None, send_headers
    send_headers["Content-Type"] = body.content_type
    data = body.data if len(body.data) <= _ONE_WRITE else io.BytesIO(body.data)
    return data, send_headers

_KEPT_BUFFER = 64 * 1024 * 1024
"""The largest decode buffer a transport keeps between responses."""


class Transport:
    """One aiohttp session and the requests sent through it.

    Args:
        max_connections: the connection pool's size.
        max_response_bytes: a body larger than this is refused, unread.
        user_agent: the ``User-Agent`` header of every request.
        connect_timeout: seconds to open a TCP connection (None: no limit of its own).
        off_loop_bytes: a JSON body larger than this is decoded in a worker thread.
        proxies: which proxy each URL goes through (none by default).
        ssl: the TLS context; None for :func:`~asyncimg._config.ssl_context`'s
            default, made with the session.
        session: a caller's session to send through instead of one of our own;
            it is never closed here.
    """

    __slots__ = ("_buffer", "_closed", "_connect_timeout", "_external", "_loop",
                 "_max_connections", "_max_response_bytes", "_off_loop_bytes", "_proxies",
                 "_proxy_of", "_session", "_ssl", "_timeouts", "_user_agent")

    def __init__(
        self,
        *,
        max_connections: int,
        max_response_bytes: int,
        user_agent: str,
        connect_timeout: float | None = None,
        off_loop_bytes: float = OFF_LOOP_BYTES,
        proxies: ProxyConfig | None = None,
        ssl: ssl.SSLContext | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self._proxies = proxies or ProxyConfig()
        self._proxy_of: dict[str, str | None] = {}
        self._ssl = ssl
        self._external = session is not None
        self._connect_timeout = connect_timeout
        self._off_loop_bytes = off_loop_bytes
        self._max_connections = max_connections
        self._max_response_bytes = max_response_bytes
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = session
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timeouts: dict[float | None, aiohttp.ClientTimeout] = {}
        self._buffer = bytearray()
        self._closed = False

    @property
    def max_response_bytes(self) -> int:
        """The largest body accepted (for a stream: the largest event)."""
        return self._max_response_bytes

    @property
    def session(self) -> aiohttp.ClientSession:
        """The session, created on the running loop at first use.

        Raises:
            RuntimeError: the transport is closed, or the session belongs to another loop.
        """
        if self._closed:
            raise RuntimeError("the client is closed")
        session = self._session
        if self._external:
            assert session is not None
            return session
        if session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                ttl_dns_cache=300,
                enable_cleanup_closed=False,
                ssl=self._ssl if self._ssl is not None else ssl_context(None),
            )
            session = aiohttp.ClientSession(
                connector=connector,
                headers={"User-Agent": self._user_agent},
                timeout=aiohttp.ClientTimeout(total=None),
                json_serialize=json.dumps,
                auto_decompress=True,
                trace_configs=[_trace_config()],
            )
            self._session = session
            self._loop = asyncio.get_running_loop()
        elif self._loop is not asyncio.get_running_loop():
            raise RuntimeError(
                "this client was first used on another event loop; create one client per loop"
            )
        return session

    def _timeout(self, seconds: float | None) -> aiohttp.ClientTimeout:
        timeout = self._timeouts.get(seconds)
        if timeout is None:
            timeout = self._timeouts[seconds] = aiohttp.ClientTimeout(
                total=seconds, sock_connect=self._connect_timeout
            )
        return timeout

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: Body | None = None,
        timeout: float | None,
        decode_json: bool = False,
        on_wire: OnWire = None,
    ) -> RawResponse:
        """Send one request (its body already encoded) and read the whole response.

        With ``decode_json`` a successful body is decoded into ``RawResponse.json``
        instead of being kept as bytes: in a reused buffer on the loop, or, above
        ``off_loop_bytes``, in a worker thread so that the loop keeps running.
        ``on_wire``, if given, is called once the request is on the wire, and
        never if nothing was written.

        Raises:
            APIStatusError: (a subclass of it) the status is 400 or above.
            APIResponseValidationError: ``decode_json`` and the body is not JSON.
            ResponseTooLargeError: the body is larger than ``max_response_bytes``.
            APITimeoutError, APIConnectionError: no usable answer.
        """
        what = f"{method} {without_query(url)}"
        error = None
        try:
            with _on_the_wire(on_wire, not self._external) as wire:
                resp = await self._open(
                    Hop(method, URL(url), headers, body), self._timeout(timeout), wire
                )
                received = time.monotonic()
                async with resp:
                    wire.fire()  # an answer began: the request was on the wire
                    chunks, size = await self._read(resp)
                    status, resp_headers = resp.status, resp.headers
        except _TRANSPORT_ERRORS as exc:
            error = transport_error(exc, what, timeout)
        if error is not None:
            raise error  # outside the except block: no __context__ back to aiohttp
        if status >= 400 or not decode_json:
            raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            if status >= 400:
                raise error_from_response(
                    status, raw, resp_headers, request_id=request_id_of(resp_headers)
                )
            return RawResponse(status, resp_headers, raw, received=received)
        if size > self._off_loop_bytes:
            decoded = await off_loop(_decode_joined, chunks, size, status, resp_headers)
        else:
            decoded = self._decode(chunks, size, status, resp_headers)
        return RawResponse(status, resp_headers, json=decoded, received=received)

    def _decode(
        self, chunks: list[bytes], size: int, status: int, headers: CIMultiDictProxy[str]
    ) -> object:
        # One buffer, reused: a fresh multi-megabyte bytes per response is mapped
        # and unmapped by the C allocator each time, and its page faults cost more
        # than the rest of the call (1024x1024: 2.6 ms of CPU against 0.85 ms).
        # Decoding never awaits, so one buffer serves every request of the loop;
        # it keeps the size of the largest body up to _KEPT_BUFFER bytes.
        buf = self._buffer
        if len(buf) < size:
            buf = bytearray(size)
            if size <= _KEPT_BUFFER:
                self._buffer = buf
        pos = 0
        for chunk in chunks:
            end = pos + len(chunk)
            buf[pos:end] = chunk
            pos = end
        return _parse(buf, size, status, headers)

    async def _read(self, resp: aiohttp.ClientResponse) -> tuple[list[bytes], int]:
        cap = self._max_response_bytes

        def too_large(size: str) -> ResponseTooLargeError:
            return ResponseTooLargeError(
                f"the response is {size}, over max_response_bytes={cap}",
                status_code=resp.status,
                request_id=request_id_of(resp.headers),
            )

        length = resp.content_length
        if length is not None and length > cap:
            raise too_large(f"{length} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk, _ in resp.content.iter_chunks():
            size += len(chunk)
            if size > cap:
                raise too_large("larger")
            chunks.append(chunk)
        return chunks, size

    async def open_stream(
        self,
        url: str,
        *,
        headers: Mapping[str, str],
        body: Body | None = None,
        timeout: float | None,
        on_wire: OnWire = None,
    ) -> aiohttp.ClientResponse:
        """POST a streaming request; the open response, its body unread.

        ``timeout`` bounds connecting and each wait for data, not the whole
        stream. The caller closes the response.

        Raises:
            APIStatusError: (a subclass of it) the status is 400 or above.
            APITimeoutError, APIConnectionError: no usable answer.
        """
        what = f"POST {without_query(url)}"
        stream_timeout = aiohttp.ClientTimeout(
            total=None, connect=timeout, sock_read=timeout, sock_connect=self._connect_timeout
        )
        headers = {**headers, "Accept": "text/event-stream"}
        error = None
        try:
            with _on_the_wire(on_wire, not self._external) as wire:
                resp = await self._open(
                    Hop("POST", URL(url), headers, body), stream_timeout, wire
                )
                wire.fire()  # an answer began: the request was on the wire
            if resp.status < 400:
                return resp
            try:
                chunks, _ = await self._read(resp)
            finally:
                resp.release()
        except _TRANSPORT_ERRORS as exc:
            error = transport_error(exc, what, timeout)
        if error is not None:
            raise error  # outside the except block: no __context__ back to aiohttp
        raise error_from_response(
            resp.status, b"".join(chunks), resp.headers, request_id=request_id_of(resp.headers)
        )

    async def _open(
        self, hop: Hop, timeout: aiohttp.ClientTimeout, wire: _Wire
    ) -> aiohttp.ClientResponse:
        """Send ``hop``; the open response, its body unread (the caller releases it).

        Redirects are followed here, not by aiohttp (which keeps every header
        but ``Authorization`` across origins): see :func:`follow_redirect`. A
        try that fails on a pooled connection before any answer (the server had
        already closed it) is sent again at once on another connection: as many
        times as the pool has connections, so the last try is on a fresh one.

        Raises:
            aiohttp.ClientError, OSError, asyncio.TimeoutError: as aiohttp raises them.
            RedirectError: a redirect that is not followed.
        """
        stale = self._max_connections
        redirects = 0
        while True:
            data, send_headers = self._encode(hop.headers, hop.body)
            wire.reused = False
            url = str(hop.url)
            try:
                resp = await self.session.request(
                    hop.method, hop.url, data=data, headers=send_headers, timeout=timeout,
                    trace_request_ctx=wire, proxy=self._proxy(url), raise_for_status=False,
                    allow_redirects=False,
                )
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                if not wire.reused or stale == 0 or isinstance(exc, aiohttp.ClientConnectorError):
                    raise
                stale -= 1
                continue
            location = resp.headers.get("Location") if resp.status in _REDIRECTS else None
            if location is None:
                return resp
            resp.release()
            redirects += 1
            if redirects > MAX_REDIRECTS:
                raise RedirectError(f"more than {MAX_REDIRECTS} redirects")
            hop = follow_redirect(hop, resp.status, location)

    def _encode(
        self, headers: Mapping[str, str], body: Body | None
    ) -> tuple[bytes | io.BytesIO | None, dict[str, str]]:
        data, send_headers = _encode(headers, body)
        if self._external and not any(k.lower() == "user-agent" for k in send_headers):
            send_headers["User-Agent"] = self._user_agent  # our session's default, not theirs
        return data, send_headers

    def _proxy(self, url: str) -> str | None:
        key = "/".join(url.split("/", 3)[:3])  # the origin: scheme://host:port
        try:
            return self._proxy_of[key]
        except KeyError:
            proxy = self._proxy_of[key] = self._proxies.for_url(key)
            return proxy

    async def aclose(self) -> None:
        """Close our session and its connections (never a caller's); later requests
        raise RuntimeError."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None and not self._external:
            await session.close()
