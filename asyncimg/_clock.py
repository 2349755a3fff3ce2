"""The clock of the limiter and the gate: a protocol, the real one, and a fake for tests.

:class:`Clock` is what :class:`~asyncimg.Limiter` and the concurrency gate ask of time:
seconds on a monotonic scale, a way to be called back at a deadline, a way to sleep
until one. :class:`MonotonicClock` is the default (``time.monotonic`` and the running
asyncio loop). :class:`FakeClock` moves only when told to, so a test can travel through
a minute of rate limiting in microseconds; it is public, re-exported by
:mod:`asyncimg.testing`, for users who test their own code around a limiter.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["Clock", "FakeClock", "MonotonicClock", "Timer"]


class Timer(Protocol):
    """A scheduled callback that can be cancelled (``asyncio.TimerHandle`` is one)."""

    def cancel(self) -> None:
        """Do not run the callback."""
        ...


class Clock(Protocol):
    """The limiter's time: seconds on a monotonic scale, and a way to be woken."""

    def now(self) -> float:
        """The current time in seconds."""
        ...

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` (on the running event loop) once ``now() >= when``."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Return once ``now() >= deadline``."""
        ...


class MonotonicClock:
    """The default clock: ``time.monotonic`` and the running asyncio loop."""

    __slots__ = ()

    def now(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        """Schedule ``callback`` on the running loop for ``when``.

        Raises:
            RuntimeError: no event loop is running.
        """
        loop = asyncio.get_running_loop()
        return loop.call_later(max(0.0, when - time.monotonic()), callback)

    async def sleep_until(self, deadline: float) -> None:
        """Sleep on the running loop until ``deadline``."""
        delay = deadline - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


class _FakeTimer:
    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """A clock for tests: time moves only when :meth:`advance` is called.

    Callbacks scheduled with :meth:`call_at` (and sleepers in :meth:`sleep_until`)
    run inside :meth:`advance`, in deadline order, each with :meth:`now` set to its
    deadline. Woken tasks run when the test next yields to the loop
    (``await asyncio.sleep(0)``).
    """

    __slots__ = ("_heap", "_now", "_seq")

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._heap: list[tuple[float, int, _FakeTimer]] = []
        self._seq = 0

    def now(self) -> float:
        """The fake time."""
        return self._now

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` inside the :meth:`advance` that reaches ``when``."""
        timer = _FakeTimer(when, callback)
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, timer))
        return timer

    async def sleep_until(self, deadline: float) -> None:
        """Wait until an :meth:`advance` reaches ``deadline``."""
        if deadline <= self._now:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not future.done():
                future.set_result(None)

        timer = self.call_at(deadline, wake)
        try:
            await future
        finally:
            timer.cancel()

    @property
    def next_deadline(self) -> float | None:
        """The earliest pending deadline, or None when nothing is scheduled."""
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (>= 0), running every callback now due.

        Raises:
            ValueError: ``seconds`` is negative.
        """
        if seconds < 0:
            raise ValueError("a FakeClock cannot go back in time")
        self.advance_to(self._now + seconds)

    def advance_to(self, when: float) -> None:
        """Move time forward to ``when`` (never back), running the callbacks due."""
        heap = self._heap
        while heap and heap[0][0] <= when:
            deadline, _, timer = heapq.heappop(heap)
            if timer.cancelled:
                continue
            timer.cancelled = True
            self._now = max(self._now, deadline)
            timer.callback()
        self._now = max(self._now, when)

