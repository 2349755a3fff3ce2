"""Stopping a batch early: which errors are fatal, and the control that stops a run.

A run stops, sending nothing new, on a fatal error (a refused key, permission, an
unknown model or URL, an exhausted quota, the shared limiter's Redis out of reach,
a server that answers none of :data:`UNREACHABLE_AFTER` items in a row),
a local failure (a full disk), a line of input that does not decode, or a signal.
:class:`BatchControl` is what the runner and a signal handler share: it cancels the
items with nothing on the wire, a request sleeping before a retry among them (or,
the second time a signal comes, every item), and reads the
input off the event loop so that a silent stdin never holds the loop or the stop.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TypeVar

import anyio

from .._callstats import CallStats
from .._exceptions import (
    APIConnectionError,
    AuthenticationError,
    LimiterUnavailableError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
)
from .._offloop import ThreadedIterator
from .._retry import QUOTA_CODES

__all__ = ["UNREACHABLE_AFTER", "BatchControl", "fatal_error"]

_T = TypeVar("_T")

UNREACHABLE_AFTER = 5
"""Items in a row that end in a connection failure (refused, DNS, timed out), with no
answer from the server between them, before a run stops as unreachable."""

def fatal_error(exc: BaseException) -> str | None:
    """What to tell the user when ``exc`` will fail every item of a batch; None otherwise.

    Fatal: a refused key (401), a refused permission (403), an unknown model or
    URL (404), an exhausted quota or billing limit (a 429 with that code), the
    shared limiter's Redis out of reach.
    """
    if isinstance(exc, AuthenticationError):
        return (
            "the API key was refused (401): check OPENAI_API_KEY (and --base-url), or for "
            "Azure AZURE_OPENAI_API_KEY (and --azure-endpoint)"
        )
    if isinstance(exc, PermissionDeniedError):
        return (
            "permission denied (403): this key, organization or project may not use "
            "this model or endpoint"
        )
    if isinstance(exc, NotFoundError):
        return "not found (404): check --model and --base-url"
    if isinstance(exc, RateLimitError) and exc.code in QUOTA_CODES:
        return f"the account's quota is exhausted (429 {exc.code}): check the plan and billing"
    if isinstance(exc, LimiterUnavailableError):
        return f"the shared rate limit is out of reach ({exc}): check --redis"
    return None


def _on_the_wire(stats: CallStats) -> bool:
    """Whether an item's latest attempt is out and unanswered, or answered well.

    An attempt that failed records its status; one that is sleeping before a
    retry (a 429's Retry-After) is not on the wire.
    """
    return len(stats.sent) > len(stats.statuses)


class BatchControl:
    """Stops a running batch: no new item starts, and finished ones are still recorded.

    ``run_batch`` uses it for fatal errors, a full disk and bad input; pass your
    own to stop a run from outside (a signal handler calls :meth:`interrupt`).
    After the run, ``reason`` is ``"fatal"``, ``"aborted"``, ``"input"``,
    ``"budget"`` (the next request would not fit the budget), ``"interrupted"`` or
    None (it ran to the end) and ``message`` says why.
    """

    def __init__(self) -> None:
        self.reason: str | None = None
        self.message: str | None = None
        self.signal: int | None = None
        self._items: dict[int, tuple[anyio.CancelScope, CallStats]] = {}
        self._reader: anyio.CancelScope | None = None
        self._unanswered = 0

    def stop(self, reason: str, message: str, *, cancel_sent: bool = False) -> None:
        """Start nothing new; cancel the items not yet sent (all of them with ``cancel_sent``).

        The first reason given is kept.
        """
        if self.reason is None:
            self.reason, self.message = reason, message
        if self._reader is not None:
            self._reader.cancel()
        for scope, stats in list(self._items.values()):
            if cancel_sent or not _on_the_wire(stats):
                scope.cancel()

    def finished(self, error: BaseException | None) -> None:
        """An item ended, with ``error`` (None: the server answered it).

        :data:`UNREACHABLE_AFTER` connection failures in a row stop the run as
        ``"fatal"``: the server is out of reach, and every item would fail.
        """
        if not isinstance(error, APIConnectionError):
            self._unanswered = 0
            return
        self._unanswered += 1
        if self._unanswered >= UNREACHABLE_AFTER:
            self.stop(
                "fatal",
                f"the server is unreachable: {self._unanswered} items in a row got no "
                f"answer (the last: {error}): check --base-url and the network",
            )

    @property
    def in_flight(self) -> int:
        """Items with a request on the wire (or answered and being saved)."""
        return sum(1 for _scope, stats in self._items.values() if _on_the_wire(stats))

    def interrupt(self, signum: int) -> None:
        """A signal arrived. The first: nothing new starts, what is in flight may finish.

        The second: what is in flight is cancelled too. What is finished is recorded
        either way.
        """
        first = self.signal is None
        self.signal = self.signal or signum
        name = signal.Signals(self.signal).name
        self.stop("interrupted", f"interrupted ({name})", cancel_sent=not first)

    async def run(self, work: Callable[[CallStats], Awaitable[_T | None]]) -> _T | None:
        """Run one item's ``work(stats)``; None when it was stopped before it finished.

        ``stats`` records the requests the item sends (pass it to the call):
        :meth:`stop` cancels the items without a request on the wire: those that
        have sent none, and those whose every attempt failed (sleeping before a
        retry, or waiting for the limiter again); such an item is not run, and a
        rerun runs it. Work that sends through ``stats`` nothing (the Batch API
        route's polling) is cancelled at once.
        """
        if self.reason is not None:
            return None
        scope = anyio.CancelScope()
        stats = CallStats()
        key = id(scope)
        self._items[key] = (scope, stats)
        try:
            with scope:
                return await work(stats)
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
        reader: ThreadedIterator[_T] = ThreadedIterator(entries)
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
