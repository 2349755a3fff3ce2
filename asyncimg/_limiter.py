"""The image rate limiter: a FIFO sliding window counted in images.

How it works
------------
:class:`Limiter` hands out :class:`Permit` objects for ``n`` images. A permit
takes ``n`` images of the budget when it is granted, and keeps them:

* until it is :meth:`~Permit.refund`-ed (nothing was sent: they come back at once), or
* once :meth:`~Permit.stamp`-ed at send time ``s``, until ``s + per + margin``; a
  request the server refused with a 429 (it did not count it) leaves the window but
  keeps its images (:meth:`~Permit.keep_for_retry`): its retry is stamped again after
  the pause the 429 begins, ahead of every waiter, who get none of them.

So every image sent in a window of ``per`` seconds (measured on the send stamps)
held the budget at the end of that window at the same time: no window of
``per`` seconds ever holds more than ``images`` images, at the client, nor at the
server as long as a request reaches it within ``margin`` seconds of its stamp.

Waiters are served in order of arrival: a big request at the head of the queue is
never starved by the small ones behind it. With ``backfill`` (the default), a
waiter behind a head that cannot fit yet may go first, but only with images the
head will not need: the limiter computes the moment the head fits (the window
expiries it waits for) and lets a later waiter use only what will still be spare
at that moment, so the head is granted exactly when it would have been under
strict FIFO, or at most ``margin`` later (EASY backfilling, as batch schedulers
do; the margin lets the images of one burst, stamped a few ms apart, all count). Among
them the largest that fits goes first (best fit: the small requests stay for the gaps
the large ones cannot fill, so the last window of a job with mixed ``n`` is filled
rather than spilling into one more). Only the
first :data:`BACKFILL_LOOKAHEAD` waiters behind the head are considered, and the
order is strict while a ``burst`` sub-window, or a server allowance counted in
requests, constrains the grants. ``backfill=False`` keeps the order strict always. A
request larger than the whole budget is refused at once with a
:class:`ValidationError`. A waiter cancelled while waiting takes nothing and
delays nobody.

Server feedback: :meth:`Limiter.pause` stops every grant until a deadline (a 429's
Retry-After; concurrent pauses merge, the latest deadline wins). A pause that begins
also doubles the margin of later sends (from at least 1% of ``per``, up to
:data:`MAX_MARGIN`): a 429 under our own window means that the server counted a request
later after its stamp than the margin allows for (measured on localhost: up to 0.1 s
for a burst of 50, 0.3 s with 16 uploads of 4 MB in flight, 0.7 s on a loaded machine).
The answers correct the window: :meth:`Permit.answered` takes the server's own
processing time (``openai-processing-ms``), so the server counted the request by the
answer's arrival less that time at the latest. An answer that comes while its images
are still in the window moves their window to start there (the images of a burst the
server took a second to read leave the window as late as they left the server's). An
answer that comes later still sizes the margin: what matters for the window is how much
later one request arrives than another, so the margin grows to the spread (largest less
smallest) of the last :data:`LAG_SAMPLES` arrival lags, up to :data:`MAX_LAG_MARGIN`.
It never shrinks (expiries stay in order).
:meth:`Limiter.observe_headers` reads ``x-ratelimit-remaining-images`` and
``x-ratelimit-reset-images`` (or the ``-requests`` variants; ``asyncimg._ratelimit_headers``
parses them) and, until that reset, grants no more than the server says remains plus
what our own sends give back as they leave the window. It never raises the budget above
the configured one.

The clock is injectable (:class:`~asyncimg.Clock`, see ``asyncimg._clock``); tests use
:class:`~asyncimg.testing.FakeClock` and travel in time. A limiter is not thread-safe:
share one between clients on one event loop (or one loop after another), not between
threads.

The concurrency ceiling is not here: ``asyncimg._gate`` sizes it from the rate (and
the answer times), and the client stamps a permit when its request is on the wire.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

import attrs

from ._clock import Clock, MonotonicClock, Timer
from ._exceptions import ValidationError
from ._ratelimit_headers import read_ratelimit_headers

__all__ = [
    "BACKFILL_LOOKAHEAD",
    "MAX_LAG_MARGIN",
    "MAX_MARGIN",
    "Limiter",
    "LimiterStats",
    "Permit",
    "RateLimit",
    "RateLimiter",
    "RatePermit",
]


# -- the configuration ------------------------------------------------------------------


def _check_images(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"images must be an integer >= 1, not {value!r}")


def _check_per(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"per must be a finite number of seconds > 0, not {value!r}")


def _check_margin(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"margin must be a finite number of seconds >= 0, not {value!r}")


def _check_burst(instance: RateLimit, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"burst must be None or an integer >= 1, not {value!r}")
    if value > instance.images:
        raise ValueError(f"burst ({value}) must not exceed images ({instance.images})")


@attrs.frozen(init=False)
class RateLimit:
    """At most ``images`` images in any window of ``per`` seconds.

    Args:
        images: the budget, in images (not requests), >= 1.
        per: the window in seconds, > 0.
        margin: seconds added to the window after each send, to cover the time a
            request takes to reach the server (which counts arrivals). None means
            1% of ``per``.
        burst: None (the default) lets the whole budget go at once. An integer
            ``b`` (1 <= b <= images) also spreads it: at most ``b`` images in any
            window of ``per * b / images`` seconds (plus a proportional margin), the
            same long-run rate without the initial burst, for servers that enforce
            sub-minute limits. A single request larger than ``b`` is sent alone in
            its short window rather than refused.

    Raises:
        ValueError: a value is out of range.
    """

    images: int = attrs.field(validator=_check_images)
    per: float = attrs.field(validator=_check_per)
    margin: float = attrs.field(validator=_check_margin)
    burst: int | None = attrs.field(validator=_check_burst)

    def __init__(
        self,
        images: int = 50,
        per: float = 60.0,
        margin: float | None = None,
        burst: int | None = None,
    ) -> None:
        if margin is None:
            margin = per / 100 if isinstance(per, (int, float)) else 0.0
        self.__attrs_init__(images, per, margin, burst)

    @property
    def window(self) -> float:
        """How long a sent image holds its budget: ``per + margin`` seconds."""
        return self.per + self.margin


# -- permits and stats ------------------------------------------------------------------

_HELD = 0
_STAMPED = 1
_REFUNDED = 2


@runtime_checkable
class RatePermit(Protocol):
    """What :meth:`RateLimiter.acquire` returns."""

    @property
    def images(self) -> int:
        """The images this permit holds."""
        ...

    def stamp(self) -> None:
        """The request is being sent now: its images' window starts."""
        ...

    def refund(self) -> None:
        """Nothing was sent: give the images back at once (no-op once stamped)."""
        ...


class Permit:
    """The right to send a request for ``images`` images.

    Call :meth:`stamp` as the request is sent, or :meth:`refund` if nothing was
    sent. Calling :meth:`refund` after :meth:`stamp` does nothing, so a ``finally:
    permit.refund()`` is always safe.
    """

    __slots__ = ("_epoch", "_expiry", "_limiter", "_state", "_sub_expiry", "images",
                 "stamped_at")

    def __init__(self, limiter: Limiter, images: int, epoch: int) -> None:
        self._limiter = limiter
        self.images = images
        self._epoch = epoch
        self._state = _HELD
        self.stamped_at: float | None = None
        self._expiry = 0.0
        self._sub_expiry = 0.0

    @property
    def stamped(self) -> bool:
        """True once :meth:`stamp` was called."""
        return self._state == _STAMPED

    @property
    def refunded(self) -> bool:
        """True once :meth:`refund` gave the images back."""
        return self._state == _REFUNDED

    def stamp(self) -> None:
        """The request is being sent now: its window starts. Idempotent.

        Raises:
            RuntimeError: the permit was already refunded.
        """
        state = self._state
        if state == _HELD:
            self._state = _STAMPED
            self._limiter._stamp(self)
        elif state == _REFUNDED:
            raise RuntimeError("a refunded permit cannot be stamped")

    def refund(self) -> None:
        """Nothing was sent: give the images back at once. No-op once stamped or refunded."""
        if self._state == _HELD:
            self._state = _REFUNDED
            self._limiter._refund(self)

    def keep_for_retry(self) -> bool:
        """The server refused the sent request uncounted (a 429): hold it for the retry.

        Its images leave the window (the server did not count them) but stay held by
        this permit, to be :meth:`stamp`-ed again when the retry is sent (after
        :meth:`resumed`) or :meth:`refund`-ed: the retry keeps its place instead of
        queueing behind later waiters, who get none of its images meanwhile, so a 429
        costs the refused request the server's wait and nobody anything more. Returns
        True when held; False when its window was already over (the answer came that
        late), and then it is spent: a retry takes a new permit. No-op (False) unless
        stamped.
        """
        if self._state != _STAMPED:
            return False
        kept = self._limiter._unstamp(self)
        self._state = _HELD if kept else _REFUNDED
        return kept

    async def resumed(self) -> None:
        """Return once the limiter's pause (a 429's wait) is over; at once if not paused."""
        await self._limiter._resumed()

    def answered(self, processing: float) -> None:
        """The answer's headers are in; the server spent ``processing`` seconds on it.

        The server counted the request by ``now - processing`` at the latest: if that
        is after the stamp and the images are still in the window, their window is
        moved to start there. And it feeds the margin (see the module docstring).
        No-op unless it was stamped, or if ``processing`` is negative.
        """
        if self.stamped_at is not None and processing >= 0:
            self._limiter._answered(self, processing)

    def __repr__(self) -> str:
        state = ("held", "stamped", "refunded")[self._state]
        return f"<Permit images={self.images} {state}>"


@attrs.frozen
class LimiterStats:
    """A snapshot of a limiter.

    Attributes:
        granted: images granted since creation (refunded ones included; a 429's retry
            holding its images again counts again).
        refunded: images given back unsent, or sent and refused uncounted (a 429).
        sent: images stamped (sent), those refused uncounted included.
        waiting: waiters in the queue.
        waiting_images: images the waiters ask for.
        held: images granted but not yet stamped nor refunded.
        in_window: images stamped less than ``per + margin`` ago (still holding budget).
        in_use: ``held + in_window``: the budget in use (images granted whose window
            has not closed; 0 once the last window after a run has passed).
        available: images grantable now by the local window (None without a rate).
        pauses: pauses begun while the limiter was not paused.
        paused_for: seconds until the current pause ends (0.0 when not paused).
        server_remaining: what the server's headers still allow (None: no constraint).
        server_reset_in: seconds until that constraint lapses (None: no constraint).
        server_limit: the last ``x-ratelimit-limit-*`` the server sent, if any.
        images_last_window: images stamped in the last ``per`` seconds.
        images_per_minute: ``images_last_window`` scaled to a minute (None without a rate).
        waited: seconds during which at least one request was waiting (wall time,
            not summed over the waiters).
    """

    granted: int
    refunded: int
    sent: int
    waiting: int
    waiting_images: int
    held: int
    in_window: int
    in_use: int
    available: int | None
    pauses: int
    paused_for: float
    server_remaining: int | None
    server_reset_in: float | None
    server_limit: int | None
    images_last_window: int
    images_per_minute: float | None
    waited: float


class RateLimiter(Protocol):
    """The interface the client uses; a limiter shared between processes can plug in.

    Optional: a ``rate`` attribute holding a :class:`RateLimit` (as :class:`Limiter`
    has). The client sizes its default concurrency ceiling from it; a limiter
    without one gets the fixed default ceiling (16) unless ``max_concurrency=`` is given.
    """

    async def acquire(self, images: int) -> RatePermit:
        """Wait for (FIFO) and take a permit for ``images`` images."""
        ...

    def pause(self, seconds: float) -> None:
        """Grant nothing to anyone for ``seconds`` (merged with a pause in progress)."""
        ...

    def observe_headers(self, headers: Mapping[str, str]) -> None:
        """Learn from a response's ``x-ratelimit-*`` headers."""
        ...

    def stats(self) -> LimiterStats:
        """A snapshot for monitoring."""
        ...


def note_answer(
    permit: RatePermit, headers: Mapping[str, str] | None, status: int, waited: float = 0.0
) -> bool:
    """Tell ``permit`` (if it is a :class:`Permit`) about its answer.

    ``openai-processing-ms`` in ``headers`` feeds :meth:`Permit.answered`, plus
    ``waited``: the seconds the answer spent in the client since its headers arrived
    (its body read, its JSON decoded, its turn on the event loop), by which the server
    counted the request earlier still; a 429
    holds it for the retry (:meth:`Permit.keep_for_retry`: the server did not count
    the refused request). Returns True when it is held so: the caller's retry sends
    with it, or refunds it.
    """
    if not isinstance(permit, Permit):
        return False
    value = headers.get("openai-processing-ms") if headers else None
    if value is not None:
        try:
            processing = float(value) / 1000
        except ValueError:
            processing = math.nan
        if math.isfinite(processing):
            permit.answered(processing + max(0.0, waited))
    return status == 429 and permit.keep_for_retry()


# -- the limiter ------------------------------------------------------------------------

BACKFILL_LOOKAHEAD = 32
"""How many waiters behind a blocked head :class:`Limiter` considers for backfilling."""
MAX_MARGIN = 0.05
"""The largest margin, as a fraction of ``per``, that 429s or measured lags widen it to."""
MAX_LAG_MARGIN = 0.25
"""The largest margin, as a fraction of ``per``, that the spread of measured lags sizes."""
LAG_SAMPLES = 64
"""How many of the latest arrival lags (see :meth:`Permit.answered`) size the margin."""

_Waiter = tuple["asyncio.Future[Permit]", int]


class Limiter:
    """A FIFO sliding-window limiter counted in images (see the module docstring).

    Args:
        rate: the budget; None switches the budget off (acquire never waits for it,
            and server headers are ignored) but :meth:`pause` still holds everyone.
        clock: the time source; :class:`MonotonicClock` by default.
        backfill: let a later waiter use images the blocked head will not need in
            time (see the module docstring); False serves strictly in order.

    One limiter may be shared by several clients on one event loop. Nothing is
    bound to a loop at construction time.
    """

    __slots__ = (
        "_allow",
        "_allow_epoch",
        "_allow_images",
        "_allow_until",
        "_backfill",
        "_bf_deadline",
        "_bf_head",
        "_busy_since",
        "_clock",
        "_granted",
        "_held",
        "_lags",
        "_limit",
        "_n_waiting",
        "_paused_until",
        "_pauses",
        "_refunded",
        "_sent",
        "_server_limit",
        "_span",
        "_sub_limit",
        "_sub_span",
        "_sub_used",
        "_sub_window",
        "_timer",
        "_timer_when",
        "_used",
        "_waited",
        "_waiters",
        "_waiting_images",
        "_window",
        "rate",
    )

    def __init__(
        self, rate: RateLimit | None, *, clock: Clock | None = None, backfill: bool = True
    ) -> None:
        self.rate = rate
        self._backfill = backfill
        self._bf_head: asyncio.Future[Permit] | None = None  # the head its deadline is for
        self._bf_deadline = math.inf
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        # The local window: 0 means no budget.
        self._limit = rate.images if rate is not None else 0
        self._span = rate.window if rate is not None else 0.0
        self._used = 0  # held + stamped images whose window is open
        self._window: deque[tuple[float, int]] = deque()  # (expiry, images), sorted
        # The burst window (0: none).
        if rate is not None and rate.burst is not None and rate.burst < rate.images:
            scale = rate.burst / rate.images
            self._sub_limit = rate.burst
            self._sub_span = rate.window * scale
        else:
            self._sub_limit = 0
            self._sub_span = 0.0
        self._sub_used = 0
        self._sub_window: deque[tuple[float, int]] = deque()
        self._held = 0
        # Waiters: FIFO; cancelled ones stay in place until they reach the head.
        self._waiters: deque[_Waiter] = deque()
        self._n_waiting = 0
        self._waiting_images = 0
        self._busy_since = 0.0  # when the queue last became non-empty
        self._waited = 0.0  # seconds with someone waiting, before _busy_since
        self._timer: Timer | None = None
        self._timer_when = 0.0
        self._paused_until = -math.inf
        self._pauses = 0
        # The server's word: at most _allow more (images or requests) until _allow_until.
        self._allow: int | None = None
        self._allow_until = -math.inf
        self._allow_images = True
        self._allow_epoch = 0
        self._server_limit: int | None = None
        self._granted = 0
        self._refunded = 0
        self._sent = 0
        self._lags: deque[float] = deque(maxlen=LAG_SAMPLES)

    def __repr__(self) -> str:
        return f"<Limiter rate={self.rate!r} waiting={self._n_waiting}>"

    # -- the public interface --

    async def acquire(self, images: int) -> Permit:
        """Wait for a permit for ``images`` images, in strict order of arrival.

        Cancelling the waiting call takes nothing from the budget.

        Raises:
            ValidationError: ``images`` is not an integer >= 1, or exceeds the
                whole budget (``param`` is ``"n"``).
        """
        n = images
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValidationError("n", f"the number of images must be an integer >= 1, not {n!r}")
        if self._limit and n > self._limit:
            raise ValidationError(
                "n",
                f"n={n} exceeds the rate limit of {self._limit} images per "
                f"{self.rate.per if self.rate else 0:g}s; it could never be sent",
            )
        if not self._n_waiting:
            now = self._clock.now()
            if now >= self._paused_until:
                self._expire(now)
                if self._fits(n):
                    return self._grant(n)
        future: asyncio.Future[Permit] = asyncio.get_running_loop().create_future()
        self._waiters.append((future, n))
        self._n_waiting += 1
        self._waiting_images += n
        if self._n_waiting == 1:
            self._busy_since = self._clock.now()
            self._drain()  # the first waiter: set up the timer
        elif self._backfill and len(self._waiters) <= BACKFILL_LOOKAHEAD + 1:
            self._drain()  # it may fit in what the head leaves spare
        try:
            return await future
        except asyncio.CancelledError:
            if future.cancelled():
                self._left(n)
                waiters = self._waiters
                if waiters and waiters[0][0] is future:
                    self._drain()  # those behind may fit now
            else:  # granted, then cancelled before it could resume
                future.result().refund()
            raise

    def preload(self, sends: Iterable[tuple[float, int]]) -> int:
        """Count images sent before this limiter existed: ``(seconds_ago, images)`` pairs.

        A rerun starts with what an earlier run spent in the window that is still
        open (a send ``seconds_ago`` seconds back holds its images until
        ``per + margin - seconds_ago`` from now), so that a rerun right after an
        interrupt cannot send a second full window at once. Sends whose window
        has closed are ignored; so is everything without a rate. Returns the
        images counted.

        Raises:
            ValueError: a ``seconds_ago`` is negative or not finite, or an
                ``images`` is not an integer >= 1.
        """
        pairs = list(sends)
        for ago, images in pairs:
            if not math.isfinite(ago) or ago < 0:
                raise ValueError(f"seconds_ago must be a finite number >= 0, not {ago!r}")
            if isinstance(images, bool) or not isinstance(images, int) or images < 1:
                raise ValueError(f"images must be an integer >= 1, not {images!r}")
        if not self._limit:
            return 0
        now = self._clock.now()
        counted = 0
        window = list(self._window)
        sub_window = list(self._sub_window)
        for ago, images in pairs:
            if ago >= self._span:
                continue
            window.append((now - ago + self._span, images))
            self._used += images
            counted += images
            if self._sub_limit and ago < self._sub_span:
                sub_window.append((now - ago + self._sub_span, images))
                self._sub_used += images
        self._window = deque(sorted(window))
        self._sub_window = deque(sorted(sub_window))
        if self._n_waiting:
            self._drain()
        return counted

    def pause(self, seconds: float) -> None:
        """Grant nothing to anyone until ``seconds`` from now.

        Pauses merge: the latest deadline wins, and ``stats().pauses`` counts only
        the pauses that began while the limiter was running (the 429s of requests
        already in flight extend the pause; they do not start another one).
        Permits already granted are not affected.

        Raises:
            ValueError: ``seconds`` is negative or not finite.
        """
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"a pause must be a finite number of seconds >= 0, not {seconds!r}")
        now = self._clock.now()
        until = now + seconds
        if until > self._paused_until:
            if now >= self._paused_until:
                self._pauses += 1
                self._widen()
            self._paused_until = until
            if self._n_waiting:
                self._drain()

    def observe_headers(self, headers: Mapping[str, str]) -> None:
        """Learn from ``x-ratelimit-*`` response headers.

        ``x-ratelimit-remaining-images`` with ``x-ratelimit-reset-images`` (else
        the ``-requests`` pair, counted in requests) replace what the server last
        said: until the reset has passed, grants are capped by an allowance that
        starts at ``remaining``, shrinks with every grant, comes back with a
        refund, and grows as images this limiter sent leave the window (they
        leave the server's window too, a margin earlier). So ``remaining=0`` with
        nothing of ours in the window blocks everyone until the reset, while a
        saturated server answering ``remaining=0`` to each request does not stall
        a limiter whose own window is moving. This is on top of the local window:
        the budget is never raised. Malformed or incomplete headers are ignored.
        No-op without a rate.
        """
        if self.rate is None:
            return
        word = read_ratelimit_headers(headers)
        if word is None:
            return
        if word.limit is not None:
            self._server_limit = word.limit
        now = self._clock.now()
        self._allow_epoch += 1
        if word.reset <= 0:
            self._allow = None
        else:
            self._allow = max(0, word.remaining)
            self._allow_until = now + word.reset
            self._allow_images = word.images
        if self._n_waiting:
            self._drain()

    def stats(self) -> LimiterStats:
        """A snapshot of the counters (see :class:`LimiterStats`)."""
        now = self._clock.now()
        self._expire(now)
        in_window = self._used - self._held if self._limit else 0
        last = 0
        per_minute: float | None = None
        if self.rate is not None:
            # Stamped at s > now - per  <=>  expiry > now - per + span.
            since = now - self.rate.per + self._span
            for expiry, count in self._window:
                if expiry > since:
                    last += count
            per_minute = last * 60.0 / self.rate.per
        allow = self._allow
        waited = self._waited + (now - self._busy_since if self._n_waiting else 0.0)
        return LimiterStats(
            granted=self._granted,
            refunded=self._refunded,
            sent=self._sent,
            waiting=self._n_waiting,
            waiting_images=self._waiting_images,
            held=self._held,
            in_window=in_window,
            in_use=self._held + in_window,
            available=self._limit - self._used if self._limit else None,
            pauses=self._pauses,
            paused_for=max(0.0, self._paused_until - now),
            server_remaining=allow,
            server_reset_in=None if allow is None else self._allow_until - now,
            server_limit=self._server_limit,
            images_last_window=last,
            images_per_minute=per_minute,
            waited=waited,
        )

    # -- the machinery --

    def _widen(self) -> None:
        """A 429 under our own window: the server counted later than the margin allows.

        Double the margin of the sends to come, up to :data:`MAX_MARGIN` of ``per``.
        """
        rate = self.rate
        if rate is None:
            return
        margin = self._span - rate.per
        widened = min(max(2 * margin, rate.per / 100), rate.per * MAX_MARGIN)
        self._span = rate.per + max(margin, widened)

    def _answered(self, permit: Permit, processing: float) -> None:
        """Move the window of ``permit`` to when the server counted it at the latest."""
        rate = self.rate
        stamped_at = permit.stamped_at
        if rate is None or stamped_at is None:
            return
        now = self._clock.now()
        counted_by = now - processing
        lags = self._lags
        lags.append(counted_by - stamped_at)
        spread = min(max(lags) - min(lags), rate.per * MAX_LAG_MARGIN)
        if rate.per + spread > self._span:
            self._span = rate.per + spread
        expiry = counted_by + rate.window
        old = permit._expiry
        if permit._state != _STAMPED or not self._limit or old <= now or expiry <= old:
            return
        window = self._window
        window.remove((old, permit.images))
        at = len(window)
        while at and window[at - 1][0] > expiry:
            at -= 1
        window.insert(at, (expiry, permit.images))
        permit._expiry = expiry

    def _left(self, n: int) -> None:
        """A waiter for ``n`` images left the queue (granted or cancelled)."""
        self._n_waiting -= 1
        self._waiting_images -= n
        if not self._n_waiting:
            self._waited += self._clock.now() - self._busy_since

    def _expire(self, now: float) -> None:
        window = self._window
        while window and window[0][0] <= now:
            n = window.popleft()[1]
            self._used -= n
            if self._allow is not None:  # it has left the server's window too
                self._allow += n if self._allow_images else 1
        window = self._sub_window
        while window and window[0][0] <= now:
            self._sub_used -= window.popleft()[1]
        if self._allow is not None and now >= self._allow_until:
            self._allow = None

    def _fits(self, n: int) -> bool:
        limit = self._limit
        if limit and self._used + n > limit:
            return False
        used = self._sub_used
        if used and used + n > self._sub_limit:
            return False
        allow = self._allow
        return allow is None or (n if self._allow_images else 1) <= allow

    def _grant(self, n: int) -> Permit:
        if self._limit:
            self._used += n
            if self._sub_limit:
                self._sub_used += n
            if self._allow is not None:
                self._allow -= n if self._allow_images else 1
        self._held += n
        self._granted += n
        return Permit(self, n, self._allow_epoch)

    def _stamp(self, permit: Permit) -> None:
        n = permit.images
        now = self._clock.now()
        permit.stamped_at = now
        self._held -= n
        self._sent += n
        if self._limit:
            permit._expiry = now + self._span
            self._window.append((permit._expiry, n))
            if self._sub_limit:
                permit._sub_expiry = now + self._sub_span
                self._sub_window.append((permit._sub_expiry, n))
            if self._n_waiting:
                self._drain()  # the head may now have an expiry to wait for

    def _refund(self, permit: Permit) -> None:
        n = permit.images
        self._held -= n
        self._refunded += n
        if self._limit:
            self._used -= n
            if self._sub_limit:
                self._sub_used -= n
            if self._allow is not None and permit._epoch == self._allow_epoch:
                self._allow += n if self._allow_images else 1
        if self._n_waiting:
            self._drain()

    def _unstamp(self, permit: Permit) -> bool:
        """Take a refused ``permit`` out of the window, holding its images; False: spent."""
        n = permit.images
        self._refunded += n  # given back ...
        if self._limit:
            now = self._clock.now()
            self._expire(now)
            if permit._expiry <= now or (self._sub_limit and permit._sub_expiry <= now):
                # Its window is over (a part of it, at least): the budget it held is
                # someone else's by now. Whatever is still counted goes back.
                if permit._expiry > now:
                    self._window.remove((permit._expiry, n))
                    self._used -= n
                    if self._n_waiting:
                        self._drain()
                return False
            self._window.remove((permit._expiry, n))
            if self._sub_limit:
                self._sub_window.remove((permit._sub_expiry, n))
        self._granted += n  # ... and granted again, to the same request
        self._held += n
        permit.stamped_at = None
        return True

    async def _resumed(self) -> None:
        clock = self._clock
        while clock.now() < self._paused_until:
            await clock.sleep_until(self._paused_until)

    def _drain(self) -> None:
        """Serve the waiters at the head that fit; then arm the timer for the rest."""
        waiters = self._waiters
        now = self._clock.now()
        if now < self._paused_until:
            if self._n_waiting:
                self._schedule(self._paused_until)
            return
        self._expire(now)
        while waiters:
            future, n = waiters[0]
            if future.done():  # cancelled while waiting
                waiters.popleft()
                continue
            if not self._fits(n):
                break
            waiters.popleft()
            self._left(n)
            future.set_result(self._grant(n))
        if not waiters:
            self._cancel_timer()
            return
        if self._backfill and self._limit and not self._sub_limit:
            self._backfill_behind(*waiters[0])
        when = self._next_change(waiters[0][1])
        if when is None:
            self._cancel_timer()  # only a stamp or a refund can help; both drain
        else:
            self._schedule(when)

    def _backfill_behind(self, head_future: asyncio.Future[Permit], head: int) -> None:
        """Grant waiters behind the head (``head`` images) from what it will leave spare.

        The head fits at the first moment ``T`` (a window expiry, or the lapse of the
        server's allowance) when ``limit - used + expired(T)`` and, before the lapse,
        the allowance ``allow + expired(T)`` both reach ``head``. Its deadline is
        ``T + margin``, fixed while it stays the head (the images of one burst are
        stamped a few ms apart: without the margin, a head that the first of them
        would let in could not be backfilled at all). A permit granted now holds its
        images until at least ``now + span``, past the deadline, so only what is spare
        at the deadline may go, and the head is granted by then.
        """
        free = self._limit - self._used
        allow = self._allow
        if allow is not None and not self._allow_images:
            return  # the server counts requests: every grant costs the head; keep the order
        room = free if allow is None else min(free, allow)
        if room <= 0:
            return
        until = self._allow_until if allow is not None else -math.inf

        def spare_at(expired: int, when: float) -> int:
            spare = free + expired - head
            if allow is not None and when < until:
                spare = min(spare, allow + expired - head)
            return spare

        if self._bf_head is not head_future:
            fit_at = self._fit_time(spare_at)
            if fit_at is None:
                return  # the head waits for permits not yet stamped
            self._bf_head = head_future
            self._bf_deadline = fit_at + self._span - (self.rate.per if self.rate else 0.0)
        deadline = self._bf_deadline
        expired = 0
        for expiry, count in self._window:
            if expiry > deadline:
                break
            expired += count
        spare = spare_at(expired, deadline)
        if spare <= 0:
            return  # the head waits for permits not yet stamped, or nothing is spare
        waiters = self._waiters
        while spare > 0 and room > 0:
            # Best fit: the largest that fits (the earliest of those) goes first, so that
            # the small requests are left for the gaps the large ones cannot fill (the
            # last window of a job with mixed n is filled instead of spilling over).
            best = 0
            i = 1
            while i < len(waiters) and i <= BACKFILL_LOOKAHEAD:
                future, n = waiters[i]
                if future.done():
                    del waiters[i]
                    continue
                if n <= spare and n <= room and (not best or n > waiters[best][1]):
                    best = i
                i += 1
            if not best:
                return
            future, n = waiters[best]
            del waiters[best]
            self._left(n)
            future.set_result(self._grant(n))
            spare -= n
            room -= n

    def _fit_time(self, spare_at: Callable[[int, float], int]) -> float | None:
        """The first expiry (or the allowance's lapse) at which ``spare_at`` is >= 0."""
        until = self._allow_until if self._allow is not None else -math.inf
        expired = 0
        window = self._window
        for k, (expiry, count) in enumerate(window):
            if until <= expiry and (k == 0 or window[k - 1][0] < until) and (
                spare_at(expired, until) >= 0
            ):
                return until  # the allowance lapses first
            expired += count
            if k + 1 < len(window) and window[k + 1][0] == expiry:
                continue
            if spare_at(expired, expiry) >= 0:
                return expiry
        if self._allow is not None:
            when = max(until, self._clock.now())
            if spare_at(expired, when) >= 0:
                return when
        return None

    def _next_change(self, n: int) -> float | None:
        """The earliest time the head (``n`` images) may fit, or None: wait for an event."""
        when = math.inf
        limit = self._limit
        if limit and self._used + n > limit and self._window:
            when = self._window[0][0]
        used = self._sub_used
        if used and used + n > self._sub_limit and self._sub_window:
            when = min(when, self._sub_window[0][0])
        allow = self._allow
        if allow is not None and (n if self._allow_images else 1) > allow:
            when = min(when, self._allow_until)
            if self._window:  # an expiry gives back to the allowance too
                when = min(when, self._window[0][0])
        return None if when == math.inf else when

    def _schedule(self, when: float) -> None:
        timer = self._timer
        if timer is not None:
            if self._timer_when == when:
                return
            timer.cancel()
        self._timer_when = when
        self._timer = self._clock.call_at(when, self._on_timer)

    def _cancel_timer(self) -> None:
        timer = self._timer
        if timer is not None:
            self._timer = None
            timer.cancel()

    def _on_timer(self) -> None:
        self._timer = None
        self._drain()
