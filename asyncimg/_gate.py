"""The concurrency gate: a ceiling on requests in flight, sized from the rate limit.

The rate limiter is the throttle; this gate is only a safety ceiling (memory,
sockets). A fixed ceiling cannot be right for every model: at 50 images a minute
and 60 s per image, 16 requests in flight send 16 a minute, a third of the limit.
So by default the ceiling follows Little's law from what the limit can keep busy.

The sizing (:func:`auto_limit`)
-------------------------------
A limiter of ``images`` per ``span`` seconds (``span`` = ``per + margin``) sends at
most ``images`` requests in any ``span``. A request answered after ``L`` seconds
was sent in the last ``L`` seconds, which ``floor(L / span) + 1`` windows cover, so
at most ``images * (floor(L / span) + 1)`` are in flight, and up to ``images`` more
wait in the limiter for the next window. The ceiling is therefore
``images * (floor(L / span) + 2)``, between :data:`AUTO_FLOOR`
and :data:`AUTO_CEILING`; ``L`` is the longest recent answer time, or the age of
the oldest request still unanswered if that is longer (so a ceiling never holds
back a window's burst while the first answers are still on their way). Without a
rate there is nothing to size from, and the ceiling is :data:`AUTO_FLOOR`.

A user's ``max_concurrency=`` is a hard ceiling instead: the gate never goes above it.

The gate is FIFO; its clock is injectable (:class:`~asyncimg.testing.FakeClock` in
tests), and it arms one timer when waiters are held back by a ceiling that will grow
as the oldest request ages.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from typing import Final

from ._clock import Clock, MonotonicClock, Timer
from ._limiter import RateLimit

__all__ = ["AUTO_CEILING", "AUTO_FLOOR", "Gate", "auto_limit"]

AUTO_FLOOR: Final = 16
"""The automatic ceiling's minimum, and its value without a rate limit."""
AUTO_CEILING: Final = 512
"""The automatic ceiling's maximum: half of the common 1,024 open files per process."""
_RECENT: Final = 32
"""How many answer times the automatic ceiling remembers."""


def auto_limit(rate: RateLimit | None, latency: float) -> int:
    """The automatic ceiling on requests in flight for ``rate`` and answers after ``latency`` s.

    ``images * (floor(latency / span) + 2)`` clamped to ``[AUTO_FLOOR, AUTO_CEILING]``
    (see the module docstring); :data:`AUTO_FLOOR` without a rate.
    """
    if rate is None:
        return AUTO_FLOOR
    if not math.isfinite(latency):
        return AUTO_CEILING
    windows = math.floor(max(0.0, latency) / rate.window) + 2
    return max(AUTO_FLOOR, min(AUTO_CEILING, rate.images * windows))


class Gate:
    """A FIFO ceiling on requests in flight, fixed or sized from the rate (see the module).

    Args:
        rate: the rate limit to size from (None: :data:`AUTO_FLOOR`); ignored when ``fixed``.
        fixed: a hard ceiling (``max_concurrency=``), or None for the automatic one.
        clock: the time source for answer times; :class:`MonotonicClock` by default.

    Use :meth:`acquire`/:meth:`release` around a request, and :meth:`sent`/
    :meth:`answered` around the part that waits for the server.
    """

    __slots__ = ("_clock", "_fixed", "_in_use", "_open", "_rate", "_recent", "_seq",
                 "_timer", "_waiters")

    def __init__(
        self, rate: RateLimit | None, *, fixed: int | None = None, clock: Clock | None = None
    ) -> None:
        self._rate = rate
        self._fixed = fixed
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._recent: deque[float] = deque(maxlen=_RECENT)
        self._open: dict[int, float] = {}  # sent, unanswered: token -> when (oldest first)
        self._seq = 0
        self._timer: Timer | None = None

    @property
    def ceiling(self) -> int:
        """The most the limit can ever be: ``fixed``, else :data:`AUTO_CEILING` (or the floor)."""
        if self._fixed is not None:
            return self._fixed
        return AUTO_FLOOR if self._rate is None else AUTO_CEILING

    @property
    def ready_limit(self) -> int | None:
        """How many finished results a batch may hold for its consumer: None when fixed
        (the batch's own window bounds them), else ``2 * AUTO_FLOOR``."""
        return None if self._fixed is not None else 2 * AUTO_FLOOR

    @property
    def in_use(self) -> int:
        """Slots taken now."""
        return self._in_use

    def latency(self) -> float:
        """The answer time the automatic ceiling is sized for (0.0 before any request)."""
        longest = max(self._recent, default=0.0)
        if self._open:
            longest = max(longest, self._clock.now() - next(iter(self._open.values())))
        return longest

    def limit(self) -> int:
        """The ceiling now."""
        if self._fixed is not None:
            return self._fixed
        return auto_limit(self._rate, self.latency())

    async def acquire(self) -> None:
        """Wait (FIFO) for a slot. Cancelling the wait takes nothing."""
        if not self._waiters and self._in_use < self.limit():
            self._in_use += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        self._arm()
        try:
            await future
        except asyncio.CancelledError:
            if not future.cancelled():  # granted, then cancelled before it could resume
                self.release()
            else:
                self._wake()
            raise

    def release(self) -> None:
        """Give a slot back."""
        self._in_use -= 1
        self._wake()

    def sent(self) -> int:
        """A request goes to the server now; returns the token for :meth:`answered`."""
        self._seq += 1
        self._open[self._seq] = self._clock.now()
        if self._waiters and self._timer is None:
            self._arm()  # the first request on its way: from now on its age counts
        return self._seq

    def answered(self, token: int, *, measured: bool = True) -> None:
        """The request of ``token`` is over; ``measured``: its time counts as an answer time."""
        started = self._open.pop(token, None)
        if started is not None and measured:
            self._recent.append(self._clock.now() - started)
        self._wake()

    def _wake(self) -> None:
        waiters = self._waiters
        limit = self.limit()
        while waiters and self._in_use < limit:
            future = waiters.popleft()
            if future.done():  # cancelled while waiting
                continue
            self._in_use += 1
            future.set_result(None)
        self._arm()

    def _arm(self) -> None:
        """While waiters are held back, wake up when the oldest request's age raises the limit."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        rate = self._rate
        if not self._waiters or self._fixed is not None or rate is None or not self._open:
            return
        if self.limit() >= AUTO_CEILING:
            return
        age_start = next(iter(self._open.values()))
        age = self._clock.now() - age_start
        when = age_start + (math.floor(age / rate.window) + 1) * rate.window
        self._timer = self._clock.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._wake()
