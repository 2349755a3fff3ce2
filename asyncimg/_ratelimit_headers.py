"""The server's word on its rate limit: reading the ``x-ratelimit-*`` response headers.

OpenAI (and servers that copy it) send ``x-ratelimit-remaining-images`` and
``x-ratelimit-reset-images`` (or the ``-requests`` pair) with every answer.
:func:`read_ratelimit_headers` turns them into a :class:`ServerAllowance`, which
:class:`~asyncimg.Limiter` and the shared Redis limiter use to cap their grants;
:func:`parse_duration` reads the reset, a Go-style duration such as ``"6m0s"``.
Pure functions: no I/O, no clock.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Mapping

import attrs

__all__ = ["ServerAllowance", "parse_duration", "read_ratelimit_headers"]

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|μs|ns|d|h|m|s)")
_UNIT_SECONDS = {
    "d": 86400.0,
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ns": 1e-9,
}


def parse_duration(text: str) -> float:
    """Parse a rate-limit reset duration into seconds.

    Accepts the API's Go-style durations (``"1s"``, ``"6m0s"``, ``"20ms"``,
    ``"1h2m3.5s"``, ``"1.5s"``, ``"300us"``, also ``"2d"``) and a bare number of
    seconds (``"2"``, ``"0.5"``). Surrounding whitespace is ignored.

    Raises:
        ValueError: the text is not a non-negative duration.
    """
    s = text.strip()
    if not s:
        raise ValueError("an empty duration")
    try:
        value = float(s)
    except ValueError:
        pass
    else:
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"not a duration: {text!r}")
        return value
    total = 0.0
    pos = 0
    while pos < len(s):
        match = _DURATION_PART.match(s, pos)
        if match is None:
            raise ValueError(f"not a duration: {text!r}")
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    return total



@attrs.frozen
class ServerAllowance:
    """What a response's ``x-ratelimit-*`` headers say.

    Attributes:
        remaining: how many more the server allows before ``reset``.
        reset: seconds until the server's count resets (0: no constraint).
        images: True when counted in images, False when in requests.
        limit: the server's ``x-ratelimit-limit-*``, if it sent one.
    """

    remaining: int
    reset: float
    images: bool
    limit: int | None


def read_ratelimit_headers(headers: Mapping[str, str]) -> ServerAllowance | None:
    """Read ``x-ratelimit-remaining-images`` with ``x-ratelimit-reset-images``
    (else the ``-requests`` pair) from response headers, case-insensitively.

    Returns None when neither pair is complete and well-formed. Never raises.
    """
    found: dict[str, str] = {}
    for key, value in headers.items():
        lowered = key.lower()
        if lowered.startswith("x-ratelimit-"):
            found.setdefault(lowered, value)  # a repeated header: the first value
    if not found:
        return None
    for unit in ("images", "requests"):
        raw_remaining = found.get("x-ratelimit-remaining-" + unit)
        raw_reset = found.get("x-ratelimit-reset-" + unit)
        if raw_remaining is None or raw_reset is None:
            continue
        try:
            remaining = int(float(raw_remaining.strip()))
            reset = parse_duration(raw_reset)
        except (ValueError, OverflowError):
            continue
        limit: int | None = None
        raw_limit = found.get("x-ratelimit-limit-" + unit)
        if raw_limit is not None:
            with contextlib.suppress(ValueError, OverflowError):
                limit = int(float(raw_limit.strip()))
        return ServerAllowance(remaining, reset, unit == "images", limit)
    return None

