"""Stopping a batch early: which errors are fatal, and the control that stops a run.

A run stops, sending nothing new, on a fatal error (a refused key, permission, an
unknown model or URL, an exhausted quota, the shared limiter's Redis out of reach),
a local failure (a full disk), a line of input that does not decode, or a signal.
:class:`BatchControl` is what the runner and a signal handler share: it cancels the
items not yet sent (or, the second time a signal comes, every item), and reads the
input off the event loop so that a silent stdin never holds the loop or the stop.
"""

from __future__ import annotations

import asyncio
import functools
import queue
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Generic, TypeVar

import anyio

from .._exceptions import (
    AuthenticationError,
    LimiterUnavailableError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
)

__all__ = ["BatchControl", "fatal_error"]

_T = TypeVar("_T")

_QUOTA_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached"})


def fatal_error(exc: BaseException) -> str | None:
    """What to tell the user when ``exc`` will fail every item of a batch; None otherwise.

    Fatal: a refused key (401), a refused permission (403), an unknown model or
    URL (404), an exhausted quota or billing limit (a 429 with that code), the
    shared limiter's Redis out of reach.
    """
    if isinstance(exc, AuthenticationError):
        return "the API key was refused (401): check OPENAI_API_KEY (and --base-url)"
    if isinstance(exc, PermissionDeniedError):
        return (
            "permission denied (403): this key, organization or project may not use "
            "this model or endpoint"
        )
    if isinstance(exc, NotFoundError):
        return "not found (404): check --model and --base-url"
    if isinstance(exc, RateLimitError) and exc.code in _QUOTA_CODES:
        return f"the account's quota is exhausted (429 {exc.code}): check the plan and billing"
    if isinstance(exc, LimiterUnavailableError):
        return f"the shared rate limit is out of reach ({exc}): check --redis"
    return None


class BatchControl:
    """Stops a running batch: no new item starts, and finished ones are still recorded.

    ``run_batch`` uses it for fatal errors, a full disk and bad input; pass your
    own to stop a run from outside (a signal handler calls :meth:`interrupt`).
    After the run, ``reason`` is ``"fatal"``, ``"aborted"``, ``"input"``,
    ``"interrupted"`` or None (it ran to the end) and ``message`` says why.
    """

    def __init__(self) -> None:
        self.reason: str | None = None
        self.message: str | None = None
        self.signal: int | None = None
        self._items: dict[int, tuple[anyio.CancelScope, list[int]]] = {}
        self._reader: anyio.CancelScope | None = None

    def stop(self, reason: str, message: str, *, cancel_sent: bool = False) -> None:
        """Start nothing new; cancel the items not yet sent (all of them with ``cancel_sent``).

        The first reason given is kept.
        """
        if self.reason is None:
            self.reason, self.message = reason, message
        if self._reader is not None:
            self._reader.cancel()
        for scope, attempts in list(self._items.values()):
            if cancel_sent or attempts[0] == 0:
                scope.cancel()

    @property
    def in_flight(self) -> int:
        """Items sent and not finished."""
        return sum(1 for _scope, attempts in self._items.values() if attempts[0])

    def interrupt(self, signum: int) -> None:
        """A signal arrived. The first: nothing new starts, what is in flight may finish.

        The second: what is in flight is cancelled too. What is finished is recorded
        either way.
        """
        first = self.signal is None
        self.signal = self.signal or signum
        name = signal.Signals(self.signal).name
        self.stop("interrupted", f"interrupted ({name})", cancel_sent=not first)

    async def run(self, work: Callable[[list[int]], Awaitable[_T | None]]) -> _T | None:
        """Run one item's ``work(attempts)``; None when it was stopped before it finished.

        ``attempts[0]`` counts the requests the item has sent (see ``make_item``):
        :meth:`stop` cancels the items that have sent none.
        """
        if self.reason is not None:
            return None
        scope = anyio.CancelScope()
        attempts = [0]
        key = id(scope)
        self._items[key] = (scope, attempts)
        try:
            with scope:
                return await work(attempts)
            return None
        finally:
            del self._items[key]

    async def pull(
        self, entries: Iterator[_T], *, bad_input: type[Exception]
    ) -> AsyncIterator[_T]:
        """The entries, each read off the event loop (a slow stdin never blocks it).

        Stops at :meth:`stop`; a ``bad_input`` error from ``entries`` stops the run
        with ``"input"``.
        """
        reader: _OffLoop[_T] = _OffLoop(entries)
        try:
            while self.reason is None:
                with anyio.CancelScope() as scope:
                    self._reader = scope
                    try:
                        entry = await reader.next()
                    except bad_input as exc:
                        self.stop("input", str(exc))
                        return
                    finally:
                        self._reader = None
                if scope.cancelled_caught or entry is None:
                    return
                yield entry
        finally:
            reader.close()


class _OffLoop(Generic[_T]):
    """``next(iterator)`` on one daemon thread of its own, awaited from the loop.

    A daemon thread, so that a read blocked on a terminal or a pipe never keeps the
    process alive after the run has stopped.
    """

    def __init__(self, iterator: Iterator[_T]) -> None:
        self._iterator = iterator
        self._asks: queue.SimpleQueue[asyncio.Future[_T | None] | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None

    def _serve(self, loop: asyncio.AbstractEventLoop) -> None:
        while (future := self._asks.get()) is not None:
            try:
                entry = next(self._iterator, None)
            except BaseException as exc:  # handed to the awaiting task
                answer: Callable[[], None] = functools.partial(_settle, future, None, exc)
            else:
                answer = functools.partial(_settle, future, entry, None)
            try:
                loop.call_soon_threadsafe(answer)
            except RuntimeError:  # the loop is gone
                return

    async def next(self) -> _T | None:
        """The next item, None at the end.

        Raises:
            Exception: whatever the iterator raised.
        """
        loop = asyncio.get_running_loop()
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._serve, args=(loop,), name="asyncimg input", daemon=True
            )
            self._thread.start()
        future: asyncio.Future[_T | None] = loop.create_future()
        self._asks.put(future)
        return await future

    def close(self) -> None:
        """Let the thread end after the read in progress, if any."""
        self._asks.put(None)


def _settle(
    future: asyncio.Future[_T | None], entry: _T | None, exc: BaseException | None
) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(entry)
