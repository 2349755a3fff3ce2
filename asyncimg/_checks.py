"""Checks of the client's own arguments (counts, seconds, header values): pure, no I/O.

Each returns nothing or the value, or raises :class:`~asyncimg.ValidationError`
naming the argument, before anything is sent or any rate budget is spent.
"""

from __future__ import annotations

import math
import re

from ._exceptions import ValidationError

__all__ = ["check_header_value", "check_int", "check_seconds"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_int(name: str, value: object, minimum: int) -> None:
    """An integer of at least ``minimum``; ``True``/``False`` are not integers here.

    Raises:
        ValidationError: ``value`` is a bool, not an int, or below ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValidationError(
            name, f"{name} must be an integer >= {minimum}, not {value!r}"
        )


def check_seconds(name: str, value: object, *, none_ok: bool) -> None:
    """A finite, positive number of seconds (None only when ``none_ok``: no limit).

    aiohttp reads 0 or a negative timeout as "no timeout"; here they are refused,
    and so are NaN, infinity, bools and strings.

    Raises:
        ValidationError: anything else.
    """
    if value is None and none_ok:
        return
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )
    if not ok:
        hint = " (None for no limit)" if none_ok else ""
        raise ValidationError(
            name, f"{name} must be a finite, positive number of seconds{hint}, not {value!r}"
        )


def check_header_value(name: str, value: str) -> str:
    """``value`` if it can be sent as an HTTP header value.

    Raises:
        ValidationError: not a string, whitespace at its ends (a key read from a
            file with its newline), a control character, or a character outside Latin-1.
    """
    if not isinstance(value, str):
        raise ValidationError(name, f"{name} must be a string, not {type(value).__name__}")
    if value != value.strip() or _CONTROL.search(value):
        raise ValidationError(
            name,
            f"{name} has whitespace at its ends or a control character inside "
            "(read from a file with its newline?); strip it",
        )
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValidationError(
            name, f"{name} has a character that an HTTP header cannot carry"
        ) from None
    return value
