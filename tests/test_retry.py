"""Retry decisions are pure: tested without an event loop."""

from __future__ import annotations

import email.utils

import pytest

from asyncimg import (
    APIConnectionError,
    APIResponseValidationError,
    APITimeoutError,
    ResponseTooLargeError,
)
from asyncimg._exceptions import error_from_response
from asyncimg._retry import RetryPolicy, backoff, decide, parse_retry_after

POLICY = RetryPolicy(max_retries=3, initial=0.5, maximum=8.0, max_retry_after=120.0)
NOW = 1_700_000_000.0


def status_error(status: int, headers: dict[str, str] | None = None, code: str | None = None):
    body = b'{"error": {"message": "m", "type": "t", "param": null, "code": %s}}' % (
        b"null" if code is None else b'"' + code.encode() + b'"'
    )
    return error_from_response(status, body, headers or {})


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_retryable_statuses_are_retried(status: int) -> None:
    decision = decide(status_error(status), 1, POLICY, now=NOW, rand=lambda: 1.0)
    assert decision.retry
    assert decision.pause_all is (status == 429)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422, 418, 501])
def test_other_statuses_are_not_retried(status: int) -> None:
    assert not decide(status_error(status), 1, POLICY, now=NOW).retry


def test_x_should_retry_overrides_the_status() -> None:
    assert decide(status_error(400, {"x-should-retry": "true"}), 1, POLICY, now=NOW).retry
    assert not decide(status_error(503, {"x-should-retry": "false"}), 1, POLICY, now=NOW).retry


@pytest.mark.parametrize("code", ["insufficient_quota", "billing_hard_limit_reached"])
def test_quota_429_is_never_retried(code: str) -> None:
    decision = decide(status_error(429, {"retry-after": "1"}, code), 1, POLICY, now=NOW)
    assert not decision.retry
    assert code in decision.reason


def test_retries_run_out() -> None:
    error = status_error(500)
    assert decide(error, 3, POLICY, now=NOW).retry
    assert not decide(error, 4, POLICY, now=NOW).retry
    assert not decide(error, 1, RetryPolicy(max_retries=0), now=NOW).retry


def test_connection_errors_and_bad_bodies_are_retried() -> None:
    assert decide(APIConnectionError("x"), 1, POLICY, now=NOW).retry
    assert decide(APITimeoutError("x"), 1, POLICY, now=NOW).retry
    assert decide(APIResponseValidationError("x", status_code=200), 1, POLICY, now=NOW).retry
    assert not decide(ResponseTooLargeError("x", status_code=200), 1, POLICY, now=NOW).retry


def test_server_wait_is_honoured() -> None:
    decision = decide(status_error(429, {"retry-after": "7"}), 1, POLICY, now=NOW)
    assert decision.wait == 7.0
    decision = decide(status_error(503, {"retry-after-ms": "250"}), 1, POLICY, now=NOW)
    assert decision.wait == 0.25


def test_a_wait_over_the_cap_is_raised_not_slept() -> None:
    decision = decide(status_error(429, {"retry-after": "600"}), 1, POLICY, now=NOW)
    assert not decision.retry
    assert "cap" in decision.reason


def test_backoff_is_full_jitter_doubling_to_a_cap() -> None:
    assert [backoff(a, POLICY, lambda: 1.0) for a in range(1, 7)] == [0.5, 1, 2, 4, 8, 8]
    assert backoff(3, POLICY, lambda: 0.0) == 0.0
    assert backoff(2, POLICY, lambda: 0.5) == 0.5


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}, NOW) == 1.5
    assert parse_retry_after({"retry-after": "3"}, NOW) == 3.0
    assert parse_retry_after({"retry-after": "0.5"}, NOW) == 0.5
    date = email.utils.formatdate(NOW + 30, usegmt=True)
    assert parse_retry_after({"retry-after": date}, NOW) == pytest.approx(30, abs=1)
    past = email.utils.formatdate(NOW - 30, usegmt=True)
    assert parse_retry_after({"retry-after": past}, NOW) == 0.0
    assert parse_retry_after({"retry-after": "soon"}, NOW) is None
    assert parse_retry_after({"retry-after": "-1"}, NOW) is None
    assert parse_retry_after({"retry-after-ms": "x", "retry-after": "2"}, NOW) == 2.0
    assert parse_retry_after({}, NOW) is None
