"""Streaming partial images: the SSE parser, the events, and :class:`ImageStream`.

``generate(..., stream=True)`` and ``edit(..., stream=True)`` answer with
server-sent events (``text/event-stream``). Three layers:

* :class:`SSEDecoder` (pure, no I/O): bytes in, :class:`ServerSentEvent` out, in
  chunks cut anywhere; LF, CRLF and CR line ends, comments, multi-line ``data``,
  and a last event without its final newline.
* :func:`parse_event` (pure): one event's JSON to a :class:`PartialImageEvent`,
  a :class:`CompletedImageEvent` or an :class:`UnknownEvent`; an ``error`` event
  (or an ``{"error": ...}`` payload) becomes the matching
  :class:`~asyncimg.APIStatusError` subclass, to be raised.
* :class:`ImageStream`: the live response read event by event. Leaving it
  (``async with``, ``break``, an exception, a cancellation) closes the
  connection at once; ``timeout`` bounds the wait for each event, not the
  whole stream; an event's base64 is dropped with the event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias

import attrs

from ._exceptions import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    ResponseTooLargeError,
    error_from_response,
    request_id_of,
)
from ._json import extra_fields as _extra
from ._json import int_field as _int
from ._json import str_field as _str
from ._models import Dumpable, Usage

if TYPE_CHECKING:
    import aiohttp
    from multidict import CIMultiDictProxy

__all__ = [
    "CompletedImageEvent",
    "ImageStream",
    "ImageStreamEvent",
    "PartialImageEvent",
    "SSEDecoder",
    "ServerSentEvent",
    "UnknownEvent",
    "parse_event",
    "stream_error",
]

@attrs.frozen
class ServerSentEvent:
    """One server-sent event: its ``event`` name, its ``data`` (lines joined by LF), its ``id``."""

    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """An incremental ``text/event-stream`` parser (the WHATWG rules; no I/O).

    :meth:`feed` takes bytes as they arrive and returns the events they
    complete; :meth:`close` ends the stream and returns a last event that had
    no blank line (or no newline) after it. Consumed bytes are dropped at once,
    so memory holds only the event being received.
    """

    def __init__(self) -> None:
        self._size = 0
        self._buffer = bytearray()
        self._scan = 0
        self._skip_lf = False
        self._event: str | None = None
        self._data: list[str] = []
        self._id: str | None = None
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """The events completed by ``chunk``."""
        buf = self._buffer
        if self._skip_lf and chunk:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        buf += chunk
        events: list[ServerSentEvent] = []
        start = 0
        pos = self._scan
        # bytes.find (memchr) rather than a regex: an event's data line is megabytes long.
        cr = buf.find(b"\r", pos)
        while True:
            lf = buf.find(b"\n", pos)
            if cr != -1 and cr < pos:
                cr = buf.find(b"\r", pos)
            if lf == -1 and cr == -1:
                break
            if cr == -1 or (lf != -1 and lf < cr):
                end, pos = lf, lf + 1
            elif cr + 1 < len(buf):
                end, pos = cr, cr + 2 if buf[cr + 1] == 0x0A else cr + 1
            else:  # a CRLF may be cut between this chunk and the next
                end, pos = cr, cr + 1
                self._skip_lf = True
            self._line(buf, start, end, events)
            start = pos
        del buf[:start]
        self._scan = len(buf)
        return events

    @property
    def pending_bytes(self) -> int:
        """Bytes held for the event not yet complete (its data so far and the open line)."""
        return self._size + len(self._buffer)

    def close(self) -> list[ServerSentEvent]:
        """End of stream: the last line and event, even without their newlines."""
        events: list[ServerSentEvent] = []
        buf = self._buffer
        if buf:
            self._line(buf, 0, len(buf), events)
            buf.clear()
            self._scan = 0
        self._line(buf, 0, 0, events)
        return events

    def _line(self, buf: bytearray, start: int, end: int, events: list[ServerSentEvent]) -> None:
        if start == end:
            if self._data:
                events.append(
                    ServerSentEvent(
                        self._event or "message", "\n".join(self._data), self._id, self._retry
                    )
                )
            self._event, self._data, self._retry, self._size = None, [], None, 0
            return
        if buf[start] == 0x3A:  # ':' a comment
            return
        colon = buf.find(b":", start, end)
        if colon == -1:
            name, value = buf[start:end].decode("utf-8", "replace"), ""
        else:
            name = buf[start:colon].decode("utf-8", "replace")
            first = colon + 2 if colon + 1 < end and buf[colon + 1] == 0x20 else colon + 1
            value = buf[first:end].decode("utf-8", "replace")
        if name == "data":
            self._data.append(value)
            self._size += len(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\x00" not in value:
            self._id = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)


# -- the events ------------------------------------------------------------------------


@attrs.frozen
class _ImageEvent(Dumpable):
    """What a partial and a completed event share (dumped like the SDK's, :class:`Dumpable`)."""

    type: str
    """The wire string, e.g. ``image_generation.partial_image``."""
    b64_json: str | None = attrs.field(default=None, repr=False)
    size: str | None = None
    quality: str | None = None
    background: str | None = None
    output_format: str | None = None
    created_at: int | None = None
    request_id: str | None = None
    """The stream's ``x-request-id``."""
    extra: Mapping[str, Any] = attrs.field(factory=dict, repr=False)
    """The fields this version does not know."""

    _KNOWN: ClassVar[frozenset[str]] = frozenset(
        {"type", "b64_json", "created_at", "size", "quality", "background", "output_format"}
    )
    _NOT_SENT: ClassVar[frozenset[str]] = frozenset({"request_id"})

    @property
    def _request_id(self) -> str | None:
        """The official SDK's name for :attr:`request_id`."""
        return self.request_id

    @classmethod
    def _shared(cls, obj: Mapping[str, Any], request_id: str | None) -> dict[str, Any]:
        return {
            "type": _str(obj, "type") or "",
            "b64_json": _str(obj, "b64_json"),
            "size": _str(obj, "size"),
            "quality": _str(obj, "quality"),
            "background": _str(obj, "background"),
            "output_format": _str(obj, "output_format"),
            "created_at": _int(obj, "created_at"),
            "request_id": request_id,
            "extra": _extra(obj, cls._KNOWN),
        }


@attrs.frozen
class PartialImageEvent(_ImageEvent):
    """A partial image: an earlier, rougher version of the final one.

    ``type`` is the wire string (``image_generation.partial_image`` or
    ``image_edit.partial_image``); ``b64_json`` is left out of ``repr()``.
    Unknown fields are kept in ``extra``.
    """

    partial_image_index: int | None = None

    _KNOWN: ClassVar[frozenset[str]] = _ImageEvent._KNOWN | {"partial_image_index"}

    @classmethod
    def from_json(
        cls, obj: Mapping[str, Any], *, request_id: str | None = None
    ) -> PartialImageEvent:
        """Build from the event's decoded JSON (a field of the wrong type becomes None)."""
        return cls(
            partial_image_index=_int(obj, "partial_image_index"), **cls._shared(obj, request_id)
        )


@attrs.frozen
class CompletedImageEvent(_ImageEvent):
    """The final image, with the call's ``usage``.

    ``type`` is ``image_generation.completed`` or ``image_edit.completed``;
    ``b64_json`` is left out of ``repr()``; ``safety_identifier`` is the one the
    server used. Unknown fields are kept in ``extra``.
    """

    usage: Usage | None = None
    safety_identifier: str | None = None

    _KNOWN: ClassVar[frozenset[str]] = _ImageEvent._KNOWN | {"usage", "safety_identifier"}

    @classmethod
    def from_json(
        cls, obj: Mapping[str, Any], *, request_id: str | None = None
    ) -> CompletedImageEvent:
        """Build from the event's decoded JSON (a field of the wrong type becomes None)."""
        usage = obj.get("usage")
        return cls(
            usage=Usage.from_json(usage) if isinstance(usage, dict) else None,
            safety_identifier=_str(obj, "safety_identifier"),
            **cls._shared(obj, request_id),
        )


@attrs.frozen
class UnknownEvent(Dumpable):
    """An event of a type this version does not know, kept whole (``data``: its JSON).

    ``b64_json`` is its ``b64_json`` field if it has one, so that ``event.b64_json``
    reads on every event. It dumps (``model_dump()``) as its JSON object.
    """

    type: str
    data: Any = attrs.field(repr=False)
    request_id: str | None = None
    b64_json: str | None = attrs.field(default=None, repr=False)

    _NOT_SENT: ClassVar[frozenset[str]] = frozenset({"type", "data", "request_id", "b64_json"})

    @property
    def extra(self) -> Mapping[str, Any]:
        """The event's JSON object (empty when it was not an object)."""
        return self.data if isinstance(self.data, Mapping) else {}

    @classmethod
    def from_json(cls, obj: Any, *, request_id: str | None = None, event: str = "") -> UnknownEvent:
        """Build from the event's decoded JSON; ``type`` from it, else the SSE event name."""
        mapping = isinstance(obj, Mapping)
        kind = _str(obj, "type") if mapping else None
        return cls(kind or event, obj, request_id, _str(obj, "b64_json") if mapping else None)


ImageStreamEvent: TypeAlias = PartialImageEvent | CompletedImageEvent | UnknownEvent
"""What an :class:`ImageStream` yields."""

_ERROR_STATUSES: Mapping[str, int] = {
    "invalid_request_error": 400,
    "content_policy_violation": 400,
    "moderation_blocked": 400,
    "authentication_error": 401,
    "invalid_api_key": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "rate_limit_error": 429,
    "rate_limit_exceeded": 429,
    "insufficient_quota": 429,
    "server_error": 500,
    "api_error": 500,
}


def stream_error(payload: object, *, request_id: str | None = None) -> APIStatusError:
    """The exception for an error sent inside a stream (pure; never raises).

    ``payload`` is ``{"error": {...}}`` or a flat ``{"type": "error", "message": ...}``.
    The status comes from a ``status``/``status_code`` field if there is one,
    else from the error's ``code`` or ``type`` (``invalid_request_error`` ->
    400, ``rate_limit_exceeded`` -> 429, ...), else 500.
    """
    outer: Mapping[str, Any] = payload if isinstance(payload, Mapping) else {
        "message": str(payload)
    }
    inner = outer.get("error")
    if isinstance(inner, str):
        inner = {"message": inner}
    error: Mapping[str, Any] = inner if isinstance(inner, Mapping) else outer
    statuses = [
        value
        for source in (error, outer)
        for value in (source.get("status_code"), source.get("status"))
        if isinstance(value, int) and not isinstance(value, bool) and value >= 400
    ]
    status = statuses[0] if statuses else (
        _ERROR_STATUSES.get(str(error.get("code")))
        or _ERROR_STATUSES.get(str(error.get("type")))
        or 500
    )
    fields = {k: error[k] for k in ("message", "type", "param", "code") if k in error}
    if error is outer:
        fields.pop("type", None)  # the event's own type ("error"), not the error's
    body = json.dumps({"error": fields}).encode()
    return error_from_response(status, body, request_id=request_id)


def parse_event(sse: ServerSentEvent, *, request_id: str | None = None) -> ImageStreamEvent:
    """One server-sent event as an image event (pure).

    Raises:
        APIStatusError: (the matching subclass) the event is an error.
    """
    try:
        obj: Any = json.loads(sse.data)
    except ValueError:
        obj = sse.data
    kind = _str(obj, "type") if isinstance(obj, Mapping) else None
    if sse.event == "error" or kind == "error" or (isinstance(obj, Mapping) and "error" in obj):
        raise stream_error(obj, request_id=request_id)
    if isinstance(obj, Mapping) and kind is not None:
        if kind.endswith(".partial_image"):
            return PartialImageEvent.from_json(obj, request_id=request_id)
        if kind.endswith(".completed"):
            return CompletedImageEvent.from_json(obj, request_id=request_id)
    return UnknownEvent.from_json(obj, request_id=request_id, event=sse.event)


# -- the stream --------------------------------------------------------------------------


class ImageStream:
    """The events of one streamed generation or edit, as they arrive.

    An async iterator of :data:`ImageStreamEvent` (``PartialImageEvent`` ...,
    then one ``CompletedImageEvent``) and an async context manager::

        async with await client.generate("a lantern", model="gpt-image-1.5",
                                         stream=True, partial_images=2) as stream:
            async for event in stream:
                await client.save_event(event, "out/")

    Leaving the ``async for`` early (``break``, an exception, a cancellation),
    leaving ``async with``, or :meth:`aclose` closes the connection at once.
    Nothing is re-sent once the first event has arrived.

    Raises (while iterating):
        APIStatusError: the server sent an error event (the matching subclass).
        ResponseTooLargeError: one event is larger than the client's ``max_response_bytes``.
        APITimeoutError: no event came within ``timeout`` seconds.
        APIConnectionError: the stream broke off, or ended before the final image.
    """

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        *,
        timeout: float | None,
        what: str,
        kind: str = "image_generation",
        max_event_bytes: int | None = None,
    ) -> None:
        self._response: aiohttp.ClientResponse | None = response
        self._kind = kind
        self._max_event_bytes = max_event_bytes
        self.status: int = response.status
        self.headers: CIMultiDictProxy[str] = response.headers
        self.request_id: str | None = request_id_of(response.headers)
        """The server's ``x-request-id``."""
        self._timeout = timeout
        self._what = what
        self._decoder = SSEDecoder()
        self._pending: deque[ImageStreamEvent] = deque()
        self._eof = False
        self._completed = False
        self._done = False
        self._error: APIStatusError | APIConnectionError | None = None

    def __repr__(self) -> str:
        state = "closed" if self._response is None else "open"
        return f"<ImageStream {self._what} {state} request_id={self.request_id!r}>"

    async def __aenter__(self) -> ImageStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> AsyncIterator[ImageStreamEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[ImageStreamEvent]:
        # A generator, so that leaving `async for` early (its finalizer runs at
        # once) closes the connection as `async with` would.
        try:
            while True:
                try:
                    event = await self.__anext__()
                except StopAsyncIteration:
                    return
                yield event
                del event  # the consumer is done with it: its base64 goes now
        finally:
            self._close()

    async def __anext__(self) -> ImageStreamEvent:
        """The next event.

        Raises:
            StopAsyncIteration: after the completed event and the end of the stream.
            APIStatusError, APITimeoutError, APIConnectionError: see the class.
        """
        if not self._pending:
            if self._done:
                raise StopAsyncIteration
            try:
                await self._fill()
            except BaseException:
                self._close()
                raise
            if not self._pending:
                self._close()
                raise StopAsyncIteration
        return self._pending.popleft()

    async def _fill(self) -> None:
        """Read until at least one event is pending or the stream has ended.

        Raises:
            APIStatusError, APITimeoutError, APIConnectionError: see the class.
        """
        from ._transport import map_transport_errors

        response = self._response
        if response is None or self._error is not None:
            self._done = True
            error, self._error = self._error, None
            if error is not None:
                raise error
            return
        loop = asyncio.get_running_loop()
        deadline = None if self._timeout is None else loop.time() + self._timeout
        while not self._pending and not self._eof:
            left = None if deadline is None else max(deadline - loop.time(), 0.0)
            with map_transport_errors(self._what, self._timeout):  # a timeout: APITimeoutError
                chunk = await asyncio.wait_for(response.content.readany(), left)
            sses = self._decoder.feed(chunk) if chunk else self._end()
            cap = self._max_event_bytes
            if cap is not None and max(
                [self._decoder.pending_bytes, *(len(sse.data) for sse in sses)]
            ) > cap:
                raise ResponseTooLargeError(
                    f"{self._what}: an event is over max_response_bytes={cap}",
                    status_code=self.status,
                    request_id=self.request_id,
                )
            self._take(sses)
        if self._eof and self._error is None:
            response.release()
            self._response = None
        if not self._pending:
            await self._fill()

    def _end(self) -> list[ServerSentEvent]:
        self._eof = True
        return self._decoder.close()

    def _take(self, sses: list[ServerSentEvent]) -> None:
        """Parse events into the queue; an error (or the end without the final image)
        is kept to be raised once the events before it have been consumed."""
        for sse in sses:
            try:
                event = parse_event(sse, request_id=self.request_id)
            except APIStatusError as exc:
                self._error, self._eof = exc, True
                return
            self._completed = self._completed or isinstance(event, CompletedImageEvent)
            self._pending.append(event)
        if self._eof and not self._completed:
            self._error = APIConnectionError(
                f"{self._what}: the stream ended before the completed image"
            )

    async def prime(self) -> None:
        """Wait for the first event (the client retries until it has come).

        Raises:
            APIResponseValidationError: a server that does not stream answered a body
                that is not an images response.
            APIStatusError, APITimeoutError, APIConnectionError: see the class.
        """
        try:
            if self.headers.get("Content-Type", "").startswith("application/json"):
                await self._whole_answer()
            else:
                await self._fill()
        except BaseException:
            self._close()
            raise

    async def _whole_answer(self) -> None:
        """A server that does not stream answered the whole response: its images become
        completed events (a ``url`` result's url in ``extra``).

        Raises:
            APIResponseValidationError: the body is not an images response.
            ResponseTooLargeError: it is over ``max_response_bytes``.
            APIConnectionError: the body broke off.
        """
        from ._models import ImagesResponse
        from ._transport import map_transport_errors

        response = self._response
        assert response is not None
        cap = self._max_event_bytes
        with map_transport_errors(self._what, self._timeout):
            body = await asyncio.wait_for(response.read(), self._timeout)
        if cap is not None and len(body) > cap:
            raise ResponseTooLargeError(
                f"{self._what}: the response is over max_response_bytes={cap}",
                status_code=self.status,
                request_id=self.request_id,
            )
        try:
            obj = json.loads(body)
        except ValueError:
            obj = None
        whole = ImagesResponse.from_json(obj, request_id=self.request_id, status_code=self.status)
        if not whole.data:
            raise APIResponseValidationError(
                f"{self._what}: asked for a stream, the server answered JSON without images",
                status_code=self.status,
                request_id=self.request_id,
            )
        for image in whole.data:
            self._pending.append(
                CompletedImageEvent(
                    type=f"{self._kind}.completed",
                    b64_json=image.b64_json,
                    size=whole.size,
                    quality=whole.quality,
                    background=whole.background,
                    output_format=whole.output_format,
                    created_at=whole.created,
                    usage=whole.usage,
                    request_id=self.request_id,
                    extra={"url": image.url} if image.url else {},
                )
            )
        self._eof = self._completed = True
        response.release()
        self._response = None

    async def final(self) -> CompletedImageEvent:
        """Consume the rest of the stream and return its completed event (the final image).

        Raises:
            APIConnectionError: the stream ended without a completed event.
            APIStatusError, APITimeoutError: see the class.
        """
        try:
            while True:
                try:
                    event = await self.__anext__()
                except StopAsyncIteration:
                    break
                if isinstance(event, CompletedImageEvent):
                    return event
        finally:
            await self.aclose()
        raise APIConnectionError(f"{self._what}: the stream ended before the completed image")

    def _close(self) -> None:
        self._done = True
        self._pending.clear()
        response, self._response = self._response, None
        if response is not None:
            response.close()

    async def aclose(self) -> None:
        """Close the connection now (the server sees the stream end). Safe to call twice."""
        self._close()

    def __del__(self) -> None:
        response = getattr(self, "_response", None)
        if response is not None:
            with contextlib.suppress(Exception):  # at interpreter exit, say
                response.close()
