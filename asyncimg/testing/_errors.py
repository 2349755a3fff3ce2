"""What the emulator answers, and its error answers: refusals and fault answers.

An :class:`Answer` is decided before anything is written (:mod:`._delivery`
writes it). Every refusal of the API's own kind has the API's error shape,
``{"error": {"message", "type", "param", "code"}}``; code that decides a
refusal raises :class:`Refusal` (with :func:`refuse`) and the emulator answers
it at once. A :class:`Fault` that replaces the answer (``status``, ``html``,
``drop``) is answered by :func:`fault_answer`: its own ``body``, an nginx-like
HTML page, or the API's usual error for its status (the quota codes with their
own messages and types).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import NoReturn

import attrs
from aiohttp import web

from ._faults import Fault

__all__ = ["Answer", "Closing", "Refusal", "error_body", "fault_answer", "refuse"]

_NGINX = (
    "<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
    "<center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)
_DEFAULT_ERRORS: Mapping[int, tuple[str, str, str | None]] = {
    400: ("Invalid request.", "invalid_request_error", None),
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    403: ("You are not allowed to make this request.", "invalid_request_error", None),
    404: ("The requested resource was not found.", "invalid_request_error", None),
    408: ("Request timed out.", "timeout", None),
    409: ("The request conflicts with another request.", "invalid_request_error", None),
    422: ("The request could not be processed.", "invalid_request_error", None),
    429: (
        "Rate limit reached for images per min. Please try again later.",
        "requests",
        "rate_limit_exceeded",
    ),
    500: (
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
    ),
    502: ("Bad gateway.", "server_error", None),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
    504: ("Gateway timeout.", "server_error", None),
}
_QUOTA_ERRORS: Mapping[str, str] = {
    "insufficient_quota": (
        "You exceeded your current quota, please check your plan and billing details. For more "
        "information on this error, read the docs: "
        "https://platform.openai.com/docs/guides/error-codes/api-errors."
    ),
    "billing_hard_limit_reached": "Billing hard limit has been reached.",
}


@attrs.define
class Answer:
    """An answer decided, not yet written: its status, body and headers."""

    status: int
    body: bytes
    headers: dict[str, str] = attrs.field(factory=dict)
    content_type: str = "application/json"
    events: tuple[bytes, ...] | None = None
    """A streamed answer's server-sent events (``body`` is then empty)."""


class Refusal(Exception):
    """Raised inside request handling to answer an error at once."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.status)
        self.answer = answer


class Closing(Exception):
    """The emulator is closing: the handler drops its connection."""


def error_body(message: str, type_: str, param: str | None, code: str | None) -> bytes:
    """An error body in the API's shape."""
    return json.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    ).encode()


def refuse(
    status: int,
    message: str,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> NoReturn:
    """Answer an error in the API's shape at once.

    Raises:
        Refusal: always, carrying that answer.
    """
    raise Refusal(Answer(status, error_body(message, type_, param, code), dict(headers or {})))


def fault_answer(fault: Fault) -> Answer:
    """The answer of a fault that replaces the request's own (see :class:`Fault`)."""
    status = fault.status_code
    headers = dict(fault.headers)
    if fault.retry_after is not None:
        headers.setdefault("Retry-After", str(max(0, math.ceil(fault.retry_after))))
        headers.setdefault("retry-after-ms", str(round(fault.retry_after * 1000)))
    if fault.should_retry is not None:
        headers.setdefault("x-should-retry", "true" if fault.should_retry else "false")
    if fault.as_html:
        reason = web.Response(status=status).reason
        page = _NGINX.format(status=status, reason=reason)
        return Answer(status, page.encode(), headers, "text/html")
    body = fault.body
    if isinstance(body, Mapping):
        return Answer(status, json.dumps(body).encode(), headers)
    if isinstance(body, str):
        body = body.encode()
    if isinstance(body, bytes):
        content_type = "application/json" if body[:1] in (b"{", b"[") else "text/plain"
        return Answer(status, body, headers, content_type)
    message, type_, code = _DEFAULT_ERRORS.get(
        status,
        (
            f"HTTP {status}",
            "server_error" if status >= 500 else "invalid_request_error",
            None,
        ),
    )
    if fault.code is not None:
        code = fault.code
        if code in _QUOTA_ERRORS:
            message, type_ = _QUOTA_ERRORS[code], code
    if fault.message is not None:
        message = fault.message
    return Answer(status, error_body(message, type_, None, code), headers)
