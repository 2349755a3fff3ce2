"""How the emulator writes its response headers: as the API's own servers, or as others.

The emulator builds every answer with lower-case names and both ``Retry-After``
and ``retry-after-ms``. Servers met in the field do not: proxies and
compatible servers write canonical capitalised names (``Retry-After``,
``X-Request-Id``), send ``Retry-After`` alone, some as an HTTP date. A
:data:`HeaderStyle` rewrites the headers of each answer just before it is sent:

===============  =============================================================
``"openai"``     as built: ``retry-after-ms`` beside ``Retry-After``
``"canonical"``  every name capitalised (``X-Ratelimit-Remaining-Images``),
                 ``Retry-After`` alone, in seconds (a fraction is kept, so that
                 tests stay fast; real servers round up to whole seconds)
``"http-date"``  as ``canonical``, with ``Retry-After`` as an HTTP date, rounded
                 up to the next whole second
===============  =============================================================
"""

from __future__ import annotations

import email.utils
import math
from collections.abc import Mapping
from typing import Literal, get_args

__all__ = ["HEADER_STYLES", "HeaderStyle", "canonical_name", "styled_headers"]

HeaderStyle = Literal["openai", "canonical", "http-date"]
HEADER_STYLES: tuple[str, ...] = get_args(HeaderStyle)


def canonical_name(name: str) -> str:
    """``x-ratelimit-reset-images`` -> ``X-Ratelimit-Reset-Images``."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def styled_headers(
    headers: Mapping[str, str], style: HeaderStyle, now: float
) -> dict[str, str]:
    """The headers of one answer, written in ``style``.

    ``now`` is the wall-clock time (``time.time()``), for an HTTP-date
    ``Retry-After``. The seconds come from ``retry-after-ms`` when present.

    Raises:
        ValueError: ``style`` is not one of :data:`HEADER_STYLES`.
    """
    if style not in HEADER_STYLES:
        raise ValueError(f"header style {style!r} is not one of {', '.join(HEADER_STYLES)}")
    if style == "openai":
        return dict(headers)
    lowered = {name.lower(): value for name, value in headers.items()}
    ms = lowered.pop("retry-after-ms", None)
    if "retry-after" in lowered:
        seconds = float(ms) / 1000 if ms is not None else float(lowered["retry-after"])
        if style == "http-date":
            lowered["retry-after"] = email.utils.formatdate(
                math.ceil(now + seconds), usegmt=True
            )
        else:
            lowered["retry-after"] = f"{seconds:g}"
    return {canonical_name(name): value for name, value in lowered.items()}
