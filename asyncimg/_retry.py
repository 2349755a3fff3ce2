"""Which failures are retried, and how long to wait: pure functions, no awaits.

A small loop in ``_client.py`` applies these decisions. It is not built on a
retry library because a 429's wait is not slept by the caller: it pauses the
shared limiter once for every caller (see ``_limiter.py``), and every attempt
takes its images from the rate budget again; both live in that loop.
"""

from __future__ import annotations

import email.utils
import math
import random
from collections.abc import Callable, Mapping

import attrs
from attrs.validators import ge, le

from ._checks import check_int
from ._exceptions import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APIStatusError,
    ResponseTooLargeError,
    as_headers,
)

__all__ = [
    "QUOTA_CODES",
    "RETRY_STATUSES",
    "Decision",
    "RetryPolicy",
    "backoff",
    "decide",
    "parse_retry_after",
    "retry_countdown",
]

RETRY_STATUSES = frozenset({408, 409, 429})
"""Statuses below 500 retried by default; every status >= 500 is retried too
(``x-should-retry`` overrides both)."""

QUOTA_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached"})
"""429 codes that no wait will fix: raised at once."""


@attrs.frozen
class RetryPolicy:
    """How often and how long to retry.

    Waits grow from ``initial`` seconds, doubling up to ``maximum``; each is
    cut by up to ``jitter`` of itself at random. The default 0.9 waits 10-100 %
    of the step: in a measured retry storm (``benchmarks/retry_storm.py``) it
    sent fewer requests than full jitter (1.0, which may wait almost nothing)
    for the same completion time, and finished in about half the time of the
    SDK's 75-100 % (0.25), whose callers retry in step. A server's positive ``Retry-After`` is
    honoured up to ``max_retry_after`` seconds; a longer one is raised instead
    of slept.
    """

    max_retries: int = attrs.field(
        default=3, validator=lambda _inst, attr, value: check_int(attr.name, value, 0)
    )
    initial: float = attrs.field(default=0.5, validator=ge(0.0))
    maximum: float = attrs.field(default=8.0, validator=ge(0.0))
    max_retry_after: float = attrs.field(default=120.0, validator=ge(0.0))
    jitter: float = attrs.field(default=0.9, validator=[ge(0.0), le(1.0)])


@attrs.frozen
class Decision:
    """What to do after a failed attempt.

    ``retry`` says whether to try again; ``wait`` is the seconds to wait first;
    ``pause_all`` says the wait is a rate limit, to be shared by every caller
    through the limiter rather than slept by this one; ``then`` is what this caller
    waits on its own after it (a request refused again backs off by itself, so
    that the retries of a burst refused together spread out instead of meeting
    the server's window in step).
    """

    retry: bool
    wait: float = 0.0
    pause_all: bool = False
    reason: str = ""
    then: float = 0.0


def parse_retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds to wait from ``retry-after-ms``, else ``Retry-After`` (seconds or an HTTP date).

    Header names are matched in any case (``Retry-After``, ``retry-after``,
    ``RETRY-AFTER``); of a repeated header the first value counts. ``now`` is
    the wall-clock time (``time.time()``), used for a date. Returns None unless
    a header gives a positive wait: ``0``, a negative value or a date in the
    past is no instruction, and the caller backs off instead.
    """
    headers = as_headers(headers)
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000.0
        except ValueError:
            value = math.nan
        if value > 0 and math.isfinite(value):
            return value
    text = headers.get("retry-after")
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text.strip())
        except (TypeError, ValueError, IndexError):
            return None
        value = when.timestamp() - now
    return value if value > 0 and math.isfinite(value) else None


def backoff(attempt: int, policy: RetryPolicy, rand: Callable[[], float] = random.random) -> float:
    """Exponential backoff before retry number ``attempt`` (1 for the first), jittered.

    The wait is ``ceiling * (1 - policy.jitter * rand())``: with the default
    jitter of 0.9, between 10 % and 100 % of the ceiling, never almost nothing
    (``jitter=1.0`` is full jitter; 0.25 is the official SDK's 75-100 %).
    """
    ceiling = min(policy.maximum, policy.initial * 2.0 ** (attempt - 1))
    return ceiling * (1.0 - policy.jitter * rand())


def _should_retry_header(headers: Mapping[str, str]) -> bool | None:
    value = (headers.get("x-should-retry") or "").strip().lower()
    if value == "true":
        return True
    if value == "false":
        return False
    return None


def decide(
    error: APIError,
    attempt: int,
    policy: RetryPolicy,
    *,
    now: float,
    rand: Callable[[], float] = random.random,
) -> Decision:
    """Decide whether to retry after ``attempt`` attempts failed with ``error``.

    Connection errors and timeouts (a body cut off mid-way among them), 408,
    409, 429 and every status >= 500 are retried; ``x-should-retry: true/false``
    (any case) overrides the status; a 429 whose code says a quota or billing
    limit is reached is never retried. A complete 2xx whose body does not
    parse is never retried: the images were made and billed, and sending again
    would pay for them twice. The wait is the server's positive
    ``retry-after-ms`` / ``Retry-After`` when given (a wait longer than
    ``policy.max_retry_after`` is not retried), else jittered backoff. A 429
    with a server wait after an earlier failure adds this request's own jittered
    backoff of the step before (``Decision.then``).
    """
    if attempt > policy.max_retries:
        return Decision(False, reason=f"no retries left after {attempt} attempts")
    if isinstance(error, APIStatusError):
        status = error.status_code
        if status == 429 and error.code in QUOTA_CODES:
            return Decision(False, reason=f"429 {error.code}: waiting will not help")
        override = _should_retry_header(error.headers)
        default = status in RETRY_STATUSES or status >= 500
        retry = default if override is None else override
        if not retry:
            return Decision(False, reason=f"status {status} is not retried")
        server_wait = parse_retry_after(error.headers, now)
        if server_wait is not None and server_wait > policy.max_retry_after:
            return Decision(
                False,
                reason=f"server asks to wait {server_wait:.0f}s, over the "
                f"{policy.max_retry_after:.0f}s cap",
            )
        wait = backoff(attempt, policy, rand) if server_wait is None else server_wait
        # A 429 after an earlier failure: the server's wait for everyone, then a jittered
        # backoff of this request's own (the server's wait was computed for it alone).
        again = status == 429 and attempt > 1 and server_wait is not None
        then = backoff(attempt - 1, policy, rand) if again else 0.0
        return Decision(True, wait, pause_all=status == 429, reason=f"status {status}",
                        then=then)
    if isinstance(error, ResponseTooLargeError):
        return Decision(False, reason="the response is over the size cap")
    if isinstance(error, APIResponseValidationError):
        return Decision(False, reason="a complete response that does not parse is not resent")
    if isinstance(error, APIConnectionError):
        return Decision(True, backoff(attempt, policy, rand), reason=type(error).__name__)
    return Decision(False, reason=f"{type(error).__name__} is not retried")


def retry_countdown(
    error: BaseException,
    retries: int = 0,
    *,
    policy: RetryPolicy | None = None,
    now: float,
    rand: Callable[[], float] = random.random,
) -> float | None:
    """Seconds a task queue should wait before running a failed call again, or None
    when asyncimg says it is not worth retrying.

    For a retry from outside the client (Celery's ``self.retry(countdown=...)``),
    after the client's own retries ran out: ``retries`` is how many times the task
    was retried already. What :func:`decide` retries is worth it (connection
    errors, timeouts, 408, 409, 429 but not a quota, 5xx; ``x-should-retry``
    honoured), after the server's ``Retry-After`` when it sent one, else after
    ``policy``'s jittered backoff for attempt ``retries + 1``; any other error
    (a 400, a refused prompt, a bad key, not an :class:`APIError`) is None. The
    task's own ``max_retries`` bounds how often: ``policy.max_retries`` does not.
    ``now`` is the wall-clock time (``time.time()``), for a ``Retry-After`` date.
    """
    if not isinstance(error, APIError):
        return None
    policy = policy or RetryPolicy()
    attempt = max(0, retries) + 1
    decision = decide(
        error, attempt, attrs.evolve(policy, max_retries=attempt), now=now, rand=rand
    )
    return decision.wait if decision.retry else None
