"""Request bodies as bytes, built before anything is sent (pure, no I/O).

The client encodes the whole body, a JSON document or a multipart form, before
it takes any rate budget, so that a value that cannot be sent (a ``Decimal``
in ``extra_body``, a file name with a line break, a lone surrogate) is a
:class:`~asyncimg.ValidationError` naming the parameter, never an error at send
time after the images were counted.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from typing import Any

import attrs

from ._exceptions import ValidationError

__all__ = ["Body", "encode_form", "encode_json"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@attrs.frozen
class Body:
    """A request body ready for the wire: its bytes and its ``Content-Type``."""

    data: bytes = attrs.field(repr=lambda d: f"<{len(d)} bytes>")
    content_type: str


def _param_of(key: str, extra: Mapping[str, Any]) -> str:
    return "extra_body" if key in extra else key


def _utf8(param: str, what: str, text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValidationError(
            param,
            f"{what} has a lone surrogate at position {exc.start}: it cannot be sent as UTF-8",
        ) from None


def encode_json(values: Mapping[str, Any], extra: Mapping[str, Any]) -> Body:
    """The JSON body of ``values`` (``extra`` says which keys came from ``extra_body``).

    Raises:
        ValidationError: a value JSON cannot carry (a ``Decimal``, a set, NaN)
            or a string that is not valid Unicode; ``param`` names it.
    """
    try:  # the common case: one dumps; the slow path below only names what is wrong
        text = json.dumps(values, ensure_ascii=False, allow_nan=False)
        return Body(text.encode("utf-8"), "application/json")
    except (TypeError, ValueError):  # UnicodeEncodeError included
        pass
    for key, value in values.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValidationError(
                _param_of(key, extra), f"{key}: cannot be sent as JSON: {exc}"
            ) from None
        if isinstance(value, str):
            _utf8(_param_of(key, extra), key, value)
    text = json.dumps(values, ensure_ascii=False, allow_nan=False)
    data = _utf8("extra_body", "extra_body", text)
    return Body(data, "application/json")


def _quoted(param: str, what: str, text: str) -> bytes:
    if _CONTROL.search(text):
        raise ValidationError(
            param, f"{param}: the {what} {text!r} holds a control character (a line break?)"
        )
    return _utf8(param, f"the {what} of {param}", text.replace('"', "%22"))


def encode_form(
    fields: tuple[tuple[str, str], ...],
    files: tuple[tuple[str, str, str, bytes, str], ...],
    extra: Mapping[str, Any],
) -> Body:
    """A ``multipart/form-data`` body.

    ``fields`` are ``(name, text)``; ``files`` are ``(param, name, filename,
    data, mime)``, where ``param`` is what an error names (``image[1]``).
    A double quote in a name is written ``%22``, as browsers do.

    Raises:
        ValidationError: a name or file name with a control character (CR, LF,
            NUL), or text that is not valid Unicode; ``param`` names it.
    """
    boundary = "asyncimg-" + secrets.token_hex(16)
    dash = b"--" + boundary.encode()
    parts: list[bytes] = []
    for name, text in fields:
        param = _param_of(name, extra)
        parts += (
            dash,
            b'\r\nContent-Disposition: form-data; name="',
            _quoted(param, "name", name),
            b'"\r\n\r\n',
            _utf8(param, name, text),
            b"\r\n",
        )
    for param, name, filename, data, mime in files:
        parts += (
            dash,
            b'\r\nContent-Disposition: form-data; name="',
            _quoted(param, "name", name),
            b'"; filename="',
            _quoted(param, "file name", filename),
            b'"\r\nContent-Type: ',
            _quoted(param, "MIME type", mime),
            b"\r\n\r\n",
            data,
            b"\r\n",
        )
    parts += (dash, b"--\r\n")
    return Body(b"".join(parts), f"multipart/form-data; boundary={boundary}")
