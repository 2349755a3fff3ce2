"""Error bodies become the right class of the tree (pure)."""

from __future__ import annotations

import json

import pytest

import asyncimg
from asyncimg import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AsyncImgError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    ContentPolicyError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    UnprocessableEntityError,
    ValidationError,
)
from asyncimg._exceptions import error_from_response


def body(message: str = "boom", type_: str = "invalid_request_error",
         param: str | None = None, code: str | None = None) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    ).encode()


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (409, ConflictError),
        (422, UnprocessableEntityError),
        (429, RateLimitError),
        (500, InternalServerError),
        (502, InternalServerError),
        (503, InternalServerError),
        (418, APIStatusError),
    ],
)
def test_status_maps_to_class(status: int, cls: type[APIStatusError]) -> None:
    error = error_from_response(
        status, body("nope", "server_error", "size", "c1"), {"x-request-id": "req_1"},
        request_id="req_1",
    )
    assert type(error) is cls
    assert (error.status_code, error.message, error.type, error.param, error.code) == (
        status, "nope", "server_error", "size", "c1",
    )
    assert error.request_id == "req_1"
    assert error.body == {"error": {"message": "nope", "type": "server_error",
                                    "param": "size", "code": "c1"}}
    assert "req_1" in str(error)


@pytest.mark.parametrize("code", ["content_policy_violation", "moderation_blocked"])
def test_content_policy_codes(code: str) -> None:
    error = error_from_response(400, body(code=code))
    assert isinstance(error, ContentPolicyError)
    assert isinstance(error, BadRequestError)


def test_html_error_page_becomes_readable_status_error() -> None:
    page = (b"<html><head><title>502 Bad Gateway</title></head><body><center>"
            b"<h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>")
    error = error_from_response(502, page)
    assert isinstance(error, InternalServerError)
    assert error.message == "HTTP 502: 502 Bad Gateway"
    assert error.code is None
    assert isinstance(error.body, str)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "HTTP 503 with an empty body"),
        (b"upstream connect error", "HTTP 503: upstream connect error"),
        (b'{"error": "plain string"}', "plain string"),
        (b'{"detail": "x"}', 'HTTP 503: {"detail": "x"}'),
        (b"\xff\xfe", "HTTP 503: \ufffd\ufffd"),
        (b"[1, 2]", "HTTP 503: [1, 2]"),
    ],
)
def test_odd_bodies_never_crash(raw: bytes, message: str) -> None:
    error = error_from_response(503, raw)
    assert isinstance(error, InternalServerError)
    assert error.message == message


def test_tree_shape() -> None:
    assert issubclass(ValidationError, AsyncImgError)
    assert issubclass(ValidationError, ValueError)
    assert issubclass(APIStatusError, APIError)
    assert issubclass(APIError, AsyncImgError)
    assert issubclass(APITimeoutError, APIConnectionError)
    assert issubclass(APITimeoutError, TimeoutError)
    assert issubclass(ContentPolicyError, BadRequestError)
    assert ValidationError("size", "bad size").param == "size"


def test_tree_is_drawn_in_the_docstring() -> None:
    doc = asyncimg._exceptions.__doc__ or ""
    for name in asyncimg._exceptions.__all__:
        if name[0].isupper():
            assert name in doc, name
