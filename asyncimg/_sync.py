"""ImagesClient: the blocking client, one AsyncImagesClient driven through an anyio portal.

An :class:`ImagesClient` owns one anyio blocking portal (an event loop running on
a daemon thread named ``asyncimg-portal``) and one :class:`AsyncImagesClient`
created on that loop. Every blocking method is a one-line forward made by
:func:`_blocking` (and :func:`_iterating` for ``generate_many``), so no method
body exists twice and the signatures seen by IDEs and mypy are the async ones.
A call that returns an :class:`~asyncimg.ImageStream` (``stream=True``) returns
its events as a plain iterator, driven on the portal like ``generate_many``'s;
only the overloads of ``generate`` and ``edit`` are written out, for mypy, since
their return types differ from the async ones.

- Threads: any number of threads may call one client at once; the calls all run
  on the portal's loop, so one limiter and one connection pool govern them all.
- A running event loop in the calling thread (a notebook cell, ``asyncio.run``)
  is fine: the call runs on the portal's loop and the caller's thread blocks.
- Ctrl-C: the caller waits in short slices so that a KeyboardInterrupt is seen
  promptly; it cancels the call on the portal before it propagates.
- Cleanup: :meth:`ImagesClient.close` (or ``with``), else a ``weakref.finalize``
  closes the async client and stops the portal when the client is garbage
  collected or at interpreter exit, while the portal's thread is still alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Future
from types import TracebackType
from typing import (
    TYPE_CHECKING,
    Any,
    Concatenate,
    Final,
    Literal,
    ParamSpec,
    Protocol,
    TypeVar,
    cast,
    overload,
)

import anyio
import attrs
from anyio.abc import TaskStatus
from anyio.from_thread import start_blocking_portal
from anyio.streams.memory import MemoryObjectSendStream

from ._client import AsyncImagesClient
from ._sdk import AsyncImagesWithRawResponse, RawAPIResponse
from ._stream import ImageStream

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._keywords import EditKeywords, GenerateKeywords, Unpack
    from ._limiter import LimiterStats, RateLimit, RateLimiter, RatePermit
    from ._models import ImagesResponse
    from ._refs import EditImages
    from ._retry import RetryPolicy
    from ._stream import ImageStreamEvent

__all__ = ["ImagesClient", "shared_images_client"]

logger = logging.getLogger("asyncimg")

P = ParamSpec("P")
T = TypeVar("T")
S = TypeVar("S")
A = TypeVar("A")

_POLL: Final = 0.1
"""Seconds a waiting caller sleeps between checks for a pending KeyboardInterrupt."""
_GRACE: Final = 2.0
"""Seconds a cancelled call or iterator is given to finish its cleanup on the portal."""


class _Runner:
    """The portal, the async client on it, and the live iterators: what closing tears down.

    Kept apart from :class:`ImagesClient` so that its finalizer holds no
    reference to the client it finalizes.
    """

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self.portal = self._stack.enter_context(start_blocking_portal(name="asyncimg-portal"))
        self.loop_thread: int = self.portal.call(threading.get_ident)
        self.closed = False
        self._lock = threading.Lock()
        self._iterators: dict[int, tuple[MemoryObjectSendStream[Future[Any]], threading.Event]] = {}
        self.closers: list[Callable[[], Awaitable[None]]] = []
        """What the client owns besides its session (a shared limiter), closed on the portal
        after it."""

    # -- calls -------------------------------------------------------------------------

    def check(self) -> None:
        """Raise RuntimeError if the client is closed or this is the portal's own thread."""
        if self.closed:
            raise RuntimeError("the client is closed")
        if threading.get_ident() == self.loop_thread:
            raise RuntimeError(
                "a blocking ImagesClient call cannot be made from its own event loop; "
                "use an AsyncImagesClient in async code"
            )

    def run(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call()`` on the portal and wait for it; Ctrl-C cancels it there.

        Raises:
            RuntimeError: the client is closed, or this is the portal's own thread.
            BaseException: whatever the call raised, the same object.
        """
        self.check()
        finished = threading.Event()
        escaped: list[BaseException] = []
        future = self.portal.start_task_soon(_tracked, call, finished, escaped)
        try:
            _wait(future)
        except BaseException:  # KeyboardInterrupt (or anything raised while waiting)
            if future.cancel():
                finished.wait(_GRACE)
            raise
        result = future.result()
        if escaped:
            raise escaped[0]
        return result  # type: ignore[return-value]  # None only when escaped

    def sync(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a plain function on the portal's loop (it must not block)."""
        self.check()
        return self.portal.call(functools.partial(fn, *args, **kwargs))

    def iterate(self, make: Callable[[], AsyncIterator[T]], owner: object) -> Iterator[T]:
        """A plain iterator over ``make()``, an async iterator driven by one task on the portal.

        ``owner`` (the ImagesClient) is kept alive by the iterator, so that
        ``for item in ImagesClient().generate_many(...)`` does not close the
        client under the loop.

        Raises:
            RuntimeError: the client is closed, or this is the portal's own thread.
            BaseException: whatever ``make()`` raised.
        """
        self.check()
        finished = threading.Event()
        task, requests = self.portal.start_task(_drive, make, finished)
        iterator = _BlockingIterator(self, owner, task, requests, finished)
        with self._lock:
            self._iterators[id(finished)] = (requests, finished)
        return iterator

    def end_iterator(
        self, requests: MemoryObjectSendStream[Any], finished: threading.Event
    ) -> None:
        """Close an iterator's request stream, which ends its task and its async iterator."""
        with self._lock:
            self._iterators.pop(id(finished), None)
        if finished.is_set():
            return
        if threading.get_ident() == self.loop_thread:  # collected on the loop: no waiting
            requests.close()
            return
        with contextlib.suppress(RuntimeError):  # the portal has already stopped
            self.portal.call(requests.close)
            finished.wait(_GRACE)

    # -- closing -----------------------------------------------------------------------

    def close(self, client: AsyncImagesClient | None) -> None:
        """Close the iterators, then ``client``, then stop the portal and join its thread.

        From the portal's own thread (a garbage collection that happened to run
        there) the work moves to a helper thread, since that thread cannot wait
        on itself.
        """
        with self._lock:
            if self.closed:
                return
            self.closed = True
        if threading.get_ident() == self.loop_thread:
            threading.Thread(
                target=self._teardown, args=(client,), name="asyncimg-close"
            ).start()
        else:
            self._teardown(client)

    def _teardown(self, client: AsyncImagesClient | None) -> None:
        try:
            with self._lock:
                iterators = list(self._iterators.values())
                self._iterators.clear()
            for requests, finished in iterators:
                self.end_iterator(requests, finished)
            if client is not None:
                with contextlib.suppress(RuntimeError):  # the portal is gone: nothing to do
                    self.portal.call(client.aclose)
            for closer in self.closers:
                with contextlib.suppress(RuntimeError):
                    self.portal.call(closer)
        finally:
            self._stack.close()


class _BlockingIterator(Iterator[T]):
    """The plain iterator ``ImagesClient.generate_many`` returns.

    Each ``next`` forwards one ``__anext__`` to the task driving the async
    iterator on the portal. Leaving a ``for`` loop early (the iterator is then
    garbage collected), :meth:`close`, or closing the client closes the async
    iterator on the portal, which cancels its remaining work.
    """

    def __init__(
        self,
        runner: _Runner,
        owner: object,
        task: Future[None],
        requests: MemoryObjectSendStream[Future[T]],
        finished: threading.Event,
    ) -> None:
        self._runner = runner
        self._owner = owner
        self._task = task
        self._requests = requests
        self._finished = finished
        self._done = False

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        runner = self._runner
        try:
            runner.check()
            reply: Future[T] = Future()
            runner.portal.call(self._requests.send_nowait, reply)
            try:
                _wait(reply)
            except BaseException:  # Ctrl-C while waiting: cancel the driving task
                if self._task.cancel():
                    self._finished.wait(_GRACE)
                raise
            return reply.result()
        except StopAsyncIteration:
            self.close()
            raise StopIteration from None
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop early: close the async iterator on the portal, cancelling its remaining work."""
        if not self._done:
            self._done = True
            self._runner.end_iterator(self._requests, self._finished)
            self._owner = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


async def _tracked(
    call: Callable[[], Awaitable[T]], finished: threading.Event, escaped: list[BaseException]
) -> T | None:
    """Await ``call()``; set ``finished`` when it is over, however it ends.

    A BaseException that is neither an Exception nor a cancellation (a
    BaseExceptionGroup, say) would be re-raised by anyio into the portal's own
    task group and stop the portal for every thread; it is handed to the
    caller through ``escaped`` instead.
    """
    try:
        return await call()
    except (Exception, anyio.get_cancelled_exc_class()):
        raise
    except BaseException as exc:
        escaped.append(exc)
        return None
    finally:
        finished.set()


async def _drive(
    make: Callable[[], AsyncIterator[T]],
    finished: threading.Event,
    *,
    task_status: TaskStatus[MemoryObjectSendStream[Future[T]]],
) -> None:
    """Serve ``__anext__`` requests for one async iterator, all from this one task.

    An async generator that holds a task group or cancel scope across its
    ``yield`` must be resumed and closed by the task that started it; one
    portal call per step would run each step in a new task.
    """
    try:
        iterator = make()
        requests, incoming = anyio.create_memory_object_stream[Future[T]](1)
        task_status.started(requests)
        try:
            with requests:
                async with incoming:
                    async for reply in incoming:
                        if not reply.set_running_or_notify_cancel():
                            continue
                        try:
                            item = await iterator.__anext__()
                        except anyio.get_cancelled_exc_class() as exc:
                            reply.set_exception(exc)
                            raise
                        except BaseException as exc:  # StopAsyncIteration included: the end
                            reply.set_exception(exc)
                            break
                        reply.set_result(item)
                        del item  # a streamed image's base64 goes with its event
        finally:
            await _aclose(iterator)
    finally:
        finished.set()


async def _aclose(iterator: AsyncIterator[Any]) -> None:
    """Close an async iterator (an async generator: its remaining work is cancelled)."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()  # no cancel scope of ours around it: the generator's own must nest
    except BaseException as exc:
        # anyio: an async generator that yields inside a task group raises
        # BaseExceptionGroup([GeneratorExit]) from aclose(); it did close.
        if not _only_generator_exit(exc):
            logger.warning("generate_many: closing the iterator failed", exc_info=exc)


def _only_generator_exit(exc: BaseException) -> bool:
    inner = getattr(exc, "exceptions", None)  # a BaseExceptionGroup (exceptiongroup on 3.10)
    if isinstance(inner, tuple) and inner:
        return all(isinstance(e, BaseException) and _only_generator_exit(e) for e in inner)
    return isinstance(exc, GeneratorExit)


def _wait(future: Future[Any]) -> None:
    """Block until ``future`` is done, in slices short enough to notice Ctrl-C."""
    done = threading.Event()
    future.add_done_callback(lambda _: done.set())
    while not done.wait(_POLL):
        pass


class _OnTheLoop:
    """Runs plain calls of the limiter on the portal's loop, from whatever thread calls."""

    __slots__ = ("_runner",)

    def __init__(self, runner: _Runner) -> None:
        self._runner = runner

    def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        runner = self._runner
        if runner.closed or threading.get_ident() == runner.loop_thread:
            return fn(*args, **kwargs)  # on the loop already, or no loop left to race with
        return runner.sync(fn, *args, **kwargs)


class _ThreadSafePermit:
    """A permit from :class:`_ThreadSafeLimiter`; stamping and refunding run on the loop."""

    __slots__ = ("_loop", "_permit")

    def __init__(self, loop: _OnTheLoop, permit: RatePermit) -> None:
        self._loop = loop
        self._permit = permit

    @property
    def images(self) -> int:
        """The images this permit holds."""
        return self._permit.images

    def stamp(self) -> None:
        """The request is being sent now: its images' window starts."""
        self._loop.call(self._permit.stamp)

    def refund(self) -> None:
        """Nothing was sent: give the images back at once (no-op once stamped)."""
        self._loop.call(self._permit.refund)


class _ThreadSafeLimiter:
    """The limiter of an :class:`ImagesClient`, safe to use from any thread.

    The limiter itself lives on the portal's loop and is not thread-safe (its
    state is read and changed by the calls running there); each method here
    runs there, so ``stats()`` from the caller's thread sees a consistent
    snapshot and ``pause()`` changes nothing behind the loop's back.
    """

    __slots__ = ("_limiter", "_loop", "_runner")

    def __init__(self, runner: _Runner, limiter: RateLimiter) -> None:
        self._runner = runner
        self._loop = _OnTheLoop(runner)
        self._limiter = limiter

    async def acquire(self, images: int) -> RatePermit:
        """Wait for (FIFO) and take a permit for ``images`` images, on the client's loop."""
        runner = self._runner
        if threading.get_ident() == runner.loop_thread:
            return await self._limiter.acquire(images)
        runner.check()
        future = runner.portal.start_task_soon(self._limiter.acquire, images)
        return _ThreadSafePermit(self._loop, await asyncio.wrap_future(future))

    def pause(self, seconds: float) -> None:
        """Grant nothing to anyone for ``seconds`` (merged with a pause in progress)."""
        self._loop.call(self._limiter.pause, seconds)

    def observe_headers(self, headers: Mapping[str, str]) -> None:
        """Learn from a response's ``x-ratelimit-*`` headers."""
        self._loop.call(self._limiter.observe_headers, dict(headers))

    def stats(self) -> LimiterStats:
        """A snapshot for monitoring, taken on the client's loop."""
        return self._loop.call(self._limiter.stats)

    def __repr__(self) -> str:
        return f"<thread-safe {self._limiter!r}>"


class _Forwarder(Protocol):
    """What a blocking object forwards through: the portal and the async object on it
    (an ImagesClient and its AsyncImagesClient, or a namespace and its async twin)."""

    _runner: _Runner
    _async: Any


def _blocking(
    fn: Callable[Concatenate[A, P], Awaitable[T]],
) -> Callable[Concatenate[Any, P], T]:
    """Make a blocking method from a coroutine method of the async twin (``self._async``).

    A stream (``stream=True``), bare or inside a raw response, comes back as a
    plain iterator of its events.
    """

    @functools.wraps(fn)
    def method(self: _Forwarder, /, *args: P.args, **kwargs: P.kwargs) -> T:
        result = self._runner.run(functools.partial(fn, self._async, *args, **kwargs))
        if isinstance(result, ImageStream):  # stream=True: its events, as a plain iterator
            stream = result
            return cast(T, self._runner.iterate(lambda: stream, owner=self))
        if isinstance(result, RawAPIResponse) and isinstance(result.parsed, ImageStream):
            raw_stream = result.parsed
            events = self._runner.iterate(lambda: raw_stream, owner=self)
            return cast(T, attrs.evolve(result, parsed=events))
        return result

    method.__qualname__ = f"{fn.__qualname__.removeprefix('Async')}"
    return method


def _iterating(
    fn: Callable[Concatenate[AsyncImagesClient, P], AsyncIterator[T]],
) -> Callable[Concatenate[ImagesClient, P], Iterator[T]]:
    """Make an iterator method of ImagesClient from an async-iterator method."""

    @functools.wraps(fn)
    def method(self: ImagesClient, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
        return self._runner.iterate(
            functools.partial(fn, self._async, *args, **kwargs), owner=self
        )

    method.__qualname__ = f"ImagesClient.{fn.__name__}"
    return method


def _deriving(
    fn: Callable[Concatenate[AsyncImagesClient, P], AsyncImagesClient],
) -> Callable[Concatenate[ImagesClient, P], ImagesClient]:
    """Make ``with_options`` of ImagesClient: the derived async client, wrapped in an
    ImagesClient on the same portal (it keeps the original alive)."""

    @functools.wraps(fn)
    def method(self: ImagesClient, /, *args: P.args, **kwargs: P.kwargs) -> ImagesClient:
        derived = self._runner.sync(fn, self._async, *args, **kwargs)
        client = ImagesClient.__new__(ImagesClient)
        client._runner = self._runner
        client._async = derived
        client._limiter = self._limiter
        client._finalizer = self._finalizer
        client._parent = self
        return client

    method.__qualname__ = f"ImagesClient.{fn.__name__}"
    return method


def _forwarded(name: str, *, settable: bool = False) -> Any:
    """A property of ImagesClient that reads (and sets) ``name`` on its async client,
    with that attribute's documentation."""
    doc = getattr(getattr(AsyncImagesClient, name, None), "__doc__", None)

    def get(self: ImagesClient) -> Any:
        return getattr(self._async, name)

    def set_(self: ImagesClient, value: Any) -> None:
        setattr(self._async, name, value)

    return property(get, set_ if settable else None, doc=doc or f"The async client's ``{name}``.")


def _constructor(make: Callable[P, AsyncImagesClient]) -> Callable[P, ImagesClient]:
    """An ImagesClient factory from an AsyncImagesClient one (``azure``): same arguments."""

    @functools.wraps(make)
    def build(*args: P.args, **kwargs: P.kwargs) -> ImagesClient:
        client = ImagesClient.__new__(ImagesClient)
        client._start(make, *args, **kwargs)
        return client

    build.__qualname__ = f"ImagesClient.{make.__name__}"
    return build


def _same_arguments(
    source: Callable[Concatenate[Any, P], None],
) -> Callable[[Callable[Concatenate[S, ...], None]], Callable[Concatenate[S, P], None]]:
    """Give an ``__init__(self, *args, **kwargs)`` the signature of ``source``."""

    def decorate(init: Callable[Concatenate[S, ...], None]) -> Callable[Concatenate[S, P], None]:
        init.__wrapped__ = source  # type: ignore[attr-defined]  # inspect.signature follows it
        return init

    return decorate


class ImagesClient:
    """A blocking client for the OpenAI Images API: the same arguments and calls as
    :class:`AsyncImagesClient`, each of which blocks until it is done.

    ::

        with ImagesClient() as client:
            response = client.generate("a white siamese cat", size="1024x1024")
            client.save(response, "out/")
            for item in client.generate_many(["a fox", "a heron"]):
                print(item.index, item.error or item.response)

    One client may be shared by many threads; all calls run on one event loop
    in a background thread, under one rate limiter. It also works where an
    event loop is already running (a notebook cell): the call runs on the
    client's own loop. Ctrl-C cancels the call in progress. Close it with
    ``with`` or :meth:`close`; a client never closed is closed when it is
    garbage collected or at interpreter exit.

    Raises:
        ValidationError: an argument is invalid (as for AsyncImagesClient).
    """

    @_same_arguments(AsyncImagesClient.__init__)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._start(AsyncImagesClient, *args, **kwargs)

    def _start(self, make: Callable[..., AsyncImagesClient], *args: Any, **kwargs: Any) -> None:
        """Start the portal and make the async client on it with ``make(*args, **kwargs)``."""
        runner = _Runner()
        try:
            client = runner.sync(make, *args, **kwargs)
        except BaseException:
            runner.close(None)
            raise
        self._runner = runner
        self._async = client
        self._limiter = _ThreadSafeLimiter(runner, client.limiter)
        self._finalizer = weakref.finalize(self, runner.close, client)
        self._parent: ImagesClient | None = None
        """The client this one was derived from (``with_options``), kept alive by it."""

    azure = staticmethod(_constructor(AsyncImagesClient.azure))

    if TYPE_CHECKING:  # the overloads of the async calls, blocking; a stream is an iterator

        @overload
        def generate(
            self, prompt: str, *, stream: Literal[True], **kwargs: Unpack[GenerateKeywords]
        ) -> Iterator[ImageStreamEvent]: ...
        @overload
        def generate(
            self,
            prompt: str,
            *,
            stream: Literal[False] | None = None,
            **kwargs: Unpack[GenerateKeywords],
        ) -> ImagesResponse: ...
        @overload
        def generate(
            self, prompt: str, *, stream: bool | None = None, **kwargs: Unpack[GenerateKeywords]
        ) -> ImagesResponse | Iterator[ImageStreamEvent]: ...
        def generate(
            self, prompt: str, *, stream: bool | None = None, **kwargs: Unpack[GenerateKeywords]
        ) -> ImagesResponse | Iterator[ImageStreamEvent]: ...
        @overload
        def edit(
            self,
            image: EditImages,
            prompt: str,
            *,
            stream: Literal[True],
            **kwargs: Unpack[EditKeywords],
        ) -> Iterator[ImageStreamEvent]: ...
        @overload
        def edit(
            self,
            image: EditImages,
            prompt: str,
            *,
            stream: Literal[False] | None = None,
            **kwargs: Unpack[EditKeywords],
        ) -> ImagesResponse: ...
        @overload
        def edit(
            self,
            image: EditImages,
            prompt: str,
            *,
            stream: bool | None = None,
            **kwargs: Unpack[EditKeywords],
        ) -> ImagesResponse | Iterator[ImageStreamEvent]: ...
        def edit(
            self,
            image: EditImages,
            prompt: str,
            *,
            stream: bool | None = None,
            **kwargs: Unpack[EditKeywords],
        ) -> ImagesResponse | Iterator[ImageStreamEvent]: ...
    else:
        generate = _blocking(AsyncImagesClient.generate)
        edit = _blocking(AsyncImagesClient.edit)
    create_variation = _blocking(AsyncImagesClient.create_variation)
    download = _blocking(AsyncImagesClient.download)
    save = _blocking(AsyncImagesClient.save)
    save_event = _blocking(AsyncImagesClient.save_event)
    generate_many = _iterating(AsyncImagesClient.generate_many)

    @property
    def limiter(self) -> RateLimiter:
        """The rate limiter every call of this client (from every thread) goes through.

        Safe from any thread: each of its methods runs on the client's loop.
        """
        return self._limiter

    request = _blocking(AsyncImagesClient.request)
    with_options = _deriving(AsyncImagesClient.with_options)
    copy = with_options

    @property
    def images(self) -> Images:
        """The official SDK's spelling of the calls (see :attr:`AsyncImagesClient.images`)."""
        return Images(self)

    # The async client's settings, read (and, where the async client lets one
    # change them, set) on it: one source of truth for both clients.
    if TYPE_CHECKING:
        @property
        def base_url(self) -> str: ...
        @property
        def model(self) -> str | None: ...
        @property
        def max_concurrency(self) -> int | None: ...
        @property
        def max_in_flight(self) -> int: ...
        @property
        def max_results_held(self) -> int | None: ...
        timeout: float | None
        retry_policy: RetryPolicy
    else:
        base_url = _forwarded("base_url")
        model = _forwarded("model")
        timeout = _forwarded("timeout", settable=True)
        max_concurrency = _forwarded("max_concurrency")
        retry_policy = _forwarded("retry_policy", settable=True)
        max_in_flight = _forwarded("max_in_flight")
        max_results_held = _forwarded("max_results_held")

    def close(self) -> None:
        """Close open ``generate_many`` iterators and the HTTP session, stop the loop.

        Safe to call twice. Calls made after it raise RuntimeError.
        """
        self._finalizer()

    def __enter__(self) -> ImagesClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return "ImagesClient" + repr(self._async).removeprefix("AsyncImagesClient")


class Images:
    """``client.images`` of the blocking client: its ``generate``, ``edit`` and
    ``create_variation`` are the client's own (a stream is an iterator of events)."""

    def __init__(self, client: ImagesClient) -> None:
        self._client = client
        self.generate = client.generate
        self.edit = client.edit
        self.create_variation = client.create_variation

    @property
    def with_raw_response(self) -> ImagesWithRawResponse:
        """The same calls, answering a :class:`~asyncimg.RawAPIResponse`."""
        return ImagesWithRawResponse(self._client)


class ImagesWithRawResponse:
    """``client.images.with_raw_response`` of the blocking client (forwarded)."""

    def __init__(self, client: ImagesClient) -> None:
        self._client = client  # keeps the client, and so its portal, alive
        self._runner = client._runner
        self._async = AsyncImagesWithRawResponse(client._async)

    generate = _blocking(AsyncImagesWithRawResponse.generate)
    edit = _blocking(AsyncImagesWithRawResponse.edit)
    create_variation = _blocking(AsyncImagesWithRawResponse.create_variation)


def shared_images_client(
    redis_url: str,
    *,
    rate: RateLimit,
    name: str,
    limiter_options: Mapping[str, Any] | None = None,
    **client_kwargs: Any,
) -> ImagesClient:
    """A blocking :class:`ImagesClient` whose rate budget is shared through Redis.

    Made for a process of a worker pool (a Celery prefork child, built in its
    ``worker_process_init`` signal; see ``examples/celery_app.py``): its
    :class:`RedisLimiter` (``RedisLimiter.from_url(redis_url, rate=rate, name=name,
    **limiter_options)``) lives on the client's own loop, so every process using
    the same ``name`` keeps one rate together, and closing the client closes the
    limiter too (what it held in Redis is given back at once rather than after its
    lease). ``client_kwargs`` are :class:`ImagesClient`'s (not ``limiter``).

    Raises:
        ValueError: ``rate``, ``name``, a limiter option or the URL is unusable.
        ImportError: redis-py is not installed (``pip install 'asyncimg[redis]'``).
        ValidationError: a client argument is invalid.
    """
    from ._redis import RedisLimiter

    if "limiter" in client_kwargs or "rate_limit" in client_kwargs:
        raise ValueError("shared_images_client makes its own limiter: pass rate= and name=")
    made: list[RedisLimiter] = []

    def make(**kwargs: Any) -> AsyncImagesClient:
        limiter = RedisLimiter.from_url(redis_url, rate=rate, name=name, **(limiter_options or {}))
        made.append(limiter)
        return AsyncImagesClient(limiter=limiter, **kwargs)

    client = ImagesClient.__new__(ImagesClient)
    client._start(make, **client_kwargs)  # a limiter made for a client that failed opened nothing
    client._runner.closers.append(made[0].aclose)
    return client
