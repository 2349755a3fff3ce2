"""Reading fields out of decoded JSON that a server, or a file on disk, wrote.

One set of readers for every place that reads outside JSON (responses, Batch API
objects, manifest lines): a field that is missing or of the wrong type reads as
None, never as an exception; the caller chooses its default.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["extra_fields", "float_field", "int_field", "str_field"]


def str_field(obj: Mapping[str, Any], key: str) -> str | None:
    """``obj[key]`` if it is a string, else None."""
    value = obj.get(key)
    return value if isinstance(value, str) else None


def int_field(obj: Mapping[str, Any], key: str) -> int | None:
    """``obj[key]`` if it is an integer (not a bool), else None."""
    value = obj.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def float_field(obj: Mapping[str, Any], key: str) -> float | None:
    """``obj[key]`` as a float if it is a finite number (not a bool), else None."""
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def extra_fields(obj: Mapping[str, Any], known: frozenset[str]) -> Mapping[str, Any]:
    """The fields of ``obj`` not in ``known``: what a newer server sent, kept rather than lost."""
    return {k: v for k, v in obj.items() if k not in known}
