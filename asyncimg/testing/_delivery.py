"""Writing a decided :class:`Answer` onto the wire, as a delivery fault says.

A whole answer's headers are written in the emulator's ``header_style``
(:mod:`._headers`), a streamed answer's as they are. With no fault an answer
goes out whole. The faults that change the delivery, not the answer
(:mod:`._faults`): ``drop`` closes the connection before any reply; ``delay``
waits its seconds first; ``truncated`` sends the first half of the body as a
complete response; ``drop_mid_body`` sends the headers and half the body, then
closes; ``trickle`` sends the body in ``chunks`` pieces, ``seconds`` apart. A
streamed answer's events are written by :func:`._streaming.write_events`
(``trickle`` and ``drop_stream`` apply per event). A client that goes away
mid-answer is not an error.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ._errors import Answer
from ._faults import Fault
from ._headers import HeaderStyle, styled_headers
from ._streaming import write_events

__all__ = ["deliver", "drop"]


def drop(request: web.Request) -> None:
    """Close the connection of ``request`` without a reply."""
    transport = request.transport
    if transport is not None:
        transport.close()


async def deliver(
    request: web.Request,
    answer: Answer,
    fault: Fault | None,
    record: dict[str, Any],
    *,
    sleep: Callable[[float], Awaitable[None]],
    header_style: HeaderStyle,
) -> web.StreamResponse:
    """Send ``answer`` to ``request`` as ``fault`` says; the status sent goes in ``record``.

    ``sleep`` waits (and raises when the emulator closes meanwhile).
    """
    kind = fault.kind if fault is not None else None
    if kind == "drop":
        drop(request)
        return web.Response(status=answer.status)
    if kind == "delay":
        assert fault is not None
        await sleep(fault.seconds)
    if answer.events is not None:
        stream = web.StreamResponse(status=answer.status, headers=answer.headers)
        stream.content_type = answer.content_type
        try:
            await stream.prepare(request)
            record["status"] = answer.status
            await write_events(request, stream, answer.events, fault, record, sleep)
        except ConnectionError:
            pass  # the client went away
        return stream
    body = answer.body
    if kind == "truncated":
        body = body[: len(body) // 2]
    headers = styled_headers(answer.headers, header_style, time.time())
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
            drop(request)
            return response
        step = max(1, math.ceil(len(body) / fault.chunks))
        for start in range(0, len(body), step):
            await sleep(fault.seconds)
            await response.write(body[start : start + step])
        await response.write_eof()
    except ConnectionError:
        pass  # the client went away
    return response
