"""The blocking ImagesClient: forwarding, exceptions, iteration, threads, loops, Ctrl-C, exit.

These are plain (non-async) tests: the emulator runs on its own blocking portal
(an event loop in a thread), the client under test on another.
"""

from __future__ import annotations

import _thread
import asyncio
import gc
import inspect
import struct
import subprocess
import sys
import threading
import time
import traceback
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import pytest

from asyncimg import (
    AsyncImagesClient,
    AsyncImgError,
    AuthenticationError,
    ImagesResponse,
    RateLimit,
    ValidationError,
)
from asyncimg._limiter import Limiter
from asyncimg._sync import ImagesClient
from asyncimg.testing import Emulator

from .conftest import TEST_KEY

SCRIPTS = Path(__file__).parent / "scripts"


# -- fixtures and helpers -----------------------------------------------------------------


@pytest.fixture(scope="module")
def emu_portal() -> Iterator[anyio.from_thread.BlockingPortal]:
    """An event loop in a thread for the emulator, apart from the client's."""
    with anyio.from_thread.start_blocking_portal(name="emulator") as portal:
        yield portal


@pytest.fixture
def server(emu_portal: anyio.from_thread.BlockingPortal) -> Iterator[Emulator]:
    """A started emulator expecting ``TEST_KEY``, run on ``emu_portal``."""
    with emu_portal.wrap_async_context_manager(Emulator(api_key=TEST_KEY)) as emu:
        yield emu


@pytest.fixture
def client(server: Emulator) -> Iterator[ImagesClient]:
    """An ImagesClient on the emulator, limiter off, no retries."""
    with ImagesClient(
        api_key=TEST_KEY, base_url=server.base_url, rate_limit=None, max_retries=0
    ) as c:
        yield c


def portal_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "asyncimg-portal"]


def assert_released(c: ImagesClient) -> None:
    """Nothing of ``c`` is still held: no concurrency slot, no rate permit, no iterator."""
    inner = c._async
    assert inner._gate.in_use == 0
    stats = inner.limiter.stats()
    assert stats.held == 0
    assert stats.waiting == 0
    assert not c._runner._iterators


def png_rgba(side: int) -> bytes:
    """A square RGBA PNG, half transparent, made by hand."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" + b"\x10\x80\xf0\xff" * (side // 2) + b"\x00\x00\x00\x00" * (side - side // 2)
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(row * side))
        + chunk(b"IEND", b"")
    )


# -- the surface ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["generate", "edit", "create_variation", "download", "save", "save_event", "generate_many"],
)
def test_methods_have_the_async_signatures_and_docs(name: str) -> None:
    sync_method = getattr(ImagesClient, name)
    async_method = getattr(AsyncImagesClient, name)
    assert inspect.signature(sync_method) == inspect.signature(async_method)
    assert sync_method.__doc__ == async_method.__doc__
    assert sync_method.__qualname__ == f"ImagesClient.{name}"
    assert not inspect.iscoroutinefunction(sync_method)


def test_constructor_has_the_async_signature() -> None:
    assert inspect.signature(ImagesClient) == inspect.signature(AsyncImagesClient)


def test_properties_forward(client: ImagesClient, server: Emulator) -> None:
    assert client.base_url == server.base_url.rstrip("/")
    assert client.model is None
    assert client.limiter.stats() == client._async.limiter.stats()
    assert "ImagesClient(" in repr(client)


def test_constructor_errors_cross_and_leave_no_thread() -> None:
    before = len(portal_threads())
    with pytest.raises(ValidationError) as info:
        ImagesClient(api_key=TEST_KEY, base_url="http://127.0.0.1:9/v1", max_concurrency=0)
    assert info.value.param == "max_concurrency"
    assert len(portal_threads()) == before


# -- forwarded calls ------------------------------------------------------------------------


def test_generate(client: ImagesClient) -> None:
    r = client.generate("a white siamese cat", n=2, size="256x256", response_format="b64_json")
    assert isinstance(r, ImagesResponse)
    assert len(r.data) == 2
    assert r.request_id


def test_edit_and_create_variation(client: ImagesClient) -> None:
    png = png_rgba(256)
    edited = client.edit(
        image=png, prompt="a flamingo in the pool", model="dall-e-2", size="256x256",
        response_format="b64_json",
    )
    assert len(edited.data) == 1
    varied = client.create_variation(
        image=("cat.png", png), model="dall-e-2", n=2, size="256x256", response_format="b64_json"
    )
    assert len(varied.data) == 2


def test_download_and_save(client: ImagesClient, tmp_path: Path) -> None:
    r = client.generate("a red fox", n=2, size="256x256", response_format="b64_json")
    data = client.download(r.data[0])
    assert data.startswith(b"\x89PNG")
    paths = client.save(r, tmp_path, stem="fox")
    assert [p.name for p in paths] == ["fox-0.png", "fox-1.png"]
    assert paths[0].read_bytes() == data


# -- exceptions -----------------------------------------------------------------------------


def _frames(exc: BaseException) -> list[str]:
    return [frame.name for frame in traceback.extract_tb(exc.__traceback__)]


def test_status_errors_cross_unchanged(
    server: Emulator, emu_portal: anyio.from_thread.BlockingPortal
) -> None:
    kwargs: dict[str, Any] = {
        "api_key": "sk-wrong", "base_url": server.base_url, "rate_limit": None, "max_retries": 0
    }

    async def async_error() -> BaseException:
        async with AsyncImagesClient(**kwargs) as ac:
            try:
                await ac.generate("a cat")
            except AuthenticationError as exc:
                return exc
        raise AssertionError("no error")

    expected = emu_portal.call(async_error)
    with ImagesClient(**kwargs) as c, pytest.raises(AuthenticationError) as info:
        c.generate("a cat")
    exc = info.value
    assert type(exc) is type(expected)
    assert exc.status_code == 401
    assert exc.request_id
    for attr in ("status_code", "message", "type", "param", "code", "body"):
        assert getattr(exc, attr) == getattr(expected, attr), attr
    assert "test_status_errors_cross_unchanged" in _frames(exc)  # the caller's line
    assert "generate" in _frames(exc)  # and the async frames behind it


def test_validation_errors_cross_before_sending(client: ImagesClient, server: Emulator) -> None:
    sent = len(server.journal)
    with pytest.raises(AsyncImgError) as info:
        client.generate("a cat", model="dall-e-3", n=2)
    assert isinstance(info.value, ValidationError)
    assert info.value.param == "n"
    assert "test_validation_errors_cross_before_sending" in _frames(info.value)
    assert len(server.journal) == sent
    assert_released(client)


class _Escape(BaseException):
    """Neither an Exception nor a cancellation: anyio would stop the portal with it."""


def test_a_base_exception_crosses_and_the_portal_survives(client: ImagesClient) -> None:
    async def escape() -> None:
        raise _Escape

    with pytest.raises(_Escape):
        client._runner.run(escape)
    assert client.generate("still here", size="256x256").data


# -- generate_many --------------------------------------------------------------------------


def test_generate_many_iterates_every_prompt(client: ImagesClient) -> None:
    items = list(client.generate_many([f"cat {i}" for i in range(5)], size="256x256"))
    assert sorted(item.index for item in items) == list(range(5))
    assert all(item.error is None and item.response is not None for item in items)
    assert_released(client)


def test_generate_many_reports_failures_as_items(client: ImagesClient) -> None:
    prompts = ["fine", "x" * 1001, "fine again"]
    items = sorted(client.generate_many(prompts, model="dall-e-2"), key=lambda i: i.index)
    assert [item.error is None for item in items] == [True, False, True]


def test_generate_many_early_break_cancels_the_rest(server: Emulator) -> None:
    with ImagesClient(
        api_key=TEST_KEY, base_url=server.base_url, rate_limit=None, max_retries=0,
        max_concurrency=2,
    ) as c:
        server.latency = 0.15
        for item in c.generate_many([f"heron {i}" for i in range(40)], size="256x256"):
            assert item.error is None
            break
        # The iterator is gone: everything it held came back at once ...
        assert_released(c)
        # ... and once the requests in flight at the break are answered (the
        # server finishes them even though the client went away), nothing more
        # arrives.
        time.sleep(0.2)
        seen = len(server.journal)
        assert seen <= 4
        time.sleep(0.2)
        assert len(server.journal) == seen


def test_generate_many_close_and_client_close_release(server: Emulator) -> None:
    c = ImagesClient(api_key=TEST_KEY, base_url=server.base_url, rate_limit=None)
    server.latency = 0.1
    first = c.generate_many([f"owl {i}" for i in range(20)], size="256x256")
    second = c.generate_many([f"bat {i}" for i in range(20)], size="256x256")
    next(first)
    first.close()
    first.close()
    with pytest.raises(StopIteration):
        next(first)
    next(second)
    c.close()  # closes the open iterator too
    with pytest.raises(RuntimeError, match="closed"):
        next(second)
    assert not c._runner._iterators


def test_generate_many_validation_error_is_raised_at_call(client: ImagesClient) -> None:
    with pytest.raises(ValidationError):
        client.generate_many(["a"], no_such_parameter=1)
    assert_released(client)


def test_generate_many_keeps_an_unreferenced_client_alive(server: Emulator) -> None:
    items = ImagesClient(
        api_key=TEST_KEY, base_url=server.base_url, rate_limit=None
    ).generate_many(["a", "b"], size="256x256")
    gc.collect()
    assert len(list(items)) == 2


# -- threads and loops ----------------------------------------------------------------------


def test_many_threads_share_one_limiter(server: Emulator) -> None:
    # A scaled window; the margin (1% of per by default) must still cover a
    # request's trip to a server that shares this process's GIL.
    rate = RateLimit(images=20, per=0.5, margin=0.05)
    with ImagesClient(api_key=TEST_KEY, base_url=server.base_url, rate_limit=rate) as c:
        start = len(server.journal)
        errors: list[BaseException] = []

        def work() -> None:
            try:
                for i in range(10):
                    c.generate(f"thread {threading.get_ident()} {i}", size="256x256")
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert len(server.journal) - start == 80
        # No window of `per` seconds at the server ever holds more than 20 arrivals.
        assert server.max_images_in_window(rate.per) == 20
        assert_released(c)


def test_called_from_inside_asyncio_run(client: ImagesClient) -> None:
    async def main() -> ImagesResponse:
        await asyncio.sleep(0)
        return client.generate("inside a running loop", size="256x256")

    r = asyncio.run(main())
    assert r.data


def test_called_from_inside_a_running_anyio_loop(client: ImagesClient) -> None:
    async def main() -> int:
        return sum(1 for _ in client.generate_many(["a", "b", "c"], size="256x256"))

    assert anyio.run(main) == 3


def test_calling_from_the_portals_own_loop_is_refused(client: ImagesClient) -> None:
    with pytest.raises(RuntimeError, match="own event loop"):
        client._runner.portal.call(lambda: client.generate("a cat"))


# -- Ctrl-C ---------------------------------------------------------------------------------


def _interrupt_soon() -> threading.Timer:
    timer = threading.Timer(0.1, _thread.interrupt_main)
    timer.start()
    return timer


def test_ctrl_c_cancels_a_slow_call(client: ImagesClient, server: Emulator) -> None:
    server.latency = 5.0
    started = time.monotonic()
    timer = _interrupt_soon()
    with pytest.raises(KeyboardInterrupt):
        client.generate("a very slow cat", size="256x256")
    timer.join()
    assert time.monotonic() - started < 3.0  # not the 5 s of the call
    assert_released(client)
    server.latency = 0.0
    assert client.generate("a quick cat", size="256x256").data  # the client still works


def test_ctrl_c_during_generate_many(client: ImagesClient, server: Emulator) -> None:
    server.latency = 5.0
    items = client.generate_many([f"slow {i}" for i in range(4)], size="256x256")
    started = time.monotonic()
    timer = _interrupt_soon()
    with pytest.raises(KeyboardInterrupt):
        next(items)
    timer.join()
    assert time.monotonic() - started < 3.0  # not the 5 s of the call
    assert_released(client)
    with pytest.raises(StopIteration):
        next(items)


# -- closing --------------------------------------------------------------------------------


def test_close_is_idempotent_and_stops_the_thread(server: Emulator) -> None:
    c = ImagesClient(api_key=TEST_KEY, base_url=server.base_url, rate_limit=None)
    thread = next(t for t in portal_threads() if t.ident == c._runner.loop_thread)
    c.generate("a cat", size="256x256")
    c.close()
    c.close()
    assert not thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        c.generate("a cat")


def test_garbage_collection_closes_the_client(server: Emulator) -> None:
    c = ImagesClient(api_key=TEST_KEY, base_url=server.base_url, rate_limit=None)
    c.generate("a cat", size="256x256")
    thread = next(t for t in portal_threads() if t.ident == c._runner.loop_thread)
    del c
    gc.collect()
    thread.join(2)
    assert not thread.is_alive()


@pytest.mark.parametrize("mode", [[], ["iterate"]])
def test_unclosed_client_exits_cleanly(server: Emulator, mode: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-W", "error", str(SCRIPTS / "unclosed_sync_client.py"),
         server.base_url, TEST_KEY, *mode],
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
    assert proc.stderr == ""


class SpyLimiter(Limiter):
    """A Limiter that records the thread each of its plain methods runs on."""

    def __init__(self, rate: RateLimit) -> None:
        super().__init__(rate)
        self.threads: set[int] = set()

    def stats(self) -> Any:
        self.threads.add(threading.get_ident())
        return super().stats()

    def pause(self, seconds: float) -> None:
        self.threads.add(threading.get_ident())
        super().pause(seconds)


def test_the_limiter_is_used_on_the_clients_loop_from_any_thread(server: Emulator) -> None:
    """stats() and pause() called from other threads run on the portal's loop, while calls run."""
    spy = SpyLimiter(RateLimit(images=1000, per=60.0))
    with ImagesClient(api_key=TEST_KEY, base_url=server.base_url, limiter=spy) as c:
        done = threading.Event()
        errors: list[BaseException] = []

        def calls() -> None:
            try:
                for i in range(20):
                    c.generate(f"busy {i}", size="256x256")
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)
            finally:
                done.set()

        worker = threading.Thread(target=calls)
        worker.start()
        snapshots = []
        while not done.is_set():
            snapshots.append(c.limiter.stats())
            c.limiter.pause(0.0)
        worker.join()
        assert not errors
        assert snapshots
        assert spy.threads == {c._runner.loop_thread}
        assert c.limiter.stats().sent == 20


def test_the_limiter_can_be_awaited_from_another_loop(server: Emulator) -> None:
    import asyncio

    with ImagesClient(api_key=TEST_KEY, base_url=server.base_url,
                      rate_limit=RateLimit(images=10, per=60.0)) as c:
        async def take() -> None:
            permit = await c.limiter.acquire(3)
            assert permit.images == 3
            permit.refund()

        asyncio.run(take())
        stats = c.limiter.stats()
        assert (stats.granted, stats.refunded, stats.held) == (3, 3, 0)


# -- streaming -------------------------------------------------------------------------------


def test_a_stream_is_a_plain_iterator_of_the_same_events(
    client: ImagesClient, server: Emulator, tmp_path: Path
) -> None:
    from asyncimg import CompletedImageEvent, PartialImageEvent

    events = client.generate("a lantern", model="gpt-image-1", stream=True, partial_images=2)
    assert not hasattr(events, "__anext__")
    got = list(events)
    assert [type(e) for e in got] == [PartialImageEvent, PartialImageEvent, CompletedImageEvent]
    paths = [client.save_event(e, tmp_path) for e in got]  # type: ignore[arg-type]
    assert [p.name.split("-", 1)[1] for p in paths] == ["partial-0.png", "partial-1.png", "0.png"]
    from asyncimg.testing import make_png

    edited = client.edit(make_png(32, 32, "x"), "a moon", model="gpt-image-1", stream=True)
    assert [e.type for e in edited] == ["image_edit.completed"]
    assert_released(client)


def test_leaving_a_blocking_stream_early_closes_it(client: ImagesClient, server: Emulator) -> None:
    from asyncimg.testing import Fault

    server.add_fault(Fault.trickle(1.0))
    started = time.monotonic()
    for _event in client.generate("a", model="gpt-image-1", stream=True, partial_images=3):
        break
    deadline = time.monotonic() + 4
    while not server.requests() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.requests()[0].events == 1
    assert time.monotonic() - started < 2.5  # not the 3 s to the end
    assert_released(client)


def test_a_blocking_streams_partial_is_freed_while_the_next_is_awaited(
    client: ImagesClient, server: Emulator
) -> None:
    import weakref

    from asyncimg import PartialImageEvent
    from asyncimg.testing import Fault

    server.add_fault(Fault.trickle(0.3))
    events = client.generate("a", model="gpt-image-1", stream=True, partial_images=2)
    first = next(events)
    assert isinstance(first, PartialImageEvent)
    ref = weakref.ref(first)
    del first
    waiting = threading.Thread(target=next, args=(events,))
    waiting.start()
    time.sleep(0.1)
    gc.collect()
    assert ref() is None, "the consumed partial is still held while the stream waits"
    waiting.join()
    events.close()  # type: ignore[attr-defined]


def test_the_blocking_client_has_the_async_clients_knobs(server: Emulator) -> None:
    from asyncimg import RetryPolicy

    with ImagesClient(
        base_url=server.base_url + "?api-key=secret-in-the-url", api_key=TEST_KEY, timeout=30.0,
        max_concurrency=3, max_retries=1,
    ) as client:
        assert client.timeout == 30.0
        assert client.max_concurrency == 3
        assert client.max_in_flight == 3
        assert client.max_results_held is None
        assert client.retry_policy == RetryPolicy(max_retries=1)
        client.timeout = 5.0
        client.retry_policy = RetryPolicy(max_retries=0)
        assert client._async.timeout == 5.0
        assert client._async.retry_policy.max_retries == 0
        assert "secret-in-the-url" not in repr(client)
        with pytest.raises(AttributeError):
            client.max_concurrency = 9  # type: ignore[misc]
