"""Scripted faults: what the emulator does instead of (or to) its next answers.

A :class:`Fault` is a frozen value built with one of its classmethods and
queued with ``Emulator.add_fault()``. Each request takes the first queued
fault whose ``path`` matches it; a fault with ``times=k`` is used by k
requests, then it is gone.

==========================  ====================================================
``Fault.status(code)``      answer this status with an error body in the API's
                            shape (or ``body=``, or an HTML page with ``html``)
``Fault.html(502)``         answer an nginx-like HTML error page
``Fault.drop()``            close the connection before any reply
``Fault.drop_mid_body()``   send the headers and half the body, then close
``Fault.truncated()``       a complete response whose JSON is cut in half
                            (its Content-Length is that of the cut body)
``Fault.delay(s)``          answer normally, ``s`` seconds late
``Fault.trickle(s, k)``     send the headers, then the body in ``k`` chunks,
                            ``s`` seconds apart (a stream: each event ``s`` late)
``Fault.drop_stream(k)``    a streamed answer: close the connection after
                            ``k`` events
==========================  ====================================================

``status``, ``html`` and ``drop`` replace the answer (the request is not
judged and spends no rate budget); the others change how the normal answer is
delivered.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import attrs
from attrs.validators import ge, in_, instance_of, optional

__all__ = ["ENDPOINT_PATHS", "Fault", "FaultKind", "FaultQueue", "path_matches"]

FaultKind = Literal[
    "status", "drop", "drop_mid_body", "truncated", "delay", "trickle", "drop_stream"
]

ENDPOINT_PATHS: Mapping[str, str] = {
    "generate": "/v1/images/generations",
    "edit": "/v1/images/edits",
    "variation": "/v1/images/variations",
}
"""The path of each endpoint, by the names ``Fault(path=...)`` also accepts."""

_API_PREFIX = "/v1/images/"


def path_matches(pattern: str | None, path: str) -> bool:
    """Whether a request to ``path`` matches a fault's (or a filter's) ``pattern``.

    None matches every images endpoint (not url downloads). A pattern may be an
    endpoint name (``"edit"``), a full path (``"/v1/images/edits"``), a path
    without the ``/v1`` prefix (``"/images/edits"``), or a prefix ending in
    ``/`` (``"/blobs/"`` matches every download).
    """
    if pattern is None:
        return path.startswith(_API_PREFIX)
    pattern = ENDPOINT_PATHS.get(pattern, pattern)
    if pattern.endswith("/"):
        return path.startswith(pattern) or path.startswith("/v1" + pattern)
    return path in (pattern, "/v1" + pattern)


@attrs.frozen(kw_only=True)
class Fault:
    """One scripted misbehaviour of the emulator; build it with a classmethod.

    Attributes:
        kind: which fault (see the module's table).
        status_code: the status a ``status`` fault answers.
        body: a ``status`` fault's body: None for an error in the API's shape,
            a mapping for JSON, ``str``/``bytes`` sent as they are.
        as_html: a ``status`` fault answers an nginx-like HTML page.
        headers: extra headers on a ``status`` fault's answer.
        retry_after: seconds; sent as ``Retry-After`` (whole seconds, rounded
            up) and ``retry-after-ms``.
        code: the ``error.code`` of a ``status`` fault's JSON body.
        message: the ``error.message`` (a default per status otherwise).
        should_retry: sent as ``x-should-retry: true/false`` when not None.
        seconds: the wait of ``delay``, or between chunks of ``trickle``.
        chunks: how many pieces ``trickle`` sends the body in; the events
            ``drop_stream`` sends before it closes.
        times: how many requests the fault applies to.
        path: which requests it applies to (see :func:`path_matches`).
    """

    kind: FaultKind = attrs.field(
        validator=in_(
            ("status", "drop", "drop_mid_body", "truncated", "delay", "trickle", "drop_stream")
        )
    )
    status_code: int = attrs.field(default=500, validator=[instance_of(int), ge(100)])
    body: Mapping[str, Any] | str | bytes | None = None
    as_html: bool = False
    headers: Mapping[str, str] = attrs.field(factory=dict)
    retry_after: float | None = attrs.field(default=None, validator=optional(ge(0)))
    code: str | None = None
    message: str | None = None
    should_retry: bool | None = None
    seconds: float = attrs.field(default=0.0, validator=ge(0))
    chunks: int = attrs.field(default=1, validator=[instance_of(int), ge(0)])
    times: int = attrs.field(default=1, validator=[instance_of(int), ge(1)])
    path: str | None = None

    @classmethod
    def status(
        cls,
        status: int,
        *,
        body: Mapping[str, Any] | str | bytes | None = None,
        html: bool = False,
        headers: Mapping[str, str] | None = None,
        retry_after: float | None = None,
        code: str | None = None,
        message: str | None = None,
        should_retry: bool | None = None,
        times: int = 1,
        path: str | None = None,
    ) -> Fault:
        """Answer ``status`` instead of judging the request.

        The body is ``{"error": {...}}`` with a message, type and code typical
        of the status (``code`` and ``message`` override them; a 429 with
        ``code="insufficient_quota"`` reads as the quota error), or ``body``
        as given, or an HTML page when ``html``.

        Raises:
            ValueError: a status below 100, or ``times`` below 1.
        """
        return cls(
            kind="status",
            status_code=status,
            body=body,
            as_html=html,
            headers=dict(headers or {}),
            retry_after=retry_after,
            code=code,
            message=message,
            should_retry=should_retry,
            times=times,
            path=path,
        )

    @classmethod
    def html(
        cls,
        status: int = 502,
        *,
        headers: Mapping[str, str] | None = None,
        times: int = 1,
        path: str | None = None,
    ) -> Fault:
        """Answer ``status`` with an nginx-like HTML page (as a proxy in front would).

        Raises:
            ValueError: as :meth:`status`.
        """
        return cls(
            kind="status",
            status_code=status,
            as_html=True,
            headers=dict(headers or {}),
            times=times,
            path=path,
        )

    @classmethod
    def drop(cls, *, times: int = 1, path: str | None = None) -> Fault:
        """Close the connection after reading the request, before any reply."""
        return cls(kind="drop", times=times, path=path)

    @classmethod
    def drop_mid_body(cls, *, times: int = 1, path: str | None = None) -> Fault:
        """Send the headers (with the full Content-Length) and half the body, then close."""
        return cls(kind="drop_mid_body", times=times, path=path)

    @classmethod
    def truncated(cls, *, times: int = 1, path: str | None = None) -> Fault:
        """Send a complete response whose body is the first half of the real one.

        Its Content-Length is that of the cut body, so the transfer succeeds and
        only the JSON is broken.
        """
        return cls(kind="truncated", times=times, path=path)

    @classmethod
    def delay(cls, seconds: float, *, times: int = 1, path: str | None = None) -> Fault:
        """Answer normally, ``seconds`` late (for client timeouts).

        Raises:
            ValueError: ``seconds`` is negative.
        """
        return cls(kind="delay", seconds=seconds, times=times, path=path)

    @classmethod
    def trickle(
        cls,
        seconds_per_chunk: float,
        chunks: int = 10,
        *,
        times: int = 1,
        path: str | None = None,
    ) -> Fault:
        """Send the headers at once, then the body in ``chunks`` pieces, each after a wait.

        Raises:
            ValueError: a negative wait or fewer than one chunk.
        """
        return cls(kind="trickle", seconds=seconds_per_chunk, chunks=chunks, times=times, path=path)

    @classmethod
    def drop_stream(cls, after: int, *, times: int = 1, path: str | None = None) -> Fault:
        """A streamed answer: send ``after`` events, then close the connection.

        Raises:
            ValueError: ``after`` is negative.
        """
        return cls(kind="drop_stream", chunks=after, times=times, path=path)


class FaultQueue:
    """The faults queued with ``Emulator.add_fault()``, each with the uses it has left."""

    def __init__(self) -> None:
        self._queue: list[tuple[Fault, int]] = []

    def add(self, *faults: Fault) -> None:
        """Queue ``faults`` in order.

        Raises:
            TypeError: one is not a :class:`Fault` (those before it are queued).
        """
        for fault in faults:
            if not isinstance(fault, Fault):
                raise TypeError(f"expected a Fault, not {type(fault).__name__}")
            self._queue.append((fault, fault.times))

    def take(self, path: str) -> Fault | None:
        """Use the first queued fault that matches a request to ``path`` (None: none does)."""
        for index, (fault, left) in enumerate(self._queue):
            if path_matches(fault.path, path):
                if left <= 1:
                    del self._queue[index]
                else:
                    self._queue[index] = (fault, left - 1)
                return fault
        return None

    @property
    def faults(self) -> list[Fault]:
        """The faults still queued (each once, however many uses it has left)."""
        return [fault for fault, _left in self._queue]

    def clear(self) -> None:
        """Forget every queued fault."""
        self._queue.clear()
