"""The one error tree of asyncimg.

Names follow the official ``openai`` SDK, so that code switching over keeps its
``except`` clauses::

    AsyncImgError
    ├── InvalidRequestError          the request is invalid, whoever said so: the
    │   │                             client before sending, or the server (400)
    │   ├── ValidationError          bad input; raised before anything is sent
    │   │                             or any rate budget is spent (also a ValueError)
    │   └── BadRequestError          (below: also an APIStatusError)
    ├── LimiterUnavailableError      the shared limiter's Redis is down or too slow;
    │                                 nothing was sent, no budget was spent
    └── APIError
        ├── APIStatusError           the server answered with an error status
        │   ├── BadRequestError                   400 (also an InvalidRequestError)
        │   │   └── ContentPolicyError            400, content_policy_violation /
        │   │                                          moderation_blocked /
        │   │                                          contentFilter (Azure)
        │   ├── AuthenticationError               401
        │   ├── PermissionDeniedError             403
        │   ├── NotFoundError                     404
        │   ├── ConflictError                     409
        │   ├── UnprocessableEntityError          422
        │   ├── RateLimitError                    429
        │   └── InternalServerError               >= 500
        ├── BatchRequestError        a Batch API request that was never run (expired,
        │                             cancelled): ``code`` says why
        ├── APIResponseValidationError  a 2xx whose body is not an images response
        │   └── ResponseTooLargeError    the body is over the client's size cap
        └── APIConnectionError       no answer: refused, reset, dropped, too large
            └── APITimeoutError      an attempt ran out of time (also a TimeoutError)

Turning a status and a body into the right class is :func:`error_from_response`,
a pure function. Turning aiohttp's exceptions into these happens in one place,
``asyncimg._transport.transport_error``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncImgError",
    "AuthenticationError",
    "BadRequestError",
    "BatchRequestError",
    "ConflictError",
    "ContentPolicyError",
    "InternalServerError",
    "InvalidRequestError",
    "LimiterUnavailableError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "ResponseTooLargeError",
    "UnprocessableEntityError",
    "ValidationError",
    "as_headers",
    "error_from_response",
]


def as_headers(headers: Mapping[str, str] | None) -> CIMultiDictProxy[str]:
    """Headers as a read-only case-insensitive multidict (every value of a repeated name kept).

    aiohttp's own headers are returned as they are; a plain mapping is copied.
    """
    if isinstance(headers, CIMultiDictProxy):
        return headers
    return CIMultiDictProxy(CIMultiDict(headers or {}))


class AsyncImgError(Exception):
    """The base of every error asyncimg raises."""


class InvalidRequestError(AsyncImgError):
    """The request is invalid: :class:`ValidationError` (the client refused it, nothing
    was sent) or :class:`BadRequestError` (the server answered 400).

    Whether a mistake is caught before sending depends on what the client knows
    (a model in its rule table, or one it does not know and the server judges),
    so ``except InvalidRequestError`` catches the same mistake either way. Both
    carry ``message`` and ``param`` (None when the server named no parameter).
    """

    message: str
    param: str | None


class ValidationError(InvalidRequestError, ValueError):
    """A parameter is invalid; nothing was sent and no rate budget was spent.

    ``param`` names the parameter (``"size"``, ``"image[1]"``, ...).
    """

    param: str

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


class LimiterUnavailableError(AsyncImgError):
    """The shared limiter (:class:`asyncimg.RedisLimiter`) could not reach Redis in time.

    Raised by ``acquire`` (so by every call that sends) within the limiter's
    ``timeout``: nothing was sent and no budget was spent. The cause is chained.
    """


class APIError(AsyncImgError):
    """Talking to the API failed; ``request_id`` is set when the server sent one."""

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id


class BatchRequestError(APIError):
    """A request of a Batch API job that was never run: ``code`` says why.

    ``batch_expired`` (the completion window ran out) or ``batch_cancelled``; a
    request that ran and failed is the :class:`APIStatusError` of its status instead.
    """

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class APIStatusError(APIError):
    """The server answered with a status of 400 or above.

    Carries ``status_code``, ``message``, ``type``, ``param``, ``code``,
    ``request_id``, the decoded ``body`` (a dict for a JSON body, else text) and
    the response's ``headers``, case-insensitive (``headers["Retry-After"]`` and
    ``headers["retry-after"]`` are the same).
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        request_id: str | None = None,
        body: object = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, request_id=request_id)
        self.status_code = status_code
        self.type = type
        self.param = param
        self.code = code
        self.body = body
        self.headers: CIMultiDictProxy[str] = as_headers(headers)

    def __str__(self) -> str:
        status = str(self.status_code)
        parts = [status]
        if self.code and self.code != status:  # a gateway's code "400" adds nothing
            parts.append(self.code)
        message = self.message
        if message.startswith(f"{status}: "):  # nor its message "400: {...}"'s prefix
            message = message[len(status) + 2 :]
        text = f"Error {' '.join(parts)}: {message}"
        if self.request_id:
            text += f" (request id {self.request_id})"
        return text


class BadRequestError(APIStatusError, InvalidRequestError):
    """400: the server refused the request as invalid (an :class:`InvalidRequestError`,
    like the client's own :class:`ValidationError`)."""


class ContentPolicyError(BadRequestError):
    """400: the prompt or an image was refused by the content policy.

    Azure's content filter (code ``contentFilter``) says why in
    :attr:`inner_error`; its per-category verdicts are :attr:`content_filter_results`.
    """

    @property
    def inner_error(self) -> Mapping[str, Any] | None:
        """The error's ``inner_error`` (Azure; also spelled ``innererror``), if any."""
        error = self.body.get("error") if isinstance(self.body, dict) else None
        if not isinstance(error, dict):
            return None
        for name in ("inner_error", "innererror", "innerError"):
            inner = error.get(name)
            if isinstance(inner, dict):
                return inner
        return None

    @property
    def content_filter_results(self) -> Mapping[str, Any] | None:
        """Azure's verdict per category (``{"violence": {"filtered": True, ...}}``), if any."""
        inner = self.inner_error or {}
        for name in ("content_filter_results", "content_filter_result", "contentFilterResults"):
            results = inner.get(name)
            if isinstance(results, dict):
                return results
        return None


class AuthenticationError(APIStatusError):
    """401: the API key is missing or wrong."""


class PermissionDeniedError(APIStatusError):
    """403: the key may not use this model or endpoint."""


class NotFoundError(APIStatusError):
    """404: no such endpoint or model."""


class ConflictError(APIStatusError):
    """409: a conflicting request; retried by default."""


class UnprocessableEntityError(APIStatusError):
    """422: the request was understood but cannot be processed."""


class RateLimitError(APIStatusError):
    """429: a rate limit or a quota was hit."""


class InternalServerError(APIStatusError):
    """500 or above: the server failed."""


class APIResponseValidationError(APIError):
    """A successful status came with a body that is not an images response."""

    def __init__(
        self, message: str, *, status_code: int, request_id: str | None = None
    ) -> None:
        super().__init__(message, request_id=request_id)
        self.status_code = status_code


class ResponseTooLargeError(APIResponseValidationError):
    """The response body is larger than ``max_response_bytes``; it was not read."""


class APIConnectionError(APIError):
    """No usable answer: the connection failed, dropped, or the body was refused."""


class APITimeoutError(APIConnectionError, TimeoutError):
    """One attempt took longer than its timeout."""


_STATUS_CLASSES: Mapping[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}

CONTENT_POLICY_CODES = frozenset(
    {"content_policy_violation", "moderation_blocked", "contentFilter", "content_filter"}
)


REQUEST_ID_HEADERS = ("x-request-id", "x-litellm-call-id", "apim-request-id", "x-ms-request-id")
"""Where a request id is read, the first present wins: the API's, then gateways' call ids
(LiteLLM, Azure API Management, Azure)."""

NO_KEY_NOTE = "no API key was sent: set OPENAI_API_KEY or api_key="
"""Added to a 401, 403 or 5xx that answers a request sent without credentials."""


def request_id_of(headers: Mapping[str, str]) -> str | None:
    """The request id of a response: the first of :data:`REQUEST_ID_HEADERS` present, or None."""
    for name in REQUEST_ID_HEADERS:
        value = headers.get(name)
        if value:
            return value
    return None


def _text_of(body: bytes, limit: int = 200) -> str:
    text = body.decode("utf-8", "replace")
    if "<" in text and ">" in text:  # an HTML page from a proxy: keep its title or words
        start = text.lower().find("<title>")
        if start != -1:
            end = text.lower().find("</title>", start)
            if end != -1:
                return text[start + 7 : end].strip()[:limit]
        words = []
        inside = False
        for ch in text:
            if ch == "<":
                inside = True
                words.append(" ")
            elif ch == ">":
                inside = False
            elif not inside:
                words.append(ch)
        text = "".join(words)
    return " ".join(text.split())[:limit]


def error_from_response(
    status: int,
    body: bytes,
    headers: Mapping[str, str] | None = None,
    *,
    request_id: str | None = None,
) -> APIStatusError:
    """Build the exception for an error response (pure; never raises).

    A JSON body in the API's shape ``{"error": {message, type, param, code}}``
    gives its fields; any other body (an HTML page from a proxy, plain text,
    nothing) gives a readable message with the status.
    """
    decoded: object
    error: Mapping[str, Any] = {}
    try:
        decoded = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        decoded = body.decode("utf-8", "replace")
    if isinstance(decoded, dict):
        inner = decoded.get("error")
        if isinstance(inner, dict):
            error = inner
        elif isinstance(inner, str):
            error = {"message": inner}
    message = error.get("message")
    if not isinstance(message, str) or not message:
        text = _text_of(body) if body else ""
        message = f"HTTP {status}" + (f": {text}" if text else " with an empty body")

    def field(name: str) -> str | None:
        value = error.get(name)
        return None if value is None else str(value)

    code = field("code")
    cls = _STATUS_CLASSES.get(status)
    if cls is None:
        cls = InternalServerError if status >= 500 else APIStatusError
    if cls is BadRequestError and code in CONTENT_POLICY_CODES:
        cls = ContentPolicyError
    return cls(
        message,
        status_code=status,
        type=field("type"),
        param=field("param"),
        code=code,
        request_id=request_id,
        body=decoded,
        headers=headers,
    )
