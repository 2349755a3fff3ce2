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
from collections.abc import Iterator, Mapping
from typing import Any

import aiohttp
import attrs
from multidict import CIMultiDictProxy

from ._exceptions import (
    APIConnectionError,
    APIResponseValidationError,
    APITimeoutError,
    ResponseTooLargeError,
    error_from_response,
)
from ._params import Form

__all__ = ["RawResponse", "Transport", "map_transport_errors", "parse_json"]


@attrs.frozen
class RawResponse:
    """A status, its headers and the whole body, read."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes = attrs.field(repr=lambda b: f"<{len(b)} bytes>")

    @property
    def request_id(self) -> str | None:
        """The server's ``x-request-id``, if it sent one."""
        return self.headers.get("x-request-id")


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
    except aiohttp.ClientConnectorError as exc:
        raise APIConnectionError(f"{what}: cannot connect: {exc.os_error}") from exc
    except aiohttp.ServerDisconnectedError as exc:
        raise APIConnectionError(f"{what}: the server closed the connection") from exc
    except aiohttp.ClientPayloadError as exc:
        raise APIConnectionError(f"{what}: the response body broke off") from exc
    except aiohttp.ClientResponseError as exc:
        raise APIConnectionError(f"{what}: bad response: {exc.message}") from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise APIConnectionError(f"{what}: {type(exc).__name__}: {exc}") from exc


def parse_json(raw: RawResponse) -> object:
    """Decode a successful JSON body.

    Raises:
        APIResponseValidationError: the body is not valid JSON (a truncated reply).
    """
    try:
        return json.loads(raw.body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise APIResponseValidationError(
            f"the {raw.status} response is not valid JSON ({len(raw.body)} bytes): {exc}",
            status_code=raw.status,
            request_id=raw.request_id,
        ) from None


class Transport:
    """One aiohttp session and the requests sent through it.

    Args:
        max_connections: the connection pool's size.
        max_response_bytes: a body larger than this is refused, unread.
        user_agent: the ``User-Agent`` header of every request.
    """

    __slots__ = ("_closed", "_loop", "_max_connections", "_max_response_bytes", "_session",
                 "_timeouts", "_user_agent")

    def __init__(self, *, max_connections: int, max_response_bytes: int, user_agent: str) -> None:
        self._max_connections = max_connections
        self._max_response_bytes = max_response_bytes
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timeouts: dict[float | None, aiohttp.ClientTimeout] = {}
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
        if session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, ttl_dns_cache=300, enable_cleanup_closed=False
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
    ) -> RawResponse:
        """Send one request and read the whole response.

        Raises:
            APIStatusError: (a subclass of it) the status is 400 or above.
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
        what = f"{method} {url}"
        with map_transport_errors(what, timeout):
            async with self.session.request(
                method, url, data=data, headers=send_headers, timeout=self._timeout(timeout)
            ) as resp:
                body = await self._read(resp)
                raw = RawResponse(resp.status, resp.headers, body)
        if raw.status >= 400:
            raise error_from_response(raw.status, raw.body, raw.headers, request_id=raw.request_id)
        return raw

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes:
        cap = self._max_response_bytes
        length = resp.content_length
        if length is not None and length > cap:
            raise ResponseTooLargeError(
                f"the response is {length} bytes, over max_response_bytes={cap}",
                status_code=resp.status,
                request_id=resp.headers.get("x-request-id"),
            )
        if length is not None:
            return await resp.read()
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_any():
            size += len(chunk)
            if size > cap:
                raise ResponseTooLargeError(
                    f"the response is over max_response_bytes={cap}",
                    status_code=resp.status,
                    request_id=resp.headers.get("x-request-id"),
                )
            chunks.append(chunk)
        return b"".join(chunks)

    async def aclose(self) -> None:
        """Close the session and its connections; later requests raise RuntimeError."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()
