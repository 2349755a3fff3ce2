"""The emulator's streamed answers: server-sent events for ``stream=true``.

A streamed generation or edit answers ``text/event-stream``: for each image,
``partial_images`` partial events (``image_generation.partial_image`` or
``image_edit.partial_image``), then its completed event with ``usage``. A
partial is an earlier, rougher version of the final picture: with Pillow, the
final pixelated, finer at each step and in its format
(:func:`asyncimg.testing._pictures.partial_frame`); without it, the top part
drawn in coarse bands, the rest still grey, more of it and finer at each step.
The ``trickle`` fault spaces the events out, ``drop_stream`` cuts the connection
after some of them; the journal counts the events written, so a test sees when a
client left early.
"""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from .._decode import pillow
from ._faults import Fault
from ._pictures import partial_frame

__all__ = ["partial_png", "sse_events", "write_events"]

_GREY = 0x80


def _rows(png: bytes) -> tuple[int, int, int, list[bytes]]:
    """``(width, height, channels, rows)`` of a PNG laid out as :func:`encode_png` writes it.

    Raises:
        ValueError: not such a PNG (another encoder's, a JPEG, ...).
    """
    if png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR" or png[37:41] != b"IDAT":
        raise ValueError("not a PNG of encode_png's layout")
    width = int.from_bytes(png[16:20], "big")
    height = int.from_bytes(png[20:24], "big")
    channels = {2: 3, 6: 4}.get(png[25])
    idat_len = int.from_bytes(png[33:37], "big")
    try:
        raw = zlib.decompress(png[41 : 41 + idat_len])
    except zlib.error as exc:
        raise ValueError(f"not a PNG of encode_png's layout: {exc}") from None
    stride = 1 + width * (channels or 0)
    if channels is None or png[24] != 8 or len(raw) != stride * height or any(
        raw[y * stride] for y in range(height)
    ):
        raise ValueError("not a PNG of encode_png's layout")
    return width, height, channels, [raw[y * stride + 1 : (y + 1) * stride] for y in range(height)]


def partial_png(final: bytes, step: int, steps: int) -> bytes:
    """Partial image ``step`` (0-based) of ``steps``: an earlier version of ``final``.

    The top ``(step + 1) / (steps + 1)`` of the picture is there, in bands of
    rows coarser than the final's; the rest is grey. An image this module
    cannot read (not one of :func:`encode_png`'s PNGs) is returned as it is.
    """
    from ._png import encode_png

    try:
        width, height, channels, rows = _rows(final)
    except ValueError:
        return final
    shown = max(1, height * (step + 1) // (steps + 1))
    block = max(1, height // (4 * (step + 1)))
    grey = bytes([_GREY] * (width * channels))
    out = [rows[y - y % block] if y < shown else grey for y in range(height)]
    return encode_png(width, height, out, alpha=channels == 4)


def _event(kind: str, payload: Mapping[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(payload)}\n\n".encode()


def sse_events(
    body: Mapping[str, Any], *, endpoint: str, partial_images: int, created_at: int
) -> tuple[bytes, ...]:
    """The events of a streamed answer whose whole (non-streamed) body would be ``body``.

    ``usage`` is split evenly over the images' completed events.
    """
    prefix = "image_edit" if endpoint == "edit" else "image_generation"
    data = body["data"]
    common = {
        "created_at": created_at,
        "size": body.get("size"),
        "quality": body.get("quality"),
        "background": body.get("background"),
        "output_format": body.get("output_format"),
    }
    usage = dict(body.get("usage") or {})
    if len(data) > 1 and usage:
        usage = {k: v // len(data) if isinstance(v, int) else v for k, v in usage.items()}
    events = []
    for item in data:
        final = base64.b64decode(item["b64_json"])
        for step in range(partial_images):
            rough = (
                partial_png(final, step, partial_images)
                if pillow() is None
                else partial_frame(final, step)
            )
            partial = base64.b64encode(rough).decode()
            events.append(
                _event(
                    f"{prefix}.partial_image",
                    {"type": f"{prefix}.partial_image", "b64_json": partial, **common,
                     "partial_image_index": step},
                )
            )
        events.append(
            _event(
                f"{prefix}.completed",
                {"type": f"{prefix}.completed", "b64_json": item["b64_json"], **common,
                 "usage": usage,
                 **{k: body[k] for k in ("safety_identifier",) if k in body}},
            )
        )
    return tuple(events)


async def write_events(
    request: web.Request,
    response: web.StreamResponse,
    events: tuple[bytes, ...],
    fault: Fault | None,
    record: dict[str, Any],
    sleep: Callable[[float], Awaitable[None]],
) -> None:
    """Send ``events`` on a prepared response, as ``fault`` says; count them in ``record``.

    ``trickle`` waits its seconds before each event; ``drop_stream`` closes
    the connection after ``fault.chunks`` events.
    """
    record["events"] = 0
    kind = fault.kind if fault is not None else None
    for event in events:
        if kind == "drop_stream" and fault is not None and record["events"] >= fault.chunks:
            transport = request.transport
            if transport is not None:
                transport.close()
            return
        if kind == "trickle" and fault is not None:
            await sleep(fault.seconds)
        await response.write(event)
        record["events"] += 1
    await response.write_eof()
