"""Batches: :func:`generate_many` and the engine under it.

The engine (:class:`BatchIterator`) is an async iterator object, not an async
generator: a *driver* task pulls the source lazily and starts one task per item
in an anyio task group; finished items travel back to the consumer through a
memory object stream. Two semaphores keep everything bounded:

* ``in flight``: at most ``concurrency`` items are being worked on;
* ``window``: at most ``2 * concurrency`` items are started but not yet handed to
  the consumer, so a slow consumer (or, with ``ordered=True``, a slow head item)
  stops new work instead of piling up results;
* ``ready`` (optional): no new item starts while that many finished results wait
  for the consumer, so that a large ``concurrency`` (the client's automatic ceiling)
  bounds requests in flight, not results held in memory.

Who owns the driver: the client. Its task is kept in the client's set of
running batches until it ends, and :meth:`AsyncImagesClient.aclose` cancels and
awaits what is left, so no batch outlives its client. :meth:`BatchIterator.aclose`
(or ``async with``) cancels the driver and waits for its end: its task group
cancels every item, whose rate permits the client refunds. The driver holds no
reference to the iterator object, so a consumer that drops it without closing
(``break`` out of a bare ``async for``) has it cancelled at once by the
iterator's finalizer; the client still owns the cancelled task until it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Mapping
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeAlias, TypeVar

import anyio
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._callstats import CallStats
from .._cost import Budget, PriceTable, cost_of, estimate_request, load_prices, request_key
from .._exceptions import AsyncImgError, ValidationError
from .._keywords import GENERATE_KEYWORDS
from .._models import ImagesResponse

if TYPE_CHECKING:
    from .._client import AsyncImagesClient

__all__ = [
    "BatchItem",
    "BatchIterator",
    "PromptSource",
    "PromptSpec",
    "effective_params",
    "generate_many",
    "make_item",
]

_S = TypeVar("_S")
_T = TypeVar("_T")

_EMPTY: Mapping[str, Any] = MappingProxyType({})

PromptSpec: TypeAlias = "str | Mapping[str, Any]"
"""One prompt of a batch: a string, or a mapping ``{"prompt": ..., **params}``."""

PromptSource: TypeAlias = "Iterable[PromptSpec] | AsyncIterable[PromptSpec]"
"""The prompts of a batch: any iterable or async iterable of :data:`PromptSpec`."""


def _check_outcome(item: BatchItem, attribute: attrs.Attribute[Any], value: Any) -> None:
    if (item.response is None) == (value is None):
        raise ValueError("a BatchItem has exactly one of response and error")


@attrs.frozen(eq=False)
class BatchItem:
    """The outcome of one prompt of a batch: exactly one of ``response`` and ``error``.

    Attributes:
        index: the prompt's position in the input (0-based).
        prompt: the prompt text ("" when the input gave none).
        params: the item's effective parameters: the batch's, under them the
            item's own (those of a mapping, without ``prompt``), None left out,
            and the client's ``model`` when neither gives one; the same as the
            ``params`` of its line in an ``asyncimg batch`` manifest.
        response: the result, or None if the item failed.
        error: the failure (a ValidationError for a bad item, an APIError after
            the retries), or None.
        attempts: HTTP attempts made (0 when the item failed validation).
        seconds: wall time from the start of the item to its outcome.
    """

    index: int
    prompt: str
    params: Mapping[str, Any]
    response: ImagesResponse | None
    error: AsyncImgError | None = attrs.field(validator=_check_outcome)
    attempts: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the item has a response."""
        return self.response is not None


def _split_spec(spec: object, allowed: frozenset[str]) -> tuple[str, Mapping[str, Any]]:
    """``(prompt, own params)`` of one prompt of the input.

    Raises:
        ValidationError: not a string or a mapping; no string prompt; an unknown key.
    """
    if isinstance(spec, str):
        return spec, _EMPTY
    if not isinstance(spec, Mapping):
        raise ValidationError(
            "prompt", f"a prompt must be a string or a mapping, not {type(spec).__name__}"
        )
    own = {str(k): v for k, v in spec.items() if k != "prompt"}
    for key in own:
        if key not in allowed:
            raise ValidationError(key, f"generate() takes no parameter {key!r}")
    prompt = spec.get("prompt")
    if not isinstance(prompt, str):
        raise ValidationError("prompt", "each mapping needs a string 'prompt'")
    return prompt, MappingProxyType(own)


def effective_params(
    model: str | None, params: Mapping[str, Any], own: Mapping[str, Any]
) -> Mapping[str, Any]:
    """What an item is run with: ``params`` under the item's ``own``, None left out, and
    ``model`` (the client's default) when neither names one."""
    merged = {"model": model, **params, **own} if model else {**params, **own}
    return MappingProxyType({k: v for k, v in merged.items() if v is not None})


async def make_item(
    client: AsyncImagesClient,
    index: int,
    spec: object,
    params: Mapping[str, Any],
    allowed: frozenset[str],
    stats: CallStats | None = None,
) -> BatchItem:
    """Run one prompt of a batch: ``client.generate`` with ``params`` under the item's own.

    ``stats`` records the item's attempts as they go (so a caller can tell an
    item not yet sent from one in flight); a fresh one by default.

    Returns an item with ``.error`` for any :class:`AsyncImgError`; anything else
    (a bug) propagates.
    """
    started = time.monotonic()
    stats = stats if stats is not None else CallStats()
    prompt = spec if isinstance(spec, str) else ""
    own: Mapping[str, Any] = _EMPTY
    try:
        prompt, own = _split_spec(spec, allowed)
        response = await client.generate(prompt, **{**params, **own}, stats=stats)
    except AsyncImgError as exc:
        if isinstance(spec, Mapping) and own is _EMPTY:
            raw = spec.get("prompt")
            prompt = raw if isinstance(raw, str) else ""
            own = MappingProxyType({str(k): v for k, v in spec.items() if k != "prompt"})
        return BatchItem(
            index, prompt, effective_params(client.model, params, own), None, exc,
            stats.attempts, time.monotonic() - started,
        )
    return BatchItem(
        index, prompt, effective_params(client.model, params, own), response, None,
        stats.attempts, time.monotonic() - started,
    )


async def _within(
    budget: Budget,
    table: PriceTable | None,
    client: AsyncImagesClient,
    index: int,
    spec: object,
    params: Mapping[str, Any],
    allowed: frozenset[str],
) -> BatchItem:
    """:func:`make_item` within ``budget``: reserve the estimate, send, settle."""
    try:
        prompt, own = _split_spec(spec, allowed)
    except AsyncImgError:
        return await make_item(client, index, spec, params, allowed)  # the bad item, reported
    merged = {"model": client.model, **params, **own}
    effective = {k: v for k, v in merged.items() if v is not None}
    key = request_key(effective)
    guess = estimate_request(effective, prompt=prompt, prices=table, observed=budget.observed)
    hold = None if guess.usd is None else budget.reservation(key, guess.usd)
    if hold is None or not budget.reserve(hold):
        why = f"cannot keep the budget: {guess.note}" if hold is None else budget.over(hold)
        return BatchItem(index, prompt, own, None, ValidationError("max_cost", why))
    stats = CallStats()
    item: BatchItem | None = None
    try:
        item = await make_item(client, index, spec, params, allowed, stats)
    finally:
        error = None if item is None else item.error
        budget.finish(
            hold, key, sent=bool(stats.attempts),
            refused=getattr(error, "status_code", None) is not None,
            actual=None if item is None or item.response is None
            else cost_of(item.response, effective.get("model"), table),
        )
    return item


def _unwrap(exc: BaseException) -> BaseException:
    """The single exception inside (nested) exception groups of one, else ``exc``."""
    while True:
        inner = getattr(exc, "exceptions", None)
        if not (hasattr(exc, "split") and isinstance(inner, tuple) and len(inner) == 1):
            return exc
        exc = inner[0]


@attrs.define(eq=False)
class _Shared(Generic[_T]):
    """What the driver and the iterator share (the driver never sees the iterator)."""

    send: MemoryObjectSendStream[tuple[int, _T]]
    window: anyio.Semaphore
    ready_limit: float = math.inf
    error: BaseException | None = None
    ready: int = 0  # finished, not yet yielded
    room: anyio.Event | None = None  # set when ``ready`` drops below the limit

    def yielded(self) -> None:
        self.ready -= 1
        room = self.room
        if room is not None and self.ready < self.ready_limit:
            self.room = None
            room.set()


async def _aiter_source(source: Iterable[_S] | AsyncIterable[_S]) -> AsyncIterable[_S]:
    if isinstance(source, AsyncIterable):
        async for spec in source:
            yield spec
    else:
        for spec in source:
            yield spec


async def _drive(
    shared: _Shared[_T],
    source: Iterable[_S] | AsyncIterable[_S],
    work: Callable[[int, _S], Awaitable[_T]],
    concurrency: int,
) -> None:
    in_flight = anyio.Semaphore(concurrency)

    async def run_one(index: int, spec: _S) -> None:
        try:
            result = await work(index, spec)
        finally:
            in_flight.release()
        shared.ready += 1
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            shared.send.send_nowait((index, result))

    specs = _aiter_source(source)
    try:
        async with anyio.create_task_group() as tg:
            index = 0
            while True:
                await shared.window.acquire()
                await in_flight.acquire()
                while shared.ready >= shared.ready_limit:
                    room = shared.room = shared.room or anyio.Event()
                    await room.wait()
                try:
                    spec = await specs.__anext__()  # type: ignore[attr-defined]
                except StopAsyncIteration:
                    break
                tg.start_soon(run_one, index, spec)
                index += 1
    except Exception as exc:
        shared.error = _unwrap(exc)
    finally:
        with contextlib.suppress(Exception):
            await specs.aclose()  # type: ignore[attr-defined]
        shared.send.close()


def _retrieve(tasks: set[asyncio.Task[None]], task: asyncio.Task[None]) -> None:
    tasks.discard(task)
    if not task.cancelled():
        task.exception()


class BatchIterator(Generic[_T]):
    """An async iterator over the results of ``work(index, spec)`` for each spec of a source.

    Created by :func:`generate_many`; nothing starts before the first ``__anext__``.
    Use it with ``async for``; leaving the loop early cancels the items in flight
    (``await it.aclose()`` or ``async with it:`` waits for that to finish).

    Args:
        source: an iterable or async iterable, pulled lazily (a sync one is
            iterated on the event loop, so it must not block).
        work: the coroutine run for each spec; it should turn expected failures
            into results: any exception it raises ends the batch and is raised
            from ``__anext__``.
        concurrency: items worked on at once.
        ordered: yield results in input order (else as they finish).
        window: items started but not yet yielded (default ``2 * concurrency``).
        ready: start nothing while this many finished results wait (default: no
            bound beyond ``window``).
        tasks: the owner's set of running drivers (the client's): it keeps the
            driver alive until it has ended, and the owner cancels what is left
            when it closes.
    """

    def __init__(
        self,
        source: Iterable[_S] | AsyncIterable[_S],
        work: Callable[[int, _S], Awaitable[_T]],
        *,
        concurrency: int,
        ordered: bool = False,
        window: int | None = None,
        ready: int | None = None,
        tasks: set[asyncio.Task[None]] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValidationError("concurrency", "concurrency must be >= 1")
        self._source: Iterable[Any] | AsyncIterable[Any] | None = source
        self._work: Callable[[int, Any], Awaitable[_T]] | None = work
        self._concurrency = concurrency
        self._ordered = ordered
        self._window_size = max(window or 2 * concurrency, concurrency)
        self._ready = math.inf if ready is None else max(1, ready)
        self._shared: _Shared[_T] | None = None
        self._receive: MemoryObjectReceiveStream[tuple[int, _T]] | None = None
        self._driver: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set() if tasks is None else tasks
        self._buffer: dict[int, _T] = {}
        self._next = 0
        self._closed = False

    def __aiter__(self) -> BatchIterator[_T]:
        return self

    async def __aenter__(self) -> BatchIterator[_T]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _start(self) -> MemoryObjectReceiveStream[tuple[int, _T]]:
        if self._receive is not None:
            return self._receive
        assert self._source is not None
        assert self._work is not None
        send, receive = anyio.create_memory_object_stream[tuple[int, _T]](math.inf)
        self._shared = shared = _Shared(send, anyio.Semaphore(self._window_size), self._ready)
        coro = _drive(shared, self._source, self._work, self._concurrency)
        self._source = self._work = None
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(functools.partial(_retrieve, self._tasks))
        self._driver = task
        self._receive = receive
        return receive

    async def __anext__(self) -> _T:
        if self._closed:
            raise StopAsyncIteration
        receive = self._start()
        try:
            if self._ordered:
                while self._next not in self._buffer:
                    index, result = await receive.receive()
                    self._buffer[index] = result
                result = self._buffer.pop(self._next)
                self._next += 1
            else:
                _, result = await receive.receive()
        except anyio.EndOfStream:
            await self._finish()
            raise StopAsyncIteration from None
        assert self._shared is not None
        self._shared.window.release()
        self._shared.yielded()
        return result

    async def _finish(self) -> None:
        self._closed = True
        if self._receive is not None:
            self._receive.close()
        task = self._driver
        if task is not None and not task.done():
            with anyio.CancelScope(shield=True):
                await asyncio.wait({task})
        shared = self._shared
        if shared is not None and shared.error is not None:
            error, shared.error = shared.error, None
            raise error

    async def aclose(self) -> None:
        """Cancel what is in flight and wait until every task has ended. Safe to call twice."""
        self._closed = True
        self._buffer.clear()
        task = self._driver
        if task is not None and not task.done():
            task.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.wait({task})
        if self._receive is not None:
            self._receive.close()
        if self._shared is not None:
            self._shared.send.close()

    def __del__(self) -> None:
        task = self._driver
        if task is not None and not task.done():
            with contextlib.suppress(RuntimeError):
                task.cancel()
        if self._receive is not None:
            self._receive.close()
        if self._shared is not None:
            self._shared.send.close()


def generate_many(
    client: AsyncImagesClient,
    prompts: PromptSource,
    *,
    ordered: bool = False,
    params: Mapping[str, Any] | None = None,
    tasks: set[asyncio.Task[None]] | None = None,
    budget: Budget | None = None,
    prices: PriceTable | None = None,
) -> BatchIterator[BatchItem]:
    """Generate images for many prompts, at most ``client.max_concurrency`` at once.

    See :meth:`AsyncImagesClient.generate_many`. ``params`` apply to every item;
    a mapping item's own keys override them. With a ``budget``, each item's estimate
    (from ``prices``, default the shipped table) is reserved before it is sent and
    settled with its cost; an item that would not fit, or whose cost is unknown, is
    not sent and comes back with a ValidationError (``param`` ``max_cost``).

    Raises:
        ValidationError: ``params`` names a parameter ``generate`` does not take
            (``param`` is its name), or ``prompts`` is not an iterable of prompts.
    """
    params = dict(params or {})
    allowed = GENERATE_KEYWORDS - {"stats"}
    for key in params:
        if key == "prompt":
            raise ValidationError("prompt", "the prompts come from `prompts`, not from params")
        if key not in allowed:
            raise ValidationError(key, f"generate() takes no parameter {key!r}")
    if isinstance(prompts, (str, bytes)) or not isinstance(
        prompts, (Iterable, AsyncIterable)
    ):
        raise ValidationError(
            "prompts", "prompts must be an iterable or async iterable of prompts, not a "
            + type(prompts).__name__
        )
    frozen = MappingProxyType(params)
    table = prices if prices is not None or budget is None else load_prices()

    async def work(index: int, spec: PromptSpec) -> BatchItem:
        if budget is not None:
            return await _within(budget, table, client, index, spec, frozen, allowed)
        return await make_item(client, index, spec, frozen, allowed)

    return BatchIterator(
        prompts, work, concurrency=client.max_in_flight, ordered=ordered,
        ready=client.max_results_held, tasks=tasks,
    )
