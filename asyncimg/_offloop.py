"""Leaving the event loop: the one module that runs work on other threads.

Three lanes, each for one kind of work, so that a reader finds every thread here:

* :func:`off_loop` (and :func:`off_loop_if_large`): CPU work too large for the
  loop, such as decoding a large JSON body or base64 text, or checking a large
  upload. One worker thread for the process, not a pool: the work holds the
  GIL, so a second thread would not make it faster, only make the loop wait
  behind more GIL holders.
* :func:`blocking`: blocking I/O (writing images and manifest lines, reading a
  file, a sync token provider), on anyio's worker threads, so that many
  writes can wait on the disk at once. anyio is imported on first use.
* :class:`ThreadedIterator`: ``next()`` of an iterator that may block for
  ever (stdin, a pipe), on a daemon thread of its own, so that a read never
  keeps the process alive after the run has stopped.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final, Generic, ParamSpec, TypeVar

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

__all__ = ["OFF_LOOP_BYTES", "ThreadedIterator", "blocking", "off_loop", "off_loop_if_large"]

OFF_LOOP_BYTES: Final = 4 * 1024 * 1024
"""Bodies, base64 texts and uploads larger than this are handled off the loop."""

P = ParamSpec("P")
T = TypeVar("T")

_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None


def _worker() -> ThreadPoolExecutor:
    global _executor
    with _lock:
        if _executor is None:
            from concurrent.futures import ThreadPoolExecutor  # on first use

            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asyncimg-decode")
        return _executor


async def off_loop(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` (CPU work) in the worker thread; the loop runs on meanwhile.

    Raises:
        BaseException: whatever ``fn`` raised.
    """
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_worker(), functools.partial(fn, *args, **kwargs))


async def off_loop_if_large(fn: Callable[[], T], size: int) -> T:
    """``fn()``, in the worker thread when it handles more than :data:`OFF_LOOP_BYTES`.

    Raises:
        BaseException: whatever ``fn`` raised.
    """
    return fn() if size <= OFF_LOOP_BYTES else await off_loop(fn)


async def blocking(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` (blocking I/O) on one of anyio's worker threads.

    Raises:
        BaseException: whatever ``fn`` raised.
    """
    from anyio import to_thread  # on first use: `import asyncimg` stays light

    return await to_thread.run_sync(functools.partial(fn, *args, **kwargs))


class ThreadedIterator(Generic[T]):
    """``next(iterator)`` on one daemon thread of its own, awaited from the loop.

    The thread reads up to ``ahead`` items before they are asked for, so that most
    asks find one waiting and cost no hop between threads; the loop is woken only
    when an ask is waiting. An exception of the iterator comes, in its turn, to the
    ask that reaches it. A daemon thread, so that a read blocked on a terminal or a
    pipe never keeps the process alive after the run has stopped.
    """

    def __init__(self, iterator: Iterator[T], ahead: int = 64) -> None:
        self._iterator = iterator
        self._ahead = max(1, ahead)
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._ready: collections.deque[tuple[T | None, BaseException | None]] = \
            collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._thread: threading.Thread | None = None

    def _serve(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            try:
                read: tuple[T | None, BaseException | None] = (next(self._iterator, None), None)
            except BaseException as exc:  # handed to the ask that reaches it
                read = (None, exc)
            with self._lock:
                if self._closed:
                    return
                self._ready.append(read)
                if read[1] is not None:  # after an error, the end
                    self._ready.append((None, None))
                waiter, self._waiter = self._waiter, None
                if waiter is not None:
                    try:
                        loop.call_soon_threadsafe(_wake, waiter)
                    except RuntimeError:  # the loop is gone
                        return
                if read[0] is None:  # the end, or an error: nothing more to read
                    return
                while len(self._ready) >= self._ahead and not self._closed:
                    self._room.wait()

    async def next(self) -> T | None:
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
        while True:
            with self._lock:
                if self._ready:
                    entry, exc = self._ready[0]
                    if entry is not None or exc is not None:  # the end stays, for any ask
                        self._ready.popleft()
                        self._room.notify()
                    break
                waiter = self._waiter = loop.create_future()
            await waiter
        if exc is not None:
            raise exc
        return entry

    def close(self) -> None:
        """Let the thread end after the read in progress, if any."""
        with self._lock:
            self._closed = True
            self._room.notify()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
