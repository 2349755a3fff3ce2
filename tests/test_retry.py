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


@pytest.mark.parametrize("status", [408, 409, 429, 500, 501, 502, 503, 504, 520, 522, 524, 529])
def test_retryable_statuses_are_retried(status: int) -> None:
    decision = decide(status_error(status), 1, POLICY, now=NOW, rand=lambda: 1.0)
    assert decision.retry
    assert decision.pause_all is (status == 429)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422, 418])
def test_other_statuses_are_not_retried(status: int) -> None:
    assert not decide(status_error(status), 1, POLICY, now=NOW).retry


@pytest.mark.parametrize("name", ["x-should-retry", "X-Should-Retry", "X-SHOULD-RETRY"])
def test_x_should_retry_overrides_the_status(name: str) -> None:
    assert decide(status_error(400, {name: "true"}), 1, POLICY, now=NOW).retry
    assert not decide(status_error(503, {name: "false"}), 1, POLICY, now=NOW).retry
    assert not decide(status_error(500, {name: "False"}), 1, POLICY, now=NOW).retry


@pytest.mark.parametrize("name", ["Retry-After", "retry-after", "RETRY-AFTER"])
@pytest.mark.parametrize("with_ms", [False, True])
def test_retry_after_is_read_in_any_case(name: str, with_ms: bool) -> None:
    headers = {name: "2"}
    if with_ms:
        headers["Retry-After-Ms"] = "1500"
    error = status_error(429, headers)
    assert error.headers["retry-after"] == "2"
    decision = decide(error, 1, POLICY, now=NOW, rand=lambda: 0.0)
    assert decision.retry
    assert decision.wait == (1.5 if with_ms else 2.0)


@pytest.mark.parametrize("name", ["Retry-After", "retry-after", "RETRY-AFTER"])
def test_a_long_retry_after_in_any_case_is_raised(name: str) -> None:
    assert not decide(status_error(429, {name: "300"}), 1, POLICY, now=NOW).retry
    date = email.utils.formatdate(NOW + 300, usegmt=True)
    assert not decide(status_error(429, {name: date}), 1, POLICY, now=NOW).retry


def test_an_http_date_retry_after_is_a_wait() -> None:
    date = email.utils.formatdate(NOW + 30, usegmt=True)
    decision = decide(status_error(503, {"Retry-After": date}), 1, POLICY, now=NOW)
    assert decision.wait == pytest.approx(30, abs=1)


def test_headers_keep_every_value_of_a_repeated_name() -> None:
    from multidict import CIMultiDict

    error = status_error(429, CIMultiDict([("Retry-After", "3"), ("retry-after", "9")]))
    assert error.headers.getall("RETRY-AFTER") == ["3", "9"]
    assert decide(error, 1, POLICY, now=NOW).wait == 3.0


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


def test_connection_errors_are_retried_a_complete_bad_2xx_is_not() -> None:
    assert decide(APIConnectionError("x"), 1, POLICY, now=NOW).retry
    assert decide(APITimeoutError("x"), 1, POLICY, now=NOW).retry
    assert not decide(APIResponseValidationError("x", status_code=200), 1, POLICY, now=NOW).retry
    assert not decide(ResponseTooLargeError("x", status_code=200), 1, POLICY, now=NOW).retry


def test_server_wait_is_honoured() -> None:
    decision = decide(status_error(429, {"retry-after": "7"}), 1, POLICY, now=NOW)
    assert decision.wait == 7.0
    decision = decide(status_error(503, {"retry-after-ms": "250"}), 1, POLICY, now=NOW)
    assert decision.wait == 0.25


def test_a_429_refused_again_adds_its_own_backoff_after_the_servers_wait() -> None:
    """The server's wait is computed for each refused request alone: a burst refused
    together, retried together when it ends, may be refused again; the second time
    each request also backs off by itself, jittered, so that they spread out."""
    policy = RetryPolicy(initial=0.4, maximum=8.0, jitter=0.5)
    refused = status_error(429, {"retry-after-ms": "30"})
    first = decide(refused, 1, policy, now=NOW, rand=lambda: 1.0)
    assert (first.wait, first.pause_all, first.then) == (0.03, True, 0.0)
    again = decide(refused, 2, policy, now=NOW, rand=lambda: 1.0)
    assert (again.wait, again.pause_all) == (0.03, True)
    assert again.then == pytest.approx(0.2)  # backoff(1): 0.4 less half of it at most
    third = decide(refused, 3, policy, now=NOW, rand=lambda: 0.0)
    assert third.then == pytest.approx(0.8)  # backoff(2), no jitter drawn
    # Without a server wait the backoff is the wait itself, not added twice.
    bare = decide(status_error(429), 2, policy, now=NOW, rand=lambda: 0.0)
    assert (bare.wait, bare.then) == (pytest.approx(0.8), 0.0)


def test_a_wait_over_the_cap_is_raised_not_slept() -> None:
    decision = decide(status_error(429, {"retry-after": "600"}), 1, POLICY, now=NOW)
    assert not decision.retry
    assert "cap" in decision.reason


def test_backoff_doubles_to_a_cap_with_a_floored_jitter() -> None:
    assert [backoff(a, POLICY, lambda: 0.0) for a in range(1, 7)] == [0.5, 1, 2, 4, 8, 8]
    assert backoff(3, POLICY, lambda: 1.0) == pytest.approx(0.2)  # never under 10 % of the step
    assert backoff(2, POLICY, lambda: 0.5) == pytest.approx(0.55)
    assert backoff(3, RetryPolicy(jitter=1.0), lambda: 1.0) == 0.0
    assert backoff(3, RetryPolicy(jitter=0.25), lambda: 1.0) == 1.5  # the SDK's 75 %


@pytest.mark.parametrize(
    "headers", [{"retry-after-ms": "0"}, {"Retry-After": "0"}, {"retry-after-ms": "-5"}]
)
def test_a_zero_server_wait_backs_off_instead(headers: dict[str, str]) -> None:
    decision = decide(status_error(503, headers), 1, POLICY, now=NOW, rand=lambda: 1.0)
    assert decision.retry
    assert decision.wait == pytest.approx(0.05)  # the backoff: its 10 % floor of 0.5 s


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}, NOW) == 1.5
    assert parse_retry_after({"retry-after": "3"}, NOW) == 3.0
    assert parse_retry_after({"retry-after": "0.5"}, NOW) == 0.5
    date = email.utils.formatdate(NOW + 30, usegmt=True)
    assert parse_retry_after({"retry-after": date}, NOW) == pytest.approx(30, abs=1)
    past = email.utils.formatdate(NOW - 30, usegmt=True)
    assert parse_retry_after({"retry-after": past}, NOW) is None
    assert parse_retry_after({"retry-after-ms": "0", "retry-after": "0"}, NOW) is None
    assert parse_retry_after({"Retry-After-Ms": "250"}, NOW) == 0.25
    assert parse_retry_after({"retry-after": "soon"}, NOW) is None
    assert parse_retry_after({"retry-after": "-1"}, NOW) is None
    assert parse_retry_after({"retry-after-ms": "x", "retry-after": "2"}, NOW) == 2.0
    assert parse_retry_after({}, NOW) is None
