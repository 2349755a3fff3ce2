"""Sending one request over aiohttp, and turning aiohttp's errors into ours.

The :class:`Transport` owns one ``aiohttp.ClientSession``, created on the
running loop the first time it is needed and closed by :meth:`Transport.aclose`.
Every aiohttp, asyncio and OS error is translated in one place,
:func:`map_transport_errors`, most specific first, with ``raise ... from exc``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import Iterator, Mapping
from typing import Any

import aiohttp
import attrs
from multidict import CIMultiDictProxy

from ._config import ProxyConfig, ssl_context
from ._exceptions import (
    APIConnectionError,
    APIResponseValidationError,
    APITimeoutError,
    ResponseTooLargeError,
    error_from_response,
)
from ._params import Form

__all__ = [
    "RawResponse",
    "Transport",
    "loads_images_json",
    "map_transport_errors",
    "without_query",
]


@attrs.frozen
class RawResponse:
    """A status, its headers, and the body: as bytes, or already decoded as JSON."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes = attrs.field(default=b"", repr=lambda b: f"<{len(b)} bytes>")
    json: object = attrs.field(default=None, repr=False)
    """The decoded body, when the request asked for JSON (``body`` is then empty)."""

    @property
    def request_id(self) -> str | None:
        """The server's ``x-request-id``, if it sent one."""
        return self.headers.get("x-request-id")


def without_query(url: str) -> str:
    """The URL without its query and fragment (a download URL's query may be a signature)."""
    return url.split("?", 1)[0].split("#", 1)[0]


@contextlib.contextmanager
def map_transport_errors(what: str, timeout: float | None) -> Iterator[None]:
    """Translate aiohttp/asyncio/OS errors raised inside the block into asyncimg's.

    Raises:
        APITimeoutError: the attempt ran out of time.
        APIConnectionError: the connection failed, was dropped or the body broke off.
    """
    try:
        yield
    except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise APITimeoutError(f"{what} timed out after {timeout} s") from exc
    except aiohttp.ClientConnectorCertificateError as exc:
        cause = exc.certificate_error
        reason = getattr(cause, "verify_message", None) or str(cause)
        raise APIConnectionError(
            f"{what}: the server's TLS certificate is not trusted ({reason}); pass ssl= "
            "an ssl.SSLContext or the CA bundle to trust, or set SSL_CERT_FILE"
        ) from cause  # not aiohttp's error: its connection key holds any proxy credentials
    except aiohttp.ClientProxyConnectionError as exc:
        raise APIConnectionError(
            f"{what}: cannot connect to the proxy {exc.host}:{exc.port}: {exc.os_error}"
        ) from None
    except aiohttp.ClientConnectorError as exc:
        raise APIConnectionError(f"{what}: cannot connect: {exc.os_error}") from exc
    except aiohttp.ServerDisconnectedError as exc:
        raise APIConnectionError(f"{what}: the server closed the connection") from exc
    except aiohttp.ClientPayloadError as exc:
        raise APIConnectionError(f"{what}: the response body broke off") from exc
    except aiohttp.ClientResponseError as exc:
        # Not chained: its request_info holds the request's headers, the key among them.
        raise APIConnectionError(f"{what}: bad response: {exc.status} {exc.message}") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise APIConnectionError(f"{what}: {type(exc).__name__}: {exc}") from exc


_B64_KEY = b'"b64_json"'
_WHITESPACE = frozenset(b" \t\r\n")
_MIN_HOLE = 4096
_HOLE = "\x00asyncimg-hole\x00"
_HOLE_JSON = json.dumps(_HOLE).encode()[1:-1]


def _skip_ws(body: bytes | bytearray, i: int, n: int) -> int:
    while i < n and body[i] in _WHITESPACE:
        i += 1
    return i


def loads_images_json(body: bytes | bytearray, size: int | None = None) -> Any:
    """``json.loads(body[:size])``, without running the JSON scanner over long base64 strings.

    Each ``"b64_json": "..."`` value longer than 4 KiB and free of backslashes
    is cut out of the body, the small rest is parsed, and each value is put
    back with one ASCII decode. Anything unexpected (a value that is not ASCII,
    the key outside ``data[i]``, a count that does not match) falls back to
    ``json.loads`` of the whole body, so the result is always the same. At
    1024x1024 this takes the parse from about 1.3 ms to 0.2 ms. ``size`` bounds
    the body within a larger (reused) buffer.

    Raises:
        ValueError: the body is not valid JSON.
    """
    n = len(body) if size is None else size
    whole = body if n == len(body) else body[:n]
    find = body.find
    holes: list[tuple[int, int]] = []
    pos = 0
    while (key := find(_B64_KEY, pos, n)) >= 0:
        i = _skip_ws(body, key + len(_B64_KEY), n)
        if i >= n or body[i] != 0x3A:  # ':'
            pos = i
            continue
        i = _skip_ws(body, i + 1, n)
        if i >= n or body[i] != 0x22:  # '"': a string value
            pos = i
            continue
        start = i + 1
        end = find(b'"', start, n)
        if end < 0:
            return json.loads(whole)  # unterminated: let json say what is wrong
        if end - start >= _MIN_HOLE and find(b"\\", start, end) < 0:
            holes.append((start, end))
        pos = end + 1
    if not holes:
        return json.loads(whole)
    parts: list[bytes | bytearray] = []
    prev = 0
    for start, end in holes:
        parts += (body[prev:start], _HOLE_JSON)
        prev = end
    parts.append(body[prev:n])
    obj = json.loads(b"".join(parts))
    data = obj.get("data") if isinstance(obj, dict) else None
    items = [
        item
        for item in (data if isinstance(data, list) else ())
        if isinstance(item, dict) and item.get("b64_json") == _HOLE
    ]
    if len(items) != len(holes):
        return json.loads(whole)
    with memoryview(body) as view:
        try:
            for item, (start, end) in zip(items, holes, strict=True):
                item["b64_json"] = str(view[start:end], "ascii")
        except UnicodeDecodeError:
            return json.loads(whole)
    return obj


_KEPT_BUFFER = 64 * 1024 * 1024
"""The largest decode buffer a transport keeps between responses."""


class Transport:
    """One aiohttp session and the requests sent through it.

    Args:
        max_connections: the connection pool's size.
        max_response_bytes: a body larger than this is refused, unread.
        user_agent: the ``User-Agent`` header of every request.
        proxies: which proxy each URL goes through (none by default).
        ssl: the TLS context; None for :func:`~asyncimg._config.ssl_context`'s
            default, made with the session.
        session: a caller's session to send through instead of one of our own;
            it is never closed here.
    """

    __slots__ = ("_buffer", "_closed", "_external", "_loop", "_max_connections",
                 "_max_response_bytes", "_proxies", "_proxy_of", "_session", "_ssl",
                 "_timeouts", "_user_agent")

    def __init__(
        self,
        *,
        max_connections: int,
        max_response_bytes: int,
        user_agent: str,
        proxies: ProxyConfig | None = None,
        ssl: ssl.SSLContext | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self._max_connections = max_connections
        self._max_response_bytes = max_response_bytes
        self._user_agent = user_agent
        self._proxies = proxies or ProxyConfig()
        self._proxy_of: dict[str, str | None] = {}
        self._ssl = ssl
        self._external = session is not None
        self._session: aiohttp.ClientSession | None = session
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timeouts: dict[float | None, aiohttp.ClientTimeout] = {}
        self._buffer = bytearray()
        self._closed = False

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
            timeout = self._timeouts[seconds] = aiohttp.ClientTimeout(total=seconds)
        return timeout

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        json_body: Mapping[str, Any] | None = None,
        form: Form | None = None,
        timeout: float | None,
        decode_json: bool = False,
    ) -> RawResponse:
        """Send one request and read the whole response.

        With ``decode_json`` a successful body is decoded (in a reused buffer)
        into ``RawResponse.json`` instead of being kept as bytes.

        Raises:
            APIStatusError: (a subclass of it) the status is 400 or above.
            APIResponseValidationError: ``decode_json`` and the body is not JSON.
            ResponseTooLargeError: the body is larger than ``max_response_bytes``.
            APITimeoutError, APIConnectionError: no usable answer.
        """
        data: aiohttp.FormData | bytes | None = None
        send_headers = dict(headers)
        if json_body is not None:
            data = json.dumps(json_body).encode()
            send_headers["Content-Type"] = "application/json"
        elif form is not None:
            data = aiohttp.FormData(quote_fields=False)
            for name, value in form.fields:
                data.add_field(name, value)
            for name, file in form.files:
                data.add_field(name, file.data, filename=file.filename, content_type=file.mime)
        if self._external and not any(k.lower() == "user-agent" for k in send_headers):
            send_headers["User-Agent"] = self._user_agent
        what = f"{method} {without_query(url)}"
        proxy = self._proxy(url)
        with map_transport_errors(what, timeout):
            async with self.session.request(
                method,
                url,
                data=data,
                headers=send_headers,
                timeout=self._timeout(timeout),
                proxy=proxy,
                raise_for_status=False,
            ) as resp:
                chunks, size = await self._read(resp)
                status, resp_headers = resp.status, resp.headers
        if status >= 400 or not decode_json:
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            if status >= 400:
                raise error_from_response(
                    status, body, resp_headers, request_id=resp_headers.get("x-request-id")
                )
            return RawResponse(status, resp_headers, body)
        return RawResponse(status, resp_headers, json=self._decode(chunks, size, status,
                                                                   resp_headers))

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
        try:
            return loads_images_json(buf, size)
        except (ValueError, UnicodeDecodeError) as exc:
            raise APIResponseValidationError(
                f"the {status} response is not valid JSON ({size} bytes): {exc}",
                status_code=status,
                request_id=headers.get("x-request-id"),
            ) from None

    async def _read(self, resp: aiohttp.ClientResponse) -> tuple[list[bytes], int]:
        cap = self._max_response_bytes

        def too_large(size: str) -> ResponseTooLargeError:
            return ResponseTooLargeError(
                f"the response is {size}, over max_response_bytes={cap}",
                status_code=resp.status,
                request_id=resp.headers.get("x-request-id"),
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

    def _proxy(self, url: str) -> str | None:
        origin = url.split("/", 3)[:3]
        key = "/".join(origin)
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
